//! End-to-end tests of the JSONSocket listener: the header handshake over UDP and TCP transports, its status codes,
//! and rules on the header.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};

fn config(port: u16, transport: &str) -> String {
    format!(
        r#"
listeners:
  - name: js
    spec: {{ protocol: JSONSocket, transport: {{ protocol: {transport}, port: {port}, address: 127.0.0.1 }} }}
    rules:
      - match: {{ op: test, path: /JSONSocket/room, value: lobby }}
        action: {{ route: {{ destination: {{ spec: {{ protocol: Echo }} }} }} }}
      - match: {{ op: test, path: /JSONSocket/room, value: encap }}
        action: {{ route: {{ destination: {{ spec: {{ protocol: Echo }} }}, ingress: [ {{ spec: {{ protocol: JSONEncap }} }} ] }} }}
"#
    )
}

fn status(reply: &[u8]) -> (i64, String) {
    let v: Value = serde_json::from_slice(reply).unwrap();
    assert_eq!(v["JSONSocketVersion"], 1);
    (
        v["JSONSocketStatus"].as_i64().unwrap(),
        v["JSONSocketMessage"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn udp_jsonsocket_handshake_then_data_with_boundaries() {
    let port = free_port();
    let _agent = Agent::start(&config(port, "UDP"));
    let c = udp_client(port);
    c.send(json!({"JSONSocketVersion": 1, "room": "lobby"}).to_string().as_bytes())
        .unwrap();
    assert_eq!(status(&recv(&c)), (200, "OK".into()));
    for i in 0..20usize {
        let m = pattern(1 + i * 70, i as u64);
        c.send(&m).unwrap();
        assert_eq!(recv(&c), m);
    }
}

#[test]
fn jsonsocket_header_lands_in_metadata() {
    let port = free_port();
    let _agent = Agent::start(&config(port, "UDP"));
    let c = udp_client(port);
    c.send(
        json!({"JSONSocketVersion": 1, "room": "encap", "user": "alice"})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(status(&recv(&c)).0, 200);
    c.send(b"x").unwrap();
    let env: Value = serde_json::from_slice(&recv(&c)).unwrap();
    assert_eq!(env["metadata"]["JSONSocket"]["user"], "alice");
    assert_eq!(env["metadata"]["UDP"]["dst_port"], port);
}

#[test]
fn bad_headers_get_400_505_and_unrouted_ones_404() {
    let port = free_port();
    let agent = Agent::start(&config(port, "UDP"));
    let cases: [(&[u8], i64); 5] = [
        (b"not json", 400),
        (br#"{"room":"lobby"}"#, 400),
        (br#"{"JSONSocketVersion":"1"}"#, 400),
        (br#"{"JSONSocketVersion":2,"room":"lobby"}"#, 505),
        (br#"{"JSONSocketVersion":1,"room":"nowhere"}"#, 404),
    ];
    for (header, want) in cases {
        let c = udp_client(port);
        c.send(header).unwrap();
        let (code, msg) = status(&recv(&c));
        assert_eq!(code, want, "{}: {msg}", String::from_utf8_lossy(header));
    }
    assert!(agent.is_running_now());
}

#[test]
fn tcp_jsonsocket_handshake_then_byte_stream() {
    let port = free_port();
    let _agent = Agent::start(&config(port, "TCP"));
    let mut c = tcp_client(port);
    c.write_all(json!({"JSONSocketVersion": 0, "room": "lobby"}).to_string().as_bytes())
        .unwrap();
    let mut buf = [0u8; 256];
    let n = c.read(&mut buf).unwrap();
    assert_eq!(status(&buf[..n]), (200, "OK".into()));
    let data = pattern(100_000, 9);
    assert_eq!(round_trip(c, data.clone()), data);
}

#[test]
fn jsonsocket_cluster_to_the_agents_own_jsonsocket_listener() {
    // UDP in -> JSONSocket cluster (header: a constant and a copied metadata field) -> JSONSocket listener on the
    // same agent, whose rule matches the header -> Echo.
    let (p1, p2) = (free_port(), free_port());
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: udp-in
    spec: {{ protocol: UDP, port: {p1}, address: 127.0.0.1 }}
    rules:
      - action:
          route:
            destination:
              spec:
                protocol: JSONSocket
                transport: {{ protocol: UDP, port: {p2} }}
                header:
                  - set: {{ key: /room, value: lobby }}
                  - path: {{ from: /IP/src_addr, to: /client }}
              endpoints: [ {{ spec: {{ address: 127.0.0.1 }} }} ]
  - name: js-in
    spec: {{ protocol: JSONSocket, transport: {{ protocol: UDP, port: {p2}, address: 127.0.0.1 }} }}
    rules:
      - match: {{ op: and, apply: [ {{ op: test, path: /JSONSocket/room, value: lobby }}, {{ op: test, path: /JSONSocket/client, value: 127.0.0.1 }} ] }}
        action: {{ route: {{ destination: {{ spec: {{ protocol: Echo }} }} }} }}
"#
    ));
    let c = udp_client(p1);
    for i in 0..20usize {
        let m = pattern(1 + i * 90, i as u64);
        c.send(&m).unwrap();
        assert_eq!(recv(&c), m, "datagram {i} through two JSONSocket hops");
    }
}

#[test]
fn jsonsocket_cluster_refused_by_upstream_fails_the_session() {
    let refuser = udp_server(|_, _| {
        json!({"JSONSocketVersion": 1, "JSONSocketStatus": 403, "JSONSocketMessage": "Forbidden"})
            .to_string()
            .into_bytes()
    });
    let port = free_port();
    let agent = Agent::start(&format!(
        r#"
listeners:
  - name: udp-in
    spec: {{ protocol: UDP, port: {port}, address: 127.0.0.1 }}
    rules:
      - action:
          route:
            destination:
              spec: {{ protocol: JSONSocket, transport: {{ protocol: UDP, port: {refuser} }} }}
              endpoints: [ {{ spec: {{ address: 127.0.0.1 }} }} ]
"#
    ));
    udp_client(port).send(b"x").unwrap();
    let line = agent.wait_log("JSONSocket handshake");
    assert!(line.contains("upstream answered 403 Forbidden"), "{line}");
}

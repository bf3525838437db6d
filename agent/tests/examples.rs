//! The configurations under `examples/` load and carry traffic as their comments promise.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::Value;

fn start_example(name: &str) -> Agent {
    let dir = tempfile::tempdir().expect("dir");
    Agent::start_file(&repo_root().join("examples").join(name), dir, &[])
}

#[test]
fn example_udp_echo() {
    let _agent = start_example("udp-echo.yaml");
    let c = udp_client(9001);
    for m in [&b"one"[..], b"two two", &[0u8; 1200]] {
        c.send(m).expect("send");
        assert_eq!(recv(&c), m);
    }
}

#[test]
fn example_tcp_to_unix() {
    let mut agent = start_example("tcp-to-unix.yaml");
    let data = pattern(200_000, 5);
    assert_eq!(round_trip(tcp_client(9010), data.clone()), data);
    assert_eq!(agent.terminate().code(), Some(0));
    assert!(
        !std::path::Path::new("/tmp/l7mp-example.sock").exists(),
        "socket file removed"
    );
}

#[test]
fn example_udp_jsonencap_round_trip() {
    let _agent = start_example("udp-jsonencap.yaml");
    let c = udp_client(9020);
    let msgs: Vec<Vec<u8>> = (0..20).map(|i| pattern(10 + i * 50, i as u64)).collect();
    for m in &msgs {
        c.send(m).expect("send");
    }
    for m in &msgs {
        assert_eq!(&recv(&c), m, "decapsulated reply, boundaries kept");
    }
}

#[test]
fn jsonencap_puts_metadata_and_base64_payload_on_the_wire() {
    // The same route shape as the example, with the test as the upstream so the wire format is checked.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(tx);
    let upstream = udp_server(move |m, _| {
        tx.lock().unwrap().send(m.to_vec()).expect("record");
        br#"{"metadata":{},"payload":"cmVwbHk="}"#.to_vec()
    });
    let port = free_port();
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: udp-in
    spec: {{ protocol: UDP, port: {port}, address: 127.0.0.1 }}
    rules:
      - action:
          route:
            destination: {{ spec: {{ protocol: UDP, port: {upstream} }}, endpoints: [ {{ spec: {{ address: 127.0.0.1 }} }} ] }}
            ingress: [ {{ spec: {{ protocol: JSONEncap }} }} ]
            egress: [ {{ spec: {{ protocol: JSONDecap }} }} ]
"#
    ));
    let c = udp_client(port);
    c.send(b"hello").expect("send");
    assert_eq!(recv(&c), b"reply");
    let wire: Value = serde_json::from_slice(&rx.recv().expect("upstream got it")).expect("JSON on the wire");
    assert_eq!(wire["payload"], "aGVsbG8=");
    assert_eq!(wire["metadata"]["IP"]["src_addr"], "127.0.0.1");
    assert_eq!(wire["metadata"]["UDP"]["dst_port"], port);
    assert_eq!(
        wire["metadata"]["UDP"]["src_port"],
        c.local_addr().expect("addr").port()
    );
    assert!(
        wire["metadata"]["name"]
            .as_str()
            .expect("name")
            .starts_with("UDP:127.0.0.1:")
    );
}

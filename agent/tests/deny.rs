//! Access control in the data plane: a rule whose action is `deny` refuses the matching sessions with its reason,
//! which the client learns where its protocol can say it (JSONSocket status 403), the log names, and the metrics
//! count (`l7mp_session_errors_total{reason="denied"}`); other sessions pass.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A TCP connection to 127.0.0.1:`port` from the loopback address `from` (any of 127/8).
fn connect_from(from: &str, port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(3)).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

#[test]
fn deny_rules_refuse_matching_sessions_with_their_reason() {
    let (tcp, js, admin) = (free_port(), free_port(), free_port());
    let agent = Agent::start_with(
        &format!(
            r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {tcp}, address: 127.0.0.1 }}
    rules:
      - name: blocked-address
        match: {{ op: test, path: /IP/src_addr, value: 127.0.0.2 }}
        action: {{ deny: "127.0.0.2 is not allowed here" }}
      - action: {{ route: {{ destination: echo }} }}
  - name: js-in
    spec: {{ protocol: JSONSocket, transport: {{ protocol: TCP, port: {js}, address: 127.0.0.1 }} }}
    rules:
      - name: no-bob
        match: {{ op: test, path: /JSONSocket/user, value: bob }}
        action: {{ deny: {{ reason: "bob is banned" }} }}
      - action: {{ route: {{ destination: echo }} }}
clusters:
  - name: echo
    spec: {{ protocol: Echo }}
"#
        ),
        &["--admin", &format!("127.0.0.1:{admin}")],
    );

    // Denied by source address: the connection is closed without an echo.
    let mut denied = connect_from("127.0.0.2", tcp);
    let _ = denied.write_all(b"let me in");
    let mut buf = [0u8; 64];
    let got = denied.read(&mut buf);
    assert!(
        matches!(got, Ok(0) | Err(_)),
        "a denied connection got an answer: {got:?}"
    );
    // Allowed: echoed.
    let mut allowed = connect_from("127.0.0.1", tcp);
    allowed.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    allowed.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");

    // Denied by a JSONSocket header field: the client is told 403 with the reason.
    let mut bob = tcp_client(js);
    bob.write_all(json!({"JSONSocketVersion": 1, "user": "bob"}).to_string().as_bytes())
        .unwrap();
    let mut big = [0u8; 1024];
    let n = bob.read(&mut big).unwrap();
    let answer: Value = serde_json::from_slice(&big[..n]).unwrap();
    assert_eq!(answer["JSONSocketStatus"], 403, "{answer}");
    let message = answer["JSONSocketMessage"].as_str().unwrap_or_default();
    assert!(
        message.contains("Forbidden") && message.contains("bob is banned") && message.contains("no-bob"),
        "{answer}"
    );
    let mut alice = tcp_client(js);
    alice
        .write_all(json!({"JSONSocketVersion": 1, "user": "alice"}).to_string().as_bytes())
        .unwrap();
    let n = alice.read(&mut big).unwrap();
    let answer: Value = serde_json::from_slice(&big[..n]).unwrap();
    assert_eq!(answer["JSONSocketStatus"], 200, "{answer}");

    // The log says who was denied by which rule, at info (not as a failure); the metrics count both.
    agent.wait_log("denied by rule \"blocked-address\": 127.0.0.2 is not allowed here");
    agent.wait_log("denied by rule \"no-bob\": bob is banned");
    let (code, _, text) = api::http(admin, "GET", "/metrics", None, "");
    assert_eq!(code, 200);
    for listener in ["tcp-in", "js-in"] {
        let line = format!("l7mp_session_errors_total{{listener=\"{listener}\",reason=\"denied\"}} 1");
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(
        !agent
            .log_lines()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("denied")),
        "a denied session was logged as a failure: {:#?}",
        agent.log_lines()
    );
}

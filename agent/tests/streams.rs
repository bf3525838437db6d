//! End-to-end byte-stream tests through the real agent: TCP, UNIX sockets, Logger, Stdio, chains and lifecycle.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

#[test]
fn tcp_to_tcp_carries_a_megabyte_byte_for_byte_with_half_close() {
    let upstream = tcp_echo_server();
    let port = free_port();
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: up }} }} }}]
clusters:
  - name: up
    spec: {{ protocol: TCP, port: {upstream} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    ));
    let data = pattern(1 << 20, 7);
    let got = round_trip(tcp_client(port), data.clone());
    assert_eq!(got.len(), data.len());
    assert!(got == data, "TCP data differs");
    // Several connections at once.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let d = pattern(100_000 + i, i as u64);
                assert_eq!(round_trip(tcp_client(port), d.clone()), d);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client");
    }
}

#[test]
fn unix_listener_to_tcp_and_socket_file_removed_on_sigterm() {
    let upstream = tcp_echo_server();
    let dir = tempfile::tempdir().expect("dir");
    let sock = dir.path().join("in.sock");
    let mut agent = Agent::start(&format!(
        r#"
listeners:
  - name: uds-in
    spec: {{ protocol: UnixDomainSocket, filename: {sock:?} }}
    rules: [{{ action: {{ route: {{ destination: up }} }} }}]
clusters:
  - name: up
    spec: {{ protocol: TCP, port: {upstream} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    ));
    assert!(sock.exists());
    let data = pattern(300_000, 3);
    let c = UnixStream::connect(&sock).expect("connect");
    assert_eq!(round_trip(c, data.clone()), data);
    let status = agent.terminate();
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
    assert!(!sock.exists(), "socket file removed after SIGTERM");
}

#[test]
fn tcp_to_unix_cluster() {
    let dir = tempfile::tempdir().expect("dir");
    let sock = dir.path().join("up.sock");
    let l = UnixListener::bind(&sock).expect("bind");
    std::thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || echo_stream(c));
        }
    });
    let port = free_port();
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: uds }} }} }}]
clusters:
  - name: uds
    spec: {{ protocol: UnixDomainSocket }}
    endpoints: [{{ spec: {{ address: {sock:?} }} }}]
"#
    ));
    let data = pattern(500_000, 11);
    assert_eq!(round_trip(tcp_client(port), data.clone()), data);
}

#[test]
fn logger_appends_with_prefix_and_passes_data_through() {
    let upstream = tcp_echo_server();
    let port = free_port();
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("traffic.log");
    std::fs::write(&log, "existing line\n").expect("seed");
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules:
      - action:
          route:
            destination: up
            ingress: [ {{ spec: {{ protocol: Logger, log_file: {log:?}, log_prefix: up }} }} ]
clusters:
  - name: up
    spec: {{ protocol: TCP, port: {upstream} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    ));
    for word in ["first\n", "second\n"] {
        let got = round_trip(tcp_client(port), word.as_bytes().to_vec());
        assert_eq!(got, word.as_bytes());
    }
    let text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(
        text, "existing line\nup: first\nup: second\n",
        "appended, never truncated"
    );
}

#[test]
fn stdio_cluster_pipes_a_session_to_the_agent_stdin_and_stdout() {
    let port = free_port();
    let mut agent = Agent::start(&format!(
        "listeners:\n  - name: t\n    spec: {{protocol: TCP, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Stdio}}}}}}}}}}]\n"
    ));
    let mut c = tcp_client(port);
    c.write_all(b"to stdout\n").expect("write");
    let mut out = agent.stdout.take().expect("stdout");
    let mut buf = [0u8; 10];
    out.read_exact(&mut buf).expect("agent stdout");
    assert_eq!(&buf, b"to stdout\n");
    let mut input = agent.stdin.take().expect("stdin");
    input.write_all(b"from stdin").expect("write stdin");
    input.flush().expect("flush");
    let mut got = [0u8; 10];
    c.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"from stdin");
}

#[test]
fn udp_into_tcp_warns_once_per_route_about_lost_boundaries() {
    let upstream = tcp_echo_server();
    let port = free_port();
    let agent = Agent::start(&format!(
        r#"
listeners:
  - name: udp-in
    spec: {{ protocol: UDP, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ name: dgram-to-bytes, destination: up }} }} }}]
clusters:
  - name: up
    spec: {{ protocol: TCP, port: {upstream} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    ));
    for i in 0..3 {
        let c = udp_client(port);
        c.send(format!("hello {i}").as_bytes()).expect("send");
        assert_eq!(recv(&c), format!("hello {i}").as_bytes());
    }
    agent.wait_log("message boundaries are lost");
    assert_eq!(
        agent.count_log("message boundaries are lost"),
        1,
        "warned once for the route"
    );
    assert!(agent.wait_log("message boundaries are lost").contains("dgram-to-bytes"));
}

#[test]
fn rules_rewrite_and_apply_choose_the_route() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("labels.log");
    let agent = Agent::start(&format!(
        r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules: main
rulelists:
  - name: main
    rules:
      - match: {{ op: test, path: /TCP/dst_port, value: 1 }}
        action: {{ route: {{ destination: {{ spec: {{ protocol: Discard }} }} }} }}
      - match: {{ op: starts, path: /IP/src_addr, value: "127." }}
        action: {{ apply: tagged }}
  - name: tagged
    rules:
      - match: {{ op: defined, path: /labels/never }}
        action: {{ route: {{ destination: {{ spec: {{ protocol: Discard }} }} }} }}
      - action:
          rewrite: [ {{ path: /labels/tenant, value: blue }} ]
          route:
            name: encap-echo
            destination: {{ spec: {{ protocol: Echo }} }}
            ingress: [ {{ spec: {{ protocol: JSONEncap }} }}, {{ spec: {{ protocol: Logger, log_file: {log:?} }} }} ]
"#
    ));
    let got = round_trip(tcp_client(port), b"ping".to_vec());
    let env: serde_json::Value = serde_json::from_slice(&got).expect("a JSON envelope came back");
    assert_eq!(env["payload"], "cGluZw==");
    assert_eq!(
        env["metadata"]["labels"]["tenant"], "blue",
        "rewrite applied before routing"
    );
    assert_eq!(env["metadata"]["IP"]["src_addr"], "127.0.0.1");
    assert_eq!(env["metadata"]["listener"], "tcp-in");
    assert!(
        std::fs::read_to_string(&log)
            .expect("log")
            .contains("\"tenant\":\"blue\"")
    );
    assert_eq!(agent.count_log("session failed"), 0);
}

#[test]
fn no_matching_rule_closes_the_connection_and_logs_why() {
    let port = free_port();
    let mut agent = Agent::start(&format!(
        "listeners:\n  - name: picky\n    spec: {{protocol: TCP, port: {port}, address: 127.0.0.1}}\n    rules:\n      - match: {{op: test, path: /labels/x, value: 1}}\n        action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}\n"
    ));
    let mut c = tcp_client(port);
    let mut buf = [0u8; 4];
    assert_eq!(c.read(&mut buf).expect("closed"), 0, "connection closed");
    agent.wait_log("no rule in rulelist \"picky-RuleList-0\" matches");
    assert!(agent.is_running());
}

#[test]
fn unreachable_upstream_fails_the_session_not_the_agent() {
    let dead = free_port();
    let port = free_port();
    let mut agent = Agent::start(&format!(
        r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: up, retry: {{ retry_on: connect-failure, num_retries: 2, timeout: 100 }} }} }} }}]
clusters:
  - name: up
    spec: {{ protocol: TCP, port: {dead} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    ));
    let mut c = tcp_client(port);
    let mut buf = [0u8; 4];
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    let line = agent.wait_log("session failed");
    assert!(line.contains("after 3 attempt(s)"), "{line}");
    // Reset connections do not hurt either.
    for _ in 0..20 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("sock");
        s.set_linger(Some(Duration::ZERO)).expect("linger");
        let _ = s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into());
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(agent.is_running());
}

#[test]
fn connect_failure_retry_waits_for_a_late_backend() {
    let port = free_port();
    let late = free_port();
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: up, retry: {{ retry_on: connect-failure, num_retries: 20, timeout: 100 }} }} }} }}]
clusters:
  - name: up
    spec: {{ protocol: TCP, port: {late} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    ));
    let c = tcp_client(port);
    std::thread::sleep(Duration::from_millis(400));
    let l = std::net::TcpListener::bind(("127.0.0.1", late)).expect("late backend");
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || echo_stream(s));
        }
    });
    assert_eq!(round_trip(c, b"finally".to_vec()), b"finally");
}

//! End-to-end tests of UNIX datagram sockets (listener and cluster) through the real agent.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn client(dir: &std::path::Path, name: &str, server: &std::path::Path) -> UnixDatagram {
    let c = UnixDatagram::bind(dir.join(name)).unwrap();
    c.connect(server).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c
}

#[test]
fn unix_dgram_listener_to_echo_keeps_boundaries_per_peer() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("dgram.sock");
    let mut agent = Agent::start(&format!(
        "listeners:\n  - name: ud\n    spec: {{protocol: UnixDgram, filename: {sock:?}}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]\n"
    ));
    let a = client(dir.path(), "a.sock", &sock);
    let b = client(dir.path(), "b.sock", &sock);
    let mut buf = vec![0u8; 70000];
    for i in 0..30usize {
        let (ma, mb) = (pattern(1 + i * 100, i as u64), pattern(2 + i * 50, 1000 + i as u64));
        a.send(&ma).unwrap();
        b.send(&mb).unwrap();
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &ma[..], "peer a gets its own datagram {i}, whole");
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &mb[..], "peer b gets its own datagram {i}, whole");
    }
    assert_eq!(agent.terminate().code(), Some(0));
    assert!(!sock.exists(), "socket file removed on SIGTERM");
}

#[test]
fn udp_to_unix_dgram_cluster_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let server_path = dir.path().join("server.sock");
    let server = UnixDatagram::bind(&server_path).unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70000];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let reply = [b"unix:".as_slice(), &buf[..n]].concat();
            // The agent's cluster socket has an abstract address: answer it.
            let _ = server.send_to_addr(&reply, &from);
        }
    });
    let port = free_port();
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: udp-in
    spec: {{ protocol: UDP, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: ud }} }} }}]
clusters:
  - name: ud
    spec: {{ protocol: UnixDgram }}
    endpoints: [{{ spec: {{ address: {server_path:?} }} }}]
"#
    ));
    let c = udp_client(port);
    let msgs: Vec<Vec<u8>> = (0..50).map(|i| pattern(1 + i * 211, i as u64)).collect();
    for m in &msgs {
        c.send(m).unwrap();
    }
    for m in &msgs {
        assert_eq!(recv(&c), [b"unix:".as_slice(), m].concat(), "whole, in order");
    }
}

#[test]
fn unbound_unix_dgram_peers_are_refused_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("dgram.sock");
    let agent = Agent::start(&format!(
        "listeners:\n  - name: ud\n    spec: {{protocol: UnixDgram, filename: {sock:?}}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]\n"
    ));
    let anon = UnixDatagram::unbound().unwrap();
    anon.send_to(b"who am i", &sock).unwrap();
    agent.wait_log("datagram from an unbound UNIX socket dropped");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(agent.count_log("session failed"), 0);
}

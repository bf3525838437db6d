//! End-to-end UDP tests through the real agent: boundaries, per-peer sessions, singleton mode, idle timeout, IPv6.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::collections::HashSet;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn udp_to_cluster(port: u16, upstream: u16, extra_spec: &str) -> String {
    format!(
        r#"
listeners:
  - name: udp-in
    spec: {{ protocol: UDP, port: {port}, address: 127.0.0.1 {extra_spec} }}
    rules:
      - action:
          route:
            destination: up
clusters:
  - name: up
    spec: {{ protocol: UDP, port: {upstream} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    )
}

#[test]
fn udp_to_udp_keeps_datagram_boundaries() {
    let upstream = udp_server(|m, _| [b"re:".as_slice(), m].concat());
    let port = free_port();
    let _agent = Agent::start(&udp_to_cluster(port, upstream, ""));
    let c = udp_client(port);
    let sizes = [1usize, 2, 63, 64, 512, 1400, 1500, 9000, 60000];
    for (i, &n) in sizes.iter().enumerate() {
        c.send(&pattern(n, i as u64)).expect("send");
    }
    for (i, &n) in sizes.iter().enumerate() {
        let got = recv(&c);
        assert_eq!(got.len(), n + 3, "datagram {i} kept its size");
        assert_eq!(&got[3..], &pattern(n, i as u64)[..], "datagram {i} byte for byte");
    }
}

#[test]
fn udp_to_echo_keeps_datagram_boundaries_and_order() {
    let port = free_port();
    let _agent = Agent::start(&format!(
        "listeners:\n  - name: e\n    spec: {{protocol: UDP, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]\n"
    ));
    let c = udp_client(port);
    // A burst straight away: the first datagrams arrive before the session's socket exists and must still come
    // back first (order and boundaries kept).
    let msgs: Vec<Vec<u8>> = (0..200).map(|i| pattern(1 + (i * 37) % 1400, i as u64)).collect();
    for m in &msgs {
        c.send(m).expect("send");
    }
    for m in &msgs {
        assert_eq!(&recv(&c), m);
    }
}

#[test]
fn a_thousand_udp_peers_get_their_own_sessions_and_replies() {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let seen2 = seen.clone();
    // The upstream tags each reply with the source port it saw: one upstream socket per session.
    let upstream = udp_server(move |m, peer| {
        seen2.lock().unwrap().insert(peer.port());
        [m, b"@".as_slice(), peer.port().to_string().as_bytes()].concat()
    });
    let port = free_port();
    let _agent = Agent::start(&udp_to_cluster(port, upstream, ""));
    let clients: Vec<UdpSocket> = (0..1000).map(|_| udp_client(port)).collect();
    for (i, c) in clients.iter().enumerate() {
        c.send(format!("peer-{i}").as_bytes()).expect("send");
    }
    // UDP may lose a datagram in a burst of 1,000 new peers on a loaded machine: a client that hears nothing
    // resends once, as a UDP application would. More than 1% needing it fails.
    let mut resent = 0;
    let mut upstream_ports = HashSet::new();
    for (i, c) in clients.iter().enumerate() {
        let reply = recv_or_resend(c, format!("peer-{i}").as_bytes(), &mut resent);
        let got = String::from_utf8(reply).expect("utf8");
        let (payload, up_port) = got.split_once('@').expect("tagged");
        assert_eq!(payload, format!("peer-{i}"), "peer {i} got its own reply");
        upstream_ports.insert(up_port.to_owned());
    }
    assert!(resent <= 10, "{resent} of 1,000 peers needed a resend");
    assert_eq!(upstream_ports.len(), 1000, "each peer has its own upstream session");
    // A second round reuses the sessions: still 1000 distinct upstream sockets.
    for (i, c) in clients.iter().enumerate() {
        c.send(format!("again-{i}").as_bytes()).expect("send");
    }
    for (i, c) in clients.iter().enumerate() {
        let got = String::from_utf8(recv_or_resend(c, format!("again-{i}").as_bytes(), &mut resent)).expect("utf8");
        assert!(got.starts_with(&format!("again-{i}@")), "{got}");
    }
    assert!(resent <= 10, "{resent} resends over two rounds");
    assert_eq!(seen.lock().unwrap().len(), 1000);
}

#[test]
fn simultaneous_new_peers_never_get_each_others_datagrams() {
    // Bursts from many new peers at the same instant: for a moment after its bind, a new session socket is the
    // kernel's choice for every new peer's datagrams on the port. Each datagram must still reach its own peer's
    // session only, and none may be lost (the order of a new peer's first datagrams may differ in this race). The
    // race depends on timing: a few waves of peers make it likely to happen at least once.
    const WAVES: usize = 3;
    const PEERS: usize = 400;
    const EACH: usize = 10;
    let port = free_port();
    let _agent = Agent::start(&format!(
        "listeners:\n  - name: e\n    spec: {{protocol: UDP, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]\n"
    ));
    for wave in 0..WAVES {
        let clients: Vec<UdpSocket> = (0..PEERS).map(|_| udp_client(port)).collect();
        for m in 0..EACH {
            for (i, c) in clients.iter().enumerate() {
                c.send(format!("{i}:{m}").as_bytes()).expect("send");
            }
        }
        for (i, c) in clients.iter().enumerate() {
            let mut got: Vec<String> = (0..EACH).map(|_| String::from_utf8(recv(c)).expect("utf8")).collect();
            assert!(
                got.iter().all(|g| g.starts_with(&format!("{i}:"))),
                "wave {wave}: peer {i} got another peer's datagram: {got:?}"
            );
            got.sort();
            let want: Vec<String> = (0..EACH).map(|m| format!("{i}:{m}")).collect();
            assert_eq!(got, want, "wave {wave}: peer {i} got each of its datagrams once");
        }
    }
}

/// Waits for a reply; if none comes within 1 s, sends `msg` again once and waits for that. More than 10 resends
/// fail at once (a systematic loss must not turn into a slow crawl through 1,000 timeouts).
fn recv_or_resend(c: &UdpSocket, msg: &[u8], resent: &mut usize) -> Vec<u8> {
    c.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
    let mut buf = vec![0u8; 70000];
    if let Ok(n) = c.recv(&mut buf) {
        buf.truncate(n);
        return buf;
    }
    *resent += 1;
    assert!(*resent <= 10, "more than 10 of 1,000 peers lost their datagram");
    c.send(msg).expect("resend");
    c.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    recv(c)
}

#[test]
fn idle_udp_sessions_end_and_a_new_one_starts() {
    let upstream = udp_server(|_, peer| peer.port().to_string().into_bytes());
    let port = free_port();
    let _agent = Agent::start(&udp_to_cluster(port, upstream, ", idle_timeout: 0.3"));
    let c = udp_client(port);
    c.send(b"a").expect("send");
    let first = recv(&c);
    c.send(b"b").expect("send");
    assert_eq!(recv(&c), first, "same session while active");
    std::thread::sleep(Duration::from_millis(800));
    c.send(b"c").expect("send");
    assert_ne!(
        recv(&c),
        first,
        "a new session (new upstream socket) after the idle timeout"
    );
}

#[test]
fn singleton_listener_connects_to_its_peer_and_ignores_others() {
    let port = free_port();
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
    peer.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let peer_port = peer.local_addr().expect("addr").port();
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: single
    spec: {{ protocol: UDP, port: {port}, address: 127.0.0.1, connect: {{ address: 127.0.0.1, port: {peer_port} }} }}
    rules: [{{ action: {{ route: {{ destination: {{ spec: {{ protocol: Echo }} }} }} }} }}]
"#
    ));
    peer.send_to(b"one", ("127.0.0.1", port)).expect("send");
    let mut buf = [0u8; 100];
    let (n, from) = peer.recv_from(&mut buf).expect("echo");
    assert_eq!(&buf[..n], b"one");
    assert_eq!(from.port(), port);
    let stranger = udp_client(port);
    stranger
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    stranger.send(b"intruder").expect("send");
    assert!(
        stranger.recv(&mut buf).is_err(),
        "a peer other than connect gets nothing"
    );
}

#[test]
fn half_connected_listener_only_accepts_the_given_port() {
    let port = free_port();
    let allowed = UdpSocket::bind("127.0.0.1:0").expect("bind");
    allowed.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let allowed_port = allowed.local_addr().expect("addr").port();
    let agent = Agent::start(&format!(
        "listeners:\n  - name: half\n    spec: {{protocol: UDP, port: {port}, address: 127.0.0.1, connect: {{port: {allowed_port}}}}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]\n"
    ));
    let other = udp_client(port);
    other
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    other.send(b"no").expect("send");
    let mut buf = [0u8; 10];
    assert!(other.recv(&mut buf).is_err());
    allowed.send_to(b"yes", ("127.0.0.1", port)).expect("send");
    let (n, _) = allowed.recv_from(&mut buf).expect("echo");
    assert_eq!(&buf[..n], b"yes");
    agent.wait_log("connect spec excludes");
}

#[test]
fn udp_over_ipv6_loopback() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; skipping");
        return;
    }
    let port = free_port();
    let _agent = Agent::start(&format!(
        "listeners:\n  - name: v6\n    spec: {{protocol: UDP, port: {port}, address: '::1'}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]\n"
    ));
    let c = UdpSocket::bind("[::1]:0").expect("bind");
    c.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    c.connect(("::1", port)).expect("connect");
    c.send(b"over v6").expect("send");
    assert_eq!(recv(&c), b"over v6");
}

#[test]
fn udp_to_discard_swallows_everything() {
    let port = free_port();
    let mut agent = Agent::start(&format!(
        "listeners:\n  - name: d\n    spec: {{protocol: UDP, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Discard}}}}}}}}}}]\n"
    ));
    let c = udp_client(port);
    c.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    for _ in 0..10 {
        c.send(b"gone").expect("send");
    }
    let mut buf = [0u8; 10];
    assert!(c.recv(&mut buf).is_err(), "Discard sends nothing back");
    assert!(agent.is_running());
}

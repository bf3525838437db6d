//! End-to-end tests of rules and chains with real sockets: a rewrite that a later hop routes on, `apply` jumps,
//! service chaining through remote TCP services (an ingress service on the uplink only, an egress service on the
//! downlink only), and a chain that mixes a transform with a remote service. Every socket read is bounded by the
//! harness's timeout.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;

/// What a test TCP service saw: the bytes of each connection, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Vec<u8>>>>);

impl Seen {
    fn connections(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().clone()
    }
}

/// A TCP service on 127.0.0.1 that records what it reads. `streaming`: each chunk read is answered with `f(chunk)`
/// at once; otherwise the whole input is answered with `f(input)` once the client half-closes. It closes after EOF.
fn service(streaming: bool, f: fn(&[u8]) -> Vec<u8>) -> (u16, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Seen::default();
    let record = seen.clone();
    thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            let record = record.clone();
            thread::spawn(move || {
                let mut c = c;
                c.set_read_timeout(Some(TIMEOUT)).unwrap();
                let slot = {
                    let mut all = record.0.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let mut buf = vec![0u8; 65536];
                let mut whole = Vec::new();
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            record.0.lock().unwrap()[slot].extend_from_slice(&buf[..n]);
                            if streaming {
                                if c.write_all(&f(&buf[..n])).is_err() {
                                    return;
                                }
                            } else {
                                whole.extend_from_slice(&buf[..n]);
                            }
                        }
                    }
                }
                if !streaming {
                    let _ = c.write_all(&f(&whole));
                }
            });
        }
    });
    (port, seen)
}

fn upper(b: &[u8]) -> Vec<u8> {
    b.to_ascii_uppercase()
}

fn reversed(b: &[u8]) -> Vec<u8> {
    b.iter().rev().copied().collect()
}

fn same(b: &[u8]) -> Vec<u8> {
    b.to_vec()
}

fn tcp_cluster(name: &str, port: u16) -> String {
    format!(
        "  - {{ name: {name}, spec: {{ protocol: TCP, port: {port} }}, endpoints: [ {{ spec: {{ address: 127.0.0.1 }} }} ] }}\n"
    )
}

/// (a) The front listener's rule rewrites `/labels/tier` and routes to a JSONSocket cluster whose header carries the
/// label; the back listener's rule jumps into a RuleList whose first rule matches on the rewritten label and routes
/// to an upper-casing service. A second front listener without the rewrite lands on the plain echo.
#[test]
fn a_rewritten_label_is_routed_on_by_a_rule_in_an_applied_rulelist() {
    let (front, plain, back) = (free_port(), free_port(), free_port());
    let (up_port, up_seen) = service(true, upper);
    let cfg = format!(
        r#"
listeners:
  - name: front
    spec: {{ protocol: TCP, port: {front}, address: 127.0.0.1 }}
    rules:
      - match: {{ op: starts, path: /IP/src_addr, value: "127." }}
        action:
          rewrite: [ {{ path: /labels/tier, value: gold }} ]
          route: {{ name: to-back, destination: js-back }}
  - name: plain
    spec: {{ protocol: TCP, port: {plain}, address: 127.0.0.1 }}
    rules: [ {{ action: {{ route: to-back }} }} ]
  - name: back
    spec: {{ protocol: JSONSocket, transport: {{ protocol: TCP, port: {back}, address: 127.0.0.1 }} }}
    rules: back-main
rulelists:
  - name: back-main
    rules: [ {{ action: {{ apply: by-tier }} }} ]
  - name: by-tier
    rules:
      - match: {{ op: test, path: /JSONSocket/labels/tier, value: gold }}
        action: {{ route: {{ name: gold, destination: upper }} }}
      - action: {{ route: {{ name: standard, destination: {{ spec: {{ protocol: Echo }} }} }} }}
clusters:
  - name: js-back
    spec:
      protocol: JSONSocket
      transport: {{ protocol: TCP, port: {back} }}
      header: [ {{ path: /labels/tier }} ]
    endpoints: [ {{ spec: {{ address: 127.0.0.1 }} }} ]
{upper}"#,
        upper = tcp_cluster("upper", up_port),
    );
    let agent = Agent::start(&cfg);
    assert_eq!(round_trip(tcp_client(front), b"gold please".to_vec()), b"GOLD PLEASE");
    assert_eq!(up_seen.connections(), vec![b"gold please".to_vec()]);
    assert_eq!(round_trip(tcp_client(plain), b"no label".to_vec()), b"no label");
    assert_eq!(
        up_seen.connections().len(),
        1,
        "the unlabelled session did not reach the gold service"
    );
    assert_eq!(agent.count_log("session failed"), 0);
}

/// (b) `apply` jumps two RuleLists deep; which list the session ends in picks the destination.
#[test]
fn apply_jumps_choose_the_destination() {
    let (a, b) = (free_port(), free_port());
    let (up_port, up_seen) = service(true, upper);
    let cfg = format!(
        r#"
listeners:
  - {{ name: a, spec: {{ protocol: TCP, port: {a}, address: 127.0.0.1 }}, rules: main }}
  - {{ name: b, spec: {{ protocol: TCP, port: {b}, address: 127.0.0.1 }}, rules: main }}
rulelists:
  - name: main
    rules:
      - match: {{ op: test, path: /TCP/dst_port, value: 1 }}
        action: {{ route: {{ destination: {{ spec: {{ protocol: Discard }} }} }} }}
      - match: {{ op: starts, path: /IP/src_addr, value: "127." }}
        action: {{ apply: level1, rewrite: [ {{ path: /labels/ignored, value: 1 }} ] }}
  - name: level1
    rules:
      - match: {{ op: test, path: /TCP/dst_port, value: {b} }}
        action: {{ apply: level2 }}
      - action: {{ route: {{ name: via-upper, destination: upper }} }}
  - name: level2
    rules:
      - match: {{ op: defined, path: /labels/ignored }}
        action: {{ route: {{ destination: {{ spec: {{ protocol: Discard }} }} }} }}
      - action: {{ route: {{ name: echo-b, destination: {{ spec: {{ protocol: Echo }} }} }} }}
clusters:
{upper}"#,
        upper = tcp_cluster("upper", up_port),
    );
    let agent = Agent::start(&cfg);
    assert_eq!(round_trip(tcp_client(a), b"to a".to_vec()), b"TO A");
    assert_eq!(round_trip(tcp_client(b), b"to b".to_vec()), b"to b");
    assert_eq!(up_seen.connections(), vec![b"to a".to_vec()]);
    assert_eq!(agent.count_log("session failed"), 0);
}

/// (c) Service chaining: the uplink passes a remote upper-casing service (ingress), the echo destination returns
/// it, and the downlink passes a remote reversing service (egress). Each service sees only its own direction.
#[test]
fn service_chaining_uses_each_remote_stage_in_one_direction_only() {
    let port = free_port();
    let (in_port, in_seen) = service(true, upper);
    let (out_port, out_seen) = service(false, reversed);
    let (echo_port, echo_seen) = service(true, same);
    let cfg = format!(
        r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules: [ {{ action: {{ route: {{ name: chained, destination: echo, ingress: [ up ], egress: [ rev ] }} }} }} ]
clusters:
{clusters}"#,
        clusters = [
            tcp_cluster("up", in_port),
            tcp_cluster("rev", out_port),
            tcp_cluster("echo", echo_port)
        ]
        .concat(),
    );
    let agent = Agent::start(&cfg);
    // Lower-case letters and other bytes, large enough to take several reads on the way.
    let sent: Vec<u8> = pattern(200_000, 7)
        .into_iter()
        .map(|b| if b < 128 { b'a' + b % 26 } else { b })
        .collect();
    let got = round_trip(tcp_client(port), sent.clone());
    let uplink = sent.to_ascii_uppercase();
    assert_eq!(
        in_seen.connections(),
        vec![sent.clone()],
        "the ingress service saw the uplink only"
    );
    assert_eq!(
        echo_seen.connections(),
        vec![uplink.clone()],
        "the destination got the transformed uplink"
    );
    assert_eq!(
        out_seen.connections(),
        vec![uplink.clone()],
        "the egress service saw the downlink only"
    );
    assert_eq!(got.len(), sent.len());
    assert!(
        got == reversed(&uplink),
        "the client got the reversed, upper-cased bytes"
    );
    assert_eq!(agent.count_log("session failed"), 0);

    // A second session gets its own connection to every chain service.
    assert_eq!(round_trip(tcp_client(port), b"abc".to_vec()), b"CBA");
    assert_eq!(in_seen.connections().len(), 2);
    assert_eq!(out_seen.connections().len(), 2);
    assert_eq!(in_seen.connections()[1], b"abc");
    assert_eq!(out_seen.connections()[1], b"ABC");
}

/// (d) One chain mixing a remote service and a transform: the uplink is upper-cased remotely, then wrapped in a
/// JSON envelope; the destination sees the envelope; the downlink is unwrapped by JSONDecap.
#[test]
fn a_chain_mixes_a_remote_service_and_a_transform() {
    let port = free_port();
    let (up_port, up_seen) = service(true, upper);
    let (echo_port, echo_seen) = service(true, same);
    let cfg = format!(
        r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules:
      - action:
          route:
            name: mixed
            destination: echo
            ingress: [ up, {{ spec: {{ protocol: JSONEncap }} }} ]
            egress: [ {{ spec: {{ protocol: JSONDecap }} }} ]
clusters:
{clusters}"#,
        clusters = [tcp_cluster("up", up_port), tcp_cluster("echo", echo_port)].concat(),
    );
    let agent = Agent::start(&cfg);
    assert_eq!(round_trip(tcp_client(port), b"ping".to_vec()), b"PING");
    assert_eq!(
        up_seen.connections(),
        vec![b"ping".to_vec()],
        "the remote stage saw the raw uplink"
    );
    let at_dest = echo_seen.connections();
    assert_eq!(at_dest.len(), 1);
    let env: Value = serde_json::from_slice(&at_dest[0]).expect("the destination got a JSON envelope");
    assert_eq!(env["payload"], "UElORw==", "base64 of the upper-cased uplink");
    assert_eq!(env["metadata"]["listener"], "tcp-in");
    assert_eq!(agent.count_log("session failed"), 0);
}

/// A configuration whose `apply` jumps loop is refused at start, naming the loop.
#[test]
fn an_apply_loop_is_refused_at_load() {
    let (code, stderr) = run_to_exit(
        "listeners:\n  - {name: l, spec: {protocol: TCP, port: 1}, rules: a}\nrulelists:\n  - {name: a, rules: [{action: {apply: b}}]}\n  - {name: b, rules: [{action: {apply: a}}]}\n",
        "loop.yaml",
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("rulelists \"a\" -> \"b\" -> \"a\": apply jumps form a loop"),
        "{stderr}"
    );
}

//! Traffic management through the real agent: load-balancing policies, passive outlier ejection, retries to another
//! endpoint and weighted (canary) splits between clusters.
//!
//! Upstreams are TCP servers on distinct loopback addresses (`127.0.0.11`, `.12`, ...) sharing one port (a
//! cluster's port is on the cluster, endpoints differ by address). Each one counts its connections and answers with
//! its address, then closes; a client session connects to the agent, reads to the end and so learns which endpoint
//! served it (nothing, when the agent could not connect upstream).

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Tagging TCP servers on `ips`, all on one port; returns the port and each server's connection count.
fn tagged_servers(ips: &[&str]) -> (u16, Vec<Arc<AtomicUsize>>) {
    'again: loop {
        let first = TcpListener::bind((ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)) {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'again,
            }
        }
        let mut counts = Vec::new();
        for (l, ip) in listeners.into_iter().zip(ips) {
            let count = Arc::new(AtomicUsize::new(0));
            counts.push(count.clone());
            let tag = ip.to_string();
            thread::spawn(move || {
                for mut c in l.incoming().map_while(Result::ok) {
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = c.write_all(tag.as_bytes());
                }
            });
        }
        return (port, counts);
    }
}

/// One session through the agent on `port`, from source address `src` (any when `None`): the tag of the endpoint
/// that served it, or `None` when the session failed.
fn session(port: u16, src: Option<Ipv4Addr>) -> Option<String> {
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s: TcpStream = match src {
        None => TcpStream::connect(to).unwrap(),
        Some(ip) => {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
            sock.connect(&to.into()).unwrap();
            sock.into()
        }
    };
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut tag = String::new();
    match s.read_to_string(&mut tag) {
        Ok(_) if !tag.is_empty() => Some(tag),
        _ => None,
    }
}

/// The source address of key `i` (distinct for i < 62,500).
fn key_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn config(port: u16, upstream: u16, loadbalancer: &str, endpoints: &[(&str, &str, u32)], retry: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(name, ip, w)| format!("      - {{ name: {name}, spec: {{ address: {ip} }}, weight: {w} }}"))
        .collect();
    format!(
        r#"
listeners:
  - name: in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: up {retry} }} }} }}]
clusters:
  - name: up
    spec: {{ protocol: TCP, port: {upstream} }}
    loadbalancer: {loadbalancer}
    endpoints:
{}
"#,
        eps.join("\n")
    )
}

/// `n` sessions from `threads` client threads; how many each tag got (`""`: failed sessions).
fn spread(port: u16, n: usize, threads: usize) -> HashMap<String, usize> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            thread::spawn(move || {
                let mut m = HashMap::new();
                for _ in (t..n).step_by(threads) {
                    *m.entry(session(port, None).unwrap_or_default()).or_insert(0) += 1;
                }
                m
            })
        })
        .collect();
    let mut total = HashMap::new();
    for h in handles {
        for (k, v) in h.join().unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

#[test]
fn consistent_hash_is_sticky_and_an_added_endpoint_takes_about_a_quarter_of_the_keys() {
    let ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"];
    let (upstream, _) = tagged_servers(&ips);
    let lb = "{ policy: ConsistentHash, key: /IP/src_addr }";
    let eps: Vec<(&str, &str, u32)> = vec![("a", ips[0], 1), ("b", ips[1], 1), ("c", ips[2], 1), ("d", ips[3], 1)];
    let (p3, p4) = (free_port(), free_port());
    let _three = Agent::start(&config(p3, upstream, lb, &eps[..3], ""));
    let _four = Agent::start(&config(p4, upstream, lb, &eps, ""));

    // The same key, 100 sessions: one endpoint.
    let first = session(p3, Some(key_addr(0))).unwrap();
    for _ in 0..100 {
        assert_eq!(
            session(p3, Some(key_addr(0))).unwrap(),
            first,
            "same key, same endpoint"
        );
    }
    // 300 keys on 3 and on 4 endpoints.
    const KEYS: usize = 300;
    let mut moved = 0;
    let mut per_endpoint: HashMap<String, usize> = HashMap::new();
    for i in 0..KEYS {
        let on3 = session(p3, Some(key_addr(i))).unwrap();
        let on4 = session(p4, Some(key_addr(i))).unwrap();
        *per_endpoint.entry(on3.clone()).or_insert(0) += 1;
        if on3 != on4 {
            assert_eq!(on4, ips[3], "key {i} moved between old endpoints");
            moved += 1;
        }
        assert_eq!(session(p3, Some(key_addr(i))).unwrap(), on3, "key {i} stays");
    }
    eprintln!("3 endpoints: {per_endpoint:?}; {moved} of {KEYS} keys moved to the 4th endpoint");
    // Ideal 75 (1/4); binomial standard deviation 7.5.
    assert!((45..=105).contains(&moved), "{moved} of {KEYS} keys moved");
    assert!(per_endpoint.values().all(|&n| n >= 60), "{per_endpoint:?}");
}

#[test]
fn weighted_random_follows_the_weights() {
    let ips = ["127.0.0.11", "127.0.0.12"];
    let (upstream, counts) = tagged_servers(&ips);
    let port = free_port();
    let _agent = Agent::start(&config(
        port,
        upstream,
        "{ policy: WeightedRandom }",
        &[("a", ips[0], 1), ("b", ips[1], 3)],
        "",
    ));
    const N: usize = 2000;
    let got = spread(port, N, 4);
    let b = got.get(ips[1]).copied().unwrap_or(0);
    eprintln!("WeightedRandom 1:3 over {N} sessions: {got:?}");
    assert_eq!(got.get("").copied().unwrap_or(0), 0, "no session failed: {got:?}");
    // Expected 75% = 1500; within 5 percentage points (100 sessions, about 5 standard deviations).
    assert!(b.abs_diff(1500) <= 100, "{got:?}");
    assert_eq!(counts[0].load(Ordering::SeqCst) + counts[1].load(Ordering::SeqCst), N);
}

#[test]
fn round_robin_takes_turns_by_weight() {
    let ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
    let (upstream, _) = tagged_servers(&ips);
    let (p1, p2) = (free_port(), free_port());
    let eps = [("a", ips[0], 1), ("b", ips[1], 1), ("c", ips[2], 1)];
    let _plain = Agent::start(&config(p1, upstream, "{ policy: RoundRobin }", &eps, ""));
    let order: Vec<String> = (0..9).map(|_| session(p1, None).unwrap()).collect();
    let want: Vec<&str> = ips.iter().cycle().take(9).copied().collect();
    assert_eq!(order, want);
    // Weights 2:1 interleave (smooth weighted round robin): a b a, a b a.
    let _weighted = Agent::start(&config(
        p2,
        upstream,
        "{ policy: WeightedRoundRobin }",
        &[("a", ips[0], 2), ("b", ips[1], 1)],
        "",
    ));
    let order: Vec<String> = (0..6).map(|_| session(p2, None).unwrap()).collect();
    assert_eq!(order, [ips[0], ips[1], ips[0], ips[0], ips[1], ips[0]]);
}

#[test]
fn a_dead_endpoint_is_ejected_then_tried_again_after_its_cool_down() {
    let (upstream, _) = tagged_servers(&["127.0.0.11"]);
    let live = "127.0.0.11";
    let port = free_port();
    let agent = Agent::start(&config(
        port,
        upstream,
        "{ policy: RoundRobin, outlier_detection: { consecutive_failures: 3, ejection_time: 2 } }",
        // Nothing listens on 127.0.0.19: connection refused.
        &[("dead", "127.0.0.19", 1), ("live", live, 1)],
        "",
    ));
    // Turns: dead, live, dead, live, dead -> the third failure in a row ejects it.
    let first: Vec<Option<String>> = (0..5).map(|_| session(port, None)).collect();
    let l = Some(live.to_string());
    assert_eq!(first, [None, l.clone(), None, l.clone(), None]);
    let ejected_at = Instant::now();
    agent.wait_log("endpoint ejected for 2s after 3 connect failures in a row");
    // Until the cool-down ends, every session goes to the live endpoint.
    let mut during = 0;
    while ejected_at.elapsed() < Duration::from_millis(1500) && during < 50 {
        assert_eq!(session(port, None), l, "session {during} after the ejection");
        during += 1;
    }
    assert!(during >= 10, "only {during} sessions in the cool-down");
    // After it, the dead endpoint gets one more try and is ejected for twice as long.
    thread::sleep(Duration::from_millis(2200).saturating_sub(ejected_at.elapsed()));
    let after: Vec<Option<String>> = (0..4).map(|_| session(port, None)).collect();
    assert_eq!(after.iter().filter(|s| s.is_none()).count(), 1, "{after:?}");
    agent.wait_log("endpoint returns after its cool-down");
    agent.wait_log("endpoint ejected for 4s: its connect failed again after its cool-down");
    assert_eq!(
        (0..10).map(|_| session(port, None)).filter(|s| s != &l).count(),
        0,
        "ejected again"
    );
}

#[test]
fn a_retry_goes_to_another_endpoint_without_the_pause() {
    let (upstream, _) = tagged_servers(&["127.0.0.11"]);
    let live = "127.0.0.11";
    let port = free_port();
    let _agent = Agent::start(&config(
        port,
        upstream,
        // Outlier detection off: every other session meets the dead endpoint first.
        "{ policy: RoundRobin, outlier_detection: false }",
        &[("dead", "127.0.0.19", 1), ("live", live, 1)],
        ", retry: { retry_on: connect-failure, num_retries: 1, timeout: 5000 }",
    ));
    let start = Instant::now();
    for i in 0..20 {
        assert_eq!(session(port, None).as_deref(), Some(live), "session {i}");
    }
    // Ten of them failed over; a single 5 s pause would show.
    assert!(start.elapsed() < Duration::from_secs(4), "took {:?}", start.elapsed());
}

#[test]
fn a_canary_split_of_2000_sessions_lands_90_10() {
    let ips = ["127.0.0.11", "127.0.0.12"];
    let (upstream, counts) = tagged_servers(&ips);
    let port = free_port();
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules:
      - action:
          route:
            destination:
              - {{ cluster: stable, weight: 90 }}
              - {{ cluster: canary, weight: 10 }}
clusters:
  - name: stable
    spec: {{ protocol: TCP, port: {upstream} }}
    endpoints: [{{ spec: {{ address: {} }} }}]
  - name: canary
    spec: {{ protocol: TCP, port: {upstream} }}
    endpoints: [{{ spec: {{ address: {} }} }}]
"#,
        ips[0], ips[1]
    ));
    const N: usize = 2000;
    let start = Instant::now();
    let got = spread(port, N, 4);
    let (stable, canary) = (
        got.get(ips[0]).copied().unwrap_or(0),
        got.get(ips[1]).copied().unwrap_or(0),
    );
    eprintln!("canary split 90/10 over {N} sessions in {:?}: {got:?}", start.elapsed());
    assert_eq!(stable + canary, N, "every session served: {got:?}");
    // Within 5% of the expected share (relative): 1800 +- 90 and 200 +- 10. Smooth weighted round robin makes it
    // exact.
    assert!(stable.abs_diff(1800) <= 90 && canary.abs_diff(200) <= 10, "{got:?}");
    assert_eq!(
        counts[0].load(Ordering::SeqCst),
        stable,
        "the stable upstream counted its sessions"
    );
    assert_eq!(
        counts[1].load(Ordering::SeqCst),
        canary,
        "the canary upstream counted its sessions"
    );
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn every_yaml_example_in_the_load_balancing_page_passes_check() {
    let text = std::fs::read_to_string(repo_root().join("docs/load-balancing.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut block: Option<String> = None;
    for line in text.lines() {
        match &mut block {
            None if line.trim() == "```yaml" => block = Some(String::new()),
            Some(b) if line.trim() == "```" => {
                let file = dir.path().join(format!("example-{checked}.yaml"));
                std::fs::write(&file, &*b).unwrap();
                let out = std::process::Command::new(BIN)
                    .arg("--check")
                    .arg("-c")
                    .arg(&file)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "example {checked} is rejected:\n{}\n{b}",
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
                block = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    assert!(checked >= 4, "only {checked} examples");
}

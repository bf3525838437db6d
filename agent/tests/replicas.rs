//! Two `l7mp-control` replicas on one etcd, across network namespaces: etcd in one, replica A and replica B in two
//! others, two agents (each listing both replicas, in a different order) and the UDP backends and clients in more.
//!
//! What it proves: a change applied through replica A reaches the agent served by replica B; every replica lists
//! every agent; killing replica A mid-traffic moves its agent to B without dropping a session; killing etcd
//! mid-traffic leaves every agent configured and every session flowing while writes are refused with a clear error
//! and `l7mpctl status` says why; when etcd is back, the control plane recovers by itself and a write reaches every
//! agent.

#![allow(clippy::unwrap_used)]

mod common;
use common::mesh::*;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const ETCD: usize = 0;
const CA: usize = 1;
const CB: usize = 2;
const A1: usize = 3;
const A2: usize = 4;
const BACK: usize = 5;

/// The etcd binary, or `None` (the test skips) where it is not installed, unless `L7MP_REQUIRE_ETCD=1` (CI).
fn etcd_binary() -> Option<String> {
    let bin = std::env::var("L7MP_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into());
    if std::path::Path::new(&bin).exists() {
        return Some(bin);
    }
    assert!(
        std::env::var("L7MP_REQUIRE_ETCD").as_deref() != Ok("1"),
        "{bin} is missing and L7MP_REQUIRE_ETCD=1 (install etcd-server)"
    );
    eprintln!("skipping: {bin} is not installed (apt-get install etcd-server)");
    None
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sigkill(p: &mut Agent) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(p.pid() as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while unsafe { libc::kill(p.pid() as i32, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn replicas_on_etcd_share_the_mesh_and_ride_out_failures() {
    let Some(etcd_bin) = etcd_binary() else { return };
    let lan = match Lan::create("l7r", 78, &["etcd", "ca", "cb", "a1", "a2", "be"]) {
        Ok(l) => l,
        Err(e) if skip_netns() => {
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("cannot create the test network: {e} (run as root, or set L7MP_SKIP_NETNS=1)"),
    };
    let shm = std::path::Path::new("/dev/shm");
    let data = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let etcd_addr = lan.addr(ETCD);
    let etcd_cmd = || {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &lan.ns(ETCD).name, &etcd_bin])
            .args(["--name", "e2e", "--data-dir"])
            .arg(data.path().join("etcd"))
            .args(["--listen-client-urls", &format!("http://{etcd_addr}:2379")])
            .args(["--advertise-client-urls", &format!("http://{etcd_addr}:2379")])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "e2e=http://127.0.0.1:2380"]);
        c
    };
    let mut etcd = Agent::start_command(etcd_cmd(), "ready to serve client requests");
    let store = format!("etcd://{etcd_addr}:2379/l7mp-e2e");
    let url = |i: usize| format!("http://{}:18000", lan.addr(i));
    let control = |i: usize| {
        let listen = format!("{}:18000", lan.addr(i));
        Agent::start_program(
            &["ip", "netns", "exec", &lan.ns(i).name],
            "l7mp-control",
            &["--listen", &listen, "--store", &store, "--insecure"],
            "l7mp-control running",
        )
    };
    let mut ctl_a = control(CA);
    let _ctl_b = control(CB);
    let ctl = |i: usize, args: &[&str], stdin: Option<&str>| l7mpctl_in(&lan, i, &url(i), args, stdin);

    let empty = tempfile::tempdir().unwrap();
    let cfg = empty.path().join("empty.yaml");
    std::fs::write(&cfg, "listeners: []\n").unwrap();
    let agent = |i: usize, servers: String| {
        let dir = tempfile::tempdir().unwrap();
        let (node, address) = (format!("agent-{i}"), lan.addr(i));
        let a = Agent::start_prefixed(
            &["ip", "netns", "exec", &lan.ns(i).name],
            &cfg,
            dir,
            &[
                "--xds",
                &servers,
                "--node-id",
                &node,
                "--labels",
                "app=gw",
                "--address",
                &address,
            ],
        );
        a.wait_log("xDS: connected");
        a
    };
    // Agent 1 prefers replica A, agent 2 replica B.
    let a1 = agent(A1, format!("{},{}", url(CA), url(CB)));
    let a2 = agent(A2, format!("{},{}", url(CB), url(CA)));
    backend(lan.ns(BACK), 7000, "old");
    backend(lan.ns(BACK), 7001, "new");
    let via = |a: usize| client(lan.ns(BACK), format!("{}:9000", lan.addr(a)));

    // Applied through replica A: both agents serve it, also the one replica B serves.
    let (ok, out) = ctl(CA, &["apply", "-f", "-"], Some(&mesh_yaml(&lan.addr(BACK), 7000)));
    assert!(ok && out.contains("Accepted"), "{out}");
    for a in [A1, A2] {
        assert_eq!(
            ask(&via(a), b"hi", Duration::from_secs(10)).as_deref(),
            Some("old:hi"),
            "agent {a}"
        );
    }
    // Every replica lists every agent, with the replica that serves it.
    let replica_of = |i: usize| {
        let (_, out) = ctl(i, &["status", "-o", "json"], None);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        v["replica"].as_str().unwrap().to_string()
    };
    let (rep_a, rep_b) = (replica_of(CA), replica_of(CB));
    assert_ne!(rep_a, rep_b);
    let served_by = |i: usize, node: &str| -> Option<String> {
        let (_, out) = ctl(i, &["agents", "-o", "json"], None);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v.as_array()?
            .iter()
            .find(|a| a["node_id"] == node)
            .and_then(|a| a["replica"].as_str().map(str::to_owned))
    };
    for i in [CA, CB] {
        wait_until("every replica lists both agents", Duration::from_secs(10), || {
            served_by(i, "agent-3") == Some(rep_a.clone()) && served_by(i, "agent-4") == Some(rep_b.clone())
        });
    }

    // One session through each agent keeps going through everything that follows.
    let steady1 = Steady::start(via(A1));
    let steady2 = Steady::start(via(A2));
    std::thread::sleep(Duration::from_millis(300));

    // Replica A dies: its agent moves to replica B, sessions keep flowing.
    sigkill(&mut ctl_a);
    wait_until("agent 1 reconnects to replica B", Duration::from_secs(20), || {
        a1.count_log("xDS: connected") >= 2
    });
    wait_until("replica B serves agent 1", Duration::from_secs(20), || {
        served_by(CB, "agent-3") == Some(rep_b.clone())
    });
    assert_eq!(
        ask(&via(A1), b"moved", Duration::from_secs(5)).as_deref(),
        Some("old:moved")
    );

    // etcd dies: agents keep their configuration, status says why (without anyone writing), writes are refused
    // with the reason.
    sigkill(&mut etcd);
    wait_until("replica B reports the outage", Duration::from_secs(15), || {
        let (ok, out) = ctl(CB, &["status"], None);
        !ok && out.contains("NOT READY") && out.contains("unreachable")
    });
    let (ok, out) = ctl(CB, &["apply", "-f", "-"], Some(&mesh_yaml(&lan.addr(BACK), 7001)));
    assert!(
        !ok && out.contains("the store is unreachable") && out.contains("nothing was written"),
        "a write during the outage: {out}"
    );
    let (ok, out) = ctl(CB, &["status"], None);
    assert!(!ok && out.contains("NOT READY") && out.contains("unreachable"), "{out}");
    for a in [A1, A2] {
        assert_eq!(
            ask(&via(a), b"outage", Duration::from_secs(5)).as_deref(),
            Some("old:outage"),
            "agent {a} during the outage"
        );
    }

    // etcd is back: the control plane is ready again by itself, and a write reaches every agent.
    let _etcd = Agent::start_command(etcd_cmd(), "ready to serve client requests");
    wait_until("replica B ready again", Duration::from_secs(30), || {
        ctl(CB, &["status"], None).0
    });
    let (ok, out) = ctl(CB, &["apply", "-f", "-"], Some(&mesh_yaml(&lan.addr(BACK), 7001)));
    assert!(ok, "a write after the outage: {out}");
    for a in [A1, A2] {
        wait_until(&format!("agent {a} takes the change"), Duration::from_secs(15), || {
            ask(&via(a), b"x", Duration::from_secs(1)).as_deref() == Some("new:x")
        });
    }

    // No session dropped: every steady session stayed on its endpoint and got (nearly) every answer.
    for (n, s) in [(1, steady1), (2, steady2)] {
        let (sent, got) = s.finish();
        assert!(sent > 100, "steady session {n} sent only {sent}");
        assert!(
            got.iter().all(|m| m.starts_with("old:")),
            "steady session {n} changed endpoint"
        );
        assert!(
            got.len() * 100 >= sent * 95,
            "steady session {n} lost answers: {} of {sent}",
            got.len()
        );
    }
    drop((a1, a2));
}

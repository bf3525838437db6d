//! The mesh end to end across network namespaces: `l7mp-control` (embedded store) in one, two agents fed over xDS
//! in two others, UDP backends and a client in a fifth, `l7mpctl` driving it all.
//!
//! What it proves: an applied VirtualService + Target + Route reaches exactly the agents it selects and carries
//! traffic; a Target's new endpoints take new sessions while live ones stay; a broken object is Rejected alone;
//! an agent that cannot bind a port NACKs (visible in `l7mpctl agents`); killing the control plane stops nothing
//! and, restarted on the same store, it resyncs the agents without dropping a session; a delete removes the
//! listener everywhere.

#![allow(clippy::unwrap_used)]

mod common;
use common::mesh::*;
use common::*;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

const CTL: usize = 0;
const A1: usize = 1;
const A2: usize = 2;
const BACK: usize = 3;

/// Runs `l7mpctl` against the control plane, in its namespace.
fn l7mpctl(lan: &Lan, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    l7mpctl_in(lan, CTL, &format!("http://{}:18000", lan.addr(CTL)), args, stdin)
}

fn apply(lan: &Lan, yaml: &str) -> String {
    let (ok, out) = l7mpctl(lan, &["apply", "-f", "-"], Some(yaml));
    assert!(ok, "l7mpctl apply failed: {out}");
    out
}

#[test]
fn mesh_end_to_end_across_namespaces() {
    let lan = match Lan::create("l7m", 77, &["ctl", "a1", "a2", "be"]) {
        Ok(l) => l,
        Err(e) if skip_netns() => {
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("cannot create the test network: {e} (run as root, or set L7MP_SKIP_NETNS=1)"),
    };
    let store = tempfile::tempdir().unwrap();
    let store_arg = format!("embedded:{}", store.path().display());
    let listen = format!("{}:18000", lan.addr(CTL));
    let ctl_args = ["--listen", listen.as_str(), "--store", store_arg.as_str(), "--insecure"];
    let ns_ctl = ["ip", "netns", "exec", lan.ns(CTL).name.as_str()];
    let mut control = Agent::start_program(&ns_ctl, "l7mp-control", &ctl_args, "l7mp-control running");
    let xds = format!("http://{}:18000", lan.addr(CTL));
    let empty = tempfile::tempdir().unwrap();
    let cfg = empty.path().join("empty.yaml");
    std::fs::write(&cfg, "listeners: []\n").unwrap();
    let agent = |i: usize, labels: &str| {
        let ns = lan.ns(i).name.clone();
        let dir = tempfile::tempdir().unwrap();
        let node = format!("agent-{i}");
        let address = lan.addr(i);
        let a = Agent::start_prefixed(
            &["ip", "netns", "exec", &ns],
            &cfg,
            dir,
            &[
                "--xds",
                &xds,
                "--node-id",
                &node,
                "--labels",
                labels,
                "--address",
                &address,
            ],
        );
        a.wait_log("xDS: connected");
        a
    };
    let a1 = agent(A1, "app=gw,zone=a");
    // The second agent's port 9000 is taken by something else: it will NACK when a VirtualService selects it.
    let squatter = lan.ns(A2).enter(|| UdpSocket::bind("0.0.0.0:9000").unwrap());
    let a2 = agent(A2, "app=other");
    backend(lan.ns(BACK), 7000, "old");
    backend(lan.ns(BACK), 7001, "new");

    // Apply: traffic flows through the selected agent only.
    let out = apply(&lan, &mesh_yaml(&lan.addr(BACK), 7000));
    assert!(out.contains("Accepted"), "{out}");
    let via_a1 = client(lan.ns(BACK), format!("{}:9000", lan.addr(A1)));
    assert_eq!(ask(&via_a1, b"hi", Duration::from_secs(10)).as_deref(), Some("old:hi"));
    let via_a2 = client(lan.ns(BACK), format!("{}:9000", lan.addr(A2)));
    assert_eq!(
        ask(&via_a2, b"hi", Duration::from_secs(1)),
        None,
        "an unselected agent answered"
    );
    let steady = Steady::start(client(lan.ns(BACK), format!("{}:9000", lan.addr(A1))));
    std::thread::sleep(Duration::from_millis(300));

    // New endpoints: new sessions go there, the live one stays.
    apply(&lan, &mesh_yaml(&lan.addr(BACK), 7001));
    let fresh = client(lan.ns(BACK), format!("{}:9000", lan.addr(A1)));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = client(lan.ns(BACK), format!("{}:9000", lan.addr(A1)));
        if ask(&fresh, b"x", Duration::from_secs(1)).as_deref() == Some("new:x") {
            break;
        }
        assert!(Instant::now() < deadline, "new sessions never reached the new endpoint");
    }
    drop(fresh);

    // A broken object is Rejected alone; the rest is undisturbed.
    let broken = "
apiVersion: l7mp.io/v1
kind: Target
metadata: { name: broken }
spec:
  cluster:
    spec: { UDP: { port: 99999 } }
    endpoints: [ { spec: { address: 10.0.0.1 } } ]
";
    let (ok, out) = l7mpctl(&lan, &["apply", "-f", "-"], Some(broken));
    assert!(!ok && out.contains("port"), "a broken object was accepted: {out}");

    // An object that parses but cannot be translated (its Target does not exist) is stored and Rejected with the
    // reason; the services already running are not disturbed.
    let dangling = "
apiVersion: l7mp.io/v1
kind: Route
metadata: { name: nowhere }
spec:
  destinationRef: no-such-target
";
    let out = apply(&lan, dangling);
    assert!(out.contains("Rejected") && out.contains("no-such-target"), "{out}");
    let (_, routes) = l7mpctl(&lan, &["get", "route", "nowhere", "-o", "json"], None);
    assert!(routes.contains("\"state\": \"Rejected\""), "{routes}");
    let check = client(lan.ns(BACK), format!("{}:9000", lan.addr(A1)));
    assert_eq!(
        ask(&check, b"still", Duration::from_secs(3)).as_deref(),
        Some("new:still")
    );

    // An agent that cannot bind the port NACKs, visibly.
    let both = mesh_yaml(&lan.addr(BACK), 7001).replace("matchLabels: { app: gw } }\n  listener", "}\n  listener");
    apply(&lan, &both);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, agents) = l7mpctl(&lan, &["agents"], None);
        if agents
            .lines()
            .any(|l| l.starts_with("agent-2") && l.contains("cannot listen"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no NACK of agent-2 in l7mpctl agents:\n{agents}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(squatter);

    // Kill the control plane mid-traffic: the agents keep serving; restarted on the same store, it resyncs them.
    control.terminate();
    std::thread::sleep(Duration::from_millis(500));
    let during = client(lan.ns(BACK), format!("{}:9000", lan.addr(A1)));
    assert_eq!(
        ask(&during, b"alone", Duration::from_secs(3)).as_deref(),
        Some("new:alone")
    );
    let _control = Agent::start_program(&ns_ctl, "l7mp-control", &ctl_args, "l7mp-control running");
    let deadline = Instant::now() + Duration::from_secs(20);
    while a1.count_log("xDS: connected") < 2 {
        assert!(Instant::now() < deadline, "agent 1 did not reconnect");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out) = l7mpctl(&lan, &["get", "vsvc"], None);
    assert!(ok && out.contains("gw"), "the store lost the VirtualService: {out}");
    let (sent, got) = steady.finish();
    assert!(sent > 100, "the steady client sent only {sent}");
    assert!(
        got.iter().all(|m| m.starts_with("old:")),
        "the live session changed endpoint"
    );
    assert!(
        got.len() * 100 >= sent * 95,
        "the live session lost answers: {} of {sent}",
        got.len()
    );

    // Delete: the listener is gone on every agent.
    let (ok, out) = l7mpctl(&lan, &["delete", "vsvc", "gw"], None);
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = client(lan.ns(BACK), format!("{}:9000", lan.addr(A1)));
        if ask(&c, b"gone?", Duration::from_millis(600)).is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the listener survived the delete");
    }
    drop((a1, a2));
}

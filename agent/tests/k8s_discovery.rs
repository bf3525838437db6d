//! Workload discovery end to end, across network namespaces: the fake Kubernetes API server (`l7mp-kube-fake`) and
//! `l7mp-control` (embedded store, `--discovery kubernetes:KUBECONFIG`) in one namespace, an agent that identifies
//! itself from the downward API (POD_NAME, POD_NAMESPACE, POD_IP, a podinfo labels file) in another, and UDP
//! backends on the addresses the fake's pods have as `status.podIP` in a third.
//!
//! What it proves: the agent is selected by its pod labels and registered as `POD_NAME.POD_NAMESPACE`; traffic
//! through it reaches exactly the ready pods; readiness flips and scaling move the traffic with them; a Target with
//! a bad pod selector is refused with the field path and disturbs nothing.

#![allow(clippy::unwrap_used)]

mod common;
use common::mesh::*;
use common::*;
use l7mp_kube_fake::{FakeApiServer, Gvr, Options};
use serde_json::json;
use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

const CTL: usize = 0;
const GW: usize = 1;
const BACK: usize = 2;

/// Backend pod addresses, added to the backends' namespace: 10.79.0.1x.
fn pod_ip(i: usize) -> String {
    format!("10.79.0.{}", 10 + i)
}

/// A UDP server on `ip:port` in namespace `ns`, answering `<tag>:<datagram>`.
fn backend_on(ns: &Netns, ip: String, port: u16, tag: String) {
    let sock = ns.enter(move || UdpSocket::bind((ip.as_str(), port)).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&[tag.as_bytes(), b":", &buf[..n]].concat(), peer);
        }
    });
}

fn pod(fake: &FakeApiServer, name: &str) {
    fake.create(
        &Gvr::core("pods"),
        "media",
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "media", "labels": {"app": "echo"}},
               "spec": {"containers": [{"name": "echo", "image": "echo"}]}}),
    )
    .unwrap();
}

/// Writes the pod's status as the kubelet would.
fn kubelet(fake: &FakeApiServer, name: &str, ip: &str, ready: bool) {
    let mut p = fake.get(&Gvr::core("pods"), "media", name).unwrap();
    p["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                         "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
    fake.update(&Gvr::core("pods"), "media", p, true).unwrap();
}

/// The backends that answer new sessions through the gateway (12 sessions, round robin).
fn reached(lan: &Lan) -> BTreeSet<String> {
    (0..12)
        .filter_map(|i| {
            let c = client(lan.ns(BACK), format!("{}:9000", lan.addr(GW)));
            ask(&c, format!("m{i}").as_bytes(), Duration::from_secs(1))
        })
        .filter_map(|a| a.split(':').next().map(str::to_owned))
        .collect()
}

fn wait_reached(lan: &Lan, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = reached(lan);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "traffic reaches {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const MESH: &str = "
apiVersion: l7mp.io/v1
kind: Target
metadata: { name: echo, namespace: media }
spec:
  selector: { app: gw }
  cluster:
    spec: { UDP: { port: 7000 } }
    loadbalancer: { policy: RoundRobin }
    endpoints:
      - pods: { selector: { app: echo } }
---
apiVersion: l7mp.io/v1
kind: VirtualService
metadata: { name: gw, namespace: media }
spec:
  selector: { matchLabels: { app: gw } }
  listener:
    spec: { UDP: { port: 9000 } }
    rules:
      - action: { route: { destinationRef: echo } }
";

#[test]
fn pods_discovered_in_kubernetes_carry_the_traffic() {
    let lan = match Lan::create("l7k", 79, &["ctl", "gw", "be"]) {
        Ok(l) => l,
        Err(e) if skip_netns() => {
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("cannot create the test network: {e} (run as root, or set L7MP_SKIP_NETNS=1)"),
    };
    for i in 1..=3 {
        let addr = format!("{}/24", pod_ip(i));
        ip(&["-n", &lan.ns(BACK).name, "addr", "add", &addr, "dev", "eth2"]).unwrap();
        backend_on(lan.ns(BACK), pod_ip(i), 7000, format!("echo-{i}"));
    }

    // The fake API server lives in the control plane's namespace, on its loopback.
    let fake = lan.ns(CTL).enter(|| FakeApiServer::start(Options::default()).unwrap());
    fake.create(
        &Gvr::core("namespaces"),
        "",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "media"}}),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    let store_arg = format!("embedded:{}", dir.path().join("store").display());
    let discovery = format!("kubernetes:{}", kubeconfig.display());
    let listen = format!("{}:18000", lan.addr(CTL));
    let ns_ctl = ["ip", "netns", "exec", lan.ns(CTL).name.as_str()];
    let control = Agent::start_program(
        &ns_ctl,
        "l7mp-control",
        &["--listen", &listen, "--store", &store_arg, "--discovery", &discovery],
        "l7mp-control running",
    );
    assert!(
        control.count_log("Kubernetes workloads listed") == 1,
        "discovery did not list before serving:\n{}",
        control.log_lines().join("\n")
    );

    // The agent as a pod: identity from the downward API only (no --node-id, --labels or --address).
    let podinfo = dir.path().join("podinfo-labels");
    std::fs::write(&podinfo, "app=\"gw\"\npod-template-hash=\"7c9f\"\n").unwrap();
    let cfg = dir.path().join("empty.yaml");
    std::fs::write(&cfg, "listeners: []\n").unwrap();
    let pod_ip_env = format!("POD_IP={}", lan.addr(GW));
    let xds = format!("http://{}:18000", lan.addr(CTL));
    let gw = Agent::start_prefixed(
        &[
            "env",
            "POD_NAME=gw-7c9f-x2x4z",
            "POD_NAMESPACE=media",
            &pod_ip_env,
            "ip",
            "netns",
            "exec",
            &lan.ns(GW).name,
        ],
        &cfg,
        tempfile::tempdir().unwrap(),
        &["--xds", &xds, "--labels-file", podinfo.to_str().unwrap()],
    );
    gw.wait_log("xDS: connected");
    let ctl = |args: &[&str], stdin: Option<&str>| l7mpctl_in(&lan, CTL, &xds, args, stdin);
    let (ok, agents) = ctl(&["agents"], None);
    assert!(ok, "{agents}");
    let line = agents
        .lines()
        .find(|l| l.starts_with("gw-7c9f-x2x4z.media"))
        .unwrap_or_else(|| panic!("the agent is not registered as POD_NAME.POD_NAMESPACE:\n{agents}"));
    assert!(
        line.contains("app=gw") && line.contains("pod-template-hash=7c9f") && line.contains(&lan.addr(GW)),
        "labels or address not from the downward API: {line}"
    );

    // Pods: two ready, one still starting.
    for i in 1..=3 {
        pod(&fake, &format!("echo-{i}"));
    }
    kubelet(&fake, "echo-1", &pod_ip(1), true);
    kubelet(&fake, "echo-2", &pod_ip(2), true);
    let (ok, out) = ctl(&["apply", "-f", "-"], Some(MESH));
    assert!(ok && out.contains("Accepted"), "{out}");
    wait_reached(&lan, &["echo-1", "echo-2"]);

    // Readiness and scale: traffic follows.
    kubelet(&fake, "echo-3", &pod_ip(3), true);
    wait_reached(&lan, &["echo-1", "echo-2", "echo-3"]);
    kubelet(&fake, "echo-2", &pod_ip(2), false);
    fake.delete(&Gvr::core("pods"), "media", "echo-1").unwrap();
    wait_reached(&lan, &["echo-3"]);
    pod(&fake, "echo-4");
    kubelet(&fake, "echo-4", &pod_ip(1), true); // a new pod, reusing the freed address
    wait_reached(&lan, &["echo-1", "echo-3"]);

    // A Target with a bad pod selector is refused with the field path; nothing else changes.
    let bad = "
apiVersion: l7mp.io/v1
kind: Target
metadata: { name: bad, namespace: media }
spec:
  cluster:
    spec: { UDP: { port: 7000 } }
    endpoints: [ { pods: { selector: { matchExpressions: [] } } } ]
";
    let (ok, out) = ctl(&["apply", "-f", "-"], Some(bad));
    assert!(
        !ok && out.contains("spec.cluster.endpoints[0].pods.selector.matchExpressions"),
        "the bad Target was not refused with its field path: {out}"
    );
    let (ok, out) = ctl(&["get", "tr", "-n", "media", "-o", "json"], None);
    assert!(ok && !out.contains("\"bad\""), "the bad Target was stored: {out}");
    assert!(out.contains("\"state\": \"Accepted\""), "{out}");
    wait_reached(&lan, &["echo-1", "echo-3"]);
    drop((gw, control, fake));
}

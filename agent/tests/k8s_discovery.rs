//! Workload discovery end to end, across network namespaces: the fake Kubernetes API server (`l7mp-kube-fake`) and
//! `l7mp-control` (embedded store, `--discovery kubernetes:KUBECONFIG`) in one namespace, an agent that identifies
//! itself from the downward API (POD_NAME, POD_NAMESPACE, POD_IP, a podinfo labels file) in another, and UDP
//! backends on the addresses the fake's pods have as `status.podIP` in a third.
//!
//! What it proves: the agent is selected by its pod labels and registered as `POD_NAME.POD_NAMESPACE`; traffic
//! through it reaches exactly the ready pods; readiness flips and scaling move the traffic with them; a Target with
//! a bad pod selector is refused with the field path and disturbs nothing.
//!
//! The second test keeps the l7mp objects in Kubernetes too (`--store kubernetes:`): they are created with the real
//! `kubectl` against the fake, the control plane writes their status there (Rejected with the field path for an
//! invalid one), and after the watches are cut and the history compacted (410) the control plane relists and a
//! change made meanwhile still reaches the agent.

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
    pod_labelled(fake, name, "echo");
}

fn pod_labelled(fake: &FakeApiServer, name: &str, app: &str) {
    fake.create(
        &Gvr::core("pods"),
        "media",
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "media", "labels": {"app": app}},
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
    reached_via(lan)
}

fn reached_via(lan: &Lan) -> BTreeSet<String> {
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
        &[
            "--listen",
            &listen,
            "--insecure",
            "--store",
            &store_arg,
            "--discovery",
            &discovery,
        ],
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

/// The four l7mp CRDs of `manifests/crds/`, as JSON.
fn crds() -> Vec<serde_json::Value> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for kind in ["virtualservices", "targets", "routes", "rules"] {
        let path = repo_root().join(format!("manifests/crds/l7mp.io_{kind}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = serde_json::Value::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push(v);
            }
        }
    }
    out
}

/// `kubectl --kubeconfig K ARGS` inside the control plane's namespace (where the fake listens), `stdin` piped in.
/// `None` when kubectl is not installed and that is allowed.
fn kubectl(lan: &Lan, kubeconfig: &std::path::Path, args: &[&str], stdin: &str) -> Option<(bool, String)> {
    use std::io::Write;
    if !std::path::Path::new("/usr/bin/kubectl").exists() && which("kubectl").is_none() {
        assert!(
            std::env::var("L7MP_REQUIRE_KUBECTL").as_deref() != Ok("1"),
            "L7MP_REQUIRE_KUBECTL=1 but kubectl is not installed"
        );
        return None;
    }
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &lan.ns(CTL).name, "kubectl", "--kubeconfig"])
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.exists())
}

/// Creates the objects of a multi-document YAML with kubectl, or straight in the fake without it.
fn create_objects(fake: &FakeApiServer, lan: &Lan, kubeconfig: &std::path::Path, yaml: &str) {
    use serde::Deserialize;
    if let Some((ok, out)) = kubectl(lan, kubeconfig, &["apply", "-f", "-"], yaml) {
        assert!(ok, "kubectl apply failed: {out}");
        return;
    }
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let v = serde_json::Value::deserialize(doc).unwrap();
        let plural = match v["kind"].as_str().unwrap() {
            "VirtualService" => "virtualservices",
            "Target" => "targets",
            "Route" => "routes",
            _ => "rules",
        };
        fake.create(&Gvr::new("l7mp.io", "v1", plural), "media", v).unwrap();
    }
}

/// Polls the fake until `check` holds for the object's status.
fn wait_status(fake: &FakeApiServer, plural: &str, name: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let obj = fake.get(&Gvr::new("l7mp.io", "v1", plural), "media", name);
        if let Some(o) = &obj
            && check(&o["status"])
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "status of {plural}/{name} never as expected: {obj:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn objects_kept_in_kubernetes_drive_real_agents() {
    let lan = match Lan::create("l7j", 76, &["ctl", "gw", "be"]) {
        Ok(l) => l,
        Err(e) if skip_netns() => {
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("cannot create the test network: {e} (run as root, or set L7MP_SKIP_NETNS=1)"),
    };
    let ip_of = |i: usize| format!("10.76.0.{}", 10 + i);
    for i in 1..=3 {
        ip(&[
            "-n",
            &lan.ns(BACK).name,
            "addr",
            "add",
            &format!("{}/24", ip_of(i)),
            "dev",
            "eth2",
        ])
        .unwrap();
        backend_on(lan.ns(BACK), ip_of(i), 7000, format!("echo-{i}"));
    }
    let fake = lan.ns(CTL).enter(|| {
        FakeApiServer::start(Options {
            bookmark_interval: Duration::from_millis(200),
            ..Options::default()
        })
        .unwrap()
    });
    fake.create(
        &Gvr::core("namespaces"),
        "",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "media"}}),
    )
    .unwrap();
    for crd in crds() {
        fake.create(
            &Gvr::new("apiextensions.k8s.io", "v1", "customresourcedefinitions"),
            "",
            crd,
        )
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    let store = format!("kubernetes:?kubeconfig={}", kubeconfig.display());
    let discovery = format!("kubernetes:{}", kubeconfig.display());
    let listen = format!("{}:18000", lan.addr(CTL));
    let ns_ctl = ["ip", "netns", "exec", lan.ns(CTL).name.as_str()];
    let control = Agent::start_program(
        &ns_ctl,
        "l7mp-control",
        &[
            "--listen",
            &listen,
            "--insecure",
            "--store",
            &store,
            "--discovery",
            &discovery,
        ],
        "l7mp-control running",
    );
    let podinfo = dir.path().join("podinfo-labels");
    std::fs::write(&podinfo, "app=\"gw\"\n").unwrap();
    let cfg = dir.path().join("empty.yaml");
    std::fs::write(&cfg, "listeners: []\n").unwrap();
    let pod_ip_env = format!("POD_IP={}", lan.addr(GW));
    let xds = format!("http://{}:18000", lan.addr(CTL));
    let gw = Agent::start_prefixed(
        &[
            "env",
            "POD_NAME=gw-0",
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

    // Pods, then the l7mp objects written with kubectl: the control plane reads them from Kubernetes.
    for i in 1..=2 {
        pod(&fake, &format!("echo-{i}"));
        kubelet(&fake, &format!("echo-{i}"), &ip_of(i), true);
    }
    pod_labelled(&fake, "echo-3", "canary");
    kubelet(&fake, "echo-3", &ip_of(3), true);
    create_objects(&fake, &lan, &kubeconfig, MESH);
    wait_reached(&lan, &["echo-1", "echo-2"]);
    // The control plane wrote their status into Kubernetes.
    wait_status(&fake, "virtualservices", "gw", |s| s["state"] == "Accepted");
    wait_status(&fake, "targets", "echo", |s| {
        s["state"] == "Accepted" && s["agents"]["placed"] == 1
    });
    if let Some((ok, out)) = kubectl(&lan, &kubeconfig, &["get", "vsvc", "-n", "media"], "") {
        assert!(
            ok && out.contains("gw") && out.contains("Accepted"),
            "kubectl get vsvc: {out}"
        );
    }

    // An object the schema allows but l7mp cannot use: Rejected, with the field path, in its status.
    let bad = "
apiVersion: l7mp.io/v1
kind: VirtualService
metadata: { name: bad, namespace: media }
spec:
  selector: { matchLabels: { app: nobody } }
  listener:
    spec: { UDP: { port: 9100 } }
    rules:
      - action: { route: { destinationRef: nowhere } }
";
    create_objects(&fake, &lan, &kubeconfig, bad);
    wait_status(&fake, "virtualservices", "bad", |s| {
        s["state"] == "Rejected"
            && s["reason"]
                .as_str()
                .is_some_and(|r| r.contains("spec.listener.rules[0]"))
    });

    // Cut every watch, change the Target meanwhile, forget the history (410): the control plane relists and the
    // change reaches the agent.
    fake.break_watches();
    let mut t = fake
        .get(&Gvr::new("l7mp.io", "v1", "targets"), "media", "echo")
        .unwrap();
    t["spec"]["cluster"]["endpoints"] = json!([{"pods": {"selector": {"app": "canary"}}}]);
    fake.update(&Gvr::new("l7mp.io", "v1", "targets"), "media", t, false)
        .unwrap();
    fake.compact();
    wait_reached(&lan, &["echo-3"]);
    assert!(
        control
            .log_lines()
            .iter()
            .any(|l| l.contains("is compacted") && l.contains("relisting")),
        "no relist after the 410 in the control plane's log:\n{}",
        control.log_lines().join("\n")
    );
    drop((gw, control, fake));
}

//! Proxyless gRPC end to end: a Python `grpcio` client (an xDS client no one here wrote) with a bootstrap file that
//! names a real `l7mp-control` resolves `xds:///echo`, and its calls land on real Python gRPC backends as the
//! VirtualService and Targets applied with `l7mpctl` say. Weights and endpoints changed with `l7mpctl` shift the
//! traffic; the client never NACKs (CSDS, the client's own xDS trace); a route gRPC would refuse is refused by
//! l7mp-control first (status reason), and grpcio is shown to NACK exactly that route when it is sent anyway.
//!
//! Needs `grpcio` in `L7MP_PYTHON` (skipped with a note otherwise, except under `L7MP_REQUIRE_CLIENTS`).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::plane::{Plane, python_with, repo};
use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use envoy_types::pb::envoy::service::status::v3::{ClientConfig, ClientStatusRequest};
use serde_json::Value;

/// The client's answers must come within this (each RPC has a 5 s deadline; a run gives up after 10 errors).
const ANSWER: Duration = Duration::from_secs(90);

fn script() -> String {
    repo().join("e2e/clients/grpc_xds.py").display().to_string()
}

/// A Python process speaking the line protocol of e2e/clients/grpc_xds.py.
struct Py {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    name: &'static str,
}

impl Py {
    fn spawn(name: &'static str, py: &str, args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Py {
        let mut cmd = Command::new(py);
        cmd.arg(script())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Py {
            stdin: child.stdin.take(),
            child,
            lines,
            name,
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(ANSWER)
            .unwrap_or_else(|e| panic!("{}: no answer within {ANSWER:?}: {e}", self.name))
    }

    fn ask(&mut self, cmd: &str) -> Value {
        let i = self.stdin.as_mut().unwrap();
        writeln!(i, "{cmd}").unwrap();
        i.flush().unwrap();
        let l = self.line();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{}: {e}: {l}", self.name))
    }

    /// `run N`: the answers by backend, and the errors.
    fn run(&mut self, n: usize) -> (BTreeMap<String, u64>, Value) {
        let v = self.ask(&format!("run {n}"));
        let counts = v["counts"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, c)| (k.clone(), c.as_u64().unwrap()))
            .collect();
        (counts, v["errors"].clone())
    }

    /// Calls until backend `id` answers (at most `n` calls).
    fn until(&mut self, id: &str, n: usize) -> bool {
        self.ask(&format!("until {id} {n}"))["seen"].as_bool().unwrap()
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two Targets (v1, v2) on the backends' port and the `echo` gRPC service routing `/test.Echo/` to them.
fn mesh(port: u16, v1: &[(&str, u32)], v2: &[&str], destination: &str) -> String {
    let eps = |e: &[(&str, u32)]| {
        e.iter()
            .map(|(a, w)| format!("{{spec: {{address: {a}}}, weight: {w}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let v2: Vec<(&str, u32)> = v2.iter().map(|a| (*a, 1)).collect();
    format!(
        r#"
apiVersion: l7mp.io/v1
kind: Target
metadata: {{name: echo-v1}}
spec:
  cluster:
    spec: {{HTTP: {{port: {port}}}}}
    endpoints: [{}]
---
apiVersion: l7mp.io/v1
kind: Target
metadata: {{name: echo-v2}}
spec:
  cluster:
    spec: {{HTTP: {{port: {port}}}}}
    endpoints: [{}]
---
apiVersion: l7mp.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  grpc: true
  listener:
    rules:
      - match: {{op: starts, path: /HTTP/url/path, value: /test.Echo/}}
        action:
          route:
            destination: {destination}
            retry: {{retry_on: connect-failure, num_retries: 2}}
"#,
        eps(v1),
        eps(&v2)
    )
}

fn csds(plane: &Plane, node: &str) -> ClientConfig {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = ClientStatusDiscoveryServiceClient::connect(plane.url()).await.unwrap();
        let r = c
            .fetch_client_status(ClientStatusRequest {
                node: Some(Node {
                    id: node.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.config.len(), 1, "CSDS knows node {node}");
        r.config.into_iter().next().unwrap()
    })
}

/// CSDS: (type URL suffix, name) → client status, for the node.
fn csds_status(plane: &Plane, node: &str) -> BTreeMap<(String, String), i32> {
    csds(plane, node)
        .generic_xds_configs
        .iter()
        .map(|g| {
            let ty = g.type_url.rsplit('.').next().unwrap_or_default().to_owned();
            ((ty, g.name.clone()), g.client_status)
        })
        .collect()
}

/// Node's `@grpc/grpc-js-xds` (installed by `.ci/run` under `$L7MP_CACHE/node-grpc-xds`, or `L7MP_NODE_MODULES`)
/// makes `n` calls to `xds:///echo`: the answers by backend. `None` (SKIP) without node or the modules, unless
/// `L7MP_REQUIRE_CLIENTS` is set.
fn node_client(plane: &Plane, dir: &std::path::Path, n: usize) -> Option<BTreeMap<String, u64>> {
    let modules = std::env::var("L7MP_NODE_MODULES").unwrap_or_else(|_| {
        let cache = std::env::var("L7MP_CACHE")
            .unwrap_or_else(|_| format!("{}/.cache/l7mp", std::env::var("HOME").unwrap_or_default()));
        format!("{cache}/node-grpc-xds/node_modules")
    });
    let have = std::path::Path::new(&modules).join("@grpc/grpc-js-xds").exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("L7MP_REQUIRE_CLIENTS").is_none(),
            "node or {modules}/@grpc/grpc-js-xds missing (bash .ci/run installs them)"
        );
        eprintln!("SKIP the Node client: node or {modules}/@grpc/grpc-js-xds missing");
        return None;
    }
    let boot = plane.bootstrap(dir, "node-client-1");
    let mut child = Command::new("node")
        .arg(repo().join("e2e/clients/node/grpc_xds_client.js"))
        .args(["xds:///echo", &n.to_string()])
        .env("GRPC_XDS_BOOTSTRAP", &boot)
        .env("NODE_PATH", &modules)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + ANSWER;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the Node client ran past {ANSWER:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["errors"], serde_json::json!({}), "{v}");
    Some(
        v["counts"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, c)| (k.clone(), c.as_u64().unwrap()))
            .collect(),
    )
}

/// The client's `GRPC_TRACE=xds_client` log: it received each of the four types, every response parsed without
/// errors, and every request it sent was an ACK (`error=OK`), none a NACK.
fn assert_no_nack_in_trace(trace: &str, types: usize) {
    let received: Vec<&str> = trace.lines().filter(|l| l.contains("received ADS response:")).collect();
    let sent: Vec<&str> = trace.lines().filter(|l| l.contains("sending ADS request:")).collect();
    let kinds: std::collections::BTreeSet<&str> = received
        .iter()
        .filter_map(|l| l.split("type_url=").nth(1)?.split(',').next())
        .collect();
    assert_eq!(kinds.len(), types, "types received: {kinds:?}\n{trace}");
    assert!(
        received.iter().all(|l| l.contains("num_errors=0")),
        "a response had errors: {received:#?}"
    );
    assert!(sent.len() > types, "requests: {sent:#?}");
    assert!(
        sent.iter().all(|l| l.contains("error=OK")),
        "the client NACKed: {sent:#?}"
    );
}

fn share(counts: &BTreeMap<String, u64>, id: &str) -> f64 {
    let total: u64 = counts.values().sum();
    *counts.get(id).unwrap_or(&0) as f64 / total.max(1) as f64
}

#[test]
fn grpcio_follows_weights_and_endpoints() {
    let Some(py) = python_with(&["grpc"]) else { return };
    let started = Instant::now();
    let plane = Plane::start();
    let dir = tempfile::tempdir().unwrap();
    // Three backends on one port of three loopback addresses: a Target's endpoints share its port.
    let port = common::plane::free_port();
    let specs: Vec<String> = [("A", "127.0.0.2"), ("B", "127.0.0.3"), ("C", "127.0.0.4")]
        .iter()
        .map(|(id, ip)| format!("{id}@{ip}:{port}"))
        .collect();
    let mut args = vec!["serve"];
    args.extend(specs.iter().map(String::as_str));
    let backends = Py::spawn("backends", &py, &args, &[], Stdio::inherit());
    assert_eq!(backends.line(), "ready");

    // All to v1 (A) first.
    plane.apply(&mesh(port, &[("127.0.0.2", 1)], &["127.0.0.3"], "echo-v1"));
    let boot = plane.bootstrap(dir.path(), "grpc-client-1");
    let trace = dir.path().join("client-trace.log");
    let mut client = Py::spawn(
        "client",
        &py,
        &[
            "client",
            "--bootstrap",
            &boot.display().to_string(),
            "--target",
            "xds:///echo",
        ],
        &[("GRPC_TRACE", "xds_client"), ("GRPC_VERBOSITY", "debug")],
        Stdio::from(std::fs::File::create(&trace).unwrap()),
    );
    let (counts, errors) = client.run(50);
    assert_eq!(counts.get("A"), Some(&50), "all calls to v1 (A): {counts:?} {errors}");

    // The client is listed as a gRPC client, and the service counts it as placed.
    let (_, agents) = plane.ctl(&["agents", "-o", "json"]);
    let agents: Value = serde_json::from_str(&agents).unwrap();
    let me = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["node_id"] == "grpc-client-1")
        .unwrap();
    assert_eq!(me["kind"], "grpc", "{agents}");
    let vs = plane.get("vsvc", "echo");
    assert_eq!(vs["status"]["state"], "Accepted", "{vs}");
    assert_eq!(vs["status"]["agents"]["placed"], 1, "{vs}");
    let (_, table) = plane.ctl(&["agents"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("grpc-client-1") && l.contains(" grpc ")),
        "{table}"
    );

    // Canary: 80/20 between v1 (A) and v2 (B).
    let split = "[{target: echo-v1, weight: 80}, {target: echo-v2, weight: 20}]";
    plane.apply(&mesh(port, &[("127.0.0.2", 1)], &["127.0.0.3"], split));
    assert!(client.until("B", 500), "the split never reached the client");
    let (counts, errors) = client.run(1000);
    eprintln!("80/20 split over 1000 RPCs: {counts:?}");
    assert_eq!(counts.values().sum::<u64>(), 1000, "errors: {errors}");
    let a = share(&counts, "A");
    assert!(
        (a - 0.8).abs() <= 0.05,
        "A got {a:.3} of the calls, want 0.80 ± 0.05: {counts:?}"
    );

    // The same split seen by a second independent xDS client, Node's @grpc/grpc-js-xds.
    if let Some(counts) = node_client(&plane, dir.path(), 1000) {
        eprintln!("80/20 split, @grpc/grpc-js-xds, 1000 RPCs: {counts:?}");
        assert_eq!(counts.values().sum::<u64>(), 1000, "{counts:?}");
        let a = share(&counts, "A");
        assert!(
            (a - 0.8).abs() <= 0.05,
            "Node: A got {a:.3}, want 0.80 ± 0.05: {counts:?}"
        );
    }

    // Move v2's endpoint from B to C: the 20% follow.
    plane.apply(&mesh(port, &[("127.0.0.2", 1)], &["127.0.0.4"], split));
    assert!(client.until("C", 500), "the moved endpoint never reached the client");
    let (counts, errors) = client.run(1000);
    eprintln!("after moving v2 to C, 1000 RPCs: {counts:?}");
    assert_eq!(counts.values().sum::<u64>(), 1000, "errors: {errors}");
    assert_eq!(counts.get("B"), None, "B no longer an endpoint: {counts:?}");
    let c = share(&counts, "C");
    assert!((c - 0.2).abs() <= 0.05, "C got {c:.3}, want 0.20 ± 0.05: {counts:?}");

    // Endpoint weights inside one Target: v1 = A (weight 3) + B (weight 1), all traffic to v1.
    plane.apply(&mesh(
        port,
        &[("127.0.0.2", 3), ("127.0.0.3", 1)],
        &["127.0.0.4"],
        "echo-v1",
    ));
    assert!(client.until("B", 500), "the new endpoint never reached the client");
    let (counts, errors) = client.run(1000);
    eprintln!("v1 endpoints A:3 B:1, 1000 RPCs: {counts:?}");
    assert_eq!(counts.values().sum::<u64>(), 1000, "errors: {errors}");
    assert_eq!(counts.get("C"), None, "v2 no longer routed to: {counts:?}");
    let a = share(&counts, "A");
    assert!((a - 0.75).abs() <= 0.05, "A got {a:.3}, want 0.75 ± 0.05: {counts:?}");

    // Ring hash on a header: v1 = A + B, hashed on x-user; each user sticks to one backend, and both are used.
    plane.apply(&mesh(port, &[("127.0.0.2", 1), ("127.0.0.3", 1)], &["127.0.0.4"], "echo-v1").replace(
        "metadata: {name: echo-v1}\nspec:\n  cluster:\n",
        "metadata: {name: echo-v1}\nspec:\n  cluster:\n    loadbalancer: {policy: ConsistentHash, key: /HTTP/headers/x-user}\n",
    ));
    let mut sticky = false;
    for _ in 0..20 {
        let v = client.ask("hash 90 30");
        let users = v["users"].as_object().unwrap();
        let one_each = users.values().all(|b| b.as_array().unwrap().len() == 1);
        let used: std::collections::BTreeSet<&str> = users.values().filter_map(|b| b[0].as_str()).collect();
        if one_each && used == ["A", "B"].into() {
            eprintln!("ring hash on x-user: {users:?}");
            sticky = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(sticky, "users never stuck to one backend each over A and B");

    // Every resource the client holds is ACKed; it never NACKed.
    // (It may still be settling the last change: a removal goes out after the ACK of what replaced it.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut st = csds_status(&plane, "grpc-client-1");
    while st.values().any(|s| *s != ClientResourceStatus::Acked as i32) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        st = csds_status(&plane, "grpc-client-1");
    }
    for ty in ["Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"] {
        assert!(st.keys().any(|(t, _)| t == ty), "CSDS has no {ty}: {st:?}");
    }
    for ((ty, name), s) in &st {
        assert_eq!(*s, ClientResourceStatus::Acked as i32, "{ty} {name}: {st:?}");
    }
    drop(client);
    let trace = std::fs::read_to_string(&trace).unwrap();
    assert_no_nack_in_trace(&trace, 4);
    eprintln!("grpcio_follows_weights_and_endpoints: {:?}", started.elapsed());
}

/// The resources of a gRPC service exactly as l7mp-control would write them, without the checks.
fn unchecked_resources(yaml: &str) -> l7mp_control::xds::Snapshot {
    use l7mp_control::grpc::envoy;
    use l7mp_control::xds::{Snapshot, XdsResource};
    let resources = l7mp_api::resource::parse_documents(yaml).unwrap();
    let t = l7mp_api::resource::translate(&resources, &[]);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    let mut snap = Snapshot::new();
    for (name, svc) in &t.grpc.services {
        let rc = svc.source.fqn();
        snap.insert(XdsResource::from_message(name.clone(), &envoy::listener(name, &rc)));
        snap.insert(XdsResource::from_message(
            rc.clone(),
            &envoy::route_configuration(&rc, svc),
        ));
    }
    for (name, c) in &t.grpc.clusters {
        snap.insert(XdsResource::from_message(name.clone(), &envoy::cluster(c)));
        snap.insert(XdsResource::from_message(name.clone(), &envoy::load_assignment(c)));
    }
    snap
}

#[test]
fn a_route_grpc_would_refuse_is_rejected_before_it_is_sent() {
    let Some(py) = python_with(&["grpc"]) else { return };
    let started = Instant::now();
    let plane = Plane::start();
    let dir = tempfile::tempdir().unwrap();
    let port = common::plane::free_port();
    let (a, b) = (format!("A@127.0.0.2:{port}"), format!("B@127.0.0.3:{port}"));
    let backends = Py::spawn("backends", &py, &["serve", &a, &b], &[], Stdio::inherit());
    assert_eq!(backends.line(), "ready");
    plane.apply(&mesh(port, &[("127.0.0.2", 1)], &["127.0.0.3"], "echo-v1"));
    let boot = plane.bootstrap(dir.path(), "grpc-client-2");
    let trace = dir.path().join("client-trace.log");
    let mut client = Py::spawn(
        "client",
        &py,
        &[
            "client",
            "--bootstrap",
            &boot.display().to_string(),
            "--target",
            "xds:///echo",
        ],
        &[("GRPC_TRACE", "xds_client"), ("GRPC_VERBOSITY", "debug")],
        Stdio::from(std::fs::File::create(&trace).unwrap()),
    );
    assert_eq!(client.run(20).0.get("A"), Some(&20));

    // Weights that each fit in 32 bits but whose sum does not: the l7mp model takes them, gRPC would NACK the
    // RouteConfiguration. l7mp-control refuses the update instead, and says why.
    let overflow = "[{target: echo-v1, weight: 4000000000}, {target: echo-v2, weight: 1000000000}]";
    let bad = mesh(port, &[("127.0.0.2", 1)], &["127.0.0.3"], overflow);
    let out = plane.apply(&bad);
    eprintln!("l7mpctl apply: {out}");
    assert!(
        out.contains("VirtualService/default/echo") && out.contains("Rejected"),
        "{out}"
    );
    let vs = plane.get("vsvc", "echo");
    let reason = vs["status"]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.starts_with(
            "spec.grpc: the Envoy RouteConfiguration \"default/echo\" would be refused by gRPC clients: \
                            virtual_hosts[0].routes[0].route.weighted_clusters: the sum of the weights (5000000000) \
                            exceeds 4294967295"
        ),
        "{reason}"
    );
    assert!(
        reason.ends_with("gRPC clients keep its last accepted version"),
        "{reason}"
    );
    // The client was not sent it: it keeps calling v1, and it never NACKed.
    std::thread::sleep(Duration::from_millis(500));
    let (counts, errors) = client.run(200);
    assert_eq!(counts.get("A"), Some(&200), "{counts:?} {errors}");
    let st = csds_status(&plane, "grpc-client-2");
    assert!(!st.is_empty());
    assert!(st.values().all(|s| *s == ClientResourceStatus::Acked as i32), "{st:?}");
    drop(client);
    assert_no_nack_in_trace(&std::fs::read_to_string(&trace).unwrap(), 4);

    // Fixed: the split goes out.
    plane.apply(&mesh(
        port,
        &[("127.0.0.2", 1)],
        &["127.0.0.3"],
        "[{target: echo-v1, weight: 1}, {target: echo-v2, weight: 1}]",
    ));
    assert_eq!(plane.get("vsvc", "echo")["status"]["state"], "Accepted");

    // And grpcio does refuse exactly those resources when they are sent unchecked (an xDS server with no l7mp-control
    // logic in front of it): the NACK names the weights.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cache = std::sync::Arc::new(l7mp_control::xds::Cache::new());
    cache.set_snapshot("naive", unchecked_resources(&bad));
    let server = l7mp_control::xds::XdsServer::new(
        cache,
        std::sync::Arc::new(l7mp_control::xds::NoHooks),
        l7mp_control::xds::XdsConfig::default(),
    );
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let naive_port = listener.local_addr().unwrap().port();
    let s = server.clone();
    rt.spawn(async move { s.serve(listener, std::future::pending()).await });
    let boot = dir.path().join("naive.json");
    std::fs::write(
        &boot,
        serde_json::json!({"xds_servers": [{"server_uri": format!("127.0.0.1:{naive_port}"),
                           "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
                           "node": {"id": "naive"}})
        .to_string(),
    )
    .unwrap();
    let mut naive = Py::spawn(
        "naive client",
        &py,
        &[
            "client",
            "--bootstrap",
            &boot.display().to_string(),
            "--target",
            "xds:///echo",
        ],
        &[],
        Stdio::null(),
    );
    let (counts, errors) = naive.run(1);
    assert!(counts.is_empty(), "the call went through: {counts:?}");
    eprintln!("grpcio, sent the unchecked route: {errors}");
    let nack = server.agent("naive").and_then(|a| a.last_nack).expect("grpcio NACKed");
    eprintln!("its NACK: {}", nack.message);
    assert!(nack.type_url.ends_with("RouteConfiguration"), "{nack:?}");
    // The same field our check names.
    assert!(
        nack.message
            .contains("virtual_hosts[0].routes[0].route.weighted_clusters"),
        "{nack:?}"
    );
    assert!(nack.message.contains("weights exceeds uint32 max"), "{nack:?}");
    drop(naive);
    eprintln!(
        "a_route_grpc_would_refuse_is_rejected_before_it_is_sent: {:?}",
        started.elapsed()
    );
}

//! Workload discovery against the fake Kubernetes API server (`l7mp-kube-fake`), with the real control loop: pods
//! and EndpointSlices written as the kubelet and the EndpointSlice controller would, a Target selecting them, and
//! what is checked is each agent's snapshot (the ClusterLoad the xDS server would send): exactly the ready
//! addresses, following scale-up, scale-down and readiness flips, only the affected agents touched, and a watch
//! interrupted with 410 Gone relisting without ever dropping an endpoint.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use l7mp_api::wire;
use l7mp_control::controller::{ControlPlane, Hooks};
use l7mp_control::discovery::kubernetes;
use l7mp_control::store::{EmbeddedStore, Key, Precondition, Store};
use l7mp_control::xds::{NodeHooks, NodeInfo, Snapshot};
use l7mp_kube_fake::{FakeApiServer, Gvr, Options};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);
const CLUSTER_LOAD: &str = "type.googleapis.com/l7mp.config.v1.ClusterLoad";
const CLUSTER: &str = "type.googleapis.com/l7mp.config.v1.Cluster";

fn pods() -> Gvr {
    Gvr::core("pods")
}

fn slices() -> Gvr {
    Gvr::new("discovery.k8s.io", "v1", "endpointslices")
}

/// A pod as created (Pending, no IP), then its status written as the kubelet does.
fn pod(fake: &FakeApiServer, ns: &str, name: &str, app: &str) {
    fake.create(
        &pods(),
        ns,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
               "spec": {"containers": [{"name": "c", "image": "echo"}]}}),
    )
    .expect("pod created");
}

fn set_status(fake: &FakeApiServer, ns: &str, name: &str, ip: &str, ready: bool) {
    let mut p = fake.get(&pods(), ns, name).expect("pod exists");
    p["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                         "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
    fake.update(&pods(), ns, p, true).expect("status written");
}

fn ready_pod(fake: &FakeApiServer, ns: &str, name: &str, app: &str, ip: &str) {
    pod(fake, ns, name, app);
    set_status(fake, ns, name, ip, true);
}

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "l7mp.io/v1", "kind": kind, "metadata": {"name": name, "namespace": "media"}, "spec": spec})
}

struct Plane {
    fake: FakeApiServer,
    cp: Arc<ControlPlane>,
    store: Arc<EmbeddedStore>,
    _dir: tempfile::TempDir,
}

impl Plane {
    async fn start() -> Plane {
        let fake = FakeApiServer::start(Options {
            // No bookmarks during the test: a bookmark would move the watchers to the latest version and a
            // compaction would then not expire them.
            bookmark_interval: Duration::from_secs(3600),
            ..Options::default()
        })
        .expect("fake starts");
        for ns in ["media", "other"] {
            fake.create(
                &Gvr::core("namespaces"),
                "",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .expect("namespace");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
        let cp = ControlPlane::new(store.clone());
        let d = kubernetes::start(fake.client(), cp.clone());
        assert!(d.wait_ready(WAIT).await, "discovery lists the (empty) cluster");
        cp.recompute().await.expect("first computation");
        tokio::spawn(cp.clone().run());
        Plane {
            fake,
            cp,
            store,
            _dir: dir,
        }
    }

    async fn put(&self, v: Value) {
        let key = Key::new(
            v["kind"].as_str().expect("kind"),
            "media",
            v["metadata"]["name"].as_str().expect("name"),
        );
        self.store.put(&key, v, Precondition::None).await.expect("stored");
    }

    fn connect(&self, id: &str, app: &str) {
        Hooks(self.cp.clone()).connected(&NodeInfo {
            id: id.into(),
            metadata: json!({"labels": {"app": app}}),
            ..Default::default()
        });
    }

    fn snapshot(&self, node: &str) -> Option<Arc<Snapshot>> {
        self.cp.cache().get(node)
    }
}

/// The endpoint addresses of `cluster` in a snapshot (`None`: the snapshot has no such cluster).
fn addresses(snap: &Snapshot, cluster: &str) -> Option<BTreeSet<String>> {
    let items: Vec<(&str, &str, &[u8])> = snap
        .type_urls()
        .flat_map(|t| snap.resources(t).into_iter().flat_map(|m| m.values()))
        .map(|r| (r.type_url.as_str(), r.name.as_str(), r.body.value.as_slice()))
        .collect();
    let cfg = wire::decode(&Value::Null, items).expect("the snapshot decodes as the agent decodes it");
    let c = cfg.clusters.iter().find(|c| c.name == cluster)?;
    Some(c.endpoints.iter().map(|e| e.address.clone()).collect())
}

fn set(ips: &[&str]) -> BTreeSet<String> {
    ips.iter().map(|s| s.to_string()).collect()
}

/// Waits until the node's snapshot has exactly these endpoints in `cluster`.
async fn expect_endpoints(p: &Plane, node: &str, cluster: &str, want: &[&str]) {
    let want = set(want);
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < WAIT {
        last = p.snapshot(node).and_then(|s| addresses(&s, cluster));
        if last.as_ref() == Some(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{node}: {cluster} has endpoints {last:?}, want {want:?}");
}

fn version(snap: &Snapshot, type_url: &str, name: &str) -> String {
    snap.get(type_url, name).map(|r| r.version.clone()).unwrap_or_default()
}

async fn setup() -> Plane {
    let p = Plane::start().await;
    // A gateway routing UDP to the pods labelled app=echo in "media"; another agent with an unrelated Target.
    p.put(object(
        "Target",
        "echo",
        json!({"selector": {"app": "gw"}, "cluster": {"spec": {"UDP": {"port": 7000}},
                           "endpoints": [{"pods": {"selector": {"app": "echo"}}}]}}),
    ))
    .await;
    p.put(object(
        "VirtualService",
        "gw",
        json!({"selector": {"app": "gw"},
               "listener": {"spec": {"UDP": {"port": 9000}}, "rules": [{"action": {"route": {"destinationRef": "echo"}}}]}}),
    ))
    .await;
    p.put(object(
        "Target",
        "static",
        json!({"selector": {"app": "other"}, "cluster": {"spec": {"TCP": {"port": 80}},
               "endpoints": [{"spec": {"address": "192.0.2.1"}}]}}),
    ))
    .await;
    p.connect("gw-1", "gw");
    p.connect("other-1", "other");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_the_ready_pods_and_follow_them() {
    let p = setup().await;
    expect_endpoints(&p, "gw-1", "media/echo", &[]).await;

    ready_pod(&p.fake, "media", "echo-1", "echo", "10.0.0.1");
    ready_pod(&p.fake, "media", "echo-2", "echo", "10.0.0.2");
    pod(&p.fake, "media", "echo-3", "echo"); // Pending: no IP, not ready
    ready_pod(&p.fake, "other", "echo-x", "echo", "10.0.9.9"); // another namespace
    ready_pod(&p.fake, "media", "web-1", "web", "10.0.8.8"); // other labels
    expect_endpoints(&p, "gw-1", "media/echo", &["10.0.0.1", "10.0.0.2"]).await;

    // Readiness flips; only the ClusterLoad changes, and only on the agent that holds the cluster.
    let gw_before = p.snapshot("gw-1").expect("gw snapshot");
    let other_before = p.snapshot("other-1").expect("other snapshot");
    set_status(&p.fake, "media", "echo-3", "10.0.0.3", true);
    expect_endpoints(&p, "gw-1", "media/echo", &["10.0.0.1", "10.0.0.2", "10.0.0.3"]).await;
    let gw_after = p.snapshot("gw-1").expect("gw snapshot");
    assert_ne!(
        version(&gw_before, CLUSTER_LOAD, "media/echo"),
        version(&gw_after, CLUSTER_LOAD, "media/echo")
    );
    assert_eq!(
        version(&gw_before, CLUSTER, "media/echo"),
        version(&gw_after, CLUSTER, "media/echo"),
        "the Cluster itself is not resent"
    );
    for t in gw_after.type_urls().filter(|t| *t != CLUSTER_LOAD) {
        assert_eq!(gw_before.type_version(t), gw_after.type_version(t), "{t} changed");
    }
    assert_eq!(
        *other_before,
        *p.snapshot("other-1").expect("other snapshot"),
        "the other agent is untouched"
    );

    set_status(&p.fake, "media", "echo-2", "10.0.0.2", false);
    expect_endpoints(&p, "gw-1", "media/echo", &["10.0.0.1", "10.0.0.3"]).await;
    // Scale down and up.
    p.fake.delete(&pods(), "media", "echo-1").expect("deleted");
    ready_pod(&p.fake, "media", "echo-4", "echo", "10.0.0.4");
    expect_endpoints(&p, "gw-1", "media/echo", &["10.0.0.3", "10.0.0.4"]).await;
    // A pod's labels change: it leaves the selection.
    let mut p4 = p.fake.get(&pods(), "media", "echo-4").expect("pod");
    p4["metadata"]["labels"] = json!({"app": "retired"});
    p.fake.update(&pods(), "media", p4, false).expect("relabelled");
    expect_endpoints(&p, "gw-1", "media/echo", &["10.0.0.3"]).await;
    // The status is Accepted and placed on the gateway.
    let st = p.cp.status_of(&Key::new("Target", "media", "echo")).expect("status");
    assert!(st.accepted, "{st:?}");
    assert_eq!(st.agents, vec!["gw-1".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_endpoints_come_from_its_endpointslices() {
    let p = setup().await;
    p.put(object(
        "Target",
        "echo-svc",
        json!({"selector": {"app": "gw"}, "cluster": {"spec": {"UDP": {"port": 7000}},
               "endpoints": [{"service": {"name": "echo"}}]}}),
    ))
    .await;
    let slice = |name: &str, port: u16, eps: Value| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": name, "namespace": "media", "labels": {"kubernetes.io/service-name": "echo"}},
               "addressType": "IPv4", "ports": [{"name": "rtp", "port": port, "protocol": "UDP"}], "endpoints": eps})
    };
    p.fake
        .create(
            &slices(),
            "media",
            slice(
                "echo-a",
                7000,
                json!([{"addresses": ["10.1.0.1"], "conditions": {"ready": true}},
                       {"addresses": ["10.1.0.2"], "conditions": {"ready": false}}]),
            ),
        )
        .expect("slice");
    p.fake
        .create(
            &slices(),
            "media",
            slice("echo-b", 8000, json!([{"addresses": ["10.1.0.9"]}])),
        )
        .expect("slice");
    expect_endpoints(&p, "gw-1", "media/echo-svc", &["10.1.0.1"]).await;
    let mut a = p.fake.get(&slices(), "media", "echo-a").expect("slice");
    a["endpoints"] = json!([{"addresses": ["10.1.0.2"], "conditions": {"ready": true}},
                           {"addresses": ["10.1.0.3"], "conditions": {"ready": true}}]);
    p.fake.update(&slices(), "media", a, false).expect("updated");
    expect_endpoints(&p, "gw-1", "media/echo-svc", &["10.1.0.2", "10.1.0.3"]).await;
    p.fake.delete(&slices(), "media", "echo-a").expect("deleted");
    expect_endpoints(&p, "gw-1", "media/echo-svc", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_relists_without_dropping_endpoints() {
    let p = setup().await;
    for i in 1..=3 {
        ready_pod(&p.fake, "media", &format!("echo-{i}"), "echo", &format!("10.0.0.{i}"));
    }
    expect_endpoints(&p, "gw-1", "media/echo", &["10.0.0.1", "10.0.0.2", "10.0.0.3"]).await;

    // Record every snapshot the gateway is given from now on.
    let seen: Arc<Mutex<Vec<BTreeSet<String>>>> = Arc::default();
    let mut rx = p.cp.cache().watch("gw-1");
    let rec = seen.clone();
    let recorder = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let snap = rx.borrow_and_update().clone();
            if let Some(a) = snap.and_then(|s| addresses(&s, "media/echo"))
                && let Ok(mut v) = rec.lock()
            {
                v.push(a);
            }
        }
    });
    let lists_before = pod_lists(&p.fake);

    // Move the global version past what the watchers saw, forget the history and cut the watches: their re-watch
    // from the last version they saw gets 410 Expired and they relist.
    p.fake
        .create(
            &Gvr::core("configmaps"),
            "media",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bump"}}),
        )
        .expect("configmap");
    p.fake.compact();
    p.fake.break_watches();
    // Changes during the relist: one pod goes, one comes.
    p.fake.delete(&pods(), "media", "echo-1").expect("deleted");
    ready_pod(&p.fake, "media", "echo-4", "echo", "10.0.0.4");
    expect_endpoints(&p, "gw-1", "media/echo", &["10.0.0.2", "10.0.0.3", "10.0.0.4"]).await;
    assert!(
        pod_lists(&p.fake) > lists_before,
        "the pod watcher relisted after the 410"
    );
    // Settle, then check every snapshot given meanwhile: the pods that stayed ready were never missing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.abort();
    let seen = seen.lock().expect("recorded").clone();
    for s in &seen {
        assert!(
            s.contains("10.0.0.2") && s.contains("10.0.0.3"),
            "a snapshot dropped endpoints that stayed ready: {seen:?}"
        );
    }
    expect_endpoints(&p, "gw-1", "media/echo", &["10.0.0.2", "10.0.0.3", "10.0.0.4"]).await;
}

/// How many LIST requests (not watches) for pods the fake has served.
fn pod_lists(fake: &FakeApiServer) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/pods" && r.param("watch").is_none())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_selector_is_rejected_with_its_field_path() {
    let p = setup().await;
    p.put(object(
        "Target",
        "bad",
        json!({"cluster": {"spec": {"UDP": {"port": 7000}},
                           "endpoints": [{"pods": {"selector": {"app": "no good"}}}]}}),
    ))
    .await;
    let key = Key::new("Target", "media", "bad");
    let start = Instant::now();
    loop {
        if let Some(st) = p.cp.status_of(&key) {
            assert!(!st.accepted);
            let reason = st.reason.unwrap_or_default();
            assert!(
                reason.contains("spec.cluster.endpoints[0].pods.selector.app: \"no good\" is no valid label value"),
                "{reason}"
            );
            break;
        }
        assert!(start.elapsed() < WAIT, "no status for the bad Target");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_keeps_the_control_plane_unready() {
    // A client for a server that is gone: every list fails (connection refused) and is retried.
    let fake = FakeApiServer::start(Options::default()).expect("fake starts");
    let client = fake.client();
    drop(fake);
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::new(Arc::new(EmbeddedStore::open(dir.path()).expect("store")));
    let d = kubernetes::start(client, cp.clone());
    cp.recompute().await.expect("computation");
    assert!(!d.wait_ready(Duration::from_millis(1500)).await);
    assert!(d.failures() > 0, "the failed lists are counted");
    assert!(!cp.ready());
    let why = cp.not_ready_reason().unwrap_or_default();
    assert!(why.contains("workload discovery"), "{why}");
}

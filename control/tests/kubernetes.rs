//! The control plane on the kubernetes store, against the in-repo fake API server (docs/kubernetes-fake.md):
//! status written back to `/status` (Rejected with the field path), leader election between two replicas, a relist
//! after `410 Gone`, and the binaries end to end (`l7mpctl apply` → custom resources that `kubectl get` shows).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kube::{fake, l7mp};
use l7mp_control::controller::ControlPlane;
use l7mp_control::leader::LeaseConfig;
use l7mp_control::status_writer::StatusWriter;
use l7mp_control::store::{Key, KubernetesStore, Store};
use l7mp_kube_fake::{FakeApiServer, Gvr};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// Polls `f` until it gives `Some`, or panics after [`WAIT`] saying what it waited for.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "waited {WAIT:?} for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A replica: a control plane on its own kubernetes store over `fake`, with its loop running.
async fn replica(fake: &FakeApiServer) -> (Arc<ControlPlane>, KubernetesStore) {
    let store = KubernetesStore::new(fake.client(), None, &fake.url());
    let cp = ControlPlane::new(Arc::new(store.clone()));
    cp.recompute().await.expect("first computation");
    tokio::spawn(cp.clone().run());
    (cp, store)
}

/// A Lease of 4 s, tried every 0.2 s: short for the test, long enough that a loaded machine does not lose it.
fn lease(identity: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: "l7mp-system".into(),
        name: "l7mp-control".into(),
        identity: identity.into(),
        duration: Duration::from_secs(4),
        retry: Duration::from_millis(200),
    }
}

fn vsvc(name: &str, port: Value) -> Value {
    json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"listener": {"spec": {"protocol": "UDP", "port": port}}}})
}

fn status(fake: &FakeApiServer, name: &str) -> Value {
    fake.get(&l7mp("virtualservices"), "default", name)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

fn holder(fake: &FakeApiServer) -> Option<Value> {
    fake.get(
        &Gvr::new("coordination.k8s.io", "v1", "leases"),
        "l7mp-system",
        "l7mp-control",
    )
    .map(|l| l["spec"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_object_is_rejected_in_its_status() {
    let fake = fake(Duration::from_millis(50));
    let (cp, store) = replica(&fake).await;
    let (_election, writer) = StatusWriter::start(cp.clone(), store, lease("only"));
    fake.create(&l7mp("virtualservices"), "default", vsvc("bad", json!("x")))
        .expect("created");
    fake.create(&l7mp("virtualservices"), "default", vsvc("good", json!(9001)))
        .expect("created");
    let bad = eventually("the Rejected status", || {
        Some(status(&fake, "bad")).filter(|s| s["state"] == "Rejected")
    })
    .await;
    let reason = bad["reason"].as_str().expect("a reason");
    assert!(reason.starts_with("spec.listener.spec.port"), "{reason}");
    let condition = &bad["conditions"][0];
    assert_eq!(
        (&condition["type"], &condition["status"], &condition["reason"]),
        (&json!("Accepted"), &json!("False"), &json!("Invalid"))
    );
    assert_eq!(condition["message"], json!(reason));
    assert_eq!(condition["observedGeneration"], json!(1));
    assert!(condition["lastTransitionTime"].is_string());
    let good = eventually("the Accepted status", || {
        Some(status(&fake, "good")).filter(|s| s["state"] == "Accepted")
    })
    .await;
    assert_eq!(good["conditions"][0]["status"], "True");
    assert_eq!(good["agents"], json!({"placed": 0, "acked": 0, "nacked": 0}));
    // Writing status wakes nothing: no further writes, the loop's revision stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (writes, computed) = (writer.writes(), cp.computed_revision());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        (writer.writes(), cp.computed_revision()),
        (writes, computed),
        "status writes loop"
    );
    // Fixing the object flips the condition, with a new generation.
    let mut fixed = fake.get(&l7mp("virtualservices"), "default", "bad").expect("object");
    fixed["spec"]["listener"]["spec"]["port"] = json!(9002);
    fake.update(&l7mp("virtualservices"), "default", fixed, false)
        .expect("updated");
    let now = eventually("Accepted after the fix", || {
        Some(status(&fake, "bad")).filter(|s| s["state"] == "Accepted")
    })
    .await;
    assert_eq!(now["conditions"][0]["observedGeneration"], json!(2));
    assert!(now.get("reason").is_none_or(Value::is_null), "{now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_replicas_writes_status_and_the_other_takes_over() {
    let fake = fake(Duration::from_millis(50));
    let (cp_a, store_a) = replica(&fake).await;
    let (cp_b, store_b) = replica(&fake).await;
    let (election_a, writer_a) = StatusWriter::start(cp_a.clone(), store_a, lease("replica-a"));
    let (election_b, writer_b) = StatusWriter::start(cp_b.clone(), store_b, lease("replica-b"));
    let first = eventually("a leader", || {
        let (a, b) = (election_a.state(), election_b.state());
        assert!(!(a.leader && b.leader), "two leaders: {a:?} {b:?}");
        (a.leader || b.leader).then_some(if a.leader { "replica-a" } else { "replica-b" })
    })
    .await;
    fake.create(&l7mp("virtualservices"), "default", vsvc("v", json!("nope")))
        .expect("created");
    eventually("the status", || {
        Some(status(&fake, "v")).filter(|s| s["state"] == "Rejected")
    })
    .await;
    let (leader_writer, follower_writer, leader_election, follower_election) = if first == "replica-a" {
        (&writer_a, &writer_b, election_a, election_b)
    } else {
        (&writer_b, &writer_a, election_b, election_a)
    };
    assert!(leader_writer.writes() > 0);
    assert_eq!(follower_writer.writes(), 0, "only the leader writes status");
    assert_eq!(holder(&fake).expect("the Lease")["holderIdentity"], json!(first));
    eventually("both to know the leader", || {
        [&cp_a, &cp_b]
            .iter()
            .all(|cp| cp.leadership().is_some_and(|l| l.holder == first))
            .then_some(())
    })
    .await;
    // The leader stops (without releasing the Lease); the other takes over once it expires.
    let stopped = Instant::now();
    drop(leader_election);
    eventually("the follower to lead", || {
        follower_election.state().leader.then_some(())
    })
    .await;
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "took over before the Lease expired"
    );
    let lease = holder(&fake).expect("the Lease");
    assert_ne!(lease["holderIdentity"], json!(first));
    assert_eq!(lease["leaseTransitions"], json!(1));
    assert_eq!(lease["leaseDurationSeconds"], json!(4));
    let mut fixed = fake.get(&l7mp("virtualservices"), "default", "v").expect("object");
    fixed["spec"]["listener"]["spec"]["port"] = json!(9003);
    fake.update(&l7mp("virtualservices"), "default", fixed, false)
        .expect("updated");
    eventually("the new leader's status", || {
        Some(status(&fake, "v")).filter(|s| s["state"] == "Accepted")
    })
    .await;
    assert!(follower_writer.writes() > 0, "the new leader wrote it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_relists_after_gone_and_loses_nothing() {
    let fake = fake(Duration::from_millis(50));
    let (cp, store) = replica(&fake).await;
    for i in 0..3 {
        fake.create(
            &l7mp("virtualservices"),
            "default",
            vsvc(&format!("v{i}"), json!(9000 + i)),
        )
        .expect("created");
    }
    let key = |name: &str| Key::new("VirtualService", "default", name);
    eventually("the first objects", || cp.status_of(&key("v2")).map(|_| ())).await;
    // Cut the watches, write while they are down, forget the history: the loop's watch gets 410 and relists.
    fake.break_watches();
    fake.create(&l7mp("virtualservices"), "default", vsvc("late", json!(9100)))
        .expect("created");
    fake.delete(&l7mp("virtualservices"), "default", "v0").expect("deleted");
    fake.compact();
    eventually("the object written during the outage", || {
        cp.status_of(&key("late")).map(|_| ())
    })
    .await;
    eventually("the deletion", || cp.status_of(&key("v0")).is_none().then_some(())).await;
    assert!(cp.status_of(&key("v1")).is_some());
    // And the watch works again afterwards.
    fake.create(&l7mp("virtualservices"), "default", vsvc("after", json!(9101)))
        .expect("created");
    eventually("a write after the relist", || cp.status_of(&key("after")).map(|_| ())).await;
    assert_eq!(cp.computed_revision(), store.revision().max(cp.computed_revision()));
}

/// Kills the child when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn kubectl() -> Option<&'static str> {
    let found = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var("L7MP_REQUIRE_KUBECTL").as_deref() == Ok("1") {
        panic!("kubectl is missing and L7MP_REQUIRE_KUBECTL=1");
    }
    found.then_some("kubectl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binaries_on_kubernetes() {
    let fake = fake(Duration::from_millis(100));
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let (grpc, admin) = (free_port(), free_port());
    let _control = Running(
        Command::new(env!("CARGO_BIN_EXE_l7mp-control"))
            .args([
                "--listen",
                &format!("127.0.0.1:{grpc}"),
                "--admin",
                &format!("127.0.0.1:{admin}"),
            ])
            .arg("--store")
            .arg(format!("kubernetes:?kubeconfig={}", kubeconfig.display()))
            .env("POD_NAME", "l7mp-control-0")
            .stderr(Stdio::null())
            .spawn()
            .expect("l7mp-control starts"),
    );
    let server = format!("http://127.0.0.1:{grpc}");
    let example = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../examples/mesh/udp-to-tcp.yaml");
    let l7mpctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_l7mpctl"))
            .arg("--server")
            .arg(&server)
            .args(args)
            .output()
            .expect("l7mpctl runs")
    };
    let start = Instant::now();
    loop {
        let out = l7mpctl(&["apply", "-f", &example.display().to_string()]);
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "l7mpctl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The objects are custom resources in the API server, with the status the leader wrote.
    let target = fake
        .get(&l7mp("targets"), "default", "tcp-backend")
        .expect("the Target is an API object");
    assert_eq!(target["spec"]["cluster"]["spec"]["protocol"], json!("TCP"), "{target}");
    let names: Vec<String> = fake
        .list(&l7mp("virtualservices"), Some("default"))
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
        .collect();
    assert!(!names.is_empty());
    for name in &names {
        eventually("the status", || {
            Some(status(&fake, name)).filter(|s| s["state"] == "Accepted")
        })
        .await;
    }
    let out = l7mpctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status writer  leader (Lease default/l7mp-control)"),
        "{text}"
    );
    assert_eq!(
        holder(&fake).map(|_| ()),
        None,
        "the Lease is in the kubeconfig's namespace"
    );
    let lease = fake
        .get(
            &Gvr::new("coordination.k8s.io", "v1", "leases"),
            "default",
            "l7mp-control",
        )
        .expect("the Lease");
    assert_eq!(
        lease["spec"]["holderIdentity"],
        json!("l7mp-control-0"),
        "POD_NAME is the identity"
    );
    let metrics = reqwest_get(admin, "/metrics").await;
    assert!(metrics.contains("l7mp_control_leader 1"), "{metrics}");
    let Some(kubectl) = kubectl() else {
        eprintln!("SKIP the kubectl part: kubectl is not installed (L7MP_REQUIRE_KUBECTL=1 makes this a failure)");
        return;
    };
    let out = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "vsvc", "-n", "default"])
        .output()
        .expect("kubectl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in &names {
        assert!(text.contains(name.as_str()), "kubectl get vsvc: {text}");
    }
    assert!(text.contains("Accepted"), "the State column: {text}");
}

/// A GET on the admin listener, with a plain TCP connection (HTTP/1.0).
async fn reqwest_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("admin connects");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("response");
    out
}

//! The control loop end to end in one process: the Management API, the xDS server and a store that can be made
//! unreachable on demand (a wrapper over the embedded store that fails every call while "down", the way a lost
//! etcd connection does). What is checked is what clients see: gRPC statuses, `/ready`, and the listeners an agent
//! receives over ADS.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use l7mp_api::wire::to_struct;
use l7mp_control::controller::{ControlPlane, Hooks};
use l7mp_control::management::ManagementService;
use l7mp_control::store::{
    BoxFuture, EmbeddedStore, Key, Listing, Precondition, Store, StoreError, Stored, WatchStream,
};
use l7mp_control::xds::{XdsConfig, XdsServer};
use l7mp_protos::management::v1 as pb;
use pb::management_client::ManagementClient;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);
const LISTENER: &str = "type.googleapis.com/l7mp.config.v1.Listener";

/// The embedded store, unreachable while `down` is set: every call fails as a lost connection does.
struct Flaky {
    inner: EmbeddedStore,
    down: AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Backend(
                "connection refused (the test took the store down)".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl Store for Flaky {
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.get(key).await
        })
    }
    fn put<'a>(&'a self, key: &'a Key, value: Value, pre: Precondition) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.put(key, value, pre).await
        })
    }
    fn delete<'a>(&'a self, key: &'a Key, pre: Precondition) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.delete(key, pre).await
        })
    }
    fn list<'a>(
        &'a self,
        kind: Option<&'a str>,
        namespace: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Listing, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.list(kind, namespace).await
        })
    }
    fn watch(&self, from_revision: u64) -> BoxFuture<'_, Result<WatchStream, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.watch(from_revision).await
        })
    }
    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.compact(revision)
    }
    fn revision(&self) -> u64 {
        self.inner.revision()
    }
}

struct Plane {
    grpc: String,
    admin: std::net::SocketAddr,
    store: Arc<Flaky>,
    _dir: tempfile::TempDir,
}

async fn start() -> Plane {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(Flaky {
        inner: EmbeddedStore::open(dir.path()).expect("open"),
        down: AtomicBool::new(false),
    });
    let cp = ControlPlane::new(store.clone());
    cp.set_store_url("embedded:test");
    let xds = XdsServer::new(
        cp.cache().clone(),
        Arc::new(Hooks(cp.clone())),
        XdsConfig {
            snapshot_wait: Duration::from_millis(300),
            ..Default::default()
        },
    );
    cp.set_xds(xds.clone());
    cp.recompute().await.expect("first computation");
    tokio::spawn(cp.clone().run());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let admin = l7mp_control::admin::start("127.0.0.1:0".parse().expect("addr"), cp.clone())
        .await
        .expect("admin");
    let router = xds.router().add_service(ManagementService::new(cp.clone()));
    tokio::spawn(async move { xds.serve_router(router, listener, std::future::pending()).await });
    Plane {
        grpc: format!("http://{addr}"),
        admin,
        store,
        _dir: dir,
    }
}

impl Plane {
    async fn mgmt(&self) -> ManagementClient<Channel> {
        ManagementClient::connect(self.grpc.clone()).await.expect("connect")
    }

    async fn apply(&self, objects: &[Value]) -> Result<pb::ApplyResponse, tonic::Status> {
        let objects = objects
            .iter()
            .map(|o| pb::StoredObject {
                object: to_struct(o),
                revision: 0,
            })
            .collect();
        self.mgmt()
            .await
            .apply(pb::ApplyRequest { objects })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn status(&self) -> pb::StatusResponse {
        self.mgmt()
            .await
            .status(pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// `/ready` on the admin listener: (status code, body).
    async fn ready(&self) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(self.admin).await.expect("admin");
        s.write_all(b"GET /ready HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.expect("read");
        let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (code, body)
    }
}

fn service(port: u16) -> Vec<Value> {
    vec![
        json!({"apiVersion": "l7mp.io/v1", "kind": "Target", "metadata": {"name": "echo"},
               "spec": {"selector": {"matchLabels": {"app": "nobody"}},
                        "cluster": {"spec": {"UDP": {"port": 7000}},
                                    "endpoints": [{"spec": {"address": "127.0.0.1"}}]}}}),
        json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": "svc"},
               "spec": {"selector": {"matchLabels": {"app": "web"}},
                        "listener": {"spec": {"UDP": {"port": port}},
                                     "rules": [{"action": {"route": {"destinationRef": "echo"}}}]}}}),
    ]
}

/// A state-of-the-world ADS client subscribed to every Listener, ACKing what it gets.
struct Agent {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Agent {
    async fn connect(plane: &Plane, id: &str) -> Agent {
        let mut labels = Struct::default();
        labels.fields.insert(
            "app".into(),
            PbValue {
                kind: Some(Kind::StringValue("web".into())),
            },
        );
        let mut md = Struct::default();
        md.fields.insert(
            "labels".into(),
            PbValue {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(DiscoveryRequest {
            node: Some(Node {
                id: id.into(),
                metadata: Some(md),
                ..Default::default()
            }),
            type_url: LISTENER.into(),
            ..Default::default()
        })
        .await
        .expect("send");
        let out = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let rx = AggregatedDiscoveryServiceClient::connect(plane.grpc.clone())
            .await
            .expect("connect")
            .stream_aggregated_resources(out)
            .await
            .expect("stream")
            .into_inner();
        Agent { tx, rx }
    }

    /// The next response's listener names and the listener bodies (as decoded JSON text), ACKed.
    async fn next(&mut self) -> (BTreeSet<String>, String) {
        let r = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open");
        self.tx
            .send(DiscoveryRequest {
                type_url: r.type_url.clone(),
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await
            .expect("ack");
        let mut names = BTreeSet::new();
        let mut text = String::new();
        for any in &r.resources {
            use prost::Message;
            let l = l7mp_protos::config::v1::Listener::decode(any.value.as_slice()).expect("a Listener");
            names.insert(l.name.clone());
            text.push_str(&format!("{l:?}"));
        }
        (names, text)
    }

    /// Asserts that nothing arrives for a while (no removal, no change).
    async fn quiet(&mut self, for_: Duration) {
        if let Ok(r) = tokio::time::timeout(for_, self.rx.message()).await {
            panic!("unexpected message: {r:?}");
        }
    }
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_keeps_agents_configured_refuses_writes_and_recovers() {
    let plane = start().await;
    assert_eq!(plane.ready().await.0, 200);
    plane.apply(&service(9000)).await.expect("apply");
    let mut a1 = Agent::connect(&plane, "a1").await;
    let (names, body) = a1.next().await;
    assert_eq!(names, BTreeSet::from(["default/svc".to_string()]));
    assert!(body.contains("9000"), "{body}");

    // The store goes away.
    plane.store.down.store(true, Ordering::SeqCst);
    let e = plane
        .apply(&service(9001))
        .await
        .expect_err("a write during the outage");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("the store is unreachable") && e.message().contains("nothing was written"),
        "{}",
        e.message()
    );
    let s = plane.status().await;
    assert!(!s.ready, "{s:?}");
    assert!(
        s.reason.contains("unreachable") && s.reason.contains("connection refused"),
        "{s:?}"
    );
    assert!(!s.store_unreachable_since.is_empty(), "{s:?}");
    let (code, body) = plane.ready().await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("the store is unreachable"), "{body}");

    // The connected agent keeps its configuration; an agent that connects meanwhile gets the same one (computed from
    // the last listing), not an empty one.
    let mut a2 = Agent::connect(&plane, "a2").await;
    let (names2, body2) = a2.next().await;
    assert_eq!(names2, names);
    assert!(body2.contains("9000"), "{body2}");
    a1.quiet(Duration::from_millis(800)).await;

    // The store comes back: the control plane is ready again by itself, and a write reaches both agents.
    plane.store.down.store(false, Ordering::SeqCst);
    eventually("ready again", || async { plane.status().await.ready }).await;
    assert_eq!(plane.ready().await.0, 200);
    plane.apply(&service(9001)).await.expect("apply after the outage");
    for a in [&mut a1, &mut a2] {
        let (names, body) = a.next().await;
        assert_eq!(names, BTreeSet::from(["default/svc".to_string()]));
        assert!(body.contains("9001"), "{body}");
    }
}

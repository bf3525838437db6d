//! Integration tests of the xDS server over a real TCP loopback port, with envoy-types' own generated
//! ADS and CSDS clients and l7mp's `l7mp.config.v1` messages as resources.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use l7mp_control::xds::{Cache, NodeHooks, NodeInfo, Snapshot, XdsConfig, XdsResource, XdsServer};
use l7mp_protos::config::v1 as l7;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tonic::Streaming;
use tonic::transport::Channel;

const QUIET: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(5);

fn ty(name: &str) -> String {
    format!("{}{name}", l7::TYPE_PREFIX)
}

fn listener(name: &str, rules: &str) -> XdsResource {
    let m = l7::Listener {
        name: name.into(),
        rules: rules.into(),
        ..Default::default()
    };
    XdsResource::new(name, ty("Listener"), m.encode_to_vec())
}

fn cluster(name: &str, tag: &str) -> XdsResource {
    let mut spec = prost_types::Struct::default();
    spec.fields.insert(
        "tag".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(tag.into())),
        },
    );
    let m = l7::Cluster {
        name: name.into(),
        spec: Some(spec),
        ..Default::default()
    };
    XdsResource::new(name, ty("Cluster"), m.encode_to_vec())
}

fn rule(name: &str, tag: &str) -> XdsResource {
    let mut action = prost_types::Struct::default();
    action.fields.insert(
        "tag".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(tag.into())),
        },
    );
    let m = l7::Rule {
        name: name.into(),
        action: Some(action),
        ..Default::default()
    };
    XdsResource::new(name, ty("Rule"), m.encode_to_vec())
}

#[derive(Default)]
struct RecordingHooks {
    connected: Mutex<Vec<NodeInfo>>,
    disconnected: Mutex<Vec<String>>,
}

impl NodeHooks for RecordingHooks {
    fn connected(&self, node: &NodeInfo) {
        self.connected.lock().unwrap().push(node.clone());
    }
    fn disconnected(&self, node_id: &str) {
        self.disconnected.lock().unwrap().push(node_id.to_string());
    }
}

struct TestServer {
    addr: SocketAddr,
    server: XdsServer,
    cache: Arc<Cache>,
    hooks: Arc<RecordingHooks>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    async fn start(config: XdsConfig) -> Self {
        let cache = Arc::new(Cache::new());
        let hooks = Arc::new(RecordingHooks::default());
        let server = XdsServer::new(cache.clone(), hooks.clone(), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let s = server.clone();
        let task = tokio::spawn(async move {
            s.serve(listener, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            server,
            cache,
            hooks,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn default() -> Self {
        Self::start(XdsConfig {
            snapshot_wait: Duration::from_millis(200),
            ..Default::default()
        })
        .await
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        }
    }
}

fn node(id: &str) -> Node {
    let mut labels = Struct::default();
    labels.fields.insert(
        "app".into(),
        Value {
            kind: Some(Kind::StringValue("web".into())),
        },
    );
    let mut md = Struct::default();
    md.fields.insert(
        "labels".into(),
        Value {
            kind: Some(Kind::StructValue(labels)),
        },
    );
    md.fields.insert(
        "address".into(),
        Value {
            kind: Some(Kind::StringValue("10.0.0.1".into())),
        },
    );
    Node {
        id: id.into(),
        cluster: "c1".into(),
        metadata: Some(md),
        user_agent_name: "test".into(),
        ..Default::default()
    }
}

fn rx_stream<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    node: Node,
    first: bool,
}

impl Sotw {
    async fn open(ch: Channel, node_id: &str) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let mut client = AggregatedDiscoveryServiceClient::new(ch);
        let rx = client
            .stream_aggregated_resources(rx_stream(rx))
            .await
            .unwrap()
            .into_inner();
        Self {
            tx,
            rx,
            node: node(node_id),
            first: true,
        }
    }

    async fn send(&mut self, type_url: &str, names: &[&str], nonce: &str, version: &str, error: Option<&str>) {
        let req = DiscoveryRequest {
            node: if self.first { Some(self.node.clone()) } else { None },
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            version_info: version.into(),
            error_detail: error.map(|m| RpcStatus {
                code: 3,
                message: m.into(),
                details: vec![],
            }),
            ..Default::default()
        };
        self.first = false;
        self.tx.send(req).await.unwrap();
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("response in time")
            .unwrap()
            .expect("stream open")
    }

    async fn none(&mut self) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("unexpected response: {r:?}");
        }
    }

    async fn ack(&mut self, r: &DiscoveryResponse, names: &[&str]) {
        self.send(&r.type_url, names, &r.nonce, &r.version_info, None).await;
    }
}

fn names_of(r: &DiscoveryResponse) -> Vec<String> {
    let mut v: Vec<String> = r
        .resources
        .iter()
        .map(|a| l7::Listener::decode(a.value.as_slice()).unwrap().name)
        .collect();
    v.sort();
    v
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    node: Node,
    first: bool,
}

impl Delta {
    async fn open(ch: Channel, node_id: &str) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let mut client = AggregatedDiscoveryServiceClient::new(ch);
        let rx = client
            .delta_aggregated_resources(rx_stream(rx))
            .await
            .unwrap()
            .into_inner();
        Self {
            tx,
            rx,
            node: node(node_id),
            first: true,
        }
    }

    async fn req(&mut self, mut r: DeltaDiscoveryRequest) {
        if self.first {
            r.node = Some(self.node.clone());
            self.first = false;
        }
        self.tx.send(r).await.unwrap();
    }

    async fn subscribe(&mut self, type_url: &str, names: &[&str], initial: HashMap<String, String>) {
        self.req(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            initial_resource_versions: initial,
            ..Default::default()
        })
        .await;
    }

    async fn ack(&mut self, r: &DeltaDiscoveryResponse) {
        self.req(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("response in time")
            .unwrap()
            .expect("stream open")
    }

    async fn none(&mut self) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("unexpected response: {r:?}");
        }
    }
}

fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut v: Vec<String> = r.resources.iter().map(|r| r.name.clone()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn sotw_initial_ack_update() {
    let ts = TestServer::default().await;
    ts.cache.set_snapshot(
        "n1",
        Snapshot::new().with(listener("a", "r1")).with(listener("b", "r1")),
    );
    let mut s = Sotw::open(ts.channel().await, "n1").await;
    let lt = ty("Listener");
    s.send(&lt, &[], "", "", None).await;
    let r1 = s.recv().await;
    assert_eq!(r1.type_url, lt);
    assert_eq!(names_of(&r1), ["a", "b"]);
    assert!(!r1.version_info.is_empty());
    s.ack(&r1, &[]).await;
    s.none().await;

    let agent = ts.server.agent("n1").unwrap();
    let t = &agent.types[&lt];
    assert_eq!(t.acked_version, r1.version_info);
    assert_eq!(t.acked_nonce, r1.nonce);
    assert_eq!(agent.counters.acks, 1);
    assert_eq!(agent.node.metadata["labels"]["app"], "web");
    assert_eq!(agent.node.metadata["address"], "10.0.0.1");

    // The same content again: nothing is sent.
    ts.cache.set_snapshot(
        "n1",
        Snapshot::new().with(listener("a", "r1")).with(listener("b", "r1")),
    );
    s.none().await;

    ts.cache.set_snapshot(
        "n1",
        Snapshot::new().with(listener("a", "r1")).with(listener("b", "r2")),
    );
    let r2 = s.recv().await;
    assert_ne!(r2.version_info, r1.version_info);
    assert_ne!(r2.nonce, r1.nonce);
    assert_eq!(names_of(&r2), ["a", "b"]);
    s.ack(&r2, &[]).await;
    drop(s);
    ts.shutdown().await;
}

#[tokio::test]
async fn sotw_explicit_names_and_unknown_name() {
    let ts = TestServer::default().await;
    ts.cache.set_snapshot(
        "n1",
        Snapshot::new().with(listener("a", "r1")).with(listener("b", "r1")),
    );
    let mut s = Sotw::open(ts.channel().await, "n1").await;
    let lt = ty("Listener");
    s.send(&lt, &["b"], "", "", None).await;
    let r1 = s.recv().await;
    assert_eq!(names_of(&r1), ["b"]);
    // A name that does not exist: an answer without it (the client learns it does not exist).
    s.send(&lt, &["b", "zz"], &r1.nonce, &r1.version_info, None).await;
    let r2 = s.recv().await;
    assert_eq!(names_of(&r2), ["b"]);
    ts.shutdown().await;
}

#[tokio::test]
async fn sotw_nack_recorded_without_resend_loop() {
    let ts = TestServer::default().await;
    ts.cache.set_snapshot("n1", Snapshot::new().with(listener("a", "r1")));
    let mut s = Sotw::open(ts.channel().await, "n1").await;
    let lt = ty("Listener");
    s.send(&lt, &[], "", "", None).await;
    let r1 = s.recv().await;
    s.ack(&r1, &[]).await;
    ts.cache.set_snapshot("n1", Snapshot::new().with(listener("a", "bad")));
    let r2 = s.recv().await;
    s.send(&lt, &[], &r2.nonce, &r1.version_info, Some("bad rules")).await;
    s.none().await;

    let agent = ts.server.agent("n1").unwrap();
    let nack = agent.last_nack.clone().unwrap();
    assert_eq!(nack.message, "bad rules");
    assert_eq!(nack.rejected_version, r2.version_info);
    assert_eq!(nack.nonce, r2.nonce);
    assert_eq!(agent.counters.nacks, 1);
    let t = &agent.types[&lt];
    assert_eq!(t.acked_version, r1.version_info, "the last ACKed state is kept");
    assert!(t.nacked.is_some());

    // A fix in the snapshot is sent.
    ts.cache.set_snapshot("n1", Snapshot::new().with(listener("a", "good")));
    let r3 = s.recv().await;
    assert_ne!(r3.version_info, r2.version_info);
    s.ack(&r3, &[]).await;
    s.none().await;
    let t = ts.server.agent("n1").unwrap().types[&lt].clone();
    assert_eq!(t.acked_version, r3.version_info);
    assert!(t.nacked.is_none());
    ts.shutdown().await;
}

#[tokio::test]
async fn sotw_stale_nonce_ignored() {
    let ts = TestServer::default().await;
    ts.cache.set_snapshot("n1", Snapshot::new().with(listener("a", "r1")));
    let mut s = Sotw::open(ts.channel().await, "n1").await;
    let lt = ty("Listener");
    s.send(&lt, &[], "", "", None).await;
    let r1 = s.recv().await;
    s.ack(&r1, &[]).await;
    ts.cache.set_snapshot("n1", Snapshot::new().with(listener("a", "r2")));
    let r2 = s.recv().await;
    // A request carrying the old nonce (and a new subscription) is ignored entirely.
    s.send(&lt, &["a", "b"], &r1.nonce, &r1.version_info, None).await;
    s.none().await;
    let agent = ts.server.agent("n1").unwrap();
    assert_eq!(agent.counters.stale_nonces, 1);
    assert_eq!(agent.types[&lt].acked_version, r1.version_info);
    s.ack(&r2, &[]).await;
    s.none().await;
    assert_eq!(ts.server.agent("n1").unwrap().types[&lt].acked_version, r2.version_info);
    ts.shutdown().await;
}

#[tokio::test]
async fn first_request_without_node_is_refused() {
    let ts = TestServer::default().await;
    let mut s = Sotw::open(ts.channel().await, "n1").await;
    s.first = false;
    s.send(&ty("Listener"), &[], "", "", None).await;
    let e = tokio::time::timeout(WAIT, s.rx.message()).await.unwrap().unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    ts.shutdown().await;
}

#[tokio::test]
async fn unknown_ads_method_is_unimplemented() {
    let ts = TestServer::default().await;
    let mut grpc = tonic::client::Grpc::new(ts.channel().await);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/NoSuchMethod",
    );
    let codec = tonic_prost::ProstCodec::<DiscoveryRequest, DiscoveryResponse>::default();
    let e = grpc
        .unary(tonic::Request::new(DiscoveryRequest::default()), path, codec)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
    ts.shutdown().await;
}

#[tokio::test]
async fn delta_initial_change_removal_unsubscribe() {
    let ts = TestServer::default().await;
    let snap = |b: &str, with_c: bool| {
        let mut s = Snapshot::new()
            .with(cluster("a", "1"))
            .with(cluster("b", b))
            .with(rule("r1", "1"))
            .with(rule("r2", "1"));
        if with_c {
            s.insert(cluster("c", "1"));
        }
        s
    };
    ts.cache.set_snapshot("n1", snap("1", true));
    let mut d = Delta::open(ts.channel().await, "n1").await;
    let ct = ty("Cluster");
    d.subscribe(&ct, &[], HashMap::new()).await;
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["a", "b", "c"]);
    assert!(r.resources.iter().all(|x| !x.version.is_empty()));
    d.ack(&r).await;
    d.none().await;

    // Change only b.
    ts.cache.set_snapshot("n1", snap("2", true));
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["b"]);
    assert!(r.removed_resources.is_empty());
    d.ack(&r).await;

    // Remove c.
    ts.cache.set_snapshot("n1", snap("2", false));
    let r = d.recv().await;
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["c"]);
    d.ack(&r).await;
    d.none().await;

    // Explicit names on another type, then unsubscribe one.
    let rt = ty("Rule");
    d.subscribe(&rt, &["r1", "r2"], HashMap::new()).await;
    let r = d.recv().await;
    assert_eq!(r.type_url, rt);
    assert_eq!(delta_names(&r), ["r1", "r2"]);
    d.ack(&r).await;
    d.req(DeltaDiscoveryRequest {
        type_url: rt.clone(),
        resource_names_unsubscribe: vec!["r1".into()],
        ..Default::default()
    })
    .await;
    d.none().await;
    let mut s = snap("2", false);
    s.insert(rule("r1", "changed"));
    ts.cache.set_snapshot("n1", s.clone());
    d.none().await;
    s.insert(rule("r2", "changed"));
    ts.cache.set_snapshot("n1", s);
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["r2"]);
    d.ack(&r).await;

    // Subscribing to a name that does not exist reports it as removed.
    d.subscribe(&rt, &["nope"], HashMap::new()).await;
    let r = d.recv().await;
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["nope"]);
    ts.shutdown().await;
}

#[tokio::test]
async fn delta_reconnect_with_initial_versions() {
    let ts = TestServer::default().await;
    ts.cache.set_snapshot(
        "n1",
        Snapshot::new()
            .with(cluster("a", "1"))
            .with(cluster("b", "1"))
            .with(cluster("c", "1")),
    );
    let ct = ty("Cluster");
    let mut d = Delta::open(ts.channel().await, "n1").await;
    d.subscribe(&ct, &[], HashMap::new()).await;
    let r = d.recv().await;
    d.ack(&r).await;
    let have: HashMap<String, String> = r
        .resources
        .iter()
        .map(|x| (x.name.clone(), x.version.clone()))
        .collect();
    assert_eq!(have.len(), 3);
    drop(d);

    ts.cache.set_snapshot(
        "n1",
        Snapshot::new()
            .with(cluster("a", "1"))
            .with(cluster("b", "2"))
            .with(cluster("d", "1")),
    );
    let mut d = Delta::open(ts.channel().await, "n1").await;
    d.subscribe(&ct, &[], have).await;
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["b", "d"], "a is unchanged and not resent");
    // One type only: the removal of c rides along.
    let rem = r;
    assert_eq!(rem.removed_resources, ["c"]);
    ts.shutdown().await;
}

#[tokio::test]
async fn make_before_break_order() {
    let ts = TestServer::default().await;
    ts.cache.set_snapshot(
        "n1",
        Snapshot::new().with(cluster("c1", "1")).with(listener("l1", "c1")),
    );
    let (lt, ct) = (ty("Listener"), ty("Cluster"));
    let mut d = Delta::open(ts.channel().await, "n1").await;
    // Subscribe in the "wrong" order: Listener first.
    d.subscribe(&lt, &[], HashMap::new()).await;
    d.subscribe(&ct, &[], HashMap::new()).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let r = d.recv().await;
        d.ack(&r).await;
        got.push(r.type_url.clone());
    }
    // The first Listener response may precede the Cluster subscription; what matters is below.
    d.none().await;

    // One change touching both: Cluster goes first.
    ts.cache.set_snapshot(
        "n1",
        Snapshot::new()
            .with(cluster("c1", "1"))
            .with(cluster("c2", "1"))
            .with(listener("l1", "c2")),
    );
    let r1 = d.recv().await;
    let r2 = d.recv().await;
    assert_eq!((r1.type_url.as_str(), r2.type_url.as_str()), (ct.as_str(), lt.as_str()));
    assert_eq!(delta_names(&r1), ["c2"]);
    assert_eq!(delta_names(&r2), ["l1"]);
    d.ack(&r1).await;
    d.ack(&r2).await;

    // Listener switches back and c2 goes away: the Listener change first, the Cluster removal after.
    ts.cache.set_snapshot(
        "n1",
        Snapshot::new().with(cluster("c1", "1")).with(listener("l1", "c1")),
    );
    let r = d.recv().await;
    assert_eq!(r.type_url, lt);
    d.ack(&r).await;
    let r = d.recv().await;
    assert_eq!(r.type_url, ct);
    assert_eq!(r.removed_resources, ["c2"]);
    d.ack(&r).await;

    // Removing both: Listener removal before Cluster removal.
    ts.cache.set_snapshot("n1", Snapshot::new());
    let r1 = d.recv().await;
    let r2 = d.recv().await;
    assert_eq!((r1.type_url.as_str(), r2.type_url.as_str()), (lt.as_str(), ct.as_str()));
    assert_eq!(r1.removed_resources, ["l1"]);
    assert_eq!(r2.removed_resources, ["c1"]);
    ts.shutdown().await;
}

#[tokio::test]
async fn sotw_order_across_types() {
    let ts = TestServer::default().await;
    ts.cache.set_snapshot(
        "n1",
        Snapshot::new().with(cluster("c1", "1")).with(listener("l1", "c1")),
    );
    let (lt, ct) = (ty("Listener"), ty("Cluster"));
    let mut s = Sotw::open(ts.channel().await, "n1").await;
    s.send(&lt, &[], "", "", None).await;
    let r = s.recv().await;
    s.ack(&r, &[]).await;
    s.send(&ct, &[], "", "", None).await;
    let r = s.recv().await;
    assert_eq!(r.type_url, ct);
    s.ack(&r, &[]).await;
    ts.cache.set_snapshot(
        "n1",
        Snapshot::new().with(cluster("c2", "1")).with(listener("l1", "c2")),
    );
    // Cluster with c2 added (c1 kept), then Listener, then Cluster without c1.
    let r1 = s.recv().await;
    assert_eq!(r1.type_url, ct);
    assert_eq!(r1.resources.len(), 2);
    let r2 = s.recv().await;
    assert_eq!(r2.type_url, lt);
    s.ack(&r1, &[]).await;
    s.ack(&r2, &[]).await;
    let r3 = s.recv().await;
    assert_eq!(r3.type_url, ct);
    assert_eq!(r3.resources.len(), 1);
    ts.shutdown().await;
}

#[tokio::test]
async fn many_nodes_get_their_own_snapshot() {
    let ts = TestServer::default().await;
    let n = 200;
    for i in 0..n {
        ts.cache.set_snapshot(
            &format!("node-{i}"),
            Snapshot::new().with(listener(&format!("l-{i}"), "r")),
        );
    }
    let mut tasks = Vec::new();
    for i in 0..n {
        let ch = ts.channel().await;
        tasks.push(tokio::spawn(async move {
            let mut s = Sotw::open(ch, &format!("node-{i}")).await;
            s.send(&ty("Listener"), &[], "", "", None).await;
            let r = s.recv().await;
            assert_eq!(names_of(&r), [format!("l-{i}")]);
            s.ack(&r, &[]).await;
            s
        }));
    }
    let mut streams = Vec::new();
    for t in tasks {
        streams.push(t.await.unwrap());
    }
    assert_eq!(ts.server.active_streams(), n);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ts.server.agents().len(), n);
    assert_eq!(ts.hooks.connected.lock().unwrap().len(), n);
    drop(streams);
    tokio::time::timeout(WAIT, async {
        while ts.server.active_streams() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(ts.hooks.disconnected.lock().unwrap().len(), n);
    assert!(ts.server.agents().is_empty());
    ts.shutdown().await;
}

#[tokio::test]
async fn stream_limit_refuses_with_resource_exhausted() {
    let ts = TestServer::start(XdsConfig {
        max_streams: 2,
        ..Default::default()
    })
    .await;
    let _a = Sotw::open(ts.channel().await, "a").await;
    let _b = Sotw::open(ts.channel().await, "b").await;
    let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
    let mut client = AggregatedDiscoveryServiceClient::new(ts.channel().await);
    let e = client.stream_aggregated_resources(rx_stream(rx)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    ts.shutdown().await;
}

#[tokio::test]
async fn node_without_snapshot_gets_empty_answer_after_wait() {
    let ts = TestServer::default().await;
    let mut s = Sotw::open(ts.channel().await, "nobody").await;
    s.send(&ty("Listener"), &[], "", "", None).await;
    let r = s.recv().await;
    assert!(r.resources.is_empty());
    let info = ts.hooks.connected.lock().unwrap()[0].clone();
    assert_eq!(info.id, "nobody");
    assert_eq!(info.cluster, "c1");
    assert_eq!(info.user_agent, "test");
    ts.shutdown().await;
}

#[tokio::test]
async fn csds_reports_acked_and_nacked() {
    let ts = TestServer::default().await;
    ts.cache
        .set_snapshot("n1", Snapshot::new().with(listener("a", "r1")).with(cluster("c", "1")));
    let mut s = Sotw::open(ts.channel().await, "n1").await;
    let (lt, ct) = (ty("Listener"), ty("Cluster"));
    s.send(&lt, &[], "", "", None).await;
    let r = s.recv().await;
    s.ack(&r, &[]).await;
    s.send(&ct, &[], "", "", None).await;
    let r = s.recv().await;
    s.send(&ct, &[], &r.nonce, "", Some("no such thing")).await;
    s.none().await;

    let mut csds = ClientStatusDiscoveryServiceClient::new(ts.channel().await);
    let resp = csds
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.config.len(), 1);
    let cfg = &resp.config[0];
    assert_eq!(cfg.node.as_ref().unwrap().id, "n1");
    let find = |t: &str, n: &str| {
        cfg.generic_xds_configs
            .iter()
            .find(|g| g.type_url == t && g.name == n)
            .unwrap()
            .clone()
    };
    let a = find(&lt, "a");
    assert_eq!(a.client_status, ClientResourceStatus::Acked as i32);
    assert!(a.xds_config.is_some());
    let c = find(&ct, "c");
    assert_eq!(c.client_status, ClientResourceStatus::Nacked as i32);
    assert_eq!(c.error_state.unwrap().details, "no such thing");

    // Filtered by node id.
    let resp = csds
        .fetch_client_status(ClientStatusRequest {
            node: Some(Node {
                id: "other".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.config.is_empty());
    ts.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let ts = TestServer::default().await;
    ts.cache.set_snapshot("n1", Snapshot::new().with(listener("a", "r1")));
    let mut s = Sotw::open(ts.channel().await, "n1").await;
    s.send(&ty("Listener"), &[], "", "", None).await;
    let _ = s.recv().await;
    // Graceful shutdown completes even with a stream open.
    ts.shutdown().await;
}

#[tokio::test]
async fn silent_stream_is_closed_after_first_request_timeout() {
    let ts = TestServer::start(XdsConfig {
        first_request_timeout: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let mut s = Sotw::open(ts.channel().await, "n1").await;
    let e = tokio::time::timeout(WAIT, s.rx.message()).await.unwrap().unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
    tokio::time::timeout(WAIT, async {
        while ts.server.active_streams() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(ts.hooks.connected.lock().unwrap().is_empty());
    ts.shutdown().await;
}

#[tokio::test]
async fn delta_nack_keeps_state_and_does_not_loop() {
    let ts = TestServer::default().await;
    ts.cache
        .set_snapshot("n1", Snapshot::new().with(cluster("a", "1")).with(cluster("b", "1")));
    let ct = ty("Cluster");
    let mut d = Delta::open(ts.channel().await, "n1").await;
    d.subscribe(&ct, &[], HashMap::new()).await;
    let r = d.recv().await;
    d.ack(&r).await;
    ts.cache
        .set_snapshot("n1", Snapshot::new().with(cluster("a", "bad")).with(cluster("b", "1")));
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["a"]);
    d.req(DeltaDiscoveryRequest {
        type_url: ct.clone(),
        response_nonce: r.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "a is bad".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    d.none().await;
    let agent = ts.server.agent("n1").unwrap();
    assert_eq!(agent.last_nack.as_ref().unwrap().message, "a is bad");
    assert_eq!(agent.types[&ct].acked_resources.len(), 2);
    // Only a change goes out again: b changes, a (still bad) is not resent.
    ts.cache
        .set_snapshot("n1", Snapshot::new().with(cluster("a", "bad")).with(cluster("b", "2")));
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["b"]);
    d.ack(&r).await;
    ts.cache
        .set_snapshot("n1", Snapshot::new().with(cluster("a", "good")).with(cluster("b", "2")));
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["a"]);
    d.ack(&r).await;
    d.none().await;
    assert!(ts.server.agent("n1").unwrap().types[&ct].nacked.is_none());
    ts.shutdown().await;
}

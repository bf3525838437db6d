//! The xDS server of `l7mp-control`: ADS (state of the world and delta), CSDS, a per-node snapshot cache.
//!
//! It is generic over resources: it streams whatever [`Snapshot`] the control plane sets for a node
//! (each resource an `Any` with a type URL) and knows nothing of what a VirtualService is. The control
//! plane learns who connects through [`NodeHooks`], computes the node's snapshot and puts it in the
//! [`Cache`]; every stream of that node wakes and sends what changed.
//!
//! - [`cache`]: [`Cache`], [`Snapshot`], [`XdsResource`], content-hash versions.
//! - [`server`]: [`XdsServer`], the per-stream protocol state machine, limits, keepalive, `serve`.
//! - [`ads`]: the ADS gRPC endpoint: small codec buffers, each stream driven by its response body.
//! - [`status`]: per-node [`AgentStatus`] and the CSDS service.
//! - [`debounce`]: [`Debouncer`], coalescing store events into one recompute.
//!
//! See `docs/xds.md` for the protocol semantics (ordering, versions, ACK/NACK).

pub mod ads;
pub mod cache;
pub mod debounce;
pub mod server;
pub mod status;

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

pub use cache::{Cache, Snapshot, XdsResource};
pub use debounce::{DebounceHandle, Debouncer};
pub use server::XdsServer;
pub use status::{AgentStatus, Counters, NackInfo, TypeStatus};

/// The type URL prefix of l7mp's own resources.
pub const L7MP_TYPE_PREFIX: &str = "type.googleapis.com/l7mp.config.v1.";

/// The default make-before-break order of resource types (additions in this order, removals in reverse): l7mp's,
/// then Envoy's for gRPC clients (Cluster, ClusterLoadAssignment, Listener, RouteConfiguration); see
/// [`XdsConfig::type_order`].
pub fn default_type_order() -> Vec<String> {
    ["Cluster", "ClusterLoad", "Route", "Rule", "RuleList", "Listener"]
        .iter()
        .map(|n| format!("{L7MP_TYPE_PREFIX}{n}"))
        .chain(crate::grpc::type_urls())
        .collect()
}

/// Errors of the xDS server.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The gRPC transport failed (bind, serve).
    #[error("xDS transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Socket errors.
    #[error("xDS socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Who connected: what a stream's first request says about its node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeInfo {
    /// `node.id` (the snapshot key).
    pub id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// `node.metadata` as JSON (the l7mp agent sends `labels` (map) and `address` there); `Null` when
    /// absent.
    pub metadata: serde_json::Value,
    /// `node.locality` as `(region, zone, sub_zone)`.
    pub locality: Option<(String, String, String)>,
    /// `node.user_agent_name`.
    pub user_agent: String,
    /// The server-assigned id of the stream that carried it.
    pub stream_id: u64,
}

impl NodeInfo {
    /// From the `Node` of a request.
    pub fn from_node(node: &Node, stream_id: u64) -> Self {
        Self {
            id: node.id.clone(),
            cluster: node.cluster.clone(),
            metadata: node.metadata.as_ref().map_or(serde_json::Value::Null, struct_to_json),
            locality: node
                .locality
                .as_ref()
                .map(|l| (l.region.clone(), l.zone.clone(), l.sub_zone.clone())),
            user_agent: node.user_agent_name.clone(),
            stream_id,
        }
    }

    /// Back to a `Node` (for CSDS).
    pub fn to_node(&self) -> Node {
        Node {
            id: self.id.clone(),
            cluster: self.cluster.clone(),
            metadata: match json_to_value(&self.metadata).kind {
                Some(Kind::StructValue(s)) => Some(s),
                _ => None,
            },
            locality: self.locality.as_ref().map(|(region, zone, sub_zone)| Locality {
                region: region.clone(),
                zone: zone.clone(),
                sub_zone: sub_zone.clone(),
            }),
            user_agent_name: self.user_agent.clone(),
            ..Default::default()
        }
    }
}

/// `google.protobuf.Struct` → JSON object.
pub fn struct_to_json(s: &Struct) -> serde_json::Value {
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    serde_json::Value::Object(
        keys.into_iter()
            .filter_map(|k| s.fields.get(k).map(|v| (k.clone(), value_to_json(v))))
            .collect(),
    )
}

fn value_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, serde_json::Value::Number)
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}

fn json_to_value(j: &serde_json::Value) -> Value {
    use envoy_types::pb::google::protobuf::ListValue;
    let kind = match j {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// How the control plane learns who connects. Called from the stream tasks: keep them quick (e.g. mark
/// the node and poke a [`DebounceHandle`]); the snapshot is then set with [`Cache::set_snapshot`].
pub trait NodeHooks: Send + Sync {
    /// A stream's first request named this node (called for every stream of the node).
    fn connected(&self, node: &NodeInfo);
    /// The last stream of this node closed.
    fn disconnected(&self, node_id: &str);
}

/// Hooks that do nothing (snapshots are set independently of connections).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl NodeHooks for NoHooks {
    fn connected(&self, _node: &NodeInfo) {}
    fn disconnected(&self, _node_id: &str) {}
}

/// Settings of the xDS server.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// Make-before-break order of type URLs: additions/changes are sent in this order, removals in
    /// reverse; other type URLs come after these, in the order the stream first requested them.
    pub type_order: Vec<String>,
    /// Concurrent ADS streams; beyond it a stream is refused with `RESOURCE_EXHAUSTED`.
    pub max_streams: usize,
    /// How long a new stream may take to send its first request (with the node) before it is closed
    /// with `DEADLINE_EXCEEDED`.
    pub first_request_timeout: Duration,
    /// How long a stream waits for its node's first snapshot before answering from an empty one.
    pub snapshot_wait: Duration,
    /// HTTP/2 keepalive ping interval.
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive ping timeout.
    pub keepalive_timeout: Duration,
    /// Max decoded (request) and encoded (response) gRPC message size, bytes.
    pub max_message_size: usize,
}

impl Default for XdsConfig {
    fn default() -> Self {
        Self {
            type_order: default_type_order(),
            max_streams: 10_000,
            first_request_timeout: Duration::from_secs(30),
            snapshot_wait: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_message_size: 16 * 1024 * 1024,
        }
    }
}

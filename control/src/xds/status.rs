//! What the control plane knows about each connected node: since when it is connected, per type the
//! version and nonce it ACKed, its last NACK, counters; and the CSDS service
//! (`envoy.service.status.v3.ClientStatusDiscoveryService`) built on it.
//!
//! Several streams of one node share one [`AgentStatus`] (the last writer wins per type); the entry goes
//! away when the last stream of the node closes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_server::ClientStatusDiscoveryService;
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};
use envoy_types::pb::google::protobuf::Timestamp;
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::NodeInfo;
use super::cache::Cache;

/// A rejected response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackInfo {
    /// The type URL of the rejected response.
    pub type_url: String,
    /// The version the server sent and the client rejected.
    pub rejected_version: String,
    /// The nonce of the rejected response.
    pub nonce: String,
    /// The client's `error_detail.message`.
    pub message: String,
    /// The `error_detail.code`.
    pub code: i32,
    /// When the NACK arrived.
    pub at: SystemTime,
}

/// The exchange state of one type URL with one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// The version of the last response sent (SotW `version_info` / delta `system_version_info`).
    pub sent_version: String,
    /// The nonce of the last response sent.
    pub sent_nonce: String,
    /// The version the client ACKed last ("" before the first ACK).
    pub acked_version: String,
    /// The nonce of that ACK.
    pub acked_nonce: String,
    /// When the last ACK arrived.
    pub acked_at: Option<SystemTime>,
    /// name → version the client has ACKed.
    pub acked_resources: BTreeMap<String, String>,
    /// name → version of the response in flight or rejected (not ACKed).
    pub pending_resources: BTreeMap<String, String>,
    /// Set by a NACK, cleared by the next ACK.
    pub nacked: Option<NackInfo>,
}

/// Counters of one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Responses sent.
    pub responses: u64,
    /// ACKs received.
    pub acks: u64,
    /// NACKs received.
    pub nacks: u64,
    /// Requests ignored for a stale nonce.
    pub stale_nonces: u64,
}

/// The status of one connected node (agent), for the Management API and CSDS.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStatus {
    /// Who it is (from the first stream).
    pub node: NodeInfo,
    /// When its first open stream connected.
    pub connected_since: SystemTime,
    /// Open streams of the node.
    pub streams: usize,
    /// Per type URL.
    pub types: BTreeMap<String, TypeStatus>,
    /// The last NACK over all types (kept after later ACKs).
    pub last_nack: Option<NackInfo>,
    /// Counters.
    pub counters: Counters,
}

/// The per-node status table, updated by the streams.
#[derive(Debug, Default)]
pub struct StatusRegistry {
    agents: Mutex<HashMap<String, AgentStatus>>,
}

impl StatusRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, AgentStatus>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream of `node` opened; returns whether it is the node's first.
    pub(crate) fn connect(&self, node: &NodeInfo) -> bool {
        let mut agents = self.lock();
        match agents.get_mut(&node.id) {
            Some(a) => {
                a.streams += 1;
                false
            }
            None => {
                agents.insert(
                    node.id.clone(),
                    AgentStatus {
                        node: node.clone(),
                        connected_since: SystemTime::now(),
                        streams: 1,
                        types: BTreeMap::new(),
                        last_nack: None,
                        counters: Counters::default(),
                    },
                );
                true
            }
        }
    }

    /// A stream of `node_id` closed; returns whether it was the node's last.
    pub(crate) fn disconnect(&self, node_id: &str) -> bool {
        let mut agents = self.lock();
        let Some(a) = agents.get_mut(node_id) else {
            return false;
        };
        a.streams = a.streams.saturating_sub(1);
        if a.streams == 0 {
            agents.remove(node_id);
            true
        } else {
            false
        }
    }

    fn with<R>(&self, node_id: &str, f: impl FnOnce(&mut AgentStatus) -> R) -> Option<R> {
        self.lock().get_mut(node_id).map(f)
    }

    pub(crate) fn sent(
        &self,
        node_id: &str,
        type_url: &str,
        version: &str,
        nonce: &str,
        view: BTreeMap<String, String>,
    ) {
        self.with(node_id, |a| {
            a.counters.responses += 1;
            let t = a.types.entry(type_url.to_string()).or_default();
            t.sent_version = version.to_string();
            t.sent_nonce = nonce.to_string();
            t.pending_resources = view;
        });
    }

    /// The node's stream asked for this type for the first time (CSDS lists the types a node asked for).
    pub(crate) fn requested(&self, node_id: &str, type_url: &str) {
        self.with(node_id, |a| {
            a.types.entry(type_url.to_string()).or_default();
        });
    }

    pub(crate) fn acked(&self, node_id: &str, type_url: &str, nonce: &str) {
        self.with(node_id, |a| {
            a.counters.acks += 1;
            let t = a.types.entry(type_url.to_string()).or_default();
            if t.sent_nonce == nonce {
                t.acked_version = t.sent_version.clone();
                t.acked_resources = std::mem::take(&mut t.pending_resources);
            }
            t.acked_nonce = nonce.to_string();
            t.acked_at = Some(SystemTime::now());
            t.nacked = None;
        });
    }

    pub(crate) fn nacked(&self, node_id: &str, info: NackInfo) {
        self.with(node_id, |a| {
            a.counters.nacks += 1;
            let t = a.types.entry(info.type_url.clone()).or_default();
            t.nacked = Some(info.clone());
            a.last_nack = Some(info);
        });
    }

    pub(crate) fn stale(&self, node_id: &str) {
        self.with(node_id, |a| a.counters.stale_nonces += 1);
    }

    /// All connected nodes, by id.
    pub fn agents(&self) -> Vec<AgentStatus> {
        let mut v: Vec<AgentStatus> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.node.id.cmp(&b.node.id));
        v
    }

    /// One node.
    pub fn agent(&self, node_id: &str) -> Option<AgentStatus> {
        self.lock().get(node_id).cloned()
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The CSDS view of one node: one `GenericXdsConfig` per (type URL, resource name) over the union of
/// what the snapshot holds, what was sent and what was ACKed, for the types the node asked for (an agent's
/// snapshot also holds the gRPC services' Envoy resources, which it never asks for).
pub fn client_config(agent: &AgentStatus, cache: &Cache, include_contents: bool) -> ClientConfig {
    let snapshot = cache.get(&agent.node.id);
    let type_urls: BTreeSet<String> = agent.types.keys().cloned().collect();
    let mut out = Vec::new();
    for type_url in type_urls {
        let empty = TypeStatus::default();
        let t = agent.types.get(&type_url).unwrap_or(&empty);
        let in_snapshot = snapshot.as_ref().and_then(|s| s.resources(&type_url));
        let mut names: BTreeSet<&String> = t.acked_resources.keys().collect();
        names.extend(t.pending_resources.keys());
        if let Some(m) = in_snapshot {
            names.extend(m.keys());
        }
        for name in names {
            let want = in_snapshot.and_then(|m| m.get(name));
            let acked = t.acked_resources.get(name);
            let pending = t.pending_resources.get(name);
            let nacked = t.nacked.as_ref().filter(|_| pending.is_some() && pending != acked);
            let (config_status, client_status) = if nacked.is_some() {
                (ConfigStatus::Error, ClientResourceStatus::Nacked)
            } else if want.is_some() && want.map(|r| &r.version) == acked {
                (ConfigStatus::Synced, ClientResourceStatus::Acked)
            } else if want.is_none() && acked.is_none() && pending.is_none() {
                (ConfigStatus::Synced, ClientResourceStatus::DoesNotExist)
            } else if pending.is_some() || (want.is_none() && acked.is_some()) {
                (ConfigStatus::Stale, ClientResourceStatus::Requested)
            } else {
                (ConfigStatus::NotSent, ClientResourceStatus::Unknown)
            };
            out.push(GenericXdsConfig {
                type_url: type_url.clone(),
                name: name.clone(),
                version_info: t.acked_version.clone(),
                xds_config: if include_contents {
                    want.map(|r| r.body.clone())
                } else {
                    None
                },
                last_updated: t.acked_at.map(timestamp),
                config_status: config_status as i32,
                client_status: client_status as i32,
                error_state: nacked.map(|n| UpdateFailureState {
                    failed_configuration: None,
                    last_update_attempt: Some(timestamp(n.at)),
                    details: n.message.clone(),
                    version_info: n.rejected_version.clone(),
                }),
                is_static_resource: false,
            });
        }
    }
    #[allow(deprecated)]
    ClientConfig {
        node: Some(agent.node.to_node()),
        generic_xds_configs: out,
        ..Default::default()
    }
}

/// The CSDS service over the status registry and the cache.
#[derive(Debug, Clone)]
pub struct CsdsService {
    pub(crate) status: Arc<StatusRegistry>,
    pub(crate) cache: Arc<Cache>,
}

impl CsdsService {
    fn answer(&self, req: &ClientStatusRequest) -> ClientStatusResponse {
        let want_id = req
            .node
            .as_ref()
            .map(|n: &Node| n.id.as_str())
            .filter(|s| !s.is_empty());
        let config = self
            .status
            .agents()
            .iter()
            .filter(|a| want_id.is_none_or(|id| id == a.node.id))
            .map(|a| client_config(a, &self.cache, !req.exclude_resource_contents))
            .collect();
        ClientStatusResponse { config }
    }
}

type CsdsStream = Pin<Box<dyn Stream<Item = Result<ClientStatusResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for CsdsService {
    type StreamClientStatusStream = CsdsStream;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let this = self.clone();
        let out = request.into_inner().map(move |req| req.map(|r| this.answer(&r)));
        Ok(Response::new(Box::pin(out)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        Ok(Response::new(self.answer(request.get_ref())))
    }
}

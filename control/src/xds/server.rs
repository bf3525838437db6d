//! The ADS server: state of the world (`StreamAggregatedResources`) and delta
//! (`DeltaAggregatedResources`) over one per-stream state machine, plus limits, keepalive and `serve`.
//!
//! Each stream is driven by its response body ([`super::ads`]). Per type URL it keeps the subscription (wildcard or names), the
//! *view* (name → version the client was sent and is assumed to hold), and at most one nonce in flight.
//! Whenever a request is processed or the node's snapshot changes, [`StreamState::schedule`] compares
//! the view with the snapshot and sends, make-before-break:
//! 1. additions and changes, type by type in [`XdsConfig::type_order`] (then other types in request
//!    order); a type with a nonce in flight holds back the types after it;
//! 2. once nothing is left to add, removals, type by type in reverse order. (A type's removals ride
//!    along with its additions when no type after it has anything pending.)
//!
//! A NACK leaves the view as sent, so the rejected version is not resent; only a snapshot change that
//! differs from it produces a new response.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_server::ClientStatusDiscoveryServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::Status;
use tonic::transport::server::{Router, TcpIncoming};
use tracing::{debug, info, warn};

use super::ads::AdsService;
use super::cache::{Cache, Snapshot, XdsResource, set_version};
use super::status::{AgentStatus, CsdsService, NackInfo, StatusRegistry};
use super::{NodeHooks, XdsConfig, XdsError};

/// Which protocol variant a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// State of the world: every response carries the whole subscribed set.
    Sotw,
    /// Incremental: responses carry changed resources and removed names.
    Delta,
}

/// A request of either variant, normalized.
#[derive(Debug, Clone, Default)]
pub struct NormRequest {
    /// `type_url`.
    pub type_url: String,
    /// `response_nonce`.
    pub nonce: String,
    /// `error_detail` as (code, message).
    pub error: Option<(i32, String)>,
    /// SotW: `resource_names` (the full list); delta: `resource_names_subscribe`.
    pub subscribe: Vec<String>,
    /// Delta: `resource_names_unsubscribe`.
    pub unsubscribe: Vec<String>,
    /// Delta: `initial_resource_versions`.
    pub initial: HashMap<String, String>,
}

impl From<&DiscoveryRequest> for NormRequest {
    fn from(r: &DiscoveryRequest) -> Self {
        Self {
            type_url: r.type_url.clone(),
            nonce: r.response_nonce.clone(),
            error: r.error_detail.as_ref().map(|e| (e.code, e.message.clone())),
            subscribe: r.resource_names.clone(),
            ..Default::default()
        }
    }
}

impl From<&DeltaDiscoveryRequest> for NormRequest {
    fn from(r: &DeltaDiscoveryRequest) -> Self {
        Self {
            type_url: r.type_url.clone(),
            nonce: r.response_nonce.clone(),
            error: r.error_detail.as_ref().map(|e| (e.code, e.message.clone())),
            subscribe: r.resource_names_subscribe.clone(),
            unsubscribe: r.resource_names_unsubscribe.clone(),
            initial: r.initial_resource_versions.clone(),
        }
    }
}

/// A response of either variant.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// State of the world.
    Sotw(DiscoveryResponse),
    /// Delta.
    Delta(DeltaDiscoveryResponse),
}

#[derive(Debug, Clone)]
struct Sent {
    version: String,
    /// `None` for what a delta client announced in `initial_resource_versions`.
    res: Option<Arc<XdsResource>>,
}

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    view: BTreeMap<String, Sent>,
    /// The nonce in flight (sent, not yet ACKed or NACKed).
    nonce: Option<String>,
    /// The nonce of the latest response of this type ("" before the first): a request that carries another one is
    /// stale.
    last_nonce: String,
    version: String,
    must_respond: bool,
    /// Delta: explicitly subscribed names to report as absent (in `removed_resources`).
    absent: BTreeSet<String>,
}

impl TypeState {
    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    fn target<'a>(&'a self, snap: &'a Snapshot, type_url: &str) -> impl Iterator<Item = &'a Arc<XdsResource>> + 'a {
        snap.resources(type_url)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|r| self.subscribed(&r.name))
    }

    fn upserts(&self, snap: &Snapshot, type_url: &str) -> Vec<Arc<XdsResource>> {
        self.target(snap, type_url)
            .filter(|r| self.view.get(&r.name).is_none_or(|s| s.version != r.version))
            .cloned()
            .collect()
    }

    fn removals(&self, snap: &Snapshot, type_url: &str) -> Vec<String> {
        self.view
            .keys()
            .filter(|n| snap.get(type_url, n).is_none() || !self.subscribed(n))
            .cloned()
            .collect()
    }

    fn absent_to_report(&self, snap: &Snapshot, type_url: &str) -> Vec<String> {
        self.absent
            .iter()
            .filter(|n| self.subscribed(n) && snap.get(type_url, n).is_none() && !self.view.contains_key(*n))
            .cloned()
            .collect()
    }
}

/// The per-stream xDS state machine (no I/O: requests in, responses out).
#[derive(Debug)]
pub struct StreamState {
    mode: Mode,
    node_id: String,
    stream_id: u64,
    order: Vec<String>,
    request_order: Vec<String>,
    types: HashMap<String, TypeState>,
    nonces: u64,
    status: Arc<StatusRegistry>,
}

impl StreamState {
    /// A fresh stream of `node_id`; `order` is the make-before-break type order.
    pub fn new(mode: Mode, node_id: &str, stream_id: u64, order: Vec<String>, status: Arc<StatusRegistry>) -> Self {
        Self {
            mode,
            node_id: node_id.to_string(),
            stream_id,
            order,
            request_order: Vec::new(),
            types: HashMap::new(),
            nonces: 0,
            status,
        }
    }

    /// Processes one request (ACK/NACK bookkeeping and subscriptions).
    pub fn handle(&mut self, req: NormRequest) {
        if req.type_url.is_empty() {
            warn!(node = %self.node_id, "xDS request without type_url ignored");
            return;
        }
        let new_type = !self.types.contains_key(&req.type_url);
        if new_type {
            self.request_order.push(req.type_url.clone());
            self.status.requested(&self.node_id, &req.type_url);
        }
        let t = self.types.entry(req.type_url.clone()).or_default();
        // "response_nonce ... is the nonce of the most recent response the client received; a request with another
        // one is stale" (xDS protocol). A request that repeats the nonce of a response the client has already ACKed
        // is not stale: it changes the subscription (gRPC asks for a new cluster this way).
        if !req.nonce.is_empty() {
            if t.last_nonce != req.nonce {
                self.status.stale(&self.node_id);
                debug!(node = %self.node_id, type_url = %req.type_url, nonce = %req.nonce, "stale nonce, request ignored");
                if self.mode == Mode::Sotw {
                    return;
                }
            } else if t.nonce.as_deref() == Some(req.nonce.as_str()) {
                t.nonce = None;
                match &req.error {
                    Some((code, message)) => {
                        warn!(node = %self.node_id, type_url = %req.type_url, version = %t.version, %message, "xDS NACK");
                        self.status.nacked(
                            &self.node_id,
                            NackInfo {
                                type_url: req.type_url.clone(),
                                rejected_version: t.version.clone(),
                                nonce: req.nonce.clone(),
                                message: message.clone(),
                                code: *code,
                                at: SystemTime::now(),
                            },
                        );
                    }
                    None => self.status.acked(&self.node_id, &req.type_url, &req.nonce),
                }
            }
        }
        match self.mode {
            Mode::Sotw => {
                let mut names: BTreeSet<String> = req.subscribe.into_iter().collect();
                let wildcard = if new_type {
                    names.is_empty() || names.contains("*")
                } else {
                    names.contains("*") || (t.wildcard && names.is_empty())
                };
                names.remove("*");
                if new_type || wildcard != t.wildcard || names != t.names {
                    t.wildcard = wildcard;
                    t.names = names;
                    t.must_respond = true;
                    let (wc, nm) = (t.wildcard, &t.names);
                    t.view.retain(|n, _| wc || nm.contains(n));
                }
                if req.nonce.is_empty() && !new_type {
                    // The client (re)starts this type without a response in hand: send it everything.
                    t.view.clear();
                    t.must_respond = true;
                }
            }
            Mode::Delta => {
                if new_type {
                    t.wildcard = req.subscribe.is_empty();
                    t.must_respond = true;
                }
                for n in req.subscribe {
                    if n == "*" {
                        t.wildcard = true;
                    } else if t.names.insert(n.clone()) {
                        t.absent.insert(n);
                    }
                }
                for n in &req.unsubscribe {
                    if n == "*" {
                        t.wildcard = false;
                    } else {
                        t.names.remove(n);
                        t.absent.remove(n);
                    }
                }
                let (wc, nm) = (t.wildcard, &t.names);
                t.view.retain(|n, _| wc || nm.contains(n));
                if new_type {
                    for (n, v) in req.initial {
                        if t.subscribed(&n) {
                            t.absent.remove(&n);
                            t.view.insert(n, Sent { version: v, res: None });
                        }
                    }
                }
            }
        }
    }

    fn ordered_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .order
            .iter()
            .filter(|t| self.types.contains_key(*t))
            .cloned()
            .collect();
        v.extend(self.request_order.iter().filter(|t| !self.order.contains(t)).cloned());
        v
    }

    /// The responses due now against `snap`, in make-before-break order.
    pub fn schedule(&mut self, snap: &Snapshot) -> Vec<Outgoing> {
        let order = self.ordered_types();
        // Which types have anything to send (before this round).
        let busy: Vec<bool> = order
            .iter()
            .map(|u| {
                self.types
                    .get(u)
                    .is_some_and(|s| !s.upserts(snap, u).is_empty() || !s.removals(snap, u).is_empty())
            })
            .collect();
        let mut out = Vec::new();
        for (i, ty) in order.iter().enumerate() {
            let Some(t) = self.types.get(ty) else { continue };
            let ups = t.upserts(snap, ty);
            let absent = if self.mode == Mode::Delta {
                t.absent_to_report(snap, ty)
            } else {
                Vec::new()
            };
            if ups.is_empty() && absent.is_empty() && !t.must_respond {
                continue;
            }
            if t.nonce.is_some() {
                // Make-before-break: later types wait until this one can go.
                return out;
            }
            let mut removed = absent;
            if !busy[i + 1..].iter().any(|b| *b) {
                // Nothing after this type is pending: its removals can go in the same response.
                removed.extend(t.removals(snap, ty));
            }
            out.push(self.respond(ty, ups, removed));
        }
        for ty in order.iter().rev() {
            let Some(t) = self.types.get(ty) else { continue };
            let rem = t.removals(snap, ty);
            if rem.is_empty() {
                continue;
            }
            if t.nonce.is_some() {
                break;
            }
            out.push(self.respond(ty, Vec::new(), rem));
        }
        out
    }

    fn respond(&mut self, ty: &str, ups: Vec<Arc<XdsResource>>, removed: Vec<String>) -> Outgoing {
        self.nonces += 1;
        let nonce = format!("{}-{}", self.stream_id, self.nonces);
        let mode = self.mode;
        let Some(t) = self.types.get_mut(ty) else {
            // Unreachable: callers pass a known type. Answer with an empty, harmless response.
            return Outgoing::Sotw(DiscoveryResponse::default());
        };
        for r in &ups {
            t.view.insert(
                r.name.clone(),
                Sent {
                    version: r.version.clone(),
                    res: Some(r.clone()),
                },
            );
        }
        for n in &removed {
            t.view.remove(n);
        }
        t.version = set_version(t.view.iter().map(|(n, s)| (n.as_str(), s.version.as_str())));
        t.nonce = Some(nonce.clone());
        t.last_nonce = nonce.clone();
        t.must_respond = false;
        t.absent.clear();
        let view: BTreeMap<String, String> = t.view.iter().map(|(n, s)| (n.clone(), s.version.clone())).collect();
        self.status.sent(&self.node_id, ty, &t.version, &nonce, view);
        match mode {
            Mode::Sotw => Outgoing::Sotw(DiscoveryResponse {
                version_info: t.version.clone(),
                resources: t
                    .view
                    .values()
                    .filter_map(|s| s.res.as_ref().map(|r| r.body.clone()))
                    .collect(),
                type_url: ty.to_string(),
                nonce,
                ..Default::default()
            }),
            Mode::Delta => Outgoing::Delta(DeltaDiscoveryResponse {
                system_version_info: t.version.clone(),
                resources: ups
                    .iter()
                    .map(|r| Resource {
                        name: r.name.clone(),
                        version: r.version.clone(),
                        resource: Some(r.body.clone()),
                        ..Default::default()
                    })
                    .collect(),
                type_url: ty.to_string(),
                removed_resources: removed,
                nonce,
                ..Default::default()
            }),
        }
    }
}

/// What the server and its streams share.
pub(super) struct Inner {
    pub(super) cache: Arc<Cache>,
    pub(super) status: Arc<StatusRegistry>,
    pub(super) hooks: Arc<dyn NodeHooks>,
    pub(super) config: XdsConfig,
    streams: AtomicUsize,
    pub(super) next_stream: AtomicU64,
    pub(super) shutdown: watch::Sender<bool>,
    /// What a stream whose node has no snapshot answers from, once it stopped waiting for one.
    pub(super) empty: Arc<Snapshot>,
}

/// Decrements the stream count when a stream ends.
pub(super) struct StreamPermit(Arc<Inner>);

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The xDS server: ADS (SotW and delta) and CSDS over a [`Cache`], with [`NodeHooks`].
#[derive(Clone)]
pub struct XdsServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer")
            .field("config", &self.inner.config)
            .field("streams", &self.inner.streams.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl XdsServer {
    /// A server over `cache`, telling `hooks` who connects.
    pub fn new(cache: Arc<Cache>, hooks: Arc<dyn NodeHooks>, config: XdsConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                cache,
                status: Arc::new(StatusRegistry::default()),
                hooks,
                config,
                streams: AtomicUsize::new(0),
                next_stream: AtomicU64::new(1),
                shutdown: watch::channel(false).0,
                empty: Arc::new(Snapshot::default()),
            }),
        }
    }

    /// The snapshot cache.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.inner.cache
    }

    /// The settings.
    pub fn config(&self) -> &XdsConfig {
        &self.inner.config
    }

    /// The connected nodes and their exchange state (for the Management API).
    pub fn agents(&self) -> Vec<AgentStatus> {
        self.inner.status.agents()
    }

    /// One connected node.
    pub fn agent(&self, node_id: &str) -> Option<AgentStatus> {
        self.inner.status.agent(node_id)
    }

    /// Open ADS streams.
    pub fn active_streams(&self) -> usize {
        self.inner.streams.load(Ordering::SeqCst)
    }

    /// Ends every open ADS stream (as `serve` does on shutdown).
    pub fn close_streams(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// The ADS gRPC service (both methods), with the message-size limits set.
    pub fn ads_service(&self) -> AdsService {
        AdsService::new(self.inner.clone())
    }

    /// The CSDS gRPC service, with the message-size limits set.
    pub fn csds_service(&self) -> ClientStatusDiscoveryServiceServer<CsdsService> {
        let max = self.inner.config.max_message_size;
        ClientStatusDiscoveryServiceServer::new(CsdsService {
            status: self.inner.status.clone(),
            cache: self.inner.cache.clone(),
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
    }

    /// A tonic server builder with HTTP/2 keepalive set.
    pub fn server_builder(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(self.inner.config.keepalive_interval))
            .http2_keepalive_timeout(Some(self.inner.config.keepalive_timeout))
    }

    /// The builder with ADS and CSDS (open to every caller that is not an agent) added; add the Management API
    /// with `.add_service(..)`.
    pub fn router(&self) -> Router {
        self.router_with(crate::auth::Access::open())
    }

    /// As [`XdsServer::router`], with CSDS callers authenticated by `access` (role `reader`). An agent's certificate
    /// never reads other nodes' configurations through CSDS.
    pub fn router_with(&self, access: Arc<crate::auth::Access>) -> Router {
        self.server_builder().add_service(self.ads_service()).add_service(
            tonic::service::interceptor::InterceptedService::new(
                self.csds_service(),
                access.interceptor("CSDS", l7mp_auth::Role::Reader),
            ),
        )
    }

    /// Serves `router` (from [`XdsServer::router`]) on `listener` until `shutdown` resolves, then ends
    /// the ADS streams and drains gracefully.
    pub async fn serve_router(
        &self,
        router: Router,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsError> {
        self.serve_incoming(router, TcpIncoming::from(listener), shutdown).await
    }

    /// As [`XdsServer::serve_router`], over TLS with client certificates: `tls` is re-read when its files change
    /// (see [`crate::tls`]). ADS then checks each stream's node id against the client certificate.
    pub async fn serve_router_tls(
        &self,
        router: Router,
        listener: TcpListener,
        tls: Arc<crate::tls::ReloadingConfig>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsError> {
        self.serve_incoming(router, crate::tls::incoming(listener, tls), shutdown)
            .await
    }

    /// Serves `router` on the connections of `incoming` until `shutdown`, then ends the ADS streams.
    async fn serve_incoming<IO, IE>(
        &self,
        router: Router,
        incoming: impl futures_util::Stream<Item = Result<IO, IE>>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsError>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let inner = self.inner.clone();
        let signal = async move {
            shutdown.await;
            info!("xDS server shutting down");
            inner.shutdown.send_replace(true);
        };
        router.serve_with_incoming_shutdown(incoming, signal).await?;
        Ok(())
    }

    /// Serves ADS and CSDS on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsError> {
        self.serve_router(self.router(), listener, shutdown).await
    }
}

impl Inner {
    pub(super) fn admit(self: &Arc<Self>) -> Result<StreamPermit, Status> {
        let n = self.streams.fetch_add(1, Ordering::SeqCst);
        let permit = StreamPermit(self.clone());
        if n >= self.config.max_streams {
            warn!(limit = self.config.max_streams, "xDS stream refused: limit reached");
            return Err(Status::resource_exhausted("too many xDS streams"));
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::NodeInfo;

    fn ty(n: &str) -> String {
        format!("{}{n}", super::super::L7MP_TYPE_PREFIX)
    }

    fn res(t: &str, n: &str, body: u8) -> XdsResource {
        XdsResource::new(n, ty(t), vec![body])
    }

    fn state(mode: Mode) -> StreamState {
        let status = Arc::new(StatusRegistry::default());
        status.connect(&NodeInfo {
            id: "n".into(),
            ..Default::default()
        });
        StreamState::new(mode, "n", 1, super::super::default_type_order(), status)
    }

    fn req(t: &str, names: &[&str], nonce: &str) -> NormRequest {
        NormRequest {
            type_url: ty(t),
            nonce: nonce.into(),
            subscribe: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn delta(o: &Outgoing) -> &DeltaDiscoveryResponse {
        match o {
            Outgoing::Delta(d) => d,
            Outgoing::Sotw(_) => panic!("not delta"),
        }
    }

    fn sotw(o: &Outgoing) -> &DiscoveryResponse {
        match o {
            Outgoing::Sotw(d) => d,
            Outgoing::Delta(_) => panic!("not sotw"),
        }
    }

    #[test]
    fn one_nonce_in_flight_and_nack_does_not_loop() {
        let mut st = state(Mode::Sotw);
        let s1 = Snapshot::new().with(res("Listener", "a", 1));
        st.handle(req("Listener", &[], ""));
        let out = st.schedule(&s1);
        assert_eq!(out.len(), 1);
        let n1 = sotw(&out[0]).nonce.clone();
        // Snapshot changes while n1 is in flight: nothing until the ACK.
        let s2 = Snapshot::new().with(res("Listener", "a", 2));
        assert!(st.schedule(&s2).is_empty());
        let mut nack = req("Listener", &[], &n1);
        nack.error = Some((3, "bad".into()));
        st.handle(nack);
        let out = st.schedule(&s2);
        assert_eq!(out.len(), 1, "the newer snapshot goes after the NACK");
        let n2 = sotw(&out[0]).nonce.clone();
        let mut nack = req("Listener", &[], &n2);
        nack.error = Some((3, "bad".into()));
        st.handle(nack);
        assert!(st.schedule(&s2).is_empty(), "a NACKed version is not resent");
        let agent = st.status.agent("n").unwrap();
        assert_eq!(agent.counters.nacks, 2);
    }

    #[test]
    fn stale_nonce_ignored_in_sotw() {
        let mut st = state(Mode::Sotw);
        let s = Snapshot::new()
            .with(res("Listener", "a", 1))
            .with(res("Listener", "b", 1));
        st.handle(req("Listener", &["a"], ""));
        let out = st.schedule(&s);
        let n1 = sotw(&out[0]).nonce.clone();
        st.handle(req("Listener", &["a"], &n1));
        st.handle(req("Listener", &["a", "b"], "1-999"));
        assert!(st.schedule(&s).is_empty());
        assert_eq!(st.status.agent("n").unwrap().counters.stale_nonces, 1);
    }

    #[test]
    fn sotw_subscription_change_after_ack_is_answered() {
        // gRPC ACKs a Cluster response, then (on a new route) asks for one more cluster with the same nonce.
        let mut st = state(Mode::Sotw);
        let s = Snapshot::new()
            .with(res("Cluster", "a", 1))
            .with(res("Cluster", "b", 1));
        st.handle(req("Cluster", &["a"], ""));
        let n1 = sotw(&st.schedule(&s)[0]).nonce.clone();
        st.handle(req("Cluster", &["a"], &n1));
        assert!(st.schedule(&s).is_empty());
        st.handle(req("Cluster", &["a", "b"], &n1));
        let out = st.schedule(&s);
        assert_eq!(out.len(), 1, "the new name is answered");
        assert_eq!(sotw(&out[0]).resources.len(), 2);
        let agent = st.status.agent("n").unwrap();
        assert_eq!((agent.counters.acks, agent.counters.stale_nonces), (1, 0));
    }

    #[test]
    fn delta_make_before_break() {
        let mut st = state(Mode::Delta);
        let s1 = Snapshot::new()
            .with(res("Cluster", "c1", 1))
            .with(res("Listener", "l", 1));
        st.handle(req("Listener", &[], ""));
        st.handle(req("Cluster", &[], ""));
        let out = st.schedule(&s1);
        let types: Vec<&str> = out.iter().map(|o| delta(o).type_url.as_str()).collect();
        assert_eq!(types, [ty("Cluster"), ty("Listener")]);
        let nonces: Vec<(String, String)> = out
            .iter()
            .map(|o| (delta(o).type_url.clone(), delta(o).nonce.clone()))
            .collect();
        for (t, n) in nonces {
            st.handle(NormRequest {
                type_url: t,
                nonce: n,
                ..Default::default()
            });
        }
        // c1 → c2 with the listener switching: +c2, l, then (after the Cluster ACK) -c1.
        let s2 = Snapshot::new()
            .with(res("Cluster", "c2", 1))
            .with(res("Listener", "l", 2));
        let out = st.schedule(&s2);
        assert_eq!(out.len(), 2);
        assert_eq!(delta(&out[0]).type_url, ty("Cluster"));
        assert!(delta(&out[0]).removed_resources.is_empty());
        assert_eq!(delta(&out[1]).type_url, ty("Listener"));
        let cn = delta(&out[0]).nonce.clone();
        st.handle(NormRequest {
            type_url: ty("Cluster"),
            nonce: cn,
            ..Default::default()
        });
        let out = st.schedule(&s2);
        assert_eq!(out.len(), 1);
        assert_eq!(delta(&out[0]).removed_resources, ["c1"]);
    }

    #[test]
    fn unknown_types_follow_in_request_order() {
        let mut st = state(Mode::Delta);
        let s = Snapshot::new()
            .with(XdsResource::new("x", "type.googleapis.com/x.Y", vec![]))
            .with(XdsResource::new("z", "type.googleapis.com/a.Z", vec![]))
            .with(res("Listener", "l", 1));
        for t in ["type.googleapis.com/x.Y", "type.googleapis.com/a.Z"] {
            st.handle(NormRequest {
                type_url: t.into(),
                ..Default::default()
            });
        }
        st.handle(req("Listener", &[], ""));
        let types: Vec<String> = st.schedule(&s).iter().map(|o| delta(o).type_url.clone()).collect();
        assert_eq!(
            types,
            [
                ty("Listener"),
                "type.googleapis.com/x.Y".into(),
                "type.googleapis.com/a.Z".into()
            ]
        );
    }
}

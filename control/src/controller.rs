//! The control loop: the store's objects and the connected agents in, one xDS snapshot per agent and a status per
//! object out.
//!
//! Any change (a store event, an agent connecting or leaving) wakes the loop; it waits for a quiet moment (100 ms,
//! at most 2 s after the first change), lists the store, parses every object (a bad one is Rejected alone, with its
//! field-path reason), translates the rest for each connected agent (`l7mp_api::resource::translate`), encodes each
//! agent's configuration as l7mp.config.v1 resources (`l7mp_api::wire`) and sets the agent's snapshot. Unchanged
//! resources keep their content-hash versions, so an agent receives only what changed. Status is kept in memory and
//! added to objects by the Management API (it is derived state; writing it to the store would wake the loop again).

use crate::registry::{LocalRegistry, NodeKind, Registration, Registry};
use crate::store::{Key, Store};
use crate::xds::{Cache, NodeHooks, NodeInfo, Snapshot, XdsResource, XdsServer};
use l7mp_api::resource::{self, AgentInfo, Resource};
use l7mp_api::wire;
use l7mp_api::workload::Workloads;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// What a rejected gRPC service's reason ends with while its clients keep its last accepted resources.
const KEPT: &str = "; gRPC clients keep its last accepted version";

/// How long the loop waits for more changes before recomputing, and at most.
const QUIET: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(2);

/// How often the loop and the store watch retry while the store is unreachable (doubling from MIN to MAX).
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// How often the store is probed (see [`ControlPlane::run`]).
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// The computed state of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectStatus {
    pub accepted: bool,
    /// Why it was rejected (`spec.listener.spec.port: ...`).
    pub reason: Option<String>,
    /// The store revision of the object this status is for.
    pub observed_revision: u64,
    /// The agents the object was placed on.
    pub agents: Vec<String>,
    /// For an accepted VirtualService with `spec.grpc`: the name gRPC clients dial (the Envoy Listener); the gRPC
    /// clients that hold that Listener count as placed too (looked up when the status is read).
    pub grpc_service: Option<String>,
}

/// An object as parsed at one revision.
#[derive(Clone)]
struct Parsed {
    revision: u64,
    resource: Result<Arc<Resource>, String>,
}

/// The store is unreachable: the last error, and when the problem began.
#[derive(Debug, Clone)]
pub struct StoreProblem {
    pub error: String,
    pub since: std::time::SystemTime,
}

/// The control plane's shared state.
pub struct ControlPlane {
    store: Arc<dyn Store>,
    cache: Arc<Cache>,
    xds: OnceLock<XdsServer>,
    /// The agents connected to this process.
    agents: Mutex<BTreeMap<String, Registration>>,
    /// Every replica's agents (the translator needs them all).
    registry: Arc<dyn Registry>,
    status: Mutex<BTreeMap<Key, ObjectStatus>>,
    /// The last listing, each object as parsed, by key: an object whose revision did not change is not parsed
    /// again, and while the store is unreachable the loop computes from it (say, for an agent that connects
    /// meanwhile). `None` until the store was listed once.
    parsed: Mutex<Option<BTreeMap<Key, Parsed>>>,
    /// Why the store cannot be read or written, while it cannot (the last error and since when).
    store_error: Mutex<Option<StoreProblem>>,
    wake: Notify,
    /// The store revision the last computation covered.
    computed: watch::Sender<u64>,
    ready: std::sync::atomic::AtomicBool,
    /// The store URL as shown to users (no credentials).
    store_url: OnceLock<String>,
    /// This process: `host/pid`.
    replica: String,
    /// The Envoy resources of each gRPC service (by VirtualService) as last accepted: while a later version is
    /// rejected, gRPC clients keep being sent these (as a NACK would have kept them), until it is fixed or deleted.
    grpc_last_good: Mutex<BTreeMap<resource::ResourceRef, Vec<XdsResource>>>,
    /// The snapshot every gRPC client gets (the Envoy resources of the last computation), handed to a gRPC client
    /// the moment it connects rather than after the next computation.
    grpc_snapshot: Mutex<Option<Arc<Snapshot>>>,
    /// What workload discovery found (`crate::discovery` sets it); read by every computation.
    workloads: Mutex<Arc<Workloads>>,
    /// The workload discovery source, when one runs (its readiness counts in [`Self::ready`]).
    discovery: OnceLock<crate::discovery::Discovery>,
    /// Leader election (kubernetes store: only the leader writes status); `None` without it.
    leadership: OnceLock<watch::Receiver<crate::leader::Leadership>>,
}

impl ControlPlane {
    /// A control plane that is the only replica on its store.
    pub fn new(store: Arc<dyn Store>) -> Arc<ControlPlane> {
        Self::with_registry(store, Arc::new(LocalRegistry::default()))
    }

    /// A control plane that shares its store (and `registry`) with other replicas.
    pub fn with_registry(store: Arc<dyn Store>, registry: Arc<dyn Registry>) -> Arc<ControlPlane> {
        Arc::new(ControlPlane {
            store,
            registry,
            cache: Arc::new(Cache::new()),
            xds: OnceLock::new(),
            agents: Mutex::new(BTreeMap::new()),
            status: Mutex::new(BTreeMap::new()),
            parsed: Mutex::new(None),
            store_error: Mutex::new(None),
            wake: Notify::new(),
            computed: watch::channel(0).0,
            ready: std::sync::atomic::AtomicBool::new(false),
            store_url: OnceLock::new(),
            grpc_last_good: Mutex::new(BTreeMap::new()),
            grpc_snapshot: Mutex::new(None),
            workloads: Mutex::new(Arc::new(Workloads::default())),
            discovery: OnceLock::new(),
            replica: format!(
                "{}/{}",
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "localhost".into()),
                std::process::id()
            ),
            leadership: OnceLock::new(),
        })
    }

    /// Follows a leader election (see [`crate::leader`]); shown by `/metrics` and the Status call.
    pub fn set_leadership(&self, state: watch::Receiver<crate::leader::Leadership>) {
        let _ = self.leadership.set(state);
    }

    /// The leader election's state now (`None` without leader election).
    pub fn leadership(&self) -> Option<crate::leader::Leadership> {
        self.leadership.get().map(|s| s.borrow().clone())
    }

    /// Waits until a computation covers a revision after `seen`; returns the revision covered.
    pub async fn computed_after(&self, seen: u64) -> u64 {
        let mut rx = self.computed.subscribe();
        rx.wait_for(|r| *r > seen).await.map(|r| *r).unwrap_or(seen)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Records the store URL to show (strip credentials and query options first).
    pub fn set_store_url(&self, url: &str) {
        let shown = url.split('?').next().unwrap_or(url);
        let _ = self.store_url.set(shown.to_string());
    }

    /// The store URL as shown to users ("" if not set).
    pub fn store_url(&self) -> String {
        self.store_url.get().cloned().unwrap_or_default()
    }

    /// This process, as `host/pid`.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Gives the control plane its xDS server (for the agents' ACK/NACK state).
    pub fn set_xds(&self, xds: XdsServer) {
        let _ = self.xds.set(xds);
    }

    pub fn xds(&self) -> Option<&XdsServer> {
        self.xds.get()
    }

    /// Every replica's agents, this process's own included.
    pub fn all_agents(&self) -> BTreeMap<String, Registration> {
        let mut all = self.registry.agents();
        if let Ok(local) = self.agents.lock() {
            for (id, r) in local.iter() {
                all.insert(id.clone(), r.clone());
            }
        }
        all
    }

    /// The computed status of an object, if it was seen.
    pub fn status_of(&self, key: &Key) -> Option<ObjectStatus> {
        self.status.lock().ok().and_then(|s| s.get(key).cloned())
    }

    /// The status as the API shows it: `{state, reason?, observedRevision, agents: {placed, acked, nacked}}`.
    pub fn status_json(&self, key: &Key, revision: u64) -> Value {
        let Some(st) = self.status_of(key).filter(|s| s.observed_revision >= revision) else {
            return json!({"state": "Pending", "observedRevision": 0});
        };
        let (mut placed, mut acked, mut nacked) = (st.agents.len(), 0, 0);
        let mut count = |a: &crate::xds::AgentStatus| {
            if a.last_nack.as_ref().is_some_and(|n| {
                a.types
                    .get(&n.type_url)
                    .is_some_and(|t| t.sent_version == n.rejected_version)
            }) {
                nacked += 1
            } else if a.types.values().all(|t| t.acked_version == t.sent_version) {
                acked += 1
            }
        };
        if let Some(x) = self.xds() {
            for node in &st.agents {
                if let Some(a) = x.agent(node) {
                    count(&a);
                }
            }
            if let Some(name) = &st.grpc_service {
                // The gRPC clients that asked for this service's Listener and were sent it.
                let listener = <envoy_types::pb::envoy::config::listener::v3::Listener as prost::Name>::type_url();
                for a in x.agents() {
                    if a.types
                        .get(&listener)
                        .is_some_and(|t| t.acked_resources.contains_key(name) || t.pending_resources.contains_key(name))
                    {
                        placed += 1;
                        count(&a);
                    }
                }
            }
        }
        let mut v = json!({
            "state": if st.accepted { "Accepted" } else { "Rejected" },
            "observedRevision": st.observed_revision,
            "agents": {"placed": placed, "acked": acked, "nacked": nacked},
        });
        if let Some(r) = &st.reason {
            v["reason"] = json!(r);
        }
        v
    }

    /// Whether the store was read and snapshots computed at least once, the store is reachable now, and workload
    /// discovery (if it runs) has listed once.
    pub fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
            && self.store_problem().is_none()
            && self.discovery().is_none_or(|d| d.ready())
    }

    /// Records the workload discovery source (the first one given stays).
    pub fn set_discovery(&self, d: crate::discovery::Discovery) {
        let _ = self.discovery.set(d);
    }

    /// The workload discovery source, if one runs.
    pub fn discovery(&self) -> Option<&crate::discovery::Discovery> {
        self.discovery.get()
    }

    /// Why the control plane is not ready (`None` when it is).
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(p) = self.store_problem() {
            let secs = p.since.elapsed().map(|d| d.as_secs()).unwrap_or(0);
            return Some(format!(
                "the store is unreachable (for {secs} s): {}; agents keep the last configuration, writes are refused",
                p.error
            ));
        }
        if self.discovery().is_some_and(|d| !d.ready()) {
            return Some("workload discovery has not listed the Kubernetes Pods and EndpointSlices yet".into());
        }
        (!self.ready.load(std::sync::atomic::Ordering::Relaxed)).then(|| "the store has not been read yet".to_string())
    }

    /// The store problem, while there is one.
    pub fn store_problem(&self) -> Option<StoreProblem> {
        self.store_error.lock().ok().and_then(|p| p.clone())
    }

    /// Records that a store call failed (`Some`) or succeeded (`None`); the Management API reports its failures
    /// here too, so that readiness follows what clients see.
    pub fn store_result(&self, error: Option<&crate::store::StoreError>) {
        use crate::store::StoreError as E;
        // Only failures to reach the store count; a conflict or a bad key is the caller's problem.
        let error = match error {
            Some(e @ (E::Unavailable { .. } | E::Backend(_))) => Some(e),
            Some(_) => return,
            None => None,
        };
        let Ok(mut p) = self.store_error.lock() else { return };
        match (error, p.as_mut()) {
            (None, Some(_)) => {
                tracing::info!("the store is reachable again");
                *p = None;
            }
            (None, None) => {}
            (Some(e), Some(cur)) => cur.error = e.to_string(),
            (Some(e), None) => {
                tracing::warn!("the store is unreachable: {e}; serving the last configuration");
                *p = Some(StoreProblem {
                    error: e.to_string(),
                    since: std::time::SystemTime::now(),
                });
                drop(p);
                // The loop retries (with back-off) until the store answers, which clears the problem; a watch
                // that waits for the store silently would never wake it.
                self.kick();
            }
        }
    }

    /// The store revision the last computation covered.
    pub fn computed_revision(&self) -> u64 {
        *self.computed.borrow()
    }

    /// Objects accepted and rejected by the last computation.
    pub fn object_counts(&self) -> (usize, usize) {
        self.status.lock().map_or((0, 0), |s| {
            let rejected = s.values().filter(|o| !o.accepted).count();
            (s.len() - rejected, rejected)
        })
    }

    /// Hands the loop what workload discovery found; a change wakes it (the next computation gives the Targets
    /// with `pods`/`service` endpoints their new addresses; unchanged resources keep their versions, so only the
    /// agents holding an affected cluster get a new ClusterLoad). Returns whether it changed.
    pub fn set_workloads(&self, workloads: Workloads) -> bool {
        let changed = self.workloads.lock().is_ok_and(|mut w| {
            if **w == workloads {
                return false;
            }
            *w = Arc::new(workloads);
            true
        });
        if changed {
            self.kick();
        }
        changed
    }

    /// Wakes the loop (a change happened).
    pub fn kick(&self) {
        self.wake.notify_one();
    }

    /// Waits until a computation has covered store revision `revision` (or `timeout` passed).
    pub async fn computed(&self, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.computed.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok()
    }

    /// Runs the loop, the store watch and the store probe until the process ends.
    pub async fn run(self: Arc<Self>) {
        let watcher = self.clone();
        tokio::spawn(async move { watcher.watch_store().await });
        let prober = self.clone();
        tokio::spawn(async move { prober.probe_store().await });
        let mut registered = self.registry.subscribe();
        let me = self.clone();
        tokio::spawn(async move {
            // Agents coming and going on other replicas change translations here too.
            while registered.changed().await.is_ok() {
                me.kick();
            }
        });
        let mut retry = RETRY_MIN;
        loop {
            self.wake.notified().await;
            // Quiet time: more changes within QUIET extend the wait, up to MAX_DELAY.
            let first = Instant::now();
            loop {
                let left = MAX_DELAY.saturating_sub(first.elapsed());
                if left.is_zero() {
                    break;
                }
                match tokio::time::timeout(QUIET.min(left), self.wake.notified()).await {
                    Ok(()) => continue,
                    Err(_) => break,
                }
            }
            match self.recompute().await {
                Ok(()) => retry = RETRY_MIN,
                Err(e) => {
                    tracing::debug!("control loop: {e}; retrying in {retry:?}");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                    self.kick();
                }
            }
        }
    }

    /// Reads one key every [`PROBE_EVERY`], so that an unreachable store shows (in `/ready`, the metrics and
    /// `l7mpctl status`) even while nothing is written and the watch waits for the store quietly.
    async fn probe_store(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let r = self.store.probe().await;
            // A failure is recorded at once; success clears the problem only through a completed computation
            // (so that "ready" also means the snapshots are current).
            match r {
                Err(e) => self.store_result(Some(&e)),
                Ok(_) if self.store_problem().is_some() => self.kick(),
                Ok(_) => {}
            }
        }
    }

    /// Follows the store from its current revision; any event wakes the loop. A lost history (compaction, a lagging
    /// watcher) or a failed watch starts over with a full recompute.
    async fn watch_store(self: Arc<Self>) {
        use futures_util::StreamExt;
        let mut retry = RETRY_MIN;
        loop {
            let from = self.store.revision();
            self.kick();
            match self.store.watch(from).await {
                Ok(mut events) => {
                    while let Some(ev) = events.next().await {
                        retry = RETRY_MIN;
                        match ev {
                            Ok(_) => self.kick(),
                            Err(e) => {
                                tracing::info!("store watch: {e}; relisting");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("store watch: {e}; retrying in {retry:?}");
                    self.store_result(Some(&e));
                }
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }

    /// One computation: list, parse, translate, publish. When the store cannot be listed, the computation runs on
    /// the last listing (agents that connected meanwhile get their configuration) and the error is returned.
    pub async fn recompute(&self) -> Result<(), crate::store::StoreError> {
        let listed = self.store.list(None, None).await;
        self.store_result(listed.as_ref().err());
        let mut cache = self.parsed.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (revision, failure) = match listed {
            Ok(listing) => {
                let mut old = cache.unwrap_or_default();
                let mut next = BTreeMap::new();
                for o in listing.items {
                    let p = match old.remove(&o.key) {
                        Some(p) if p.revision == o.revision => p,
                        _ => Parsed {
                            revision: o.revision,
                            resource: resource::parse_resource(&o.value)
                                .map(Arc::new)
                                .map_err(|e| e.to_string()),
                        },
                    };
                    next.insert(o.key, p);
                }
                cache = Some(next);
                (listing.revision, None)
            }
            Err(e) if cache.is_some() => (self.computed_revision(), Some(e)),
            Err(e) => return Err(e),
        };
        let objects = cache.unwrap_or_default();
        let mut status: BTreeMap<Key, ObjectStatus> = BTreeMap::new();
        let mut accepted: Vec<(Key, u64)> = Vec::new();
        let mut resources: Vec<Arc<Resource>> = Vec::new();
        for (key, p) in &objects {
            match &p.resource {
                Ok(r) => {
                    accepted.push((key.clone(), p.revision));
                    resources.push(r.clone());
                }
                Err(e) => {
                    status.insert(
                        key.clone(),
                        ObjectStatus {
                            accepted: false,
                            reason: Some(e.clone()),
                            observed_revision: p.revision,
                            agents: vec![],
                            grpc_service: None,
                        },
                    );
                }
            }
        }
        if let Ok(mut c) = self.parsed.lock() {
            *c = Some(objects);
        }
        let local: BTreeMap<String, Registration> = self.agents.lock().map(|a| a.clone()).unwrap_or_default();
        // Tell the other replicas which agents this one serves: once per computation (after the debounce), not per
        // connect, so that a thousand agents connecting at once cost one publication, not a thousand.
        self.registry.publish(local.values().cloned().collect());
        // Only l7mp agents are translated for; gRPC clients get the Envoy resources of the gRPC services.
        let registered = self.all_agents();
        let agents: Vec<AgentInfo> = registered
            .values()
            .filter(|r| r.kind.is_agent())
            .map(Registration::agent)
            .collect();
        let workloads = self.workloads.lock().map(|w| w.clone()).unwrap_or_default();
        let t = resource::translate_with(&resources, &agents, &workloads);
        let mut grpc = crate::grpc::resources(&t.grpc);
        let mut envoy = Snapshot::new();
        {
            let mut last_good = self.grpc_last_good.lock().unwrap_or_else(|e| e.into_inner());
            for (vs, bundle) in &grpc.services {
                for r in bundle {
                    envoy.insert(r.clone());
                }
                last_good.insert(vs.clone(), bundle.clone());
            }
            // A gRPC service rejected now keeps its last accepted resources (where nothing accepted now took their
            // names); one deleted, or no longer marked grpc, loses them.
            let marked: HashSet<resource::ResourceRef> = resources
                .iter()
                .filter(|r| matches!(&r.spec, resource::ResourceSpec::VirtualService(v) if v.grpc.is_some()))
                .map(|r| r.reference())
                .collect();
            last_good.retain(|vs, _| marked.contains(vs));
            for (vs, bundle) in last_good.iter() {
                if grpc.services.contains_key(vs) {
                    continue;
                }
                for r in bundle {
                    if envoy.get(&r.type_url, &r.name).is_none() {
                        envoy.insert(r.clone());
                    }
                }
                let why = t
                    .errors
                    .get(vs)
                    .or_else(|| grpc.errors.get(vs))
                    .cloned()
                    .unwrap_or_default();
                grpc.errors.insert(vs.clone(), format!("{why}{KEPT}"));
            }
        }
        // Every node may ask for them ("any node that asks"); agents' snapshots carry them beside l7mp's resources,
        // which costs a map clone per group, not an encoding.
        let envoy = Arc::new(envoy);
        if let Ok(mut g) = self.grpc_snapshot.lock() {
            *g = Some(envoy.clone());
        }
        for (id, r) in &local {
            if !r.kind.is_agent() {
                self.cache.set_snapshot(id, envoy.clone());
            }
        }
        // Agents with the same labels share one configuration: encoded once, into one snapshot, for the agents
        // connected here (other replicas serve the rest).
        let mut groups: Vec<Group> = Vec::new();
        let mut by_config: HashMap<*const l7mp_api::Config, usize> = HashMap::new();
        for a in &agents {
            let cfg = t.per_agent.get(&a.node_id).cloned().unwrap_or_default();
            let i = *by_config.entry(Arc::as_ptr(&cfg)).or_insert_with(|| {
                groups.push(Group {
                    cfg,
                    snapshot: None,
                    nodes: Vec::new(),
                });
                groups.len() - 1
            });
            let Some(g) = groups.get_mut(i) else { continue };
            g.nodes.push(a.node_id.clone());
            if local.contains_key(&a.node_id) {
                let snap = g.snapshot.get_or_insert_with(|| {
                    let mut snap = (*envoy).clone();
                    for w in wire::encode(&g.cfg) {
                        snap.insert(XdsResource::new(w.name, w.type_url, w.body));
                    }
                    Arc::new(snap)
                });
                self.cache.set_snapshot(&a.node_id, snap.clone());
            }
        }
        let placements: Vec<Placement<'_>> = groups.iter().map(|g| Placement::of(&g.cfg)).collect();
        for ((key, rev), r) in accepted.into_iter().zip(&resources) {
            let rref = r.reference();
            // A gRPC error that says clients keep the last accepted version already includes the translation's.
            let kept = grpc.errors.get(&rref).filter(|g| g.ends_with(KEPT));
            let reason = kept.or(t.errors.get(&rref)).or(grpc.errors.get(&rref)).cloned();
            let grpc_service = match &r.spec {
                resource::ResourceSpec::VirtualService(v) if reason.is_none() => {
                    v.grpc.as_ref().map(|g| g.service_name(&rref).to_owned())
                }
                _ => None,
            };
            let fqn = rref.fqn();
            let placed: Vec<String> = groups
                .iter()
                .zip(&placements)
                .filter(|(_, p)| p.holds(rref.kind, &fqn))
                .flat_map(|(g, _)| g.nodes.iter().cloned())
                .collect();
            status.insert(
                key,
                ObjectStatus {
                    accepted: reason.is_none(),
                    reason,
                    observed_revision: rev,
                    agents: placed,
                    grpc_service,
                },
            );
        }
        let rejected = status.values().filter(|s| !s.accepted).count();
        tracing::info!(
            revision,
            objects = status.len(),
            rejected,
            agents = agents.len(),
            grpc_clients = registered.len() - agents.len(),
            grpc_services = t.grpc.services.len(),
            "control loop: snapshots published"
        );
        if let Ok(mut s) = self.status.lock() {
            *s = status;
        }
        self.computed.send_replace(revision);
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The agents that share one configuration, and its snapshot (encoded if one of them is connected here).
struct Group {
    cfg: Arc<l7mp_api::Config>,
    snapshot: Option<Arc<Snapshot>>,
    nodes: Vec<String>,
}

/// The names of what one configuration holds, by kind of the resource it was translated from (the translation names
/// it `ns/name`).
struct Placement<'a> {
    listeners: HashSet<&'a str>,
    clusters: HashSet<&'a str>,
    routes: HashSet<&'a str>,
    rules: HashSet<&'a str>,
}

impl<'a> Placement<'a> {
    fn of(cfg: &'a l7mp_api::Config) -> Self {
        Placement {
            listeners: cfg.listeners.iter().map(|x| x.name.as_str()).collect(),
            clusters: cfg.clusters.iter().map(|x| x.name.as_str()).collect(),
            routes: cfg.routes.iter().map(|x| x.name.as_str()).collect(),
            rules: cfg.rules.iter().map(|x| x.name.as_str()).collect(),
        }
    }

    /// Whether the configuration holds the object of this kind and fully qualified name.
    fn holds(&self, kind: resource::ResourceKind, fqn: &str) -> bool {
        use resource::ResourceKind as K;
        match kind {
            K::VirtualService => self.listeners.contains(fqn),
            K::Target => self.clusters.contains(fqn),
            K::Route => self.routes.contains(fqn),
            K::Rule => self.rules.contains(fqn),
        }
    }
}

/// What kind of client a node is. An l7mp agent says `l7mp-agent` as its user agent, or carries `labels` or
/// `address` in its metadata; any other node (a gRPC library, a script) is a gRPC client.
pub fn node_kind(node: &NodeInfo) -> NodeKind {
    let meta = node.metadata.as_object();
    if node.user_agent == "l7mp-agent" || meta.is_some_and(|m| m.contains_key("labels") || m.contains_key("address")) {
        NodeKind::Agent
    } else {
        NodeKind::Grpc
    }
}

/// An agent as the translator sees it, from what its xDS node says (`metadata.labels`, `metadata.address`).
pub fn agent_info(node: &NodeInfo) -> AgentInfo {
    let labels = node
        .metadata
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let address = node
        .metadata
        .get("address")
        .and_then(Value::as_str)
        .and_then(|a| a.parse().ok());
    AgentInfo {
        node_id: node.id.clone(),
        labels,
        address,
    }
}

/// The xDS server's view of connections, feeding the control loop.
pub struct Hooks(pub Arc<ControlPlane>);

impl NodeHooks for Hooks {
    fn connected(&self, node: &NodeInfo) {
        let info = agent_info(node);
        let kind = node_kind(node);
        let changed = self.0.agents.lock().is_ok_and(|mut a| {
            if a.get(&info.node_id)
                .is_some_and(|r| r.agent() == info && r.kind == kind)
            {
                return false;
            }
            a.insert(info.node_id.clone(), Registration::new(&info, kind, &self.0.replica));
            true
        });
        if changed {
            tracing::info!(node = %node.id, kind = kind.as_str(), user_agent = %node.user_agent, "agent connected");
            // A gRPC client's resources do not depend on who it is: it gets them now; the computation the kick
            // starts only registers it.
            if kind == NodeKind::Grpc
                && let Some(snap) = self.0.grpc_snapshot.lock().ok().and_then(|g| g.clone())
            {
                self.0.cache.set_snapshot(&node.id, snap);
            }
            self.0.kick();
        }
    }

    fn disconnected(&self, node_id: &str) {
        if self.0.agents.lock().is_ok_and(|mut a| a.remove(node_id).is_some()) {
            tracing::info!(node = %node_id, "agent disconnected");
            self.0.cache.remove(node_id);
            self.0.kick();
        }
    }
}

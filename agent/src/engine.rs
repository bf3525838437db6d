//! The engine: owns the running configuration snapshot, the listener tasks and the session registry.
//!
//! Every configuration source (the static file today; REST and xDS later) goes through [`Engine::apply`]: the new
//! configuration is built into a [`Snapshot`] (failing whole on any error, leaving the running one in force), new
//! listeners are bound, and the snapshot is swapped atomically. New sessions use the new snapshot; live sessions keep
//! the route they were given.

use crate::metrics::Metrics;
use crate::offload::{NoOffload, Offload};
use crate::protocol::Bound;
use crate::session::{self, NewSession, SessionInfo};
use crate::snapshot::{BuildError, Snapshot};
use arc_swap::ArcSwap;
use l7mp_api::{Config, Listener};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why a configuration was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The OS error is part of the message and not a separate `source`, so that error chains (`{:#}`) do not print
    /// it twice.
    #[error("listeners {listener:?}: cannot listen on {what}: {error}")]
    Bind {
        listener: String,
        what: String,
        error: std::io::Error,
    },
}

/// Why a change to the running configuration was not made: the change itself was wrong (`E`, e.g. a failed
/// validation), or the configuration it produced could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Edit(E),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

struct RunningListener {
    cfg: Arc<Listener>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Engine-wide settings (from the command line).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How long a half-closed session (one direction ended) may stay without traffic.
    pub half_close_timeout: Duration,
    /// Where each session writes a line when it ends (`--access-log`, `admin.access_log_path`).
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// The logger's filter, for whoever changes the level at run time (the admin API).
    pub log: Option<Arc<crate::logging::LogHandle>>,
    /// Keep Prometheus metrics (see [`crate::metrics`]); off for overhead comparisons (`--no-metrics`).
    pub metrics: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            half_close_timeout: Duration::from_secs(60),
            access_log: None,
            log: None,
            metrics: true,
        }
    }
}

pub struct Engine {
    options: EngineOptions,
    snapshot: ArcSwap<Snapshot>,
    listeners: tokio::sync::Mutex<HashMap<String, RunningListener>>,
    sessions: Mutex<HashMap<String, Arc<SessionInfo>>>,
    /// Ended sessions of listeners with `options.track`, oldest first, each with the time it stops being listed.
    tracked: Mutex<VecDeque<(tokio::time::Instant, Arc<SessionInfo>)>>,
    /// Serialises read-modify-apply changes ([`Engine::update`]).
    edit: tokio::sync::Mutex<()>,
    /// A configuration was put in force.
    ready: AtomicBool,
    sessions_changed: tokio::sync::Notify,
    seq: AtomicU64,
    /// Parent of every session's cancellation token.
    sessions_cancel: CancellationToken,
    /// The kernel fast path (set once at start; none until then).
    offload: std::sync::OnceLock<Arc<dyn Offload>>,
    /// The REST API router, for `L7mpController` clusters (set once the admin API is built).
    controller: std::sync::OnceLock<axum::Router>,
    metrics: Option<Arc<Metrics>>,
}

impl Engine {
    pub fn new(options: EngineOptions) -> Arc<Engine> {
        let metrics = crate::metrics::create(options.metrics);
        Arc::new(Engine {
            metrics,
            options,
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            listeners: tokio::sync::Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            tracked: Mutex::new(VecDeque::new()),
            edit: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            sessions_changed: tokio::sync::Notify::new(),
            seq: AtomicU64::new(0),
            sessions_cancel: CancellationToken::new(),
            offload: std::sync::OnceLock::new(),
            controller: std::sync::OnceLock::new(),
        })
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The configuration in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The agent's metrics (`None` with `--no-metrics`).
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    pub fn offload(&self) -> &dyn Offload {
        match self.offload.get() {
            Some(o) => o.as_ref(),
            None => &NoOffload,
        }
    }

    /// Sets the kernel fast path (once, at start; later calls are ignored) and, unless it is [`NoOffload`], adds
    /// its metrics.
    pub fn set_offload(&self, offload: Arc<dyn Offload>) {
        if offload.name() != NoOffload.name()
            && let Some(m) = &self.metrics
        {
            match crate::metrics::OffloadCollector::new(offload.clone()) {
                Ok(c) => {
                    if let Err(e) = m.registry().register(Box::new(c)) {
                        tracing::warn!("offload metrics: {e}");
                    }
                }
                Err(e) => tracing::warn!("offload metrics: {e}"),
            }
        }
        let _ = self.offload.set(offload);
    }

    /// Gives `L7mpController` clusters the REST API to serve (once; later calls are ignored).
    pub fn set_controller(&self, router: axum::Router) {
        let _ = self.controller.set(router);
    }

    /// The REST API router, if the agent has one.
    pub fn controller(&self) -> Option<axum::Router> {
        self.controller.get().cloned()
    }

    /// A process-unique number for session names.
    pub fn next_id(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn session_token(&self) -> CancellationToken {
        self.sessions_cancel.child_token()
    }

    /// Whether a configuration was put in force (the agent serves traffic).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Changes the running configuration: `edit` turns the configuration in force into a new one (or says why it
    /// cannot), which is then put in force. Changes are serialised, so two concurrent edits never lose one another;
    /// a failing edit or apply leaves everything as it was.
    pub async fn update<E: std::error::Error + 'static>(
        self: &Arc<Self>,
        edit: impl FnOnce(&Config) -> Result<Config, E>,
    ) -> Result<(), UpdateError<E>> {
        let _serial = self.edit.lock().await;
        let current = self.snapshot().config.clone();
        let next = match edit(&current) {
            Ok(next) => next,
            Err(e) => {
                if let Some(m) = &self.metrics {
                    m.config_applied(false);
                }
                return Err(UpdateError::Edit(e));
            }
        };
        self.apply_now(next).await?;
        Ok(())
    }

    /// Puts a whole configuration in force, or changes nothing and says why.
    pub async fn apply(self: &Arc<Self>, config: Config) -> Result<(), ApplyError> {
        let _serial = self.edit.lock().await;
        self.apply_now(config).await
    }

    /// Applies under the edit lock, counting the outcome.
    async fn apply_now(self: &Arc<Self>, config: Config) -> Result<(), ApplyError> {
        let result = self.apply_config(config).await;
        if let Some(m) = &self.metrics {
            m.config_applied(result.is_ok());
        }
        result
    }

    async fn apply_config(self: &Arc<Self>, config: Config) -> Result<(), ApplyError> {
        let snap = Arc::new(Snapshot::build_from(config, &self.snapshot())?);
        warn_unsupported(&snap);
        let mut running = self.listeners.lock().await;
        let wanted: HashMap<&str, &Arc<Listener>> = snap.listeners.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let unchanged = |name: &str, r: &RunningListener| {
            wanted
                .get(name)
                .is_some_and(|l| l.spec == r.cfg.spec && l.options == r.cfg.options)
        };
        // Bind new names first: a failure there leaves everything as it was.
        let mut bound = Vec::new();
        for (name, l) in &wanted {
            if !running.contains_key(*name) {
                bound.push(((*l).clone(), bind(l, &snap)?));
            }
        }
        // Stop listeners that are gone or whose spec changed, then rebind the changed ones.
        let stale: Vec<String> = running
            .iter()
            .filter(|(n, r)| !unchanged(n, r))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            if let Some(r) = running.remove(&name) {
                r.cancel.cancel();
                let _ = r.task.await;
            }
            if let Some(l) = wanted.get(name.as_str()) {
                bound.push(((*l).clone(), bind(l, &snap)?));
            }
        }
        self.snapshot.store(snap.clone());
        self.ready.store(true, Ordering::Relaxed);
        for (cfg, b) in bound {
            let cancel = CancellationToken::new();
            let task = tokio::spawn(b.run(self.clone(), cfg.clone(), cancel.clone()));
            tracing::info!(listener = %cfg.name, protocol = cfg.spec.protocol(), "listener started");
            running.insert(cfg.name.clone(), RunningListener { cfg, cancel, task });
        }
        Ok(())
    }

    /// Starts a session emitted by a listener.
    pub fn spawn_session(self: &Arc<Self>, s: NewSession) {
        tokio::spawn(session::run(self.clone(), s));
    }

    pub(crate) fn register(&self, info: Arc<SessionInfo>) {
        if let Ok(mut m) = self.sessions.lock() {
            m.insert(info.name.clone(), info);
        }
    }

    pub(crate) fn unregister(&self, name: &str) {
        let info = self.sessions.lock().ok().and_then(|mut m| m.remove(name));
        if let Some(info) = info
            && let Some(track) = info.track
            && let Ok(mut t) = self.tracked.lock()
        {
            t.push_back((tokio::time::Instant::now() + track, info));
        }
        self.sessions_changed.notify_waiters();
    }

    /// The ended sessions still listed (`options.track`), after dropping those whose time is up.
    fn tracked(&self) -> Vec<Arc<SessionInfo>> {
        let Ok(mut t) = self.tracked.lock() else {
            return Vec::new();
        };
        let now = tokio::time::Instant::now();
        while t.front().is_some_and(|(until, _)| *until <= now) {
            t.pop_front();
        }
        t.iter().map(|(_, s)| s.clone()).collect()
    }

    /// The live sessions, then the ended ones kept visible by their listener's `options.track`.
    pub fn sessions(&self) -> Vec<Arc<SessionInfo>> {
        let mut all: Vec<Arc<SessionInfo>> = self
            .sessions
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.extend(self.tracked());
        all
    }

    /// A live or tracked session by name.
    pub fn session(&self, name: &str) -> Option<Arc<SessionInfo>> {
        if let Some(s) = self.sessions.lock().ok().and_then(|m| m.get(name).cloned()) {
            return Some(s);
        }
        self.tracked().into_iter().rev().find(|s| s.name == name)
    }

    /// Ends a live session (its streams are closed), or forgets a tracked one. Returns whether it existed.
    pub fn end_session(&self, name: &str) -> bool {
        if let Some(s) = self.sessions.lock().ok().and_then(|m| m.get(name).cloned()) {
            s.cancel.cancel();
            return true;
        }
        let Ok(mut t) = self.tracked.lock() else {
            return false;
        };
        let before = t.len();
        t.retain(|(_, s)| s.name != name);
        t.len() != before
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Stops every listener (removing UNIX socket files), ends datagram sessions (nothing is in flight between
    /// datagrams), lets byte-stream sessions finish for up to `drain`, then ends the rest.
    pub async fn shutdown(&self, drain: Duration) {
        let mut running = self.listeners.lock().await;
        for (_, r) in running.drain() {
            r.cancel.cancel();
            let _ = r.task.await;
        }
        for s in self.sessions() {
            if s.datagram_source {
                s.cancel.cancel();
            }
        }
        let deadline = tokio::time::Instant::now() + drain;
        loop {
            let notified = self.sessions_changed.notified();
            let n = self.session_count();
            if n == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::info!(sessions = n, "drain time is up, ending the remaining sessions");
                break;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
        self.sessions_cancel.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Warns about clusters this host cannot open (their sessions will fail, each with the same reason), and says where
/// a hashing policy without a key places sessions at random.
fn warn_unsupported(snap: &Snapshot) {
    use l7mp_api::ClusterSpec;
    for (name, c) in &snap.clusters {
        if let l7mp_api::Policy::HashRing { key: None, .. } = c.cfg.loadbalancer.policy
            && c.cfg.endpoints.len() > 1
        {
            tracing::info!(
                cluster = %name,
                "ConsistentHash without a key places each session on a random endpoint by weight (as the original \
                 did); set loadbalancer.key to make the placement sticky"
            );
        }
        let sctp = match &c.cfg.spec {
            ClusterSpec::Sctp { .. } => true,
            ClusterSpec::JsonSocket { transport, .. } => matches!(**transport, ClusterSpec::Sctp { .. }),
            _ => false,
        };
        if sctp && !crate::protocol::sctp::supported() {
            tracing::warn!(
                cluster = %name,
                "{}: sessions routed to this cluster will fail",
                crate::protocol::sctp::UNSUPPORTED
            );
        }
    }
}

fn bind(l: &Arc<Listener>, snap: &Snapshot) -> Result<Bound, ApplyError> {
    Bound::bind(l, snap.listener_tls.get(&l.name).cloned()).map_err(|error| ApplyError::Bind {
        listener: l.name.clone(),
        what: describe(l),
        error,
    })
}

fn describe(l: &Listener) -> String {
    describe_spec(&l.spec)
}

fn describe_spec(spec: &l7mp_api::ListenerSpec) -> String {
    use l7mp_api::ListenerSpec::*;
    match spec {
        JsonSocket(transport) => format!("JSONSocket over {}", describe_spec(transport)),
        Udp(s) => format!("UDP {}", std::net::SocketAddr::new(s.address, s.port)),
        Tcp(s) => format!("TCP {}", std::net::SocketAddr::new(s.address, s.port)),
        UnixDomainSocket(s) => format!("UNIX socket {:?}", s.filename),
        UnixDgram(s) => format!("UNIX datagram socket {:?}", s.filename),
        WebSocket(s) => format!("WebSocket (TCP) {}", std::net::SocketAddr::new(s.address, s.port)),
        Http(s) => format!("HTTP (TCP) {}", std::net::SocketAddr::new(s.address, s.port)),
        Pipe(s) => format!("FIFO {:?}", s.filename),
        AfPacket(s) => format!("AF_PACKET interface {:?}", s.interface),
        Sctp(s) => format!("SCTP {}", std::net::SocketAddr::new(s.address, s.port)),
        Tls(s) => format!("TLS (TCP) {}", std::net::SocketAddr::new(s.address, s.port)),
        Dtls(s) => format!("DTLS (UDP) {}", std::net::SocketAddr::new(s.address, s.port)),
    }
}

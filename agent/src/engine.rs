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
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Keep Prometheus metrics (see [`crate::metrics`]); off for overhead comparisons (`--no-metrics`).
    pub metrics: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            half_close_timeout: Duration::from_secs(60),
            metrics: true,
        }
    }
}

pub struct Engine {
    options: EngineOptions,
    snapshot: ArcSwap<Snapshot>,
    listeners: tokio::sync::Mutex<HashMap<String, RunningListener>>,
    sessions: Mutex<HashMap<String, Arc<SessionInfo>>>,
    sessions_changed: tokio::sync::Notify,
    seq: AtomicU64,
    /// Parent of every session's cancellation token.
    sessions_cancel: CancellationToken,
    offload: Box<dyn Offload>,
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
            sessions_changed: tokio::sync::Notify::new(),
            seq: AtomicU64::new(0),
            sessions_cancel: CancellationToken::new(),
            offload: Box::new(NoOffload),
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
        self.offload.as_ref()
    }

    /// A process-unique number for session names.
    pub fn next_id(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn session_token(&self) -> CancellationToken {
        self.sessions_cancel.child_token()
    }

    /// Puts a configuration in force, or changes nothing and says why.
    pub async fn apply(self: &Arc<Self>, config: Config) -> Result<(), ApplyError> {
        let result = self.apply_config(config).await;
        if let Some(m) = &self.metrics {
            m.config_applied(result.is_ok());
        }
        result
    }

    async fn apply_config(self: &Arc<Self>, config: Config) -> Result<(), ApplyError> {
        let snap = Arc::new(Snapshot::build(config)?);
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
                bound.push(((*l).clone(), bind(l)?));
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
                bound.push(((*l).clone(), bind(l)?));
            }
        }
        self.snapshot.store(snap.clone());
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
        if let Ok(mut m) = self.sessions.lock() {
            m.remove(name);
        }
        self.sessions_changed.notify_waiters();
    }

    /// The live sessions.
    pub fn sessions(&self) -> Vec<Arc<SessionInfo>> {
        self.sessions
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
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

fn bind(l: &Arc<Listener>) -> Result<Bound, ApplyError> {
    Bound::bind(l).map_err(|error| ApplyError::Bind {
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
    }
}

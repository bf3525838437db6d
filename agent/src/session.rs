//! Sessions: what a listener emits for each peer, and the task that routes it, connects its stages, runs its
//! pipeline and ends it.
//!
//! Lifecycle: `INIT` (emitted) → `LOOKUP SUCCESS` (a rule matched, metadata rewritten) → `CONNECTED` (every stage
//! connected) → (`DISCONNECT` → `RECONNECT`: a stage lost and reconnected mid-session under `retry_on:
//! disconnect`/`always`) → `END` or `ERROR` → `DESTROYED` (removed from the engine). Events are kept with timestamps
//! for the admin API and logged.

use crate::engine::Engine;
use crate::metrics::SessionMetrics;
use crate::pipeline::{self, EndReason, StageRef, Stages, Stats};
use crate::protocol::{self, ConnectError, Stage, jsonsocket};
use crate::router::{self, RouteError};
use crate::snapshot::{ClusterRt, Snapshot};
use crate::stream::{Reader, Writer};
use l7mp_api::{Listener, ListenerSpec, Retry, RetryOn, StreamKind};
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// What a listener hands the engine for each new peer.
pub struct NewSession {
    pub name: String,
    pub listener: Arc<Listener>,
    pub metadata: Value,
    pub reader: Reader,
    pub writer: Writer,
    /// End the session after this long without traffic in either direction.
    pub idle_timeout: Option<Duration>,
    /// Called once the session is gone (e.g. to forget a UDP peer).
    pub on_end: Option<Box<dyn FnOnce() + Send>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Init,
    Connected,
    Finalizing,
    Destroyed,
}

impl Status {
    /// The original's name of the status.
    pub fn name(self) -> &'static str {
        match self {
            Status::Init => "INIT",
            Status::Connected => "CONNECTED",
            Status::Finalizing => "FINALIZING",
            Status::Destroyed => "DESTROYED",
        }
    }
}

/// The role of a stage in a session's pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Destination,
    Ingress,
    Egress,
}

/// What the admin API shows of one stage: the cluster it belongs to, the endpoint it reached, its state.
#[derive(Debug, Clone)]
pub struct StageInfo {
    pub role: Role,
    pub cluster: String,
    /// The endpoint's name (network clusters only).
    pub endpoint: Option<String>,
    /// CONNECTED, RETRYING (reconnecting after a loss) or END.
    pub status: &'static str,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub at: SystemTime,
    pub kind: &'static str,
    pub message: String,
}

/// What the engine knows about a live session.
pub struct SessionInfo {
    pub name: String,
    pub listener: String,
    pub stats: Arc<Stats>,
    pub cancel: CancellationToken,
    /// The source keeps message boundaries (UDP...): nothing is in flight between datagrams, so a shutdown need not
    /// wait for such a session.
    pub datagram_source: bool,
    /// The listener (as it was when it emitted the session).
    pub listener_cfg: Arc<Listener>,
    /// How long the session stays listed once ended (the listener's `options.track`).
    pub track: Option<Duration>,
    pub started: SystemTime,
    state: Mutex<SessionState>,
}

struct SessionState {
    status: Status,
    /// The metadata as routed (after rewrites); the listener's until the lookup is done.
    metadata: Arc<Value>,
    route: Option<String>,
    /// The destination cluster once routed, and its endpoint once connected (for the access log).
    destination: (Option<String>, Option<String>),
    events: Vec<Event>,
    stages: Vec<StageInfo>,
    ended: Option<SystemTime>,
    /// The kernel fast path's flow (the session task holds it; gone when the session ends).
    offload: Option<std::sync::Weak<dyn crate::offload::OffloadedFlow>>,
}

impl SessionInfo {
    fn event(&self, kind: &'static str, message: String) {
        if let Ok(mut s) = self.state.lock() {
            s.events.push(Event {
                at: SystemTime::now(),
                kind,
                message,
            });
        }
    }

    fn set(&self, f: impl FnOnce(&mut SessionState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }

    pub fn status(&self) -> Status {
        self.state.lock().map(|s| s.status).unwrap_or(Status::Destroyed)
    }

    pub fn metadata(&self) -> Arc<Value> {
        self.state.lock().map(|s| s.metadata.clone()).unwrap_or_default()
    }

    pub fn route(&self) -> Option<String> {
        self.state.lock().ok().and_then(|s| s.route.clone())
    }

    /// The destination cluster (once routed) and its endpoint (once connected, if it has one).
    pub fn destination(&self) -> (Option<String>, Option<String>) {
        self.state.lock().map(|s| s.destination.clone()).unwrap_or_default()
    }

    pub fn events(&self) -> Vec<Event> {
        self.state.lock().map(|s| s.events.clone()).unwrap_or_default()
    }

    /// The stages (destination first, then ingress and egress), once connected.
    pub fn stages(&self) -> Vec<StageInfo> {
        self.state.lock().map(|s| s.stages.clone()).unwrap_or_default()
    }

    /// When the session ended, once it has.
    pub fn ended(&self) -> Option<SystemTime> {
        self.state.lock().ok().and_then(|s| s.ended)
    }

    /// The kernel fast path's view of this session (`None` when it has no offloaded flow, or no longer).
    pub fn offload(&self) -> Option<serde_json::Value> {
        let flow = self.state.lock().ok()?.offload.as_ref()?.upgrade()?;
        Some(flow.describe())
    }

    fn stage_status(&self, role: Role, index: usize, status: &'static str) {
        self.set(|st| {
            if let Some(s) = st.stages.iter_mut().filter(|s| s.role == role).nth(index) {
                s.status = status;
            }
        });
    }
}

/// Why a session failed before or while it ran.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot route: {0}")]
    Route(#[from] RouteError),
    #[error(transparent)]
    JsonSocket(#[from] jsonsocket::HeaderError),
    #[error("cluster {0:?} is not defined")]
    UnknownCluster(String),
    #[error("cannot connect cluster {cluster:?} after {attempts} attempt(s): {source}")]
    Connect {
        cluster: String,
        attempts: u32,
        source: ConnectError,
    },
}

/// Runs a session to its end. Spawned by [`Engine::spawn_session`].
pub(crate) async fn run(engine: Arc<Engine>, mut s: NewSession) {
    let info = Arc::new(SessionInfo {
        name: s.name.clone(),
        listener: s.listener.name.clone(),
        stats: Arc::new(Stats::default()),
        cancel: engine.session_token(),
        datagram_source: s.reader.kind() == l7mp_api::StreamKind::Datagram,
        track: s.listener.options.track.filter(|t| !t.is_zero()),
        listener_cfg: s.listener.clone(),
        started: SystemTime::now(),
        state: Mutex::new(SessionState {
            status: Status::Init,
            metadata: Arc::new(s.metadata.clone()),
            route: None,
            destination: (None, None),
            events: vec![],
            stages: vec![],
            ended: None,
            offload: None,
        }),
    });
    info.event("INIT", format!("session emitted by listener {:?}", s.listener.name));
    engine.register(info.clone());
    let acct = engine.metrics().map(|m| {
        m.session_started(
            &info.name,
            &info.listener,
            s.listener.spec.protocol(),
            info.stats.clone(),
        )
    });
    let on_end = s.on_end.take();
    let access = engine.options().access_log.as_ref().map(|log| log.start(&s));
    let result = drive(&engine, &info, s, acct.as_ref()).await;
    match &result {
        Ok(reason) => {
            info.event("END", format!("{reason:?}"));
            if let (Some(a), EndReason::Failed(_)) = (&acct, &reason) {
                a.error("stream_error");
            }
            match &reason {
                // A stream that broke (a reset, a peer that stopped reading) ends its session; say why.
                pipeline::EndReason::Failed(e) => {
                    tracing::info!(session = %info.name, listener = %info.listener, "session ended on a stream error: {e}");
                }
                _ => tracing::debug!(session = %info.name, ?reason, "session ended"),
            }
        }
        Err(e) => {
            info.event("ERROR", e.to_string());
            match e {
                // An access-control rule did its job: not a failure of the agent.
                SessionError::Route(d @ RouteError::Denied { .. }) => {
                    tracing::info!(session = %info.name, listener = %info.listener, "session {d}");
                }
                _ => tracing::warn!(session = %info.name, listener = %info.listener, "session failed: {e}"),
            }
            if let Some(a) = &acct {
                a.error(e.metric_reason());
            }
        }
    }
    // The session's counts move to the totals (its pumps are gone: they do not change any more).
    drop(acct);
    info.set(|st| {
        st.status = Status::Destroyed;
        st.ended = Some(SystemTime::now());
        for s in &mut st.stages {
            s.status = "END";
        }
    });
    if let Some(a) = access {
        a.finish(&info, &result);
    }
    if let Some(f) = on_end {
        f();
    }
    engine.unregister(&info.name);
}

async fn drive(
    engine: &Arc<Engine>,
    info: &Arc<SessionInfo>,
    mut s: NewSession,
    acct: Option<&SessionMetrics>,
) -> Result<EndReason, SessionError> {
    let snap = engine.snapshot();
    // The listener's current rulelist (it may have been changed since the listener started).
    let rulelist = snap
        .listeners
        .get(&s.listener.name)
        .map_or(s.listener.rules.as_str(), |l| l.rules.as_str());
    let mut metadata = s.metadata;
    let jsonsocket = matches!(s.listener.spec, ListenerSpec::JsonSocket(_));
    if jsonsocket {
        let header = match jsonsocket::read_header(&mut s.reader).await {
            Ok((h, rest)) => jsonsocket::parse_header(&h).map(|v| (v, rest)),
            Err(e) => Err(e),
        };
        match header {
            Ok((v, rest)) => {
                metadata["JSONSocket"] = v;
                if !rest.is_empty() {
                    s.reader = Reader::Prefixed(Box::new((rest, s.reader)));
                }
            }
            Err(e) => {
                let _ = jsonsocket::answer(&mut s.writer, e.status, &e.message).await;
                return Err(e.into());
            }
        }
    }
    let route = match router::lookup(&snap, rulelist, &mut metadata) {
        Ok(r) => r,
        Err(e) => {
            let e = SessionError::from(e);
            refuse(&mut s.writer, jsonsocket, &e).await;
            return Err(e);
        }
    };
    let metadata = Arc::new(metadata);
    let retry = route.cfg.retry.clone();
    info.set(|st| {
        st.metadata = metadata.clone();
        st.route = Some(route.cfg.name.clone());
    });
    // A weighted split picks the destination cluster here, once per session.
    let dest_name = route.destination().to_owned();
    let destination = dest_name.as_str();
    let destination_name = destination;
    info.set(|st| st.destination.0 = Some(dest_name.clone()));
    if let Some(a) = acct
        && snap.clusters.contains_key(destination)
    {
        a.routed(destination);
    }
    match &route.cfg.destination {
        l7mp_api::Destination::Split(_) => info.event(
            "LOOKUP SUCCESS",
            format!("route {:?}, split to cluster {destination:?}", route.cfg.name),
        ),
        l7mp_api::Destination::Cluster(_) => info.event("LOOKUP SUCCESS", format!("route {:?}", route.cfg.name)),
    }

    // An HTTP request learns how its body travels: unchanged or not, as a stream or as one message.
    let exchange = s.writer.http_exchange().cloned();
    if let Some(x) = &exchange {
        let dest = snap.clusters.get(destination).map(|c| &c.cfg.spec);
        let to_datagrams = dest.and_then(|d| d.stream_kind()) == Some(StreamKind::Datagram);
        let to_http = matches!(dest, Some(l7mp_api::ClusterSpec::Http { .. }));
        x.configure(
            route.cfg.ingress.is_empty(),
            route.cfg.egress.is_empty(),
            to_datagrams,
            to_http,
        );
    }
    let attempts = match retry.retry_on {
        RetryOn::ConnectFailure | RetryOn::Always => 1 + retry.num_retries,
        RetryOn::Never | RetryOn::Disconnect => 1,
    };
    let opened = async {
        let b = &mut Budget::new(attempts);
        let x = exchange.as_ref();
        let destination = open(engine, &snap, destination, &metadata, &info.name, &retry, b, x, true).await?;
        let mut ingress = Vec::with_capacity(route.cfg.ingress.len());
        for c in &route.cfg.ingress {
            let b = &mut Budget::new(attempts);
            ingress.push(open(engine, &snap, c, &metadata, &info.name, &retry, b, None, true).await?);
        }
        let mut egress = Vec::with_capacity(route.cfg.egress.len());
        for c in &route.cfg.egress {
            let b = &mut Budget::new(attempts);
            egress.push(open(engine, &snap, c, &metadata, &info.name, &retry, b, None, true).await?);
        }
        Ok::<_, SessionError>((destination, ingress, egress))
    };
    let (destination, ingress, egress) = match opened.await {
        Ok(x) => x,
        Err(e) => {
            refuse(&mut s.writer, jsonsocket, &e).await;
            return Err(e);
        }
    };
    let stage_info = |role: Role, cluster: &str, stage: &Stage| StageInfo {
        role,
        cluster: cluster.to_owned(),
        endpoint: match stage {
            Stage::Stream { endpoint, .. } => endpoint.clone(),
            Stage::Transform(_) => None,
        },
        status: "CONNECTED",
    };
    let mut infos = vec![stage_info(Role::Destination, destination_name, &destination)];
    infos.extend(
        ingress
            .iter()
            .zip(&route.cfg.ingress)
            .map(|(s, c)| stage_info(Role::Ingress, c, s)),
    );
    infos.extend(
        egress
            .iter()
            .zip(&route.cfg.egress)
            .map(|(s, c)| stage_info(Role::Egress, c, s)),
    );
    info.set(|st| {
        st.destination.1 = infos.first().and_then(|d| d.endpoint.clone());
        st.stages = infos;
    });
    if jsonsocket && let Err(e) = jsonsocket::answer(&mut s.writer, 200, "OK").await {
        tracing::debug!(session = %info.name, "cannot answer the JSONSocket header: {e}");
    }
    let stages = Stages {
        source: (s.reader, s.writer),
        ingress,
        destination,
        egress,
    };
    let route_name = route.cfg.name.clone();
    // Stream stages are reconnected mid-session with `disconnect`/`always`; not those of an HTTP request (its
    // exchange is answered once), nor Stdio (the agent's own stdin/stdout cannot be reopened).
    let reconnects = retry.reconnects() && retry.num_retries > 0 && exchange.is_none();
    // A flow that needs no transformation (no chains) and keeps its sockets (no reconnects) may go to the kernel,
    // for as long as `_offloaded` lives (until the session ends).
    let _offloaded = (stages.ingress.is_empty() && stages.egress.is_empty() && !reconnects)
        .then(|| engine.offload().offer(&info.name, &stages, &info.stats))
        .flatten();
    if let Some(f) = &_offloaded {
        info.set(|st| st.offload = Some(Arc::downgrade(f)));
        info.event(
            "OFFLOAD",
            format!("offered to the kernel ({})", engine.offload().name()),
        );
    }
    let cluster_of = |which: StageRef| -> Option<&str> {
        match which {
            StageRef::Destination => Some(dest_name.as_str()),
            StageRef::Ingress(i) => route.cfg.ingress.get(i).map(String::as_str),
            StageRef::Egress(i) => route.cfg.egress.get(i).map(String::as_str),
        }
    };
    let reconnect = |which: StageRef| {
        reconnects
            && cluster_of(which)
                .and_then(|c| snap.clusters.get(c))
                .is_some_and(|c| !matches!(c.cfg.spec, l7mp_api::ClusterSpec::Stdio))
    };
    let mut pumps = pipeline::assemble(stages, metadata.clone(), info.stats.clone(), || {
        if !route.warned_boundaries.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                route = %route_name,
                "route carries a datagram stream into a byte stream: message boundaries are lost on this hop"
            );
        }
    });
    if let Some(f) = &_offloaded {
        pipeline::attach_offload(&mut pumps, f);
    }
    info.set(|st| st.status = Status::Connected);
    info.event("CONNECT", "all stages connected".into());
    let timeouts = pipeline::Timeouts {
        idle: s.idle_timeout,
        half_closed: engine.options().half_close_timeout,
    };
    // Per lost stage: when it was last (re)connected and the reconnects of its current disconnect episode. A stage
    // that is lost again within `backoff.max` of being reconnected continues the episode (and its back-off); one
    // that lived longer starts a new one. Allocated at the first loss only.
    let started = Instant::now();
    let mut episodes: Vec<(StageRef, Instant, Budget)> = Vec::new();
    let reason = loop {
        let reason = pipeline::run(&mut pumps, &info.stats, timeouts, &info.cancel, &reconnect).await;
        let EndReason::StageLost(which, error) = reason else {
            break reason;
        };
        let Some(cluster) = cluster_of(which) else {
            break EndReason::Failed(std::io::Error::other(format!("lost an unknown stage {which:?}")));
        };
        let stage = match which {
            StageRef::Destination => "destination".to_owned(),
            StageRef::Ingress(i) => format!("ingress stage {i}"),
            StageRef::Egress(i) => format!("egress stage {i}"),
        };
        let why = match &error {
            Some(e) => format!("{stage} (cluster {cluster:?}) failed: {e}"),
            None => format!("{stage} (cluster {cluster:?}) closed while data still flows to it"),
        };
        info.event("DISCONNECT", why.clone());
        let (role, index) = match which {
            StageRef::Destination => (Role::Destination, 0),
            StageRef::Ingress(i) => (Role::Ingress, i),
            StageRef::Egress(i) => (Role::Egress, i),
        };
        info.stage_status(role, index, "RETRYING");
        let at = match episodes.iter().position(|(s, ..)| *s == which) {
            Some(at) => at,
            None => {
                episodes.push((which, started, Budget::new(retry.num_retries)));
                episodes.len() - 1
            }
        };
        let Some((_, connected_at, budget)) = episodes.get_mut(at) else {
            break EndReason::Failed(std::io::Error::other(why));
        };
        if connected_at.elapsed() >= retry.backoff.max {
            *budget = Budget::new(retry.num_retries);
        }
        if budget.left == 0 {
            tracing::info!(session = %info.name, "{why}; no reconnect left");
            break EndReason::Failed(std::io::Error::other(format!(
                "{why} after {} reconnect(s)",
                retry.num_retries
            )));
        }
        tracing::info!(session = %info.name, "{why}; reconnecting");
        let reopen = async {
            // The first reconnect of an episode goes at once, the others after the next back-off pause.
            if budget.left < retry.num_retries {
                tokio::time::sleep(retry.backoff.pause(budget.pauses)).await;
                budget.pauses += 1;
            }
            if let Some(m) = engine.metrics() {
                m.retry(cluster, "reconnect");
            }
            let snap = engine.snapshot();
            open(
                engine, &snap, cluster, &metadata, &info.name, &retry, budget, None, false,
            )
            .await
        };
        let opened = tokio::select! {
            _ = info.cancel.cancelled() => break EndReason::Cancelled,
            r = reopen => r,
        };
        let endpoint = match &opened {
            Ok(Stage::Stream { endpoint, .. }) => endpoint.clone(),
            _ => None,
        };
        match opened.map(|new| pipeline::replace_stage(&mut pumps, which, new)) {
            Ok(true) => {
                *connected_at = Instant::now();
                info.set(|st| {
                    if let Some(s) = st.stages.iter_mut().filter(|s| s.role == role).nth(index) {
                        s.status = "CONNECTED";
                        s.endpoint = endpoint;
                    }
                });
                info.event("RECONNECT", format!("{stage} (cluster {cluster:?}) reconnected"));
                tracing::info!(session = %info.name, "{stage} (cluster {cluster:?}) reconnected");
            }
            Ok(false) => break EndReason::Failed(std::io::Error::other(format!("{stage} is no longer a stream"))),
            Err(e) => {
                info.event("ERROR", e.to_string());
                break EndReason::Failed(std::io::Error::other(e.to_string()));
            }
        }
    };
    // Dropping the pumps closes every stream.
    drop(pumps);
    info.set(|st| st.status = Status::Finalizing);
    Ok(reason)
}

/// Tells the client that its session cannot go on, where its protocol has a way to say so: a JSONSocket error
/// header, an HTTP error response.
async fn refuse(writer: &mut Writer, jsonsocket: bool, e: &SessionError) {
    if jsonsocket {
        // The original answers every failure with 404; a denied session is told 403.
        let (code, what) = match e {
            SessionError::Route(RouteError::Denied { .. }) => (403, "Forbidden"),
            _ => (404, "Not Found"),
        };
        let _ = jsonsocket::answer(writer, code, &format!("{what}: {e}")).await;
    } else if let Some(x) = writer.http_exchange() {
        x.refuse(e.http_status(), &e.to_string());
    }
}

impl SessionError {
    /// The `reason` label of `l7mp_session_errors_total` (see [`crate::metrics::ERROR_REASONS`]).
    pub fn metric_reason(&self) -> &'static str {
        match self {
            SessionError::Route(RouteError::Denied { .. }) => "denied",
            SessionError::Route(_) => "no_route",
            SessionError::JsonSocket(_) => "bad_header",
            SessionError::UnknownCluster(_) => "unknown_cluster",
            SessionError::Connect { source, .. } => match source {
                ConnectError::Timeout { .. } => "connect_timeout",
                ConnectError::Pick(_) => "no_endpoint",
                ConnectError::Unavailable { .. } => "unavailable",
                _ => "connect_failed",
            },
        }
    }

    /// The HTTP status that tells a client about this failure.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            SessionError::Route(RouteError::Denied { .. }) => StatusCode::FORBIDDEN,
            SessionError::Route(_) => StatusCode::NOT_FOUND,
            SessionError::JsonSocket(_) => StatusCode::BAD_REQUEST,
            SessionError::UnknownCluster(_) => StatusCode::INTERNAL_SERVER_ERROR,
            SessionError::Connect {
                source: ConnectError::Timeout { .. },
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            // The request lacks what the cluster hashes on (`on_missing_key: fail`).
            SessionError::Connect {
                source: ConnectError::Pick(crate::lb::PickError::MissingKey { .. }),
                ..
            } => StatusCode::BAD_REQUEST,
            SessionError::Connect { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

/// The connect attempts a stage has left, and how many back-off pauses it took so far (the next pause is
/// `backoff.pause(pauses)`).
struct Budget {
    left: u32,
    pauses: u32,
}

impl Budget {
    fn new(attempts: u32) -> Budget {
        Budget {
            left: attempts,
            pauses: 0,
        }
    }
}

/// Opens a stage of cluster `name` with the attempts left in `budget` (at least one), each bounded by the route's
/// `connect_timeout`, the back-off's pauses apart. A retry goes to another endpoint while the cluster has one that
/// this session has not tried, and then without the pause. `initial`: at session start (not a reconnect).
#[allow(clippy::too_many_arguments)]
async fn open(
    engine: &Engine,
    snap: &Snapshot,
    name: &str,
    metadata: &Value,
    session: &str,
    retry: &Retry,
    budget: &mut Budget,
    exchange: Option<&Arc<crate::protocol::http::Exchange>>,
    initial: bool,
) -> Result<Stage, SessionError> {
    let cluster = snap
        .clusters
        .get(name)
        .ok_or_else(|| SessionError::UnknownCluster(name.to_owned()))?;
    let mut n = 0;
    let mut tried = Vec::new();
    loop {
        n += 1;
        budget.left = budget.left.saturating_sub(1);
        let t0 = Instant::now();
        let attempt = match open_virtual(engine, cluster, metadata, session, exchange) {
            Some(r) => r,
            // Boxed: the connect futures of all protocols are large, and the session future is moved when spawned.
            None => {
                Box::pin(protocol::connect(
                    cluster,
                    metadata,
                    retry.connect_timeout,
                    exchange,
                    &mut tried,
                ))
                .await
            }
        };
        match attempt {
            Ok(stage) => {
                if let Some(m) = engine.metrics() {
                    m.stage_connected(name, cluster.cfg.spec.protocol(), t0.elapsed(), initial);
                }
                return Ok(stage);
            }
            // Nothing another attempt could change.
            Err(source @ ConnectError::Pick(_)) => {
                return Err(SessionError::Connect {
                    cluster: name.to_owned(),
                    attempts: n,
                    source,
                });
            }
            Err(e) if budget.left > 0 => {
                if let Some(m) = engine.metrics() {
                    m.retry(name, "connect");
                }
                // Another endpoint is tried at once; the same one again after the pause.
                if cluster.lb.has_untried(&tried) {
                    tracing::debug!(
                        session,
                        cluster = name,
                        attempt = n,
                        "connect failed, trying another endpoint: {e}"
                    );
                } else {
                    let pause = retry.backoff.pause(budget.pauses);
                    budget.pauses += 1;
                    tracing::debug!(
                        session,
                        cluster = name,
                        attempt = n,
                        "connect failed, retrying in {pause:?}: {e}"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
            Err(source) => {
                return Err(SessionError::Connect {
                    cluster: name.to_owned(),
                    attempts: n,
                    source,
                });
            }
        }
    }
}

/// Opens a stage of a cluster that lives inside the agent and needs the engine (`Prometheus`, `Metric`; the
/// `L7mpController` goes here too), or returns `None` for every other cluster (opened by [`protocol::connect`]).
fn open_virtual(
    engine: &Engine,
    cluster: &ClusterRt,
    metadata: &Value,
    session: &str,
    exchange: Option<&Arc<crate::protocol::http::Exchange>>,
) -> Option<Result<Stage, ConnectError>> {
    match cluster.cfg.spec {
        l7mp_api::ClusterSpec::L7mpController => Some(match engine.controller() {
            Some(router) => protocol::controller::open(router, metadata, exchange),
            None => Err(ConnectError::Unavailable {
                protocol: "L7mpController",
                reason: "the agent has no REST API router".into(),
            }),
        }),
        l7mp_api::ClusterSpec::Prometheus => Some(protocol::prometheus::open(engine.metrics(), exchange)),
        l7mp_api::ClusterSpec::Metric => Some(Ok(protocol::prometheus::metric_stage(
            engine.metrics(),
            session,
            &cluster.cfg.name,
        ))),
        _ => None,
    }
}

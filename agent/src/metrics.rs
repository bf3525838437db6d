//! Prometheus metrics of the agent: one [`Metrics`] per engine, with its own registry, rendered in the text
//! exposition format by [`Metrics::render`] (served by the `Prometheus` cluster and the admin listener's `/metrics`).
//!
//! The data path pays (almost) nothing for them. A session already counts its bytes and messages in its
//! [`pipeline::Stats`] (four relaxed atomics); the per-listener and per-cluster traffic counters are not incremented
//! per packet but summed at scrape time by a custom collector ([`Traffic`]): the totals of the sessions that ended
//! plus the `Stats` of the live ones. A session's end moves its final counts from the live table into the totals
//! under the same lock a scrape takes, so a counter never goes backwards nor counts a session twice. Everything
//! else is touched once per session (label children are looked up at session start, end and per connect), except
//! the `Metric` cluster's counters, which are one atomic add per batch.
//!
//! Directions (`direction` label): for a listener, `rx` is what its peers sent (the session's uplink as read at the
//! source) and `tx` what was sent back to them; for a cluster, `tx` is what went to the upstream and `rx` what came
//! back. A session's traffic is attributed to its destination cluster (chain stages of a route are not counted
//! separately). See docs/metrics.md for the list.

use crate::pipeline::Stats;
use prometheus::core::{Collector, Desc};
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
    proto,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Why a datagram or message was dropped by the data plane (`l7mp_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A listener's per-session queue was full (the session does not keep up with its peer).
    QueueFull,
    /// A Sync group member's queue was full.
    SyncQueueFull,
    /// A message larger than the destination socket can send as one datagram.
    Oversize,
    /// A UDP listener got a datagram from a peer its `connect` spec excludes.
    PeerRejected,
    /// A UNIX datagram listener got a datagram from an unbound socket (replies could not reach it).
    UnboundPeer,
    /// A UDP send found nobody listening (ICMP port unreachable).
    Refused,
    /// JSONDecap got a message that is not an l7mp JSON envelope.
    BadEnvelope,
    /// An AF_PACKET interface refused a frame (too large, interface down...).
    FrameRejected,
    /// A stream ended inside a message (an SCTP association): the message's start is dropped.
    Truncated,
}

impl DropReason {
    const ALL: [DropReason; 9] = [
        DropReason::QueueFull,
        DropReason::SyncQueueFull,
        DropReason::Oversize,
        DropReason::PeerRejected,
        DropReason::UnboundPeer,
        DropReason::Refused,
        DropReason::BadEnvelope,
        DropReason::FrameRejected,
        DropReason::Truncated,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::SyncQueueFull => "sync_queue_full",
            DropReason::Oversize => "oversize",
            DropReason::PeerRejected => "peer_rejected",
            DropReason::UnboundPeer => "unbound_peer",
            DropReason::Refused => "refused",
            DropReason::BadEnvelope => "bad_envelope",
            DropReason::FrameRejected => "frame_rejected",
            DropReason::Truncated => "truncated",
        }
    }
}

/// Process-wide drop counters: the places that drop data have no engine at hand, and a drop is rare enough that one
/// relaxed atomic add there costs nothing. Counted even with metrics off (they are not exported then).
static DROPPED: [AtomicU64; DropReason::ALL.len()] = [const { AtomicU64::new(0) }; DropReason::ALL.len()];

/// Counts `n` dropped datagrams/messages.
pub fn dropped(reason: DropReason, n: u64) {
    if let Some(c) = DROPPED.get(reason as usize) {
        c.fetch_add(n, Relaxed);
    }
}

/// Why a session failed (`l7mp_session_errors_total{reason}`).
pub const ERROR_REASONS: &[&str] = &[
    "no_route",
    "denied",
    "bad_header",
    "unknown_cluster",
    "connect_failed",
    "connect_timeout",
    "no_endpoint",
    "unavailable",
    "stream_error",
];

/// Bytes and messages in one direction pair.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    rx_bytes: u64,
    rx_msgs: u64,
    tx_bytes: u64,
    tx_msgs: u64,
}

/// A live session as the traffic collector sees it.
struct Live {
    listener: Arc<str>,
    /// The destination cluster, once routed.
    cluster: Option<Arc<str>>,
    stats: Arc<Stats>,
    /// Clusters of the `Metric` stages this session opened (their `session_*` series are removed at its end).
    metric_clusters: Vec<String>,
}

impl Live {
    /// The session's counts from its listener's point of view.
    fn listener_view(&self) -> Totals {
        Totals {
            rx_bytes: self.stats.up_bytes.load(Relaxed),
            rx_msgs: self.stats.up_msgs.load(Relaxed),
            tx_bytes: self.stats.down_bytes.load(Relaxed),
            tx_msgs: self.stats.down_msgs.load(Relaxed),
        }
    }
}

impl Totals {
    fn add(&mut self, o: Totals) {
        self.rx_bytes += o.rx_bytes;
        self.rx_msgs += o.rx_msgs;
        self.tx_bytes += o.tx_bytes;
        self.tx_msgs += o.tx_msgs;
    }

    /// A listener's view turned into its destination cluster's: what the peers sent goes to the upstream.
    fn swapped(self) -> Totals {
        Totals {
            rx_bytes: self.tx_bytes,
            rx_msgs: self.tx_msgs,
            tx_bytes: self.rx_bytes,
            tx_msgs: self.rx_msgs,
        }
    }
}

#[derive(Default)]
struct TrafficState {
    live: HashMap<String, Live>,
    /// Totals of ended sessions; every listener/cluster that ever had a session has an entry (so its series exist).
    listeners: HashMap<Arc<str>, Totals>,
    clusters: HashMap<Arc<str>, Totals>,
}

/// The scrape-time collector of the per-listener and per-cluster traffic and active-session metrics, and of the
/// drop counters.
struct Traffic {
    state: Mutex<TrafficState>,
    descs: Vec<Desc>,
}

const TRAFFIC: [(&str, &str, &str, bool); 6] = [
    (
        "l7mp_listener_active_sessions",
        "Sessions of the listener that are running now.",
        "listener",
        false,
    ),
    (
        "l7mp_cluster_active_sessions",
        "Running sessions whose destination is the cluster.",
        "cluster",
        false,
    ),
    (
        "l7mp_listener_bytes_total",
        "Bytes received from (rx) and sent to (tx) the listener's peers.",
        "listener",
        true,
    ),
    (
        "l7mp_listener_packets_total",
        "Messages (datagrams, or reads of a byte stream) received from (rx) and sent to (tx) the listener's peers.",
        "listener",
        true,
    ),
    (
        "l7mp_cluster_bytes_total",
        "Bytes sent to (tx) and received from (rx) the cluster, for sessions whose destination it is.",
        "cluster",
        true,
    ),
    (
        "l7mp_cluster_packets_total",
        "Messages sent to (tx) and received from (rx) the cluster, for sessions whose destination it is.",
        "cluster",
        true,
    ),
];

const DROPPED_NAME: &str = "l7mp_dropped_total";
const DROPPED_HELP: &str = "Datagrams or messages the data plane dropped, by reason.";

impl Traffic {
    fn new() -> prometheus::Result<Traffic> {
        let mut descs = Vec::new();
        for (name, help, label, direction) in TRAFFIC {
            let mut labels = vec![label.to_owned()];
            if direction {
                labels.push("direction".to_owned());
            }
            descs.push(Desc::new(name.into(), help.into(), labels, HashMap::new())?);
        }
        descs.push(Desc::new(
            DROPPED_NAME.into(),
            DROPPED_HELP.into(),
            vec!["reason".into()],
            HashMap::new(),
        )?);
        Ok(Traffic {
            state: Mutex::new(TrafficState::default()),
            descs,
        })
    }
}

fn gauge_family(
    name: &str,
    help: &str,
    label: &str,
    values: &HashMap<Arc<str>, u64>,
) -> prometheus::Result<proto::MetricFamily> {
    let v = IntGaugeVec::new(Opts::new(name, help), &[label])?;
    for (l, n) in values {
        v.with_label_values(&[&**l]).set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    one_family(v.collect())
}

/// A `{label, direction}` counter family from per-name totals; `pick` gives (rx, tx).
fn counter_family(
    name: &str,
    help: &str,
    label: &str,
    values: &HashMap<Arc<str>, Totals>,
    pick: fn(&Totals) -> (u64, u64),
) -> prometheus::Result<proto::MetricFamily> {
    let v = IntCounterVec::new(Opts::new(name, help), &[label, "direction"])?;
    for (l, t) in values {
        let (rx, tx) = pick(t);
        v.with_label_values(&[&**l, "rx"]).inc_by(rx);
        v.with_label_values(&[&**l, "tx"]).inc_by(tx);
    }
    one_family(v.collect())
}

impl Collector for Traffic {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        // The sums are taken under the lock (a session's end moves its counts under the same lock), the families
        // built after it.
        let (listeners, clusters, l_active, c_active) = {
            let Ok(st) = self.state.lock() else { return vec![] };
            let mut listeners = st.listeners.clone();
            let mut clusters = st.clusters.clone();
            let mut l_active: HashMap<Arc<str>, u64> = st.listeners.keys().map(|k| (k.clone(), 0)).collect();
            let mut c_active: HashMap<Arc<str>, u64> = st.clusters.keys().map(|k| (k.clone(), 0)).collect();
            for s in st.live.values() {
                let t = s.listener_view();
                listeners.entry(s.listener.clone()).or_default().add(t);
                *l_active.entry(s.listener.clone()).or_default() += 1;
                if let Some(c) = &s.cluster {
                    clusters.entry(c.clone()).or_default().add(t.swapped());
                    *c_active.entry(c.clone()).or_default() += 1;
                }
            }
            (listeners, clusters, l_active, c_active)
        };
        let bytes = |t: &Totals| (t.rx_bytes, t.tx_bytes);
        let msgs = |t: &Totals| (t.rx_msgs, t.tx_msgs);
        let [
            (n0, h0, ..),
            (n1, h1, ..),
            (n2, h2, ..),
            (n3, h3, ..),
            (n4, h4, ..),
            (n5, h5, ..),
        ] = TRAFFIC;
        let families = [
            gauge_family(n0, h0, "listener", &l_active),
            gauge_family(n1, h1, "cluster", &c_active),
            counter_family(n2, h2, "listener", &listeners, bytes),
            counter_family(n3, h3, "listener", &listeners, msgs),
            counter_family(n4, h4, "cluster", &clusters, bytes),
            counter_family(n5, h5, "cluster", &clusters, msgs),
            dropped_family(),
        ];
        families
            .into_iter()
            .filter_map(Result::ok)
            .filter(|f| !f.get_metric().is_empty())
            .collect()
    }
}

/// The family a metric vector collects (always exactly one).
fn one_family(families: Vec<proto::MetricFamily>) -> prometheus::Result<proto::MetricFamily> {
    families
        .into_iter()
        .next()
        .ok_or_else(|| prometheus::Error::Msg("a metric vector collected no family".into()))
}

fn dropped_family() -> prometheus::Result<proto::MetricFamily> {
    let v = IntCounterVec::new(Opts::new(DROPPED_NAME, DROPPED_HELP), &["reason"])?;
    for r in DropReason::ALL {
        if let Some(c) = DROPPED.get(r as usize) {
            v.with_label_values(&[r.label()]).inc_by(c.load(Relaxed));
        }
    }
    one_family(v.collect())
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    traffic: Arc<Traffic>,
    listener_requests: IntCounterVec,
    cluster_requests: IntCounterVec,
    session_bytes: IntCounterVec,
    session_packets: IntCounterVec,
    connect_duration: HistogramVec,
    session_duration: HistogramVec,
    retries: IntCounterVec,
    session_errors: IntCounterVec,
    config_reloads: IntCounterVec,
    config_last_success: Gauge,
}

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> prometheus::Result<C> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// A fresh registry with every metric of the agent (and the process collector) registered.
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| register(&r, IntCounterVec::new(Opts::new(name, help), labels)?);
        let listener_requests = counter(
            "listener_requests_total",
            "Sessions emitted by the listener.",
            &["listenerName", "protocol"],
        )?;
        let cluster_requests = counter(
            "cluster_requests_total",
            "Stages of the cluster connected when sessions started (reconnects not included).",
            &["clusterName", "protocol"],
        )?;
        let session_bytes = counter(
            "session_byte_counter_total",
            "Bytes through a Metric cluster stage of a live session (removed when the session ends).",
            &["sessionName", "clusterName"],
        )?;
        let session_packets = counter(
            "session_packet_counter_total",
            "Messages through a Metric cluster stage of a live session (removed when the session ends).",
            &["sessionName", "clusterName"],
        )?;
        let retries = counter(
            "l7mp_retries_total",
            "Connect retries (kind=connect) and mid-session reconnects (kind=reconnect) of a cluster's stages.",
            &["cluster", "kind"],
        )?;
        let session_errors = counter(
            "l7mp_session_errors_total",
            "Sessions that failed, by reason.",
            &["listener", "reason"],
        )?;
        let config_reloads = counter(
            "l7mp_config_reloads_total",
            "Configurations applied or rejected (Engine::apply).",
            &["result"],
        )?;
        let connect_duration = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "l7mp_cluster_connect_duration_seconds",
                    "Time to open a stage of the cluster (successful attempts).",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
                &["cluster"],
            )?,
        )?;
        let session_duration = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "l7mp_session_duration_seconds",
                    "Lifetime of the listener's sessions, from emission to end.",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                ]),
                &["listener"],
            )?,
        )?;
        let config_last_success = register(
            &r,
            Gauge::new(
                "l7mp_config_last_reload_success_timestamp_seconds",
                "Unix time of the last configuration put in force.",
            )?,
        )?;
        let build = register(
            &r,
            IntGaugeVec::new(
                Opts::new("l7mp_build_info", "The agent's version (always 1)."),
                &["version"],
            )?,
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for result in ["applied", "rejected"] {
            config_reloads.with_label_values(&[result]);
        }
        let traffic = Arc::new(Traffic::new()?);
        r.register(Box::new(TrafficHandle(traffic.clone())))?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Metrics {
            registry: r,
            traffic,
            listener_requests,
            cluster_requests,
            session_bytes,
            session_packets,
            connect_duration,
            session_duration,
            retries,
            session_errors,
            config_reloads,
            config_last_success,
        })
    }

    /// The registry (to add collectors, or to gather the families directly).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One scrape in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The content type of [`Metrics::render`]'s output.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4";

    /// A session was emitted by listener `listener` (protocol `protocol`): counts it and starts accounting its
    /// traffic. The returned guard ends the accounting when dropped (after the session's pumps are gone).
    pub fn session_started(
        self: &Arc<Self>,
        name: &str,
        listener: &str,
        protocol: &str,
        stats: Arc<Stats>,
    ) -> SessionMetrics {
        self.listener_requests.with_label_values(&[listener, protocol]).inc();
        let listener: Arc<str> = Arc::from(listener);
        if let Ok(mut st) = self.traffic.state.lock() {
            if !st.listeners.contains_key(&listener) {
                st.listeners.insert(listener.clone(), Totals::default());
            }
            st.live.insert(
                name.to_owned(),
                Live {
                    listener: listener.clone(),
                    cluster: None,
                    stats,
                    metric_clusters: Vec::new(),
                },
            );
        }
        SessionMetrics {
            metrics: self.clone(),
            name: name.to_owned(),
            listener,
            started: Instant::now(),
        }
    }

    /// A stage of `cluster` connected in `took` at session start (`initial`) or on a reconnect.
    pub fn stage_connected(&self, cluster: &str, protocol: &str, took: Duration, initial: bool) {
        if initial {
            self.cluster_requests.with_label_values(&[cluster, protocol]).inc();
        }
        self.connect_duration
            .with_label_values(&[cluster])
            .observe(took.as_secs_f64());
    }

    /// A connect retry (`kind` "connect") or a mid-session reconnect (`kind` "reconnect") of a stage of `cluster`.
    pub fn retry(&self, cluster: &str, kind: &str) {
        self.retries.with_label_values(&[cluster, kind]).inc();
    }

    /// The outcome of a configuration apply.
    pub fn config_applied(&self, ok: bool) {
        let result = if ok { "applied" } else { "rejected" };
        self.config_reloads.with_label_values(&[result]).inc();
        if ok {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            self.config_last_success.set(now.as_secs_f64());
        }
    }

    /// The counters a `Metric` stage of cluster `cluster` in session `session` increments; the session's series
    /// are removed when it ends.
    pub fn metric_counters(&self, session: &str, cluster: &str) -> (IntCounter, IntCounter) {
        if let Ok(mut st) = self.traffic.state.lock()
            && let Some(live) = st.live.get_mut(session)
            && !live.metric_clusters.iter().any(|c| c == cluster)
        {
            live.metric_clusters.push(cluster.to_owned());
        }
        (
            self.session_bytes.with_label_values(&[session, cluster]),
            self.session_packets.with_label_values(&[session, cluster]),
        )
    }

    fn session_ended(&self, s: &SessionMetrics) {
        let live = match self.traffic.state.lock() {
            Ok(mut st) => {
                let live = st.live.remove(&s.name);
                if let Some(l) = &live {
                    let t = l.listener_view();
                    st.listeners.entry(l.listener.clone()).or_default().add(t);
                    if let Some(c) = &l.cluster {
                        st.clusters.entry(c.clone()).or_default().add(t.swapped());
                    }
                }
                live
            }
            Err(_) => None,
        };
        for c in live.iter().flat_map(|l| &l.metric_clusters) {
            let _ = self.session_bytes.remove_label_values(&[s.name.as_str(), c]);
            let _ = self.session_packets.remove_label_values(&[s.name.as_str(), c]);
        }
        self.session_duration
            .with_label_values(&[&*s.listener])
            .observe(s.started.elapsed().as_secs_f64());
    }
}

/// The engine's metrics: `None` when `enabled` is false (or, which cannot happen with fixed metric names, when the
/// registry refuses one of them: the agent then runs without metrics and says so).
pub fn create(enabled: bool) -> Option<Arc<Metrics>> {
    if !enabled {
        return None;
    }
    match Metrics::new() {
        Ok(m) => Some(Arc::new(m)),
        Err(e) => {
            tracing::error!("cannot set up the metrics, running without: {e}");
            None
        }
    }
}

/// Registers the shared traffic collector.
struct TrafficHandle(Arc<Traffic>);

impl Collector for TrafficHandle {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        self.0.collect()
    }
}

/// A session's accounting; dropping it ends the session's accounting (its counts move to the totals, its
/// `session_*` series are removed, its duration is observed).
pub struct SessionMetrics {
    metrics: Arc<Metrics>,
    name: String,
    listener: Arc<str>,
    started: Instant,
}

impl SessionMetrics {
    /// The session was routed to destination cluster `cluster`: its traffic counts for that cluster from now on.
    pub fn routed(&self, cluster: &str) {
        if let Ok(mut st) = self.metrics.traffic.state.lock() {
            let key: Arc<str> = match st.clusters.get_key_value(cluster) {
                Some((k, _)) => k.clone(),
                None => {
                    let k: Arc<str> = Arc::from(cluster);
                    st.clusters.insert(k.clone(), Totals::default());
                    k
                }
            };
            if let Some(l) = st.live.get_mut(&self.name) {
                l.cluster = Some(key);
            }
        }
    }

    /// The session failed (`reason`: one of [`ERROR_REASONS`]).
    pub fn error(&self, reason: &str) {
        self.metrics
            .session_errors
            .with_label_values(&[&*self.listener, reason])
            .inc();
    }
}

impl Drop for SessionMetrics {
    fn drop(&mut self) {
        self.metrics.session_ended(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }

    #[test]
    fn traffic_is_monotonic_across_session_end() {
        let m = Arc::new(Metrics::new().expect("metrics"));
        let stats = Arc::new(Stats::default());
        let s = m.session_started("s1", "l", "UDP", stats.clone());
        s.routed("c");
        stats.up_bytes.fetch_add(100, Relaxed);
        stats.up_msgs.fetch_add(2, Relaxed);
        stats.down_bytes.fetch_add(7, Relaxed);
        stats.down_msgs.fetch_add(1, Relaxed);
        let live = m.render();
        assert_eq!(
            value(&live, r#"l7mp_listener_bytes_total{direction="rx",listener="l"}"#),
            Some(100.0)
        );
        assert_eq!(
            value(&live, r#"l7mp_cluster_bytes_total{cluster="c",direction="tx"}"#),
            Some(100.0)
        );
        assert_eq!(
            value(&live, r#"l7mp_cluster_packets_total{cluster="c",direction="rx"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&live, r#"l7mp_listener_active_sessions{listener="l"}"#),
            Some(1.0)
        );
        let (b, p) = m.metric_counters("s1", "metric");
        b.inc_by(5);
        p.inc();
        assert!(
            m.render()
                .contains(r#"session_byte_counter_total{clusterName="metric",sessionName="s1"} 5"#)
        );
        drop(s);
        let ended = m.render();
        assert_eq!(
            value(&ended, r#"l7mp_listener_bytes_total{direction="rx",listener="l"}"#),
            Some(100.0)
        );
        assert_eq!(
            value(&ended, r#"l7mp_listener_packets_total{direction="tx",listener="l"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&ended, r#"l7mp_cluster_bytes_total{cluster="c",direction="tx"}"#),
            Some(100.0)
        );
        assert_eq!(
            value(&ended, r#"l7mp_listener_active_sessions{listener="l"}"#),
            Some(0.0)
        );
        assert_eq!(value(&ended, r#"l7mp_cluster_active_sessions{cluster="c"}"#), Some(0.0));
        assert!(!ended.contains("session_byte_counter_total{"), "{ended}");
        assert_eq!(
            value(&ended, r#"listener_requests_total{listenerName="l",protocol="UDP"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&ended, r#"l7mp_session_duration_seconds_count{listener="l"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn concurrent_scrapes_never_see_counters_go_back() {
        let m = Arc::new(Metrics::new().expect("metrics"));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scraper = {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = 0.0;
                let mut scrapes = 0;
                while !stop.load(Relaxed) {
                    let v =
                        value(&m.render(), r#"l7mp_listener_bytes_total{direction="rx",listener="l"}"#).unwrap_or(0.0);
                    assert!(v >= last, "went back from {last} to {v}");
                    last = v;
                    scrapes += 1;
                }
                (last, scrapes)
            })
        };
        for i in 0..2000 {
            let stats = Arc::new(Stats::default());
            let s = m.session_started(&format!("s{i}"), "l", "UDP", stats.clone());
            stats.up_bytes.fetch_add(3, Relaxed);
            drop(s);
        }
        stop.store(true, Relaxed);
        let (_, scrapes) = scraper.join().expect("scraper");
        assert!(scrapes > 0);
        assert_eq!(
            value(&m.render(), r#"l7mp_listener_bytes_total{direction="rx",listener="l"}"#),
            Some(6000.0)
        );
    }

    #[test]
    fn every_drop_reason_has_its_own_counter() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }

    #[test]
    fn drops_and_reloads_are_exported() {
        let m = Metrics::new().expect("metrics");
        dropped(DropReason::Oversize, 2);
        m.config_applied(false);
        m.config_applied(true);
        let t = m.render();
        assert!(
            value(&t, r#"l7mp_dropped_total{reason="oversize"}"#).is_some_and(|v| v >= 2.0),
            "{t}"
        );
        assert_eq!(value(&t, r#"l7mp_config_reloads_total{result="rejected"}"#), Some(1.0));
        assert_eq!(value(&t, r#"l7mp_config_reloads_total{result="applied"}"#), Some(1.0));
        assert!(value(&t, "l7mp_config_last_reload_success_timestamp_seconds").is_some_and(|v| v > 1.0e9));
        assert!(t.contains(r#"l7mp_build_info{version=""#));
        assert!(t.contains("process_resident_memory_bytes"), "{t}");
    }
}

/// The kernel fast path's metrics, read from the offload at scrape time: `l7mp_offload_flows{state}` and
/// `l7mp_offload_{packets,bytes}_total{direction}` (`rx`: from sessions' sources, `tx`: back to them).
#[derive(Clone)]
pub struct OffloadCollector {
    offload: Arc<dyn crate::offload::Offload>,
    descs: Vec<Desc>,
}

const OFFLOAD_FLOWS: (&str, &str) = (
    "l7mp_offload_flows",
    "Sessions whose flow the kernel carries (kernel) or will once their first datagram passed (pending).",
);
const OFFLOAD_PACKETS: (&str, &str) = (
    "l7mp_offload_packets_total",
    "Datagrams the kernel fast path carried from (rx) and back to (tx) sessions' sources.",
);
const OFFLOAD_BYTES: (&str, &str) = (
    "l7mp_offload_bytes_total",
    "Payload bytes the kernel fast path carried from (rx) and back to (tx) sessions' sources.",
);

impl OffloadCollector {
    pub fn new(offload: Arc<dyn crate::offload::Offload>) -> prometheus::Result<OffloadCollector> {
        let desc = |(name, help): (&str, &str), label: &str| {
            Desc::new(name.into(), help.into(), vec![label.into()], HashMap::new())
        };
        Ok(OffloadCollector {
            offload,
            descs: vec![
                desc(OFFLOAD_FLOWS, "state")?,
                desc(OFFLOAD_PACKETS, "direction")?,
                desc(OFFLOAD_BYTES, "direction")?,
            ],
        })
    }
}

impl Collector for OffloadCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let c = self.offload.counters();
        let gauge = |(name, help): (&str, &str), values: [(&str, u64); 2]| {
            let v = IntGaugeVec::new(Opts::new(name, help), &["state"])?;
            for (l, n) in values {
                v.with_label_values(&[l]).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            one_family(v.collect())
        };
        let counter = |(name, help): (&str, &str), rx: u64, tx: u64| {
            let v = IntCounterVec::new(Opts::new(name, help), &["direction"])?;
            v.with_label_values(&["rx"]).inc_by(rx);
            v.with_label_values(&["tx"]).inc_by(tx);
            one_family(v.collect())
        };
        [
            gauge(
                OFFLOAD_FLOWS,
                [("pending", c.flows_pending), ("kernel", c.flows_kernel)],
            ),
            counter(OFFLOAD_PACKETS, c.up_msgs, c.down_msgs),
            counter(OFFLOAD_BYTES, c.up_bytes, c.down_bytes),
        ]
        .into_iter()
        .filter_map(Result::ok)
        .collect()
    }
}

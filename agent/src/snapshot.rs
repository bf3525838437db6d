//! The running configuration: a validated [`Config`] plus what the engine needs to use it fast (name maps, open log
//! files, per-route flags). Built once per configuration change and swapped in atomically; sessions hold the
//! snapshot (and so the route) they were routed with.

use crate::lb::{Balancer, SmoothWrr};
use crate::protocol::http::client::Pool as HttpPool;
use crate::protocol::sync::SyncHub;
use crate::protocol::tls::config::TlsError;
use crate::protocol::transform::LogSink;
use crate::protocol::{ClusterTls, ListenerTls};
use l7mp_api::lookup::{RouteError, RuleTable};
use l7mp_api::{Cluster, ClusterSpec, Config, Destination, Listener, Route};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// A cluster ready for use.
pub struct ClusterRt {
    pub cfg: Cluster,
    /// The open log of a Logger cluster.
    pub sink: Option<Arc<LogSink>>,
    /// The groups of a Sync cluster.
    pub sync: Option<Arc<SyncHub>>,
    /// The keep-alive connections of an HTTP cluster.
    pub http: Option<Arc<HttpPool>>,
    /// The client context of a TLS, DTLS, `wss` or `https` cluster.
    pub tls: Option<ClusterTls>,
    /// Endpoint selection and outlier detection.
    pub lb: Balancer,
}

/// A route ready for use.
pub struct RouteRt {
    pub cfg: Route,
    /// Set once the "datagram stream routed into a byte stream" warning was logged for this route.
    pub warned_boundaries: AtomicBool,
    /// A weighted split: its turn, and the weights and indices of its branches.
    split: SmoothWrr,
    split_weights: Vec<u32>,
    split_all: Vec<usize>,
}

impl RouteRt {
    pub fn new(cfg: Route) -> RouteRt {
        let split_weights: Vec<u32> = match &cfg.destination {
            Destination::Cluster(_) => Vec::new(),
            Destination::Split(s) => s.iter().map(|w| w.weight).collect(),
        };
        RouteRt {
            cfg,
            warned_boundaries: AtomicBool::new(false),
            split: SmoothWrr::new(split_weights.len()),
            split_all: (0..split_weights.len()).collect(),
            split_weights,
        }
    }

    /// The destination cluster of a new session: the route's cluster, or the next of a weighted split.
    pub fn destination(&self) -> &str {
        match &self.cfg.destination {
            Destination::Cluster(c) => c,
            Destination::Split(split) => {
                // The configuration guarantees a branch of weight > 0.
                let i = self.split.next(&self.split_weights, &self.split_all).unwrap_or(0);
                split.get(i).map_or("", |w| w.cluster.as_str())
            }
        }
    }
}

/// One immutable version of the running configuration.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub listeners: HashMap<String, Arc<Listener>>,
    pub clusters: HashMap<String, Arc<ClusterRt>>,
    /// The rulelists with their rules and `apply` targets resolved: what session lookups walk.
    pub rule_table: RuleTable,
    pub routes: HashMap<String, Arc<RouteRt>>,
    /// The routes in configuration order (the same `Arc`s as `routes`), indexed by the rule table's route indices.
    pub route_list: Vec<Arc<RouteRt>>,
    /// The server contexts of TLS, DTLS, `wss` and `https` listeners, by listener name.
    pub listener_tls: HashMap<String, ListenerTls>,
}

/// Why a configuration could not be put in force (it validated, but a resource could not be had).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("clusters {cluster:?}: spec.log_file: cannot open {path:?}: {source}")]
    LogFile {
        cluster: String,
        path: String,
        source: std::io::Error,
    },
    /// A `tls` block's file is unreadable, does not parse, or the key does not match the certificate.
    #[error("{kind} {name:?}: {error}")]
    Tls {
        kind: &'static str,
        name: String,
        error: TlsError,
    },
    #[error("rulelists: {0}")]
    Rules(#[from] RouteError),
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            config: Arc::new(Config::default()),
            listeners: HashMap::new(),
            clusters: HashMap::new(),
            rule_table: RuleTable::default(),
            routes: HashMap::new(),
            route_list: Vec::new(),
            listener_tls: HashMap::new(),
        }
    }

    pub fn build(config: Config) -> Result<Snapshot, BuildError> {
        Self::build_from(config, &Snapshot::empty())
    }

    /// Builds the snapshot of `config`, keeping the run-time state of every cluster and route that `prev` has
    /// with the same configuration: an unchanged cluster keeps its connection pool, Sync groups, open log,
    /// load-balancer turn and outlier-detection state, an unchanged split route its turn, across any change to
    /// other objects.
    pub fn build_from(config: Config, prev: &Snapshot) -> Result<Snapshot, BuildError> {
        let mut clusters = HashMap::new();
        for c in &config.clusters {
            if let Some(old) = prev.clusters.get(&c.name).filter(|old| old.cfg == *c) {
                clusters.insert(c.name.clone(), old.clone());
                continue;
            }
            let sink = match &c.spec {
                ClusterSpec::Logger { log_file, .. } => Some(Arc::new(LogSink::open(log_file).map_err(|source| {
                    BuildError::LogFile {
                        cluster: c.name.clone(),
                        path: log_file.clone(),
                        source,
                    }
                })?)),
                _ => None,
            };
            let sync = matches!(c.spec, ClusterSpec::Sync { .. }).then(|| Arc::new(SyncHub::default()));
            let tls = ClusterTls::load(c).map_err(|error| BuildError::Tls {
                kind: "clusters",
                name: c.name.clone(),
                error,
            })?;
            let http = match &c.spec {
                ClusterSpec::Http { version, tls: spec, .. } => {
                    let tls = match (spec, &tls) {
                        (Some(spec), Some(ClusterTls::Tls(t))) => Some((t.clone(), (**spec).clone())),
                        _ => None,
                    };
                    Some(Arc::new(HttpPool::new(*version, tls)))
                }
                _ => None,
            };
            clusters.insert(
                c.name.clone(),
                Arc::new(ClusterRt {
                    cfg: c.clone(),
                    sink,
                    sync,
                    http,
                    tls,
                    lb: Balancer::new(c),
                }),
            );
        }
        let mut listener_tls = HashMap::new();
        for l in &config.listeners {
            let t = ListenerTls::load(l).map_err(|error| BuildError::Tls {
                kind: "listeners",
                name: l.name.clone(),
                error,
            })?;
            if let Some(t) = t {
                listener_tls.insert(l.name.clone(), t);
            }
        }
        let rule_table = RuleTable::new(&config)?;
        let route_list: Vec<Arc<RouteRt>> = config
            .routes
            .iter()
            .map(|r| match prev.routes.get(&r.name).filter(|old| old.cfg == *r) {
                Some(old) => old.clone(),
                None => Arc::new(RouteRt::new(r.clone())),
            })
            .collect();
        Ok(Snapshot {
            rule_table,
            routes: route_list.iter().map(|r| (r.cfg.name.clone(), r.clone())).collect(),
            route_list,
            listeners: config
                .listeners
                .iter()
                .map(|l| (l.name.clone(), Arc::new(l.clone())))
                .collect(),
            clusters,
            listener_tls,
            config: Arc::new(config),
        })
    }
}

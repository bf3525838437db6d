//! Leader election with a `coordination.k8s.io/v1` Lease, so that one control-plane replica writes status.
//!
//! The usual protocol (as client-go's `leaderelection` with a Lease lock): every `retry` the replica reads the
//! Lease; if it holds it, it renews `renewTime`; if the Lease is free (no holder) or expired (`renewTime +
//! leaseDurationSeconds` has passed), it takes it: `holderIdentity` = this replica, `acquireTime` = `renewTime` =
//! now, `leaseTransitions` + 1. Every write carries the `resourceVersion` read (optimistic concurrency), so of two
//! replicas that see an expired Lease at once only one wins; the other gets 409 and stays a follower. A leader
//! that cannot renew for a whole `leaseDurationSeconds` (the API server unreachable) stops acting as leader before
//! another replica may take over. On a clean stop the leader does not release the Lease early: the next leader
//! waits for the expiry (bounded by the lease duration).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// The Lease's name (manifests/rbac.yaml grants this one).
pub const LEASE_NAME: &str = "l7mp-control";

/// How to elect.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica (`POD_NAME` from the downward API when set, else `host/pid`).
    pub identity: String,
    /// `leaseDurationSeconds`: how long a Lease not renewed stays held.
    pub duration: Duration,
    /// How often to read/renew/try.
    pub retry: Duration,
}

impl LeaseConfig {
    /// The defaults: 15 s leases, tried every 2 s; the identity from `POD_NAME`, else `replica`.
    pub fn new(namespace: &str, replica: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.to_string(),
            name: LEASE_NAME.to_string(),
            identity: std::env::var("POD_NAME")
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| replica.to_string()),
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

/// What the election says now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Leadership {
    /// Whether this replica holds the Lease.
    pub leader: bool,
    /// Who holds it ("" when nobody or unknown).
    pub holder: String,
    /// `namespace/name` of the Lease.
    pub lease: String,
}

/// A running election; dropping it stops it (without releasing the Lease).
pub struct Election {
    state: watch::Receiver<Leadership>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Election {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Election {
    /// Starts electing with `client`.
    pub fn start(client: kube::Client, config: LeaseConfig) -> Election {
        let lease = format!("{}/{}", config.namespace, config.name);
        let (tx, state) = watch::channel(Leadership {
            lease,
            ..Leadership::default()
        });
        let task = tokio::spawn(run(client, config, tx));
        Election { state, task }
    }

    pub fn state(&self) -> Leadership {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.state.clone()
    }
}

async fn run(client: kube::Client, config: LeaseConfig, tx: watch::Sender<Leadership>) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let config = Arc::new(config);
    // Until when this replica may act as leader without another successful renewal.
    let mut leader_until: Option<tokio::time::Instant> = None;
    loop {
        let started = tokio::time::Instant::now();
        match attempt(&api, &config).await {
            Ok((leader, holder)) => {
                leader_until = leader.then(|| started + config.duration);
                publish(&tx, leader, holder);
            }
            Err(e) => {
                tracing::debug!("leader election: {e}");
                let still = leader_until.is_some_and(|t| tokio::time::Instant::now() < t);
                if !still && tx.borrow().leader {
                    tracing::warn!("leader election: could not renew the Lease in time ({e}); no longer the leader");
                    publish(&tx, false, String::new());
                }
            }
        }
        tokio::time::sleep(config.retry).await;
    }
}

fn publish(tx: &watch::Sender<Leadership>, leader: bool, holder: String) {
    tx.send_if_modified(|s| {
        if s.leader == leader && s.holder == holder {
            return false;
        }
        if s.leader != leader {
            tracing::info!(lease = %s.lease, leader, %holder, "leader election");
        }
        s.leader = leader;
        s.holder = holder;
        true
    });
}

/// One round: read the Lease and renew, take or leave it. Returns whether this replica holds it, and the holder.
async fn attempt(api: &Api<Lease>, config: &LeaseConfig) -> Result<(bool, String), kube::Error> {
    let now = Timestamp::now();
    let seconds = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX).max(1);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok((true, config.identity.clone())),
            // Another replica created it first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok((false, String::new())),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let held_by_me = holder == config.identity;
    if !held_by_me && !holder.is_empty() {
        let duration = spec.lease_duration_seconds.unwrap_or(seconds).max(1);
        let renewed = spec.renew_time.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH);
        let expires = renewed
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(duration.into()))
            .unwrap_or(renewed);
        if expires > now {
            return Ok((false, holder));
        }
    }
    if !held_by_me {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    // `replace` sends the resourceVersion read: a 409 means another replica wrote first.
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok((true, config.identity.clone())),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok((false, holder)),
        Err(e) => Err(e),
    }
}

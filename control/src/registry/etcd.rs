//! The agent registry on etcd, for control-plane replicas that share an etcd store.
//!
//! - Each agent is the key `PREFIX/agents/NODE_ID` with its [`Registration`] as JSON, attached to a lease this
//!   process grants ([`LEASE_TTL`]) and keeps alive. When the process dies its agents vanish within the TTL; an
//!   agent that reconnects to another replica is re-registered there at once (the same key, the new replica's
//!   lease).
//! - A writer task reconciles the published set with etcd: puts what is new or changed, deletes what left (only
//!   while the key is still on this process's lease, so a node that moved to another replica is not deleted).
//!   When etcd cannot be reached it retries; when the lease was lost (etcd was away longer than the TTL) it grants
//!   a new one and writes every agent again.
//! - A reader task lists the prefix and follows it with a watch, relisting after any break, and keeps the view
//!   that [`Registry::agents`] returns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;

use super::{Registration, Registry, merge};
use crate::store::EtcdStore;

/// The lease of a replica's registrations, seconds: how long the agents of a dead replica stay listed.
pub const LEASE_TTL: i64 = 10;
/// How often the lease is renewed.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(3);
/// Bounds every etcd call of the registry.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before retrying after an etcd error, doubling up to the maximum.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The registry of the replicas sharing one etcd store. Its tasks end when it is dropped.
pub struct EtcdRegistry {
    shared: Arc<Shared>,
    /// Dropped with the registry: the tasks see it and end.
    _stop: watch::Sender<()>,
}

struct Shared {
    /// `PREFIX/agents/`.
    prefix: String,
    endpoints: String,
    /// The set this replica serves, as published.
    local: watch::Sender<Vec<Registration>>,
    /// Every replica's agents, as read from etcd.
    remote: Mutex<BTreeMap<String, Registration>>,
    changed: watch::Sender<u64>,
}

impl Shared {
    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

impl EtcdRegistry {
    /// A registry on the cluster and prefix of `store`; starts its tasks (call within a Tokio runtime).
    pub fn new(store: &EtcdStore) -> EtcdRegistry {
        let shared = Arc::new(Shared {
            prefix: format!("{}/agents/", store.prefix()),
            endpoints: store.endpoints().to_string(),
            local: watch::channel(Vec::new()).0,
            remote: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
        });
        let (stop, stopped) = watch::channel(());
        tokio::spawn(write_loop(shared.clone(), store.client(), stopped.clone()));
        tokio::spawn(read_loop(shared.clone(), store.client(), stopped));
        EtcdRegistry { shared, _stop: stop }
    }
}

impl Registry for EtcdRegistry {
    fn publish(&self, local: Vec<Registration>) {
        let changed = self.shared.local.send_if_modified(|cur| {
            let changed = *cur != local;
            *cur = local;
            changed
        });
        if changed {
            self.shared.bump();
        }
    }

    fn agents(&self) -> BTreeMap<String, Registration> {
        let mut all = self.shared.remote.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // This replica's own agents are known here for sure, also while etcd is away.
        for r in self.shared.local.borrow().iter() {
            all.insert(r.node_id.clone(), r.clone());
        }
        all
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }
}

/// Runs an etcd call with [`CALL_TIMEOUT`]; the error as text.
async fn call<T>(
    shared: &Shared,
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("etcd at {}: agent registry: {what}: {e}", shared.endpoints)),
        Err(_) => Err(format!(
            "etcd at {}: agent registry: {what}: no answer within {CALL_TIMEOUT:?}",
            shared.endpoints
        )),
    }
}

/// Keeps etcd's records of this replica's agents equal to the published set.
async fn write_loop(shared: Arc<Shared>, client: Client, mut stopped: watch::Receiver<()>) {
    let mut retry = RETRY_MIN;
    loop {
        match write_session(&shared, &client, &mut stopped).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("{e}; retrying in {retry:?}");
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    _ = stopped.changed() => return,
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// One lease's life: grant it, write every agent, then follow the published set and renew the lease until an error
/// (`Err`: start over with a new lease) or the registry is dropped (`Ok`).
async fn write_session(shared: &Shared, client: &Client, stopped: &mut watch::Receiver<()>) -> Result<(), String> {
    let mut leases = client.lease_client();
    let lease = call(shared, "grant a lease", leases.grant(LEASE_TTL, None)).await?.id();
    let (mut keeper, mut acks) = call(shared, "keep the lease alive", leases.keep_alive(lease)).await?;
    let mut kv = client.kv_client();
    // What is in etcd on our lease: node id → the registration written.
    let mut written: BTreeMap<String, Registration> = BTreeMap::new();
    let mut local = shared.local.subscribe();
    let mut renew = tokio::time::interval(KEEPALIVE_EVERY);
    loop {
        let want: BTreeMap<String, Registration> = local
            .borrow_and_update()
            .iter()
            .map(|r| (r.node_id.clone(), r.clone()))
            .collect();
        for (id, r) in &want {
            if written.get(id) == Some(r) {
                continue;
            }
            let body = serde_json::to_vec(r).map_err(|e| format!("agent registry: {id}: {e}"))?;
            let key = format!("{}{id}", shared.prefix);
            call(
                shared,
                "register an agent",
                kv.put(key, body, Some(PutOptions::new().with_lease(lease))),
            )
            .await?;
            written.insert(id.clone(), r.clone());
        }
        let gone: Vec<String> = written.keys().filter(|id| !want.contains_key(*id)).cloned().collect();
        for id in gone {
            let key = format!("{}{id}", shared.prefix);
            // Only while it is still ours: the node may have moved to another replica meanwhile.
            let txn = Txn::new()
                .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                .and_then([TxnOp::delete(key, None)]);
            call(shared, "unregister an agent", kv.txn(txn)).await?;
            written.remove(&id);
        }
        tokio::select! {
            r = local.changed() => if r.is_err() { break Ok(()) },
            _ = renew.tick() => {
                call(shared, "keep the lease alive", keeper.keep_alive()).await?;
            }
            ack = acks.message() => match ack {
                Ok(Some(a)) if a.ttl() > 0 => {}
                Ok(Some(_)) => break Err(format!("etcd at {}: agent registry: the lease expired", shared.endpoints)),
                Ok(None) => break Err(format!("etcd at {}: agent registry: the lease stream closed", shared.endpoints)),
                Err(e) => break Err(format!("etcd at {}: agent registry: keep-alive: {e}", shared.endpoints)),
            },
            _ = stopped.changed() => {
                // Going away: take our agents with us rather than leaving them for the TTL.
                let _ = tokio::time::timeout(Duration::from_secs(1), leases.revoke(lease)).await;
                break Ok(());
            }
        }
    }
}

/// Keeps the view of every replica's agents: list, then watch; relist after any break.
async fn read_loop(shared: Arc<Shared>, client: Client, mut stopped: watch::Receiver<()>) {
    let mut retry = RETRY_MIN;
    loop {
        let outcome = tokio::select! {
            r = read_session(&shared, &client, &mut retry) => r,
            _ = stopped.changed() => return,
        };
        if let Err(e) = outcome {
            tracing::debug!("{e}; relisting in {retry:?}");
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            _ = stopped.changed() => return,
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

async fn read_session(shared: &Shared, client: &Client, retry: &mut Duration) -> Result<(), String> {
    let mut kv = client.kv_client();
    let listed = call(
        shared,
        "list agents",
        kv.get(shared.prefix.clone(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = listed.header().map_or(0, |h| h.revision());
    let mut view = BTreeMap::new();
    merge(&mut view, listed.kvs().iter().filter_map(|kv| parse(kv.value())));
    replace(shared, view);
    let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut stream = call(
        shared,
        "watch agents",
        client.watch_client().watch(shared.prefix.clone(), Some(options)),
    )
    .await?;
    *retry = RETRY_MIN;
    loop {
        let Some(response) = stream
            .message()
            .await
            .map_err(|e| format!("etcd at {}: agent registry: watch: {e}", shared.endpoints))?
        else {
            return Err(format!(
                "etcd at {}: agent registry: the watch closed",
                shared.endpoints
            ));
        };
        if response.canceled() {
            return Err(format!(
                "etcd at {}: agent registry: the watch was canceled: {}",
                shared.endpoints,
                response.cancel_reason()
            ));
        }
        let mut view = shared.remote.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for ev in response.events() {
            let Some(kv) = ev.kv() else { continue };
            let id = String::from_utf8_lossy(kv.key());
            let Some(id) = id.strip_prefix(shared.prefix.as_str()) else {
                continue;
            };
            match ev.event_type() {
                EventType::Put => {
                    if let Some(r) = parse(kv.value()) {
                        view.insert(r.node_id.clone(), r);
                    }
                }
                EventType::Delete => {
                    view.remove(id);
                }
            }
        }
        replace(shared, view);
    }
}

fn parse(value: &[u8]) -> Option<Registration> {
    match serde_json::from_slice(value) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!("agent registry: skipping a record that is not a registration: {e}");
            None
        }
    }
}

fn replace(shared: &Shared, view: BTreeMap<String, Registration>) {
    let mut cur = shared.remote.lock().unwrap_or_else(|e| e.into_inner());
    if *cur != view {
        *cur = view;
        drop(cur);
        shared.bump();
    }
}

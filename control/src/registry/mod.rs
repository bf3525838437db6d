//! Who is connected, across the control-plane replicas that share a store.
//!
//! Each replica knows the agents that hold an xDS stream to it. The translator needs every agent (a Target's
//! endpoints may be chosen by a selector over agents), and `l7mpctl agents` should show them all, so each replica
//! [publishes](Registry::publish) the set it serves and reads back everyone's ([`Registry::agents`]).
//!
//! - [`LocalRegistry`]: one replica (the embedded store is one process's file): the set published is the set.
//! - [`EtcdRegistry`] (with the etcd store): records under the store's prefix, on a lease this process keeps alive,
//!   so the agents of a replica that dies vanish within the lease's TTL.
//!
//! A registry always includes this replica's own agents, also while the shared store cannot be reached.

pub mod etcd;

pub use etcd::EtcdRegistry;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use l7mp_api::resource::AgentInfo;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::store::{EtcdStore, Store, StoreError, StoreUrl, parse_store_url};

/// What kind of xDS client a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// An l7mp agent: translated for (its labels pick VirtualServices and Targets, its address may be an endpoint),
    /// sent l7mp's own resources.
    #[default]
    Agent,
    /// Any other xDS client, such as a proxyless gRPC library dialing `xds:///NAME`: sent the standard Envoy
    /// resources of the gRPC services, not translated for.
    Grpc,
}

impl NodeKind {
    pub fn is_agent(&self) -> bool {
        *self == NodeKind::Agent
    }

    /// `agent` or `grpc`.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeKind::Agent => "agent",
            NodeKind::Grpc => "grpc",
        }
    }
}

/// One agent (or other xDS client) as registered: what the translator needs, which replica serves it, and since
/// when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    #[serde(rename = "nodeId")]
    pub node_id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::IpAddr>,
    /// The control-plane process serving it (`host/pid`).
    pub replica: String,
    /// When it connected (seconds since the Unix epoch).
    pub since: u64,
    /// An l7mp agent, or a gRPC client (absent in records of older versions: an agent).
    #[serde(default, skip_serializing_if = "NodeKind::is_agent")]
    pub kind: NodeKind,
}

impl Registration {
    /// A registration of `agent`, served by `replica` since now.
    pub fn new(agent: &AgentInfo, kind: NodeKind, replica: &str) -> Self {
        Registration {
            kind,
            node_id: agent.node_id.clone(),
            labels: agent.labels.clone(),
            address: agent.address,
            replica: replica.to_string(),
            since: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// The agent as the translator sees it.
    pub fn agent(&self) -> AgentInfo {
        AgentInfo {
            node_id: self.node_id.clone(),
            labels: self.labels.clone(),
            address: self.address,
        }
    }
}

/// The registry of connected agents across replicas.
pub trait Registry: Send + Sync {
    /// The agents this replica serves now: the whole set, replacing the one published before. Returns at once; a
    /// shared registry writes it in the background (retrying while the store cannot be reached).
    fn publish(&self, local: Vec<Registration>);
    /// Every replica's agents, by node id (this replica's own always included). When two replicas claim a node
    /// (it moved and the old one has not noticed yet), the newer registration wins.
    fn agents(&self) -> BTreeMap<String, Registration>;
    /// A counter that changes whenever [`Registry::agents`] does.
    fn subscribe(&self) -> watch::Receiver<u64>;
}

/// The registry of a single replica: the published set is the whole set.
#[derive(Debug)]
pub struct LocalRegistry {
    agents: Mutex<BTreeMap<String, Registration>>,
    changed: watch::Sender<u64>,
}

impl Default for LocalRegistry {
    fn default() -> Self {
        LocalRegistry {
            agents: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl Registry for LocalRegistry {
    fn publish(&self, local: Vec<Registration>) {
        let next: BTreeMap<String, Registration> = local.into_iter().map(|r| (r.node_id.clone(), r)).collect();
        let mut cur = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        if *cur != next {
            *cur = next;
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn agents(&self) -> BTreeMap<String, Registration> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Opens the store a URL names with the registry that goes with it: an [`EtcdRegistry`] on the same cluster for
/// `etcd://`, a [`LocalRegistry`] otherwise.
pub async fn open(url: &str) -> Result<(Arc<dyn Store>, Arc<dyn Registry>), StoreError> {
    match parse_store_url(url)? {
        StoreUrl::Etcd(u) => {
            let store = EtcdStore::connect(&u).await?;
            let registry = EtcdRegistry::new(&store);
            Ok((Arc::new(store), Arc::new(registry)))
        }
        // One replica's agents only: sharing agents between replicas on Kubernetes is not built yet.
        StoreUrl::Embedded(_) | StoreUrl::Kubernetes(_) => {
            Ok((crate::store::open(url).await?, Arc::new(LocalRegistry::default())))
        }
    }
}

/// Merges registrations from several sources by node id, the newer one winning (ties: the one seen first).
pub fn merge(into: &mut BTreeMap<String, Registration>, more: impl IntoIterator<Item = Registration>) {
    for r in more {
        match into.get(&r.node_id) {
            Some(cur) if cur.since >= r.since => {}
            _ => {
                into.insert(r.node_id.clone(), r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(node: &str, replica: &str, since: u64) -> Registration {
        Registration {
            node_id: node.into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            address: None,
            replica: replica.into(),
            since,
            kind: NodeKind::Agent,
        }
    }

    #[test]
    fn local_publish_replaces_and_signals_only_changes() {
        let r = LocalRegistry::default();
        let rx = r.subscribe();
        r.publish(vec![reg("a", "r1", 1), reg("b", "r1", 1)]);
        assert_eq!(r.agents().keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(*rx.borrow(), 1);
        r.publish(vec![reg("a", "r1", 1), reg("b", "r1", 1)]);
        assert_eq!(*rx.borrow(), 1, "same set: no change signalled");
        r.publish(vec![reg("b", "r1", 1)]);
        assert_eq!(r.agents().keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(*rx.borrow(), 2);
    }

    #[test]
    fn merge_keeps_the_newer_registration() {
        let mut m = BTreeMap::new();
        merge(&mut m, [reg("a", "old", 5), reg("b", "old", 5)]);
        merge(&mut m, [reg("a", "new", 9), reg("b", "new", 1)]);
        assert_eq!(m["a"].replica, "new");
        assert_eq!(m["b"].replica, "old");
    }

    #[test]
    fn registration_json_round_trips() {
        let r = Registration {
            address: Some("10.0.0.7".parse().expect("ip")),
            ..reg("n", "host/1", 3)
        };
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["nodeId"], "n");
        assert_eq!(serde_json::from_value::<Registration>(v).expect("back"), r);
    }
}

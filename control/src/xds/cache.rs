//! The snapshot cache: per node id, the set of resources that node should have.
//!
//! A [`Snapshot`] maps each type URL to a map name → [`XdsResource`]. Every resource carries a
//! version: a stable 64-bit FNV-1a hash of its type URL and encoded body (see [`content_version`]), so a
//! resource whose encoding did not change keeps its version and is never resent. The state-of-the-world
//! `version_info` of a type is derived from the names and versions of the set ([`Snapshot::type_version`]).
//!
//! [`Cache`] keeps one `tokio::sync::watch` channel per node: [`Cache::set_snapshot`] and
//! [`Cache::remove`] wake every stream of that node.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use envoy_types::pb::google::protobuf::Any;
use tokio::sync::watch;

/// 64-bit FNV-1a, written here because std's `DefaultHasher` is not stable across Rust releases and
/// versions must survive a control-plane restart (agents reconnect with `initial_resource_versions`).
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    /// Feeds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Feeds a length-prefixed field (so `("ab","c")` and `("a","bc")` differ).
    pub fn field(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    /// The hash as 16 lowercase hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The version of a resource: FNV-1a over its type URL and encoded body, as 16 hex digits.
///
/// Stable across processes and Rust versions as long as the encoding is: prost encodes
/// `prost_types::Struct` (a `BTreeMap`) deterministically, but messages with protobuf `map` fields
/// generated as `HashMap` (many Envoy messages) are not; give those an explicit version with
/// [`XdsResource::with_version`].
pub fn content_version(type_url: &str, body: &[u8]) -> String {
    let mut h = Fnv1a::default();
    h.field(type_url.as_bytes());
    h.field(body);
    h.hex()
}

/// One xDS resource: a name, a type URL and an encoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsResource {
    /// The resource name (unique per type URL in a snapshot).
    pub name: String,
    /// The type URL, e.g. `type.googleapis.com/l7mp.config.v1.Listener`.
    pub type_url: String,
    /// The body as it goes on the wire (Envoy's `google.protobuf.Any`).
    pub body: Any,
    /// The version (by default [`content_version`] of the body).
    pub version: String,
}

impl XdsResource {
    /// A resource from its type URL and encoded body; the version is the content hash.
    pub fn new(name: impl Into<String>, type_url: impl Into<String>, value: Vec<u8>) -> Self {
        let type_url = type_url.into();
        let version = content_version(&type_url, &value);
        Self {
            name: name.into(),
            body: Any {
                type_url: type_url.clone(),
                value,
            },
            type_url,
            version,
        }
    }

    /// A resource from a prost message with a known type URL (`prost::Name`), e.g. Envoy's.
    pub fn from_message<M: prost::Message + prost::Name>(name: impl Into<String>, msg: &M) -> Self {
        Self::new(name, M::type_url(), msg.encode_to_vec())
    }

    /// A resource from a `prost_types::Any` (the `Any` of `l7mp-protos`).
    pub fn from_prost_any(name: impl Into<String>, any: prost_types::Any) -> Self {
        Self::new(name, any.type_url, any.value)
    }

    /// Replaces the version (for bodies whose encoding is not deterministic).
    #[must_use]
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }
}

/// The resources of one node: type URL → name → resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    types: BTreeMap<String, BTreeMap<String, Arc<XdsResource>>>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a resource.
    pub fn insert(&mut self, res: XdsResource) {
        self.types
            .entry(res.type_url.clone())
            .or_default()
            .insert(res.name.clone(), Arc::new(res));
    }

    /// Builder form of [`Snapshot::insert`].
    #[must_use]
    pub fn with(mut self, res: XdsResource) -> Self {
        self.insert(res);
        self
    }

    /// The resources of one type (`None` when the snapshot has none of it).
    pub fn resources(&self, type_url: &str) -> Option<&BTreeMap<String, Arc<XdsResource>>> {
        self.types.get(type_url)
    }

    /// One resource.
    pub fn get(&self, type_url: &str, name: &str) -> Option<&Arc<XdsResource>> {
        self.types.get(type_url).and_then(|m| m.get(name))
    }

    /// The type URLs that have resources.
    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// The number of resources over all types.
    pub fn len(&self) -> usize {
        self.types.values().map(BTreeMap::len).sum()
    }

    /// Whether there are no resources.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state-of-the-world version of one type: a hash of the names and versions of its set.
    pub fn type_version(&self, type_url: &str) -> String {
        set_version(
            self.types
                .get(type_url)
                .into_iter()
                .flat_map(|m| m.values().map(|r| (r.name.as_str(), r.version.as_str()))),
        )
    }
}

/// The version of a set of `(name, version)` pairs (given in name order).
pub fn set_version<'a>(items: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Fnv1a::default();
    for (n, v) in items {
        h.field(n.as_bytes());
        h.field(v.as_bytes());
    }
    h.hex()
}

/// What a node's watch channel carries: `None` until the node has a snapshot, or after removal.
pub type SnapshotRef = Option<Arc<Snapshot>>;

/// Per-node snapshots with a `watch` channel each.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Mutex<HashMap<String, watch::Sender<SnapshotRef>>>,
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<SnapshotRef>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts/removes).
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the snapshot of a node and wakes its streams (only when it differs from the current one). Nodes may
    /// share one `Arc<Snapshot>` (the control plane gives agents with the same labels the same one).
    pub fn set_snapshot(&self, node_id: &str, snapshot: impl Into<Arc<Snapshot>>) {
        let snapshot = snapshot.into();
        let mut nodes = self.lock();
        match nodes.get(node_id) {
            Some(tx) => {
                tx.send_if_modified(|cur| {
                    let same = cur
                        .as_ref()
                        .is_some_and(|c| Arc::ptr_eq(c, &snapshot) || **c == *snapshot);
                    if !same {
                        *cur = Some(snapshot);
                    }
                    !same
                });
            }
            None => {
                let (tx, _) = watch::channel(Some(snapshot));
                nodes.insert(node_id.to_string(), tx);
            }
        }
    }

    /// Removes a node's snapshot; its streams see `None` (and remove what they sent).
    pub fn remove(&self, node_id: &str) {
        let mut nodes = self.lock();
        if let Some(tx) = nodes.get(node_id) {
            tx.send_replace(None);
            if tx.receiver_count() == 0 {
                nodes.remove(node_id);
            }
        }
    }

    /// The current snapshot of a node.
    pub fn get(&self, node_id: &str) -> SnapshotRef {
        self.lock().get(node_id).and_then(|tx| tx.borrow().clone())
    }

    /// A receiver that sees every change of the node's snapshot.
    pub fn watch(&self, node_id: &str) -> watch::Receiver<SnapshotRef> {
        self.lock()
            .entry(node_id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// The node ids that have a snapshot.
    pub fn nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, tx)| tx.borrow().is_some())
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        // Known FNV-1a 64 vector: "a" -> af63dc4c8601ec8c.
        let mut h = Fnv1a::default();
        h.write(b"a");
        assert_eq!(h.hex(), "af63dc4c8601ec8c");
    }

    #[test]
    fn versions_follow_content() {
        let a = XdsResource::new("a", "t", vec![1, 2]);
        let b = XdsResource::new("a", "t", vec![1, 2]);
        let c = XdsResource::new("a", "t", vec![1, 3]);
        assert_eq!(a.version, b.version);
        assert_ne!(a.version, c.version);
        let s1 = Snapshot::new().with(a);
        let s2 = Snapshot::new().with(c);
        assert_ne!(s1.type_version("t"), s2.type_version("t"));
    }

    #[tokio::test]
    async fn watch_wakes() {
        let cache = Cache::new();
        let mut rx = cache.watch("n");
        assert!(rx.borrow().is_none());
        cache.set_snapshot("n", Snapshot::new().with(XdsResource::new("a", "t", vec![])));
        rx.changed().await.ok();
        assert_eq!(rx.borrow().as_ref().map(|s| s.len()), Some(1));
        cache.remove("n");
        rx.changed().await.ok();
        assert!(rx.borrow().is_none());
    }
}

//! The conformance suite every [`Store`] backend must pass.
//!
//! Each case is a `pub async fn` taking a fresh, empty store and panicking on a violation. A
//! backend's test file runs them all with [`store_conformance_tests!`](crate::store_conformance_tests),
//! one `#[tokio::test]` per case:
//!
//! ```ignore
//! async fn fixture() -> l7mp_control::store::conformance::Fixture { /* a fresh, empty store */ }
//! l7mp_control::store_conformance_tests!(fixture);
//! ```
//!
//! or calls [`run_all`] with a fixture factory. The cases only rely on the [`Store`] contract:
//! revisions are compared for order, never for exact values, so a backend with non-contiguous
//! revisions (Kubernetes' resourceVersion) can pass. A backend may share its revision counter
//! with other users (an etcd cluster where other prefixes write; a fresh etcd is at revision 1,
//! not 0), so "nothing was written" is checked with a watch that stays quiet, not by comparing
//! [`Store::revision`] with an earlier value.
//!
//! A backend that cannot hold every kind and value ([`Store::capabilities`]: the kubernetes store holds the four
//! l7mp kinds, namespaced, as custom resources) runs the same cases through [`adapt`]: the suite's kinds (`A`,
//! `W`, ...) are mapped one-to-one onto the backend's kinds in the order a case first uses them, an empty namespace
//! onto [`CLUSTER_WIDE_NAMESPACE`], and each value is stored inside a minimal valid object of the kind (at a
//! free-form field of its CRD schema) and taken out again on the way back; an object that does not come back
//! exactly as written is handed to the case whole, so the case's comparison fails. Keys the suite means to be
//! invalid are passed through unchanged. The revisions, preconditions, listings and watches are the backend's own.
//! Only `create_revision`, which Kubernetes does not keep, is not checked there.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{BoxFuture, Capabilities, Event, Key, Listing, Precondition, Store, StoreError, Stored, WatchStream};

/// A fresh, empty store and whatever must live as long as it (a temporary directory, a server).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub guard: Box<dyn Any + Send>,
}

/// One conformance case: it takes a fresh, empty store and panics on a violation.
pub type Case = fn(Arc<dyn Store>) -> BoxFuture<'static, ()>;

/// The names and functions of every case, in the order [`run_all`] runs them.
pub const CASES: &[(&str, Case)] = &[
    ("basics", |s| Box::pin(basics(s))),
    ("invalid_keys", |s| Box::pin(invalid_keys(s))),
    ("cas_absent", |s| Box::pin(cas_absent(s))),
    ("cas_revision", |s| Box::pin(cas_revision(s))),
    ("list_filters", |s| Box::pin(list_filters(s))),
    ("revisions_shared", |s| Box::pin(revisions_shared(s))),
    ("values_round_trip", |s| Box::pin(values_round_trip(s))),
    ("watch_from_zero", |s| Box::pin(watch_from_zero(s))),
    ("watch_from_past", |s| Box::pin(watch_from_past(s))),
    ("watch_live", |s| Box::pin(watch_live(s))),
    ("watch_after_list", |s| Box::pin(watch_after_list(s))),
    ("concurrent_writers", |s| Box::pin(concurrent_writers(s))),
    ("slow_watcher", |s| Box::pin(slow_watcher(s))),
    ("compaction", |s| Box::pin(compaction(s))),
];

/// Runs every case, each on a fresh fixture from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Fixture>,
{
    for (name, case) in CASES {
        let fixture = make().await;
        tracing::info!(case = name, "store conformance");
        case(adapt(fixture.store.clone())).await;
        drop(fixture);
    }
}

/// Generates one `#[tokio::test]` per conformance case; `$fixture` is an `async fn() -> Fixture`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($fixture:path) => {
        $crate::store_conformance_tests!(@cases $fixture;
            basics, invalid_keys, cas_absent, cas_revision, list_filters, revisions_shared,
            values_round_trip, watch_from_zero, watch_from_past, watch_live, watch_after_list,
            concurrent_writers, slow_watcher, compaction);
    };
    (@cases $fixture:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let fixture = $fixture().await;
                $crate::store::conformance::$case($crate::store::conformance::adapt(fixture.store.clone())).await;
                drop(fixture);
            }
        )*
    };
    // The same for a fixture that returns `Option<Fixture>`: `None` skips the case (the fixture
    // says why), for backends that need an external server.
    (@optional $fixture:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some(fixture) = $fixture().await else { return };
                $crate::store::conformance::$case($crate::store::conformance::adapt(fixture.store.clone())).await;
                drop(fixture);
            }
        )*
    };
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn key(kind: &str, namespace: &str, name: &str) -> Key {
    Key::new(kind, namespace, name)
}

async fn next_event(watch: &mut WatchStream) -> Event {
    match tokio::time::timeout(TIMEOUT, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("watch failed: {error}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no event within {TIMEOUT:?}"),
    }
}

async fn assert_quiet(watch: &mut WatchStream) {
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(100), watch.next()).await {
        panic!("unexpected watch item {item:?}");
    }
}

/// Asserts that the store's objects saw no write after `revision`.
async fn assert_unwritten(store: &Arc<dyn Store>, revision: u64, what: &str) {
    let mut watch = store.watch(revision).await.expect("watch");
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(100), watch.next()).await {
        panic!("{what}, but a watch from revision {revision} saw {item:?}");
    }
}

fn assert_conflict(result: Result<impl std::fmt::Debug, StoreError>, want_actual: Option<u64>) {
    match result {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, want_actual, "conflict's actual revision"),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Get, put, replace, delete; create_revision kept by replaces; deleting an absent object.
pub async fn basics(store: Arc<dyn Store>) {
    let k = key("VirtualService", "default", "a");
    let r0 = store.revision();
    assert!(
        store.list(None, None).await.expect("list").items.is_empty(),
        "a fresh store is empty"
    );
    assert!(store.get(&k).await.expect("get").is_none());
    let r1 = store.put(&k, json!({"v": 1}), Precondition::None).await.expect("put");
    assert!(r1 > r0);
    assert_eq!(store.revision(), r1);
    let creation = store.capabilities().create_revision;
    let got = store.get(&k).await.expect("get").expect("present");
    assert_eq!(
        (got.key.clone(), got.value.clone(), got.revision),
        (k.clone(), json!({"v": 1}), r1)
    );
    assert!(
        !creation || got.create_revision == r1,
        "create_revision of a new object"
    );
    let r2 = store.put(&k, json!({"v": 2}), Precondition::None).await.expect("put");
    assert!(r2 > r1);
    let got = store.get(&k).await.expect("get").expect("present");
    assert_eq!((got.value, got.revision), (json!({"v": 2}), r2));
    assert!(
        !creation || got.create_revision == r1,
        "a replace keeps create_revision"
    );
    let r3 = store
        .delete(&k, Precondition::None)
        .await
        .expect("delete")
        .expect("deleted");
    assert!(r3 > r2);
    assert!(store.get(&k).await.expect("get").is_none());
    assert_eq!(store.delete(&k, Precondition::None).await.expect("delete absent"), None);
    assert_unwritten(&store, r3, "deleting an absent object writes nothing").await;
    let r4 = store.put(&k, json!(null), Precondition::None).await.expect("put again");
    let got = store.get(&k).await.expect("get").expect("present");
    assert_eq!(got.revision, r4);
    assert!(
        !creation || got.create_revision == r4,
        "a put after a delete creates anew"
    );
}

/// Keys with an empty kind or name, or a `/`, are refused and write nothing.
pub async fn invalid_keys(store: Arc<dyn Store>) {
    let r0 = store.revision();
    for bad in [
        key("", "ns", "n"),
        key("K", "ns", ""),
        key("K/x", "ns", "n"),
        key("K", "a/b", "n"),
    ] {
        let result = store.put(&bad, json!(1), Precondition::None).await;
        assert!(
            matches!(result, Err(StoreError::InvalidKey { .. })),
            "{bad:?}: {result:?}"
        );
        assert!(matches!(store.get(&bad).await, Err(StoreError::InvalidKey { .. })));
    }
    assert_unwritten(&store, r0, "invalid keys write nothing").await;
    store
        .put(&key("K", "", "cluster-wide"), json!(1), Precondition::None)
        .await
        .expect("an empty namespace is fine");
}

/// Create-if-absent.
pub async fn cas_absent(store: Arc<dyn Store>) {
    let k = key("Route", "default", "r");
    let r1 = store
        .put(&k, json!("first"), Precondition::Absent)
        .await
        .expect("create");
    assert_conflict(store.put(&k, json!("second"), Precondition::Absent).await, Some(r1));
    assert_unwritten(&store, r1, "a conflict writes nothing").await;
    assert_eq!(
        store.get(&k).await.expect("get").expect("present").value,
        json!("first")
    );
    assert_conflict(store.delete(&k, Precondition::Absent).await, Some(r1));
    let r2 = store
        .delete(&k, Precondition::None)
        .await
        .expect("delete")
        .expect("deleted");
    store
        .put(&k, json!("again"), Precondition::Absent)
        .await
        .expect("create after delete");
    assert!(store.revision() > r2);
}

/// Compare-and-swap on the revision, for puts and deletes.
pub async fn cas_revision(store: Arc<dyn Store>) {
    let k = key("Target", "ns", "t");
    assert_conflict(store.put(&k, json!(0), Precondition::Revision(1)).await, None);
    let r1 = store.put(&k, json!(1), Precondition::None).await.expect("put");
    let r2 = store
        .put(&k, json!(2), Precondition::Revision(r1))
        .await
        .expect("cas put");
    assert_conflict(store.put(&k, json!(3), Precondition::Revision(r1)).await, Some(r2));
    assert_conflict(store.delete(&k, Precondition::Revision(r1)).await, Some(r2));
    assert_unwritten(&store, r2, "a conflict writes nothing").await;
    let got = store.get(&k).await.expect("get").expect("present");
    assert_eq!((got.value, got.revision), (json!(2), r2));
    let r3 = store
        .delete(&k, Precondition::Revision(r2))
        .await
        .expect("cas delete")
        .expect("deleted");
    assert!(r3 > r2);
    assert_conflict(store.delete(&k, Precondition::Revision(r2)).await, None);
}

/// Listing by kind, namespace, both, neither; ordered by key; with the store's revision.
pub async fn list_filters(store: Arc<dyn Store>) {
    let keys = [
        key("A", "ns1", "x"),
        key("A", "ns1", "y"),
        key("A", "ns2", "x"),
        key("AB", "ns1", "x"),
        key("B", "ns1", "z"),
        key("B", "", "w"),
    ];
    for (i, k) in keys.iter().enumerate().rev() {
        store.put(k, json!(i), Precondition::None).await.expect("put");
    }
    store
        .put(&key("B", "ns2", "gone"), json!(0), Precondition::None)
        .await
        .expect("put");
    store
        .delete(&key("B", "ns2", "gone"), Precondition::None)
        .await
        .expect("delete");
    let names = |listing: &super::Listing| listing.items.iter().map(|s| s.key.clone()).collect::<Vec<_>>();
    let all = store.list(None, None).await.expect("list");
    assert_eq!(all.revision, store.revision());
    let mut sorted = keys.to_vec();
    sorted.sort();
    assert_eq!(names(&all), sorted);
    for item in &all.items {
        let i = keys.iter().position(|k| *k == item.key).expect("listed key was put");
        assert_eq!(item.value, json!(i));
    }
    assert_eq!(
        names(&store.list(Some("A"), None).await.expect("list")),
        keys[..3].to_vec()
    );
    assert_eq!(
        names(&store.list(Some("A"), Some("ns1")).await.expect("list")),
        keys[..2].to_vec()
    );
    assert_eq!(
        names(&store.list(None, Some("ns1")).await.expect("list")),
        vec![keys[0].clone(), keys[1].clone(), keys[3].clone(), keys[4].clone()]
    );
    assert_eq!(
        names(&store.list(Some("B"), Some("")).await.expect("list")),
        vec![keys[5].clone()]
    );
    assert!(store.list(Some("C"), None).await.expect("list").items.is_empty());
}

/// One revision sequence shared by every key, strictly increasing.
pub async fn revisions_shared(store: Arc<dyn Store>) {
    let mut last = 0;
    for i in 0..20 {
        let k = key("K", "ns", &format!("k{}", i % 3));
        let revision = if i % 5 == 4 {
            store
                .delete(&k, Precondition::None)
                .await
                .expect("delete")
                .unwrap_or(last)
        } else {
            store.put(&k, json!(i), Precondition::None).await.expect("put")
        };
        assert!(revision >= last);
        if revision == last {
            continue;
        }
        assert!(revision > last, "revision {revision} after {last}");
        assert_eq!(store.revision(), revision);
        last = revision;
    }
}

fn odd_values() -> Vec<Value> {
    vec![
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.5),
        json!(1.0e300),
        json!(-2.25e-10),
        json!(""),
        json!("ünïcödé ✓ \u{1F600} \"quoted\" \\ \n\t\u{0}"),
        json!([]),
        json!({}),
        json!([1, "two", [3], {"four": 4}, null]),
        json!({"z": 1, "a": {"nested": [{"deep": {"deeper": [true, false]}}]}, "m": "x".repeat(100_000)}),
    ]
}

/// Values come back exactly as put, through get, list and watch.
pub async fn values_round_trip(store: Arc<dyn Store>) {
    let mut watch = store.watch(0).await.expect("watch");
    for (i, value) in odd_values().into_iter().enumerate() {
        let k = key("V", "ns", &format!("v{i:02}"));
        store.put(&k, value.clone(), Precondition::None).await.expect("put");
        assert_eq!(
            store.get(&k).await.expect("get").expect("present").value,
            value,
            "get of {k}"
        );
        match next_event(&mut watch).await {
            Event::Put(stored) => assert_eq!(stored.value, value, "watch of {k}"),
            other => panic!("expected a put, got {other:?}"),
        }
    }
    let listing = store.list(Some("V"), None).await.expect("list");
    let values: Vec<Value> = listing.items.into_iter().map(|s| s.value).collect();
    assert_eq!(values, odd_values());
}

/// A few writes of several keys, returning the events they should produce.
async fn write_some(store: &Arc<dyn Store>, n: usize) -> Vec<Event> {
    let mut events = Vec::new();
    for i in 0..n {
        let k = key("W", "ns", &format!("k{}", i % 4));
        if i % 3 == 2 {
            if let Some(revision) = store.delete(&k, Precondition::None).await.expect("delete") {
                events.push(Event::Delete { key: k, revision });
            }
        } else {
            store.put(&k, json!({"i": i}), Precondition::None).await.expect("put");
            events.push(Event::Put(store.get(&k).await.expect("get").expect("present")));
        }
    }
    events
}

/// Watching from 0 replays every event (puts and deletes), then live ones.
pub async fn watch_from_zero(store: Arc<dyn Store>) {
    let expected = write_some(&store, 12).await;
    let mut watch = store.watch(0).await.expect("watch");
    for want in &expected {
        assert_eq!(&next_event(&mut watch).await, want);
    }
    assert_quiet(&mut watch).await;
    let more = write_some(&store, 6).await;
    for want in &more {
        assert_eq!(&next_event(&mut watch).await, want);
    }
}

/// Watching from a past revision replays exactly the events after it.
pub async fn watch_from_past(store: Arc<dyn Store>) {
    let expected = write_some(&store, 12).await;
    let from = expected[4].revision();
    let mut watch = store.watch(from).await.expect("watch");
    for want in &expected[5..] {
        assert_eq!(&next_event(&mut watch).await, want);
    }
    assert_quiet(&mut watch).await;
}

/// Watching from the current revision sees only new writes, including deletes.
pub async fn watch_live(store: Arc<dyn Store>) {
    write_some(&store, 5).await;
    let mut watch = store.watch(store.revision()).await.expect("watch");
    assert_quiet(&mut watch).await;
    let k = key("L", "ns", "live");
    let r1 = store.put(&k, json!("x"), Precondition::None).await.expect("put");
    match next_event(&mut watch).await {
        Event::Put(stored) => assert_eq!((stored.key, stored.value, stored.revision), (k.clone(), json!("x"), r1)),
        other => panic!("expected a put, got {other:?}"),
    }
    let r2 = store
        .delete(&k, Precondition::None)
        .await
        .expect("delete")
        .expect("deleted");
    assert_eq!(next_event(&mut watch).await, Event::Delete { key: k, revision: r2 });
}

/// The list-then-watch pattern loses nothing written in between.
pub async fn watch_after_list(store: Arc<dyn Store>) {
    write_some(&store, 6).await;
    let listing = store.list(None, None).await.expect("list");
    let k = key("L", "ns", "between");
    let revision = store.put(&k, json!(1), Precondition::None).await.expect("put");
    let mut watch = store.watch(listing.revision).await.expect("watch");
    let event = next_event(&mut watch).await;
    assert_eq!((event.key(), event.revision()), (&k, revision));
}

/// Many concurrent writers: a watcher sees every write's revision exactly once, in order.
pub async fn concurrent_writers(store: Arc<dyn Store>) {
    const TASKS: usize = 4;
    const PUTS: usize = 200;
    let mut watch = store.watch(store.revision()).await.expect("watch");
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..PUTS {
                let k = key("C", &format!("t{t}"), &format!("k{}", i % 10));
                revisions.push(store.put(&k, json!([t, i]), Precondition::None).await.expect("put"));
            }
            revisions
        }));
    }
    let mut written = Vec::new();
    for task in tasks {
        let revisions = task.await.expect("writer task");
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "one writer's revisions increase"
        );
        written.extend(revisions);
    }
    written.sort_unstable();
    let mut seen = Vec::new();
    for _ in 0..written.len() {
        seen.push(next_event(&mut watch).await.revision());
    }
    assert_eq!(seen, written, "the watcher sees every write once, in order");
    assert_quiet(&mut watch).await;
}

/// A watcher that is not read does not block writers; read later, it either catches up without a
/// gap or reports `Compacted`.
pub async fn slow_watcher(store: Arc<dyn Store>) {
    let mut watch = store.watch(0).await.expect("watch");
    let k = key("S", "ns", "slow");
    let mut written = Vec::new();
    let writes = async {
        for i in 0..3000 {
            written.push(store.put(&k, json!(i), Precondition::None).await.expect("put"));
        }
    };
    tokio::time::timeout(Duration::from_secs(120), writes)
        .await
        .expect("writers were blocked by an idle watcher");
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        match tokio::time::timeout(TIMEOUT, watch.next())
            .await
            .expect("watch stalled")
        {
            Some(Ok(event)) => seen.push(event.revision()),
            Some(Err(StoreError::Compacted { .. })) => {
                assert_eq!(seen[..], written[..seen.len()], "no gap before the compaction error");
                return;
            }
            Some(Err(error)) => panic!("watch failed: {error}"),
            None => panic!("watch ended"),
        }
    }
    assert_eq!(seen, written);
}

/// After compacting, watching from before the compacted revision fails with `Compacted`; from it
/// on works. Skipped for backends that return `Unsupported`.
pub async fn compaction(store: Arc<dyn Store>) {
    let events = write_some(&store, 12).await;
    let at = events[3].revision();
    match store.compact(at).await {
        Err(StoreError::Unsupported { .. }) => return,
        other => other.expect("compact"),
    }
    let before = events[1].revision();
    match store.watch(before).await {
        Err(StoreError::Compacted { requested, compacted }) => {
            assert_eq!(requested, before);
            assert!(compacted >= at);
        }
        Err(error) => panic!("expected Compacted, got {error}"),
        Ok(_) => panic!("expected Compacted, got a watch"),
    }
    let mut watch = store.watch(at).await.expect("watch from the compacted revision");
    for want in &events[4..] {
        assert_eq!(&next_event(&mut watch).await, want);
    }
    // Objects survive compaction.
    assert_eq!(store.list(None, None).await.expect("list").revision, store.revision());
}

/// The namespace that stands for the empty one on backends without cluster-wide objects.
pub const CLUSTER_WIDE_NAMESPACE: &str = "cluster-wide";

/// The namespaces the suite uses, for backends where a namespace must exist first (the Kubernetes fake).
pub const NAMESPACES: &[&str] = &[
    "default",
    "ns",
    "ns1",
    "ns2",
    "t0",
    "t1",
    "t2",
    "t3",
    CLUSTER_WIDE_NAMESPACE,
];

/// The store the cases run on: `store` itself when it holds anything, else an [`Adapted`] view of it.
pub fn adapt(store: Arc<dyn Store>) -> Arc<dyn Store> {
    let caps = store.capabilities();
    if caps.kinds.is_none() && caps.cluster_wide && caps.any_value {
        return store;
    }
    Arc::new(Adapted {
        inner: store,
        caps,
        kinds: Arc::new(Mutex::new(BTreeMap::new())),
    })
}

/// A backend seen through the suite's kinds, namespaces and values (see the module's documentation).
pub struct Adapted {
    inner: Arc<dyn Store>,
    caps: Capabilities,
    /// The suite's kind → the backend's, in the order of first use.
    kinds: Arc<Mutex<BTreeMap<String, &'static str>>>,
}

impl Adapted {
    fn kind(&self, kind: &str) -> String {
        let Some(available) = self.caps.kinds else {
            return kind.to_string();
        };
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = kinds.get(kind) {
            return k.to_string();
        }
        let used: Vec<&str> = kinds.values().copied().collect();
        let Some(free) = available.iter().find(|k| !used.contains(k)) else {
            panic!("the case uses more kinds than the backend holds ({available:?}); {kind:?} has none left")
        };
        kinds.insert(kind.to_string(), free);
        free.to_string()
    }

    fn suite_kind(&self, kind: &str) -> String {
        let kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        kinds
            .iter()
            .find(|(_, k)| **k == kind)
            .map_or_else(|| kind.to_string(), |(suite, _)| suite.clone())
    }

    fn namespace(&self, namespace: &str) -> String {
        if namespace.is_empty() && !self.caps.cluster_wide {
            CLUSTER_WIDE_NAMESPACE.to_string()
        } else {
            namespace.to_string()
        }
    }

    /// The backend's key for one of the suite's; keys meant to be invalid stay as they are.
    fn key(&self, key: &Key) -> Key {
        if key.validate().is_err() {
            return key.clone();
        }
        Key::new(self.kind(&key.kind), self.namespace(&key.namespace), &key.name)
    }

    fn suite_key(&self, key: &Key) -> Key {
        let namespace = if key.namespace == CLUSTER_WIDE_NAMESPACE && !self.caps.cluster_wide {
            String::new()
        } else {
            key.namespace.clone()
        };
        Key::new(self.suite_kind(&key.kind), namespace, &key.name)
    }

    fn value(&self, key: &Key, value: Value) -> Value {
        if self.caps.any_value {
            return value;
        }
        wrap(key, value)
    }

    fn suite_value(&self, key: &Key, value: Value) -> Value {
        if self.caps.any_value {
            return value;
        }
        unwrap(key, &value).unwrap_or(value)
    }

    fn stored(&self, s: Stored) -> Stored {
        Stored {
            value: self.suite_value(&s.key, s.value),
            key: self.suite_key(&s.key),
            ..s
        }
    }

    fn error(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Conflict { key, expected, actual } => StoreError::Conflict {
                key: self.suite_key(&key),
                expected,
                actual,
            },
            other => other,
        }
    }
}

/// A minimal valid l7mp object of `key`'s kind holding `value` in a free-form field of its CRD schema (in a
/// one-element array, so that even `null` is an ordinary array item).
fn wrap(key: &Key, value: Value) -> Value {
    let spec = match key.kind.as_str() {
        "VirtualService" => json!({"listener": {"spec": {"conformance": [value]}}}),
        "Target" => json!({"cluster": {"spec": {"conformance": [value]}}}),
        "Route" => json!({"destination": [value]}),
        _ => json!({"virtualService": "vs", "action": {}, "match": [value]}),
    };
    json!({
        "apiVersion": "l7mp.io/v1",
        "kind": key.kind,
        "metadata": {"name": key.name, "namespace": key.namespace, "labels": {}},
        "spec": spec,
    })
}

/// The value [`wrap`] put into `object`, if `object` is exactly what it made.
fn unwrap(key: &Key, object: &Value) -> Option<Value> {
    let slot = match key.kind.as_str() {
        "VirtualService" => object.pointer("/spec/listener/spec/conformance/0"),
        "Target" => object.pointer("/spec/cluster/spec/conformance/0"),
        "Route" => object.pointer("/spec/destination/0"),
        _ => object.pointer("/spec/match/0"),
    }?;
    (wrap(key, slot.clone()) == *object).then(|| slot.clone())
}

impl Store for Adapted {
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(async move {
            let inner = self.key(key);
            Ok(self
                .inner
                .get(&inner)
                .await
                .map_err(|e| self.error(e))?
                .map(|s| self.stored(s)))
        })
    }

    fn put<'a>(&'a self, key: &'a Key, value: Value, pre: Precondition) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let inner = self.key(key);
            let value = self.value(&inner, value);
            self.inner.put(&inner, value, pre).await.map_err(|e| self.error(e))
        })
    }

    fn delete<'a>(&'a self, key: &'a Key, pre: Precondition) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let inner = self.key(key);
            self.inner.delete(&inner, pre).await.map_err(|e| self.error(e))
        })
    }

    fn list<'a>(
        &'a self,
        kind: Option<&'a str>,
        namespace: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Listing, StoreError>> {
        Box::pin(async move {
            let kind = kind.map(|k| self.kind(k));
            let namespace = namespace.map(|n| self.namespace(n));
            let listing = self.inner.list(kind.as_deref(), namespace.as_deref()).await?;
            let mut items: Vec<Stored> = listing.items.into_iter().map(|s| self.stored(s)).collect();
            // Ordered by the suite's keys.
            items.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(Listing {
                items,
                revision: listing.revision,
            })
        })
    }

    fn watch(&self, from_revision: u64) -> BoxFuture<'_, Result<WatchStream, StoreError>> {
        Box::pin(async move {
            let events = self.inner.watch(from_revision).await?;
            // The same mapping (a kind the case uses after opening the watch included).
            let me = Adapted {
                inner: self.inner.clone(),
                caps: self.caps,
                kinds: self.kinds.clone(),
            };
            Ok(Box::pin(events.map(move |item| {
                item.map(|event| match event {
                    Event::Put(s) => Event::Put(me.stored(s)),
                    Event::Delete { key, revision } => Event::Delete {
                        key: me.suite_key(&key),
                        revision,
                    },
                })
            })) as WatchStream)
        })
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.compact(revision)
    }

    fn revision(&self) -> u64 {
        self.inner.revision()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_revision: self.caps.create_revision,
            ..Capabilities::ANY
        }
    }
}

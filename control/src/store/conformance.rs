//! The conformance suite every store backend must pass (the embedded one here; etcd and Kubernetes later): call
//! [`run_all`] with a function that makes a fresh, empty store. Each check panics with what it expected.

use super::{Event, Key, Precondition, Store, StoreError};
use futures_util::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Runs every check, each on a fresh store from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    basics(make().await).await;
    compare_and_swap(make().await).await;
    listing(make().await).await;
    watch_from_the_past_and_live(make().await).await;
    watch_under_concurrent_writers(make().await).await;
}

fn k(kind: &str, ns: &str, name: &str) -> Key {
    Key::new(kind, ns, name)
}

async fn next(w: &mut super::WatchStream) -> Event {
    match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Get, put, delete; values round-trip exactly; revisions grow and are shared by all keys.
pub async fn basics(s: Arc<dyn Store>) {
    let a = k("Target", "default", "a");
    assert_eq!(s.get(&a).await.expect("get"), None);
    let v = json!({"spec": {"port": 9001, "ratio": 0.25, "list": [1, "x", null, {"deep": true}]}, "name": "ä/ö"});
    let r1 = s.put(&a, v.clone(), Precondition::None).await.expect("put");
    let got = s.get(&a).await.expect("get").expect("present");
    assert_eq!((got.value, got.revision, got.create_revision), (v.clone(), r1, r1));
    let r2 = s
        .put(&k("Route", "default", "b"), json!(1), Precondition::None)
        .await
        .expect("put");
    assert!(r2 > r1, "revisions must grow across keys: {r1} then {r2}");
    let r3 = s.put(&a, json!({"v": 2}), Precondition::None).await.expect("put");
    let got = s.get(&a).await.expect("get").expect("present");
    assert_eq!(
        (got.revision, got.create_revision),
        (r3, r1),
        "create_revision stays, revision moves"
    );
    assert_eq!(s.revision(), r3);
    let d = s.delete(&a, Precondition::None).await.expect("delete");
    assert!(d.is_some_and(|d| d > r3));
    assert_eq!(s.get(&a).await.expect("get"), None);
    assert_eq!(
        s.delete(&a, Precondition::None).await.expect("delete"),
        None,
        "deleting nothing"
    );
    let weird = k("Rule", "ns/with/slashes", "a%2Fb");
    s.put(&weird, json!("w"), Precondition::None).await.expect("put");
    assert_eq!(s.get(&weird).await.expect("get").map(|o| o.key), Some(weird));
}

/// Create-only and compare-and-swap writes.
pub async fn compare_and_swap(s: Arc<dyn Store>) {
    let a = k("Target", "default", "a");
    let r1 = s.put(&a, json!(1), Precondition::Absent).await.expect("create");
    match s.put(&a, json!(2), Precondition::Absent).await {
        Err(StoreError::Conflict {
            expected: None,
            actual: Some(r),
            ..
        }) => assert_eq!(r, r1),
        other => panic!("create over an existing object: {other:?}"),
    }
    let r2 = s.put(&a, json!(2), Precondition::Revision(r1)).await.expect("cas");
    match s.put(&a, json!(3), Precondition::Revision(r1)).await {
        Err(StoreError::Conflict {
            expected: Some(e),
            actual: Some(r),
            ..
        }) => assert_eq!((e, r), (r1, r2)),
        other => panic!("a stale CAS: {other:?}"),
    }
    assert!(matches!(
        s.delete(&a, Precondition::Revision(r1)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(
        s.delete(&a, Precondition::Revision(r2))
            .await
            .expect("cas delete")
            .is_some()
    );
    assert!(matches!(
        s.put(&a, json!(4), Precondition::Revision(r2)).await,
        Err(StoreError::Conflict { actual: None, .. })
    ));
    assert_eq!(s.get(&a).await.expect("get"), None, "a failed write changed something");
}

/// Listing by kind and namespace, sorted, with the store revision.
pub async fn listing(s: Arc<dyn Store>) {
    for (kind, ns, name) in [
        ("Target", "b", "x"),
        ("Target", "a", "y"),
        ("Route", "a", "z"),
        ("Target", "a", "a"),
    ] {
        s.put(&k(kind, ns, name), json!(name), Precondition::None)
            .await
            .expect("put");
    }
    let (all, rev) = s.list(None, None).await.expect("list");
    assert_eq!(all.len(), 4);
    assert_eq!(rev, s.revision());
    let (t, _) = s.list(Some("Target"), None).await.expect("list");
    let names: Vec<String> = t.iter().map(|o| o.key.to_string()).collect();
    assert_eq!(names, ["Target/a/a", "Target/a/y", "Target/b/x"]);
    let (ta, _) = s.list(Some("Target"), Some("a")).await.expect("list");
    assert_eq!(ta.len(), 2);
    let (none, _) = s.list(Some("Rule"), None).await.expect("list");
    assert!(none.is_empty());
}

/// A watch from a past revision replays what came after it, then live changes; from 0 it replays everything kept.
pub async fn watch_from_the_past_and_live(s: Arc<dyn Store>) {
    let a = k("Target", "default", "a");
    let r1 = s.put(&a, json!(1), Precondition::None).await.expect("put");
    let r2 = s.put(&a, json!(2), Precondition::None).await.expect("put");
    let mut w = s.watch(r1).await.expect("watch");
    match next(&mut w).await {
        Event::Put(o) => assert_eq!((o.revision, o.value), (r2, json!(2))),
        other => panic!("{other:?}"),
    }
    let r3 = s
        .delete(&a, Precondition::None)
        .await
        .expect("delete")
        .expect("existed");
    assert_eq!(
        next(&mut w).await,
        Event::Delete {
            key: a.clone(),
            revision: r3
        }
    );
    let mut all = s.watch(0).await.expect("watch from 0");
    let revs: Vec<u64> = [next(&mut all).await, next(&mut all).await, next(&mut all).await]
        .iter()
        .map(Event::revision)
        .collect();
    assert_eq!(revs, [r1, r2, r3]);
    let mut now = s.watch(s.revision()).await.expect("watch now");
    let quiet = tokio::time::timeout(Duration::from_millis(100), now.next()).await;
    assert!(quiet.is_err(), "a watch from the current revision replayed something");
}

/// Four writers, 200 writes each: a watcher sees every revision exactly once, in order.
pub async fn watch_under_concurrent_writers(s: Arc<dyn Store>) {
    let start = s.revision();
    let mut w = s.watch(start).await.expect("watch");
    let mut tasks = Vec::new();
    for t in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                s.put(
                    &k("Target", "w", &format!("t{t}-{}", i % 7)),
                    json!(i),
                    Precondition::None,
                )
                .await
                .expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let mut expect = start + 1;
    while expect <= start + 800 {
        let e = next(&mut w).await;
        assert_eq!(e.revision(), expect, "a gap or a duplicate in the watch");
        expect += 1;
    }
    assert_eq!(s.revision(), start + 800);
}

//! The store conformance suite on the embedded backend, plus its own tests: persistence across
//! reopening, the history bound, open errors, store URLs.

use std::sync::Arc;

use futures_util::StreamExt;
use l7mp_control::store::conformance::Fixture;
use l7mp_control::store::{
    self, EmbeddedOptions, EmbeddedStore, Event, Key, Precondition, Store, StoreError, StoreUrl, parse_store_url,
};
use serde_json::json;

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    Fixture {
        store: Arc::new(store),
        guard: Box::new(dir),
    }
}

l7mp_control::store_conformance_tests!(fixture);

#[tokio::test]
async fn survives_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let k = Key::new("VirtualService", "default", "a");
    let (r1, r2) = {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let r1 = store
            .put(&k, json!({"x": [1, 2]}), Precondition::None)
            .await
            .expect("put");
        let gone = Key::new("VirtualService", "default", "gone");
        store.put(&gone, json!(1), Precondition::None).await.expect("put");
        let r2 = store
            .delete(&gone, Precondition::None)
            .await
            .expect("delete")
            .expect("deleted");
        (r1, r2)
    };
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(store.revision(), r2, "the revision survives");
    let got = store.get(&k).await.expect("get").expect("present");
    assert_eq!(
        (got.value, got.revision, got.create_revision),
        (json!({"x": [1, 2]}), r1, r1)
    );
    assert_eq!(store.list(None, None).await.expect("list").items.len(), 1);
    // The history survives too: a watch from before the restart replays it.
    let mut watch = store.watch(0).await.expect("watch");
    let revisions: Vec<u64> = (&mut watch)
        .take(3)
        .map(|e| e.expect("event").revision())
        .collect()
        .await;
    assert_eq!(revisions, vec![r1, r1 + 1, r2]);
    let r3 = store
        .put(&k, json!(2), Precondition::Revision(r1))
        .await
        .expect("cas after reopen");
    assert!(r3 > r2, "revisions keep increasing after a restart");
    match watch.next().await {
        Some(Ok(Event::Put(stored))) => assert_eq!(stored.revision, r3),
        other => panic!("expected the live put, got {other:?}"),
    }
}

#[tokio::test]
async fn history_is_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open_with(
        dir.path(),
        EmbeddedOptions {
            history: 5,
            watch_buffer: 4,
        },
    )
    .expect("open");
    let k = Key::new("K", "ns", "n");
    for i in 0..20 {
        store.put(&k, json!(i), Precondition::None).await.expect("put");
    }
    match store.watch(10).await {
        Err(StoreError::Compacted {
            requested: 10,
            compacted: 15,
        }) => {}
        Err(error) => panic!("unexpected error {error}"),
        Ok(_) => panic!("a watch from a compacted revision"),
    }
    let watch = store.watch(15).await.expect("watch within the history");
    let revisions: Vec<u64> = watch.take(5).map(|e| e.expect("event").revision()).collect().await;
    assert_eq!(revisions, vec![16, 17, 18, 19, 20]);
}

#[tokio::test]
async fn lagging_watcher_gets_compacted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open_with(
        dir.path(),
        EmbeddedOptions {
            history: 5,
            watch_buffer: 2,
        },
    )
    .expect("open");
    let k = Key::new("K", "ns", "n");
    let mut watch = store.watch(0).await.expect("watch");
    for i in 0..20 {
        store.put(&k, json!(i), Precondition::None).await.expect("put");
    }
    let first = watch.next().await.expect("an item");
    assert!(
        matches!(first, Err(StoreError::Compacted { requested: 0, .. })),
        "{first:?}"
    );
    assert!(watch.next().await.is_none(), "the watch ends after the error");
}

#[tokio::test]
async fn watch_ends_when_store_dropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let mut watch = store.watch(0).await.expect("watch");
    drop(store);
    assert!(watch.next().await.is_none());
    EmbeddedStore::open(dir.path()).expect("reopen once the watcher's store is gone");
}

#[test]
fn open_twice_names_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _store = EmbeddedStore::open(dir.path()).expect("open");
    let error = EmbeddedStore::open(dir.path()).expect_err("a second open fails");
    let message = error.to_string();
    assert!(matches!(error, StoreError::Open { .. }), "{message}");
    assert!(
        message.contains(&dir.path().join(store::embedded::DB_FILE).display().to_string()),
        "{message}"
    );
}

#[test]
fn open_unwritable_dir_names_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let error = EmbeddedStore::open(&file.join("sub")).expect_err("cannot create a directory under a file");
    assert!(error.to_string().contains("a-file"), "{error}");
}

#[tokio::test]
async fn store_urls() {
    assert_eq!(
        parse_store_url("embedded:./data").expect("parse"),
        StoreUrl::Embedded("./data".into())
    );
    assert_eq!(
        parse_store_url("embedded:///var/lib/l7mp").expect("parse"),
        StoreUrl::Embedded("/var/lib/l7mp".into())
    );
    assert_eq!(
        parse_store_url(store::DEFAULT_STORE_URL).expect("parse"),
        StoreUrl::Embedded("./l7mp-data".into())
    );
    for (url, says) in [
        ("etcd://localhost", "no port"),
        ("kubernetes:?nope=1", "unknown option"),
        ("embedded:", "directory"),
        ("./data", "SCHEME"),
        ("mysql://x", "unknown"),
    ] {
        let error = parse_store_url(url).expect_err("an error");
        assert!(error.to_string().contains(says), "{url}: {error}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let opened = store::open(&format!("embedded:{}", dir.path().display()))
        .await
        .expect("open by URL");
    assert_eq!(opened.revision(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_in_one_test() {
    l7mp_control::store::conformance::run_all(fixture).await;
}

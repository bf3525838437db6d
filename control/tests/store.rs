//! The store conformance suite on the embedded backend, and what only a disk store must do: keep everything
//! across a reopen, refuse a second opener, say which path it cannot open.

#![allow(clippy::unwrap_used)]

use l7mp_control::store::embedded::EmbeddedStore;
use l7mp_control::store::{Key, Precondition, Store, StoreError, conformance, open_url};
use serde_json::json;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        dirs.lock().unwrap().push(dir);
        async move { Arc::new(store) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test]
async fn embedded_store_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("embedded:{}", dir.path().display());
    let k = Key::new("VirtualService", "default", "gw");
    let rev = {
        let s = open_url(&url).await.unwrap();
        s.put(&k, json!({"spec": {"x": 1}}), Precondition::None).await.unwrap()
    };
    let s = open_url(&url).await.unwrap();
    assert_eq!(s.revision(), rev);
    let got = s.get(&k).await.unwrap().unwrap();
    assert_eq!((got.value, got.revision), (json!({"spec": {"x": 1}}), rev));
    // The history survives too: a watch from before the write replays it.
    use futures_util::StreamExt;
    let mut w = s.watch(0).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision(), rev);
    // New writes continue the revisions.
    assert!(s.put(&k, json!(2), Precondition::Revision(rev)).await.unwrap() > rev);
}

#[tokio::test]
async fn bad_urls_and_paths_are_named() {
    let e = open_url("redis://x").await.err().unwrap().to_string();
    assert!(e.contains("embedded:DIR"), "{e}");
    let e = open_url("etcd://127.0.0.1:2379").await.err().unwrap().to_string();
    assert!(e.contains("later release"), "{e}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let e = open_url(&format!("embedded:{}/sub", file.path().display()))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, StoreError::Open { .. }), "{e}");
    assert!(e.to_string().contains(&file.path().display().to_string()), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_before_the_kept_history_is_told_to_relist() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open_with_history(dir.path(), 20).unwrap();
    let k = Key::new("Target", "default", "t");
    for i in 0..25 {
        s.put(&k, json!(i), Precondition::None).await.unwrap();
    }
    match s.watch(2).await {
        Err(StoreError::Compacted { requested: 2, oldest }) => assert_eq!(oldest, 6),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a watch from a compacted revision started"),
    }
    assert!(s.watch(5).await.is_ok(), "the oldest kept revision can be resumed from");
}

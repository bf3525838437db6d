//! The store conformance suite on the kubernetes backend against the in-repo fake API server (`l7mp-kube-fake`,
//! docs/kubernetes-fake.md), plus what only Kubernetes has: the four kinds only, objects visible as custom
//! resources, a watch across broken connections, and `410 Gone` → `Compacted`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::kube::{fake, l7mp, store};
use futures_util::StreamExt;
use l7mp_control::store::conformance::{CASES, Fixture};
use l7mp_control::store::{Event, Key, Precondition, Store, StoreError, WatchStream};
use serde_json::{Value, json};

/// A fresh fake API server for each case; bookmarks every 50 ms so that merged watches move quickly.
async fn fixture() -> Fixture {
    let fake = fake(Duration::from_millis(50));
    Fixture {
        store: store(&fake),
        guard: Box::new(fake),
    }
}

l7mp_control::store_conformance_tests!(fixture);

#[test]
fn every_conformance_case_runs() {
    // The macro above runs the full list; this fails when a case is added to CASES but not to the macro.
    assert_eq!(CASES.len(), 14);
}

fn route(name: &str, destination: &str) -> Value {
    json!({"apiVersion": "l7mp.io/v1", "kind": "Route",
           "metadata": {"name": name, "namespace": "default", "labels": {"app": "x"}},
           "spec": {"destination": destination}})
}

async fn next(watch: &mut WatchStream) -> Result<Event, StoreError> {
    match tokio::time::timeout(Duration::from_secs(20), watch.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("the watch ended"),
        Err(_) => panic!("no watch event within 20 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_four_kinds_and_namespaced_keys() {
    let fake = fake(Duration::from_millis(50));
    let store = store(&fake);
    let e = store
        .put(&Key::new("Health", "default", "x"), json!({}), Precondition::None)
        .await
        .expect_err("not an l7mp kind");
    assert!(matches!(e, StoreError::InvalidKey { .. }), "{e:?}");
    let message = e.to_string();
    for word in ["\"Health\"", "VirtualService, Target, Route, Rule"] {
        assert!(message.contains(word), "{message}");
    }
    let e = store
        .get(&Key::new("Route", "", "x"))
        .await
        .expect_err("an empty namespace");
    assert!(e.to_string().contains("namespaced"), "{e}");
    let e = store
        .put(&Key::new("Route", "default", "x"), json!([1]), Precondition::None)
        .await
        .expect_err("not an object");
    assert!(matches!(e, StoreError::InvalidValue { .. }), "{e:?}");
    // A field the CRD does not know is refused (fieldValidation=Strict), not pruned.
    let mut bad = route("x", "t");
    bad["spec"]["nonsense"] = json!(1);
    let e = store
        .put(&Key::new("Route", "default", "x"), bad, Precondition::None)
        .await
        .expect_err("unknown field");
    assert!(e.to_string().contains("nonsense"), "{e}");
    assert!(store.list(None, None).await.expect("list").items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_custom_resources() {
    let fake = fake(Duration::from_millis(50));
    let store = store(&fake);
    let key = Key::new("Route", "default", "r1");
    let revision = store
        .put(&key, route("r1", "t1"), Precondition::None)
        .await
        .expect("put");
    let object = fake.get(&l7mp("routes"), "default", "r1").expect("the API object");
    assert_eq!(object["spec"], json!({"destination": "t1"}));
    assert_eq!(object["metadata"]["labels"], json!({"app": "x"}));
    assert_eq!(object["metadata"]["resourceVersion"], json!(revision.to_string()));
    // Written by someone else (kubectl): read back in the store's shape, annotations and all else dropped.
    let mut other = route("r2", "t2");
    other["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/last-applied-configuration": "{}"});
    fake.create(&l7mp("routes"), "default", other).expect("created");
    let got = store
        .get(&Key::new("Route", "default", "r2"))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.value, route("r2", "t2"));
    assert_eq!(
        store
            .put(&key, route("r1", "t1"), Precondition::None)
            .await
            .expect("same"),
        revision,
        "no change, no write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_survives_broken_connections() {
    let fake = fake(Duration::from_millis(50));
    let store = store(&fake);
    let mut watch = store.watch(store.revision()).await.expect("watch");
    let mut written = Vec::new();
    for i in 0..6 {
        let (kind, plural_value) = match i % 3 {
            0 => ("Route", route(&format!("r{i}"), "t")),
            1 => (
                "Rule",
                json!({"apiVersion": "l7mp.io/v1", "kind": "Rule", "metadata": {"name": format!("u{i}"), "namespace": "default"},
                       "spec": {"virtualService": "vs", "action": {"routeRef": "r"}}}),
            ),
            _ => (
                "VirtualService",
                json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": format!("v{i}"), "namespace": "default"},
                       "spec": {"listener": {"spec": {"protocol": "UDP", "port": 9000 + i}}}}),
            ),
        };
        let name = plural_value["metadata"]["name"].as_str().expect("name").to_string();
        written.push(
            store
                .put(&Key::new(kind, "default", &name), plural_value, Precondition::None)
                .await
                .expect("put"),
        );
        fake.break_watches();
    }
    for want in &written {
        assert_eq!(next(&mut watch).await.expect("event").revision(), *want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_is_compacted() {
    let fake = fake(Duration::from_millis(50));
    let store = store(&fake);
    let key = Key::new("Route", "default", "r1");
    store
        .put(&key, route("r1", "a"), Precondition::None)
        .await
        .expect("put");
    let mut watch = store.watch(store.revision()).await.expect("watch");
    let r2 = store
        .put(&key, route("r1", "b"), Precondition::None)
        .await
        .expect("put");
    assert_eq!(next(&mut watch).await.expect("event").revision(), r2);
    // The recipe of docs/kubernetes-fake.md: cut the watches, write, forget the history.
    fake.break_watches();
    store
        .put(&key, route("r1", "c"), Precondition::None)
        .await
        .expect("put");
    fake.compact();
    loop {
        match next(&mut watch).await {
            Ok(event) => assert!(event.revision() > r2, "only events after {r2}"),
            Err(StoreError::Compacted { .. }) => break,
            Err(e) => panic!("expected Compacted, got {e}"),
        }
    }
    let listing = store.list(None, None).await.expect("relist");
    assert_eq!(listing.items[0].value, route("r1", "c"));
    let mut old = store.watch(r2).await.expect("watch");
    assert!(matches!(next(&mut old).await, Err(StoreError::Compacted { .. })));
    assert!(matches!(store.compact(r2).await, Err(StoreError::Unsupported { .. })));
    let _: Arc<dyn Store> = store;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_by_url() {
    let bare = l7mp_kube_fake::FakeApiServer::start(l7mp_kube_fake::Options::default()).expect("fake");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    bare.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let url = format!("kubernetes:?kubeconfig={}", kubeconfig.display());
    let e = l7mp_control::store::open(&url).await.err().expect("no CRDs");
    assert!(e.to_string().contains("are the l7mp CRDs installed?"), "{e}");
    let e = l7mp_control::store::open("kubernetes:?kubeconfig=/nonexistent/kubeconfig")
        .await
        .err()
        .expect("no file");
    assert!(e.to_string().contains("/nonexistent/kubeconfig"), "{e}");
    let fake = fake(Duration::from_millis(50));
    fake.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let store = l7mp_control::store::open(&format!("{url}&namespace=ns1"))
        .await
        .expect("open");
    store
        .put(
            &Key::new("Route", "ns1", "r"),
            json!({"spec": {"destination": "t"}}),
            Precondition::None,
        )
        .await
        .expect("in its namespace");
    let e = store
        .put(
            &Key::new("Route", "ns2", "r"),
            json!({"spec": {"destination": "t"}}),
            Precondition::None,
        )
        .await
        .expect_err("confined to ns1");
    assert!(e.to_string().contains("confined to namespace \"ns1\""), "{e}");
    assert_eq!(store.list(None, None).await.expect("list").items.len(), 1);
    assert!(store.list(None, Some("ns2")).await.expect("list").items.is_empty());
}

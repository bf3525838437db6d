//! The store conformance suite on etcd, plus what only etcd has: outages (a watch survives an
//! etcd restart; calls fail with `Unavailable` while it is down), several stores on one cluster,
//! TLS with client certificates.
//!
//! Runs `/usr/bin/etcd` (see `common::etcd`); skips when it is not installed, unless
//! `L7MP_REQUIRE_ETCD=1`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::etcd::{EtcdServer, TlsFiles};
use common::proxy::TcpProxy;
use futures_util::StreamExt;
use l7mp_control::store::conformance::{CASES, Fixture};
use l7mp_control::store::{self, Event, Key, Precondition, Store, StoreError, WatchStream};
use serde_json::json;

/// One etcd server for the conformance cases, each case under its own prefix.
static SHARED: OnceLock<Option<EtcdServer>> = OnceLock::new();
static NEXT_PREFIX: AtomicUsize = AtomicUsize::new(0);

async fn open(url: &str) -> Arc<dyn Store> {
    store::open(url)
        .await
        .unwrap_or_else(|error| panic!("open {url}: {error}"))
}

/// A fresh prefix on the shared server.
async fn fixture() -> Option<Fixture> {
    let server = SHARED.get_or_init(EtcdServer::start).as_ref()?;
    let prefix = format!("/conformance-{}", NEXT_PREFIX.fetch_add(1, Ordering::SeqCst));
    Some(Fixture {
        store: open(&server.url_with_prefix(&prefix)).await,
        guard: Box::new(()),
    })
}

/// A server of its own: compaction discards the history of every prefix.
async fn own_server() -> Option<Fixture> {
    let server = EtcdServer::start()?;
    Some(Fixture {
        store: open(&server.url()).await,
        guard: Box::new(server),
    })
}

l7mp_control::store_conformance_tests!(@optional fixture;
    basics, invalid_keys, cas_absent, cas_revision, list_filters, revisions_shared,
    values_round_trip, watch_from_zero, watch_from_past, watch_live, watch_after_list,
    concurrent_writers, slow_watcher);
l7mp_control::store_conformance_tests!(@optional own_server; compaction);

/// The two lists above cover every conformance case.
#[test]
fn every_conformance_case_runs() {
    let here = [
        "basics",
        "invalid_keys",
        "cas_absent",
        "cas_revision",
        "list_filters",
        "revisions_shared",
        "values_round_trip",
        "watch_from_zero",
        "watch_from_past",
        "watch_live",
        "watch_after_list",
        "concurrent_writers",
        "slow_watcher",
        "compaction",
    ];
    let all: Vec<&str> = CASES.iter().map(|(name, _)| *name).collect();
    assert_eq!(here.to_vec(), all);
}

const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

async fn next_event(watch: &mut WatchStream) -> Event {
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("watch failed: {error}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no event within {EVENT_TIMEOUT:?}"),
    }
}

async fn assert_quiet(watch: &mut WatchStream, wait: Duration) {
    if let Ok(item) = tokio::time::timeout(wait, watch.next()).await {
        panic!("unexpected watch item {item:?}");
    }
}

/// Puts `key` and returns the event a watch should deliver for it.
async fn put(store: &Arc<dyn Store>, key: &Key, value: serde_json::Value) -> Event {
    store.put(key, value, Precondition::None).await.expect("put");
    Event::Put(store.get(key).await.expect("get").expect("present"))
}

async fn delete(store: &Arc<dyn Store>, key: &Key) -> Event {
    let revision = store
        .delete(key, Precondition::None)
        .await
        .expect("delete")
        .expect("deleted");
    Event::Delete {
        key: key.clone(),
        revision,
    }
}

/// A watch delivers every event exactly once across an etcd outage: events before the kill,
/// events written right after the restart (while the watch is still reconnecting), events later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_restart() {
    let Some(mut server) = EtcdServer::start() else { return };
    let store = open(&server.url_with_prefix("/restart")).await;
    let mut watch = store.watch(store.revision()).await.expect("watch");
    let k = |i: usize| Key::new("VirtualService", "ns", format!("k{}", i % 3));
    let mut expected = Vec::new();
    for i in 0..4 {
        expected.push(put(&store, &k(i), json!({"before": i})).await);
    }
    expected.push(delete(&store, &k(0)).await);
    for want in &expected {
        assert_eq!(&next_event(&mut watch).await, want);
    }
    // Two more the watcher has not read when etcd goes away.
    expected.push(put(&store, &k(5), json!("unread")).await);
    expected.push(delete(&store, &k(1)).await);
    let seen = expected.len() - 2;

    server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    for i in 10..14 {
        expected.push(put(&store, &k(i), json!({"after": i})).await);
    }
    for want in &expected[seen..] {
        assert_eq!(&next_event(&mut watch).await, want);
    }
    // And live events once the watch is back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last = put(&store, &Key::new("Route", "ns", "late"), json!("late")).await;
    assert_eq!(next_event(&mut watch).await, last);
    assert_quiet(&mut watch, Duration::from_millis(500)).await;
    let revisions: Vec<u64> = expected.iter().map(Event::revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
}

/// A store that reaches `server` through a proxy the test can cut, and one that reaches it
/// directly, on the same prefix.
async fn behind_proxy(server: &EtcdServer, prefix: &str) -> (TcpProxy, Arc<dyn Store>, Arc<dyn Store>) {
    let upstream = format!("127.0.0.1:{}", server.client_port()).parse().expect("address");
    let proxy = TcpProxy::start(upstream).await;
    let proxied = open(&format!("etcd://{}{prefix}", proxy.addr())).await;
    let direct = open(&server.url_with_prefix(prefix)).await;
    (proxy, proxied, direct)
}

/// A watch cut off from etcd while others write gets, once it is back, exactly the events it
/// missed, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_what_a_partition_hid() {
    let Some(server) = EtcdServer::start() else { return };
    let (proxy, watcher, writer) = behind_proxy(&server, "/partition").await;
    let mut watch = watcher.watch(watcher.revision()).await.expect("watch");
    let k = |i: usize| Key::new("Target", "ns", format!("t{}", i % 2));
    let first = put(&writer, &k(0), json!(0)).await;
    assert_eq!(next_event(&mut watch).await, first);

    proxy.cut();
    let mut missed = Vec::new();
    for i in 1..5 {
        missed.push(put(&writer, &k(i), json!(i)).await);
    }
    missed.push(delete(&writer, &k(0)).await);
    // The watcher notices and keeps retrying against the closed port for a while.
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.restore().await;
    for want in &missed {
        assert_eq!(&next_event(&mut watch).await, want);
    }
    let live = put(&writer, &k(7), json!("live")).await;
    assert_eq!(next_event(&mut watch).await, live);
    assert_quiet(&mut watch, Duration::from_millis(300)).await;
}

/// If the history a disconnected watch needs is compacted meanwhile, the watch ends with
/// `Compacted` when it reconnects (a relist), instead of skipping events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ends_compacted_when_history_went_during_a_partition() {
    let Some(server) = EtcdServer::start() else { return };
    let (proxy, watcher, writer) = behind_proxy(&server, "/compacted").await;
    let mut watch = watcher.watch(watcher.revision()).await.expect("watch");
    let k = Key::new("Route", "ns", "r");
    let seen = put(&writer, &k, json!(0)).await;
    assert_eq!(next_event(&mut watch).await, seen);

    proxy.cut();
    let mut last = 0;
    for i in 1..4 {
        last = writer.put(&k, json!(i), Precondition::None).await.expect("put");
    }
    writer.compact(last).await.expect("compact");
    proxy.restore().await;
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Some(Err(StoreError::Compacted { requested, compacted }))) => {
            assert_eq!(requested, seen.revision(), "the watch was at its last event");
            assert_eq!(compacted, last);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(watch.next().await.is_none(), "the watch ends after Compacted");
}

/// A watch whose connection goes silent (no reset: a black hole) notices through HTTP/2
/// keep-alive pings, reconnects and delivers what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_recovers_from_a_silent_connection() {
    let Some(server) = EtcdServer::start() else { return };
    let (proxy, watcher, writer) = behind_proxy(&server, "/silent").await;
    let mut watch = watcher.watch(watcher.revision()).await.expect("watch");
    let k = |i: usize| Key::new("VirtualService", "ns", format!("v{i}"));
    let first = put(&writer, &k(0), json!(0)).await;
    assert_eq!(next_event(&mut watch).await, first);

    proxy.blackhole();
    let mut missed = Vec::new();
    for i in 1..4 {
        missed.push(put(&writer, &k(i), json!(i)).await);
    }
    // New connections work again; the watch's own connection stays silent.
    proxy.heal();
    let started = Instant::now();
    for want in &missed {
        assert_eq!(&next_event(&mut watch).await, want);
    }
    // Keep-alive: a ping every 5 s, 5 s for its answer.
    let took = started.elapsed();
    eprintln!("the watch came back after {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_quiet(&mut watch, Duration::from_millis(300)).await;
}

/// An etcd that accepts connections but never answers (a black hole, not a refusal): calls fail
/// with `Unavailable` after the request timeout instead of hanging, opening too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_when_etcd_hangs() {
    const BOUND: Duration = Duration::from_secs(8);
    let Some(server) = EtcdServer::start() else { return };
    let (proxy, store, _direct) = behind_proxy(&server, "/hang").await;
    let endpoint = proxy.addr().to_string();
    let k = Key::new("Target", "ns", "t");
    store.put(&k, json!(1), Precondition::None).await.expect("put");
    proxy.blackhole();

    let started = Instant::now();
    let url = format!("etcd://{endpoint}/hang");
    let (get, put, watch, opened) = tokio::join!(
        store.get(&k),
        store.put(&k, json!(2), Precondition::None),
        store.watch(0),
        store::open(&url),
    );
    let elapsed = started.elapsed();
    assert!(elapsed < BOUND, "the calls took {elapsed:?}");
    assert_unavailable("get", get, &endpoint);
    assert_unavailable("put", put, &endpoint);
    assert_unavailable("watch", watch.map(|_| ()), &endpoint);
    assert_unavailable("open", opened.map(|_| ()), &endpoint);
    eprintln!("calls to a silent etcd failed after {elapsed:?}");

    // restore() resets the held connections: the first call may still pick the dead one and fail
    // with Unavailable; the client then connects anew.
    proxy.restore().await;
    let started = Instant::now();
    let got = loop {
        match store.get(&k).await {
            Ok(got) => break got,
            Err(StoreError::Unavailable { reason }) if started.elapsed() < BOUND => {
                eprintln!("right after the restore: {reason}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("get once etcd answers again: {error}"),
        }
    };
    assert_eq!(
        got.expect("present").value,
        json!(1),
        "the put into the black hole wrote nothing"
    );
}

fn assert_unavailable<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>, endpoint: &str) {
    match result {
        Err(StoreError::Unavailable { reason }) => {
            assert!(
                reason.contains(endpoint),
                "{what}: the error names {endpoint}: {reason}"
            );
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

/// While etcd is down every call fails with `Unavailable` naming the endpoint, within a bound;
/// after a restart the same store works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_while_etcd_is_down() {
    const BOUND: Duration = Duration::from_secs(8);
    let Some(mut server) = EtcdServer::start() else { return };
    let endpoint = format!("127.0.0.1:{}", server.client_port());
    let store = open(&server.url()).await;
    let k = Key::new("Target", "ns", "t");
    let r1 = store.put(&k, json!(1), Precondition::None).await.expect("put");
    server.stop();

    let started = Instant::now();
    let (get, put, del, list, watch, compact) = tokio::join!(
        store.get(&k),
        store.put(&k, json!(2), Precondition::Revision(r1)),
        store.delete(&k, Precondition::None),
        store.list(None, None),
        store.watch(r1),
        store.compact(r1),
    );
    let elapsed = started.elapsed();
    assert!(elapsed < BOUND, "the calls took {elapsed:?}");
    assert_unavailable("get", get, &endpoint);
    assert_unavailable("put", put, &endpoint);
    assert_unavailable("delete", del, &endpoint);
    assert_unavailable("list", list, &endpoint);
    assert_unavailable("watch", watch.map(|_| ()), &endpoint);
    assert_unavailable("compact", compact, &endpoint);
    eprintln!("calls while etcd is down failed after {elapsed:?}");

    let started = Instant::now();
    let opened = store::open(&server.url()).await;
    assert!(started.elapsed() < BOUND, "open took {:?}", started.elapsed());
    assert_unavailable("open", opened.map(|_| ()), &endpoint);

    server.restart();
    let got = store.get(&k).await.expect("get after the restart").expect("present");
    assert_eq!(
        (got.value, got.revision),
        (json!(1), r1),
        "nothing was written while etcd was down"
    );
    let r2 = store
        .put(&k, json!(2), Precondition::Revision(r1))
        .await
        .expect("cas after the restart");
    assert!(r2 > r1);
}

/// Two stores on one cluster and prefix see each other's writes (and conflicts); a store on a
/// prefix that extends the first one's (`/shared` vs `/shared2`) sees none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_a_prefix() {
    let Some(server) = EtcdServer::start() else { return };
    let a = open(&server.url_with_prefix("/shared")).await;
    let b = open(&server.url_with_prefix("/shared/")).await;
    let other = open(&server.url_with_prefix("/shared2")).await;
    let mut watch_a = a.watch(a.revision()).await.expect("watch a");
    let mut watch_b = b.watch(b.revision()).await.expect("watch b");
    let mut watch_other = other.watch(other.revision()).await.expect("watch other");

    let k = Key::new("VirtualService", "default", "vs");
    let ra = a
        .put(&k, json!({"by": "a"}), Precondition::Absent)
        .await
        .expect("a creates");
    match next_event(&mut watch_b).await {
        Event::Put(stored) => assert_eq!(
            (stored.key, stored.value, stored.revision, stored.create_revision),
            (k.clone(), json!({"by": "a"}), ra, ra)
        ),
        other => panic!("b expected a's put, got {other:?}"),
    }
    match b.put(&k, json!("b"), Precondition::Absent).await {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, Some(ra)),
        other => panic!("b's create must conflict, got {other:?}"),
    }
    let rb = b
        .put(&k, json!({"by": "b"}), Precondition::Revision(ra))
        .await
        .expect("b replaces a's object");
    assert_eq!(next_event(&mut watch_a).await.revision(), ra);
    match next_event(&mut watch_a).await {
        Event::Put(stored) => assert_eq!(
            (stored.value, stored.revision, stored.create_revision),
            (json!({"by": "b"}), rb, ra)
        ),
        other => panic!("a expected b's put, got {other:?}"),
    }
    let rd = a
        .delete(&k, Precondition::Revision(rb))
        .await
        .expect("a deletes")
        .expect("deleted");
    assert_eq!(
        next_event(&mut watch_b).await.revision(),
        rb,
        "b sees its own write too"
    );
    assert_eq!(
        next_event(&mut watch_b).await,
        Event::Delete {
            key: k.clone(),
            revision: rd
        }
    );
    assert!(b.revision() >= rd, "b saw revision {rd} through its watch");
    assert_eq!(next_event(&mut watch_a).await.revision(), rd);

    assert!(other.list(None, None).await.expect("list").items.is_empty());
    assert_quiet(&mut watch_other, Duration::from_millis(300)).await;
    let ro = other
        .put(&k, json!("other"), Precondition::Absent)
        .await
        .expect("same key, other prefix");
    assert!(ro > rd);
    assert_eq!(next_event(&mut watch_other).await.revision(), ro);
    assert_quiet(&mut watch_a, Duration::from_millis(300)).await;
    assert!(a.get(&k).await.expect("get").is_none());
}

/// `etcds://` with a client certificate works; without one, or over plain HTTP, etcd refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    if which("openssl").is_none() {
        panic!("the TLS test needs the openssl command line");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFiles::generate(dir.path());
    let Some(server) = EtcdServer::start_tls(tls.clone()) else {
        return;
    };
    let endpoint = format!("127.0.0.1:{}", server.client_port());
    let url = format!(
        "{}/tls?ca={}&cert={}&key={}",
        server.url(),
        tls.ca.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    );
    let store = open(&url).await;
    let mut watch = store.watch(store.revision()).await.expect("watch over TLS");
    let k = Key::new("Route", "ns", "r");
    let revision = store
        .put(&k, json!({"tls": true}), Precondition::Absent)
        .await
        .expect("put");
    let got = store.get(&k).await.expect("get").expect("present");
    assert_eq!((got.value, got.revision), (json!({"tls": true}), revision));
    assert_eq!(next_event(&mut watch).await.revision(), revision);

    let started = Instant::now();
    let no_cert = store::open(&format!("{}/tls?ca={}", server.url(), tls.ca.display())).await;
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    match no_cert {
        Err(StoreError::Unavailable { reason }) => {
            eprintln!("without a client certificate: {reason}");
            assert!(reason.contains(&endpoint), "{reason}");
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("etcd accepted a client without a certificate"),
    }
    let plain = store::open(&format!("etcd://{endpoint}/tls")).await;
    assert!(
        matches!(plain, Err(StoreError::Unavailable { .. })),
        "{:?}",
        plain.err()
    );

    let missing = store::open(&format!(
        "{}?ca={}",
        server.url(),
        dir.path().join("nope.pem").display()
    ))
    .await;
    match missing {
        Err(error @ StoreError::Open { .. }) => assert!(error.to_string().contains("nope.pem"), "{error}"),
        other => panic!("expected Open naming the file, got {:?}", other.err()),
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.exists())
}

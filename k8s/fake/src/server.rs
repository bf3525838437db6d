//! The test handle: starts the fake on its own thread and runtime (so synchronous tests and any async runtime can
//! use it), exposes the controls tests need, and stops the server when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{oneshot, watch};

use crate::error::ApiError;
use crate::http::{self, RequestRecord, Shared, lock};
use crate::resources::Gvr;
use crate::store::{ListOptions, Store};
use crate::write::{Subresource, WriteOptions};

/// How to start the fake.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen; the default `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// How often watches that asked for bookmarks get one (the real server: about once a minute).
    pub bookmark_interval: Duration,
    /// How many events the server remembers; a watch or exact LIST from before them gets 410 Expired.
    pub history_limit: usize,
    /// Namespaces that exist from the start (the real server's four by default).
    pub namespaces: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            bookmark_interval: Duration::from_secs(1),
            history_limit: 10_000,
            namespaces: ["default", "kube-system", "kube-public", "kube-node-lease"]
                .map(str::to_owned)
                .to_vec(),
        }
    }
}

/// Why the fake could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("cannot start the server's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot create namespace {0}: {1}")]
    Namespace(String, Box<ApiError>),
}

/// A running fake API server on loopback (plain HTTP, no authentication). Dropping it stops the server.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Binds, creates the initial namespaces, and serves from a background thread.
    pub fn start(options: Options) -> Result<FakeApiServer, StartError> {
        let listener = std::net::TcpListener::bind(options.listen).map_err(|e| StartError::Bind(options.listen, e))?;
        let addr = listener.local_addr().map_err(|e| StartError::Bind(options.listen, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| StartError::Bind(options.listen, e))?;
        let mut store = Store::new(options.history_limit);
        let ns_type = store.registry.find(&Gvr::core("namespaces")).cloned();
        for ns in &options.namespaces {
            if let Some(t) = &ns_type {
                let body = serde_json::json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } });
                store
                    .create(t, "", body, &WriteOptions::default())
                    .map_err(|e| StartError::Namespace(ns.clone(), Box::new(e)))?;
            }
        }
        let (bookmark_interval, _) = watch::channel(options.bookmark_interval);
        let (breaker, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            log: Mutex::new(Vec::new()),
            bookmark_interval,
            breaker,
            open_watches: Default::default(),
            address: addr.to_string(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("l7mp-fake-apiserver")
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let router = http::router(shared.clone());
        let thread = std::thread::Builder::new()
            .name("l7mp-fake-apiserver".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("fake API server: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        r = axum::serve(listener, router) => if let Err(e) = r { tracing::error!("fake API server: {e}") },
                        _ = stopped => {}
                    }
                });
                // Open watches and connections are dropped here.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(StartError::Runtime)?;
        Ok(FakeApiServer {
            shared,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig (context `l7mp-fake`, namespace `default`, no credentials) for kubectl and clients.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        crate::kubeconfig::write(path.as_ref(), &self.url())
    }

    /// The latest resourceVersion (the global write counter).
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).resource_version()
    }

    /// Forgets the event history: watches and exact LISTs from any resourceVersion before now get 410 Expired.
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
    }

    /// Sets how many events are remembered (older ones are forgotten at once if there are more).
    pub fn set_history_limit(&self, limit: usize) {
        lock(&self.shared.store).set_history_limit(limit);
    }

    /// Ends every open watch stream abruptly (the connection drops mid-stream, as when an API server restarts),
    /// and returns once they have ended (at most after 2 s), so no write after this call reaches them.
    pub fn break_watches(&self) {
        let mut generation = 0;
        self.shared.breaker.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.shared.open_watches.before(generation) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// How many watch streams are open now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.total()
    }

    /// Changes the bookmark interval of open and future watches.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared.bookmark_interval.send_replace(interval);
    }

    /// One object as stored (`namespace` is ignored for cluster-scoped types), or `None`.
    pub fn get(&self, gvr: &Gvr, namespace: &str, name: &str) -> Option<Value> {
        let store = lock(&self.shared.store);
        let t = store.registry.find(gvr)?;
        let ns = if t.namespaced { namespace } else { "" };
        store.get(&t.key(), &(ns.to_owned(), name.to_owned())).cloned()
    }

    /// Every object of a type, in one namespace or (`None`) all, sorted by namespace and name.
    pub fn list(&self, gvr: &Gvr, namespace: Option<&str>) -> Vec<Value> {
        let store = lock(&self.shared.store);
        let Some(t) = store.registry.find(gvr).cloned() else {
            return Vec::new();
        };
        store
            .list(&t, namespace, &ListOptions::default())
            .map(|p| p.items)
            .unwrap_or_default()
    }

    /// Creates an object as a POST would (same checks and events); for seeding a test.
    pub fn create(&self, gvr: &Gvr, namespace: &str, object: Value) -> Result<Value, ApiError> {
        let mut store = lock(&self.shared.store);
        let t = store
            .registry
            .find(gvr)
            .cloned()
            .ok_or_else(|| ApiError::no_route(&gvr.to_string()))?;
        store.create(&t, namespace, object, &WriteOptions::default())
    }

    /// Replaces an object (or its status) as a PUT would; for driving what a controller would do, e.g. marking
    /// a Pod ready.
    pub fn update(&self, gvr: &Gvr, namespace: &str, object: Value, status: bool) -> Result<Value, ApiError> {
        let mut store = lock(&self.shared.store);
        let t = store
            .registry
            .find(gvr)
            .cloned()
            .ok_or_else(|| ApiError::no_route(&gvr.to_string()))?;
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let sub = if status { Subresource::Status } else { Subresource::Main };
        store.update(&t, namespace, &name, object, sub, &WriteOptions::default())
    }

    /// Deletes an object as a DELETE would.
    pub fn delete(&self, gvr: &Gvr, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let mut store = lock(&self.shared.store);
        let t = store
            .registry
            .find(gvr)
            .cloned()
            .ok_or_else(|| ApiError::no_route(&gvr.to_string()))?;
        store.delete(&t, namespace, name, &serde_json::json!({}), false)
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// Stops the server now (also done on drop).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

//! Watch streams: newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`) for one
//! type, filtered by namespace and selectors. An object that stops (starts) matching a selector is sent as
//! DELETED (ADDED), as the real server does. A too-old resourceVersion gets one ERROR event carrying a 410
//! Expired Status, then the stream ends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::resources::{ResourceType, api_version};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Event, EventKind, Store};

/// What one watch asked for.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub t: ResourceType,
    /// The version the client asked in (objects are sent with this apiVersion).
    pub version: String,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
}

/// Server-wide knobs every stream follows: the bookmark interval and the "break every watch" generation.
#[derive(Clone)]
pub struct Controls {
    pub bookmark_interval: watch::Receiver<Duration>,
    pub breaker: watch::Receiver<u64>,
    pub open: OpenWatches,
}

/// How many streams are open, by the breaker generation they started in (so `break_watches` can wait for the
/// ones it broke).
#[derive(Clone, Default)]
pub struct OpenWatches(Arc<Mutex<BTreeMap<u64, usize>>>);

impl OpenWatches {
    fn enter(&self, generation: u64) -> OpenGuard {
        *crate::http::lock(&self.0).entry(generation).or_default() += 1;
        OpenGuard(self.clone(), generation)
    }

    /// Open streams that started before `generation`.
    pub fn before(&self, generation: u64) -> usize {
        crate::http::lock(&self.0).range(..generation).map(|(_, n)| n).sum()
    }

    pub fn total(&self) -> usize {
        crate::http::lock(&self.0).values().sum()
    }
}

struct OpenGuard(OpenWatches, u64);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut m = crate::http::lock(&(self.0).0);
        if let Some(n) = m.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// One chunk of the response body; an `Err` ends the response abruptly (no final chunk).
pub type Chunk = Result<Bytes, std::io::Error>;

impl WatchRequest {
    fn api_version(&self) -> String {
        api_version(&self.t.group, &self.version)
    }

    fn matches(&self, o: &Value) -> bool {
        let ns_ok = self
            .namespace
            .as_deref()
            .is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns));
        ns_ok && self.labels.matches(o) && self.fields.matches(o)
    }

    fn line(&self, kind: &str, object: &Value) -> Bytes {
        let mut object = object.clone();
        if kind != "ERROR" {
            object["apiVersion"] = json!(self.api_version());
        }
        let mut s = json!({ "type": kind, "object": object }).to_string();
        s.push('\n');
        Bytes::from(s)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({ "resourceVersion": rv.to_string(), "creationTimestamp": null });
        if initial_end {
            meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        self.line(
            "BOOKMARK",
            &json!({ "kind": self.t.kind, "apiVersion": self.api_version(), "metadata": meta }),
        )
    }

    /// What this watch sends for a store event, if anything.
    fn translate(&self, e: &Event) -> Option<Bytes> {
        if e.key != self.t.key() {
            return None;
        }
        let now = self.matches(&e.object);
        let before = e.prev.as_ref().is_some_and(|p| self.matches(p));
        let kind = match e.kind {
            EventKind::Added if now => "ADDED",
            EventKind::Modified if before && now => "MODIFIED",
            EventKind::Modified if now => "ADDED",
            EventKind::Modified if before => "DELETED",
            EventKind::Deleted if now => "DELETED",
            _ => return None,
        };
        Some(self.line(kind, &e.object))
    }
}

/// Starts a watch: takes what must be sent first (the current objects, or the events after the requested
/// resourceVersion) under the store lock, subscribes to later events in the same critical section, and streams
/// the rest from a task until the timeout, the client leaving, or `break_watches`.
pub fn start(store: &Mutex<Store>, req: WatchRequest, mut controls: Controls) -> mpsc::Receiver<Chunk> {
    let (tx, rx) = mpsc::channel::<Chunk>(64);
    let mut first: Vec<Bytes> = Vec::new();
    let generation = *controls.breaker.borrow_and_update();
    let guard = controls.open.enter(generation);
    let (events, start_rv) = {
        let s = match store.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let events = s.subscribe();
        let rv = req.resource_version.as_deref().unwrap_or("");
        let initial = req.send_initial_events || rv.is_empty() || rv == "0";
        if initial {
            let key = req.t.key();
            for o in s
                .objects
                .get(&key)
                .into_iter()
                .flat_map(|m| m.values())
                .filter(|o| req.matches(o))
            {
                first.push(req.line("ADDED", o));
            }
        } else {
            let replay = rv
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
                .and_then(|n| s.events_since(n));
            match replay {
                Ok(evs) => first.extend(evs.iter().filter_map(|e| req.translate(e))),
                Err(err) => {
                    let line = req.line("ERROR", &err.to_status());
                    tokio::spawn(async move {
                        let _ = tx.send(Ok(line)).await;
                    });
                    return rx;
                }
            }
        }
        if req.send_initial_events && req.bookmarks {
            first.push(req.bookmark(s.resource_version(), true));
        }
        (events, s.resource_version())
    };
    tokio::spawn(async move {
        stream(req, first, events, start_rv, generation, controls, tx).await;
        drop(guard);
    });
    rx
}

async fn stream(
    req: WatchRequest,
    first: Vec<Bytes>,
    mut events: broadcast::Receiver<Arc<Event>>,
    mut seen: u64,
    generation: u64,
    mut controls: Controls,
    tx: mpsc::Sender<Chunk>,
) {
    for line in first {
        if tx.send(Ok(line)).await.is_err() {
            return;
        }
    }
    let far = Duration::from_secs(86400 * 365);
    let deadline = Instant::now() + req.timeout.unwrap_or(far);
    let next_bookmark = |c: &Controls| Instant::now() + *c.bookmark_interval.borrow();
    let mut bookmark_at = next_bookmark(&controls);
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(e) => {
                    seen = seen.max(e.rv);
                    if let Some(line) = req.translate(&e)
                        && tx.send(Ok(line)).await.is_err()
                    {
                        return;
                    }
                }
                // Too slow a reader, or the store is gone: end the stream; the client re-watches.
                Err(_) => return,
            },
            _ = tokio::time::sleep_until(bookmark_at), if req.bookmarks => {
                if tx.send(Ok(req.bookmark(seen, false))).await.is_err() {
                    return;
                }
                bookmark_at = next_bookmark(&controls);
            }
            changed = controls.bookmark_interval.changed() => {
                if changed.is_err() {
                    return;
                }
                bookmark_at = next_bookmark(&controls);
            }
            _ = tokio::time::sleep_until(deadline) => return,
            changed = controls.breaker.changed() => {
                if changed.is_err() || *controls.breaker.borrow() != generation {
                    let _ = tx.send(Err(std::io::Error::other("watch broken by the test (break_watches)"))).await;
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}

//! One ordered watch over four: the per-kind watches of the API server merged in revision order.
//!
//! The API server watches one resource at a time, and the four streams move independently: an event of kind A at
//! revision 12 may arrive before an event of kind B at revision 11. An event can be released only when every other
//! stream is known to have delivered everything before it. That is what watch bookmarks (`allowWatchBookmarks`)
//! tell: a bookmark at revision `r` says the stream has sent every event of its kind up to `r`. So:
//!
//! - each kind has a follower task that watches from its *position* (the revision of the last event or bookmark
//!   it delivered) and reports events and bookmarks; when a watch ends (the server's timeout, a broken
//!   connection, a reader too slow for the server) it watches again from its position, so it has no gap and no
//!   duplicate; a `410 Gone` ends everything with [`StoreError::Compacted`];
//! - the merger keeps the events not yet released in revision order, and the position of each stream; it releases
//!   every held event at or below the lowest position (an event moves its own stream's position to its revision);
//! - the watches ask for `timeoutSeconds=`[`WATCH_SECONDS`]: kube-apiserver sends a bookmark 2 s before a watch's
//!   deadline (else only about once a minute), so every stream reports progress about every [`WATCH_SECONDS`]
//!   seconds and an event waits at most about that long for the other three. The fake API server sends bookmarks
//!   every `bookmark_interval` (1 s by default).
//!
//! A `MODIFIED` that leaves the store's value as it was (the status subresource or metadata the store does not
//! hold changed: the status write-back's own writes) is no event, only progress: writing status never wakes the
//! control loop.
//!
//! Latency is the price of order: an event is delivered once the quietest stream has caught up with it (up to a few
//! seconds on a real cluster; within the bookmark interval on the fake).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use http::Request;
use kube::core::WatchEvent;
use l7mp_api::resource::ResourceKind;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{KubernetesStore, api_error, collection_path, parse_revision, stored};
use crate::store::{Event, StoreError, WatchStream};

/// The `timeoutSeconds` of each per-kind watch (see the module's documentation).
pub(super) const WATCH_SECONDS: u32 = 4;

/// What a follower reports.
enum Report {
    Event(Event),
    /// The stream has sent every event up to this revision.
    Progress(u64),
    Failed(StoreError),
}

/// The merged watch from `from` (exclusive).
pub(super) fn merged(store: KubernetesStore, from: u64) -> WatchStream {
    let (out, rx) = mpsc::channel::<Result<Event, StoreError>>(256);
    let (reports, mut inbox) = mpsc::channel::<(usize, Report)>(256);
    let followers: Vec<_> = ResourceKind::ALL
        .into_iter()
        .enumerate()
        .map(|(i, kind)| tokio::spawn(follow(store.clone(), i, kind, from, reports.clone())))
        .collect();
    drop(reports);
    tokio::spawn(async move {
        // Stop the followers when the merger ends (the reader went away, or an error ended the watch).
        let _abort = AbortOnDrop(followers);
        let mut position = [from; 4];
        let mut held: BTreeMap<u64, Event> = BTreeMap::new();
        loop {
            let report = tokio::select! {
                r = inbox.recv() => r,
                _ = out.closed() => return,
            };
            let Some((i, report)) = report else { return };
            let failed = match report {
                Report::Event(e) => {
                    position[i] = position[i].max(e.revision());
                    held.insert(e.revision(), e);
                    None
                }
                Report::Progress(r) => {
                    position[i] = position[i].max(r);
                    None
                }
                Report::Failed(e) => Some(e),
            };
            let safe = position.iter().copied().min().unwrap_or(from);
            while let Some(entry) = held.first_entry() {
                if *entry.key() > safe {
                    break;
                }
                let event = entry.remove();
                store.seen(event.revision());
                if out.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if let Some(e) = failed {
                let _ = out.send(Err(e)).await;
                return;
            }
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Follows one kind from `position`, re-watching from the last position whenever a watch ends.
async fn follow(
    store: KubernetesStore,
    index: usize,
    kind: ResourceKind,
    mut position: u64,
    reports: mpsc::Sender<(usize, Report)>,
) {
    const RETRY_MIN: Duration = Duration::from_millis(100);
    const RETRY_MAX: Duration = Duration::from_secs(2);
    let mut retry = RETRY_MIN;
    // The values delivered, to tell a change of the value from a change of the status only.
    let mut values: std::collections::HashMap<crate::store::Key, Value> = Default::default();
    let send = |report: Report| {
        let reports = reports.clone();
        async move { reports.send((index, report)).await.is_ok() }
    };
    loop {
        // resourceVersion=0 would mean "any state" (the current objects as ADDED); 1 is the start of the history.
        let uri = format!(
            "{}?watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={}",
            collection_path(kind, store.namespace.as_deref()),
            position.max(1)
        );
        let Ok(req) = Request::builder().uri(uri).body(Vec::new()) else {
            return;
        };
        let started = tokio::time::Instant::now();
        let events = match store.client.request_events::<Value>(req).await {
            Ok(events) => events,
            Err(kube::Error::Api(s)) if s.code == 410 => {
                send(Report::Failed(compacted(position, &s))).await;
                return;
            }
            // Refused (forbidden, the CRD missing, a bad request): waiting would stall the other kinds' events
            // forever, so the watch fails and its caller starts over (and sees the error).
            Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 429 => {
                send(Report::Failed(api_error(&format!("watch {}", kind.plural()), &s))).await;
                return;
            }
            Err(e) => {
                tracing::debug!(kind = %kind, "kubernetes watch: {e}; watching again in {retry:?}");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        let mut events = std::pin::pin!(events);
        // Whether the watch broke: then wait a moment before watching again. One that ends before its timeout
        // without an error was cut too (the connection closed).
        let mut broken = false;
        while let Some(event) = events.next().await {
            let report = match event {
                Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => match stored(kind, &o) {
                    // A change of the status or of metadata the store does not hold (a status write-back) leaves
                    // the value as it was: no event, only progress.
                    Ok(s) if values.get(&s.key) == Some(&s.value) => {
                        if s.revision > position {
                            position = s.revision;
                            if !send(Report::Progress(s.revision)).await {
                                return;
                            }
                        }
                        continue;
                    }
                    Ok(s) => {
                        values.insert(s.key.clone(), s.value.clone());
                        Ok(Event::Put(s))
                    }
                    Err(e) => Err(e),
                },
                Ok(WatchEvent::Deleted(o)) => stored(kind, &o).map(|s| {
                    values.remove(&s.key);
                    Event::Delete {
                        key: s.key,
                        revision: s.revision,
                    }
                }),
                Ok(WatchEvent::Bookmark(b)) => match parse_revision(&b.metadata.resource_version) {
                    Ok(r) if r > position => {
                        position = r;
                        if !send(Report::Progress(r)).await {
                            return;
                        }
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => Err(e),
                },
                Ok(WatchEvent::Error(s)) if s.code == 410 => Err(compacted(position, &s)),
                Ok(WatchEvent::Error(s)) => {
                    tracing::debug!(kind = %kind, "kubernetes watch: {}; watching again", s.message);
                    broken = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(kind = %kind, "kubernetes watch: {e}; watching again in {retry:?}");
                    broken = true;
                    break;
                }
            };
            match report {
                // Replays after a re-watch start after the position: nothing is delivered twice.
                Ok(event) if event.revision() <= position => {}
                Ok(event) => {
                    position = event.revision();
                    if !send(Report::Event(event)).await {
                        return;
                    }
                }
                Err(e) => {
                    send(Report::Failed(e)).await;
                    return;
                }
            }
        }
        if broken || started.elapsed() < Duration::from_secs(WATCH_SECONDS.into()) {
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        } else {
            retry = RETRY_MIN;
        }
    }
}

fn compacted(position: u64, status: &kube::core::Status) -> StoreError {
    match api_error("watch", status) {
        StoreError::Compacted { compacted, .. } => StoreError::Compacted {
            requested: position,
            compacted,
        },
        other => other,
    }
}

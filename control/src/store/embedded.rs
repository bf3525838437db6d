//! The embedded store (the default): one redb database file (`l7mp.redb`) in a directory, ACID and durable (every
//! write is committed to disk before it returns), no setup.
//!
//! Tables: `objects` (key → the stored object as JSON), `events` (revision → the event as JSON, the last
//! [`HISTORY`] of them, for watches that resume from a past revision) and `meta` (the current revision). Writes are
//! serialised (redb has one writer) and run on the blocking pool. Live watchers get events through a broadcast
//! channel; one that falls more than [`LIVE_QUEUE`] events behind is dropped with [`StoreError::Lagged`] and lists
//! again, so a slow watcher never holds writers up.

use super::{Event, Key, Precondition, Store, StoreError, StoreFuture, Stored, WatchStream};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Events kept for watches that resume from the past.
pub const HISTORY: u64 = 10_000;
/// Events a live watcher may fall behind before it is dropped.
pub const LIVE_QUEUE: usize = 4096;

/// The embedded store.
pub struct EmbeddedStore {
    db: Arc<Database>,
    revision: Arc<AtomicU64>,
    /// Serialises writes with their broadcast, so live events go out in revision order.
    write: Arc<Mutex<()>>,
    live: broadcast::Sender<Event>,
    /// Events kept for resuming watches.
    history: u64,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// `kind/namespace/name` with `/` inside a part escaped, so keys sort by kind, then namespace, then name.
fn db_key(k: &Key) -> String {
    let esc = |s: &str| s.replace('%', "%25").replace('/', "%2F");
    format!("{}/{}/{}", esc(&k.kind), esc(&k.namespace), esc(&k.name))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, keeping [`HISTORY`] events for watches.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        Self::open_with_history(dir, HISTORY)
    }

    /// Opens the store in `dir`, keeping the last `history` events (at least 1) for watches.
    pub fn open_with_history(dir: &Path, history: u64) -> Result<EmbeddedStore, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let file = dir.join("l7mp.redb");
        let db = Database::create(&file).map_err(|e| StoreError::Open {
            path: file.display().to_string(),
            reason: e.to_string(),
        })?;
        let tx = db.begin_write().map_err(backend)?;
        let revision = {
            tx.open_table(OBJECTS).map_err(backend)?;
            tx.open_table(EVENTS).map_err(backend)?;
            let meta = tx.open_table(META).map_err(backend)?;
            meta.get("revision").map_err(backend)?.map_or(0, |v| v.value())
        };
        tx.commit().map_err(backend)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            revision: Arc::new(AtomicU64::new(revision)),
            write: Arc::new(Mutex::new(())),
            live: broadcast::channel(LIVE_QUEUE).0,
            history: history.max(1),
        })
    }

    fn read_one(db: &Database, key: &Key) -> Result<Option<Stored>, StoreError> {
        let tx = db.begin_read().map_err(backend)?;
        let t = tx.open_table(OBJECTS).map_err(backend)?;
        match t.get(db_key(key).as_str()).map_err(backend)? {
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(backend),
            None => Ok(None),
        }
    }

    /// One write (a put or a delete), under the write lock: check the precondition, apply, log the event, commit,
    /// broadcast.
    #[allow(clippy::too_many_arguments)]
    fn write_blocking(
        db: &Database,
        revision: &AtomicU64,
        lock: &Mutex<()>,
        live: &broadcast::Sender<Event>,
        history: u64,
        key: &Key,
        value: Option<Value>,
        pre: Precondition,
    ) -> Result<Option<u64>, StoreError> {
        let _serial = lock
            .lock()
            .map_err(|_| StoreError::Backend("the write lock is poisoned".into()))?;
        let tx = db.begin_write().map_err(backend)?;
        let dk = db_key(key);
        let event;
        {
            let mut objects = tx.open_table(OBJECTS).map_err(backend)?;
            let current: Option<Stored> = match objects.get(dk.as_str()).map_err(backend)? {
                Some(v) => Some(serde_json::from_slice(v.value()).map_err(backend)?),
                None => None,
            };
            let actual = current.as_ref().map(|s| s.revision);
            let ok = match pre {
                Precondition::None => true,
                Precondition::Absent => actual.is_none(),
                Precondition::Revision(r) => actual == Some(r),
            };
            if !ok {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: match pre {
                        Precondition::Revision(r) => Some(r),
                        _ => None,
                    },
                    actual,
                });
            }
            if value.is_none() && current.is_none() {
                return Ok(None);
            }
            let rev = revision.load(Ordering::SeqCst) + 1;
            event = match value {
                Some(value) => {
                    let stored = Stored {
                        key: key.clone(),
                        value,
                        revision: rev,
                        create_revision: current.map_or(rev, |c| c.create_revision),
                    };
                    let bytes = serde_json::to_vec(&stored).map_err(backend)?;
                    objects.insert(dk.as_str(), bytes.as_slice()).map_err(backend)?;
                    Event::Put(stored)
                }
                None => {
                    objects.remove(dk.as_str()).map_err(backend)?;
                    Event::Delete {
                        key: key.clone(),
                        revision: rev,
                    }
                }
            };
            let mut events = tx.open_table(EVENTS).map_err(backend)?;
            let bytes = serde_json::to_vec(&event).map_err(backend)?;
            events.insert(rev, bytes.as_slice()).map_err(backend)?;
            if rev > history {
                let cut = rev - history;
                events.retain_in(..=cut, |_, _| false).map_err(backend)?;
            }
            let mut meta = tx.open_table(META).map_err(backend)?;
            meta.insert("revision", rev).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        let rev = event.revision();
        revision.store(rev, Ordering::SeqCst);
        let _ = live.send(event); // nobody listening is fine
        Ok(Some(rev))
    }

    /// The kept events after `from`, and the oldest revision still kept.
    fn history(db: &Database, from: u64) -> Result<(Vec<Event>, u64), StoreError> {
        let tx = db.begin_read().map_err(backend)?;
        let t = tx.open_table(EVENTS).map_err(backend)?;
        let oldest = t.first().map_err(backend)?.map_or(u64::MAX, |(k, _)| k.value());
        let mut out = Vec::new();
        for item in t.range(from.saturating_add(1)..).map_err(backend)? {
            let (_, v) = item.map_err(backend)?;
            out.push(serde_json::from_slice(v.value()).map_err(backend)?);
        }
        Ok((out, oldest))
    }
}

impl Store for EmbeddedStore {
    fn get<'a>(&'a self, key: &'a Key) -> StoreFuture<'a, Option<Stored>> {
        let (db, key) = (self.db.clone(), key.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || Self::read_one(&db, &key))
                .await
                .map_err(backend)?
        })
    }

    fn put<'a>(&'a self, key: &'a Key, value: Value, pre: Precondition) -> StoreFuture<'a, u64> {
        let (db, rev, lock, live, key, h) = (
            self.db.clone(),
            self.revision.clone(),
            self.write.clone(),
            self.live.clone(),
            key.clone(),
            self.history,
        );
        Box::pin(async move {
            let r = tokio::task::spawn_blocking(move || {
                Self::write_blocking(&db, &rev, &lock, &live, h, &key, Some(value), pre)
            })
            .await
            .map_err(backend)??;
            r.ok_or_else(|| StoreError::Backend("a put wrote nothing".into()))
        })
    }

    fn delete<'a>(&'a self, key: &'a Key, pre: Precondition) -> StoreFuture<'a, Option<u64>> {
        let (db, rev, lock, live, key, h) = (
            self.db.clone(),
            self.revision.clone(),
            self.write.clone(),
            self.live.clone(),
            key.clone(),
            self.history,
        );
        Box::pin(async move {
            tokio::task::spawn_blocking(move || Self::write_blocking(&db, &rev, &lock, &live, h, &key, None, pre))
                .await
                .map_err(backend)?
        })
    }

    fn list<'a>(&'a self, kind: Option<&'a str>, namespace: Option<&'a str>) -> StoreFuture<'a, (Vec<Stored>, u64)> {
        let (db, kind, ns) = (self.db.clone(), kind.map(str::to_owned), namespace.map(str::to_owned));
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let tx = db.begin_read().map_err(backend)?;
                let t = tx.open_table(OBJECTS).map_err(backend)?;
                let meta = tx.open_table(META).map_err(backend)?;
                let rev = meta.get("revision").map_err(backend)?.map_or(0, |v| v.value());
                let mut out = Vec::new();
                for item in t.iter().map_err(backend)? {
                    let (_, v) = item.map_err(backend)?;
                    let s: Stored = serde_json::from_slice(v.value()).map_err(backend)?;
                    if kind.as_deref().is_none_or(|k| k == s.key.kind)
                        && ns.as_deref().is_none_or(|n| n == s.key.namespace)
                    {
                        out.push(s);
                    }
                }
                Ok((out, rev))
            })
            .await
            .map_err(backend)?
        })
    }

    fn watch(&self, from_revision: u64) -> StoreFuture<'_, WatchStream> {
        // Subscribe before reading the history, so that nothing falls between the two (what is in both is sent
        // once: live events at or below the last revision sent are skipped).
        let live = self.live.subscribe();
        let db = self.db.clone();
        let current = self.revision.load(Ordering::SeqCst);
        Box::pin(async move {
            let (past, oldest) = tokio::task::spawn_blocking(move || Self::history(&db, from_revision))
                .await
                .map_err(backend)??;
            if from_revision < current && from_revision.saturating_add(1) < oldest {
                return Err(StoreError::Compacted {
                    requested: from_revision,
                    oldest: if oldest == u64::MAX { current } else { oldest },
                });
            }
            let state = WatchState {
                past: past.into(),
                live,
                last: from_revision,
                done: false,
            };
            let s: WatchStream = Box::pin(futures_util::stream::unfold(state, next_event));
            Ok(s)
        })
    }

    fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }
}

struct WatchState {
    past: std::collections::VecDeque<Event>,
    live: broadcast::Receiver<Event>,
    last: u64,
    done: bool,
}

async fn next_event(mut st: WatchState) -> Option<(Result<Event, StoreError>, WatchState)> {
    if st.done {
        return None;
    }
    if let Some(e) = st.past.pop_front() {
        st.last = e.revision();
        return Some((Ok(e), st));
    }
    loop {
        match st.live.recv().await {
            Ok(e) if e.revision() <= st.last => continue,
            Ok(e) => {
                st.last = e.revision();
                return Some((Ok(e), st));
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                st.done = true;
                return Some((Err(StoreError::Lagged), st));
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

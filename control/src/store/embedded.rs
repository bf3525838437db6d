//! The embedded backend: one redb database file on local disk, no setup.
//!
//! `DIR/l7mp.redb` holds three tables, all written in the same transaction per write:
//! - `objects`: `(kind, namespace, name)` → the JSON of the value with its revisions;
//! - `events`: revision → the JSON of the [`Event`] (the watch history, the last
//!   [`EmbeddedOptions::history`] revisions);
//! - `meta`: the current revision and the compacted revision (history holds every event after it).
//!
//! Every commit is durable (redb's default, fsync) before the call returns, so whatever a call
//! reported as written survives a crash or restart. Writes are serialised by one lock that also
//! covers the broadcast of the event to live watchers, so watchers see events in revision order.
//! The lock is held inside `spawn_blocking`, never across an `.await`.
//!
//! Watchers share one `tokio::sync::broadcast` channel. A watcher that falls more than
//! [`EmbeddedOptions::watch_buffer`] events behind does not slow writers down: it catches up
//! from the on-disk history, and only if that was compacted past its position does it get
//! [`StoreError::Compacted`] (then it relists).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use super::{BoxFuture, Event, Key, Listing, Precondition, Store, StoreError, Stored, WatchStream};

/// The database file's name inside the store directory.
pub const DB_FILE: &str = "l7mp.redb";

const OBJECTS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// Tuning of the embedded backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// How many revisions of history to keep for watches (at least 1).
    pub history: u64,
    /// How many events a live watcher may fall behind before it catches up from disk.
    pub watch_buffer: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            history: 10_000,
            watch_buffer: 1024,
        }
    }
}

/// The embedded store (see the module documentation). Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    options: EmbeddedOptions,
    /// Serialises writes and the broadcast of their events.
    write: Mutex<()>,
    revision: AtomicU64,
    events: broadcast::Sender<Event>,
}

/// An object's record in the `objects` table.
#[derive(Serialize, Deserialize)]
struct Record {
    revision: u64,
    create_revision: u64,
    value: Value,
}

fn backend(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(Box::new(error.into()))
}

fn corrupt(what: &str, error: serde_json::Error) -> StoreError {
    StoreError::Backend(format!("corrupt {what} in the store: {error}").into())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|error| StoreError::Backend(Box::new(error)))
}

impl EmbeddedStore {
    /// Opens (creating if missing) the store in `dir`, with default options. Blocks on disk I/O.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(dir, EmbeddedOptions::default())
    }

    /// Opens (creating if missing) the store in `dir`. Fails with [`StoreError::Open`] naming the
    /// path if the directory cannot be created or the file cannot be opened (permissions, another
    /// process or another `EmbeddedStore` holding it, corruption).
    pub fn open_with(dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore, StoreError> {
        let options = EmbeddedOptions {
            history: options.history.max(1),
            watch_buffer: options.watch_buffer.max(1),
        };
        std::fs::create_dir_all(dir).map_err(|error| StoreError::Open {
            path: dir.to_path_buf(),
            source: Box::new(error),
        })?;
        let path = dir.join(DB_FILE);
        let open_error = |error: redb::Error| StoreError::Open {
            path: path.clone(),
            source: Box::new(error),
        };
        let db = Database::create(&path).map_err(|error| open_error(error.into()))?;
        let txn = db.begin_write().map_err(|error| open_error(error.into()))?;
        let revision = {
            txn.open_table(OBJECTS).map_err(|error| open_error(error.into()))?;
            txn.open_table(EVENTS).map_err(|error| open_error(error.into()))?;
            let meta = txn.open_table(META).map_err(|error| open_error(error.into()))?;
            let revision = meta
                .get(META_REVISION)
                .map_err(|error| open_error(error.into()))?
                .map(|g| g.value());
            revision.unwrap_or(0)
        };
        txn.commit().map_err(|error| open_error(error.into()))?;
        let (events, _) = broadcast::channel(options.watch_buffer);
        tracing::debug!(path = %path.display(), revision, "embedded store opened");
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                path,
                options,
                write: Mutex::new(()),
                revision: AtomicU64::new(revision),
                events,
            }),
        })
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs blocking work on Tokio's blocking pool.
    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || work(&inner)).await {
                Ok(result) => result,
                Err(error) => Err(StoreError::Backend(Box::new(error))),
            }
        })
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .field("revision", &self.inner.revision.load(Ordering::SeqCst))
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Inner {
    fn get(&self, key: &Key) -> Result<Option<Stored>, StoreError> {
        key.validate()?;
        let txn = self.db.begin_read().map_err(backend)?;
        let objects = txn.open_table(OBJECTS).map_err(backend)?;
        let found = objects
            .get((key.kind.as_str(), key.namespace.as_str(), key.name.as_str()))
            .map_err(backend)?;
        match found {
            None => Ok(None),
            Some(guard) => {
                let record: Record = serde_json::from_slice(guard.value()).map_err(|e| corrupt("object", e))?;
                Ok(Some(Stored {
                    key: key.clone(),
                    value: record.value,
                    revision: record.revision,
                    create_revision: record.create_revision,
                }))
            }
        }
    }

    /// Writes `value` at `key` (`None`: deletes it) if `pre` holds. Returns the write's revision,
    /// `None` if it wrote nothing (deleting an absent object).
    fn write(&self, key: &Key, value: Option<Value>, pre: Precondition) -> Result<Option<u64>, StoreError> {
        key.validate()?;
        let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let txn = self.db.begin_write().map_err(backend)?;
        let event = {
            let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
            let tuple = (key.kind.as_str(), key.namespace.as_str(), key.name.as_str());
            let current: Option<(u64, u64)> = match objects.get(tuple).map_err(backend)? {
                None => None,
                Some(guard) => {
                    let record: Record = serde_json::from_slice(guard.value()).map_err(|e| corrupt("object", e))?;
                    Some((record.revision, record.create_revision))
                }
            };
            pre.check(key, current.map(|(revision, _)| revision))?;
            let revision = self.revision.load(Ordering::SeqCst) + 1;
            let event = match value {
                Some(value) => {
                    let create_revision = current.map_or(revision, |(_, created)| created);
                    let record = Record {
                        revision,
                        create_revision,
                        value,
                    };
                    objects.insert(tuple, encode(&record)?.as_slice()).map_err(backend)?;
                    Event::Put(Stored {
                        key: key.clone(),
                        value: record.value,
                        revision,
                        create_revision,
                    })
                }
                None => {
                    if current.is_none() {
                        return Ok(None);
                    }
                    objects.remove(tuple).map_err(backend)?;
                    Event::Delete {
                        key: key.clone(),
                        revision,
                    }
                }
            };
            let mut events = txn.open_table(EVENTS).map_err(backend)?;
            events.insert(revision, encode(&event)?.as_slice()).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(META_REVISION, revision).map_err(backend)?;
            let compacted = meta.get(META_COMPACTED).map_err(backend)?.map_or(0, |g| g.value());
            let floor = revision.saturating_sub(self.options.history);
            if floor > compacted {
                events.retain_in(..=floor, |_, _| false).map_err(backend)?;
                meta.insert(META_COMPACTED, floor).map_err(backend)?;
            }
            event
        };
        txn.commit().map_err(backend)?;
        let revision = event.revision();
        self.revision.store(revision, Ordering::SeqCst);
        // No receivers is fine: nobody watches.
        let _ = self.events.send(event);
        Ok(Some(revision))
    }

    fn list(&self, kind: Option<&str>, namespace: Option<&str>) -> Result<Listing, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let revision = meta.get(META_REVISION).map_err(backend)?.map_or(0, |g| g.value());
        let objects = txn.open_table(OBJECTS).map_err(backend)?;
        let range = match kind {
            Some(kind) => objects.range((kind, "", "")..).map_err(backend)?,
            None => objects.range::<(&str, &str, &str)>(..).map_err(backend)?,
        };
        let mut items = Vec::new();
        for entry in range {
            let (k, v) = entry.map_err(backend)?;
            let (k_kind, k_namespace, k_name) = k.value();
            if kind.is_some_and(|kind| kind != k_kind) {
                break;
            }
            if namespace.is_some_and(|namespace| namespace != k_namespace) {
                continue;
            }
            let record: Record = serde_json::from_slice(v.value()).map_err(|e| corrupt("object", e))?;
            items.push(Stored {
                key: Key::new(k_kind, k_namespace, k_name),
                value: record.value,
                revision: record.revision,
                create_revision: record.create_revision,
            });
        }
        Ok(Listing { items, revision })
    }

    /// The events after `from` kept on disk, in a read transaction `txn`.
    fn history_in(txn: &redb::ReadTransaction, from: u64) -> Result<VecDeque<Event>, StoreError> {
        let meta = txn.open_table(META).map_err(backend)?;
        let compacted = meta.get(META_COMPACTED).map_err(backend)?.map_or(0, |g| g.value());
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let mut out = VecDeque::new();
        for entry in events.range(from.saturating_add(1)..).map_err(backend)? {
            let (_, v) = entry.map_err(backend)?;
            out.push_back(serde_json::from_slice(v.value()).map_err(|e| corrupt("event", e))?);
        }
        Ok(out)
    }

    fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let revision = revision.min(self.revision.load(Ordering::SeqCst));
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let compacted = meta.get(META_COMPACTED).map_err(backend)?.map_or(0, |g| g.value());
            if revision <= compacted {
                return Ok(());
            }
            let mut events = txn.open_table(EVENTS).map_err(backend)?;
            events.retain_in(..=revision, |_, _| false).map_err(backend)?;
            meta.insert(META_COMPACTED, revision).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }
}

/// A watcher's state between two events.
struct Watcher {
    store: Weak<Inner>,
    backlog: VecDeque<Event>,
    live: broadcast::Receiver<Event>,
    /// The revision of the last event delivered (or the revision watched from).
    last: u64,
    done: bool,
}

impl Watcher {
    async fn next(mut self) -> Option<(Result<Event, StoreError>, Watcher)> {
        if self.done {
            return None;
        }
        loop {
            if let Some(event) = super::next_after(&mut self.backlog, &mut self.last) {
                return Some((Ok(event), self));
            }
            match self.live.recv().await {
                Ok(event) if event.revision() <= self.last => {}
                Ok(event) if event.revision() == self.last + 1 => {
                    self.last = event.revision();
                    return Some((Ok(event), self));
                }
                // Fell behind (or, defensively, a gap): catch up from the on-disk history. Every
                // event broadcast is committed first, so the history read now covers everything
                // the receiver skipped; later events arrive through the receiver again.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let store = self.store.upgrade()?;
                    let from = self.last;
                    let read = tokio::task::spawn_blocking(move || {
                        let txn = store.db.begin_read().map_err(backend)?;
                        Inner::history_in(&txn, from)
                    })
                    .await;
                    match read {
                        Ok(Ok(backlog)) => self.backlog = backlog,
                        Ok(Err(error)) => {
                            self.done = true;
                            return Some((Err(error), self));
                        }
                        Err(error) => {
                            self.done = true;
                            return Some((Err(StoreError::Backend(Box::new(error))), self));
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Store for EmbeddedStore {
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        let key = key.clone();
        self.blocking(move |inner| inner.get(&key))
    }

    fn put<'a>(&'a self, key: &'a Key, value: Value, pre: Precondition) -> BoxFuture<'a, Result<u64, StoreError>> {
        let key = key.clone();
        self.blocking(move |inner| {
            inner
                .write(&key, Some(value), pre)?
                .ok_or_else(|| StoreError::Backend("a put wrote no revision".into()))
        })
    }

    fn delete<'a>(&'a self, key: &'a Key, pre: Precondition) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        let key = key.clone();
        self.blocking(move |inner| inner.write(&key, None, pre))
    }

    fn list<'a>(
        &'a self,
        kind: Option<&'a str>,
        namespace: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Listing, StoreError>> {
        let kind = kind.map(str::to_string);
        let namespace = namespace.map(str::to_string);
        self.blocking(move |inner| inner.list(kind.as_deref(), namespace.as_deref()))
    }

    fn watch(&self, from_revision: u64) -> BoxFuture<'_, Result<WatchStream, StoreError>> {
        let weak = Arc::downgrade(&self.inner);
        self.blocking(move |inner| {
            // Subscribe and take the read snapshot under the write lock: every event is then
            // either in the snapshot or broadcast to this receiver (or both; duplicates are skipped).
            let (live, txn) = {
                let _guard = inner.write.lock().unwrap_or_else(PoisonError::into_inner);
                (inner.events.subscribe(), inner.db.begin_read().map_err(backend)?)
            };
            let backlog = Inner::history_in(&txn, from_revision)?;
            let watcher = Watcher {
                store: weak,
                backlog,
                live,
                last: from_revision,
                done: false,
            };
            let stream: WatchStream = Box::pin(futures_util::stream::unfold(watcher, Watcher::next));
            Ok(stream)
        })
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.blocking(move |inner| inner.compact(revision))
    }

    fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::SeqCst)
    }
}

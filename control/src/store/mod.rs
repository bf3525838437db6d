//! Where the mesh's desired state lives: the [`Store`] trait and its backends.
//!
//! A store holds JSON objects under a [`Key`] (kind, namespace, name) with etcd's model of revisions: one global
//! revision per store, incremented by every write; each object carries the revision of its last write (`revision`)
//! and of its creation. Writes may be conditional ([`Precondition`]: compare-and-swap on the revision, or "must not
//! exist"). [`Store::watch`] streams every change after a revision, in order, without gaps or duplicates, and fails
//! with [`StoreError::Compacted`] when that history is gone (the caller lists again).
//!
//! The embedded backend ([`embedded::EmbeddedStore`], redb) is the default. Every backend passes the same suite
//! ([`conformance`]).

pub mod conformance;
pub mod embedded;

use futures_util::Stream;
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Key {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Key {
        Key {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// An object as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    pub key: Key,
    pub value: Value,
    /// The revision of the last write.
    pub revision: u64,
    /// The revision of the write that created it.
    pub create_revision: u64,
}

/// One change, as a watch reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Event {
    Put(Stored),
    Delete { key: Key, revision: u64 },
}

impl Event {
    pub fn revision(&self) -> u64 {
        match self {
            Event::Put(s) => s.revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

/// The condition a write is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// The object must not exist (create only).
    Absent,
    /// The object's revision must be this (compare-and-swap).
    Revision(u64),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key}: the write was conditional on revision {expected:?} but the object is at {actual:?}")]
    Conflict {
        key: Key,
        /// `None`: the write wanted the object absent.
        expected: Option<u64>,
        /// `None`: the object does not exist.
        actual: Option<u64>,
    },
    #[error("the history before revision {requested} is gone (the oldest kept is {oldest}): list again")]
    Compacted { requested: u64, oldest: u64 },
    #[error("the watch fell behind the writes and was dropped: list again")]
    Lagged,
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store: {0}")]
    Backend(String),
    #[error("{0}")]
    Url(String),
}

/// A boxed future of a store operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The events after a revision, then live ones. An `Err` ends it.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event, StoreError>> + Send>>;

/// A store of the desired state.
pub trait Store: Send + Sync {
    /// The object at `key`.
    fn get<'a>(&'a self, key: &'a Key) -> StoreFuture<'a, Option<Stored>>;
    /// Writes `value` at `key` if `pre` holds; returns the new revision.
    fn put<'a>(&'a self, key: &'a Key, value: Value, pre: Precondition) -> StoreFuture<'a, u64>;
    /// Deletes `key` if `pre` holds; returns the revision of the delete, or `None` if there was nothing.
    fn delete<'a>(&'a self, key: &'a Key, pre: Precondition) -> StoreFuture<'a, Option<u64>>;
    /// The objects of a kind and namespace (`None`: all), sorted by key, and the store revision they are from.
    fn list<'a>(&'a self, kind: Option<&'a str>, namespace: Option<&'a str>) -> StoreFuture<'a, (Vec<Stored>, u64)>;
    /// Every change with a revision above `from_revision`, in order, then live changes.
    fn watch(&self, from_revision: u64) -> StoreFuture<'_, WatchStream>;
    /// The current revision.
    fn revision(&self) -> u64;
}

/// Opens the store a URL names: `embedded:DIR` (the default is `embedded:./l7mp-data`).
pub async fn open_url(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    match url.split_once(':') {
        Some(("embedded", dir)) if !dir.is_empty() => {
            let dir = std::path::PathBuf::from(dir);
            let store = tokio::task::spawn_blocking(move || embedded::EmbeddedStore::open(&dir))
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))??;
            Ok(Arc::new(store))
        }
        Some(("etcd", _)) | Some(("kubernetes", _)) => Err(StoreError::Url(format!(
            "{url:?}: this store backend comes with a later release; use embedded:DIR"
        ))),
        _ => Err(StoreError::Url(format!(
            "{url:?}: expected embedded:DIR (e.g. embedded:./l7mp-data)"
        ))),
    }
}

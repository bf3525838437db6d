//! The store of the desired state: where VirtualServices, Routes, Targets and the rest live.
//!
//! [`Store`] is a small, etcd-shaped key-value interface over JSON objects:
//!
//! - keys are `kind/namespace/name` ([`Key`]);
//! - every write (put or delete) takes the next value of one store-wide, monotonically increasing
//!   revision, persisted with the data; an object remembers the revision of its last write
//!   ([`Stored::revision`]) and of its creation ([`Stored::create_revision`]);
//! - writes can be conditional ([`Precondition`]): compare-and-swap on an object's revision, or
//!   "create only if absent"; a failed condition is [`StoreError::Conflict`] and consumes no
//!   revision;
//! - [`Store::watch`] streams every event after a revision, in revision order, with no gaps and no
//!   duplicates, then live events; if that history is gone the watch fails with
//!   [`StoreError::Compacted`] and the caller relists ([`Store::list`] returns the revision its
//!   snapshot was taken at, the revision to watch from).
//!
//! Backends: [`embedded::EmbeddedStore`] (the default, a redb file on local disk). etcd and
//! Kubernetes come later and must pass [`conformance`], the suite the embedded backend passes.
//! [`open`] turns a store URL (`embedded:DIR`) into a backend.

pub mod conformance;
pub mod embedded;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use embedded::{EmbeddedOptions, EmbeddedStore};

/// The store URL used when none is given.
pub const DEFAULT_STORE_URL: &str = "embedded:./l7mp-data";

/// A boxed, sendable future: what the [`Store`] methods return so that `Arc<dyn Store>` works.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The events of a watch; it ends when the store is closed. After an `Err` the stream ends.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event, StoreError>> + Send>>;

/// The name of a stored object.
///
/// `kind` and `name` must not be empty; `namespace` may be (cluster-wide objects). No part may
/// contain `/` (so that the `kind/namespace/name` form is unambiguous) or a NUL character.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    /// A key from its three parts (not yet validated: the store validates on every call).
    pub fn new(kind: impl Into<String>, namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Checks the rules above; every backend calls this before touching its storage.
    pub fn validate(&self) -> Result<(), StoreError> {
        let invalid = |reason: &str| {
            Err(StoreError::InvalidKey {
                key: self.to_string(),
                reason: reason.to_string(),
            })
        };
        if self.kind.is_empty() {
            return invalid("the kind is empty");
        }
        if self.name.is_empty() {
            return invalid("the name is empty");
        }
        for (part, value) in [
            ("kind", &self.kind),
            ("namespace", &self.namespace),
            ("name", &self.name),
        ] {
            if value.contains('/') || value.contains('\0') {
                return invalid(&format!("the {part} contains '/' or NUL"));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// An object as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub key: Key,
    pub value: Value,
    /// The revision of the object's last write.
    pub revision: u64,
    /// The revision at which the object was created (kept by later puts; a put after a delete
    /// creates it anew).
    pub create_revision: u64,
}

/// One change, as a watch delivers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// The object was created or replaced; `Stored::revision` is the event's revision.
    Put(Stored),
    /// The object was deleted at `revision`.
    Delete { key: Key, revision: u64 },
}

impl Event {
    /// The revision of the write this event reports.
    pub fn revision(&self) -> u64 {
        match self {
            Event::Put(stored) => stored.revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    /// The key of the object this event is about.
    pub fn key(&self) -> &Key {
        match self {
            Event::Put(stored) => &stored.key,
            Event::Delete { key, .. } => key,
        }
    }
}

/// The condition of a write (compare-and-swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Unconditional.
    None,
    /// Only if the object does not exist (create).
    Absent,
    /// Only if the object exists and its last write was at this revision.
    Revision(u64),
}

impl fmt::Display for Precondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Precondition::None => f.write_str("anything"),
            Precondition::Absent => f.write_str("absent"),
            Precondition::Revision(revision) => write!(f, "revision {revision}"),
        }
    }
}

impl Precondition {
    /// Whether an object whose current revision is `actual` (`None`: absent) satisfies it.
    pub fn holds(self, actual: Option<u64>) -> bool {
        match self {
            Precondition::None => true,
            Precondition::Absent => actual.is_none(),
            Precondition::Revision(expected) => actual == Some(expected),
        }
    }

    /// `Ok` if it [holds](Self::holds), else the [`StoreError::Conflict`] for `key`.
    pub fn check(self, key: &Key, actual: Option<u64>) -> Result<(), StoreError> {
        if self.holds(actual) {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                key: key.clone(),
                expected: self,
                actual,
            })
        }
    }
}

/// A consistent snapshot of some objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// The objects, ordered by key (kind, then namespace, then name).
    pub items: Vec<Stored>,
    /// The store's revision when the snapshot was taken: watch from it to follow the changes.
    pub revision: u64,
}

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition did not hold; nothing was written.
    #[error("conflict on {key}: expected {expected}, found {}", describe_actual(*.actual))]
    Conflict {
        key: Key,
        expected: Precondition,
        actual: Option<u64>,
    },
    /// The history needed to watch from `requested` has been discarded; list again and watch from
    /// the listing's revision.
    #[error("revision {requested} is compacted (history starts after revision {compacted}); list again")]
    Compacted { requested: u64, compacted: u64 },
    /// The key breaks the rules of [`Key`].
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    /// The store URL is malformed or names a backend that does not exist (yet).
    #[error("store URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// The store could not be opened (missing permissions, locked by another process, corrupt file).
    #[error("cannot open the store at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend failed (I/O error, corrupt record, connection lost).
    #[error("store backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend does not implement this operation.
    #[error("the {backend} store does not support {operation}")]
    Unsupported {
        backend: &'static str,
        operation: &'static str,
    },
}

fn describe_actual(actual: Option<u64>) -> String {
    match actual {
        Some(revision) => format!("revision {revision}"),
        None => "absent".to_string(),
    }
}

/// The desired-state store. Object safe: hold it as `Arc<dyn Store>`.
///
/// Every backend must pass [`conformance`]. The contract:
/// - `put` and `delete` return the revision they were written at, greater than every revision
///   returned before; a failed precondition returns [`StoreError::Conflict`] and writes nothing;
/// - `delete` of an absent object (whose precondition holds) returns `Ok(None)` and writes nothing;
/// - `list` filters by kind and/or namespace and returns a snapshot with its revision;
/// - `watch(r)` yields every event with a revision greater than `r` in order, exactly once, then
///   the live events; [`StoreError::Compacted`] if those events are no longer kept.
pub trait Store: Send + Sync {
    /// The object at `key`, if any.
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Stored>, StoreError>>;
    /// Creates or replaces the object at `key`; returns the write's revision.
    fn put<'a>(&'a self, key: &'a Key, value: Value, pre: Precondition) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// Deletes the object at `key`; returns the write's revision, `None` if there was no object.
    fn delete<'a>(&'a self, key: &'a Key, pre: Precondition) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;
    /// The objects of a kind (all kinds with `None`) in a namespace (all with `None`).
    fn list<'a>(
        &'a self,
        kind: Option<&'a str>,
        namespace: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Listing, StoreError>>;
    /// The events after `from_revision`, then live events.
    fn watch(&self, from_revision: u64) -> BoxFuture<'_, Result<WatchStream, StoreError>>;
    /// Discards the history up to and including `revision` (watching from an earlier revision
    /// fails with [`StoreError::Compacted`] afterwards). Backends that compact on their own may
    /// return [`StoreError::Unsupported`].
    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The revision of the latest write (0 for a store never written to).
    fn revision(&self) -> u64;
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `embedded:DIR`: the embedded backend with its files in `DIR`.
    Embedded(PathBuf),
}

/// Parses a store URL: `embedded:DIR` today; `etcd://` and `kubernetes:` come with later releases.
pub fn parse_store_url(url: &str) -> Result<StoreUrl, StoreError> {
    let error = |reason: &str| StoreError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let Some((scheme, rest)) = url.split_once(':') else {
        return Err(error("expected SCHEME:..., for example embedded:./l7mp-data"));
    };
    match scheme {
        "embedded" => {
            // Accept `embedded://DIR` as well as `embedded:DIR`.
            let dir = rest.strip_prefix("//").unwrap_or(rest);
            if dir.is_empty() {
                return Err(error(
                    "the embedded store needs a directory, for example embedded:./l7mp-data",
                ));
            }
            Ok(StoreUrl::Embedded(PathBuf::from(dir)))
        }
        "etcd" | "etcds" => Err(error("etcd:// comes with a later release; use embedded:DIR")),
        "kubernetes" | "k8s" => Err(error("kubernetes: comes with a later release; use embedded:DIR")),
        other => Err(error(&format!("unknown store scheme {other:?}; use embedded:DIR"))),
    }
}

/// Opens the store a URL names (see [`parse_store_url`]). Blocks while the embedded backend opens
/// its file: call it at startup, or from `spawn_blocking`.
pub fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    match parse_store_url(url)? {
        StoreUrl::Embedded(dir) => Ok(Arc::new(EmbeddedStore::open(&dir)?)),
    }
}

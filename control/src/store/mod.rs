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
//! Backends: [`embedded::EmbeddedStore`] (the default, a redb file on local disk),
//! [`etcd::EtcdStore`] (an etcd v3 cluster) and [`kubernetes::KubernetesStore`] (custom resources
//! through the Kubernetes API server); every backend must pass [`conformance`]. [`open`] turns a
//! store URL (`embedded:DIR`, `etcd://HOST:PORT/PREFIX`, `kubernetes:`) into a backend.

pub mod conformance;
pub mod embedded;
pub mod etcd;
pub mod kubernetes;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use etcd::EtcdStore;
pub use kubernetes::{KubernetesStore, KubernetesUrl};

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
    /// The key breaks the rules of [`Key`], or names what the backend cannot hold (the kubernetes store: a kind
    /// other than the four l7mp kinds, an empty namespace).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    /// The backend cannot hold the value (the kubernetes store: not an l7mp object, or refused by the API server's
    /// validation against the CRD schema); nothing was written.
    #[error("invalid value for {key}: {reason}")]
    InvalidValue { key: String, reason: String },
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
    /// The store cannot be reached (etcd down or unreachable, TLS refused, no answer in time).
    /// Nothing is known to have been written; the caller may retry later.
    #[error("the store is unavailable: {reason}")]
    Unavailable { reason: String },
    /// The backend failed (I/O error, corrupt record, an error reported by the server).
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
    /// The latest revision this store has seen: the revision of the latest write (0 for a fresh
    /// embedded store). A backend whose revision counter is shared with other users (etcd, where
    /// other prefixes write too) reports the highest revision its answers carried, so it may move
    /// without writes to this store's objects.
    fn revision(&self) -> u64;
    /// What the backend can hold (the conformance suite adapts its keys and values to it).
    fn capabilities(&self) -> Capabilities {
        Capabilities::ANY
    }
    /// A cheap call that fails when the store cannot be reached (the controller's health probe).
    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let key = Key::new("Health", "", "probe");
            self.get(&key).await.map(|_| ())
        })
    }
}

/// What a backend can hold. The embedded and etcd backends hold any kind and any JSON value
/// ([`Capabilities::ANY`]); the kubernetes backend holds the four l7mp kinds as namespaced custom resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Only these kinds (`None`: any kind).
    pub kinds: Option<&'static [&'static str]>,
    /// Whether an empty namespace (a cluster-wide object) can be stored.
    pub cluster_wide: bool,
    /// Whether a value may be any JSON; else it must be an l7mp resource document (`{apiVersion, kind, metadata,
    /// spec}`) whose `spec` fits its kind's CRD schema.
    pub any_value: bool,
    /// Whether [`Stored::create_revision`] is kept (else it is 0).
    pub create_revision: bool,
}

impl Capabilities {
    /// Any kind, any namespace, any value, creation revisions kept.
    pub const ANY: Capabilities = Capabilities {
        kinds: None,
        cluster_wide: true,
        any_value: true,
        create_revision: true,
    };
}

/// The next event of a watcher's `backlog` with a revision after `*last` (older ones, already delivered, are
/// dropped), advancing `*last` to it: what keeps a watch free of duplicates across replays and reconnects.
pub(crate) fn next_after(backlog: &mut std::collections::VecDeque<Event>, last: &mut u64) -> Option<Event> {
    while let Some(event) = backlog.pop_front() {
        if event.revision() > *last {
            *last = event.revision();
            return Some(event);
        }
    }
    None
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `embedded:DIR`: the embedded backend with its files in `DIR`.
    Embedded(PathBuf),
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` or `etcds://...?ca=FILE[&cert=FILE&key=FILE]`.
    Etcd(EtcdUrl),
    /// `kubernetes:[?kubeconfig=PATH&context=C&namespace=NS]`.
    Kubernetes(KubernetesUrl),
}

/// Where an etcd store lives: the cluster's client endpoints, the key prefix, TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `HOST:PORT` of each endpoint (IPv6 hosts in brackets).
    pub endpoints: Vec<String>,
    /// The key prefix, starting with `/` and not ending with it (default [`DEFAULT_ETCD_PREFIX`]).
    pub prefix: String,
    /// `Some` for `etcds://`.
    pub tls: Option<EtcdTls>,
}

/// The TLS files of an `etcds://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA certificate (PEM) that signed the servers' certificates.
    pub ca: PathBuf,
    /// The client certificate and its key (PEM), for servers that authenticate clients.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The etcd key prefix used when the URL names none.
pub const DEFAULT_ETCD_PREFIX: &str = "/l7mp";

impl EtcdUrl {
    /// The endpoint URLs as the etcd client takes them (`http://` or `https://`).
    pub fn endpoint_urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.endpoints.iter().map(|e| format!("{scheme}://{e}")).collect()
    }
}

/// Parses a store URL: `embedded:DIR`, `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`,
/// `etcds://HOST:PORT[,...][/PREFIX]?ca=FILE[&cert=FILE&key=FILE]`,
/// `kubernetes:[?kubeconfig=PATH&context=C&namespace=NS]`.
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
        "etcd" | "etcds" => {
            let Some(rest) = rest.strip_prefix("//") else {
                return Err(error(&format!("expected {scheme}://HOST:PORT[,HOST:PORT...][/PREFIX]")));
            };
            parse_etcd(rest, scheme == "etcds")
                .map(StoreUrl::Etcd)
                .map_err(|reason| error(&reason))
        }
        "kubernetes" | "k8s" => parse_kubernetes(rest)
            .map(StoreUrl::Kubernetes)
            .map_err(|reason| error(&reason)),
        other => Err(error(&format!(
            "unknown store scheme {other:?}; use embedded:DIR, etcd://HOST:PORT or kubernetes:"
        ))),
    }
}

/// The part of an etcd URL after `etcd://`; the error is the reason.
fn parse_etcd(rest: &str, tls: bool) -> Result<EtcdUrl, String> {
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (hosts, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let mut endpoints = Vec::new();
    for endpoint in hosts.split(',') {
        endpoints.push(parse_endpoint(endpoint)?);
    }
    let prefix = match path.trim_end_matches('/') {
        "" => DEFAULT_ETCD_PREFIX.to_string(),
        prefix => {
            if prefix.split('/').skip(1).any(str::is_empty) {
                return Err(format!("the prefix {prefix:?} has an empty segment ('//')"));
            }
            percent_decode(prefix)?
        }
    };
    if prefix.contains('\0') {
        return Err("the prefix contains NUL".to_string());
    }
    let (mut ca, mut cert, mut key) = (None, None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("the option {pair:?} has no value (expected NAME=VALUE)"))?;
        let slot = match name {
            "ca" => &mut ca,
            "cert" => &mut cert,
            "key" => &mut key,
            other => return Err(format!("unknown option {other:?} (known: ca, cert, key)")),
        };
        if !tls {
            return Err(format!("the option {name:?} needs TLS: use etcds://"));
        }
        if value.is_empty() {
            return Err(format!("the option {name:?} is empty"));
        }
        if slot.replace(PathBuf::from(percent_decode(value)?)).is_some() {
            return Err(format!("the option {name:?} is given twice"));
        }
    }
    let tls = if tls {
        let ca = ca.ok_or("etcds:// needs ?ca=FILE, the CA certificate that signed the servers' certificates")?;
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => return Err("cert= needs key= (the client certificate's private key)".to_string()),
            (None, Some(_)) => return Err("key= needs cert= (the client certificate)".to_string()),
        };
        Some(EtcdTls { ca, identity })
    } else {
        None
    };
    Ok(EtcdUrl { endpoints, prefix, tls })
}

/// The part of a kubernetes URL after `kubernetes:`: nothing, or `?kubeconfig=PATH&context=C&namespace=NS`.
fn parse_kubernetes(rest: &str) -> Result<KubernetesUrl, String> {
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let query = match rest.split_once('?') {
        Some(("", query)) => query,
        None if rest.is_empty() => "",
        _ => return Err("expected kubernetes: or kubernetes:?kubeconfig=PATH&context=C&namespace=NS".into()),
    };
    let mut url = KubernetesUrl::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("the option {pair:?} has no value (expected NAME=VALUE)"))?;
        if value.is_empty() {
            return Err(format!("the option {name:?} is empty"));
        }
        let value = percent_decode(value)?;
        let slot = match name {
            "kubeconfig" => {
                if url.kubeconfig.replace(PathBuf::from(value)).is_some() {
                    return Err("the option \"kubeconfig\" is given twice".into());
                }
                continue;
            }
            "context" => &mut url.context,
            "namespace" => &mut url.namespace,
            other => {
                return Err(format!(
                    "unknown option {other:?} (known: kubeconfig, context, namespace)"
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(format!("the option {name:?} is given twice"));
        }
    }
    Ok(url)
}

/// `HOST:PORT` or `[IPV6]:PORT`.
fn parse_endpoint(endpoint: &str) -> Result<String, String> {
    if endpoint.is_empty() {
        return Err("an empty endpoint (expected HOST:PORT[,HOST:PORT...])".to_string());
    }
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| format!("the endpoint {endpoint:?} has no port (expected HOST:PORT)"))?;
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if bare.is_empty() {
        return Err(format!("the endpoint {endpoint:?} has no host"));
    }
    if bare.contains(':') && bare == host {
        return Err(format!("the IPv6 host of {endpoint:?} needs brackets: [ADDRESS]:PORT"));
    }
    if bare.contains(['@', ' ', '[', ']']) {
        return Err(format!("the host of {endpoint:?} is malformed"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(endpoint.to_string()),
        _ => Err(format!("the port of {endpoint:?} is not a number from 1 to 65535")),
    }
}

/// Decodes `%XX` escapes (so that paths with `&`, `?` or spaces fit in a URL).
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("bad %-escape in {text:?}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} decodes to invalid UTF-8"))
}

/// Opens the store a URL names (see [`parse_store_url`]). The embedded backend opens its file on
/// the blocking pool; the etcd backend connects and reads the current revision, failing with
/// [`StoreError::Unavailable`] within a few seconds if the cluster cannot be reached.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    match parse_store_url(url)? {
        StoreUrl::Embedded(dir) => {
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
                .await
                .map_err(|error| StoreError::Backend(Box::new(error)))??;
            Ok(Arc::new(store))
        }
        StoreUrl::Etcd(url) => Ok(Arc::new(EtcdStore::connect(&url).await?)),
        StoreUrl::Kubernetes(url) => Ok(Arc::new(KubernetesStore::connect(&url).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(url: &str) -> EtcdUrl {
        match parse_store_url(url) {
            Ok(StoreUrl::Etcd(etcd)) => etcd,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn etcd_urls() {
        assert_eq!(
            etcd("etcd://127.0.0.1:2379"),
            EtcdUrl {
                endpoints: vec!["127.0.0.1:2379".into()],
                prefix: DEFAULT_ETCD_PREFIX.into(),
                tls: None
            }
        );
        let url = etcd("etcd://a:1,b.example:2,[::1]:2379/mesh/prod/");
        assert_eq!(url.endpoints, vec!["a:1", "b.example:2", "[::1]:2379"]);
        assert_eq!(url.prefix, "/mesh/prod");
        assert_eq!(
            url.endpoint_urls(),
            vec!["http://a:1", "http://b.example:2", "http://[::1]:2379"]
        );
        assert_eq!(etcd("etcd://a:1/").prefix, DEFAULT_ETCD_PREFIX);
        let url = etcd("etcds://h:2379/x?ca=/etc/ca.pem&cert=/c%20d.pem&key=k.pem");
        assert_eq!(url.prefix, "/x");
        assert_eq!(
            url.tls,
            Some(EtcdTls {
                ca: "/etc/ca.pem".into(),
                identity: Some(("/c d.pem".into(), "k.pem".into())),
            })
        );
        assert_eq!(url.endpoint_urls(), vec!["https://h:2379"]);
        let url = etcd("etcds://h:2379?ca=ca.pem");
        assert_eq!(
            (url.prefix.as_str(), url.tls),
            (
                DEFAULT_ETCD_PREFIX,
                Some(EtcdTls {
                    ca: "ca.pem".into(),
                    identity: None
                })
            )
        );
    }

    #[test]
    fn kubernetes_urls() {
        let k = |url: &str| match parse_store_url(url) {
            Ok(StoreUrl::Kubernetes(k)) => k,
            other => panic!("{url}: {other:?}"),
        };
        assert_eq!(k("kubernetes:"), KubernetesUrl::default());
        assert_eq!(k("k8s:"), KubernetesUrl::default());
        assert_eq!(
            k("kubernetes:?kubeconfig=/etc/k%20c&namespace=l7mp-system&context=kind"),
            KubernetesUrl {
                kubeconfig: Some("/etc/k c".into()),
                context: Some("kind".into()),
                namespace: Some("l7mp-system".into()),
            }
        );
    }

    #[test]
    fn bad_urls_name_the_problem() {
        for (url, says) in [
            ("etcd:localhost:2379", "etcd://HOST:PORT"),
            ("etcd://", "empty endpoint"),
            ("etcd://a:1,,b:2", "empty endpoint"),
            ("etcd://localhost", "no port"),
            ("etcd://localhost:http", "port"),
            ("etcd://localhost:0", "port"),
            ("etcd://localhost:65536", "port"),
            ("etcd://:2379", "no host"),
            ("etcd://::1:2379", "brackets"),
            ("etcd://a:1/x//y", "empty segment"),
            ("etcd://a:1/x%zz", "%-escape"),
            ("etcd://a:1?ca=ca.pem", "etcds://"),
            ("etcds://a:1", "ca=FILE"),
            ("etcds://a:1?ca=", "empty"),
            ("etcds://a:1?ca=x&ca=y", "twice"),
            ("etcds://a:1?ca=x&cert=c", "key="),
            ("etcds://a:1?ca=x&key=k", "cert="),
            ("etcds://a:1?ca=x&user=u", "unknown option"),
            ("etcds://a:1?ca", "no value"),
            ("kubernetes:x", "expected kubernetes:"),
            ("kubernetes:?ns=a", "unknown option"),
            ("kubernetes:?namespace=a&namespace=b", "twice"),
            ("kubernetes:?context=", "empty"),
            ("embedded:", "directory"),
            ("./data", "SCHEME"),
            ("mysql://x", "unknown"),
        ] {
            let error = parse_store_url(url).expect_err(url);
            let message = error.to_string();
            assert!(matches!(error, StoreError::Url { .. }), "{url}: {message}");
            assert!(message.contains(says), "{url}: {message}");
            assert!(message.contains(url), "{url}: the error names the URL: {message}");
        }
    }
}

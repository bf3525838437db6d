//! The etcd backend: the objects live in an etcd v3 cluster, under a key prefix.
//!
//! - An object is the key `PREFIX/objects/KIND/NAMESPACE/NAME` with its value as JSON. Every
//!   prefix this backend asks etcd for ends with `/`, so kind `A` never matches kind `AB`.
//! - Revisions are etcd's: [`Stored::revision`] is the key's `mod_revision`,
//!   [`Stored::create_revision`] its `create_revision`. etcd's revision counts the writes of the
//!   whole cluster, so other prefixes move it too.
//! - Conditional writes are one etcd transaction each: compare `mod_revision` for
//!   [`Precondition::Revision`], `create_revision == 0` for [`Precondition::Absent`]; when the
//!   compare fails the same transaction reads the key, which gives the conflict's actual revision.
//! - A watch is an etcd watch of the object prefix from `from + 1`. If the connection breaks, it
//!   is re-created from the revision after the last event delivered (no gap, no duplicate); only
//!   a compaction ends it, with [`StoreError::Compacted`].
//! - [`Store::compact`] compacts the etcd cluster (every prefix: etcd has one history).
//!
//! Every call is bounded by [`REQUEST_TIMEOUT`]: when etcd cannot be reached the call fails with
//! [`StoreError::Unavailable`] naming the endpoints instead of waiting.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, KeyValue, ResponseHeader,
    TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use serde_json::Value;
use tokio::sync::watch;

use super::{BoxFuture, EtcdUrl, Event, Key, Listing, Precondition, Store, StoreError, Stored, WatchStream};

/// How long a connection attempt to one endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long any call may wait for etcd before it fails with [`StoreError::Unavailable`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive pings find a dead connection (a watch would otherwise wait forever).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Objects read per request when listing.
const LIST_PAGE: i64 = 500;
/// The wait between attempts to re-create a broken watch, doubling up to the maximum.
const REWATCH_DELAY: Duration = Duration::from_millis(100);
const REWATCH_DELAY_MAX: Duration = Duration::from_secs(2);

/// The etcd store (see the module documentation). Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// `PREFIX/objects/`.
    objects: String,
    /// The endpoint URLs, for error messages.
    endpoints: String,
    /// Added to connection errors: what may be missing from the URL.
    hint: &'static str,
    /// The highest header revision seen.
    revision: AtomicU64,
    /// Dropped with the store: the watchers see it and end.
    _closed: watch::Sender<()>,
    closed: watch::Receiver<()>,
}

/// Reads a file the store URL names (a TLS certificate or key), for [`StoreError::Open`].
fn read_named_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|error| StoreError::Open {
        path: path.to_path_buf(),
        source: Box::new(error),
    })
}

/// etcd's revisions are `i64` and never negative.
fn rev(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

/// An error and its sources, `: `-separated (tonic's own message is often just "transport error").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether etcd reports that a revision is compacted (gRPC OutOfRange, "required revision has
/// been compacted").
fn is_compacted(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::OutOfRange && status.message().contains("compacted"))
}

/// Whether etcd reports a revision later than its current one.
fn is_future_revision(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::OutOfRange && status.message().contains("future revision"))
}

impl EtcdStore {
    /// Connects to the cluster a parsed URL names and reads its current revision. Fails with
    /// [`StoreError::Open`] if a TLS file cannot be read, and with [`StoreError::Unavailable`]
    /// within a few seconds if no endpoint answers (or the TLS handshake is refused).
    pub async fn connect(url: &EtcdUrl) -> Result<EtcdStore, StoreError> {
        let endpoints = url.endpoint_urls();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &url.tls {
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(read_named_file(&tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(read_named_file(cert)?, read_named_file(key)?));
            }
            options = options.with_tls(config);
        }
        let described = endpoints.join(",");
        // A server that requires client certificates closes the connection after the handshake;
        // the client only sees a broken pipe.
        let hint = match &url.tls {
            Some(tls) if tls.identity.is_none() => {
                " (if etcd requires client certificates (--client-cert-auth), add &cert=FILE&key=FILE to the URL)"
            }
            _ => "",
        };
        let client = match tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(&endpoints, Some(options))).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                return Err(StoreError::Unavailable {
                    reason: format!("etcd at {described}: connect: {}", chain(&error)),
                });
            }
            Err(_) => {
                return Err(StoreError::Unavailable {
                    reason: format!("etcd at {described}: no connection within {REQUEST_TIMEOUT:?}"),
                });
            }
        };
        let (closed_tx, closed) = watch::channel(());
        let store = EtcdStore {
            inner: Arc::new(Inner {
                client,
                objects: format!("{}/objects/", url.prefix),
                endpoints: described,
                hint,
                revision: AtomicU64::new(0),
                _closed: closed_tx,
                closed,
            }),
        };
        // Read the current revision (and find out now whether etcd answers at all).
        let inner = &store.inner;
        let options = GetOptions::new().with_prefix().with_count_only();
        let response = inner
            .call(
                "read the revision",
                inner.client.kv_client().get(inner.objects.clone(), Some(options)),
            )
            .await?;
        let revision = inner.seen(response.header());
        tracing::debug!(endpoints = %inner.endpoints, prefix = %url.prefix, revision, "etcd store connected");
        Ok(store)
    }

    /// The key prefix of the objects, `PREFIX/objects/`.
    pub fn objects_prefix(&self) -> &str {
        &self.inner.objects
    }

    /// The store's `PREFIX` (what every key of this store starts with, without the trailing `/`).
    pub fn prefix(&self) -> &str {
        self.inner
            .objects
            .strip_suffix("/objects/")
            .unwrap_or(&self.inner.objects)
    }

    /// The connection, shared (for the agent registry of the same cluster).
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }

    /// The endpoints, for error messages.
    pub fn endpoints(&self) -> &str {
        &self.inner.endpoints
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("objects", &self.inner.objects)
            .field("revision", &self.inner.revision.load(Ordering::SeqCst))
            .finish()
    }
}

impl Inner {
    /// Runs one etcd request, bounded by [`REQUEST_TIMEOUT`], mapping its error.
    async fn call<T>(
        &self,
        what: &str,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.error(what, &error)),
            Err(_) => Err(StoreError::Unavailable {
                reason: format!(
                    "etcd at {}: {what}: no answer within {REQUEST_TIMEOUT:?}",
                    self.endpoints
                ),
            }),
        }
    }

    /// `Unavailable` for what says the cluster cannot be reached, `Backend` for the rest.
    fn error(&self, what: &str, error: &etcd_client::Error) -> StoreError {
        use etcd_client::Error as E;
        let unreachable = match error {
            E::TransportError(_) | E::IoError(_) | E::WatchError(_) => true,
            E::GRpcStatus(status) => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ),
            _ => false,
        };
        let reason = format!("etcd at {}: {what}: {}", self.endpoints, chain(error));
        if unreachable {
            StoreError::Unavailable {
                reason: format!("{reason}{}", self.hint),
            }
        } else {
            StoreError::Backend(reason.into())
        }
    }

    /// Records a response's revision; returns it.
    fn seen(&self, header: Option<&ResponseHeader>) -> u64 {
        let revision = header.map_or(0, |header| rev(header.revision()));
        self.revision.fetch_max(revision, Ordering::SeqCst);
        revision
    }

    fn object_key(&self, key: &Key) -> String {
        format!("{}{}/{}/{}", self.objects, key.kind, key.namespace, key.name)
    }

    /// The [`Key`] of an etcd key under the objects prefix; `None` for a key this backend did not
    /// write (wrong shape), which is skipped.
    fn parse_key(&self, raw: &[u8]) -> Option<Key> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut parts = text.strip_prefix(self.objects.as_str())?.split('/');
        let key = Key::new(parts.next()?, parts.next()?, parts.next()?);
        (parts.next().is_none() && key.validate().is_ok()).then_some(key)
    }

    fn stored(&self, key: Key, kv: &KeyValue) -> Result<Stored, StoreError> {
        let value: Value = serde_json::from_slice(kv.value()).map_err(|error| {
            StoreError::Backend(format!("etcd at {}: the value of {key} is not JSON: {error}", self.endpoints).into())
        })?;
        Ok(Stored {
            key,
            value,
            revision: rev(kv.mod_revision()),
            create_revision: rev(kv.create_revision()),
        })
    }

    /// The compare of a precondition; `Err` with the conflict when it cannot hold for any object
    /// (`Revision(0)`, or a revision etcd cannot represent).
    async fn compare(&self, key: &Key, etcd_key: &str, pre: Precondition) -> Result<Vec<Compare>, StoreError> {
        match pre {
            Precondition::None => Ok(Vec::new()),
            Precondition::Absent => Ok(vec![Compare::create_revision(etcd_key, CompareOp::Equal, 0)]),
            Precondition::Revision(revision) => match i64::try_from(revision) {
                Ok(revision) if revision > 0 => Ok(vec![Compare::mod_revision(etcd_key, CompareOp::Equal, revision)]),
                // etcd compares an absent key's mod_revision as 0: without this, Revision(0)
                // would match absent objects.
                _ => {
                    let actual = self.get(key).await?.map(|stored| stored.revision);
                    Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: pre,
                        actual,
                    })
                }
            },
        }
    }

    /// The actual revision of a failed transaction (its `or_else` reads the key).
    fn conflict(key: &Key, pre: Precondition, response: &TxnResponse) -> StoreError {
        let actual = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.kvs().first().map(|kv| rev(kv.mod_revision()))),
            _ => None,
        });
        StoreError::Conflict {
            key: key.clone(),
            expected: pre,
            actual: actual.flatten(),
        }
    }

    async fn get(&self, key: &Key) -> Result<Option<Stored>, StoreError> {
        key.validate()?;
        let response = self
            .call("get", self.client.kv_client().get(self.object_key(key), None))
            .await?;
        self.seen(response.header());
        response
            .kvs()
            .first()
            .map(|kv| self.stored(key.clone(), kv))
            .transpose()
    }

    /// Writes `value` at `key` (`None`: deletes it) if `pre` holds, in one transaction. Returns the
    /// write's revision, `None` if nothing was written (deleting an absent object).
    async fn write(&self, key: &Key, value: Option<Value>, pre: Precondition) -> Result<Option<u64>, StoreError> {
        key.validate()?;
        let etcd_key = self.object_key(key);
        let compare = self.compare(key, &etcd_key, pre).await?;
        let (what, op) = match &value {
            Some(value) => {
                let bytes = serde_json::to_vec(value).map_err(|error| StoreError::Backend(Box::new(error)))?;
                ("put", TxnOp::put(etcd_key.as_str(), bytes, None))
            }
            None => ("delete", TxnOp::delete(etcd_key.as_str(), None)),
        };
        let txn = Txn::new()
            .when(compare)
            .and_then(vec![op])
            .or_else(vec![TxnOp::get(etcd_key.as_str(), None)]);
        let response = self.call(what, self.client.kv_client().txn(txn)).await?;
        // A transaction that writes answers with the revision of its write.
        let revision = self.seen(response.header());
        if !response.succeeded() {
            return Err(Inner::conflict(key, pre, &response));
        }
        if value.is_some() {
            return Ok(Some(revision));
        }
        let deleted = response.op_responses().into_iter().any(|op| match op {
            TxnOpResponse::Delete(delete) => delete.deleted() > 0,
            _ => false,
        });
        Ok(deleted.then_some(revision))
    }

    async fn list(&self, kind: Option<&str>, namespace: Option<&str>) -> Result<Listing, StoreError> {
        let prefix = match (kind, namespace) {
            (Some(kind), Some(namespace)) => format!("{}{kind}/{namespace}/", self.objects),
            (Some(kind), None) => format!("{}{kind}/", self.objects),
            (None, _) => self.objects.clone(),
        };
        // Every prefix ends with '/': its range ends where '/' becomes '0', the next byte.
        let end = format!("{}0", &prefix[..prefix.len() - 1]);
        let mut items = Vec::new();
        let mut from = prefix.clone().into_bytes();
        let mut at: Option<i64> = None;
        loop {
            let mut options = GetOptions::new().with_range(end.as_str()).with_limit(LIST_PAGE);
            if let Some(revision) = at {
                options = options.with_revision(revision);
            }
            let response = self
                .call("list", self.client.kv_client().get(from.clone(), Some(options)))
                .await?;
            let revision = self.seen(response.header());
            // Later pages read at the first page's revision: one consistent snapshot.
            at.get_or_insert(i64::try_from(revision).unwrap_or(i64::MAX));
            for kv in response.kvs() {
                let Some(key) = self.parse_key(kv.key()) else {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "etcd store: skipping a key it did not write");
                    continue;
                };
                if kind.is_some_and(|kind| kind != key.kind) || namespace.is_some_and(|ns| ns != key.namespace) {
                    continue;
                }
                items.push(self.stored(key, kv)?);
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        // etcd orders by bytes ("A-B/" before "A/"); a listing is ordered by key parts.
        items.sort_by(|a, b| a.key.cmp(&b.key));
        let revision = at.map_or(0, rev);
        Ok(Listing { items, revision })
    }

    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        // etcd refuses revisions it has not reached; the embedded store clamps the same way.
        let revision = revision.min(self.revision.load(Ordering::SeqCst));
        let Ok(revision) = i64::try_from(revision) else {
            return Ok(());
        };
        if revision == 0 {
            return Ok(());
        }
        let request = async {
            match self.client.kv_client().compact(revision, None).await {
                Ok(response) => Ok(Some(response)),
                // Compacted already, at or after this revision: nothing to do.
                Err(error) if is_compacted(&error) => Ok(None),
                Err(error) => Err(error),
            }
        };
        if let Some(response) = self.call("compact", request).await? {
            self.seen(response.header());
        }
        Ok(())
    }
}

/// A watch's state between two events.
struct Watcher {
    store: Weak<Inner>,
    closed: watch::Receiver<()>,
    stream: Option<etcd_client::WatchStream>,
    backlog: VecDeque<Event>,
    /// The revision of the last event delivered (or the revision watched from).
    last: u64,
    done: bool,
}

impl Watcher {
    /// Creates the etcd watch from `last + 1`. With `check_compacted` (the first time, so that
    /// [`Store::watch`] itself reports a compacted start) it also asks etcd whether that revision
    /// is still kept.
    async fn open(&mut self, inner: &Inner, check_compacted: bool) -> Result<(), StoreError> {
        let start = i64::try_from(self.last.saturating_add(1)).map_err(|_| {
            StoreError::Backend(format!("revision {} is beyond etcd's (64-bit signed) revisions", self.last).into())
        })?;
        let options = WatchOptions::new().with_prefix().with_start_revision(start);
        let mut stream = inner
            .call(
                "watch",
                inner.client.watch_client().watch(inner.objects.clone(), Some(options)),
            )
            .await?;
        let compacted = check_compacted && {
            let options = GetOptions::new().with_prefix().with_count_only().with_revision(start);
            let request = async {
                match inner.client.kv_client().get(inner.objects.clone(), Some(options)).await {
                    Ok(response) => {
                        inner.seen(response.header());
                        Ok(false)
                    }
                    Err(error) if is_compacted(&error) => Ok(true),
                    // Later than etcd's revision: not compacted, the watch waits for it.
                    Err(error) if is_future_revision(&error) => Ok(false),
                    Err(error) => Err(error),
                }
            };
            inner.call("watch", request).await?
        };
        // The first answer confirms the watch; a compacted start is canceled right after (etcd
        // checks unsynced watchers every 100 ms), so when the range read said "compacted", wait for it.
        loop {
            let Some(response) = inner.call("watch", stream.message()).await? else {
                return Err(StoreError::Unavailable {
                    reason: format!("etcd at {}: watch: the stream closed", inner.endpoints),
                });
            };
            inner.seen(response.header());
            if response.canceled() {
                return Err(self.canceled(inner, response.compact_revision(), response.cancel_reason()));
            }
            self.push(inner, response.events())?;
            if !compacted || !self.backlog.is_empty() {
                break;
            }
        }
        self.stream = Some(stream);
        Ok(())
    }

    /// The error of a canceled watch: `Compacted` if etcd says so.
    fn canceled(&self, inner: &Inner, compact_revision: i64, reason: &str) -> StoreError {
        if compact_revision > 0 {
            StoreError::Compacted {
                requested: self.last,
                compacted: rev(compact_revision),
            }
        } else {
            StoreError::Backend(format!("etcd at {}: the watch was canceled: {reason}", inner.endpoints).into())
        }
    }

    /// Translates etcd events into the backlog.
    fn push(&mut self, inner: &Inner, events: &[etcd_client::Event]) -> Result<(), StoreError> {
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let Some(key) = inner.parse_key(kv.key()) else { continue };
            let event = match event.event_type() {
                EventType::Put => Event::Put(inner.stored(key, kv)?),
                EventType::Delete => Event::Delete {
                    key,
                    revision: rev(kv.mod_revision()),
                },
            };
            self.backlog.push_back(event);
        }
        Ok(())
    }

    /// Re-creates a broken watch, retrying with backoff until it works, the store is dropped
    /// (`Ok(false)`) or etcd says the history is compacted.
    async fn reopen(&mut self) -> Result<bool, StoreError> {
        let mut delay = REWATCH_DELAY;
        loop {
            let Some(inner) = self.store.upgrade() else {
                return Ok(false);
            };
            match self.open(&inner, false).await {
                Ok(()) => {
                    tracing::info!(endpoints = %inner.endpoints, from = self.last, "etcd store: watch re-established");
                    return Ok(true);
                }
                Err(error @ StoreError::Compacted { .. }) => return Err(error),
                Err(error) => tracing::warn!("etcd store: re-creating the watch: {error}; retrying in {delay:?}"),
            }
            drop(inner);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.closed.changed() => return Ok(false),
            }
            delay = (delay * 2).min(REWATCH_DELAY_MAX);
        }
    }

    async fn next(mut self) -> Option<(Result<Event, StoreError>, Watcher)> {
        if self.done {
            return None;
        }
        loop {
            if let Some(event) = super::next_after(&mut self.backlog, &mut self.last) {
                return Some((Ok(event), self));
            }
            let Some(stream) = self.stream.as_mut() else {
                match self.reopen().await {
                    Ok(true) => continue,
                    Ok(false) => return None,
                    Err(error) => {
                        self.done = true;
                        return Some((Err(error), self));
                    }
                }
            };
            let message = tokio::select! {
                message = stream.message() => message,
                _ = self.closed.changed() => return None,
            };
            let inner = self.store.upgrade()?;
            match message {
                Ok(Some(response)) => {
                    inner.seen(response.header());
                    if response.canceled() {
                        let error = self.canceled(&inner, response.compact_revision(), response.cancel_reason());
                        if matches!(error, StoreError::Compacted { .. }) {
                            self.done = true;
                            return Some((Err(error), self));
                        }
                        tracing::warn!("etcd store: {error}; re-creating the watch");
                        self.stream = None;
                        continue;
                    }
                    if let Err(error) = self.push(&inner, response.events()) {
                        self.done = true;
                        return Some((Err(error), self));
                    }
                }
                Ok(None) => {
                    tracing::warn!(endpoints = %inner.endpoints, "etcd store: the watch stream closed; re-creating it");
                    self.stream = None;
                }
                Err(error) => {
                    tracing::warn!("{}; re-creating the watch", inner.error("watch", &error));
                    self.stream = None;
                }
            }
        }
    }
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(self.inner.get(key))
    }

    fn put<'a>(&'a self, key: &'a Key, value: Value, pre: Precondition) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            self.inner
                .write(key, Some(value), pre)
                .await?
                .ok_or_else(|| StoreError::Backend("a put wrote no revision".into()))
        })
    }

    fn delete<'a>(&'a self, key: &'a Key, pre: Precondition) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(self.inner.write(key, None, pre))
    }

    fn list<'a>(
        &'a self,
        kind: Option<&'a str>,
        namespace: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Listing, StoreError>> {
        Box::pin(self.inner.list(kind, namespace))
    }

    fn watch(&self, from_revision: u64) -> BoxFuture<'_, Result<WatchStream, StoreError>> {
        Box::pin(async move {
            let mut watcher = Watcher {
                store: Arc::downgrade(&self.inner),
                closed: self.inner.closed.clone(),
                stream: None,
                backlog: VecDeque::new(),
                last: from_revision,
                done: false,
            };
            watcher.open(&self.inner, true).await?;
            let stream: WatchStream = Box::pin(futures_util::stream::unfold(watcher, Watcher::next));
            Ok(stream)
        })
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.inner.compact(revision))
    }

    fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::SeqCst)
    }
}

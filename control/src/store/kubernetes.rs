//! The Kubernetes backend: the four l7mp kinds (VirtualService, Target, Route, Rule) as custom resources of group
//! `l7mp.io`, version `v1` (the CRDs in `manifests/crds/`), read and written through the API server.
//!
//! - **Keys**: `Key {kind, namespace, name}` is the custom resource `kind` in `namespace` named `name`. Only the four
//!   kinds exist, and they are namespaced: another kind or an empty namespace is [`StoreError::InvalidKey`] naming
//!   the four. With `namespace=NS` in the URL the store is confined to `NS` (lists and watches see only it).
//! - **Values** are l7mp resource documents: `{apiVersion, kind, metadata: {name, namespace, labels}, spec}`. A put
//!   writes `spec` and the labels; `status` in a value is ignored (it is written through `/status`, see
//!   [`KubernetesStore::write_status`]); any other metadata is refused ([`StoreError::InvalidValue`]). Reads give
//!   back exactly that shape (`labels` always present), so what was put comes back equal. Writes use
//!   `fieldValidation=Strict`: a field the CRD schema does not know is refused rather than pruned silently.
//! - **Revisions** are the API server's `resourceVersion`s, which kube-apiserver (and the fake) make etcd
//!   revisions: integers shared by every object. They are parsed as `u64`; a server that gives anything else is a
//!   [`StoreError::Backend`] that says so. Kubernetes keeps no creation revision: `create_revision` is 0.
//! - **Compare-and-swap**: `Revision(r)` is a PUT with `metadata.resourceVersion: r` (409 → `Conflict`), `Absent` a
//!   POST (409 AlreadyExists → `Conflict`), `None` a JSON patch that replaces `spec` and the labels (POST when the
//!   object does not exist). A put that changes nothing is no write on Kubernetes: it returns the object's
//!   current revision, not a new one.
//! - **Delete** returns the revision of the deletion, which the API server does not put in its answer for custom
//!   resources: the store deletes with a `resourceVersion` precondition and reads the deletion's revision from a
//!   watch of that one object from the revision it deleted.
//! - **List** is one consistent snapshot: the first kind is listed at the latest revision `R`, the others at exactly
//!   `R` (`resourceVersionMatch=Exact`); see [`watch`] for watching.
//! - **Compaction**: the API server (etcd) compacts by itself; [`Store::compact`] is `Unsupported`. A watch from a
//!   compacted revision fails with [`StoreError::Compacted`] and the controller relists.

mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, Request};
use kube::core::Status;
use l7mp_api::resource::{API_VERSION, ResourceKind};
use serde_json::{Map, Value, json};

use super::{BoxFuture, Capabilities, Key, Listing, Precondition, Store, StoreError, Stored, WatchStream};

/// The kinds this backend holds, by name.
pub const KINDS: [&str; 4] = ["VirtualService", "Target", "Route", "Rule"];

/// A parsed `kubernetes:` store URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubernetesUrl {
    /// `kubeconfig=PATH`: this kubeconfig file instead of in-cluster configuration / `$KUBECONFIG` /
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// `context=C`: this kubeconfig context instead of the current one.
    pub context: Option<String>,
    /// `namespace=NS`: confine the store to `NS`, which is also where the leader-election Lease lives (default:
    /// every namespace, the Lease in the client's default namespace: in a pod, the pod's).
    pub namespace: Option<String>,
}

/// The kubernetes store. Cheap to clone.
#[derive(Clone)]
pub struct KubernetesStore {
    client: kube::Client,
    /// `Some`: only this namespace.
    namespace: Option<String>,
    /// The client's default namespace (the Lease's when `namespace` is `None`).
    default_namespace: String,
    /// The cluster, as shown in errors.
    server: Arc<str>,
    revision: Arc<AtomicU64>,
}

impl std::fmt::Debug for KubernetesStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesStore")
            .field("server", &self.server)
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// How long a request may take before the API server counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl KubernetesStore {
    /// Connects with the configuration the URL names and reads the current revision (so that an unreachable API
    /// server fails here, with [`StoreError::Unavailable`]).
    pub async fn connect(url: &KubernetesUrl) -> Result<KubernetesStore, StoreError> {
        let options = kube::config::KubeConfigOptions {
            context: url.context.clone(),
            ..Default::default()
        };
        let config = match &url.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path).map_err(|e| StoreError::Open {
                    path: path.clone(),
                    source: Box::new(e),
                })?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| StoreError::Open {
                        path: path.clone(),
                        source: Box::new(e),
                    })?
            }
            None if url.context.is_some() => {
                kube::Config::from_kubeconfig(&options)
                    .await
                    .map_err(|e| StoreError::Open {
                        path: "kubeconfig".into(),
                        source: Box::new(e),
                    })?
            }
            None => kube::Config::infer().await.map_err(|e| StoreError::Open {
                path: "in-cluster configuration or kubeconfig".into(),
                source: Box::new(e),
            })?,
        };
        let mut config = config;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        // Watches end after a few seconds (see `watch`), so one read timeout covers every request.
        config.read_timeout = Some(REQUEST_TIMEOUT + Duration::from_secs(watch::WATCH_SECONDS.into()));
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(|e| StoreError::Open {
            path: server.clone().into(),
            source: Box::new(e),
        })?;
        let store = KubernetesStore::new(client, url.namespace.clone(), &server);
        match store.empty_listing().await {
            Ok(_) => Ok(store),
            Err(StoreError::Backend(e)) if e.to_string().contains("(404 ") => Err(StoreError::Backend(
                format!(
                    "{e}: are the l7mp CRDs installed? (kubectl apply -k manifests/crds, from the l7mp repository)"
                )
                .into(),
            )),
            Err(e) => Err(e),
        }
    }

    /// A store over a client (say, the fake API server's), confined to `namespace` when given.
    pub fn new(client: kube::Client, namespace: Option<String>, server: &str) -> KubernetesStore {
        KubernetesStore {
            default_namespace: client.default_namespace().to_string(),
            client,
            namespace,
            server: server.into(),
            revision: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The namespace of the control plane: the URL's `namespace`, else the client's default.
    pub fn home_namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(&self.default_namespace)
    }

    fn seen(&self, revision: u64) {
        self.revision.fetch_max(revision, Ordering::Relaxed);
    }

    /// The kind of a key, or why the key cannot be stored here.
    fn kind_of(&self, key: &Key) -> Result<ResourceKind, StoreError> {
        key.validate()?;
        let invalid = |reason: String| StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        };
        let kind = ResourceKind::ALL
            .into_iter()
            .find(|k| k.name() == key.kind)
            .ok_or_else(|| {
                invalid(format!(
                    "the kubernetes store holds only the kinds {} (custom resources of {API_VERSION}), not {:?}",
                    KINDS.join(", "),
                    key.kind
                ))
            })?;
        if key.namespace.is_empty() {
            return Err(invalid(format!(
                "{} objects are namespaced: the namespace is empty",
                key.kind
            )));
        }
        if let Some(ns) = &self.namespace
            && *ns != key.namespace
        {
            return Err(invalid(format!(
                "this store is confined to namespace {ns:?} (namespace= in its URL)"
            )));
        }
        Ok(kind)
    }

    /// An error from the API server or the connection, as a store error about `what`.
    fn error(&self, what: &str, e: kube::Error) -> StoreError {
        match e {
            kube::Error::Api(status) => api_error(what, &status),
            other => StoreError::Unavailable {
                reason: format!("the Kubernetes API server at {}: {what}: {other}", self.server),
            },
        }
    }

    async fn request<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        method: Method,
        uri: String,
        body: Option<(&str, Value)>,
    ) -> Result<T, kube::Error> {
        let mut req = Request::builder().method(method).uri(uri);
        let body = match body {
            Some((content_type, v)) => {
                req = req.header(http::header::CONTENT_TYPE, content_type);
                serde_json::to_vec(&v).map_err(kube::Error::SerdeError)?
            }
            None => Vec::new(),
        };
        let req = req.body(body).map_err(kube::Error::HttpError)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request::<T>(req)).await {
            Ok(r) => r,
            Err(_) => Err(kube::Error::Service(
                format!("{what}: no answer within {REQUEST_TIMEOUT:?}").into(),
            )),
        }
    }

    /// The object at `key` as the API server has it (`None`: absent).
    async fn get_object(&self, kind: ResourceKind, key: &Key) -> Result<Option<Value>, StoreError> {
        let uri = object_path(kind, &key.namespace, &key.name);
        match self.request::<Value>("get", Method::GET, uri, None).await {
            Ok(o) => Ok(Some(o)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(self.error(&format!("get {key}"), e)),
        }
    }

    /// The revision of the object at `key` now (`None`: absent), for a `Conflict`'s `actual`.
    async fn actual(&self, kind: ResourceKind, key: &Key) -> Result<Option<u64>, StoreError> {
        match self.get_object(kind, key).await? {
            Some(o) => Ok(Some(resource_version(&o)?)),
            None => Ok(None),
        }
    }

    async fn conflict(&self, kind: ResourceKind, key: &Key, expected: Precondition) -> StoreError {
        match self.actual(kind, key).await {
            Ok(actual) => StoreError::Conflict {
                key: key.clone(),
                expected,
                actual,
            },
            Err(e) => e,
        }
    }

    async fn put_object(
        &self,
        kind: ResourceKind,
        key: &Key,
        value: Value,
        pre: Precondition,
    ) -> Result<u64, StoreError> {
        let (spec, labels) = split_value(kind, key, value)?;
        let mut object = json!({
            "apiVersion": API_VERSION,
            "kind": kind.name(),
            "metadata": {"name": key.name, "namespace": key.namespace, "labels": labels},
            "spec": spec,
        });
        let what = format!("put {key}");
        match pre {
            Precondition::Absent => {
                let uri = format!("{}?fieldValidation=Strict", collection_path(kind, Some(&key.namespace)));
                match self
                    .request::<Value>(&what, Method::POST, uri, Some(("application/json", object)))
                    .await
                {
                    Ok(o) => resource_version(&o),
                    Err(kube::Error::Api(s)) if s.code == 409 => Err(self.conflict(kind, key, pre).await),
                    Err(e) => Err(self.error(&what, e)),
                }
            }
            Precondition::Revision(r) => {
                object["metadata"]["resourceVersion"] = json!(r.to_string());
                let uri = format!(
                    "{}?fieldValidation=Strict",
                    object_path(kind, &key.namespace, &key.name)
                );
                match self
                    .request::<Value>(&what, Method::PUT, uri, Some(("application/json", object)))
                    .await
                {
                    Ok(o) => resource_version(&o),
                    Err(kube::Error::Api(s)) if s.code == 409 => Err(self.conflict(kind, key, pre).await),
                    Err(kube::Error::Api(s)) if s.code == 404 => Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: pre,
                        actual: None,
                    }),
                    Err(e) => Err(self.error(&what, e)),
                }
            }
            Precondition::None => loop {
                // Replace spec and labels whatever the object's version (a PUT without resourceVersion is refused
                // for custom resources); create it when it does not exist.
                let patch = json!([
                    {"op": "add", "path": "/spec", "value": object["spec"]},
                    {"op": "add", "path": "/metadata/labels", "value": object["metadata"]["labels"]},
                ]);
                let uri = format!(
                    "{}?fieldValidation=Strict",
                    object_path(kind, &key.namespace, &key.name)
                );
                match self
                    .request::<Value>(&what, Method::PATCH, uri, Some(("application/json-patch+json", patch)))
                    .await
                {
                    Ok(o) => break resource_version(&o),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => break Err(self.error(&what, e)),
                }
                let uri = format!("{}?fieldValidation=Strict", collection_path(kind, Some(&key.namespace)));
                match self
                    .request::<Value>(&what, Method::POST, uri, Some(("application/json", object.clone())))
                    .await
                {
                    Ok(o) => break resource_version(&o),
                    // Created meanwhile by someone else: replace it.
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => break Err(self.error(&what, e)),
                }
            },
        }
    }

    async fn delete_object(&self, kind: ResourceKind, key: &Key, pre: Precondition) -> Result<Option<u64>, StoreError> {
        let what = format!("delete {key}");
        loop {
            let current = self.actual(kind, key).await?;
            pre.check(key, current)?;
            let Some(at) = current else { return Ok(None) };
            let options = json!({
                "apiVersion": "v1", "kind": "DeleteOptions",
                "preconditions": {"resourceVersion": at.to_string()},
            });
            let uri = object_path(kind, &key.namespace, &key.name);
            match self
                .request::<Value>(&what, Method::DELETE, uri, Some(("application/json", options)))
                .await
            {
                Ok(_) => return self.deletion_revision(kind, key, at).await.map(Some),
                // Changed (or deleted) between the read and the delete: check the precondition again.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => continue,
                Err(e) => return Err(self.error(&what, e)),
            }
        }
    }

    /// The revision at which the object at `key`, last written at `from`, was deleted: the first event of that
    /// object after `from` (the delete's precondition made sure nothing came between).
    async fn deletion_revision(&self, kind: ResourceKind, key: &Key, from: u64) -> Result<u64, StoreError> {
        use futures_util::StreamExt;
        let what = format!("delete {key}: read the deletion's revision");
        let uri = format!(
            "{}?watch=1&resourceVersion={from}&fieldSelector=metadata.name%3D{}&timeoutSeconds=10",
            collection_path(kind, Some(&key.namespace)),
            key.name
        );
        let req = Request::builder()
            .uri(uri)
            .body(Vec::new())
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let events = self
            .client
            .request_events::<Value>(req)
            .await
            .map_err(|e| self.error(&what, e))?;
        let mut events = std::pin::pin!(events);
        let found = tokio::time::timeout(REQUEST_TIMEOUT, async {
            while let Some(event) = events.next().await {
                match event {
                    Ok(kube::core::WatchEvent::Deleted(o)) => return resource_version(&o),
                    Ok(kube::core::WatchEvent::Error(s)) => return Err(api_error(&what, &s)),
                    Ok(_) => {}
                    Err(e) => return Err(self.error(&what, e)),
                }
            }
            Err(StoreError::Unavailable {
                reason: format!("{what}: the watch ended without the deletion"),
            })
        })
        .await;
        found.unwrap_or_else(|_| {
            Err(StoreError::Unavailable {
                reason: format!("{what}: no deletion event within {REQUEST_TIMEOUT:?}"),
            })
        })
    }

    /// The objects of one kind, at the latest revision (`at: None`) or exactly at `at`; with the list's revision.
    async fn list_kind(
        &self,
        kind: ResourceKind,
        namespace: Option<&str>,
        at: Option<u64>,
    ) -> Result<(Vec<Stored>, u64), StoreError> {
        let mut uri = collection_path(kind, namespace);
        if let Some(at) = at {
            uri.push_str(&format!("?resourceVersion={at}&resourceVersionMatch=Exact"));
        }
        let list: Value = self
            .request("list", Method::GET, uri, None)
            .await
            .map_err(|e| self.error(&format!("list {}", kind.plural()), e))?;
        let revision = parse_revision(list["metadata"]["resourceVersion"].as_str().unwrap_or_default())?;
        let mut items = Vec::new();
        for o in list["items"].as_array().into_iter().flatten() {
            items.push(stored(kind, o)?);
        }
        Ok((items, revision))
    }

    async fn list_objects(&self, kind: Option<&str>, namespace: Option<&str>) -> Result<Listing, StoreError> {
        let kinds: Vec<ResourceKind> = match kind {
            None => ResourceKind::ALL.to_vec(),
            Some(k) => match ResourceKind::ALL.into_iter().find(|x| x.name() == k) {
                Some(k) => vec![k],
                // Nothing of another kind can exist here.
                None => vec![],
            },
        };
        let namespace = match (&self.namespace, namespace) {
            (Some(mine), Some(asked)) if mine != asked => return self.empty_listing().await,
            (Some(mine), _) => Some(mine.as_str()),
            (None, asked) => asked,
        };
        // Namespaced kinds: nothing is cluster-wide.
        if kinds.is_empty() || namespace == Some("") {
            return self.empty_listing().await;
        }
        // One snapshot: the first kind at the latest revision, the others at exactly that revision. A 410 means
        // the history moved past it between the calls (rare): start over.
        let mut attempts = 0;
        'again: loop {
            attempts += 1;
            let (mut items, revision) = self.list_kind(kinds[0], namespace, None).await?;
            for &kind in &kinds[1..] {
                match self.list_kind(kind, namespace, Some(revision)).await {
                    Ok((more, _)) => items.extend(more),
                    Err(StoreError::Compacted { .. }) if attempts < 3 => continue 'again,
                    Err(e) => return Err(e),
                }
            }
            items.sort_by(|a, b| a.key.cmp(&b.key));
            self.seen(revision);
            return Ok(Listing { items, revision });
        }
    }

    /// No objects, at the latest revision.
    async fn empty_listing(&self) -> Result<Listing, StoreError> {
        let uri = format!(
            "{}?limit=1",
            collection_path(ResourceKind::ALL[0], self.namespace.as_deref())
        );
        let list: Value = self
            .request("list", Method::GET, uri, None)
            .await
            .map_err(|e| self.error("list", e))?;
        let revision = parse_revision(list["metadata"]["resourceVersion"].as_str().unwrap_or_default())?;
        self.seen(revision);
        Ok(Listing {
            items: Vec::new(),
            revision,
        })
    }

    /// The objects of `kind` as the API server has them (metadata, spec and status), in the store's namespace(s).
    pub async fn objects(&self, kind: ResourceKind) -> Result<Vec<Value>, StoreError> {
        let uri = collection_path(kind, self.namespace.as_deref());
        let list: Value = self
            .request("list", Method::GET, uri, None)
            .await
            .map_err(|e| self.error(&format!("list {}", kind.plural()), e))?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Writes an object's `/status` (a JSON merge patch of `status`). Returns the object's new revision, `None` if
    /// the object is gone.
    pub async fn write_status(&self, key: &Key, status: Value) -> Result<Option<u64>, StoreError> {
        let kind = self.kind_of(key)?;
        let what = format!("write the status of {key}");
        let uri = format!("{}/status", object_path(kind, &key.namespace, &key.name));
        match self
            .request::<Value>(
                &what,
                Method::PATCH,
                uri,
                Some(("application/merge-patch+json", json!({"status": status}))),
            )
            .await
        {
            Ok(o) => Ok(Some(resource_version(&o)?)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(self.error(&what, e)),
        }
    }
}

impl Store for KubernetesStore {
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(async move {
            let kind = self.kind_of(key)?;
            match self.get_object(kind, key).await? {
                Some(o) => Ok(Some(stored(kind, &o)?)),
                None => Ok(None),
            }
        })
    }

    fn put<'a>(&'a self, key: &'a Key, value: Value, pre: Precondition) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let kind = self.kind_of(key)?;
            let revision = self.put_object(kind, key, value, pre).await?;
            self.seen(revision);
            Ok(revision)
        })
    }

    fn delete<'a>(&'a self, key: &'a Key, pre: Precondition) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let kind = self.kind_of(key)?;
            let revision = self.delete_object(kind, key, pre).await?;
            if let Some(r) = revision {
                self.seen(r);
            }
            Ok(revision)
        })
    }

    fn list<'a>(
        &'a self,
        kind: Option<&'a str>,
        namespace: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Listing, StoreError>> {
        Box::pin(self.list_objects(kind, namespace))
    }

    fn watch(&self, from_revision: u64) -> BoxFuture<'_, Result<WatchStream, StoreError>> {
        Box::pin(async move { Ok(watch::merged(self.clone(), from_revision)) })
    }

    fn compact(&self, _revision: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async {
            Err(StoreError::Unsupported {
                backend: "kubernetes",
                operation: "compact (the API server's etcd compacts its history by itself)",
            })
        })
    }

    fn revision(&self) -> u64 {
        self.revision.load(Ordering::Relaxed)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kinds: Some(&KINDS),
            cluster_wide: false,
            any_value: false,
            create_revision: false,
        }
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.empty_listing().await.map(|_| ()) })
    }
}

/// `/apis/l7mp.io/v1[/namespaces/NS]/PLURAL`.
fn collection_path(kind: ResourceKind, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("/apis/{API_VERSION}/namespaces/{ns}/{}", kind.plural()),
        None => format!("/apis/{API_VERSION}/{}", kind.plural()),
    }
}

fn object_path(kind: ResourceKind, namespace: &str, name: &str) -> String {
    format!("{}/{name}", collection_path(kind, Some(namespace)))
}

/// A `resourceVersion` as a revision; non-integers are an error that says why they must be integers.
fn parse_revision(rv: &str) -> Result<u64, StoreError> {
    rv.parse::<u64>().map_err(|_| {
        StoreError::Backend(
            format!(
                "the API server gave resourceVersion {rv:?}, not an integer: the kubernetes store needs \
                 etcd-like integer resourceVersions (as kube-apiserver gives) to order and resume watches"
            )
            .into(),
        )
    })
}

fn resource_version(object: &Value) -> Result<u64, StoreError> {
    parse_revision(object["metadata"]["resourceVersion"].as_str().unwrap_or_default())
}

/// A custom resource as the store's value: `{apiVersion, kind, metadata: {name, namespace, labels}, spec}`.
fn stored(kind: ResourceKind, object: &Value) -> Result<Stored, StoreError> {
    let meta = &object["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let namespace = meta["namespace"].as_str().unwrap_or_default();
    let labels = match meta.get("labels") {
        Some(Value::Object(l)) => Value::Object(l.clone()),
        _ => json!({}),
    };
    let mut value = json!({
        "apiVersion": API_VERSION,
        "kind": kind.name(),
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
    });
    if let Some(spec) = object.get("spec") {
        value["spec"] = spec.clone();
    }
    Ok(Stored {
        key: Key::new(kind.name(), namespace, name),
        value,
        revision: resource_version(object)?,
        create_revision: 0,
    })
}

/// The `spec` and labels of a value to put at `key`, or why it cannot be stored.
fn split_value(kind: ResourceKind, key: &Key, value: Value) -> Result<(Value, Value), StoreError> {
    let invalid = |reason: String| StoreError::InvalidValue {
        key: key.to_string(),
        reason,
    };
    let Value::Object(mut o) = value else {
        return Err(invalid(
            "a Kubernetes object must be a JSON object {apiVersion, kind, metadata, spec}".into(),
        ));
    };
    if let Some(v) = o.get("apiVersion")
        && v != API_VERSION
    {
        return Err(invalid(format!("apiVersion is {v}, expected {API_VERSION:?}")));
    }
    if let Some(v) = o.get("kind")
        && v != kind.name()
    {
        return Err(invalid(format!("kind is {v}, expected {:?} (the key's)", kind.name())));
    }
    let mut labels = Map::new();
    if let Some(meta) = o.get("metadata") {
        let Value::Object(meta) = meta else {
            return Err(invalid("metadata is not an object".into()));
        };
        for (field, v) in meta {
            match (field.as_str(), v) {
                ("name", v) if *v == key.name => {}
                ("namespace", v) if *v == key.namespace => {}
                ("name" | "namespace", v) => {
                    return Err(invalid(format!("metadata.{field} is {v}, not the key's")));
                }
                ("labels", Value::Object(l)) => labels = l.clone(),
                ("labels", Value::Null) => {}
                (other, _) => {
                    return Err(invalid(format!(
                        "metadata.{other}: only name, namespace and labels are stored"
                    )));
                }
            }
        }
    }
    for field in o.keys() {
        if !matches!(field.as_str(), "apiVersion" | "kind" | "metadata" | "spec" | "status") {
            return Err(invalid(format!(
                "{field}: a Kubernetes object has apiVersion, kind, metadata, spec (and status)"
            )));
        }
    }
    let spec = o.remove("spec").ok_or_else(|| invalid("spec: missing".into()))?;
    Ok((spec, Value::Object(labels)))
}

/// An API server error as a store error.
fn api_error(what: &str, status: &Status) -> StoreError {
    let message = format!("{what}: {} ({} {})", status.message, status.code, status.reason);
    match status.code {
        410 => StoreError::Compacted {
            requested: 0,
            compacted: oldest_revision(&status.message).unwrap_or(0),
        },
        400 | 422 => StoreError::InvalidValue {
            key: what.to_string(),
            reason: message,
        },
        500.. => StoreError::Unavailable { reason: message },
        _ => StoreError::Backend(message.into()),
    }
}

/// The oldest revision a 410 says the server still has: kube-apiserver's message is `too old resource version:
/// ASKED (OLDEST)`.
fn oldest_revision(message: &str) -> Option<u64> {
    let open = message.rfind('(')?;
    let close = message[open..].find(')')? + open;
    message[open + 1..close].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_must_be_integers() {
        assert_eq!(parse_revision("12345").ok(), Some(12345));
        let e = parse_revision("abc-7").expect_err("not an integer");
        assert!(e.to_string().contains("\"abc-7\", not an integer"), "{e}");
    }

    #[test]
    fn the_oldest_revision_of_a_410() {
        assert_eq!(oldest_revision("too old resource version: 5 (10)"), Some(10));
        assert_eq!(oldest_revision("Expired"), None);
    }

    #[test]
    fn values_split_into_spec_and_labels() {
        let key = Key::new("Route", "default", "r");
        let (spec, labels) = split_value(
            ResourceKind::Route,
            &key,
            json!({"apiVersion": "l7mp.io/v1", "kind": "Route",
                   "metadata": {"name": "r", "namespace": "default", "labels": {"a": "b"}},
                   "spec": {"destination": "t"}, "status": {"state": "Accepted"}}),
        )
        .expect("a route");
        assert_eq!((spec, labels), (json!({"destination": "t"}), json!({"a": "b"})));
        for (bad, says) in [
            (json!(1), "JSON object"),
            (json!({"kind": "Target", "spec": {}}), "expected \"Route\""),
            (json!({"metadata": {"name": "x"}, "spec": {}}), "not the key's"),
            (
                json!({"metadata": {"annotations": {}}, "spec": {}}),
                "only name, namespace and labels",
            ),
            (json!({"data": 1, "spec": {}}), "data:"),
            (json!({"metadata": {}}), "spec: missing"),
        ] {
            let e = split_value(ResourceKind::Route, &key, bad).expect_err(says);
            assert!(e.to_string().contains(says), "{e}");
        }
    }
}

//! The HTTP front: routes Kubernetes API paths to discovery, the store and watches, records every request, and
//! renders results (objects, lists, Tables, Status errors) as the real server's JSON.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::watch as signal;

use crate::discovery;
use crate::error::ApiError;
use crate::openapi;
use crate::patch::{self, PatchType};
use crate::query::Query;
use crate::resources::{Gvr, ResourceType, api_version};
use crate::store::{ListPage, Store};
use crate::table;
use crate::watch::{self, Controls, OpenWatches, WatchRequest};
use crate::write::{FieldValidation, Subresource, WriteOptions};

/// Requests larger than this are refused (the real server's limit is about 3 MiB per object).
const MAX_BODY: usize = 16 << 20;

/// One request as the server saw it, for tests to assert what a client did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw (still percent-encoded) query string, `""` when there is none.
    pub query: String,
    pub content_type: Option<String>,
}

impl RequestRecord {
    /// The decoded value of one query parameter.
    pub fn param(&self, key: &str) -> Option<String> {
        Query::parse(Some(&self.query)).get(key).map(str::to_owned)
    }
}

/// State shared by the handlers and the test handle.
pub struct Shared {
    pub store: Mutex<Store>,
    pub log: Mutex<Vec<RequestRecord>>,
    pub bookmark_interval: signal::Sender<Duration>,
    pub breaker: signal::Sender<u64>,
    pub open_watches: OpenWatches,
    /// `host:port`, for `/api`'s serverAddressByClientCIDRs.
    pub address: String,
}

/// Locks ignoring poisoning: a panicking test thread must not take the server down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    lock(&sh.log).push(RequestRecord {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        content_type,
    });
    tracing::debug!(method = %parts.method, uri = %parts.uri, "request");
    let body = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::bad_request(format!("reading the request body: {e}"))),
    };
    match serve(
        &sh,
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        &parts.headers,
        body,
    ) {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    json_typed(code, v, "application/json")
}

fn json_typed(code: StatusCode, v: &Value, content_type: &str) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = code;
    if let Ok(ct) = content_type.parse() {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r
}

pub fn error_response(e: &ApiError) -> Response {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_status(),
    )
}

/// A path under `/api/v1` or `/apis/GROUP/VERSION` that names a resource.
#[derive(Debug, Clone, PartialEq)]
struct ResourcePath {
    gvr: Gvr,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn resource_path(group: &str, version: &str, rest: &[&str]) -> Option<ResourcePath> {
    let own = |s: &&str| (*s).to_owned();
    let (r, namespace, name, sub) = match rest {
        [r] => (*r, None, None, None),
        [r, n] => (*r, None, Some(own(n)), None),
        ["namespaces", ns, r] if !matches!(*r, "status" | "finalize") => (*r, Some(own(ns)), None, None),
        [r, n, sub] => (*r, None, Some(own(n)), Some(own(sub))),
        ["namespaces", ns, r, n] => (*r, Some(own(ns)), Some(own(n)), None),
        ["namespaces", ns, r, n, sub] => (*r, Some(own(ns)), Some(own(n)), Some(own(sub))),
        _ => return None,
    };
    if rest.iter().any(|s| s.is_empty()) {
        return None;
    }
    Some(ResourcePath {
        gvr: Gvr::new(group, version, r),
        namespace,
        name,
        sub,
    })
}

fn serve(
    sh: &Shared,
    method: &Method,
    path: &str,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let get_only = |v: Value| -> Result<Response, ApiError> {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            )));
        }
        Ok(json_response(StatusCode::OK, &v))
    };
    let not_found = || ApiError::no_route(path);
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return get_only(discovery::version()),
        ["healthz" | "livez" | "readyz"] => return Ok(Response::new(Body::from("ok"))),
        ["api"] => return get_only(discovery::core_versions(&sh.address)),
        ["apis"] => return get_only(discovery::group_list(&lock(&sh.store).registry)),
        ["apis", g] => return get_only(discovery::group(&lock(&sh.store).registry, g).ok_or_else(not_found)?),
        ["api", v] => {
            return get_only(discovery::resource_list(&lock(&sh.store).registry, "", v).ok_or_else(not_found)?);
        }
        ["apis", g, v] => {
            return get_only(discovery::resource_list(&lock(&sh.store).registry, g, v).ok_or_else(not_found)?);
        }
        ["openapi", "v3"] => return get_only(openapi::root(&lock(&sh.store).registry)),
        ["openapi", "v3", "api", v] => {
            return get_only(openapi::group_version(&lock(&sh.store).registry, "", v).ok_or_else(not_found)?);
        }
        ["openapi", "v3", "apis", g, v] => {
            return get_only(openapi::group_version(&lock(&sh.store).registry, g, v).ok_or_else(not_found)?);
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found()),
    };
    let rp = resource_path(group, version, rest).ok_or_else(not_found)?;
    let t = lock(&sh.store).registry.find(&rp.gvr).cloned().ok_or_else(not_found)?;
    // Namespaced types live under namespaces/NS (except the all-namespaces collection); others never do.
    let scope_ok = match (&rp.namespace, &rp.name) {
        (Some(_), _) => t.namespaced,
        (None, Some(_)) => !t.namespaced,
        (None, None) => true,
    };
    if !scope_ok {
        return Err(not_found());
    }
    let sub = match rp.sub.as_deref() {
        None => Subresource::Main,
        Some("status") if t.status_subresource => Subresource::Status,
        Some(_) => return Err(not_found()),
    };
    let q = Query::parse(raw_query);
    let ns = rp.namespace.clone().unwrap_or_default();
    let req = Req {
        sh,
        t: &t,
        version: &rp.gvr.version,
        ns: &ns,
        q: &q,
        headers,
    };
    match (method, rp.name.as_deref()) {
        (&Method::GET, None) if q.watch() => req.watch(rp.namespace.as_deref()),
        (&Method::GET, None) => req.list(rp.namespace.as_deref()),
        (&Method::GET, Some(name)) => req.get(name),
        (&Method::POST, None) if t.namespaced == rp.namespace.is_some() => req.create(&body),
        (&Method::PUT, Some(name)) => req.update(name, sub, &body),
        (&Method::PATCH, Some(name)) => req.patch(name, sub, &body),
        (&Method::DELETE, Some(name)) if sub == Subresource::Main => req.delete(name, &body),
        (&Method::DELETE, None) if t.namespaced == rp.namespace.is_some() => {
            req.delete_collection(rp.namespace.as_deref(), &body)
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {path})"
        ))),
    }
}

/// One resource request, with what every handler needs.
struct Req<'a> {
    sh: &'a Shared,
    t: &'a ResourceType,
    version: &'a str,
    ns: &'a str,
    q: &'a Query,
    headers: &'a HeaderMap,
}

/// A create or update body: JSON, or YAML (`application/yaml`). Protobuf and CBOR, which typed Go clients such
/// as `kubectl create configmap` send, are refused with 415: the fake has no schemas to decode them with.
fn parse_object(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    match ct.split(';').next().unwrap_or_default().trim() {
        "application/json" | "" | "*/*" => parse_json(body),
        "application/yaml" => {
            let text =
                std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the body of the request is not UTF-8"))?;
            serde_yaml_ng::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("the body of the request was in an unknown format: {e}")))
        }
        other => Err(ApiError::unsupported_body(other)),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body of the request was in an unknown format: {e}")))
}

impl Req<'_> {
    fn api_version(&self) -> String {
        api_version(&self.t.group, self.version)
    }

    /// The object as the client asked for it (its apiVersion is the request's version).
    fn render(&self, mut o: Value) -> Value {
        o["apiVersion"] = json!(self.api_version());
        o
    }

    fn wants_table(&self) -> bool {
        self.headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|a| a.split(',').next().is_some_and(|first| first.contains("as=Table")))
    }

    fn table(&self, objects: &[Value], list_meta: Value) -> Response {
        let include = self.q.get("includeObject").unwrap_or("Metadata");
        let objects: Vec<Value> = objects.iter().map(|o| self.render(o.clone())).collect();
        let t = table::table(self.t, self.version, &objects, list_meta, include);
        json_typed(StatusCode::OK, &t, "application/json;as=Table;v=v1;g=meta.k8s.io")
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.sh.store)
    }

    fn get(&self, name: &str) -> Result<Response, ApiError> {
        let o = self.store().get_object(self.t, self.ns, name)?;
        if self.wants_table() {
            let rv = o["metadata"]["resourceVersion"].clone();
            return Ok(self.table(&[o], json!({ "resourceVersion": rv })));
        }
        Ok(json_response(StatusCode::OK, &self.render(o)))
    }

    fn list(&self, namespace: Option<&str>) -> Result<Response, ApiError> {
        let opts = self.q.list_options(&self.t.selectable_fields)?;
        let ListPage {
            items,
            resource_version,
            continue_token,
            remaining,
        } = self.store().list(self.t, namespace, &opts)?;
        let mut meta = json!({ "resourceVersion": resource_version.to_string() });
        if let Some(c) = continue_token {
            meta["continue"] = json!(c);
        }
        if let Some(n) = remaining {
            meta["remainingItemCount"] = json!(n);
        }
        if self.wants_table() {
            return Ok(self.table(&items, meta));
        }
        // Typed (built-in) lists carry no apiVersion/kind per item; unstructured (custom resource) lists do.
        let items: Vec<Value> = items
            .into_iter()
            .map(|o| {
                let mut o = self.render(o);
                if self.t.builtin
                    && let Some(m) = o.as_object_mut()
                {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                o
            })
            .collect();
        let list = json!({ "kind": format!("{}List", self.t.kind), "apiVersion": self.api_version(), "metadata": meta, "items": items });
        Ok(json_response(StatusCode::OK, &list))
    }

    fn watch(&self, namespace: Option<&str>) -> Result<Response, ApiError> {
        let req = WatchRequest {
            t: self.t.clone(),
            version: self.version.to_owned(),
            namespace: namespace.map(str::to_owned),
            labels: self.q.labels()?,
            fields: self.q.fields(&self.t.selectable_fields)?,
            resource_version: self.q.get("resourceVersion").map(str::to_owned),
            bookmarks: self.q.bookmarks(),
            send_initial_events: self.q.send_initial_events(),
            timeout: self.q.timeout()?,
        };
        let controls = Controls {
            bookmark_interval: self.sh.bookmark_interval.subscribe(),
            breaker: self.sh.breaker.subscribe(),
            open: self.sh.open_watches.clone(),
        };
        let mut rx = watch::start(&self.sh.store, req, controls);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut r = Response::new(Body::from_stream(stream));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache, private"),
        );
        Ok(r)
    }

    fn write_options(&self) -> Result<WriteOptions, ApiError> {
        let validation = match self.q.get("fieldValidation") {
            None | Some("") | Some("Warn") => FieldValidation::Warn,
            Some("Ignore") => FieldValidation::Ignore,
            Some("Strict") => FieldValidation::Strict,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
                )));
            }
        };
        Ok(WriteOptions {
            dry_run: self.q.dry_run(),
            validation,
        })
    }

    /// A write's response, with a `Warning` header per pruned field.
    fn written(&self, store: &mut Store, code: StatusCode, out: Value) -> Response {
        let mut r = json_response(code, &self.render(out));
        for w in std::mem::take(&mut store.warnings) {
            let text = format!("299 - {}", json!(w));
            if let Ok(v) = http::HeaderValue::from_str(&text) {
                r.headers_mut().append(header::WARNING, v);
            }
        }
        r
    }

    fn create(&self, body: &[u8]) -> Result<Response, ApiError> {
        let o = parse_object(self.headers, body)?;
        let opts = self.write_options()?;
        let mut store = self.store();
        store.warnings.clear();
        let out = store.create(self.t, self.ns, o, &opts)?;
        Ok(self.written(&mut store, StatusCode::CREATED, out))
    }

    fn update(&self, name: &str, sub: Subresource, body: &[u8]) -> Result<Response, ApiError> {
        let o = parse_object(self.headers, body)?;
        let opts = self.write_options()?;
        let mut store = self.store();
        store.warnings.clear();
        let out = store.update(self.t, self.ns, name, o, sub, &opts)?;
        Ok(self.written(&mut store, StatusCode::OK, out))
    }

    fn patch(&self, name: &str, sub: Subresource, body: &[u8]) -> Result<Response, ApiError> {
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let pt = PatchType::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media_type(ct))?;
        if pt == PatchType::Strategic && !self.t.builtin {
            return Err(ApiError::unsupported_media_type(ct));
        }
        let p = patch::parse_body(pt, body)?;
        let (t, ns, opts) = (self.t, self.ns, self.write_options()?);
        let mut store = self.store();
        store.warnings.clear();
        let (out, created) = if pt == PatchType::Apply {
            let manager = self.q.get("fieldManager").filter(|m| !m.is_empty()).ok_or_else(|| {
                ApiError::invalid(
                    "PatchOptions",
                    "meta.k8s.io",
                    "",
                    &[(
                        "fieldManager".to_owned(),
                        "Required value: is required for apply patch".to_owned(),
                    )],
                )
            })?;
            let applied_name = p["metadata"]["name"].as_str().unwrap_or_default();
            if applied_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({applied_name}) does not match the name on the URL ({name})"
                )));
            }
            let key = (t.key(), (ns.to_owned(), name.to_owned()), manager.to_owned());
            let result = store.modify(t, ns, name, sub, &opts, |s, old| match old {
                None => Ok(p.clone()),
                Some(old) => Ok(patch::server_side_apply(old, &p, s.applied.get(&key))),
            })?;
            if !opts.dry_run {
                store.applied.insert(key, p);
            }
            result
        } else {
            store.modify(t, ns, name, sub, &opts, |_, old| match old {
                None => Err(ApiError::not_found(&t.group, &t.plural, name)),
                Some(old) => patch::apply_patch(pt, old, &p),
            })?
        };
        let code = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok(self.written(&mut store, code, out))
    }

    fn delete_options(&self, body: &[u8]) -> Result<Value, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(json!({}));
        }
        parse_json(body)
    }

    fn delete(&self, name: &str, body: &[u8]) -> Result<Response, ApiError> {
        let opts = self.delete_options(body)?;
        let out = self.store().delete(self.t, self.ns, name, &opts, self.q.dry_run())?;
        let gone = out["metadata"]["deletionTimestamp"].is_null();
        if self.t.returns_deleted || !gone {
            return Ok(json_response(StatusCode::OK, &self.render(out)));
        }
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": { "name": name, "group": self.t.group, "kind": self.t.plural, "uid": out["metadata"]["uid"] },
        });
        Ok(json_response(StatusCode::OK, &status))
    }

    fn delete_collection(&self, namespace: Option<&str>, body: &[u8]) -> Result<Response, ApiError> {
        let opts = self.delete_options(body)?;
        let list_opts = self.q.list_options(&self.t.selectable_fields)?;
        let mut store = self.store();
        let page = store.list(
            self.t,
            namespace,
            &crate::store::ListOptions {
                limit: None,
                continue_token: None,
                ..list_opts
            },
        )?;
        let mut deleted = Vec::new();
        for o in page.items {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
            let name = o["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            deleted.push(self.render(store.delete(self.t, &ns, &name, &opts, self.q.dry_run())?));
        }
        let list = json!({ "kind": format!("{}List", self.t.kind), "apiVersion": self.api_version(),
            "metadata": { "resourceVersion": store.resource_version().to_string() }, "items": deleted });
        Ok(json_response(StatusCode::OK, &list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_resources() {
        let p = resource_path("", "v1", &["namespaces", "default", "pods", "p1", "status"]).expect("path");
        assert_eq!(
            (
                p.gvr.resource.as_str(),
                p.namespace.as_deref(),
                p.name.as_deref(),
                p.sub.as_deref()
            ),
            ("pods", Some("default"), Some("p1"), Some("status"))
        );
        let p = resource_path("", "v1", &["namespaces", "default", "status"]).expect("path");
        assert_eq!(
            (p.gvr.resource.as_str(), p.name.as_deref(), p.sub.as_deref()),
            ("namespaces", Some("default"), Some("status"))
        );
        let p = resource_path("", "v1", &["namespaces", "default", "pods"]).expect("path");
        assert_eq!((p.namespace.as_deref(), p.name), (Some("default"), None));
        let p = resource_path("l7mp.io", "v1", &["virtualservices"]).expect("path");
        assert_eq!((p.namespace, p.name), (None, None));
        assert!(resource_path("", "v1", &["a", "b", "c", "d"]).is_none());
        assert!(resource_path("", "v1", &["pods", ""]).is_none());
    }
}

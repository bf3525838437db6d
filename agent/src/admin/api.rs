//! The routes of `/api/v1`: one table of operations, each with its method, path, documentation and handler, from
//! which both the axum router and the OpenAPI document are built.
//!
//! Status codes are the original's (200 with `{"status": 200, "message": "OK"}` for changes, 400 with
//! `{status, message, content}` for a rejected change), except where it had bugs: an unknown object is 404 (it was
//! 400), a body of another content type is 415 (it was 500), `GET /endpoints/{name}` works, `POST /config` and
//! `POST /admin` are implemented, and `PUT` updates an object in place.

use super::AdminState;
use super::reply::{self, ApiError, Opts};
use super::sessions::session_json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::routing::MethodRouter;
use l7mp_api::ObjectKind;
use l7mp_api::edit::{self, Edit, EditError, RuleRef};
use l7mp_api::{Config, dump};
use serde_json::Value;
use std::sync::Arc;

/// The largest request body the API reads.
const MAX_BODY: usize = 4 << 20;

type St = State<Arc<AdminState>>;

/// A request's query options, headers and body.
pub struct ApiRequest {
    pub opts: Opts,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Who is calling, when the API authenticates ([`super::auth`]); `None` when it is open.
    pub caller: Option<l7mp_auth::Caller>,
}

impl<S: Send + Sync> FromRequest<S> for ApiRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let opts = Opts::parse(req.uri().query())?;
        let (parts, body) = req.into_parts();
        let caller = parts.extensions.get::<l7mp_auth::Caller>().cloned();
        let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {MAX_BODY} bytes"),
            )
        })?;
        Ok(ApiRequest {
            opts,
            headers: parts.headers,
            body,
            caller,
        })
    }
}

impl ApiRequest {
    fn value(&self) -> Result<Value, ApiError> {
        reply::body(&self.headers, &self.body)
    }
}

/// One path parameter.
pub struct Name(pub String);
/// Two path parameters.
pub struct Name2(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, s)
            .await
            .map(|Path(n)| Name(n))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Name2 {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, ApiError> {
        Path::<(String, String)>::from_request_parts(parts, s)
            .await
            .map(|Path((a, b))| Name2(a, b))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// The kinds of named objects with the same five routes (list, add, get, update, delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Listener,
    Cluster,
    RuleList,
    Rule,
    Route,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Listener, Kind::Cluster, Kind::RuleList, Kind::Rule, Kind::Route];

    /// The singular noun, also the key that wraps the object in a request body.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Listener => "listener",
            Kind::Cluster => "cluster",
            Kind::RuleList => "rulelist",
            Kind::Rule => "rule",
            Kind::Route => "route",
        }
    }

    /// The path segment (`listeners`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Listener => "listeners",
            Kind::Cluster => "clusters",
            Kind::RuleList => "rulelists",
            Kind::Rule => "rules",
            Kind::Route => "routes",
        }
    }

    /// The OpenAPI schema of the object.
    pub fn schema(self) -> &'static str {
        match self {
            Kind::Listener => "Listener",
            Kind::Cluster => "Cluster",
            Kind::RuleList => "RuleList",
            Kind::Rule => "Rule",
            Kind::Route => "Route",
        }
    }

    fn object(self) -> ObjectKind {
        match self {
            Kind::Listener => ObjectKind::Listener,
            Kind::Cluster => ObjectKind::Cluster,
            Kind::RuleList => ObjectKind::RuleList,
            Kind::Rule => ObjectKind::Rule,
            Kind::Route => ObjectKind::Route,
        }
    }

    /// Every object of this kind, dumped.
    fn dump_all(self, cfg: &Config, recursive: bool) -> Vec<Value> {
        match self {
            Kind::Listener => cfg
                .listeners
                .iter()
                .map(|o| dump::listener(cfg, o, recursive))
                .collect(),
            Kind::Cluster => cfg.clusters.iter().map(|o| dump::cluster(cfg, o, recursive)).collect(),
            Kind::RuleList => cfg
                .rulelists
                .iter()
                .map(|o| dump::rulelist(cfg, o, recursive))
                .collect(),
            Kind::Rule => cfg.rules.iter().map(|o| dump::rule(cfg, o, recursive)).collect(),
            Kind::Route => cfg.routes.iter().map(|o| dump::route(cfg, o, recursive)).collect(),
        }
    }

    /// The object `name`, dumped.
    fn dump_one(self, cfg: &Config, name: &str, recursive: bool) -> Option<Value> {
        match self {
            Kind::Listener => cfg
                .listeners
                .iter()
                .find(|o| o.name == name)
                .map(|o| dump::listener(cfg, o, recursive)),
            Kind::Cluster => cfg
                .clusters
                .iter()
                .find(|o| o.name == name)
                .map(|o| dump::cluster(cfg, o, recursive)),
            Kind::RuleList => cfg
                .rulelists
                .iter()
                .find(|o| o.name == name)
                .map(|o| dump::rulelist(cfg, o, recursive)),
            Kind::Rule => cfg
                .rules
                .iter()
                .find(|o| o.name == name)
                .map(|o| dump::rule(cfg, o, recursive)),
            Kind::Route => cfg
                .routes
                .iter()
                .find(|o| o.name == name)
                .map(|o| dump::route(cfg, o, recursive)),
        }
    }
}

/// The OpenAPI schema of a 200 response or a request body.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// A named component schema.
    One(&'static str),
    /// An array of a named component schema.
    List(&'static str),
}

/// One operation of the API.
pub struct Operation {
    pub method: Method,
    /// The path, in the syntax both axum and OpenAPI use (`/api/v1/listeners/{name}`).
    pub path: &'static str,
    pub summary: String,
    /// The request body (wrapped objects such as `{"listener": {...}}` have their own schemas).
    pub request: Option<Body>,
    /// The body of the 200 response.
    pub response: Body,
    /// Whether `recursive` means something here.
    pub recursive: bool,
    pub handler: MethodRouter<Arc<AdminState>>,
}

fn op(
    method: Method,
    path: &'static str,
    summary: impl Into<String>,
    request: Option<Body>,
    response: Body,
    handler: MethodRouter<Arc<AdminState>>,
) -> Operation {
    Operation {
        method,
        path,
        summary: summary.into(),
        request,
        response,
        recursive: false,
        handler,
    }
}

fn recursive(mut o: Operation) -> Operation {
    o.recursive = true;
    o
}

/// Leaks a path built at startup: the table is built a handful of times per process and axum and utoipa want
/// `&'static str` paths here.
fn path(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

const STATUS: Body = Body::One("Status");

/// Every operation of `/api/v1`.
pub fn operations() -> Vec<Operation> {
    use Method as M;
    let mut ops = vec![
        op(
            M::GET,
            "/api/v1/config",
            "The whole configuration in force, with endpoints and sessions",
            None,
            Body::One("ConfigDump"),
            axum::routing::get(get_config),
        ),
        op(
            M::POST,
            "/api/v1/config",
            "Replace the whole configuration (validated first; rejected whole on error; \
             unchanged listeners and their sessions are kept)",
            Some(Body::One("Config")),
            STATUS,
            axum::routing::post(post_config),
        ),
        op(
            M::GET,
            "/api/v1/admin",
            "Process settings: log level, version",
            None,
            Body::One("Admin"),
            axum::routing::get(get_admin),
        ),
        op(
            M::POST,
            "/api/v1/admin",
            "Change process settings at run time (the log level)",
            Some(Body::One("AdminRequest")),
            STATUS,
            axum::routing::post(post_admin),
        ),
        op(
            M::GET,
            "/api/v1/openapi.json",
            "This document",
            None,
            Body::One("Object"),
            axum::routing::get(get_openapi),
        ),
    ];
    for kind in Kind::ALL {
        let (plural, noun, schema) = (kind.plural(), kind.noun(), kind.schema());
        let list = path(format!("/api/v1/{plural}"));
        let one = path(format!("/api/v1/{plural}/{{name}}"));
        let wrapped = Body::One(path(format!("{schema}Request")));
        ops.push(recursive(op(
            M::GET,
            list,
            format!("List the {plural}"),
            None,
            Body::List(schema),
            axum::routing::get(move |st: St, r: ApiRequest| list_objects(st, kind, r)),
        )));
        ops.push(op(
            M::POST,
            list,
            format!("Add a {noun} (inline objects in it get generated names)"),
            Some(wrapped),
            STATUS,
            axum::routing::post(move |st: St, r: ApiRequest| add_object(st, kind, r)),
        ));
        ops.push(recursive(op(
            M::GET,
            one,
            format!("Get a {noun}"),
            None,
            Body::One(schema),
            axum::routing::get(move |st: St, Name(n): Name, r: ApiRequest| get_object(st, kind, n, r)),
        )));
        ops.push(op(
            M::PUT,
            one,
            format!("Update a {noun} in place (sessions are kept where its change allows)"),
            Some(wrapped),
            STATUS,
            axum::routing::put(move |st: St, Name(n): Name, r: ApiRequest| put_object(st, kind, n, r)),
        ));
        ops.push(recursive(op(
            M::DELETE,
            one,
            format!(
                "Delete a {noun}; recursive: with its generated children \
             and sessions"
            ),
            None,
            STATUS,
            axum::routing::delete(move |st: St, Name(n): Name, r: ApiRequest| delete_object(st, kind, n, r)),
        )));
    }
    ops.extend([
        op(
            M::GET,
            "/api/v1/clusters/{name}/endpoints",
            "List a cluster's endpoints",
            None,
            Body::List("Endpoint"),
            axum::routing::get(list_cluster_endpoints),
        ),
        op(
            M::POST,
            "/api/v1/clusters/{name}/endpoints",
            "Add an endpoint to a cluster",
            Some(Body::One("EndpointRequest")),
            STATUS,
            axum::routing::post(add_endpoint),
        ),
        op(
            M::GET,
            "/api/v1/endpoints",
            "List every endpoint of every cluster",
            None,
            Body::List("Endpoint"),
            axum::routing::get(list_endpoints),
        ),
        op(
            M::GET,
            "/api/v1/endpoints/{name}",
            "Get an endpoint",
            None,
            Body::One("Endpoint"),
            axum::routing::get(get_endpoint),
        ),
        op(
            M::PUT,
            "/api/v1/endpoints/{name}",
            "Update an endpoint in place (address, weight)",
            Some(Body::One("EndpointRequest")),
            STATUS,
            axum::routing::put(put_endpoint),
        ),
        recursive(op(
            M::DELETE,
            "/api/v1/endpoints/{name}",
            "Delete an endpoint; recursive: end the sessions \
             connected to it",
            None,
            STATUS,
            axum::routing::delete(delete_endpoint),
        )),
        recursive(op(
            M::GET,
            "/api/v1/rulelists/{name}/rules/{position}",
            "Get the rule at a position of a \
             rulelist",
            None,
            Body::One("Rule"),
            axum::routing::get(get_rule_at),
        )),
        op(
            M::POST,
            "/api/v1/rulelists/{name}/rules/{position}",
            "Insert a rule (an object, or the name of a \
             rule) at a position (0 = first, the length = last)",
            Some(Body::One("RuleInsertRequest")),
            STATUS,
            axum::routing::post(insert_rule),
        ),
        op(
            M::DELETE,
            "/api/v1/rulelists/{name}/rules/{position}",
            "Remove a rule from a rulelist, by position or \
             by rule name",
            None,
            STATUS,
            axum::routing::delete(remove_rule),
        ),
        op(
            M::GET,
            "/api/v1/sessions",
            "List the sessions (live ones, and ended ones kept by options.track)",
            None,
            Body::List("Session"),
            axum::routing::get(list_sessions),
        ),
        op(
            M::GET,
            "/api/v1/sessions/{name}",
            "Get a session",
            None,
            Body::One("Session"),
            axum::routing::get(get_session),
        ),
        op(
            M::DELETE,
            "/api/v1/sessions/{name}",
            "End a session (its streams are closed)",
            None,
            STATUS,
            axum::routing::delete(delete_session),
        ),
    ]);
    ops
}

/// The router of every operation, with JSON errors for unknown paths (404) and methods (405).
pub fn router(state: Arc<AdminState>) -> axum::Router {
    let auth = state.auth.clone();
    let mut r = axum::Router::new();
    for o in operations() {
        r = r.route(o.path, o.handler);
    }
    r.fallback(|| async { ApiError::not_found("Unknown API operation") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this method is not defined on this path",
            )
        })
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
        .pipe(|r| super::auth::layer(r, auth))
}

/// `x.pipe(f)` = `f(x)`, to keep the builder chain above readable.
trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<S> Pipe for axum::Router<S> {}

/// Logs every API request with its answer's status (debug level; failed changes also at info by [`change`]).
async fn log_request(req: Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let resp = next.run(req).await;
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "admin API request");
    resp
}

fn config(st: &AdminState) -> Arc<Config> {
    st.engine.snapshot().config.clone()
}

/// Why a change was not made: the edit is invalid, or the caller may not make it.
#[derive(Debug, thiserror::Error)]
enum ChangeError {
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error("{0}")]
    Forbidden(String),
}

/// Turns a failed change into the API's error: an unknown object is 404, a change the caller's role does not allow
/// 403, anything else 400 with the reason.
fn change_error(verb: &str, what: &str, e: crate::engine::UpdateError<ChangeError>) -> ApiError {
    use crate::engine::UpdateError;
    match e {
        UpdateError::Edit(ChangeError::Edit(e @ EditError::NotFound { .. })) => {
            ApiError::not_found(format!("Cannot {verb} {what}: {e}"))
        }
        UpdateError::Edit(ChangeError::Edit(e)) => ApiError::bad_request(format!("Cannot {verb} {what}: {e}")),
        UpdateError::Edit(ChangeError::Forbidden(why)) => ApiError::new(StatusCode::FORBIDDEN, why),
        UpdateError::Apply(e) => ApiError::bad_request(format!("Cannot {verb} {what}: {e:#}")),
    }
}

async fn change(st: &AdminState, verb: &str, what: &str, edit: Edit<'_>, r: &ApiRequest) -> Result<Response, ApiError> {
    let opts = r.opts;
    let checked = |c: &Config| -> Result<Config, ChangeError> {
        let next = edit::apply(c, edit)?;
        match super::auth::commands_need_admin(c, &next, r.caller.as_ref(), &format!("{verb} {what}")) {
            Some(why) => Err(ChangeError::Forbidden(why)),
            None => Ok(next),
        }
    };
    match st.engine.update(checked).await {
        Ok(()) => {
            tracing::info!("admin API: {verb} {what}: done");
            Ok(reply::ok(opts.format))
        }
        Err(e) => {
            let e = change_error(verb, what, e);
            tracing::info!("admin API: {}", e.content);
            Err(e)
        }
    }
}

async fn get_config(State(st): St, r: ApiRequest) -> Result<Response, ApiError> {
    let cfg = config(&st);
    let mut v = dump::config(&cfg);
    if let Value::Object(o) = &mut v {
        o.insert("admin".into(), admin_json(&st, &cfg));
        let endpoints: Vec<Value> = cfg
            .clusters
            .iter()
            .flat_map(|c| c.endpoints.iter().map(dump::endpoint))
            .collect();
        o.insert("endpoints".into(), Value::Array(endpoints));
        o.insert("sessions".into(), Value::Array(sessions(&st)));
    }
    Ok(reply::json(&v, r.opts.format))
}

async fn post_config(State(st): St, r: ApiRequest) -> Result<Response, ApiError> {
    let body = r.value()?;
    // `{"config": {...}}` is accepted too.
    let doc = match &body {
        Value::Object(o) if o.len() == 1 && o.contains_key("config") => &o["config"],
        other => other,
    };
    change(&st, "set", "configuration", Edit::Replace(doc), &r).await
}

fn admin_json(st: &AdminState, cfg: &Config) -> Value {
    let mut v = dump::admin(&cfg.admin);
    if let Value::Object(o) = &mut v {
        if let Some(log) = &st.log {
            o.insert("log_level".into(), Value::String(log.level()));
        }
        o.insert("version".into(), Value::String(env!("CARGO_PKG_VERSION").into()));
    }
    v
}

async fn get_admin(State(st): St, r: ApiRequest) -> Result<Response, ApiError> {
    Ok(reply::json(&admin_json(&st, &config(&st)), r.opts.format))
}

async fn post_admin(State(st): St, r: ApiRequest) -> Result<Response, ApiError> {
    let body = r.value()?;
    let admin = reply::wrapped(&body, "admin")?;
    let Value::Object(fields) = admin else {
        return Err(ApiError::bad_request(format!(
            "admin: expected an object, got {}",
            l7mp_api::decode::describe(admin)
        )));
    };
    let mut level = None;
    for (k, v) in fields {
        match (k.as_str(), v) {
            ("log_level", Value::String(s)) => level = Some(s.clone()),
            ("log_level", other) => {
                return Err(ApiError::bad_request(format!(
                    "admin.log_level: expected a string, got {}",
                    l7mp_api::decode::describe(other)
                )));
            }
            ("strict", Value::Bool(_)) => {} // this agent always validates
            ("log_file" | "access_log_path", _) => {
                return Err(ApiError::bad_request(format!(
                    "admin.{k}: cannot be changed at run time (restart with --log-file / --access-log)"
                )));
            }
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "admin.{other}: unknown field (expected one of: log_level, strict)"
                )));
            }
        }
    }
    if let Some(level) = level {
        let Some(log) = &st.log else {
            return Err(ApiError::bad_request(
                "admin.log_level: this agent's log level cannot be changed",
            ));
        };
        log.set_level(&level)
            .map_err(|e| ApiError::bad_request(format!("admin.log_level: {e}")))?;
        tracing::info!(%level, "log level changed through the admin API");
        let _ = st
            .engine
            .update(|c| {
                let mut c = c.clone();
                c.admin.log_level = Some(level.clone());
                Ok::<_, EditError>(c)
            })
            .await;
    }
    Ok(reply::ok(r.opts.format))
}

async fn get_openapi(r: ApiRequest) -> Result<Response, ApiError> {
    Ok(reply::json(&super::openapi::document(), r.opts.format))
}

async fn list_objects(State(st): St, kind: Kind, r: ApiRequest) -> Result<Response, ApiError> {
    let cfg = config(&st);
    Ok(reply::json(
        &Value::Array(kind.dump_all(&cfg, r.opts.recursive)),
        r.opts.format,
    ))
}

async fn get_object(State(st): St, kind: Kind, name: String, r: ApiRequest) -> Result<Response, ApiError> {
    let cfg = config(&st);
    kind.dump_one(&cfg, &name, r.opts.recursive)
        .map(|v| reply::json(&v, r.opts.format))
        .ok_or_else(|| ApiError::not_found(format!("{} {name:?} is not defined", kind.noun())))
}

async fn add_object(State(st): St, kind: Kind, r: ApiRequest) -> Result<Response, ApiError> {
    let body = r.value()?;
    let object = reply::wrapped(&body, kind.noun())?;
    let edit = Edit::Add {
        kind: kind.object(),
        object,
    };
    change(&st, "add", kind.noun(), edit, &r).await
}

async fn put_object(State(st): St, kind: Kind, name: String, r: ApiRequest) -> Result<Response, ApiError> {
    let body = r.value()?;
    let object = reply::wrapped(&body, kind.noun())?;
    let edit = Edit::Update {
        kind: kind.object(),
        name: &name,
        object,
    };
    change(&st, "update", kind.noun(), edit, &r).await
}

async fn delete_object(State(st): St, kind: Kind, name: String, r: ApiRequest) -> Result<Response, ApiError> {
    let edit = Edit::Delete {
        kind: kind.object(),
        name: &name,
        recursive: r.opts.recursive,
    };
    let reply = change(&st, "delete", kind.noun(), edit, &r).await?;
    if r.opts.recursive {
        // The original ended the sessions of a deleted listener or cluster along with it.
        for s in st.engine.sessions() {
            let hit = match kind {
                Kind::Listener => s.listener == name,
                Kind::Cluster => s.stages().iter().any(|st| st.cluster == name),
                _ => false,
            };
            if hit {
                s.cancel.cancel();
            }
        }
    }
    Ok(reply)
}

async fn list_cluster_endpoints(State(st): St, Name(name): Name, r: ApiRequest) -> Result<Response, ApiError> {
    let cfg = config(&st);
    let c = cfg
        .clusters
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| ApiError::not_found(format!("cluster {name:?} is not defined")))?;
    let v: Vec<Value> = c.endpoints.iter().map(dump::endpoint).collect();
    Ok(reply::json(&Value::Array(v), r.opts.format))
}

async fn add_endpoint(State(st): St, Name(cluster): Name, r: ApiRequest) -> Result<Response, ApiError> {
    let body = r.value()?;
    let endpoint = reply::wrapped(&body, "endpoint")?;
    let edit = Edit::AddEndpoint {
        cluster: &cluster,
        endpoint,
    };
    change(&st, "add", "endpoint", edit, &r).await
}

async fn list_endpoints(State(st): St, r: ApiRequest) -> Result<Response, ApiError> {
    let cfg = config(&st);
    let v: Vec<Value> = cfg
        .clusters
        .iter()
        .flat_map(|c| c.endpoints.iter().map(dump::endpoint))
        .collect();
    Ok(reply::json(&Value::Array(v), r.opts.format))
}

async fn get_endpoint(State(st): St, Name(name): Name, r: ApiRequest) -> Result<Response, ApiError> {
    let cfg = config(&st);
    edit::find_endpoint(&cfg, &name)
        .map(|(_, e)| reply::json(&dump::endpoint(e), r.opts.format))
        .ok_or_else(|| ApiError::not_found(format!("endpoint {name:?} is not defined")))
}

async fn put_endpoint(State(st): St, Name(name): Name, r: ApiRequest) -> Result<Response, ApiError> {
    let body = r.value()?;
    let object = reply::wrapped(&body, "endpoint")?;
    let edit = Edit::Update {
        kind: ObjectKind::Endpoint,
        name: &name,
        object,
    };
    change(&st, "update", "endpoint", edit, &r).await
}

async fn delete_endpoint(State(st): St, Name(name): Name, r: ApiRequest) -> Result<Response, ApiError> {
    let cluster = edit::find_endpoint(&config(&st), &name).map(|(c, _)| c.name.clone());
    let edit = Edit::Delete {
        kind: ObjectKind::Endpoint,
        name: &name,
        recursive: r.opts.recursive,
    };
    let reply = change(&st, "delete", "endpoint", edit, &r).await?;
    if r.opts.recursive {
        // Sessions connected to the endpoint are disconnected; their routes' retry policies apply.
        for s in st.engine.sessions() {
            let hit = s
                .stages()
                .iter()
                .any(|x| Some(&x.cluster) == cluster.as_ref() && x.endpoint.as_deref() == Some(name.as_str()));
            if hit {
                s.cancel.cancel();
            }
        }
    }
    Ok(reply)
}

fn position(s: &str) -> Result<usize, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("position: expected a non-negative integer, got {s:?}")))
}

async fn get_rule_at(State(st): St, Name2(list, pos): Name2, r: ApiRequest) -> Result<Response, ApiError> {
    let cfg = config(&st);
    let i = position(&pos)?;
    let rl = cfg
        .rulelists
        .iter()
        .find(|l| l.name == list)
        .ok_or_else(|| ApiError::not_found(format!("rulelist {list:?} is not defined")))?;
    let rule = rl
        .rules
        .get(i)
        .and_then(|name| cfg.rules.iter().find(|x| &x.name == name))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "rulelist {list:?} has no rule at position {i} (it has {})",
                rl.rules.len()
            ))
        })?;
    Ok(reply::json(&dump::rule(&cfg, rule, r.opts.recursive), r.opts.format))
}

async fn insert_rule(State(st): St, Name2(list, pos): Name2, r: ApiRequest) -> Result<Response, ApiError> {
    let i = position(&pos)?;
    let body = r.value()?;
    let rule = reply::wrapped(&body, "rule")?;
    let edit = Edit::InsertRule {
        rulelist: &list,
        position: i,
        rule,
    };
    change(&st, "insert", "rule", edit, &r).await
}

async fn remove_rule(State(st): St, Name2(list, which): Name2, r: ApiRequest) -> Result<Response, ApiError> {
    let which = match which.parse::<usize>() {
        Ok(i) => RuleRef::Position(i),
        Err(_) => RuleRef::Name(&which),
    };
    let edit = Edit::RemoveRule { rulelist: &list, which };
    change(&st, "remove", "rule", edit, &r).await
}

fn sessions(st: &AdminState) -> Vec<Value> {
    st.engine.sessions().iter().map(|s| one_session(s)).collect()
}

fn one_session(s: &crate::session::SessionInfo) -> Value {
    session_json(s, dump::listener_spec(&s.listener_cfg.spec))
}

async fn list_sessions(State(st): St, r: ApiRequest) -> Result<Response, ApiError> {
    Ok(reply::json(&Value::Array(sessions(&st)), r.opts.format))
}

async fn get_session(State(st): St, Name(name): Name, r: ApiRequest) -> Result<Response, ApiError> {
    st.engine
        .session(&name)
        .map(|s| reply::json(&one_session(&s), r.opts.format))
        .ok_or_else(|| ApiError::not_found(format!("session {name:?} does not exist")))
}

async fn delete_session(State(st): St, Name(name): Name, r: ApiRequest) -> Result<Response, ApiError> {
    if st.engine.end_session(&name) {
        tracing::info!(session = %name, "session ended through the admin API");
        Ok(reply::ok(r.opts.format))
    } else {
        Err(ApiError::not_found(format!("session {name:?} does not exist")))
    }
}

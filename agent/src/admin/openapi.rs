//! The OpenAPI 3 document of `/api/v1`, built from the same operation table as the router ([`api::operations`]);
//! the object schemas are derived (utoipa) from the documentation types below, which mirror the JSON the API reads
//! and writes. Protocol-specific `spec` objects are open (`additionalProperties`): their fields are documented in
//! docs/protocols/ and checked by the configuration loader, whose errors name the field.

use super::api::{self, Body};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, Schema};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApiBuilder, Paths, Ref, RefOr, Required, ResponseBuilder,
    ResponsesBuilder,
};
use utoipa::{PartialSchema, ToSchema};

type Object = BTreeMap<String, Value>;

/// `{status, message[, content]}`: the answer to a change, and every error.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Status {
    /// The HTTP status code.
    status: u16,
    /// Its reason phrase.
    message: String,
    /// What went wrong (errors only), naming the field.
    #[schema(value_type = Option<String>)]
    content: Option<String>,
}

/// A listener. `rules` is the name of a rulelist or a list of rules (inline rules get generated names).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Listener {
    name: String,
    /// `{protocol, ...}` (see docs/protocols/).
    spec: Object,
    rules: Value,
    #[schema(nullable = false)]
    options: Option<Object>,
}

/// A cluster. In dumps `endpoints` is their number, or the list with `recursive=true`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Cluster {
    name: String,
    spec: Object,
    #[schema(nullable = false)]
    endpoints: Option<Value>,
    #[schema(nullable = false)]
    loadbalancer: Option<Object>,
    #[schema(nullable = false)]
    options: Option<Value>,
}

/// An endpoint: `spec.address` (a host, or a socket path for UNIX clusters) and a weight.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Endpoint {
    #[schema(nullable = false)]
    name: Option<String>,
    spec: Object,
    #[schema(nullable = false)]
    weight: Option<u32>,
}

/// A rulelist: rule names, or rules (`recursive=true` in dumps; inline in requests).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RuleList {
    name: String,
    rules: Vec<Value>,
}

/// A rule: a JSON predicate over the session metadata and an action (`route`, `rewrite`, `apply`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Rule {
    #[schema(nullable = false)]
    name: Option<String>,
    #[schema(nullable = false)]
    r#match: Option<Value>,
    action: Object,
}

/// A route: the destination cluster (or a weighted split), ingress/egress chains and the retry policy.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Route {
    #[schema(nullable = false)]
    name: Option<String>,
    destination: Value,
    #[schema(nullable = false)]
    ingress: Option<Vec<Value>>,
    #[schema(nullable = false)]
    egress: Option<Vec<Value>>,
    #[schema(nullable = false)]
    retry: Option<Object>,
}

/// Process settings.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Admin {
    #[schema(nullable = false)]
    log_level: Option<String>,
    #[schema(nullable = false)]
    strict: Option<bool>,
    #[schema(nullable = false)]
    version: Option<String>,
    #[schema(nullable = false)]
    log_file: Option<String>,
    #[schema(nullable = false)]
    access_log_path: Option<String>,
}

/// A whole configuration, as in a static configuration file.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Config {
    #[schema(nullable = false)]
    admin: Option<Admin>,
    #[schema(nullable = false)]
    listeners: Option<Vec<Listener>>,
    #[schema(nullable = false)]
    clusters: Option<Vec<Cluster>>,
    #[schema(nullable = false)]
    rulelists: Option<Vec<RuleList>>,
    #[schema(nullable = false)]
    rules: Option<Vec<Rule>>,
    #[schema(nullable = false)]
    routes: Option<Vec<Route>>,
}

/// The configuration in force with its endpoints and sessions.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ConfigDump {
    admin: Admin,
    listeners: Vec<Listener>,
    clusters: Vec<Cluster>,
    rulelists: Vec<RuleList>,
    rules: Vec<Rule>,
    routes: Vec<Route>,
    endpoints: Vec<Endpoint>,
    sessions: Vec<Session>,
}

/// One stage of a session.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SessionStage {
    /// The listener (source) or cluster (other stages).
    #[schema(nullable = false)]
    origin: Option<String>,
    /// CONNECTED, RETRYING, END or PENDING.
    status: String,
    /// `{name}` of the endpoint the stage reached (network clusters), else null.
    endpoint: Option<Value>,
    #[schema(nullable = false)]
    listener: Option<Object>,
}

/// A session event.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SessionEvent {
    /// INIT, LOOKUP SUCCESS, CONNECT, DISCONNECT, RECONNECT, ERROR, END.
    event: String,
    /// RFC 3339, UTC.
    timestamp: String,
    message: String,
}

/// Bytes and messages in one direction.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Counters {
    bytes: u64,
    messages: u64,
}

/// What a session moved: from its source (uplink) and back to it (downlink).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Traffic {
    from_source: Counters,
    to_source: Counters,
}

/// A session.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Session {
    name: String,
    metadata: Object,
    source: SessionStage,
    destination: SessionStage,
    ingress: Vec<SessionStage>,
    egress: Vec<SessionStage>,
    route: Option<String>,
    /// INIT, CONNECTED, FINALIZING or DESTROYED.
    status: String,
    started: String,
    ended: Option<String>,
    /// Seconds since the start (until the end once ended).
    duration: f64,
    traffic: Traffic,
    events: Vec<SessionEvent>,
}

/// `{"admin": {"log_level": "debug"}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AdminRequest {
    admin: Object,
}

macro_rules! wrapper {
    ($name:ident, $key:ident, $t:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(ToSchema)]
        #[allow(dead_code)]
        pub struct $name {
            $key: $t,
        }
    };
}

wrapper!(ListenerRequest, listener, Listener, "`{\"listener\": {...}}`.");
wrapper!(ClusterRequest, cluster, Cluster, "`{\"cluster\": {...}}`.");
wrapper!(RuleListRequest, rulelist, RuleList, "`{\"rulelist\": {...}}`.");
wrapper!(RuleRequest, rule, Rule, "`{\"rule\": {...}}`.");
wrapper!(RouteRequest, route, Route, "`{\"route\": {...}}`.");
wrapper!(EndpointRequest, endpoint, Endpoint, "`{\"endpoint\": {...}}`.");

/// `{"rule": {...}}` or `{"rule": "name-of-a-rule"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RuleInsertRequest {
    rule: Value,
}

fn components() -> utoipa::openapi::Components {
    let mut b = ComponentsBuilder::new();
    macro_rules! add {
        ($($t:ty),*) => { $( b = b.schema(<$t as ToSchema>::name(), <$t as PartialSchema>::schema()); )* };
    }
    add!(
        Status,
        Listener,
        Cluster,
        Endpoint,
        RuleList,
        Rule,
        Route,
        Admin,
        Config,
        ConfigDump,
        SessionStage,
        SessionEvent,
        Counters,
        Traffic,
        Session,
        AdminRequest,
        ListenerRequest,
        ClusterRequest,
        RuleListRequest,
        RuleRequest,
        RouteRequest,
        EndpointRequest,
        RuleInsertRequest
    );
    b = b.schema("Object", utoipa::openapi::schema::Object::new());
    b.build()
}

fn schema_of(body: Body) -> RefOr<Schema> {
    let r = |name: &str| RefOr::Ref(Ref::from_schema_name(name));
    match body {
        Body::One(name) => r(name),
        Body::List(name) => ArrayBuilder::new().items(r(name)).build().into(),
    }
}

fn method(m: &axum::http::Method) -> HttpMethod {
    match *m {
        axum::http::Method::POST => HttpMethod::Post,
        axum::http::Method::PUT => HttpMethod::Put,
        axum::http::Method::DELETE => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

/// The OpenAPI document, as JSON.
pub fn document() -> Value {
    let mut paths = Paths::new();
    for op in api::operations() {
        let json_content = |body: Body| ContentBuilder::new().schema(Some(schema_of(body))).build();
        let error = ResponseBuilder::new()
            .description(
                "An error: 400 invalid request or change, 404 unknown object or route, 415 unsupported \
                          content type, 413 body too large",
            )
            .content("application/json", json_content(Body::One("Status")))
            .build();
        let ok = ResponseBuilder::new()
            .description("Success")
            .content("application/json", json_content(op.response))
            .build();
        let mut b = OperationBuilder::new()
            .summary(Some(op.summary.clone()))
            .operation_id(Some(format!(
                "{}{}",
                op.method.as_str().to_ascii_lowercase(),
                op.path.replace(['/', '{', '}', '.'], "_")
            )))
            .responses(
                ResponsesBuilder::new()
                    .response("200", ok)
                    .response("default", error)
                    .build(),
            );
        for seg in op.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                b = b.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(String::schema())),
                );
            }
        }
        if op.recursive {
            b = b.parameter(
                ParameterBuilder::new()
                    .name("recursive")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(
                        "Expand referenced objects (GET) or delete generated children (DELETE)",
                    ))
                    .schema(Some(bool::schema())),
            );
        }
        b = b.parameter(
            ParameterBuilder::new()
                .name("format")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some("Layout of the JSON reply"))
                .schema(Some(
                    utoipa::openapi::schema::ObjectBuilder::new()
                        .schema_type(utoipa::openapi::schema::Type::String)
                        .enum_values(Some(["plain", "terse", "space", "lines", "diffy"])),
                )),
        );
        if let Some(req) = op.request {
            b = b.request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content("application/json", json_content(req))
                    .content("application/yaml", json_content(req))
                    .build(),
            ));
        }
        paths.add_path_operation(op.path, vec![method(&op.method)], b.build());
    }
    let doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("l7mp-agent admin API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The original l7mp's REST API (/api/v1), with its bugs fixed: 404 for unknown objects, 415 for \
                     unsupported content types, PUT to update in place, POST /config and POST /admin implemented.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components()))
        .build();
    serde_json::to_value(&doc).unwrap_or(Value::Null)
}

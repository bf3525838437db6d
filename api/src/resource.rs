//! The control plane's resource model: `VirtualService`, `Target`, `Route` and `Rule` objects (`apiVersion:
//! l7mp.io/v1`, Kubernetes style `metadata`/`spec`/`status`), their parsing with field-path errors, and the pure
//! translation of a set of resources plus the connected agents into each agent's flat [`Config`].
//!
//! Protocol specs, load balancers, retries, predicates and rewrites are checked by the flat loader
//! ([`crate::load`]) on a one-object document, so a resource accepts exactly what a static configuration accepts;
//! the loader's error paths are re-rooted at the resource (`spec.listener.spec.port: ...`). See docs/resources.md.

use crate::decode::describe;
use crate::dump;
use crate::error::{ConfigError, FieldError};
use crate::load::config_from_value;
use crate::model::{ClusterSpec, Config, ListenerSpec, LoadBalancer, Retry, Rewrite};
use crate::path::{FieldPath, Segment};
use crate::workload::{Workloads, dns_label_problem, label_key_problem, label_value_problem};
use serde_json::{Map, Value, json};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

pub mod grpc;

/// The API group and version of every resource.
pub const API_VERSION: &str = "l7mp.io/v1";

/// The namespace of a resource (or a reference) that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The kinds of resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    VirtualService,
    Target,
    Route,
    Rule,
}

impl ResourceKind {
    /// Every kind.
    pub const ALL: [ResourceKind; 4] = [
        ResourceKind::VirtualService,
        ResourceKind::Target,
        ResourceKind::Route,
        ResourceKind::Rule,
    ];

    /// The kind's name as written in `kind:` (`VirtualService`).
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::VirtualService => "VirtualService",
            ResourceKind::Target => "Target",
            ResourceKind::Route => "Route",
            ResourceKind::Rule => "Rule",
        }
    }

    /// The lower-case plural used in API paths (`virtualservices`).
    pub fn plural(self) -> &'static str {
        match self {
            ResourceKind::VirtualService => "virtualservices",
            ResourceKind::Target => "targets",
            ResourceKind::Route => "routes",
            ResourceKind::Rule => "rules",
        }
    }

    /// The short name, if the kind has one (`vsvc`, `tr`).
    pub fn short_name(self) -> Option<&'static str> {
        match self {
            ResourceKind::VirtualService => Some("vsvc"),
            ResourceKind::Target => Some("tr"),
            _ => None,
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that names no resource kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown resource kind {0:?} (expected VirtualService, Target, Route or Rule)")]
pub struct UnknownKind(pub String);

impl FromStr for ResourceKind {
    type Err = UnknownKind;

    /// Accepts the kind name, its plural and its short name, in any case (`VirtualService`, `virtualservices`,
    /// `vsvc`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let l = s.to_ascii_lowercase();
        ResourceKind::ALL
            .into_iter()
            .find(|k| l == k.name().to_ascii_lowercase() || l == k.plural() || k.short_name() == Some(l.as_str()))
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// `metadata`: the resource's name, namespace and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// A reference to a resource by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceRef {
    pub kind: ResourceKind,
    pub namespace: String,
    pub name: String,
}

impl ResourceRef {
    pub fn new(kind: ResourceKind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// `namespace/name`: the name the translation gives the resource's flat objects.
    pub fn fqn(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Why a name cannot be a resource name or namespace, or `None` if it can.
fn name_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("must not be empty")
    } else if s.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control()) {
        Some("must not contain '/' or white space")
    } else {
        None
    }
}

/// Parses a reference to a `kind` resource: `name` (in `default_ns`), `namespace/name`,
/// `/l7mp.io/v1/<Kind>/<namespace>/<name>` or `/apis/l7mp.io/v1/namespaces/<namespace>/<plural>/<name>`.
pub fn parse_ref(kind: ResourceKind, value: &str, default_ns: &str) -> Result<ResourceRef, String> {
    let parts: Vec<&str> = value.split('/').collect();
    let (ns, name) = match parts.as_slice() {
        [name] => (default_ns, *name),
        [ns, name] => (*ns, *name),
        ["", group, version, k, ns, name] if format!("{group}/{version}") == API_VERSION => {
            if *k != kind.name() {
                return Err(format!("{value:?} refers to a {k}, expected a {kind}"));
            }
            (*ns, *name)
        }
        ["", "apis", group, version, "namespaces", ns, plural, name] if format!("{group}/{version}") == API_VERSION => {
            if *plural != kind.plural() {
                return Err(format!("{value:?} refers to {plural}, expected {}", kind.plural()));
            }
            (*ns, *name)
        }
        _ => {
            return Err(format!(
                "cannot parse {value:?} as a {kind} reference: expected NAME, NAMESPACE/NAME, \
                 /{API_VERSION}/{kind}/NAMESPACE/NAME or /apis/{API_VERSION}/namespaces/NAMESPACE/{}/NAME",
                kind.plural()
            ));
        }
    };
    for (what, s) in [("namespace", ns), ("name", name)] {
        if let Some(p) = name_problem(s) {
            return Err(format!("in reference {value:?}: the {what} {p}"));
        }
    }
    Ok(ResourceRef::new(kind, ns, name))
}

/// A label selector: every label in `match_labels` must be present with that value. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
}

/// Whether `labels` satisfy the selector.
pub fn selector_matches(sel: &Selector, labels: &BTreeMap<String, String>) -> bool {
    sel.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `status`: derived by the control plane (what the Management API returns; a status sent with an object is read but
/// not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// `<field path>: <why>` when rejected.
    pub reason: Option<String>,
    /// How many agents the resource was placed on, and how many of those acknowledged / refused the configuration
    /// carrying it (a list of node ids is read as its length).
    pub placed: u64,
    pub acked: u64,
    pub nacked: u64,
    pub observed_revision: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Accepted,
    Rejected,
    /// Not computed yet.
    Pending,
}

/// One resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub kind: ResourceKind,
    pub meta: ObjectMeta,
    pub spec: ResourceSpec,
    pub status: Option<Status>,
    /// The object as written.
    pub raw: Value,
}

impl Resource {
    /// The reference that names this resource.
    pub fn reference(&self) -> ResourceRef {
        ResourceRef::new(self.kind, &self.meta.namespace, &self.meta.name)
    }
}

/// The typed `spec` of each kind.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceSpec {
    VirtualService(VirtualServiceSpec),
    Target(TargetSpec),
    Route(RouteSpec),
    Rule(RuleSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub struct VirtualServiceSpec {
    /// The agents that get the listener.
    pub selector: Selector,
    pub listener: VirtualListener,
    /// `spec.grpc`: the VirtualService is also a proxyless gRPC service, served to `xds:///NAME` clients as
    /// standard Envoy resources (see [`grpc`] and docs/grpc.md).
    pub grpc: Option<GrpcSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VirtualListener {
    /// Kept for compatibility; the agent's listener is named after the VirtualService.
    pub name: Option<String>,
    /// The agents' listener; `None` only for a gRPC service that no agent listens for (`spec.grpc` without
    /// `listener.spec`).
    pub spec: Option<ListenerSpec>,
    pub rules: RulesSource,
}

/// `spec.grpc` of a VirtualService (`grpc: true` is `grpc: {}`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrpcSpec {
    /// The name gRPC clients dial (`xds:///NAME`), i.e. the Envoy Listener's name; `None`: `metadata.name`.
    pub name: Option<String>,
    /// The longest a call may take (the routes' `max_stream_duration`); `None`: no limit beyond the client's.
    pub timeout: Option<std::time::Duration>,
}

impl GrpcSpec {
    /// The name clients dial: `name`, or the VirtualService's `metadata.name`.
    pub fn service_name<'a>(&'a self, vs: &'a ResourceRef) -> &'a str {
        self.name.as_deref().unwrap_or(&vs.name)
    }
}

/// Where a VirtualService's rules come from.
#[derive(Debug, Clone, PartialEq)]
pub enum RulesSource {
    /// Written in the VirtualService (`rules`).
    Inline(Vec<RuleBody>),
    /// Another VirtualService's rules (`rulesRef`).
    Ref(ResourceRef),
}

/// A rule's `match` and `action`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleBody {
    /// The JSON predicate as written; `None` matches every session.
    pub matcher: Option<Value>,
    pub action: RuleAction,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleAction {
    pub route: Option<RouteChoice>,
    pub rewrite: Vec<Rewrite>,
    /// Continue the lookup in this VirtualService's rules.
    pub apply: Option<ResourceRef>,
    /// Refuse the session with this reason (excludes the others).
    pub deny: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteChoice {
    Inline(Box<RouteSpec>),
    Ref(ResourceRef),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub destination: DestinationSpec,
    pub ingress: Vec<ResourceRef>,
    pub egress: Vec<ResourceRef>,
    pub retry: Retry,
}

/// Where a route sends its sessions: one Target, or a weighted split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationSpec {
    Target(ResourceRef),
    Split(Vec<(ResourceRef, u32)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    /// The agents that get the cluster (besides those that route to it).
    pub selector: Selector,
    pub backend: TargetBackend,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TargetBackend {
    Cluster(TargetCluster),
    /// The cluster spec is the VirtualService's listener spec, the endpoints are the agents it selects.
    LinkedVirtualService(ResourceRef),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetCluster {
    pub spec: ClusterSpec,
    pub loadbalancer: LoadBalancer,
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSpec {
    Static {
        name: Option<String>,
        address: String,
        weight: u32,
    },
    /// The addresses of the agents the selector matches.
    Selector(Selector),
    /// The IPs of the ready Pods the selector picks in `namespace` (discovered in Kubernetes), each with `weight`.
    Pods {
        selector: Selector,
        namespace: String,
        weight: u32,
    },
    /// The ready endpoints of Service `namespace/name` (its EndpointSlices) that serve the cluster's port.
    Service {
        name: String,
        namespace: String,
        weight: u32,
    },
}

impl EndpointSpec {
    /// Whether the endpoint stands for discovered workloads (`pods` or `service`).
    pub fn is_workload(&self) -> bool {
        matches!(self, EndpointSpec::Pods { .. } | EndpointSpec::Service { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub virtual_service: ResourceRef,
    /// Index in the VirtualService's rules; `None`: at the end.
    pub position: Option<usize>,
    pub body: RuleBody,
}

/// A connected agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub node_id: String,
    pub labels: BTreeMap<String, String>,
    pub address: Option<IpAddr>,
}

// ---------------------------------------------------------------------------------------------------------------
// Parsing.

/// Collects errors while reading one object.
struct Reader {
    errors: Vec<FieldError>,
}

type Obj = Map<String, Value>;

impl Reader {
    fn err(&mut self, path: &FieldPath, reason: impl Into<String>) {
        self.errors.push(FieldError::new(path, reason));
    }

    fn object<'a>(&mut self, v: &'a Value, path: &FieldPath, allowed: &[&str]) -> Option<&'a Obj> {
        let Value::Object(o) = v else {
            self.err(path, format!("expected an object, got {}", describe(v)));
            return None;
        };
        for k in o.keys() {
            if !allowed.contains(&k.as_str()) {
                self.err(
                    &path.key(k),
                    format!("unknown field (expected one of: {})", allowed.join(", ")),
                );
            }
        }
        Some(o)
    }

    fn string(&mut self, v: &Value, path: &FieldPath) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.err(path, format!("expected a string, got {}", describe(other)));
                None
            }
        }
    }

    fn name(&mut self, v: &Value, path: &FieldPath) -> Option<String> {
        let s = self.string(v, path)?;
        match name_problem(&s) {
            Some(p) => {
                self.err(path, format!("{s:?} {p}"));
                None
            }
            None => Some(s),
        }
    }

    fn reference(&mut self, kind: ResourceKind, v: &Value, path: &FieldPath, ns: &str) -> Option<ResourceRef> {
        let s = self.string(v, path)?;
        parse_ref(kind, &s, ns).map_err(|e| self.err(path, e)).ok()
    }

    fn string_map(&mut self, v: &Value, path: &FieldPath) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Value::Object(o) = v else {
            self.err(path, format!("expected a map of strings, got {}", describe(v)));
            return out;
        };
        for (k, v) in o {
            match v {
                Value::String(s) => {
                    out.insert(k.clone(), s.clone());
                }
                other => self.err(&path.key(k), format!("expected a string, got {}", describe(other))),
            }
        }
        out
    }

    fn selector(&mut self, v: Option<&Value>, path: &FieldPath) -> Selector {
        let mut sel = Selector::default();
        let Some(v) = v else { return sel };
        if v.is_null() {
            return sel;
        }
        let Value::Object(o) = v else {
            self.err(path, format!("expected a label selector, got {}", describe(v)));
            return sel;
        };
        for (k, val) in o {
            match k.as_str() {
                "matchLabels" => sel.match_labels.extend(self.string_map(val, &path.key(k))),
                "matchExpressions" | "matchFields" | "matchNamespace" | "matchService" => {
                    self.err(&path.key(k), "not supported: use matchLabels or a plain map of labels")
                }
                _ => match val {
                    Value::String(s) => {
                        sel.match_labels.insert(k.clone(), s.clone());
                    }
                    other => self.err(
                        &path.key(k),
                        format!("expected a label value (string), got {}", describe(other)),
                    ),
                },
            }
        }
        sel
    }
}

/// A protocol spec in either form, as the flat loader reads it, and the key of the keyed form.
fn flat_spec(r: &mut Reader, v: &Value, path: &FieldPath) -> Option<(Value, Option<String>)> {
    let Value::Object(o) = v else {
        r.err(path, format!("expected a protocol spec, got {}", describe(v)));
        return None;
    };
    if o.contains_key("protocol") {
        return Some((v.clone(), None));
    }
    match o.iter().next() {
        Some((proto, inner)) if o.len() == 1 => {
            let mut flat = match inner {
                Value::Object(m) => m.clone(),
                Value::Null => Map::new(),
                other => {
                    r.err(&path.key(proto), format!("expected an object, got {}", describe(other)));
                    return None;
                }
            };
            if flat.contains_key("protocol") {
                r.err(&path.key(proto).key("protocol"), "unknown field in the keyed form");
                return None;
            }
            // The operator's UNIX socket endpoints used `filename`; keep it as it is (the flat spec reads it too).
            flat.insert("protocol".into(), json!(proto));
            Some((Value::Object(flat), Some(proto.clone())))
        }
        _ => {
            r.err(
                path,
                "expected `protocol: NAME` or exactly one protocol key (`UDP: {port: 9001}`)",
            );
            None
        }
    }
}

/// Re-roots the loader's errors from a one-object document: strips `prefix_len` leading segments and puts the
/// rest under `base`; inside `spec` of a keyed spec the protocol key is put back.
fn reroot(err: ConfigError, prefix_len: usize, base: &FieldPath, keyed: Option<&str>, out: &mut Vec<FieldError>) {
    match err {
        ConfigError::Syntax { message, .. } => out.push(FieldError::new(base, message)),
        ConfigError::Invalid(list) => {
            for fe in list {
                let segs = fe.path.segments();
                let rest = segs.get(prefix_len..).unwrap_or(&[]);
                let mut new: Vec<Segment> = base.segments().to_vec();
                let mut rest = rest.iter().peekable();
                while let Some(s) = rest.next() {
                    new.push(s.clone());
                    let first = new.len() == base.segments().len() + 1;
                    if let (true, Segment::Key(k), Some(p)) = (first, s, keyed)
                        && k == "spec"
                        && rest.peek().is_some()
                    {
                        new.push(Segment::Key(p.to_owned()));
                        // The protocol is the key itself in the keyed form.
                        if rest
                            .peek()
                            .is_some_and(|n| matches!(n, Segment::Key(k) if k == "protocol"))
                        {
                            rest.next();
                        }
                    }
                }
                out.push(FieldError {
                    path: FieldPath::from_segments(new),
                    reason: fe.reason,
                });
            }
        }
    }
}

fn check_listener_spec(r: &mut Reader, v: &Value, path: &FieldPath) -> Option<ListenerSpec> {
    let (flat, keyed) = flat_spec(r, v, path)?;
    let doc = json!({"listeners": [{"name": "l", "spec": flat, "rules": []}]});
    match config_from_value(&doc) {
        Ok(cfg) => cfg.listeners.into_iter().next().map(|l| l.spec),
        Err(e) => {
            let parent = parent_of(path);
            reroot(e, 2, &parent, keyed.as_deref(), &mut r.errors);
            None
        }
    }
}

/// `path` without its last segment (the loader's paths start at the object holding `spec`).
fn parent_of(path: &FieldPath) -> FieldPath {
    let s = path.segments();
    FieldPath::from_segments(s[..s.len().saturating_sub(1)].to_vec())
}

/// Whether a flat cluster spec is a network protocol (one with endpoints).
fn takes_endpoints(spec: &Value) -> bool {
    let flat = json!({"clusters": [{"name": "c", "spec": spec}]});
    config_from_value(&flat)
        .ok()
        .and_then(|c| c.clusters.into_iter().next())
        .is_some_and(|c| c.spec.takes_endpoints())
}

/// Checks a cluster's spec, load balancer and endpoints with the loader (a selector endpoint stands in as a
/// placeholder address, so the loader's indices stay the written ones).
fn check_cluster(r: &mut Reader, co: &Obj, base: &FieldPath, ns: &str) -> Option<TargetCluster> {
    let Some(spec) = co.get("spec") else {
        r.err(&base.key("spec"), "missing required field");
        return None;
    };
    let (flat, keyed) = flat_spec(r, spec, &base.key("spec"))?;
    let mut c = json!({"name": "c", "spec": flat});
    let items: Vec<Value> = match co.get("endpoints") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => {
            r.err(
                &base.key("endpoints"),
                format!("expected a list of endpoints, got {}", describe(other)),
            );
            return None;
        }
    };
    let mut selectors: BTreeMap<usize, EndpointSpec> = BTreeMap::new();
    let before = r.errors.len();
    let placeholders: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let p = base.key("endpoints").index(i);
            if let Some(sel) = it.get("selector") {
                if it.as_object().is_some_and(|o| o.len() > 1) {
                    r.err(&p, "a selector endpoint has only `selector`");
                }
                selectors.insert(i, EndpointSpec::Selector(r.selector(Some(sel), &p.key("selector"))));
                json!({"spec": {"address": "placeholder"}})
            } else if it.get("pods").is_some() || it.get("service").is_some() {
                if let Some(e) = workload_endpoint(r, it, &p, ns) {
                    selectors.insert(i, e);
                }
                json!({"spec": {"address": "placeholder"}})
            } else {
                it.clone()
            }
        })
        .collect();
    if r.errors.len() > before {
        return None;
    }
    if let Value::Object(m) = &mut c {
        if let Some(lb) = co.get("loadbalancer") {
            m.insert("loadbalancer".into(), lb.clone());
        }
        if !placeholders.is_empty() {
            m.insert("endpoints".into(), Value::Array(placeholders));
        }
    }
    match config_from_value(&json!({"clusters": [c]})) {
        Ok(cfg) => {
            let c = cfg.clusters.into_iter().next()?;
            let endpoints: Vec<EndpointSpec> = c
                .endpoints
                .into_iter()
                .zip(&items)
                .enumerate()
                .map(|(i, (ep, item))| match selectors.remove(&i) {
                    Some(e) => e,
                    None => EndpointSpec::Static {
                        name: item.get("name").and_then(Value::as_str).map(str::to_owned),
                        address: ep.address,
                        weight: ep.weight,
                    },
                })
                .collect();
            if network_port(&c.spec).is_none()
                && let Some(i) = endpoints.iter().position(EndpointSpec::is_workload)
            {
                let key = if items.get(i).is_some_and(|it| it.get("pods").is_some()) {
                    "pods"
                } else {
                    "service"
                };
                r.err(
                    &base.key("endpoints").index(i).key(key),
                    format!(
                        "workload endpoints need a cluster that connects to an IP address and port (UDP, TCP, \
                         WebSocket, HTTP, SCTP), not {}",
                        c.spec.protocol()
                    ),
                );
                return None;
            }
            Some(TargetCluster {
                spec: c.spec,
                loadbalancer: c.loadbalancer,
                endpoints,
            })
        }
        Err(e) => {
            reroot(e, 2, base, keyed.as_deref(), &mut r.errors);
            None
        }
    }
}

/// The port a cluster connects to at each endpoint address, if it connects to IP addresses at all.
pub fn network_port(spec: &ClusterSpec) -> Option<u16> {
    match spec {
        ClusterSpec::Udp { port, .. }
        | ClusterSpec::Tcp { port, .. }
        | ClusterSpec::WebSocket { port, .. }
        | ClusterSpec::Http { port, .. }
        | ClusterSpec::Tls { port, .. }
        | ClusterSpec::Dtls { port, .. }
        | ClusterSpec::Sctp { port, .. } => Some(*port),
        ClusterSpec::JsonSocket { transport, .. } => network_port(transport),
        _ => None,
    }
}

/// A `pods` or `service` endpoint: `{pods: {selector, namespace?}, weight?}` or `{service: {name, namespace?},
/// weight?}`; the namespace defaults to the Target's.
fn workload_endpoint(r: &mut Reader, it: &Value, p: &FieldPath, ns: &str) -> Option<EndpointSpec> {
    let o = r.object(it, p, &["pods", "service", "weight"])?;
    if o.contains_key("pods") && o.contains_key("service") {
        r.err(&p.key("service"), "give `pods` or `service`, not both");
        return None;
    }
    let weight = match o.get("weight") {
        None => Some(1),
        Some(w) => match w.as_u64().and_then(|w| u32::try_from(w).ok()) {
            Some(w) => Some(w),
            None => {
                r.err(
                    &p.key("weight"),
                    format!("expected a non-negative integer, got {}", describe(w)),
                );
                None
            }
        },
    };
    let namespace = |r: &mut Reader, wo: &Obj, wp: &FieldPath| -> Option<String> {
        match wo.get("namespace") {
            None | Some(Value::Null) => Some(ns.to_owned()),
            Some(v) => {
                let s = r.string(v, &wp.key("namespace"))?;
                match dns_label_problem(&s) {
                    Some(why) => {
                        r.err(&wp.key("namespace"), format!("{s:?} {why}"));
                        None
                    }
                    None => Some(s),
                }
            }
        }
    };
    if let Some(pv) = o.get("pods") {
        let pp = p.key("pods");
        let po = r.object(pv, &pp, &["selector", "namespace"])?;
        let sp = pp.key("selector");
        let before = r.errors.len();
        let selector = match po.get("selector") {
            Some(v) => r.selector(Some(v), &sp),
            None => {
                r.err(&sp, "missing required field");
                return None;
            }
        };
        if r.errors.len() == before && selector.match_labels.is_empty() {
            r.err(
                &sp,
                "an empty selector would pick every pod in the namespace: name at least one label",
            );
        }
        for (k, v) in &selector.match_labels {
            if let Some(why) = label_key_problem(k) {
                r.err(&sp.key(k), format!("{k:?} is no valid label key: {why}"));
            } else if let Some(why) = label_value_problem(v) {
                r.err(&sp.key(k), format!("{v:?} is no valid label value: {why}"));
            }
        }
        let namespace = namespace(r, po, &pp);
        return (r.errors.len() == before).then_some(EndpointSpec::Pods {
            selector,
            namespace: namespace?,
            weight: weight?,
        });
    }
    let sp = p.key("service");
    let so = r.object(o.get("service")?, &sp, &["name", "namespace"])?;
    let name = match so.get("name") {
        Some(v) => r.string(v, &sp.key("name")).and_then(|s| match dns_label_problem(&s) {
            Some(why) => {
                r.err(&sp.key("name"), format!("{s:?} {why}"));
                None
            }
            None => Some(s),
        }),
        None => {
            r.err(&sp.key("name"), "missing required field");
            None
        }
    };
    let namespace = namespace(r, so, &sp);
    Some(EndpointSpec::Service {
        name: name?,
        namespace: namespace?,
        weight: weight?,
    })
}

fn check_retry(r: &mut Reader, v: &Value, path: &FieldPath) -> Option<Retry> {
    let doc = json!({"clusters": [{"name": "d", "spec": {"protocol": "Echo"}}],
                     "routes": [{"name": "r", "destination": "d", "retry": v}]});
    match config_from_value(&doc) {
        Ok(cfg) => cfg.routes.into_iter().next().map(|x| x.retry),
        Err(e) => {
            reroot(e, 2, &parent_of(path), None, &mut r.errors);
            None
        }
    }
}

/// Checks `match` and `rewrite` with the loader; `base` is the rule body's path.
fn check_match_rewrite(
    r: &mut Reader,
    m: Option<&Value>,
    rw: Option<&Value>,
    base: &FieldPath,
) -> Option<Vec<Rewrite>> {
    // `apply` of an empty RuleList stands in for the route, which is checked on its own.
    let mut rule = json!({"name": "r", "action": {"apply": "l"}});
    if let Value::Object(o) = &mut rule {
        if let Some(m) = m {
            o.insert("match".into(), m.clone());
        }
        if let Some(rw) = rw {
            // The operator's `valueStr` is a string `value`.
            let rw = match rw {
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .map(|it| match it {
                            Value::Object(io) if io.contains_key("valueStr") && !io.contains_key("value") => {
                                let mut io = io.clone();
                                if let Some(v) = io.remove("valueStr") {
                                    io.insert("value".into(), v);
                                }
                                Value::Object(io)
                            }
                            other => other.clone(),
                        })
                        .collect(),
                ),
                other => other.clone(),
            };
            o.insert("action".into(), json!({"rewrite": rw, "apply": "l"}));
        }
    }
    match config_from_value(&json!({"rulelists": [{"name": "l", "rules": []}], "rules": [rule]})) {
        Ok(cfg) => cfg.rules.into_iter().next().map(|x| x.action.rewrite),
        Err(e) => {
            reroot(e, 2, base, None, &mut r.errors);
            None
        }
    }
}

fn route_spec(r: &mut Reader, v: &Value, path: &FieldPath, ns: &str) -> Option<RouteSpec> {
    let o = r.object(
        v,
        path,
        &["destination", "destinationRef", "ingress", "egress", "retry"],
    )?;
    let destination = match (o.get("destination"), o.get("destinationRef")) {
        (Some(_), Some(_)) => {
            r.err(
                &path.key("destinationRef"),
                "give `destination` or `destinationRef`, not both",
            );
            None
        }
        (None, None) => {
            r.err(&path.key("destination"), "missing required field");
            None
        }
        (None, Some(d)) => r
            .reference(ResourceKind::Target, d, &path.key("destinationRef"), ns)
            .map(DestinationSpec::Target),
        (Some(Value::Array(items)), None) => {
            let p = path.key("destination");
            if items.is_empty() {
                r.err(&p, "a split needs at least one target");
            }
            let mut split = Vec::new();
            for (i, it) in items.iter().enumerate() {
                let ip = p.index(i);
                let Some(io) = r.object(it, &ip, &["target", "destinationRef", "weight"]) else {
                    continue;
                };
                let key = if io.contains_key("target") {
                    "target"
                } else {
                    "destinationRef"
                };
                let t = match io.get(key) {
                    Some(t) => r.reference(ResourceKind::Target, t, &ip.key(key), ns),
                    None => {
                        r.err(&ip.key("target"), "missing required field");
                        None
                    }
                };
                let w = match io.get("weight") {
                    None => Some(1),
                    Some(w) => match w.as_u64().and_then(|w| u32::try_from(w).ok()) {
                        Some(w) => Some(w),
                        None => {
                            r.err(
                                &ip.key("weight"),
                                format!("expected a non-negative integer, got {}", describe(w)),
                            );
                            None
                        }
                    },
                };
                if let (Some(t), Some(w)) = (t, w) {
                    split.push((t, w));
                }
            }
            (split.len() == items.len() && !items.is_empty()).then_some(DestinationSpec::Split(split))
        }
        (Some(d), None) => r
            .reference(ResourceKind::Target, d, &path.key("destination"), ns)
            .map(DestinationSpec::Target),
    };
    let mut chain = |key: &str| -> Option<Vec<ResourceRef>> {
        match o.get(key) {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(items)) => {
                let n = items.len();
                let refs: Vec<_> = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, it)| r.reference(ResourceKind::Target, it, &path.key(key).index(i), ns))
                    .collect();
                (refs.len() == n).then_some(refs)
            }
            Some(other) => {
                r.err(
                    &path.key(key),
                    format!("expected a list of Target references, got {}", describe(other)),
                );
                None
            }
        }
    };
    let ingress = chain("ingress");
    let egress = chain("egress");
    let retry = match o.get("retry") {
        None => Some(Retry::default()),
        Some(v) => check_retry(r, v, &path.key("retry")),
    };
    Some(RouteSpec {
        destination: destination?,
        ingress: ingress?,
        egress: egress?,
        retry: retry?,
    })
}

fn rule_body(r: &mut Reader, o: &Obj, path: &FieldPath, ns: &str) -> Option<RuleBody> {
    let matcher = o.get("match").cloned();
    let Some(action_v) = o.get("action") else {
        r.err(&path.key("action"), "missing required field");
        return None;
    };
    let ap = path.key("action");
    let a = r.object(action_v, &ap, &["route", "routeRef", "rewrite", "apply", "deny"])?;
    if let Some(d) = a.get("deny") {
        let rule = path.to_string();
        let reason = crate::model::deny_reason(d, &rule)
            .map_err(|e| r.err(&ap.key("deny"), e))
            .ok();
        for other in ["route", "routeRef", "rewrite", "apply"] {
            if a.get(other).is_some() {
                r.err(
                    &ap.key(other),
                    "a rule that denies has no route, routeRef, rewrite or apply",
                );
                return None;
            }
        }
        return Some(RuleBody {
            matcher,
            action: RuleAction {
                deny: Some(reason?),
                ..RuleAction::default()
            },
        });
    }
    let rewrite = check_match_rewrite(r, matcher.as_ref(), a.get("rewrite"), path);
    let route = match (a.get("route"), a.get("routeRef")) {
        (Some(_), Some(_)) => {
            r.err(&ap.key("routeRef"), "give `route` or `routeRef`, not both");
            return None;
        }
        (Some(Value::String(s)), None) => Some(
            parse_ref(ResourceKind::Route, s, ns)
                .map_err(|e| r.err(&ap.key("route"), e))
                .ok()
                .map(RouteChoice::Ref),
        ),
        (Some(v), None) => Some(route_spec(r, v, &ap.key("route"), ns).map(|x| RouteChoice::Inline(Box::new(x)))),
        (None, Some(v)) => Some(
            r.reference(ResourceKind::Route, v, &ap.key("routeRef"), ns)
                .map(RouteChoice::Ref),
        ),
        (None, None) => None,
    };
    let apply = a
        .get("apply")
        .map(|v| r.reference(ResourceKind::VirtualService, v, &ap.key("apply"), ns));
    if route.is_none() && apply.is_none() {
        r.err(&ap, "an action needs a `route`, `routeRef`, `apply` or `deny`");
    }
    let route = match route {
        Some(x) => Some(x?),
        None => None,
    };
    let apply = match apply {
        Some(x) => Some(x?),
        None => None,
    };
    Some(RuleBody {
        matcher,
        action: RuleAction {
            route,
            rewrite: rewrite?,
            apply,
            deny: None,
        },
    })
}

fn parse_vsvc(r: &mut Reader, o: &Obj, sp: &FieldPath, ns: &str) -> Option<VirtualServiceSpec> {
    let selector = r.selector(o.get("selector"), &sp.key("selector"));
    let lp = sp.key("listener");
    let Some(lv) = o.get("listener") else {
        r.err(&lp, "missing required field");
        return None;
    };
    let lo = r.object(lv, &lp, &["name", "spec", "rules", "rulesRef"])?;
    let name = match lo.get("name") {
        Some(v) => Some(r.name(v, &lp.key("name"))?),
        None => None,
    };
    let grpc = match o.get("grpc") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Some(None),
        Some(v) => grpc_spec(r, v, &sp.key("grpc")).map(Some),
    };
    let spec = match lo.get("spec") {
        Some(v) => check_listener_spec(r, v, &lp.key("spec")).map(Some),
        // A gRPC service needs no agent listener.
        None if o.get("grpc").is_some_and(|g| g != &Value::Bool(false) && !g.is_null()) => Some(None),
        None => {
            r.err(
                &lp.key("spec"),
                "missing required field (only a gRPC service, `spec.grpc`, may leave it out)",
            );
            None
        }
    };
    let rules = match (lo.get("rules"), lo.get("rulesRef")) {
        (Some(_), Some(_)) => {
            r.err(&lp.key("rulesRef"), "give `rules` or `rulesRef`, not both");
            None
        }
        (None, Some(v)) | (Some(v @ Value::String(_)), None) => {
            let key = if lo.contains_key("rulesRef") {
                "rulesRef"
            } else {
                "rules"
            };
            r.reference(ResourceKind::VirtualService, v, &lp.key(key), ns)
                .map(RulesSource::Ref)
        }
        (None, None) => Some(RulesSource::Inline(Vec::new())),
        (Some(Value::Array(items)), None) => {
            let mut out = Vec::new();
            for (i, it) in items.iter().enumerate() {
                let p = lp.key("rules").index(i);
                if let Some(ro) = r.object(it, &p, &["match", "action"])
                    && let Some(b) = rule_body(r, ro, &p, ns)
                {
                    out.push(b);
                }
            }
            (out.len() == items.len()).then_some(RulesSource::Inline(out))
        }
        (Some(other), None) => {
            r.err(
                &lp.key("rules"),
                format!("expected a list of rules, got {}", describe(other)),
            );
            None
        }
    };
    Some(VirtualServiceSpec {
        selector,
        listener: VirtualListener {
            name,
            spec: spec?,
            rules: rules?,
        },
        grpc: grpc?,
    })
}

/// Whether `s` can be the name in `xds:///NAME`: letters, digits and `.-_:`, not empty.
fn grpc_name_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("must not be empty")
    } else if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        Some("may only contain letters, digits and . - _ : (it is the NAME of xds:///NAME)")
    } else {
        None
    }
}

/// `spec.grpc`: `true`, or `{name?, timeout?}` (timeout in milliseconds, above 0).
fn grpc_spec(r: &mut Reader, v: &Value, path: &FieldPath) -> Option<GrpcSpec> {
    if v == &Value::Bool(true) {
        return Some(GrpcSpec::default());
    }
    if !v.is_object() {
        r.err(
            path,
            format!("expected true or an object {{name, timeout}}, got {}", describe(v)),
        );
        return None;
    }
    let o = r.object(v, path, &["name", "timeout"])?;
    let mut out = GrpcSpec::default();
    let before = r.errors.len();
    if let Some(n) = o.get("name")
        && let Some(s) = r.string(n, &path.key("name"))
    {
        match grpc_name_problem(&s) {
            Some(p) => r.err(&path.key("name"), format!("{s:?} {p}")),
            None => out.name = Some(s),
        }
    }
    match o.get("timeout") {
        None | Some(Value::Null) => {}
        Some(t) => match t.as_u64().filter(|ms| *ms > 0) {
            Some(ms) => out.timeout = Some(std::time::Duration::from_millis(ms)),
            None => r.err(
                &path.key("timeout"),
                format!("expected a number of milliseconds above 0, got {}", describe(t)),
            ),
        },
    }
    (r.errors.len() == before).then_some(out)
}

fn parse_target(r: &mut Reader, o: &Obj, sp: &FieldPath, ns: &str) -> Option<TargetSpec> {
    let selector = r.selector(o.get("selector"), &sp.key("selector"));
    let backend = match (o.get("cluster"), o.get("linkedVirtualService")) {
        (Some(_), Some(_)) | (None, None) => {
            r.err(sp, "exactly one of `cluster` and `linkedVirtualService` is required");
            None
        }
        (None, Some(v)) => r
            .reference(ResourceKind::VirtualService, v, &sp.key("linkedVirtualService"), ns)
            .map(TargetBackend::LinkedVirtualService),
        (Some(c), None) => {
            let cp = sp.key("cluster");
            let co = r.object(c, &cp, &["spec", "loadbalancer", "endpoints"])?;
            check_cluster(r, co, &cp, ns).map(TargetBackend::Cluster)
        }
    };
    Some(TargetSpec {
        selector,
        backend: backend?,
    })
}

fn parse_route_resource(r: &mut Reader, v: &Value, sp: &FieldPath, ns: &str) -> Option<RouteSpec> {
    route_spec(r, v, sp, ns)
}

fn parse_rule_resource(r: &mut Reader, o: &Obj, sp: &FieldPath, ns: &str) -> Option<RuleSpec> {
    let vs = match o.get("virtualService") {
        Some(v) => r.reference(ResourceKind::VirtualService, v, &sp.key("virtualService"), ns),
        None => {
            r.err(&sp.key("virtualService"), "missing required field");
            None
        }
    };
    let position = match o.get("position") {
        None | Some(Value::Null) => Some(None),
        Some(v) => match v.as_u64().and_then(|x| usize::try_from(x).ok()) {
            Some(x) => Some(Some(x)),
            None => {
                r.err(
                    &sp.key("position"),
                    format!("expected a non-negative integer, got {}", describe(v)),
                );
                None
            }
        },
    };
    let body = rule_body(r, o, sp, ns);
    Some(RuleSpec {
        virtual_service: vs?,
        position: position?,
        body: body?,
    })
}

fn parse_status(r: &mut Reader, v: &Value, path: &FieldPath) -> Option<Status> {
    let o = r.object(v, path, &["state", "reason", "agents", "observedRevision"])?;
    let state = match o.get("state").and_then(Value::as_str) {
        Some("Accepted") => Some(State::Accepted),
        Some("Rejected") => Some(State::Rejected),
        Some("Pending") => Some(State::Pending),
        _ => {
            r.err(&path.key("state"), "expected Accepted, Rejected or Pending");
            None
        }
    };
    let reason = match o.get("reason") {
        None | Some(Value::Null) => None,
        Some(v) => r.string(v, &path.key("reason")),
    };
    let mut counts = [0u64; 3];
    if let Some(a) = o.get("agents")
        && let Some(ao) = r.object(a, &path.key("agents"), &["placed", "acked", "nacked"])
    {
        for (key, out) in ["placed", "acked", "nacked"].into_iter().zip(counts.iter_mut()) {
            match ao.get(key) {
                None => {}
                Some(Value::Array(items)) => *out = items.len() as u64,
                Some(v) if v.as_u64().is_some() => *out = v.as_u64().unwrap_or(0),
                Some(other) => r.err(
                    &path.key("agents").key(key),
                    format!("expected a count (or a list of node ids), got {}", describe(other)),
                ),
            }
        }
    }
    let observed_revision = match o.get("observedRevision") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(x) => Some(x),
            None => {
                r.err(
                    &path.key("observedRevision"),
                    format!("expected a non-negative integer, got {}", describe(v)),
                );
                None
            }
        },
    };
    let [placed, acked, nacked] = counts;
    Some(Status {
        state: state?,
        reason,
        placed,
        acked,
        nacked,
        observed_revision,
    })
}

/// Reads one resource object. Errors name the field path inside the object (`spec.listener.spec.port: ...`).
pub fn parse_resource(v: &Value) -> Result<Resource, ConfigError> {
    let mut r = Reader { errors: Vec::new() };
    let res = read_resource(&mut r, v);
    match res {
        Some(res) if r.errors.is_empty() => Ok(res),
        _ => {
            if r.errors.is_empty() {
                r.err(&FieldPath::root(), "invalid resource");
            }
            Err(ConfigError::Invalid(r.errors))
        }
    }
}

fn read_resource(r: &mut Reader, v: &Value) -> Option<Resource> {
    let root = FieldPath::root();
    let o = r.object(v, &root, &["apiVersion", "kind", "metadata", "spec", "status"])?;
    match o.get("apiVersion") {
        Some(Value::String(s)) if s == API_VERSION => {}
        Some(other) => r.err(
            &root.key("apiVersion"),
            format!("expected {API_VERSION:?}, got {}", describe(other)),
        ),
        None => r.err(&root.key("apiVersion"), "missing required field"),
    }
    let kind = match o.get("kind") {
        Some(Value::String(s)) => match ResourceKind::ALL.into_iter().find(|k| k.name() == s) {
            Some(k) => Some(k),
            None => {
                r.err(&root.key("kind"), UnknownKind(s.clone()).to_string());
                None
            }
        },
        Some(other) => {
            r.err(&root.key("kind"), format!("expected a string, got {}", describe(other)));
            None
        }
        None => {
            r.err(&root.key("kind"), "missing required field");
            None
        }
    };
    let mp = root.key("metadata");
    let meta = match o.get("metadata") {
        None => {
            r.err(&mp, "missing required field");
            None
        }
        Some(m) => r.object(m, &mp, &["name", "namespace", "labels"]).and_then(|mo| {
            let name = match mo.get("name") {
                Some(n) => r.name(n, &mp.key("name")),
                None => {
                    r.err(&mp.key("name"), "missing required field");
                    None
                }
            };
            let namespace = match mo.get("namespace") {
                Some(n) => r.name(n, &mp.key("namespace")),
                None => Some(DEFAULT_NAMESPACE.to_owned()),
            };
            let labels = match mo.get("labels") {
                Some(l) => r.string_map(l, &mp.key("labels")),
                None => BTreeMap::new(),
            };
            Some(ObjectMeta {
                name: name?,
                namespace: namespace?,
                labels,
            })
        }),
    };
    let sp = root.key("spec");
    let ns = meta
        .as_ref()
        .map_or(DEFAULT_NAMESPACE, |m| m.namespace.as_str())
        .to_owned();
    let spec = match (kind, o.get("spec")) {
        (_, None) => {
            r.err(&sp, "missing required field");
            None
        }
        (None, Some(_)) => None,
        (Some(k), Some(s)) => match k {
            ResourceKind::VirtualService => r
                .object(s, &sp, &["selector", "listener", "grpc", "updateOwners"])
                .and_then(|so| parse_vsvc(r, so, &sp, &ns))
                .map(ResourceSpec::VirtualService),
            ResourceKind::Target => r
                .object(s, &sp, &["selector", "cluster", "linkedVirtualService", "updateOwners"])
                .and_then(|so| parse_target(r, so, &sp, &ns))
                .map(ResourceSpec::Target),
            ResourceKind::Route => parse_route_resource(r, s, &sp, &ns).map(ResourceSpec::Route),
            ResourceKind::Rule => r
                .object(s, &sp, &["virtualService", "position", "match", "action"])
                .and_then(|so| parse_rule_resource(r, so, &sp, &ns))
                .map(ResourceSpec::Rule),
        },
    };
    let status = match o.get("status") {
        None | Some(Value::Null) => None,
        Some(s) => Some(parse_status(r, s, &root.key("status"))?),
    };
    Some(Resource {
        kind: kind?,
        meta: meta?,
        spec: spec?,
        status,
        raw: v.clone(),
    })
}

/// Reads resources from multi-document YAML (`---` separated; empty documents are skipped) or JSON (an object or
/// an array of objects). A document that is a list holds several resources. Errors name the document
/// (`[2] spec.selector: ...`, counting documents, or array items, from 0).
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ConfigError> {
    let trimmed = text.trim_start();
    let docs: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => items,
            Ok(v) => vec![v],
            Err(e) => {
                return Err(ConfigError::Syntax {
                    format: "JSON",
                    message: e.to_string(),
                });
            }
        }
    } else {
        let mut out = Vec::new();
        for d in serde_yaml_ng::Deserializer::from_str(text) {
            use serde::Deserialize;
            let v = Value::deserialize(d).map_err(|e| ConfigError::Syntax {
                format: "YAML",
                message: e.to_string(),
            })?;
            match v {
                Value::Null => {}
                Value::Array(items) => out.extend(items),
                v => out.push(v),
            }
        }
        out
    };
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        match parse_resource(d) {
            Ok(r) => out.push(r),
            Err(e) => {
                let mut tmp = Vec::new();
                reroot(e, 0, &FieldPath::root().index(i), None, &mut tmp);
                errors.extend(tmp);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Canonical JSON.

fn ref_value(r: &ResourceRef) -> Value {
    json!(r.fqn())
}

fn selector_value(s: &Selector) -> Value {
    json!({"matchLabels": s.match_labels})
}

fn route_value(r: &RouteSpec) -> Value {
    let destination = match &r.destination {
        DestinationSpec::Target(t) => ref_value(t),
        DestinationSpec::Split(s) => {
            Value::Array(s.iter().map(|(t, w)| json!({"target": t.fqn(), "weight": w})).collect())
        }
    };
    json!({
        "destination": destination,
        "ingress": r.ingress.iter().map(ref_value).collect::<Vec<_>>(),
        "egress": r.egress.iter().map(ref_value).collect::<Vec<_>>(),
        "retry": dump::retry(&r.retry),
    })
}

fn body_into(b: &RuleBody, o: &mut Map<String, Value>) {
    if let Some(m) = &b.matcher {
        o.insert("match".into(), m.clone());
    }
    let mut a = Map::new();
    match &b.action.route {
        Some(RouteChoice::Inline(r)) => {
            a.insert("route".into(), route_value(r));
        }
        Some(RouteChoice::Ref(r)) => {
            a.insert("routeRef".into(), ref_value(r));
        }
        None => {}
    }
    if !b.action.rewrite.is_empty() {
        a.insert("rewrite".into(), rewrites_json(&b.action.rewrite));
    }
    if let Some(ap) = &b.action.apply {
        a.insert("apply".into(), ref_value(ap));
    }
    if let Some(reason) = &b.action.deny {
        a.insert("deny".into(), json!(reason));
    }
    o.insert("action".into(), Value::Object(a));
}

/// The resource in canonical form: flat protocol specs (`protocol: UDP`), references as `namespace/name`,
/// selectors as `matchLabels`, every default written out. [`parse_resource`] reads it back to an equal resource
/// (except `raw`).
pub fn to_value(r: &Resource) -> Value {
    let spec = match &r.spec {
        ResourceSpec::VirtualService(v) => {
            let mut l = Map::new();
            if let Some(n) = &v.listener.name {
                l.insert("name".into(), json!(n));
            }
            if let Some(spec) = &v.listener.spec {
                l.insert("spec".into(), dump::listener_spec(spec));
            }
            match &v.listener.rules {
                RulesSource::Inline(rules) => {
                    let rules: Vec<Value> = rules
                        .iter()
                        .map(|b| {
                            let mut o = Map::new();
                            body_into(b, &mut o);
                            Value::Object(o)
                        })
                        .collect();
                    l.insert("rules".into(), Value::Array(rules));
                }
                RulesSource::Ref(x) => {
                    l.insert("rulesRef".into(), ref_value(x));
                }
            }
            let mut o = json!({"selector": selector_value(&v.selector), "listener": l});
            if let Some(g) = &v.grpc {
                let mut gm = Map::new();
                if let Some(n) = &g.name {
                    gm.insert("name".into(), json!(n));
                }
                if let Some(t) = g.timeout {
                    gm.insert(
                        "timeout".into(),
                        json!(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                    );
                }
                o["grpc"] = Value::Object(gm);
            }
            o
        }
        ResourceSpec::Target(t) => {
            let mut o = Map::new();
            o.insert("selector".into(), selector_value(&t.selector));
            match &t.backend {
                TargetBackend::Cluster(c) => {
                    let eps: Vec<Value> = c
                        .endpoints
                        .iter()
                        .map(|e| match e {
                            EndpointSpec::Static { name, address, weight } => {
                                let mut m = Map::new();
                                if let Some(n) = name {
                                    m.insert("name".into(), json!(n));
                                }
                                m.insert("spec".into(), json!({"address": address}));
                                m.insert("weight".into(), json!(weight));
                                Value::Object(m)
                            }
                            EndpointSpec::Selector(s) => json!({"selector": selector_value(s)}),
                            EndpointSpec::Pods {
                                selector,
                                namespace,
                                weight,
                            } => json!({"pods": {"selector": selector_value(selector), "namespace": namespace},
                                        "weight": weight}),
                            EndpointSpec::Service {
                                name,
                                namespace,
                                weight,
                            } => json!({"service": {"name": name, "namespace": namespace}, "weight": weight}),
                        })
                        .collect();
                    o.insert(
                        "cluster".into(),
                        json!({"spec": dump::cluster_spec(&c.spec), "loadbalancer": dump::loadbalancer(&c.loadbalancer),
                               "endpoints": eps}),
                    );
                }
                TargetBackend::LinkedVirtualService(v) => {
                    o.insert("linkedVirtualService".into(), ref_value(v));
                }
            }
            Value::Object(o)
        }
        ResourceSpec::Route(rt) => route_value(rt),
        ResourceSpec::Rule(ru) => {
            let mut o = Map::new();
            o.insert("virtualService".into(), ref_value(&ru.virtual_service));
            if let Some(p) = ru.position {
                o.insert("position".into(), json!(p));
            }
            body_into(&ru.body, &mut o);
            Value::Object(o)
        }
    };
    let mut out = json!({
        "apiVersion": API_VERSION,
        "kind": r.kind.name(),
        "metadata": {"name": r.meta.name, "namespace": r.meta.namespace, "labels": r.meta.labels},
        "spec": spec,
    });
    if let (Some(s), Value::Object(o)) = (&r.status, &mut out) {
        let mut so = Map::new();
        so.insert(
            "state".into(),
            json!(match s.state {
                State::Accepted => "Accepted",
                State::Rejected => "Rejected",
                State::Pending => "Pending",
            }),
        );
        if let Some(reason) = &s.reason {
            so.insert("reason".into(), json!(reason));
        }
        so.insert(
            "agents".into(),
            json!({"placed": s.placed, "acked": s.acked, "nacked": s.nacked}),
        );
        if let Some(rev) = s.observed_revision {
            so.insert("observedRevision".into(), json!(rev));
        }
        o.insert("status".into(), Value::Object(so));
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Translation.

/// Every agent's flat configuration, and why some resources were left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translation {
    /// By node id; every connected agent has an entry (possibly empty).
    /// Agents with the same labels share one configuration.
    pub per_agent: BTreeMap<String, Arc<Config>>,
    /// `<field path>: <why>` for each resource left out (for a VirtualService with `spec.grpc`, also when only
    /// its gRPC service was left out).
    pub errors: BTreeMap<ResourceRef, String>,
    /// The proxyless gRPC services (VirtualServices with `spec.grpc`) and the clusters they use; the same for every
    /// client.
    pub grpc: grpc::GrpcTranslation,
}

/// The reference a (possibly invalid) resource object names, if its kind and name can be read.
pub fn reference_of(v: &Value) -> Option<ResourceRef> {
    let kind = ResourceKind::ALL
        .into_iter()
        .find(|k| v.get("kind").and_then(Value::as_str) == Some(k.name()))?;
    let meta = v.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NAMESPACE);
    Some(ResourceRef::new(kind, ns, name))
}

/// [`translate`] of resource objects as written: an object that does not parse is reported under its reference
/// (when its kind and name can be read) and left out, like any other bad resource.
pub fn translate_values(values: &[Value], agents: &[AgentInfo]) -> Translation {
    let mut ok = Vec::new();
    let mut parse_errors = BTreeMap::new();
    for v in values {
        match parse_resource(v) {
            Ok(r) => ok.push(r),
            Err(e) => {
                if let Some(r) = reference_of(v) {
                    parse_errors.insert(r, e.to_string().replace('\n', "; "));
                }
            }
        }
    }
    let mut t = translate(&ok, agents);
    for (r, e) in parse_errors {
        t.errors.entry(r).or_insert(e);
    }
    t
}

struct Index<'a> {
    by_ref: BTreeMap<ResourceRef, &'a Resource>,
    errors: BTreeMap<ResourceRef, String>,
    /// The cluster JSON of each accepted Target, without endpoints.
    targets: BTreeMap<ResourceRef, Value>,
    routes: BTreeSet<ResourceRef>,
    /// Accepted Rule objects by VirtualService, in insertion order.
    rules: BTreeMap<ResourceRef, Vec<&'a Resource>>,
    vsvcs: BTreeSet<ResourceRef>,
    /// The discovered Pods and EndpointSlices (`pods` and `service` endpoints).
    workloads: &'a Workloads,
}

fn vs_spec<'a>(ix: &Index<'a>, r: &ResourceRef) -> Option<&'a VirtualServiceSpec> {
    match ix.by_ref.get(r).map(|x| &x.spec) {
        Some(ResourceSpec::VirtualService(v)) => Some(v),
        _ => None,
    }
}

/// The cluster spec a `linkedVirtualService` Target gets from the VirtualService's listener.
fn linked_cluster(l: Option<&ListenerSpec>) -> Result<Value, String> {
    let Some(l) = l else {
        return Err("the VirtualService has no listener (a gRPC-only service) to link to".into());
    };
    let port = match l {
        ListenerSpec::Udp(s) => s.port,
        ListenerSpec::Tcp(s) | ListenerSpec::WebSocket(s) | ListenerSpec::Http(s) | ListenerSpec::Sctp(s) => s.port,
        other => {
            return Err(format!(
                "a {} listener cannot be linked (no port to connect to)",
                other.protocol()
            ));
        }
    };
    let spec = json!({"protocol": l.protocol(), "port": port});
    config_from_value(&json!({"clusters": [{"name": "c", "spec": spec}]})).map_err(|e| {
        format!(
            "the linked listener's spec is no valid cluster spec: {}",
            e.to_string().replace('\n', "; ")
        )
    })?;
    Ok(spec)
}

fn missing(ix: &Index<'_>, r: &ResourceRef) -> String {
    if ix.by_ref.contains_key(r) {
        format!("{r} is rejected")
    } else {
        format!("{r} does not exist")
    }
}

fn check_route(ix: &Index<'_>, rt: &RouteSpec, path: &FieldPath) -> Result<(), String> {
    let dest: Vec<(FieldPath, &ResourceRef)> = match &rt.destination {
        DestinationSpec::Target(t) => vec![(path.key("destination"), t)],
        DestinationSpec::Split(s) => s
            .iter()
            .enumerate()
            .map(|(i, (t, _))| (path.key("destination").index(i), t))
            .collect(),
    };
    let chains = rt
        .ingress
        .iter()
        .enumerate()
        .map(|(i, t)| (path.key("ingress").index(i), t))
        .chain(
            rt.egress
                .iter()
                .enumerate()
                .map(|(i, t)| (path.key("egress").index(i), t)),
        );
    for (p, t) in dest.into_iter().chain(chains) {
        if !ix.targets.contains_key(t) {
            return Err(format!("{p}: {}", missing(ix, t)));
        }
    }
    Ok(())
}

/// Whether `r` can be the target of `apply` or `rulesRef`: an accepted VirtualService with inline rules, none of
/// which (nor any Rule object added to it) uses `apply`.
fn applyable(ix: &Index<'_>, base_ok: &BTreeSet<ResourceRef>, r: &ResourceRef) -> Result<(), String> {
    let Some(v) = vs_spec(ix, r) else {
        return Err(missing(ix, r));
    };
    if !base_ok.contains(r) {
        return Err(format!("{r} is rejected"));
    }
    let RulesSource::Inline(rules) = &v.listener.rules else {
        return Err(format!("{r} uses rulesRef itself (only one level is allowed)"));
    };
    let attached_apply = ix.by_ref.values().any(
        |x| matches!(&x.spec, ResourceSpec::Rule(ru) if &ru.virtual_service == r && ru.body.action.apply.is_some()),
    );
    if rules.iter().any(|b| b.action.apply.is_some()) || attached_apply {
        return Err(format!("{r} uses apply itself (only one level is allowed)"));
    }
    Ok(())
}

/// Checks a rule's route and, if `base_ok` is given, its `apply`.
fn check_body(
    ix: &Index<'_>,
    b: &RuleBody,
    path: &FieldPath,
    base_ok: Option<&BTreeSet<ResourceRef>>,
) -> Result<(), String> {
    let ap = path.key("action");
    match &b.action.route {
        Some(RouteChoice::Inline(rt)) => check_route(ix, rt, &ap.key("route"))?,
        Some(RouteChoice::Ref(r)) if !ix.routes.contains(r) => {
            return Err(format!("{}: {}", ap.key("routeRef"), missing(ix, r)));
        }
        _ => {}
    }
    if let (Some(a), Some(base_ok)) = (&b.action.apply, base_ok) {
        applyable(ix, base_ok, a).map_err(|e| format!("{}: {e}", ap.key("apply")))?;
    }
    Ok(())
}

fn build_index<'a, R: Borrow<Resource>>(resources: &'a [R], workloads: &'a Workloads) -> Index<'a> {
    let mut ix = Index {
        workloads,
        by_ref: BTreeMap::new(),
        errors: BTreeMap::new(),
        targets: BTreeMap::new(),
        routes: BTreeSet::new(),
        rules: BTreeMap::new(),
        vsvcs: BTreeSet::new(),
    };
    let mut dup = BTreeSet::new();
    for r in resources {
        let r: &Resource = r.borrow();
        let key = r.reference();
        if ix.by_ref.insert(key.clone(), r).is_some() {
            dup.insert(key);
        }
    }
    for d in dup {
        ix.by_ref.remove(&d);
        ix.errors.insert(d, "metadata.name: defined more than once".into());
    }
    let all: Vec<(ResourceRef, &Resource)> = ix.by_ref.iter().map(|(k, v)| (k.clone(), *v)).collect();
    // Targets.
    for (k, r) in &all {
        let ResourceSpec::Target(t) = &r.spec else { continue };
        match &t.backend {
            TargetBackend::Cluster(c) => {
                if !ix.workloads.enabled
                    && let Some(i) = c.endpoints.iter().position(EndpointSpec::is_workload)
                {
                    let key = match c.endpoints.get(i) {
                        Some(EndpointSpec::Pods { .. }) => "pods",
                        _ => "service",
                    };
                    let p = FieldPath::root()
                        .key("spec")
                        .key("cluster")
                        .key("endpoints")
                        .index(i)
                        .key(key);
                    ix.errors.insert(
                        k.clone(),
                        format!("{p}: workload discovery is off (start l7mp-control with --discovery kubernetes)"),
                    );
                    continue;
                }
                ix.targets.insert(
                    k.clone(),
                    json!({"spec": dump::cluster_spec(&c.spec), "loadbalancer": dump::loadbalancer(&c.loadbalancer)}),
                );
            }
            TargetBackend::LinkedVirtualService(v) => {
                let p = FieldPath::root().key("spec").key("linkedVirtualService");
                match vs_spec(&ix, v).map(|vs| linked_cluster(vs.listener.spec.as_ref())) {
                    Some(Ok(spec)) => {
                        ix.targets.insert(k.clone(), json!({"spec": spec}));
                    }
                    Some(Err(e)) => {
                        ix.errors.insert(k.clone(), format!("{p}: {e}"));
                    }
                    None => {
                        ix.errors.insert(k.clone(), format!("{p}: {}", missing(&ix, v)));
                    }
                }
            }
        }
    }
    // Routes.
    for (k, r) in &all {
        let ResourceSpec::Route(rt) = &r.spec else { continue };
        match check_route(&ix, rt, &FieldPath::root().key("spec")) {
            Ok(()) => {
                ix.routes.insert(k.clone());
            }
            Err(e) => {
                ix.errors.insert(k.clone(), e);
            }
        }
    }
    // VirtualServices, without `apply` and `rulesRef` first.
    let mut base_ok = BTreeSet::new();
    for (k, r) in &all {
        let ResourceSpec::VirtualService(v) = &r.spec else {
            continue;
        };
        let p = FieldPath::root().key("spec").key("listener").key("rules");
        let res = match &v.listener.rules {
            RulesSource::Inline(rules) => rules
                .iter()
                .enumerate()
                .try_for_each(|(i, b)| check_body(&ix, b, &p.index(i), None)),
            RulesSource::Ref(_) => Ok(()),
        };
        match res {
            Ok(()) => {
                base_ok.insert(k.clone());
            }
            Err(e) => {
                ix.errors.insert(k.clone(), e);
            }
        }
    }
    for (k, r) in &all {
        let ResourceSpec::VirtualService(v) = &r.spec else {
            continue;
        };
        if !base_ok.contains(k) {
            continue;
        }
        let p = FieldPath::root().key("spec").key("listener");
        let res = match &v.listener.rules {
            RulesSource::Inline(rules) => rules
                .iter()
                .enumerate()
                .try_for_each(|(i, b)| check_body(&ix, b, &p.key("rules").index(i), Some(&base_ok))),
            RulesSource::Ref(x) => applyable(&ix, &base_ok, x).map_err(|e| format!("{}: {e}", p.key("rulesRef"))),
        };
        match res {
            Ok(()) => {
                ix.vsvcs.insert(k.clone());
            }
            Err(e) => {
                ix.errors.insert(k.clone(), e);
            }
        }
    }
    // Rule objects.
    for (k, r) in &all {
        let ResourceSpec::Rule(ru) = &r.spec else { continue };
        let res = if vs_spec(&ix, &ru.virtual_service).is_none() {
            Err(format!("spec.virtualService: {}", missing(&ix, &ru.virtual_service)))
        } else {
            check_body(&ix, &ru.body, &FieldPath::root().key("spec"), Some(&base_ok))
        };
        match res {
            Ok(()) => ix.rules.entry(ru.virtual_service.clone()).or_default().push(r),
            Err(e) => {
                ix.errors.insert(k.clone(), e);
            }
        }
    }
    ix
}

/// A VirtualService's rules in lookup order: its inline rules with its Rule objects inserted, each with its flat
/// name. A Rule object at position p goes before the p-th inline rule (at the end if p is past them, or if it has no
/// position); those in one slot are ordered by position (none last), then by namespace/name.
fn ordered_rules<'a>(ix: &Index<'a>, vs: &ResourceRef) -> Vec<(String, &'a RuleBody)> {
    let inline: Vec<(String, &RuleBody)> = match vs_spec(ix, vs).map(|v| &v.listener.rules) {
        Some(RulesSource::Inline(rules)) => rules
            .iter()
            .enumerate()
            .map(|(i, b)| (inline_rule_name(vs, i), b))
            .collect(),
        _ => Vec::new(),
    };
    let mut slots: Vec<Vec<(usize, ResourceRef, &RuleBody)>> = vec![Vec::new(); inline.len() + 1];
    for r in ix.rules.get(vs).map(Vec::as_slice).unwrap_or_default() {
        let ResourceSpec::Rule(ru) = &r.spec else { continue };
        let pos = ru.position.unwrap_or(usize::MAX);
        let slot = pos.min(inline.len());
        if let Some(s) = slots.get_mut(slot) {
            s.push((pos, r.reference(), &ru.body));
        }
    }
    let mut entries: Vec<(String, &RuleBody)> = Vec::new();
    let mut inline = inline.into_iter();
    for mut slot in slots {
        slot.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        entries.extend(slot.into_iter().map(|(_, r, b)| (r.fqn(), b)));
        entries.extend(inline.next());
    }
    entries
}

/// The flat objects of one agent, by name.
#[derive(Default)]
struct Flat {
    listeners: BTreeMap<String, Value>,
    clusters: BTreeMap<String, Value>,
    rulelists: BTreeMap<String, Value>,
    rules: BTreeMap<String, Value>,
    routes: BTreeMap<String, Value>,
}

/// The name of the flat rule for a VirtualService's `i`-th inline rule.
pub fn inline_rule_name(vs: &ResourceRef, i: usize) -> String {
    format!("{}/rules/{i}", vs.fqn())
}

/// The addresses of the agents a selector picks (agents without an address are skipped), sorted and unique.
fn agent_addresses(sel: &Selector, agents: &[AgentInfo]) -> BTreeSet<IpAddr> {
    agents
        .iter()
        .filter(|a| selector_matches(sel, &a.labels))
        .filter_map(|a| a.address)
        .collect()
}

impl Flat {
    fn target(&mut self, ix: &Index<'_>, t: &ResourceRef, agents: &[AgentInfo]) {
        let name = t.fqn();
        if self.clusters.contains_key(&name) {
            return;
        }
        let Some(base) = ix.targets.get(t) else { return };
        let mut endpoints: BTreeMap<String, Value> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut push = |n: String, address: String, weight: u32| {
            if !endpoints.contains_key(&n) {
                order.push(n.clone());
                endpoints.insert(
                    n.clone(),
                    json!({"name": n, "spec": {"address": address}, "weight": weight}),
                );
            }
        };
        match ix.by_ref.get(t).map(|r| &r.spec) {
            Some(ResourceSpec::Target(TargetSpec {
                backend: TargetBackend::Cluster(c),
                ..
            })) => {
                for (i, e) in c.endpoints.iter().enumerate() {
                    match e {
                        EndpointSpec::Static {
                            name: n,
                            address,
                            weight,
                        } => {
                            let n = n.clone().unwrap_or_else(|| i.to_string());
                            push(format!("{name}/{n}"), address.clone(), *weight);
                        }
                        EndpointSpec::Selector(sel) => {
                            for a in agent_addresses(sel, agents) {
                                push(format!("{name}/{a}"), a.to_string(), 1);
                            }
                        }
                        EndpointSpec::Pods {
                            selector,
                            namespace,
                            weight,
                        } => {
                            for a in ix.workloads.pod_addresses(selector, namespace) {
                                push(format!("{name}/{a}"), a.to_string(), *weight);
                            }
                        }
                        EndpointSpec::Service {
                            name: svc,
                            namespace,
                            weight,
                        } => {
                            let port = network_port(&c.spec);
                            for a in ix.workloads.service_addresses(svc, namespace, port) {
                                push(format!("{name}/{a}"), a.to_string(), *weight);
                            }
                        }
                    }
                }
            }
            Some(ResourceSpec::Target(TargetSpec {
                backend: TargetBackend::LinkedVirtualService(v),
                ..
            })) => {
                if let Some(vs) = vs_spec(ix, v) {
                    for a in agent_addresses(&vs.selector, agents) {
                        push(format!("{name}/{a}"), a.to_string(), 1);
                    }
                }
            }
            _ => {}
        }
        let mut c = base.clone();
        if let Value::Object(o) = &mut c {
            o.insert("name".into(), json!(name));
            let eps: Vec<Value> = order.iter().filter_map(|n| endpoints.remove(n)).collect();
            // A virtual cluster (Echo, Logger, ...) takes no `endpoints` key at all.
            if !eps.is_empty() || o.get("spec").is_some_and(takes_endpoints) {
                o.insert("endpoints".into(), Value::Array(eps));
            }
        }
        self.clusters.insert(name, c);
    }

    fn route(&mut self, ix: &Index<'_>, name: String, rt: &RouteSpec, agents: &[AgentInfo]) {
        let destination = match &rt.destination {
            DestinationSpec::Target(t) => json!(t.fqn()),
            DestinationSpec::Split(s) => Value::Array(
                s.iter()
                    .map(|(t, w)| json!({"cluster": t.fqn(), "weight": w}))
                    .collect(),
            ),
        };
        let targets = match &rt.destination {
            DestinationSpec::Target(t) => vec![t],
            DestinationSpec::Split(s) => s.iter().map(|(t, _)| t).collect(),
        };
        for t in targets.into_iter().chain(&rt.ingress).chain(&rt.egress) {
            self.target(ix, t, agents);
        }
        let refs = |v: &[ResourceRef]| v.iter().map(ResourceRef::fqn).collect::<Vec<_>>();
        self.routes.insert(
            name.clone(),
            json!({"name": name, "destination": destination, "ingress": refs(&rt.ingress), "egress": refs(&rt.egress),
                   "retry": dump::retry(&rt.retry)}),
        );
    }

    fn rule(&mut self, ix: &Index<'_>, name: String, b: &RuleBody, agents: &[AgentInfo]) {
        let mut action = Map::new();
        match &b.action.route {
            Some(RouteChoice::Inline(rt)) => {
                let rn = format!("{name}/route");
                self.route(ix, rn.clone(), rt, agents);
                action.insert("route".into(), json!(rn));
            }
            Some(RouteChoice::Ref(r)) => {
                if let Some(ResourceSpec::Route(rt)) = ix.by_ref.get(r).map(|x| &x.spec) {
                    self.route(ix, r.fqn(), rt, agents);
                }
                action.insert("route".into(), json!(r.fqn()));
            }
            None => {}
        }
        if !b.action.rewrite.is_empty() {
            action.insert("rewrite".into(), rewrites_json(&b.action.rewrite));
        }
        if let Some(a) = &b.action.apply {
            self.rulelist(ix, a, agents);
            action.insert("apply".into(), json!(a.fqn()));
        }
        if let Some(reason) = &b.action.deny {
            action.insert("deny".into(), json!(reason));
        }
        let mut o = Map::new();
        o.insert("name".into(), json!(name));
        if let Some(m) = &b.matcher {
            o.insert("match".into(), m.clone());
        }
        o.insert("action".into(), Value::Object(action));
        self.rules.insert(name, Value::Object(o));
    }

    /// The RuleList of a VirtualService (its inline rules with its Rule objects inserted) and everything it uses.
    fn rulelist(&mut self, ix: &Index<'_>, vs: &ResourceRef, agents: &[AgentInfo]) {
        let list = vs.fqn();
        if self.rulelists.contains_key(&list) {
            return;
        }
        // Guard against re-entry while the list is being built.
        self.rulelists.insert(list.clone(), json!({"name": list, "rules": []}));
        let entries = ordered_rules(ix, vs);
        let names: Vec<String> = entries.iter().map(|(n, _)| n.clone()).collect();
        for (n, b) in entries {
            self.rule(ix, n, b, agents);
        }
        self.rulelists
            .insert(list.clone(), json!({"name": list, "rules": names}));
    }

    fn document(self) -> Value {
        let v = |m: BTreeMap<String, Value>| Value::Array(m.into_values().collect());
        json!({
            "listeners": v(self.listeners),
            "clusters": v(self.clusters),
            "rulelists": v(self.rulelists),
            "rules": v(self.rules),
            "routes": v(self.routes),
        })
    }
}

/// The flat configuration document of one agent that gets these VirtualServices and Targets.
fn agent_document(ix: &Index<'_>, install: &[ResourceRef], agents: &[AgentInfo]) -> Value {
    let mut flat = Flat::default();
    for k in install {
        match k.kind {
            ResourceKind::VirtualService => {
                let Some(v) = vs_spec(ix, k) else { continue };
                let Some(spec) = &v.listener.spec else { continue };
                let owner = match &v.listener.rules {
                    RulesSource::Inline(_) => k.clone(),
                    RulesSource::Ref(x) => x.clone(),
                };
                flat.rulelist(ix, &owner, agents);
                flat.listeners.insert(
                    k.fqn(),
                    json!({"name": k.fqn(), "spec": dump::listener_spec(spec), "rules": owner.fqn()}),
                );
            }
            ResourceKind::Target => flat.target(ix, k, agents),
            _ => {}
        }
    }
    flat.document()
}

/// Translates the resources for the connected agents. Pure and deterministic: the same input gives the same
/// output. A bad resource is reported in [`Translation::errors`] and left out alone (with whatever needs it: a
/// VirtualService whose rules route to a missing Target is left out whole).
///
/// Each agent gets: the listener of every accepted VirtualService whose selector picks it (named
/// `namespace/name`, with the RuleList of the same name), the rules (`namespace/vsvc/rules/N` for inline rules,
/// `namespace/name` for Rule objects), routes (`namespace/name`, or `<rule>/route` inline) and clusters
/// (`namespace/name`) those use, and the cluster of every accepted Target whose selector picks it.
///
/// What an agent gets depends only on its labels (and on the set of agents, for endpoint selectors), so agents
/// with the same labels are translated once and share one [`Arc<Config>`].
pub fn translate<R: Borrow<Resource>>(resources: &[R], agents: &[AgentInfo]) -> Translation {
    translate_with(resources, agents, &Workloads::default())
}

/// [`translate`] with the workloads discovery found: a Target's `pods` and `service` endpoints stand for the
/// addresses of the ready ones (`<cluster>/<ip>`, like agent selectors). Without discovery
/// ([`Workloads::enabled`] false) such a Target is rejected.
pub fn translate_with<R: Borrow<Resource>>(
    resources: &[R],
    agents: &[AgentInfo],
    workloads: &Workloads,
) -> Translation {
    let ix = build_index(resources, workloads);
    let mut out = Translation {
        per_agent: BTreeMap::new(),
        errors: ix.errors.clone(),
        grpc: grpc::GrpcTranslation::default(),
    };
    out.grpc = grpc::translate(&ix, agents, &mut out.errors);
    let mut groups: BTreeMap<&BTreeMap<String, String>, Vec<&AgentInfo>> = BTreeMap::new();
    for agent in agents {
        groups.entry(&agent.labels).or_default().push(agent);
    }
    for (labels, members) in groups {
        let Some(first) = members.first() else { continue };
        let cfg = Arc::new(translate_group(&ix, labels, first, agents, &mut out.errors));
        for agent in members {
            out.per_agent.insert(agent.node_id.clone(), cfg.clone());
        }
    }
    out
}

/// The configuration of the agents with these labels (`first` is one of them, named in errors).
fn translate_group(
    ix: &Index<'_>,
    labels: &BTreeMap<String, String>,
    first: &AgentInfo,
    agents: &[AgentInfo],
    errors: &mut BTreeMap<ResourceRef, String>,
) -> Config {
    let mut candidates: Vec<ResourceRef> = ix
        .vsvcs
        .iter()
        .filter(|k| vs_spec(ix, k).is_some_and(|v| v.listener.spec.is_some() && selector_matches(&v.selector, labels)))
        .cloned()
        .collect();
    candidates.extend(
        ix.targets
            .keys()
            .filter(|t| {
                matches!(ix.by_ref.get(*t).map(|r| &r.spec),
                 Some(ResourceSpec::Target(ts)) if selector_matches(&ts.selector, labels))
            })
            .cloned(),
    );
    match config_from_value(&agent_document(ix, &candidates, agents)) {
        Ok(cfg) => cfg,
        Err(_) => {
            // Every piece was checked alone, but a combination can still be refused (say, a Target whose only
            // endpoints of weight > 0 come from a selector that picks no agent). Add the resources one by one
            // and leave out, with an error, each one that makes the configuration fail.
            let mut kept: Vec<ResourceRef> = Vec::new();
            let mut last = Config::default();
            for c in candidates {
                kept.push(c.clone());
                match config_from_value(&agent_document(ix, &kept, agents)) {
                    Ok(cfg) => last = cfg,
                    Err(e) => {
                        kept.pop();
                        let why = format!("on agent {}: {}", first.node_id, e.to_string().replace('\n', "; "));
                        errors.entry(c).or_insert(why);
                    }
                }
            }
            last
        }
    }
}

/// A rule action's `rewrite` list as JSON.
fn rewrites_json(rewrites: &[crate::model::Rewrite]) -> Value {
    Value::Array(
        rewrites
            .iter()
            .map(|rw| json!({"path": rw.path.to_string(), "value": rw.value}))
            .collect(),
    )
}

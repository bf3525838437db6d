//! The proxyless gRPC view of the resources: what a gRPC client that dials `xds:///NAME` should see of each
//! VirtualService marked `spec.grpc`, as plain types (no protobuf; `l7mp-control` turns them into Envoy's
//! Listener, RouteConfiguration, Cluster and ClusterLoadAssignment and checks those against what gRPC accepts).
//!
//! The VirtualService's rules become routes, in lookup order (first match wins in both): a `match` becomes a path
//! match (`/HTTP/url/path`) and header matches (`/HTTP/headers/NAME`), the route's destination a cluster or a
//! weighted split, its `retry` a retry policy; each Target a route sends to becomes a cluster whose endpoints come
//! from the same sources as an agent's (static, agent selectors, a linked VirtualService). What gRPC cannot do (a
//! `rewrite`, an `apply`, ingress/egress chains, a predicate on anything but the path and headers, a UDP Target)
//! rejects the gRPC service with an error naming the field; nothing is left out silently. See docs/grpc.md.

use super::{
    AgentInfo, DestinationSpec, EndpointSpec, Index, ResourceRef, ResourceSpec, RouteChoice, RouteSpec, RuleBody,
    RulesSource, TargetBackend, TargetSpec, agent_addresses, ordered_rules, vs_spec,
};
use crate::decode::Decoder;
use crate::model::{ClusterSpec, ListenerSpec, Policy, Retry, RetryOn};
use crate::path::FieldPath;
use crate::predicate::Predicate;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

/// The gRPC services and the clusters they use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GrpcTranslation {
    /// By the name clients dial (`xds:///NAME`).
    pub services: BTreeMap<String, GrpcService>,
    /// By cluster name (the Target's `namespace/name`).
    pub clusters: BTreeMap<String, GrpcCluster>,
}

/// One gRPC service: a VirtualService with `spec.grpc`.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcService {
    /// The name clients dial: the Listener's name.
    pub name: String,
    /// The VirtualService it comes from; its `namespace/name` names the RouteConfiguration.
    pub source: ResourceRef,
    /// In lookup order.
    pub routes: Vec<GrpcRoute>,
    /// `spec.grpc.timeout`: the longest a call may take.
    pub timeout: Option<Duration>,
}

/// One route: a rule of the VirtualService.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcRoute {
    /// The flat name of the rule it comes from (`namespace/vsvc/rules/0`, or a Rule object's `namespace/name`).
    pub name: String,
    pub matcher: RouteMatch,
    pub destination: GrpcDestination,
    pub retry: Option<GrpcRetry>,
    /// From the ring-hash Targets of the destination.
    pub hash: Vec<HashOn>,
}

/// A route's match: a path condition and header conditions, all of which must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Whether the path comparison is case sensitive (`ignore_case` of the predicate).
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatch>,
}

impl Default for RouteMatch {
    fn default() -> Self {
        RouteMatch {
            path: PathMatch::Prefix(String::new()),
            case_sensitive: true,
            headers: Vec::new(),
        }
    }
}

/// The path (`/service/method`) condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// RE2 syntax, matching the whole path.
    Regex(String),
}

/// One header condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lower case.
    pub name: String,
    pub value: HeaderValue,
    /// The condition must not hold.
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Present,
    Exact {
        value: String,
        ignore_case: bool,
    },
    Prefix {
        value: String,
        ignore_case: bool,
    },
    Suffix {
        value: String,
        ignore_case: bool,
    },
    Contains {
        value: String,
        ignore_case: bool,
    },
    /// RE2 syntax, matching the whole value.
    Regex(String),
}

/// Where a route sends calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcDestination {
    Cluster(String),
    /// Clusters and weights, as written (a weight may be 0).
    Split(Vec<(String, u32)>),
}

impl GrpcDestination {
    pub fn clusters(&self) -> Vec<&str> {
        match self {
            GrpcDestination::Cluster(c) => vec![c.as_str()],
            GrpcDestination::Split(s) => s.iter().map(|(c, _)| c.as_str()).collect(),
        }
    }
}

/// A retry policy in gRPC's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcRetry {
    /// gRPC status names (`unavailable`, ...).
    pub retry_on: Vec<&'static str>,
    pub num_retries: u32,
    pub base_interval: Duration,
    pub max_interval: Duration,
}

/// What a ring-hash cluster hashes on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum HashOn {
    /// A request header (lower case).
    Header(String),
    /// The client channel: every call of one channel lands on the same endpoint (l7mp's `/IP/src_addr`).
    Channel,
}

/// One cluster: a Target a gRPC service routes to.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcCluster {
    /// The Target's `namespace/name`.
    pub name: String,
    pub source: ResourceRef,
    pub lb: GrpcLb,
    /// The endpoints' port (the Target's cluster spec).
    pub port: u16,
    /// Endpoints of weight 0 are left out.
    pub endpoints: Vec<GrpcEndpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcLb {
    RoundRobin,
    RingHash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcEndpoint {
    /// `namespace/target/endpoint` (as an agent's endpoint is named).
    pub name: String,
    pub address: IpAddr,
    pub weight: u32,
}

/// gRPC status codes each l7mp `retry_on` retries.
fn retry_codes(on: RetryOn) -> Option<Vec<&'static str>> {
    match on {
        RetryOn::Never => None,
        RetryOn::ConnectFailure => Some(vec!["unavailable"]),
        RetryOn::Disconnect => Some(vec!["unavailable", "internal"]),
        RetryOn::Always => Some(vec![
            "cancelled",
            "deadline-exceeded",
            "internal",
            "resource-exhausted",
            "unavailable",
        ]),
    }
}

fn retry(r: &Retry) -> Option<GrpcRetry> {
    Some(GrpcRetry {
        retry_on: retry_codes(r.retry_on)?,
        num_retries: r.num_retries,
        base_interval: r.backoff.initial,
        max_interval: r.backoff.max,
    })
}

const SUPPORTED: &str = "a gRPC route matches on /HTTP/url/path (test, starts, ends, matches) and \
                         /HTTP/headers/NAME (test, starts, ends, contains, matches, in, defined, undefined, not), \
                         combined with and";

/// Escapes a literal for RE2.
fn re_escape(s: &str) -> String {
    regex::escape(s)
}

fn re_flags(ignore_case: bool) -> &'static str {
    if ignore_case { "(?i)" } else { "" }
}

fn string_value(v: &Value, what: &str) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{what}: a gRPC route compares strings, got {v}"))
}

/// Adds one predicate's conditions to `m`.
fn add_condition(p: &Predicate, m: &mut RouteMatch, path_set: &mut bool) -> Result<(), String> {
    let target = |ptr: &crate::Pointer| -> Option<Target> {
        match ptr.tokens() {
            [h, u, p] if h == "HTTP" && u == "url" && p == "path" => Some(Target::Path),
            [h, hs, name] if h == "HTTP" && hs == "headers" => Some(Target::Header(name.to_ascii_lowercase())),
            _ => None,
        }
    };
    let unsupported = |what: &str, ptr: Option<&crate::Pointer>| -> String {
        match ptr {
            Some(ptr) => format!("`{what}` on {ptr} has no gRPC equivalent ({SUPPORTED})"),
            None => format!("`{what}` has no gRPC equivalent ({SUPPORTED})"),
        }
    };
    let mut set_path = |pm: PathMatch, ignore_case: bool| -> Result<(), String> {
        if *path_set {
            return Err("two conditions on /HTTP/url/path cannot be combined in one gRPC route".into());
        }
        *path_set = true;
        m.path = pm;
        m.case_sensitive = !ignore_case;
        Ok(())
    };
    match p {
        Predicate::And(list) => {
            for q in list {
                add_condition(q, m, path_set)?;
            }
            Ok(())
        }
        Predicate::Not(list) => match list.as_slice() {
            [one] => {
                let mut inner = RouteMatch::default();
                let mut inner_path = false;
                add_condition(one, &mut inner, &mut inner_path)?;
                match (inner_path, inner.headers.as_slice()) {
                    (false, [h]) => {
                        let mut h = h.clone();
                        h.invert = !h.invert;
                        m.headers.push(h);
                        Ok(())
                    }
                    _ => Err(format!("`not` works on one header condition only ({SUPPORTED})")),
                }
            }
            _ => Err(format!("`not` works on one header condition only ({SUPPORTED})")),
        },
        Predicate::Test {
            path,
            value,
            ignore_case,
        } => match target(path) {
            Some(Target::Path) => set_path(PathMatch::Exact(string_value(value, "test")?), *ignore_case),
            Some(Target::Header(name)) => {
                m.headers.push(HeaderMatch {
                    name,
                    value: HeaderValue::Exact {
                        value: string_value(value, "test")?,
                        ignore_case: *ignore_case,
                    },
                    invert: false,
                });
                Ok(())
            }
            None => Err(unsupported("test", Some(path))),
        },
        Predicate::Starts {
            path,
            value,
            ignore_case,
        } => match target(path) {
            Some(Target::Path) => set_path(PathMatch::Prefix(value.clone()), *ignore_case),
            Some(Target::Header(name)) => {
                m.headers.push(HeaderMatch {
                    name,
                    value: HeaderValue::Prefix {
                        value: value.clone(),
                        ignore_case: *ignore_case,
                    },
                    invert: false,
                });
                Ok(())
            }
            None => Err(unsupported("starts", Some(path))),
        },
        Predicate::Ends {
            path,
            value,
            ignore_case,
        } => match target(path) {
            Some(Target::Path) => set_path(
                PathMatch::Regex(format!("{}.*{}", re_flags(*ignore_case), re_escape(value))),
                false,
            ),
            Some(Target::Header(name)) => {
                m.headers.push(HeaderMatch {
                    name,
                    value: HeaderValue::Suffix {
                        value: value.clone(),
                        ignore_case: *ignore_case,
                    },
                    invert: false,
                });
                Ok(())
            }
            None => Err(unsupported("ends", Some(path))),
        },
        Predicate::Contains {
            path,
            value,
            ignore_case,
        } => match target(path) {
            Some(Target::Header(name)) => {
                m.headers.push(HeaderMatch {
                    name,
                    value: HeaderValue::Contains {
                        value: string_value(value, "contains")?,
                        ignore_case: *ignore_case,
                    },
                    invert: false,
                });
                Ok(())
            }
            _ => Err(unsupported("contains", Some(path))),
        },
        Predicate::Matches {
            path,
            regex,
            ignore_case,
        } => {
            // l7mp's regular expressions are unanchored; Envoy's safe_regex must match the whole value.
            let re = format!("{}.*(?:{}).*", re_flags(*ignore_case), regex.as_str());
            match target(path) {
                Some(Target::Path) => set_path(PathMatch::Regex(re), false),
                Some(Target::Header(name)) => {
                    m.headers.push(HeaderMatch {
                        name,
                        value: HeaderValue::Regex(re),
                        invert: false,
                    });
                    Ok(())
                }
                None => Err(unsupported("matches", Some(path))),
            }
        }
        Predicate::In {
            path,
            values,
            ignore_case,
        } => match target(path) {
            Some(Target::Header(name)) => {
                let alts = values
                    .iter()
                    .map(|v| string_value(v, "in").map(|s| re_escape(&s)))
                    .collect::<Result<Vec<_>, _>>()?;
                m.headers.push(HeaderMatch {
                    name,
                    value: HeaderValue::Regex(format!("{}(?:{})", re_flags(*ignore_case), alts.join("|"))),
                    invert: false,
                });
                Ok(())
            }
            _ => Err(unsupported("in", Some(path))),
        },
        Predicate::Defined { path } | Predicate::Undefined { path } => match target(path) {
            Some(Target::Header(name)) => {
                m.headers.push(HeaderMatch {
                    name,
                    value: HeaderValue::Present,
                    invert: matches!(p, Predicate::Undefined { .. }),
                });
                Ok(())
            }
            _ => Err(unsupported(
                if matches!(p, Predicate::Defined { .. }) {
                    "defined"
                } else {
                    "undefined"
                },
                Some(path),
            )),
        },
        Predicate::Less { path, .. } => Err(unsupported("less", Some(path))),
        Predicate::More { path, .. } => Err(unsupported("more", Some(path))),
        Predicate::Contained { path, .. } => Err(unsupported("contained", Some(path))),
        Predicate::Intersects { path, .. } => Err(unsupported("intersects", Some(path))),
        Predicate::Type { path, .. } => Err(unsupported("type", Some(path))),
        Predicate::Or(_) => Err(unsupported("or", None)),
    }
}

enum Target {
    Path,
    Header(String),
}

/// A rule's `match` as a gRPC route match (`None` or a string: every call).
pub fn route_match(matcher: Option<&Value>) -> Result<RouteMatch, String> {
    let mut m = RouteMatch::default();
    let Some(v) = matcher.filter(|v| v.is_object()) else {
        return Ok(m);
    };
    let mut d = Decoder::new();
    let p = Predicate::decode(&mut d, v, &FieldPath::root())
        .ok_or_else(|| "invalid predicate (the agent-side check should have caught this)".to_string())?;
    let mut path_set = false;
    add_condition(&p, &mut m, &mut path_set)?;
    Ok(m)
}

/// The cluster of a Target, or why it cannot serve gRPC clients.
fn cluster(ix: &Index<'_>, t: &ResourceRef, agents: &[AgentInfo]) -> Result<GrpcCluster, String> {
    let Some(ResourceSpec::Target(TargetSpec { backend, .. })) = ix.by_ref.get(t).map(|r| &r.spec) else {
        return Err(format!("{t} does not exist"));
    };
    let name = t.fqn();
    let mut endpoints: Vec<GrpcEndpoint> = Vec::new();
    let mut seen = BTreeSet::new();
    // gRPC refuses an assignment that names one address twice: endpoints with the same address are one, with the
    // sum of their weights (as an agent's weighted pick would give them).
    let mut push = |n: String, address: IpAddr, weight: u32| {
        if weight == 0 || !seen.insert(n.clone()) {
            return;
        }
        match endpoints.iter_mut().find(|e| e.address == address) {
            Some(e) => e.weight = e.weight.saturating_add(weight),
            None => endpoints.push(GrpcEndpoint {
                name: n,
                address,
                weight,
            }),
        }
    };
    let (port, lb) = match backend {
        TargetBackend::Cluster(c) => {
            let port = match &c.spec {
                ClusterSpec::Http { port, .. } | ClusterSpec::Tcp { port, .. } => *port,
                other => {
                    return Err(format!(
                        "{t} is a {} cluster: a gRPC service routes to HTTP or TCP Targets (their port is the \
                         backends' gRPC port)",
                        other.protocol()
                    ));
                }
            };
            let lb = match &c.loadbalancer.policy {
                Policy::HashRing { .. } => GrpcLb::RingHash,
                Policy::Trivial | Policy::WeightedRandom | Policy::RoundRobin => GrpcLb::RoundRobin,
            };
            for (i, e) in c.endpoints.iter().enumerate() {
                match e {
                    EndpointSpec::Static {
                        name: n,
                        address,
                        weight,
                    } => {
                        let ip: IpAddr = address.parse().map_err(|_| {
                            format!(
                                "{t}: spec.cluster.endpoints[{i}].spec.address: {address:?} is not an IP address \
                                 (gRPC clients are sent addresses, not names)"
                            )
                        })?;
                        let n = n.clone().unwrap_or_else(|| i.to_string());
                        push(format!("{name}/{n}"), ip, *weight);
                    }
                    EndpointSpec::Selector(sel) => {
                        for a in agent_addresses(sel, agents) {
                            push(format!("{name}/{a}"), a, 1);
                        }
                    }
                    // Discovered workloads, the same addresses agents get (ready ones only).
                    EndpointSpec::Pods {
                        selector,
                        namespace,
                        weight,
                    } => {
                        for a in ix.workloads.pod_addresses(selector, namespace) {
                            push(format!("{name}/{a}"), a, *weight);
                        }
                    }
                    EndpointSpec::Service {
                        name: svc,
                        namespace,
                        weight,
                    } => {
                        for a in ix.workloads.service_addresses(svc, namespace, Some(port)) {
                            push(format!("{name}/{a}"), a, *weight);
                        }
                    }
                }
            }
            (port, lb)
        }
        TargetBackend::LinkedVirtualService(v) => {
            let vs = vs_spec(ix, v).ok_or_else(|| format!("{t}: its linked {v} does not exist"))?;
            let port = match &vs.listener.spec {
                Some(ListenerSpec::Http(s) | ListenerSpec::Tcp(s)) => s.port,
                _ => {
                    return Err(format!(
                        "{t} links {v}, which is not an HTTP or TCP listener: a gRPC service routes to HTTP or TCP \
                         Targets"
                    ));
                }
            };
            for a in agent_addresses(&vs.selector, agents) {
                push(format!("{name}/{a}"), a, 1);
            }
            (port, GrpcLb::RoundRobin)
        }
    };
    Ok(GrpcCluster {
        name,
        source: t.clone(),
        lb,
        port,
        endpoints,
    })
}

/// What a ring-hash Target hashes on, from its `loadbalancer.key`.
fn hash_on(ix: &Index<'_>, t: &ResourceRef) -> Result<Option<HashOn>, String> {
    let Some(ResourceSpec::Target(TargetSpec {
        backend: TargetBackend::Cluster(c),
        ..
    })) = ix.by_ref.get(t).map(|r| &r.spec)
    else {
        return Ok(None);
    };
    let Policy::HashRing { key, .. } = &c.loadbalancer.policy else {
        return Ok(None);
    };
    let Some(key) = key else { return Ok(None) };
    match key.tokens() {
        [h, hs, name] if h == "HTTP" && hs == "headers" => Ok(Some(HashOn::Header(name.to_ascii_lowercase()))),
        [ip, src] if ip == "IP" && src == "src_addr" => Ok(Some(HashOn::Channel)),
        _ => Err(format!(
            "{t}: spec.cluster.loadbalancer.key: {key} cannot be hashed by a gRPC client (use /HTTP/headers/NAME, \
             or /IP/src_addr for one endpoint per client channel)"
        )),
    }
}

/// One rule as a route; `clusters` collects the Targets it uses.
fn route(
    ix: &Index<'_>,
    name: &str,
    b: &RuleBody,
    agents: &[AgentInfo],
    clusters: &mut BTreeMap<String, GrpcCluster>,
) -> Result<GrpcRoute, String> {
    if !b.action.rewrite.is_empty() {
        return Err("action.rewrite: not supported by a gRPC service (there is no session metadata)".into());
    }
    if b.action.apply.is_some() {
        return Err("action.apply: not supported by a gRPC service (write the rules in it)".into());
    }
    if b.action.deny.is_some() {
        return Err(
            "action.deny: not supported by a gRPC service (gRPC clients have no way to be refused by a route)".into(),
        );
    }
    let rt: &RouteSpec = match &b.action.route {
        Some(RouteChoice::Inline(rt)) => rt,
        Some(RouteChoice::Ref(r)) => match ix.by_ref.get(r).map(|x| &x.spec) {
            Some(ResourceSpec::Route(rt)) => rt,
            _ => return Err(format!("action.routeRef: {r} does not exist")),
        },
        None => return Err("action: a gRPC route needs a `route`".into()),
    };
    let rp = match &b.action.route {
        Some(RouteChoice::Ref(r)) => format!("action.routeRef ({r}): "),
        _ => "action.route.".into(),
    };
    if !rt.ingress.is_empty() || !rt.egress.is_empty() {
        let which = if rt.ingress.is_empty() { "egress" } else { "ingress" };
        return Err(format!("{rp}{which}: chains are not supported by a gRPC service"));
    }
    let matcher = route_match(b.matcher.as_ref()).map_err(|e| format!("match: {e}"))?;
    let targets: Vec<&ResourceRef> = match &rt.destination {
        DestinationSpec::Target(t) => vec![t],
        DestinationSpec::Split(s) => s.iter().map(|(t, _)| t).collect(),
    };
    let mut hash = BTreeSet::new();
    for t in &targets {
        if !clusters.contains_key(&t.fqn()) {
            let c = cluster(ix, t, agents).map_err(|e| format!("{rp}destination: {e}"))?;
            clusters.insert(c.name.clone(), c);
        }
        if let Some(h) = hash_on(ix, t).map_err(|e| format!("{rp}destination: {e}"))? {
            hash.insert(h);
        }
    }
    let destination = match &rt.destination {
        DestinationSpec::Target(t) => GrpcDestination::Cluster(t.fqn()),
        DestinationSpec::Split(s) => GrpcDestination::Split(s.iter().map(|(t, w)| (t.fqn(), *w)).collect()),
    };
    Ok(GrpcRoute {
        name: name.to_owned(),
        matcher,
        destination,
        retry: retry(&rt.retry),
        hash: hash.into_iter().collect(),
    })
}

/// The gRPC services of the accepted VirtualServices with `spec.grpc`; an error per VirtualService whose gRPC
/// service cannot be built (it is left out; its agent listener, if any, is not affected).
pub(super) fn translate(
    ix: &Index<'_>,
    agents: &[AgentInfo],
    errors: &mut BTreeMap<ResourceRef, String>,
) -> GrpcTranslation {
    let mut out = GrpcTranslation::default();
    let mut claimed: BTreeMap<String, ResourceRef> = BTreeMap::new();
    for vs in &ix.vsvcs {
        let Some(spec) = vs_spec(ix, vs) else { continue };
        let Some(g) = &spec.grpc else { continue };
        let name = g.service_name(vs).to_owned();
        if let Some(other) = claimed.get(&name) {
            errors
                .entry(vs.clone())
                .or_insert(format!("spec.grpc.name: xds:///{name} is already served by {other}"));
            continue;
        }
        if super::grpc_name_problem(&name).is_some() {
            errors.entry(vs.clone()).or_insert(format!(
                "spec.grpc: the service name defaults to metadata.name, and {name:?} cannot be the NAME of \
                 xds:///NAME: set spec.grpc.name"
            ));
            continue;
        }
        let owner = match &spec.listener.rules {
            RulesSource::Inline(_) => vs.clone(),
            RulesSource::Ref(x) => x.clone(),
        };
        let mut clusters = BTreeMap::new();
        let mut routes = Vec::new();
        let mut failed = None;
        let inline_prefix = format!("{}/rules/", owner.fqn());
        for (rule_name, body) in ordered_rules(ix, &owner) {
            let at = match rule_name.strip_prefix(&inline_prefix) {
                Some(i) if owner == *vs => format!("spec.listener.rules[{i}]."),
                Some(i) => format!("spec.listener.rulesRef: {owner}: spec.listener.rules[{i}]."),
                None => format!("Rule {rule_name}: spec."),
            };
            match route(ix, &rule_name, body, agents, &mut clusters) {
                Ok(r) => routes.push(r),
                Err(e) => {
                    failed = Some(format!("{at}{e}"));
                    break;
                }
            }
        }
        if let Some(e) = failed {
            errors.entry(vs.clone()).or_insert(e);
            continue;
        }
        claimed.insert(name.clone(), vs.clone());
        out.clusters.extend(clusters);
        out.services.insert(
            name.clone(),
            GrpcService {
                name,
                source: vs.clone(),
                routes,
                timeout: g.timeout,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_map_to_path_and_headers() {
        let m = route_match(Some(&json!({"op": "and", "apply": [
            {"op": "starts", "path": "/HTTP/url/path", "value": "/test.Echo/"},
            {"op": "test", "path": "/HTTP/headers/X-User", "value": "a", "ignore_case": true},
            {"op": "undefined", "path": "/HTTP/headers/x-debug"},
        ]})))
        .unwrap();
        assert_eq!(m.path, PathMatch::Prefix("/test.Echo/".into()));
        assert_eq!(m.headers.len(), 2);
        assert_eq!(m.headers[0].name, "x-user");
        assert!(matches!(
            &m.headers[0].value,
            HeaderValue::Exact { ignore_case: true, .. }
        ));
        assert!(m.headers[1].invert);
        assert_eq!(route_match(None).unwrap(), RouteMatch::default());
    }

    #[test]
    fn regexes_are_made_whole_value() {
        let m = route_match(Some(
            &json!({"op": "matches", "path": "/HTTP/url/path", "value": "Echo/S"}),
        ))
        .unwrap();
        assert_eq!(m.path, PathMatch::Regex(".*(?:Echo/S).*".into()));
        let m = route_match(Some(&json!({"op": "ends", "path": "/HTTP/url/path", "value": "/Say"}))).unwrap();
        assert_eq!(m.path, PathMatch::Regex(".*/Say".into()));
    }

    #[test]
    fn unsupported_predicates_say_why() {
        for (p, want) in [
            (
                json!({"op": "test", "path": "/IP/src_addr", "value": "1.2.3.4"}),
                "`test` on /IP/src_addr",
            ),
            (
                json!({"op": "or", "apply": [{"op": "defined", "path": "/HTTP/headers/a"}]}),
                "`or`",
            ),
            (
                json!({"op": "and", "apply": [{"op": "starts", "path": "/HTTP/url/path", "value": "/a"},
                                               {"op": "starts", "path": "/HTTP/url/path", "value": "/b"}]}),
                "two conditions on /HTTP/url/path",
            ),
        ] {
            let e = route_match(Some(&p)).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}

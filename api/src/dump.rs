//! Typed [`Config`] back to JSON in the original l7mp's format: the flat whole-configuration dump that
//! [`crate::load::config_from_value`] reads back into an equal `Config`, and the per-object shapes the REST API
//! returns (`GET /api/v1/listeners/{name}` and friends, with `?recursive=true` expanding references).
//!
//! Every field the loader reads is written, in the unit the loader reads it in (seconds for `track`,
//! `idle_timeout` and outlier ejection times; milliseconds for retry timeouts and back-off). A wildcard rule's
//! match is written as the original did, `{"match": "*"}`, in both dumps; the loader reads that back as a wildcard.
//! Spec, load-balancer, retry and destination serialisation each live in one function shared by both dumps.

use crate::model::*;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The whole configuration, flat: every object under its kind's table with its name, references by name.
/// `config_from_value(&config(c))` is equal to `c`.
pub fn config(cfg: &Config) -> Value {
    json!({
        "admin": admin_fields(&cfg.admin, false),
        "listeners": cfg.listeners.iter().map(|l| listener(cfg, l, false)).collect::<Vec<_>>(),
        "clusters": cfg.clusters.iter().map(cluster_flat).collect::<Vec<_>>(),
        "rulelists": cfg.rulelists.iter().map(|l| rulelist(cfg, l, false)).collect::<Vec<_>>(),
        "rules": cfg.rules.iter().map(|r| rule(cfg, r, false)).collect::<Vec<_>>(),
        "routes": cfg.routes.iter().map(|r| route(cfg, r, false)).collect::<Vec<_>>(),
    })
}

/// `GET /api/v1/admin` without `version` (the caller adds it): `{log_level, strict[, log_file, access_log_path]}`,
/// with the effective log level (`info` when none is set).
pub fn admin(a: &Admin) -> Value {
    admin_fields(a, true)
}

fn admin_fields(a: &Admin, effective_level: bool) -> Value {
    let mut o = Map::new();
    match (&a.log_level, effective_level) {
        (Some(l), _) => drop(o.insert("log_level".into(), json!(l))),
        (None, true) => drop(o.insert("log_level".into(), json!("info"))),
        (None, false) => {}
    }
    o.insert("strict".into(), json!(a.strict));
    if let Some(f) = &a.log_file {
        o.insert("log_file".into(), json!(f));
    }
    if let Some(p) = &a.access_log_path {
        o.insert("access_log_path".into(), json!(p));
    }
    if a.offload != crate::model::OffloadMode::Off {
        o.insert("offload".into(), json!(a.offload.as_str()));
    }
    if !a.offload_ifs.is_empty() {
        o.insert("offload_ifs".into(), json!(a.offload_ifs));
    }
    if a.offload_tcp {
        o.insert("offload_tcp".into(), json!(true));
    }
    Value::Object(o)
}

/// A listener: `{name, spec, rules, options}`; `rules` is the RuleList's name, or (recursive) its rule objects.
pub fn listener(cfg: &Config, l: &Listener, recursive: bool) -> Value {
    let rules = if recursive {
        let rules = cfg
            .rulelist(&l.rules)
            .map(|rl| rule_objects(cfg, rl))
            .unwrap_or_default();
        Value::Array(rules)
    } else {
        json!(l.rules)
    };
    let mut options = Map::new();
    if let Some(t) = l.options.track {
        options.insert("track".into(), seconds(t));
    }
    json!({"name": l.name, "spec": listener_spec(&l.spec), "rules": rules, "options": options})
}

/// A cluster as the API shows it: `endpoints` is their count, or (recursive) the endpoint objects; a virtual
/// cluster (no network endpoints) has the one virtual endpoint `{name, spec: {address: "<VIRTUAL>"}}`.
/// `_cfg` is unused: a cluster refers to nothing, but every per-object dump takes the configuration.
pub fn cluster(_cfg: &Config, c: &Cluster, recursive: bool) -> Value {
    let endpoints = match (c.spec.takes_endpoints(), recursive) {
        (true, true) => Value::Array(c.endpoints.iter().map(endpoint).collect()),
        (true, false) => json!(c.endpoints.len()),
        (false, true) => json!([{"name": c.name, "spec": {"address": "<VIRTUAL>"}}]),
        (false, false) => json!(1),
    };
    cluster_object(c, Some(endpoints))
}

/// A cluster in the flat dump: its endpoints in full (none for virtual clusters, which take none).
fn cluster_flat(c: &Cluster) -> Value {
    let endpoints = c
        .spec
        .takes_endpoints()
        .then(|| Value::Array(c.endpoints.iter().map(endpoint).collect()));
    cluster_object(c, endpoints)
}

fn cluster_object(c: &Cluster, endpoints: Option<Value>) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(c.name));
    o.insert("spec".into(), cluster_spec(&c.spec));
    if let Some(e) = endpoints {
        o.insert("endpoints".into(), e);
    }
    o.insert("loadbalancer".into(), loadbalancer(&c.loadbalancer));
    if let Some(opt) = &c.options {
        o.insert("options".into(), opt.clone());
    }
    Value::Object(o)
}

/// An endpoint: `{name, spec: {address}, weight}`.
pub fn endpoint(e: &Endpoint) -> Value {
    json!({"name": e.name, "spec": {"address": e.address}, "weight": e.weight})
}

/// A RuleList: `{name, rules}`, the rules by name or (recursive) as rule objects.
pub fn rulelist(cfg: &Config, rl: &RuleList, recursive: bool) -> Value {
    let rules = if recursive {
        Value::Array(rule_objects(cfg, rl))
    } else {
        json!(rl.rules)
    };
    json!({"name": rl.name, "rules": rules})
}

fn rule_objects(cfg: &Config, rl: &RuleList) -> Vec<Value> {
    rl.rules
        .iter()
        .map(|n| match cfg.rule(n) {
            Some(r) => rule(cfg, r, true),
            None => json!(stale(n)),
        })
        .collect()
}

/// A rule: `{name, match, action: {rewrite?, apply?, route? | deny}}`; the route by name or (recursive) as a route object.
pub fn rule(cfg: &Config, r: &Rule, recursive: bool) -> Value {
    let mut action = Map::new();
    if !r.action.rewrite.is_empty() {
        let rewrite: Vec<Value> = r
            .action
            .rewrite
            .iter()
            .map(|rw| json!({"path": rw.path.to_string(), "value": rw.value}))
            .collect();
        action.insert("rewrite".into(), Value::Array(rewrite));
    }
    if let Some(a) = &r.action.apply {
        action.insert("apply".into(), json!(a));
    }
    if let Some(reason) = &r.action.deny {
        action.insert("deny".into(), json!(reason));
    }
    if let Some(name) = &r.action.route {
        let v = match (recursive, cfg.route(name)) {
            (true, Some(rt)) => route(cfg, rt, true),
            (true, None) => json!(stale(name)),
            (false, _) => json!(name),
        };
        action.insert("route".into(), v);
    }
    let matcher = match &r.match_source {
        Some(m) if r.matcher.is_some() => m.clone(),
        _ => json!({"match": "*"}),
    };
    json!({"name": r.name, "match": matcher, "action": action})
}

/// A route: `{name, destination, ingress, egress, retry}`; clusters by name or (recursive) as cluster objects
/// (`"<name>:<STALE>"` for one that does not exist, as the original).
pub fn route(cfg: &Config, r: &Route, recursive: bool) -> Value {
    let c = |name: &str| -> Value {
        match (recursive, cfg.cluster(name)) {
            (true, Some(cl)) => cluster(cfg, cl, true),
            (true, None) => json!(stale(name)),
            (false, _) => json!(name),
        }
    };
    let destination = match &r.destination {
        Destination::Cluster(name) => c(name),
        Destination::Split(split) => Value::Array(
            split
                .iter()
                .map(|w| json!({"cluster": c(&w.cluster), "weight": w.weight}))
                .collect(),
        ),
    };
    json!({
        "name": r.name,
        "destination": destination,
        "ingress": r.ingress.iter().map(|n| c(n)).collect::<Vec<_>>(),
        "egress": r.egress.iter().map(|n| c(n)).collect::<Vec<_>>(),
        "retry": retry(&r.retry),
    })
}

fn stale(name: &str) -> String {
    format!("{name}:<STALE>")
}

/// A duration in seconds: an integer when whole, else a fraction.
fn seconds(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        json!(d.as_secs())
    } else {
        json!(d.as_secs_f64())
    }
}

/// An idle timeout in seconds, `0` for never.
fn idle_timeout(t: Option<Duration>) -> Value {
    t.map_or(json!(0), seconds)
}

/// A duration in whole milliseconds (retry and back-off fields are read as integer milliseconds).
fn millis(d: Duration) -> Value {
    json!(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ethertype(t: u16) -> Value {
    json!(format!("0x{t:04x}"))
}

/// A listener's `spec`, as the loader reads it.
pub fn listener_spec(spec: &ListenerSpec) -> Value {
    let mut o = Map::new();
    o.insert("protocol".into(), json!(spec.protocol()));
    match spec {
        ListenerSpec::Udp(u) => {
            o.insert("address".into(), json!(u.address.to_string()));
            // Port 0 (an ephemeral port) is written by leaving `port` out: the loader reads ports as 1..65535.
            if u.port != 0 {
                o.insert("port".into(), json!(u.port));
            }
            let mut connect = Map::new();
            if let Some(a) = u.connect_address {
                connect.insert("address".into(), json!(a.to_string()));
            }
            if let Some(p) = u.connect_port {
                connect.insert("port".into(), json!(p));
            }
            if !connect.is_empty() {
                o.insert("connect".into(), Value::Object(connect));
            }
            let mode = match u.mode {
                UdpMode::Server => "server",
                UdpMode::Singleton => "singleton",
            };
            o.insert("options".into(), json!({"mode": mode}));
            o.insert("idle_timeout".into(), idle_timeout(u.idle_timeout));
        }
        ListenerSpec::Tcp(t)
        | ListenerSpec::WebSocket(t)
        | ListenerSpec::Http(t)
        | ListenerSpec::Sctp(t)
        | ListenerSpec::Tls(t) => {
            o.insert("address".into(), json!(t.address.to_string()));
            o.insert("port".into(), json!(t.port));
            if let Some(t) = &t.tls {
                o.insert("tls".into(), tls(t, true));
            }
        }
        ListenerSpec::Dtls(d) => {
            o.insert("address".into(), json!(d.address.to_string()));
            o.insert("port".into(), json!(d.port));
            o.insert("idle_timeout".into(), idle_timeout(d.idle_timeout));
            o.insert("tls".into(), tls(&d.tls, true));
        }
        ListenerSpec::UnixDomainSocket(u) => {
            o.insert("filename".into(), json!(u.filename));
        }
        ListenerSpec::UnixDgram(u) => {
            o.insert("filename".into(), json!(u.filename));
            o.insert("idle_timeout".into(), idle_timeout(u.idle_timeout));
        }
        ListenerSpec::JsonSocket(t) => {
            o.insert("transport".into(), listener_spec(t));
        }
        ListenerSpec::Pipe(p) => {
            o.insert("filename".into(), json!(p.filename));
        }
        ListenerSpec::AfPacket(a) => {
            o.insert("interface".into(), json!(a.interface));
            if let Some(t) = a.ethertype {
                o.insert("ethertype".into(), ethertype(t));
            }
            o.insert("idle_timeout".into(), idle_timeout(a.idle_timeout));
        }
    }
    Value::Object(o)
}

/// A `tls` block; `listener` says which side's fields it has.
fn tls(t: &TlsSpec, listener: bool) -> Value {
    let mut o = Map::new();
    for (k, v) in [("cert", &t.cert), ("key", &t.key), ("ca", &t.ca)] {
        if let Some(v) = v {
            o.insert(k.into(), json!(v));
        }
    }
    if listener {
        o.insert("client_auth".into(), json!(t.client_auth.as_str()));
    } else if let Some(s) = &t.server_name {
        o.insert("server_name".into(), json!(s));
    }
    if !t.alpn.is_empty() {
        o.insert("alpn".into(), json!(t.alpn));
    }
    if !t.sni.is_empty() {
        let sni: Vec<Value> = t
            .sni
            .iter()
            .map(|c| json!({"server_name": c.server_name, "cert": c.cert, "key": c.key}))
            .collect();
        o.insert("sni".into(), Value::Array(sni));
    }
    Value::Object(o)
}

fn bind(o: &mut Map<String, Value>, b: &Option<Bind>) {
    if let Some(b) = b {
        let mut bo = Map::new();
        if let Some(a) = b.address {
            bo.insert("address".into(), json!(a.to_string()));
        }
        bo.insert("port".into(), json!(b.port));
        o.insert("bind".into(), Value::Object(bo));
    }
}

/// A cluster's `spec`, as the loader reads it.
pub fn cluster_spec(spec: &ClusterSpec) -> Value {
    let mut o = Map::new();
    o.insert("protocol".into(), json!(spec.protocol()));
    match spec {
        ClusterSpec::Udp { port, bind: b }
        | ClusterSpec::Tcp { port, bind: b }
        | ClusterSpec::Sctp { port, bind: b } => {
            o.insert("port".into(), json!(port));
            bind(&mut o, b);
        }
        ClusterSpec::Tls { port, bind: b, tls: t } | ClusterSpec::Dtls { port, bind: b, tls: t } => {
            o.insert("port".into(), json!(port));
            bind(&mut o, b);
            o.insert("tls".into(), tls(t, false));
        }
        ClusterSpec::WebSocket { port, tls: t } => {
            o.insert("port".into(), json!(port));
            if let Some(t) = t {
                o.insert("tls".into(), tls(t, false));
            }
        }
        ClusterSpec::Http { port, version, tls: t } => {
            o.insert("port".into(), json!(port));
            if let Some(t) = t {
                o.insert("tls".into(), tls(t, false));
            }
            let v = match version {
                HttpVersion::Http1 => "1.1",
                HttpVersion::Http2 => "2",
            };
            o.insert("version".into(), json!(v));
        }
        ClusterSpec::JsonSocket { transport, header } => {
            o.insert("transport".into(), cluster_spec(transport));
            o.insert("header".into(), Value::Array(header.iter().map(header_item).collect()));
        }
        ClusterSpec::Logger { log_file, log_prefix } => {
            o.insert("log_file".into(), json!(log_file));
            if let Some(p) = log_prefix {
                o.insert("log_prefix".into(), json!(p));
            }
        }
        ClusterSpec::StdioFork { command } => {
            o.insert("command".into(), json!(command));
        }
        ClusterSpec::Sync { query } => {
            o.insert("query".into(), json!(query.to_string()));
        }
        ClusterSpec::AfPacket { ethertype: Some(t) } => {
            o.insert("ethertype".into(), ethertype(*t));
        }
        ClusterSpec::AfPacket { ethertype: None }
        | ClusterSpec::UnixDomainSocket
        | ClusterSpec::UnixDgram
        | ClusterSpec::Echo
        | ClusterSpec::Discard
        | ClusterSpec::Stdio
        | ClusterSpec::JsonEncap
        | ClusterSpec::JsonDecap
        | ClusterSpec::Pipe
        | ClusterSpec::L7mpController
        | ClusterSpec::Prometheus
        | ClusterSpec::Metric => {}
    }
    Value::Object(o)
}

fn header_item(h: &HeaderItem) -> Value {
    match h {
        HeaderItem::Copy(p) => json!({"path": p.to_string()}),
        HeaderItem::Move { from, to } => json!({"path": {"from": from.to_string(), "to": to.to_string()}}),
        HeaderItem::Set { key, value } => json!({"set": {"key": key.to_string(), "value": value}}),
    }
}

/// `{policy[, key, on_missing_key], outlier_detection}`; a hashing policy without a key has key `"<RANDOM>"`, as
/// the original dumped it.
pub fn loadbalancer(lb: &LoadBalancer) -> Value {
    let mut o = Map::new();
    o.insert("policy".into(), json!(lb.policy.name()));
    if let Policy::HashRing { key, on_missing_key } = &lb.policy {
        match key {
            Some(k) => {
                o.insert("key".into(), json!(k.to_string()));
                let m = match on_missing_key {
                    OnMissingKey::First => "first",
                    OnMissingKey::Random => "random",
                    OnMissingKey::Fail => "fail",
                };
                o.insert("on_missing_key".into(), json!(m));
            }
            None => drop(o.insert("key".into(), json!("<RANDOM>"))),
        }
    }
    let od = &lb.outlier_detection;
    o.insert(
        "outlier_detection".into(),
        json!({
            "consecutive_failures": od.consecutive_failures,
            "ejection_time": seconds(od.ejection_time),
            "max_ejection_time": seconds(od.max_ejection_time),
        }),
    );
    Value::Object(o)
}

/// `{retry_on, num_retries, timeout, connect_timeout, backoff: {initial, max, multiplier}}`, times in ms.
pub fn retry(r: &Retry) -> Value {
    let on = match r.retry_on {
        RetryOn::Never => "never",
        RetryOn::ConnectFailure => "connect-failure",
        RetryOn::Disconnect => "disconnect",
        RetryOn::Always => "always",
    };
    json!({
        "retry_on": on,
        "num_retries": r.num_retries,
        "timeout": millis(r.timeout),
        "connect_timeout": millis(r.connect_timeout),
        "backoff": {
            "initial": millis(r.backoff.initial),
            "max": millis(r.backoff.max),
            "multiplier": r.backoff.multiplier,
        },
    })
}

//! The agent's configuration on the wire: a flat [`Config`] as l7mp's xDS resources (`l7mp.config.v1`: Listener,
//! Cluster, ClusterLoad, RuleList, Rule, Route) and back.
//!
//! Encoding goes through the flat dump ([`crate::dump::config`]), so a resource carries exactly what a static
//! configuration file would; the protocol-specific parts travel as JSON (`google.protobuf.Struct`). Decoding
//! assembles the received resources into a flat configuration document and loads it with the static file's
//! loader ([`crate::load::config_from_value`]), so what an agent accepts over xDS is validated exactly like a file,
//! and an error names the object and field (`listeners["default/udp"].spec.port: ...`).

use crate::dump;
use crate::model::Config;
use l7mp_protos::config::v1 as pb;
use prost::Message;
use prost_types::value::Kind;
use serde_json::{Map, Number, Value, json};
use std::collections::BTreeMap;

/// The resource types, in make-before-break order: what a type refers to comes before it.
pub const TYPES: [&str; 6] = ["Cluster", "ClusterLoad", "Route", "Rule", "RuleList", "Listener"];

/// The xDS type URL of resource type `name` (one of [`TYPES`]).
pub fn type_url(name: &str) -> String {
    format!("{}{name}", pb::TYPE_PREFIX)
}

/// One encoded resource.
#[derive(Debug, Clone, PartialEq)]
pub struct WireResource {
    pub type_url: String,
    pub name: String,
    /// The protobuf encoding of the message.
    pub body: Vec<u8>,
}

/// Why received resources do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("resource type {0:?} is not an l7mp.config.v1 type (expected one of {TYPES:?})")]
    UnknownType(String),
    #[error("{type_url} {name:?}: cannot decode: {error}")]
    Decode {
        type_url: String,
        name: String,
        error: prost::DecodeError,
    },
    #[error("{type_url} {name:?}: the resource is named {inner:?} inside")]
    NameMismatch {
        type_url: String,
        name: String,
        inner: String,
    },
    #[error("ClusterLoad {0:?}: endpoints for a cluster that is not defined")]
    OrphanLoad(String),
    #[error(transparent)]
    Invalid(#[from] crate::ConfigError),
}

/// The resources of a configuration (its admin settings are not sent).
pub fn encode(cfg: &Config) -> Vec<WireResource> {
    let doc = dump::config(cfg);
    let mut out = Vec::new();
    let items = |key: &str| doc.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    let name_of = |o: &Value| o.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut push = |ty: &str, name: String, body: Vec<u8>| {
        out.push(WireResource {
            type_url: type_url(ty),
            name,
            body,
        })
    };
    for c in items("clusters") {
        let name = name_of(&c);
        let cluster = pb::Cluster {
            name: name.clone(),
            spec: c.get("spec").and_then(to_struct),
            loadbalancer: c.get("loadbalancer").and_then(to_struct),
            options: c.get("options").map(to_value),
        };
        push("Cluster", name.clone(), cluster.encode_to_vec());
        if let Some(Value::Array(eps)) = c.get("endpoints") {
            let endpoints = eps
                .iter()
                .map(|e| pb::Endpoint {
                    name: name_of(e),
                    address: e
                        .pointer("/spec/address")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .into(),
                    weight: e.get("weight").and_then(Value::as_u64).unwrap_or(1) as u32,
                })
                .collect();
            let load = pb::ClusterLoad {
                cluster: name.clone(),
                endpoints,
            };
            push("ClusterLoad", name, load.encode_to_vec());
        }
    }
    for r in items("routes") {
        let strings = |k: &str| -> Vec<String> {
            r.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        let route = pb::Route {
            name: name_of(&r),
            destination: r.get("destination").map(to_value),
            ingress: strings("ingress"),
            egress: strings("egress"),
            retry: r.get("retry").and_then(to_struct),
        };
        push("Route", name_of(&r), route.encode_to_vec());
    }
    for r in items("rules") {
        let rule = pb::Rule {
            name: name_of(&r),
            r#match: r.get("match").map(to_value),
            action: r.get("action").and_then(to_struct),
        };
        push("Rule", name_of(&r), rule.encode_to_vec());
    }
    for l in items("rulelists") {
        let rules = l
            .get("rules")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let list = pb::RuleList {
            name: name_of(&l),
            rules,
        };
        push("RuleList", name_of(&l), list.encode_to_vec());
    }
    for l in items("listeners") {
        let listener = pb::Listener {
            name: name_of(&l),
            spec: l.get("spec").and_then(to_struct),
            rules: l.get("rules").and_then(Value::as_str).unwrap_or_default().into(),
            options: l.get("options").and_then(to_struct),
        };
        push("Listener", name_of(&l), listener.encode_to_vec());
    }
    out
}

/// The flat configuration document of a set of received resources, with `base` (a static configuration document,
/// or `Value::Null`) underneath: its objects come first, the resources' after them.
pub fn document<'a>(
    base: &Value,
    resources: impl IntoIterator<Item = (&'a str, &'a str, &'a [u8])>,
) -> Result<Value, WireError> {
    let mut tables: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut loads: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (type_url, name, body) in resources {
        let ty = type_url
            .strip_prefix(pb::TYPE_PREFIX)
            .filter(|t| TYPES.contains(t))
            .ok_or_else(|| WireError::UnknownType(type_url.to_owned()))?;
        let decode_err = |error| WireError::Decode {
            type_url: type_url.to_owned(),
            name: name.to_owned(),
            error,
        };
        let check = |inner: &str| {
            if inner == name {
                Ok(())
            } else {
                Err(WireError::NameMismatch {
                    type_url: type_url.to_owned(),
                    name: name.to_owned(),
                    inner: inner.to_owned(),
                })
            }
        };
        let mut o = Map::new();
        let (table, object) = match ty {
            "Listener" => {
                let m = pb::Listener::decode(body).map_err(decode_err)?;
                check(&m.name)?;
                o.insert("name".into(), json!(m.name));
                o.insert("spec".into(), m.spec.map_or(json!({}), from_struct));
                o.insert("rules".into(), json!(m.rules));
                if let Some(opts) = m.options {
                    o.insert("options".into(), from_struct(opts));
                }
                ("listeners", o)
            }
            "Cluster" => {
                let m = pb::Cluster::decode(body).map_err(decode_err)?;
                check(&m.name)?;
                o.insert("name".into(), json!(m.name));
                o.insert("spec".into(), m.spec.map_or(json!({}), from_struct));
                if let Some(lb) = m.loadbalancer {
                    o.insert("loadbalancer".into(), from_struct(lb));
                }
                if let Some(opts) = m.options {
                    o.insert("options".into(), from_value(opts));
                }
                ("clusters", o)
            }
            "ClusterLoad" => {
                let m = pb::ClusterLoad::decode(body).map_err(decode_err)?;
                check(&m.cluster)?;
                let eps = m
                    .endpoints
                    .into_iter()
                    .map(|e| json!({"name": e.name, "spec": {"address": e.address}, "weight": e.weight}))
                    .collect();
                loads.insert(m.cluster, eps);
                continue;
            }
            "RuleList" => {
                let m = pb::RuleList::decode(body).map_err(decode_err)?;
                check(&m.name)?;
                o.insert("name".into(), json!(m.name));
                o.insert("rules".into(), json!(m.rules));
                ("rulelists", o)
            }
            "Rule" => {
                let m = pb::Rule::decode(body).map_err(decode_err)?;
                check(&m.name)?;
                o.insert("name".into(), json!(m.name));
                if let Some(mt) = m.r#match {
                    o.insert("match".into(), from_value(mt));
                }
                o.insert("action".into(), m.action.map_or(json!({}), from_struct));
                ("rules", o)
            }
            _ => {
                let m = pb::Route::decode(body).map_err(decode_err)?;
                check(&m.name)?;
                o.insert("name".into(), json!(m.name));
                o.insert("destination".into(), m.destination.map_or(Value::Null, from_value));
                o.insert("ingress".into(), json!(m.ingress));
                o.insert("egress".into(), json!(m.egress));
                if let Some(r) = m.retry {
                    o.insert("retry".into(), from_struct(r));
                }
                ("routes", o)
            }
        };
        tables.entry(table).or_default().push(Value::Object(object));
    }
    for c in tables.entry("clusters").or_default().iter_mut() {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        if let (Some(eps), Value::Object(o)) = (loads.remove(&name), c) {
            o.insert("endpoints".into(), Value::Array(eps));
        }
    }
    if let Some(orphan) = loads.into_keys().next() {
        return Err(WireError::OrphanLoad(orphan));
    }
    let mut doc = match base {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    for (table, items) in tables {
        match doc.get_mut(table) {
            Some(Value::Array(existing)) => existing.extend(items),
            _ => {
                doc.insert(table.to_owned(), Value::Array(items));
            }
        }
    }
    Ok(Value::Object(doc))
}

/// Loads received resources (over `base`) into a validated configuration.
pub fn decode<'a>(
    base: &Value,
    resources: impl IntoIterator<Item = (&'a str, &'a str, &'a [u8])>,
) -> Result<Config, WireError> {
    let doc = document(base, resources)?;
    crate::load::config_from_value(&doc).map_err(|e| WireError::Invalid(crate::edit::name_errors(e, &doc)))
}

/// JSON → `google.protobuf.Value`.
pub fn to_value(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A JSON object → `google.protobuf.Struct` (`None` for anything else).
pub fn to_struct(v: &Value) -> Option<prost_types::Struct> {
    match to_value(v).kind {
        Some(Kind::StructValue(s)) => Some(s),
        _ => None,
    }
}

/// `google.protobuf.Value` → JSON. Numbers without a fraction (that fit) come back as integers, since protobuf has
/// only doubles and the loader expects integers for ports, weights and the like.
pub fn from_value(v: prost_types::Value) -> Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::Number(Number::from(n as i64))
            } else {
                Number::from_f64(n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

/// `google.protobuf.Struct` → a JSON object.
pub fn from_struct(s: prost_types::Struct) -> Value {
    Value::Object(s.fields.into_iter().map(|(k, v)| (k, from_value(v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, parse_config};

    const CFG: &str = r#"
listeners:
  - name: udp
    spec: { protocol: UDP, port: 9001, idle_timeout: 2.5 }
    rules:
      - match: { op: starts, path: /IP/src_addr, value: "127." }
        action: { route: { destination: up, ingress: [ enc ], retry: { retry_on: always, num_retries: 3 } } }
      - action: { rewrite: [ { path: /labels/x, value: 1 } ], route: { destination: [ { cluster: up, weight: 9 }, { cluster: echo, weight: 1 } ] } }
clusters:
  - name: up
    spec: { protocol: UDP, port: 9100 }
    endpoints: [ { name: a, spec: { address: 127.0.0.1 }, weight: 2 }, { spec: { address: 127.0.0.2 } } ]
    loadbalancer: { policy: RoundRobin }
    options: { note: [1, "x", null] }
  - name: echo
    spec: { protocol: Echo }
  - name: enc
    spec: { protocol: JSONEncap }
"#;

    #[test]
    fn a_configuration_survives_the_wire() {
        let cfg = parse_config(CFG, Format::Yaml).expect("valid");
        let wire = encode(&cfg);
        let types: Vec<&str> = wire
            .iter()
            .map(|r| r.type_url.rsplit('.').next().unwrap_or(""))
            .collect();
        assert!(
            types.contains(&"ClusterLoad") && types.contains(&"Listener"),
            "{types:?}"
        );
        let back = decode(
            &Value::Null,
            wire.iter()
                .map(|r| (r.type_url.as_str(), r.name.as_str(), r.body.as_slice())),
        )
        .expect("decodes");
        assert_eq!(back, cfg);
    }

    #[test]
    fn bad_resources_are_named() {
        let cfg = parse_config(CFG, Format::Yaml).expect("valid");
        let mut wire = encode(&cfg);
        // A listener on a bad port: the loader's error names it.
        let bad = pb::Listener {
            name: "bad".into(),
            spec: to_struct(&json!({"protocol": "UDP", "port": 70000})),
            rules: "nope".into(),
            options: None,
        };
        wire.push(WireResource {
            type_url: type_url("Listener"),
            name: "bad".into(),
            body: bad.encode_to_vec(),
        });
        let err = decode(
            &Value::Null,
            wire.iter()
                .map(|r| (r.type_url.as_str(), r.name.as_str(), r.body.as_slice())),
        )
        .expect_err("invalid")
        .to_string();
        assert!(err.contains("listeners[\"bad\"].spec.port"), "{err}");
        assert!(err.contains("rulelist \"nope\" is not defined"), "{err}");
        let err = decode(&Value::Null, [("type.googleapis.com/envoy.Listener", "x", &b""[..])]).expect_err("type");
        assert!(err.to_string().contains("not an l7mp.config.v1 type"), "{err}");
        let err = decode(&Value::Null, [(type_url("Rule").as_str(), "x", &b"\xff"[..])]).expect_err("bytes");
        assert!(err.to_string().contains("cannot decode"), "{err}");
    }

    #[test]
    fn resources_go_over_a_static_base() {
        let base = json!({"clusters": [{"name": "local", "spec": {"protocol": "Echo"}}]});
        let cfg = parse_config(CFG, Format::Yaml).expect("valid");
        let wire = encode(&cfg);
        let merged = decode(
            &base,
            wire.iter()
                .map(|r| (r.type_url.as_str(), r.name.as_str(), r.body.as_slice())),
        )
        .expect("decodes");
        assert_eq!(merged.clusters.len(), cfg.clusters.len() + 1);
        assert_eq!(merged.clusters[0].name, "local");
    }
}

//! Loading a configuration document: parse YAML/JSON, decode every object, lift inline objects into named tables
//! (with the original l7mp's generated names), and check every cross-reference.
//!
//! Generated names follow the original: `<listener>-RuleList-N`, `<rulelist>-Rule-N`, `<rule>-Route-N`,
//! `<route>-Cluster-N`, `<route>-ingress-Cluster-N`, `<route>-egress-Cluster-N`, `<cluster>-EndPoint-N`, where N is
//! a per-kind counter starting at 0 and `_1`, `_2`... is appended on a collision (with a name defined so far, or with
//! any name written explicitly anywhere in the document). Every generated name is recorded in
//! [`Config::generated`]. A rule's `match` may be missing, any string, or `{"match": "*"}` (how the original dumps
//! a wildcard): all three match every session.

use crate::decode::{Decoder, Obj, describe};
use crate::error::{ConfigError, FieldError};
use crate::model::*;
use crate::path::FieldPath;
use crate::pointer::Pointer;
use crate::predicate::Predicate;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

mod tls;

/// The syntax of a configuration document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// `.yaml`/`.yml` (any case) is YAML, anything else JSON, as the original decided by extension.
    pub fn from_path(path: &str) -> Format {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Format::Yaml
        } else {
            Format::Json
        }
    }
}

/// Parses and validates a whole configuration.
pub fn parse_config(text: &str, format: Format) -> Result<Config, ConfigError> {
    let doc: Value = match format {
        Format::Yaml => serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax {
            format: "YAML",
            message: e.to_string(),
        })?,
        Format::Json => serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })?,
    };
    config_from_value(&doc)
}

/// Validates a configuration that is already a JSON value.
pub fn config_from_value(doc: &Value) -> Result<Config, ConfigError> {
    let mut b = Builder::default();
    b.document(doc);
    b.finish()
}

use ObjectKind as Kind;

#[derive(Default)]
struct Builder {
    d: Decoder,
    cfg: Config,
    /// Where each defined name was defined.
    defined: HashMap<(Kind, String), FieldPath>,
    counters: HashMap<Kind, usize>,
    /// References to check once everything is defined: (kind, name, where the reference is written).
    refs: Vec<(Kind, String, FieldPath)>,
    /// Where each rule's `apply` is written, by rule name (for loop errors).
    apply_paths: HashMap<String, FieldPath>,
    /// Every name written explicitly anywhere in the document: generated names avoid them, so that an inline object
    /// decoded before an explicitly named one of the same kind cannot take its name.
    reserved: BTreeSet<(Kind, String)>,
}

const TOP: &[&str] = &[
    "admin",
    "listeners",
    "clusters",
    "rulelists",
    "rules",
    "routes",
    "endpoints",
    "sessions",
];

impl Builder {
    fn finish(self) -> Result<Config, ConfigError> {
        let mut errors: Vec<FieldError> = self.d.into_errors();
        for (kind, name, path) in &self.refs {
            if !self.defined.contains_key(&(*kind, name.clone())) {
                errors.push(FieldError::new(
                    path,
                    format!("{} {name:?} is not defined", kind.noun()),
                ));
            }
        }
        if errors.is_empty() {
            errors.extend(apply_loops(&self.cfg, &self.apply_paths));
        }
        if errors.is_empty() {
            Ok(self.cfg)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    fn document(&mut self, doc: &Value) {
        let root = FieldPath::root();
        if doc.is_null() {
            return; // an empty file is an empty configuration
        }
        let Some(o) = self.d.object(doc, &root, TOP) else {
            return;
        };
        self.reserved = explicit_names(doc);
        if let Some(a) = o.get("admin") {
            self.admin(a, &o.at("admin"));
        }
        // The original's load order, which also fixes the order of generated names.
        for key in ["clusters", "listeners", "rulelists", "rules", "routes"] {
            let Some(list) = o.get(key) else { continue };
            let path = o.at(key);
            let Value::Array(items) = list else {
                self.d
                    .error(&path, format!("expected an array, got {}", describe(list)));
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                let p = path.index(i);
                match key {
                    "clusters" => drop(self.cluster(item, &p, None)),
                    "listeners" => self.listener(item, &p),
                    "rulelists" => drop(self.rulelist(item, &p, None)),
                    "rules" => drop(self.rule(item, &p, None)),
                    _ => drop(self.route(item, &p, None)),
                }
            }
        }
    }

    /// Records a new name, rejecting duplicates.
    fn define(&mut self, kind: Kind, name: &str, path: &FieldPath) -> bool {
        if let Some(first) = self.defined.get(&(kind, name.to_owned())) {
            let msg = format!("{} {name:?} already defined at {first}", kind.noun());
            self.d.error(&path.key("name"), msg);
            return false;
        }
        self.defined.insert((kind, name.to_owned()), path.clone());
        true
    }

    /// A fresh generated name `<prefix>-<label>-N`.
    fn generate(&mut self, kind: Kind, prefix: &str, label: &str) -> String {
        let n = self.counters.entry(kind).or_insert(0);
        let base = format!("{prefix}-{label}-{n}");
        *n += 1;
        let mut name = base.clone();
        let mut i = 1;
        while self.defined.contains_key(&(kind, name.clone())) || self.reserved.contains(&(kind, name.clone())) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.cfg.generated.insert((kind, name.clone()));
        name
    }

    /// The `name` field, or a generated one for inline objects.
    fn name_of(&mut self, o: Obj<'_>, generated: Option<String>) -> Option<String> {
        match (o.get("name"), generated) {
            (Some(v), _) => self.d.name(v, &o.at("name")),
            (None, Some(g)) => Some(g),
            (None, None) => {
                self.d.error(&o.at("name"), "missing required field");
                None
            }
        }
    }

    fn admin(&mut self, v: &Value, path: &FieldPath) {
        let fields = [
            "log_level",
            "log_file",
            "access_log_path",
            "strict",
            "offload",
            "offload_ifs",
            "offload_tcp",
        ];
        let Some(o) = self.d.object(v, path, &fields) else {
            return;
        };
        let mut admin = Admin::default();
        if let Some(l) = o.get("log_level")
            && let Some(s) = self.d.string(l, &o.at("log_level"))
        {
            {
                const LEVELS: &[&str] = &["silly", "verbose", "info", "notice", "http", "warn", "error", "silent"];
                if LEVELS.contains(&s.as_str()) {
                    admin.log_level = Some(s);
                } else {
                    self.d.error(
                        &o.at("log_level"),
                        format!("unknown log level {s:?} (expected one of: {})", LEVELS.join(", ")),
                    );
                }
            }
        }
        if let Some(f) = o.get("log_file") {
            admin.log_file = self.d.string(f, &o.at("log_file"));
        }
        if let Some(f) = o.get("access_log_path") {
            admin.access_log_path = self.d.string(f, &o.at("access_log_path"));
        }
        if let Some(s) = o.get("strict") {
            admin.strict = self.d.bool(s, &o.at("strict")).unwrap_or(false);
        }
        if let Some(m) = o.get("offload")
            && let Some(s) = self.d.string(m, &o.at("offload"))
        {
            match crate::model::OffloadMode::parse(&s) {
                Some(mode) => admin.offload = mode,
                None => self.d.error(
                    &o.at("offload"),
                    format!("unknown offload mode {s:?} (expected auto, off or force; the original's init, no_init and disable work too)"),
                ),
            }
        }
        if let Some(v) = o.get("offload_tcp") {
            admin.offload_tcp = self.d.bool(v, &o.at("offload_tcp")).unwrap_or(false);
        }
        if let Some(v) = o.get("offload_ifs") {
            let path = o.at("offload_ifs");
            match v {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(name) = self.d.string(item, &path.index(i)) {
                            admin.offload_ifs.push(name);
                        }
                    }
                }
                Value::String(s) if s == "all" => {}
                other => self.d.error(
                    &path,
                    format!(
                        "expected a list of interface names, got {}",
                        crate::decode::describe(other)
                    ),
                ),
            }
        }
        self.cfg.admin = admin;
    }

    fn listener(&mut self, v: &Value, path: &FieldPath) {
        let Some(o) = self.d.object(v, path, &["name", "spec", "rules", "options"]) else {
            return;
        };
        let name = self.name_of(o, None);
        let spec = self
            .d
            .required(o, "spec")
            .and_then(|s| self.listener_spec(s, &o.at("spec")));
        let options = match o.get("options") {
            Some(opt) => self.listener_options(opt, &o.at("options")),
            None => Some(ListenerOptions::default()),
        };
        let Some(name) = name else { return };
        let rules = match self.d.required(o, "rules") {
            Some(Value::String(list)) => {
                self.refs.push((Kind::RuleList, list.clone(), o.at("rules")));
                Some(list.clone())
            }
            Some(inline @ Value::Array(_)) => {
                let list_name = self.generate(Kind::RuleList, &name, "RuleList");
                self.defined.insert((Kind::RuleList, list_name.clone()), o.at("rules"));
                self.rulelist_items(&list_name, inline, &o.at("rules"));
                Some(list_name)
            }
            Some(other) => {
                let msg = format!("expected a RuleList name or an array of rules, got {}", describe(other));
                self.d.error(&o.at("rules"), msg);
                None
            }
            None => None,
        };
        if !self.define(Kind::Listener, &name, path) {
            return;
        }
        if let (Some(spec), Some(rules), Some(options)) = (spec, rules, options) {
            self.cfg.listeners.push(Listener {
                name,
                spec,
                rules,
                options,
            });
        }
    }

    fn listener_options(&mut self, v: &Value, path: &FieldPath) -> Option<ListenerOptions> {
        let o = self.d.object(v, path, &["track"])?;
        let mut opts = ListenerOptions::default();
        if let Some(t) = o.get("track") {
            opts.track = Some(Duration::from_secs_f64(self.d.seconds(t, &o.at("track"))?));
        }
        Some(opts)
    }

    /// Reads `spec.protocol` and checks it is one of `known`.
    fn protocol(&mut self, v: &Value, path: &FieldPath, known: &[&str], side: &str) -> Option<String> {
        let Value::Object(map) = v else {
            self.d.error(path, format!("expected an object, got {}", describe(v)));
            return None;
        };
        let ppath = path.key("protocol");
        let Some(p) = map.get("protocol") else {
            self.d
                .error(&ppath, format!("missing required field (one of: {})", known.join(", ")));
            return None;
        };
        let p = self.d.string(p, &ppath)?;
        if known.contains(&p.as_str()) {
            return Some(p);
        }
        const LATER: &[&str] = &["Test"];
        if LATER.contains(&p.as_str()) {
            self.d.error(
                &ppath,
                format!("protocol {p:?} is not supported as a {side} by this agent yet (see docs/protocols.md)"),
            );
        } else {
            self.d.error(
                &ppath,
                format!("unknown protocol {p:?} (expected one of: {})", known.join(", ")),
            );
        }
        None
    }

    fn listener_spec(&mut self, v: &Value, path: &FieldPath) -> Option<ListenerSpec> {
        let proto = self.protocol(
            v,
            path,
            &[
                "UDP",
                "TCP",
                "UnixDomainSocket",
                "UnixDgram",
                "UNIX/dgram",
                "WebSocket",
                "WS",
                "JSONSocket",
                "HTTP",
                "PIPE",
                "AF_PACKET",
                "SCTP",
                "TLS",
                "DTLS",
            ],
            "listener",
        )?;
        match proto.as_str() {
            "JSONSocket" => {
                let o = self.d.object(v, path, &["protocol", "transport", "transport_spec"])?;
                let (t, tp) = self.transport(o, "listener")?;
                if let Some(p @ ("JSONSocket" | "HTTP")) = t.get("protocol").and_then(Value::as_str) {
                    self.d.error(
                        &tp.key("protocol"),
                        format!("{p} cannot be the transport of a JSONSocket"),
                    );
                    return None;
                }
                Some(ListenerSpec::JsonSocket(Box::new(self.listener_spec(t, &tp)?)))
            }
            "UDP" => {
                let o = self.d.object(
                    v,
                    path,
                    &["protocol", "port", "address", "connect", "options", "idle_timeout"],
                )?;
                self.udp_listener(o).map(ListenerSpec::Udp)
            }
            "TCP" | "WebSocket" | "WS" | "HTTP" | "SCTP" | "TLS" => {
                // `path` is in the original's HTTP schema but was never used; accepted and ignored.
                let allowed: &[&str] = match proto.as_str() {
                    "HTTP" => &["protocol", "port", "address", "path", "tls"],
                    "WebSocket" | "WS" | "TLS" => &["protocol", "port", "address", "tls"],
                    _ => &["protocol", "port", "address"],
                };
                let o = self.d.object(v, path, allowed)?;
                let port = self.d.required(o, "port").and_then(|p| self.d.port(p, &o.at("port")));
                let address = self.address_or_any(o);
                let tls = match o.get("tls") {
                    Some(t) => Some(Box::new(tls::listener(&mut self.d, t, &o.at("tls"))?)),
                    None if proto == "TLS" => {
                        self.d.required(o, "tls");
                        return None;
                    }
                    None => None,
                };
                let spec = TcpListenerSpec {
                    address: address?,
                    port: port?,
                    tls,
                };
                Some(match proto.as_str() {
                    "TCP" => ListenerSpec::Tcp(spec),
                    "HTTP" => ListenerSpec::Http(spec),
                    "SCTP" => ListenerSpec::Sctp(spec),
                    "TLS" => ListenerSpec::Tls(spec),
                    _ => ListenerSpec::WebSocket(spec),
                })
            }
            "DTLS" => {
                let o = self
                    .d
                    .object(v, path, &["protocol", "port", "address", "idle_timeout", "tls"])?;
                let port = self.d.required(o, "port").and_then(|p| self.d.port(p, &o.at("port")));
                let address = self.address_or_any(o);
                let idle_timeout = self.idle_timeout(o);
                let tls = self
                    .d
                    .required(o, "tls")
                    .and_then(|t| tls::listener(&mut self.d, t, &o.at("tls")));
                Some(ListenerSpec::Dtls(DtlsListenerSpec {
                    address: address?,
                    port: port?,
                    idle_timeout: idle_timeout?,
                    tls: Box::new(tls?),
                }))
            }
            "PIPE" => {
                let o = self.d.object(v, path, &["protocol", "filename"])?;
                let filename = self.file_path(o, "FIFO")?;
                Some(ListenerSpec::Pipe(PipeListenerSpec { filename }))
            }
            "AF_PACKET" => {
                let o = self
                    .d
                    .object(v, path, &["protocol", "interface", "ethertype", "idle_timeout"])?;
                let interface = self
                    .d
                    .required(o, "interface")
                    .and_then(|i| self.interface(i, &o.at("interface")));
                let ethertype = self.ethertype(o);
                let idle_timeout = self.idle_timeout(o)?;
                Some(ListenerSpec::AfPacket(AfPacketListenerSpec {
                    interface: interface?,
                    ethertype: ethertype?,
                    idle_timeout,
                }))
            }
            "UnixDgram" | "UNIX/dgram" => {
                let o = self.d.object(v, path, &["protocol", "filename", "idle_timeout"])?;
                let filename = self.file_path(o, "socket file")?;
                let idle_timeout = self.idle_timeout(o)?;
                Some(ListenerSpec::UnixDgram(UnixDgramListenerSpec {
                    filename,
                    idle_timeout,
                }))
            }
            _ => {
                let o = self.d.object(v, path, &["protocol", "filename"])?;
                let filename = self.file_path(o, "socket file")?;
                Some(ListenerSpec::UnixDomainSocket(UnixListenerSpec { filename }))
            }
        }
    }

    /// A JSONSocket's `transport` (or `transport_spec`) and its path.
    fn transport<'a>(&mut self, o: Obj<'a>, side: &str) -> Option<(&'a Value, FieldPath)> {
        let key = if o.get("transport").is_some() {
            "transport"
        } else {
            "transport_spec"
        };
        match o.get(key) {
            Some(t) => Some((t, o.at(key))),
            None => {
                let msg = format!(
                    "missing required field (a UDP, TCP, UnixDomainSocket, UnixDgram or WebSocket {side} spec)"
                );
                self.d.error(&o.at("transport"), msg);
                None
            }
        }
    }

    /// `idle_timeout` in seconds (`0`: never; default [`DEFAULT_UDP_IDLE_TIMEOUT`]).
    fn idle_timeout(&mut self, o: Obj<'_>) -> Option<Option<Duration>> {
        Some(match o.get("idle_timeout") {
            Some(t) => match self.d.seconds(t, &o.at("idle_timeout"))? {
                0.0 => None,
                s => Some(Duration::from_secs_f64(s)),
            },
            None => Some(DEFAULT_UDP_IDLE_TIMEOUT),
        })
    }

    /// A required, non-empty `filename`; `what` names the file in the error (`socket file`, `FIFO`).
    fn file_path(&mut self, o: Obj<'_>, what: &str) -> Option<String> {
        let f = self
            .d
            .required(o, "filename")
            .and_then(|f| self.d.string(f, &o.at("filename")))?;
        if f.is_empty() {
            self.d.error(
                &o.at("filename"),
                format!("expected a {what} path, got an empty string"),
            );
            return None;
        }
        Some(f)
    }

    /// A network interface name as Linux accepts it: 1..15 bytes, not `.` or `..`, without `/`, `:` or white space.
    fn interface(&mut self, v: &Value, path: &FieldPath) -> Option<String> {
        let name = self.d.string(v, path)?;
        match interface_problem(&name) {
            None => Some(name),
            Some(why) => {
                self.d
                    .error(path, format!("expected a network interface name, got {name:?} ({why})"));
                None
            }
        }
    }

    /// The optional `ethertype`: `None` when absent (every EtherType).
    fn ethertype(&mut self, o: Obj<'_>) -> Option<Option<u16>> {
        let Some(v) = o.get("ethertype") else {
            return Some(None);
        };
        match parse_ethertype(v) {
            Some(t) => Some(Some(t)),
            None => {
                // YAML reads `0x12` as 18: show a number in hex too.
                let got = match v.as_u64() {
                    Some(n) => format!("{n} (0x{n:04x})"),
                    None => describe(v),
                };
                self.d.error(
                    &o.at("ethertype"),
                    format!("expected an EtherType 0x0600..0xffff (a number or a \"0x...\" hex string), got {got}"),
                );
                None
            }
        }
    }

    fn address_or_any(&mut self, o: Obj<'_>) -> Option<IpAddr> {
        match o.get("address") {
            Some(a) => self.d.ip(a, &o.at("address")),
            None => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        }
    }

    fn udp_listener(&mut self, o: Obj<'_>) -> Option<UdpListenerSpec> {
        let port = match o.get("port") {
            Some(p) => self.d.port(p, &o.at("port")),
            None => Some(0),
        };
        let address = self.address_or_any(o);
        let (mut connect_address, mut connect_port) = (None, None);
        if let Some(c) = o.get("connect") {
            let cp = o.at("connect");
            if let Some(co) = self.d.object(c, &cp, &["address", "port"]) {
                if let Some(a) = co.get("address") {
                    connect_address = self.d.ip(a, &co.at("address"));
                }
                if let Some(p) = co.get("port") {
                    connect_port = self.d.port(p, &co.at("port"));
                }
            }
        }
        let full_connect = connect_address.is_some() && connect_port.is_some();
        let mut mode = if full_connect {
            UdpMode::Singleton
        } else {
            UdpMode::Server
        };
        if let Some(opts) = o.get("options") {
            let op = o.at("options");
            if let Some(oo) = self.d.object(opts, &op, &["mode"])
                && let Some(m) = oo.get("mode")
            {
                match self.d.string(m, &oo.at("mode")).as_deref() {
                    Some("server") => mode = UdpMode::Server,
                    Some("singleton") if full_connect => mode = UdpMode::Singleton,
                    Some("singleton") => self.d.error(
                        &oo.at("mode"),
                        "singleton mode needs both connect.address and connect.port",
                    ),
                    Some(other) => self.d.error(
                        &oo.at("mode"),
                        format!("expected \"server\" or \"singleton\", got {other:?}"),
                    ),
                    None => {}
                }
            }
        }
        let idle_timeout = self.idle_timeout(o)?;
        Some(UdpListenerSpec {
            address: address?,
            port: port?,
            connect_address,
            connect_port,
            mode,
            idle_timeout,
        })
    }

    /// Decodes a cluster (top-level, or inline with a generated name) and returns its name.
    fn cluster(&mut self, v: &Value, path: &FieldPath, generated: Option<String>) -> Option<String> {
        let o = self
            .d
            .object(v, path, &["name", "spec", "endpoints", "loadbalancer", "options"])?;
        let name = self.name_of(o, generated);
        let spec = self
            .d
            .required(o, "spec")
            .and_then(|s| self.cluster_spec(s, &o.at("spec")));
        let loadbalancer = match o.get("loadbalancer") {
            Some(lb) => self.loadbalancer(lb, &o.at("loadbalancer")),
            None => Some(LoadBalancer::default()),
        };
        let name = name?;
        let mut endpoints = Vec::new();
        if let Some(eps) = o.get("endpoints") {
            let ep_path = o.at("endpoints");
            match &spec {
                Some(s) if !s.takes_endpoints() => {
                    let msg = format!("a cluster of protocol {} takes no endpoints", s.protocol());
                    self.d.error(&ep_path, msg);
                }
                _ => {
                    let net = match &spec {
                        Some(ClusterSpec::JsonSocket { transport, .. }) => Some(&**transport),
                        other => other.as_ref(),
                    };
                    let unix = matches!(
                        net,
                        Some(ClusterSpec::UnixDomainSocket | ClusterSpec::UnixDgram | ClusterSpec::Pipe)
                    );
                    let interface = matches!(net, Some(ClusterSpec::AfPacket { .. }));
                    if let Some(list) = self.d.array(eps, &ep_path, |_, v, p| Some((v.clone(), p.clone()))) {
                        for (v, p) in list {
                            if let Some(ep) = self.endpoint(&v, &p, &name, unix, interface) {
                                endpoints.push(ep);
                            }
                        }
                    }
                }
            }
        }
        if !endpoints.is_empty() && endpoints.iter().all(|e| e.weight == 0) {
            self.d.error(
                &o.at("endpoints"),
                "every endpoint has weight 0, so no session could be sent anywhere (weight 0 takes an endpoint out \
                 of rotation)",
            );
        }
        if !self.define(Kind::Cluster, &name, path) {
            return None;
        }
        self.cfg.clusters.push(Cluster {
            name: name.clone(),
            spec: spec?,
            endpoints,
            loadbalancer: loadbalancer?,
            options: o.get("options").cloned(),
        });
        Some(name)
    }

    fn bind(&mut self, o: Obj<'_>) -> Option<Option<Bind>> {
        let Some(b) = o.get("bind") else {
            return Some(None);
        };
        let bp = o.at("bind");
        let bo = self.d.object(b, &bp, &["address", "port"])?;
        let address = match bo.get("address") {
            Some(a) => Some(self.d.ip(a, &bo.at("address"))?),
            None => None,
        };
        let port = match bo.get("port") {
            Some(p) => self.d.port_or_any(p, &bo.at("port"))?,
            None => 0,
        };
        Some(Some(Bind { address, port }))
    }

    fn cluster_spec(&mut self, v: &Value, path: &FieldPath) -> Option<ClusterSpec> {
        const KNOWN: &[&str] = &[
            "UDP",
            "TCP",
            "UnixDomainSocket",
            "Echo",
            "Discard",
            "Logger",
            "Stdio",
            "JSONEncap",
            "JSONDecap",
            "StdioFork",
            "STDIO-fork",
            "Sync",
            "L7mpController",
            "Prometheus",
            "Metric",
            "UnixDgram",
            "UNIX/dgram",
            "WebSocket",
            "WS",
            "JSONSocket",
            "HTTP",
            "PIPE",
            "AF_PACKET",
            "SCTP",
            "TLS",
            "DTLS",
        ];
        let proto = self.protocol(v, path, KNOWN, "cluster")?;
        match proto.as_str() {
            "TLS" | "DTLS" => {
                let o = self.d.object(v, path, &["protocol", "port", "bind", "tls"])?;
                let port = self.d.required(o, "port").and_then(|p| self.d.port(p, &o.at("port")));
                let bind = self.bind(o);
                let tls = self
                    .d
                    .required(o, "tls")
                    .and_then(|t| tls::cluster(&mut self.d, t, &o.at("tls")));
                let (port, bind, tls) = (port?, bind?, Box::new(tls?));
                Some(if proto == "TLS" {
                    ClusterSpec::Tls { port, bind, tls }
                } else {
                    ClusterSpec::Dtls { port, bind, tls }
                })
            }
            "UDP" | "TCP" | "SCTP" => {
                let o = self.d.object(v, path, &["protocol", "port", "bind"])?;
                let port = self.d.required(o, "port").and_then(|p| self.d.port(p, &o.at("port")));
                let bind = self.bind(o)?;
                let port = port?;
                Some(match proto.as_str() {
                    "UDP" => ClusterSpec::Udp { port, bind },
                    "SCTP" => ClusterSpec::Sctp { port, bind },
                    _ => ClusterSpec::Tcp { port, bind },
                })
            }
            "AF_PACKET" => {
                let o = self.d.object(v, path, &["protocol", "ethertype"])?;
                let ethertype = self.ethertype(o)?;
                Some(ClusterSpec::AfPacket { ethertype })
            }
            "JSONSocket" => {
                let o = self
                    .d
                    .object(v, path, &["protocol", "transport", "transport_spec", "header"])?;
                let (t, tp) = self.transport(o, "cluster")?;
                let transport = self.cluster_spec(t, &tp)?;
                if !transport.takes_endpoints()
                    || matches!(transport, ClusterSpec::JsonSocket { .. } | ClusterSpec::Http { .. })
                {
                    let msg = format!("a JSONSocket needs a network transport, got {}", transport.protocol());
                    self.d.error(&tp.key("protocol"), msg);
                    return None;
                }
                let header = match o.get("header") {
                    Some(h) => self.d.array(h, &o.at("header"), header_item)?,
                    None => Vec::new(),
                };
                Some(ClusterSpec::JsonSocket {
                    transport: Box::new(transport),
                    header,
                })
            }
            "HTTP" => {
                let o = self.d.object(v, path, &["protocol", "port", "version", "tls"])?;
                let tls = match o.get("tls") {
                    Some(t) => Some(Box::new(tls::cluster(&mut self.d, t, &o.at("tls"))?)),
                    None => None,
                };
                let port = self.d.required(o, "port").and_then(|p| self.d.port(p, &o.at("port")));
                let version = match o.get("version") {
                    None => HttpVersion::Http1,
                    Some(v) => match v {
                        Value::String(s) if s == "1.1" || s == "HTTP/1.1" => HttpVersion::Http1,
                        Value::String(s) if s == "2" || s == "2.0" || s == "HTTP/2" => HttpVersion::Http2,
                        Value::Number(n) if n.as_f64() == Some(1.1) => HttpVersion::Http1,
                        Value::Number(n) if n.as_f64() == Some(2.0) => HttpVersion::Http2,
                        other => {
                            let msg = format!("expected \"1.1\" or \"2\", got {}", describe(other));
                            self.d.error(&o.at("version"), msg);
                            return None;
                        }
                    },
                };
                Some(ClusterSpec::Http {
                    port: port?,
                    version,
                    tls,
                })
            }
            "WebSocket" | "WS" => {
                let o = self.d.object(v, path, &["protocol", "port", "tls"])?;
                let port = self.d.required(o, "port").and_then(|p| self.d.port(p, &o.at("port")));
                let tls = match o.get("tls") {
                    Some(t) => Some(Box::new(tls::cluster(&mut self.d, t, &o.at("tls"))?)),
                    None => None,
                };
                Some(ClusterSpec::WebSocket { port: port?, tls })
            }
            "Logger" => {
                let o = self.d.object(v, path, &["protocol", "log_file", "log_prefix"])?;
                let log_file = match o.get("log_file") {
                    Some(f) => self.d.string(f, &o.at("log_file"))?,
                    None => "-".to_owned(),
                };
                let log_prefix = match o.get("log_prefix") {
                    Some(p) => Some(self.d.string(p, &o.at("log_prefix"))?),
                    None => None,
                };
                Some(ClusterSpec::Logger { log_file, log_prefix })
            }
            "StdioFork" | "STDIO-fork" => {
                let o = self.d.object(v, path, &["protocol", "command"])?;
                let cp = o.at("command");
                let command = match self.d.required(o, "command")? {
                    Value::String(line) => vec!["/bin/sh".to_owned(), "-c".to_owned(), line.clone()],
                    list @ Value::Array(_) => self.d.array(list, &cp, |d, v, p| d.string(v, p))?,
                    other => {
                        let msg = format!(
                            "expected a command line or an array of arguments, got {}",
                            describe(other)
                        );
                        self.d.error(&cp, msg);
                        return None;
                    }
                };
                if command.first().is_none_or(|c| c.is_empty()) {
                    self.d.error(&cp, "expected a program to run, got nothing");
                    return None;
                }
                Some(ClusterSpec::StdioFork { command })
            }
            "Sync" => {
                let o = self.d.object(v, path, &["protocol", "query"])?;
                let q = self
                    .d
                    .required(o, "query")
                    .and_then(|q| self.d.string(q, &o.at("query")))?;
                match Pointer::parse(&q) {
                    Ok(query) if !query.is_root() => Some(ClusterSpec::Sync { query }),
                    Ok(_) => {
                        self.d.error(
                            &o.at("query"),
                            "expected a JSON pointer into the session metadata, got \"\"",
                        );
                        None
                    }
                    Err(e) => {
                        self.d.error(&o.at("query"), e);
                        None
                    }
                }
            }
            "Metric" => {
                // The original's schema has counter names, which its code ignored: the counters are fixed.
                self.d
                    .object(v, path, &["protocol", "byteCounterName", "packetCounterName"])?;
                Some(ClusterSpec::Metric)
            }
            other => {
                self.d.object(v, path, &["protocol"])?;
                Some(match other {
                    "UnixDomainSocket" => ClusterSpec::UnixDomainSocket,
                    "UnixDgram" | "UNIX/dgram" => ClusterSpec::UnixDgram,
                    "PIPE" => ClusterSpec::Pipe,
                    "Echo" => ClusterSpec::Echo,
                    "Discard" => ClusterSpec::Discard,
                    "Stdio" => ClusterSpec::Stdio,
                    "JSONEncap" => ClusterSpec::JsonEncap,
                    "L7mpController" => ClusterSpec::L7mpController,
                    "Prometheus" => ClusterSpec::Prometheus,
                    _ => ClusterSpec::JsonDecap,
                })
            }
        }
    }

    /// An endpoint; `unix`: the address is a file path (`spec.filename` accepted too); `interface`: the address is
    /// a network interface name.
    fn endpoint(
        &mut self,
        v: &Value,
        path: &FieldPath,
        cluster: &str,
        unix: bool,
        interface: bool,
    ) -> Option<Endpoint> {
        let o = self.d.object(v, path, &["name", "spec", "weight"])?;
        let generated = if o.get("name").is_none() {
            Some(self.generate(Kind::Endpoint, cluster, "EndPoint"))
        } else {
            None
        };
        let name = self.name_of(o, generated)?;
        let sp = o.at("spec");
        let spec_v = self.d.required(o, "spec")?;
        let so = self.d.object(spec_v, &sp, &["address", "filename", "weight"])?;
        let key = if unix && so.get("filename").is_some() {
            "filename"
        } else {
            "address"
        };
        let address = match so.get(key) {
            Some(a) => self.d.string(a, &so.at(key))?,
            None => {
                self.d.error(&so.at("address"), "missing required field");
                return None;
            }
        };
        if address.is_empty() {
            self.d.error(&so.at(key), "expected an address, got an empty string");
            return None;
        }
        if interface && let Some(why) = interface_problem(&address) {
            let msg = format!("expected a network interface name, got {address:?} ({why})");
            self.d.error(&so.at(key), msg);
            return None;
        }
        let weight = match o
            .get("weight")
            .map(|w| (w, o.at("weight")))
            .or(so.get("weight").map(|w| (w, so.at("weight"))))
        {
            Some((w, p)) => self.d.int_in(w, &p, 0, 1_000_000)? as u32,
            None => 1,
        };
        if !self.define(Kind::Endpoint, &name, path) {
            return None;
        }
        Some(Endpoint { name, address, weight })
    }

    /// `loadbalancer: {policy, key, on_missing_key, outlier_detection}`.
    fn loadbalancer(&mut self, v: &Value, path: &FieldPath) -> Option<LoadBalancer> {
        let o = self
            .d
            .object(v, path, &["policy", "key", "on_missing_key", "outlier_detection"])?;
        let name = match o.get("policy") {
            Some(p) => self.d.string(p, &o.at("policy"))?,
            None => "Trivial".to_owned(),
        };
        let hashing = matches!(name.as_str(), "HashRing" | "ConsistentHash");
        let policy = match name.as_str() {
            "Trivial" => Some(Policy::Trivial),
            "WeightedRandom" | "Random" => Some(Policy::WeightedRandom),
            "RoundRobin" | "WeightedRoundRobin" => Some(Policy::RoundRobin),
            "HashRing" | "ConsistentHash" => {
                let key = match o.get("key") {
                    Some(k) => self.hash_key(k, &o.at("key")),
                    None => Some(None),
                };
                let on_missing_key = match (o.get("on_missing_key"), &key) {
                    (None, _) => Some(OnMissingKey::First),
                    (Some(m), Some(None)) => {
                        let msg = format!(
                            "on_missing_key needs a key (without one, every session is placed at random), got {}",
                            describe(m)
                        );
                        self.d.error(&o.at("on_missing_key"), msg);
                        None
                    }
                    (Some(m), _) => match self.d.string(m, &o.at("on_missing_key")).as_deref() {
                        Some("first") => Some(OnMissingKey::First),
                        Some("random") => Some(OnMissingKey::Random),
                        Some("fail") => Some(OnMissingKey::Fail),
                        Some(other) => {
                            let msg = format!("expected one of: first, random, fail; got {other:?}");
                            self.d.error(&o.at("on_missing_key"), msg);
                            None
                        }
                        None => None,
                    },
                };
                Some(Policy::HashRing {
                    key: key?,
                    on_missing_key: on_missing_key?,
                })
            }
            other => {
                let msg = format!(
                    "unknown policy {other:?} (expected one of: Trivial, HashRing, ConsistentHash, WeightedRandom, \
                     Random, RoundRobin, WeightedRoundRobin)"
                );
                self.d.error(&o.at("policy"), msg);
                None
            }
        };
        if !hashing {
            for field in ["key", "on_missing_key"] {
                if o.get(field).is_some() {
                    let msg =
                        format!("only the HashRing and ConsistentHash policies use a {field} (policy is {name:?})");
                    self.d.error(&o.at(field), msg);
                }
            }
        }
        let outlier_detection = match o.get("outlier_detection") {
            Some(od) => self.outlier_detection(od, &o.at("outlier_detection")),
            None => Some(OutlierDetection::default()),
        };
        if !hashing && (o.get("key").is_some() || o.get("on_missing_key").is_some()) {
            return None;
        }
        Some(LoadBalancer {
            policy: policy?,
            outlier_detection: outlier_detection?,
        })
    }

    /// A hashing policy's `key`: a JSON pointer into the metadata. `"<RANDOM>"` (how the original dumps a policy
    /// without a key) means no key.
    fn hash_key(&mut self, v: &Value, path: &FieldPath) -> Option<Option<Pointer>> {
        let s = self.d.string(v, path)?;
        if s == "<RANDOM>" {
            return Some(None);
        }
        match Pointer::parse(&s) {
            Ok(p) if !p.is_root() => Some(Some(p)),
            Ok(_) => {
                self.d.error(
                    path,
                    "expected a JSON pointer into the session metadata such as \"/IP/src_addr\", got \"\"",
                );
                None
            }
            Err(e) => {
                self.d.error(path, e);
                None
            }
        }
    }

    /// `outlier_detection: {consecutive_failures, ejection_time, max_ejection_time}`, or `true`/`false`.
    fn outlier_detection(&mut self, v: &Value, path: &FieldPath) -> Option<OutlierDetection> {
        if let Value::Bool(on) = v {
            return Some(if *on {
                OutlierDetection::default()
            } else {
                OutlierDetection::disabled()
            });
        }
        let o = self
            .d
            .object(v, path, &["consecutive_failures", "ejection_time", "max_ejection_time"])?;
        let mut od = OutlierDetection::default();
        let mut ok = true;
        if let Some(n) = o.get("consecutive_failures") {
            match self.d.int_in(n, &o.at("consecutive_failures"), 0, 1000) {
                Some(n) => od.consecutive_failures = n as u32,
                None => ok = false,
            }
        }
        for (field, slot) in [
            ("ejection_time", &mut od.ejection_time),
            ("max_ejection_time", &mut od.max_ejection_time),
        ] {
            let Some(t) = o.get(field) else { continue };
            match self.d.seconds(t, &o.at(field)) {
                Some(s) if s > 0.0 => *slot = Duration::from_secs_f64(s),
                Some(_) => {
                    self.d.error(&o.at(field), "expected a number of seconds > 0, got 0");
                    ok = false;
                }
                None => ok = false,
            }
        }
        if ok && od.max_ejection_time < od.ejection_time {
            let at = if o.get("max_ejection_time").is_some() {
                "max_ejection_time"
            } else {
                "ejection_time"
            };
            let msg = format!(
                "max_ejection_time ({}s) is shorter than ejection_time ({}s)",
                od.max_ejection_time.as_secs_f64(),
                od.ejection_time.as_secs_f64()
            );
            self.d.error(&o.at(at), msg);
            ok = false;
        }
        ok.then_some(od)
    }

    fn rulelist(&mut self, v: &Value, path: &FieldPath, generated: Option<String>) -> Option<String> {
        let o = self.d.object(v, path, &["name", "rules"])?;
        let name = self.name_of(o, generated)?;
        if !self.define(Kind::RuleList, &name, path) {
            return None;
        }
        let items = self.d.required(o, "rules")?;
        self.rulelist_items(&name, items, &o.at("rules"));
        Some(name)
    }

    /// Decodes the `rules` array of a rulelist and adds the list under `name`.
    fn rulelist_items(&mut self, name: &str, items: &Value, items_path: &FieldPath) {
        let mut rules = Vec::new();
        let Value::Array(arr) = items else {
            self.d.error(
                items_path,
                format!("expected an array of rules, got {}", describe(items)),
            );
            return;
        };
        for (i, item) in arr.iter().enumerate() {
            let p = items_path.index(i);
            match item {
                Value::String(r) => {
                    self.refs.push((Kind::Rule, r.clone(), p));
                    rules.push(r.clone());
                }
                Value::Object(_) => {
                    let generated = if item.get("name").is_none() {
                        Some(self.generate(Kind::Rule, name, "Rule"))
                    } else {
                        None
                    };
                    if let Some(r) = self.rule(item, &p, generated) {
                        rules.push(r);
                    }
                }
                other => self.d.error(
                    &p,
                    format!("expected a rule name or a rule object, got {}", describe(other)),
                ),
            }
        }
        self.cfg.rulelists.push(RuleList {
            name: name.to_owned(),
            rules,
        });
    }

    fn rule(&mut self, v: &Value, path: &FieldPath, generated: Option<String>) -> Option<String> {
        let o = self.d.object(v, path, &["name", "match", "action"])?;
        let name = self.name_of(o, generated)?;
        if !self.define(Kind::Rule, &name, path) {
            return None;
        }
        let (matcher, match_source) = match o.get("match") {
            None | Some(Value::String(_)) => (None, None),
            // How the original dumps a wildcard rule.
            Some(Value::Object(m)) if m.len() == 1 && m.get("match").is_some_and(Value::is_string) => (None, None),
            Some(m) => (
                Some(Predicate::decode(&mut self.d, m, &o.at("match"))?),
                Some(m.clone()),
            ),
        };
        let action = self.d.required(o, "action").cloned();
        let action = self.action(&action?, &o.at("action"), &name)?;
        self.cfg.rules.push(Rule {
            name: name.clone(),
            matcher,
            match_source,
            action,
        });
        Some(name)
    }

    fn action(&mut self, v: &Value, path: &FieldPath, rule: &str) -> Option<Action> {
        let o = self.d.object(v, path, &["route", "rewrite", "apply", "deny"])?;
        let mut action = Action::default();
        if let Some(d) = o.get("deny") {
            let p = o.at("deny");
            let reason = match crate::model::deny_reason(d, rule) {
                Ok(r) => r,
                Err(e) => {
                    self.d.error(&p, e);
                    return None;
                }
            };
            for other in ["route", "apply", "rewrite"] {
                if o.get(other).is_some() {
                    self.d
                        .error(&o.at(other), "a rule that denies has no route, apply or rewrite");
                    return None;
                }
            }
            action.deny = Some(reason);
            return Some(action);
        }
        if let Some(rw) = o.get("rewrite") {
            action.rewrite = self.d.array(rw, &o.at("rewrite"), |d, item, p| {
                let ro = d.object(item, p, &["path", "value"])?;
                let ptr_s = d.required(ro, "path").and_then(|s| d.string(s, &ro.at("path")))?;
                let ptr = Pointer::parse(&ptr_s).map_err(|e| d.error(&ro.at("path"), e)).ok()?;
                if ptr.is_root() {
                    d.error(&ro.at("path"), "cannot rewrite the whole metadata object (empty path)");
                    return None;
                }
                let Some(value) = ro.map.get("value") else {
                    d.error(&ro.at("value"), "missing required field");
                    return None;
                };
                Some(Rewrite {
                    path: ptr,
                    value: value.clone(),
                })
            })?;
        }
        if let Some(a) = o.get("apply") {
            let list = self.d.string(a, &o.at("apply"))?;
            self.refs.push((Kind::RuleList, list.clone(), o.at("apply")));
            self.apply_paths.insert(rule.to_owned(), o.at("apply"));
            action.apply = Some(list);
        }
        match o.get("route") {
            Some(Value::String(r)) => {
                self.refs.push((Kind::Route, r.clone(), o.at("route")));
                action.route = Some(r.clone());
            }
            Some(r @ Value::Object(_)) => {
                let generated = if r.get("name").is_none() {
                    Some(self.generate(Kind::Route, rule, "Route"))
                } else {
                    None
                };
                action.route = Some(self.route(r, &o.at("route"), generated)?);
            }
            Some(other) => {
                self.d.error(
                    &o.at("route"),
                    format!("expected a route name or a route object, got {}", describe(other)),
                );
                return None;
            }
            None if action.apply.is_none() => {
                self.d.error(
                    &o.at("route"),
                    "missing required field (an action needs a route, apply or deny)",
                );
                return None;
            }
            None => {}
        }
        Some(action)
    }

    fn route(&mut self, v: &Value, path: &FieldPath, generated: Option<String>) -> Option<String> {
        let o = self.d.object(
            v,
            path,
            &["name", "destination", "cluster", "ingress", "egress", "retry"],
        )?;
        let name = self.name_of(o, generated)?;
        if !self.define(Kind::Route, &name, path) {
            return None;
        }
        let dest_key = if o.get("destination").is_some() {
            "destination"
        } else {
            "cluster"
        };
        let destination = match o.get(dest_key) {
            Some(Value::Array(items)) => self.split(items, &o.at(dest_key), &name),
            Some(d) => self
                .cluster_ref(d, &o.at(dest_key), &name, "Cluster")
                .map(Destination::Cluster),
            None => {
                self.d.error(&o.at("destination"), "missing required field");
                None
            }
        };
        let chain = |b: &mut Self, key: &str, label: &str| -> Option<Vec<String>> {
            match o.get(key) {
                None => Some(Vec::new()),
                Some(list) => {
                    let items = b.d.array(list, &o.at(key), |_, v, p| Some((v.clone(), p.clone())))?;
                    let mut names = Vec::new();
                    for (v, p) in items {
                        names.push(b.cluster_ref(&v, &p, &name, label)?);
                    }
                    Some(names)
                }
            }
        };
        let ingress = chain(self, "ingress", "ingress-Cluster");
        let egress = chain(self, "egress", "egress-Cluster");
        let retry = match o.get("retry") {
            Some(r) => self.retry(r, &o.at("retry")),
            None => Some(Retry::default()),
        };
        self.cfg.routes.push(Route {
            name: name.clone(),
            destination: destination?,
            ingress: ingress?,
            egress: egress?,
            retry: retry?,
        });
        Some(name)
    }

    /// A weighted split: `[{cluster: <name or inline cluster>, weight: N}, ...]`.
    fn split(&mut self, items: &[Value], path: &FieldPath, route: &str) -> Option<Destination> {
        if items.is_empty() {
            self.d
                .error(path, "expected a cluster, or a non-empty list of {cluster, weight}");
            return None;
        }
        let mut split: Vec<WeightedCluster> = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = path.index(i);
            let Some(io) = self.d.object(item, &p, &["cluster", "weight"]) else {
                ok = false;
                continue;
            };
            let weight = match io.get("weight") {
                Some(w) => self.d.int_in(w, &io.at("weight"), 0, 1_000_000).map(|w| w as u32),
                None => Some(1),
            };
            let cluster = self
                .d
                .required(io, "cluster")
                .and_then(|c| self.cluster_ref(c, &io.at("cluster"), route, "Cluster"));
            match (cluster, weight) {
                (Some(cluster), Some(weight)) => {
                    if split.iter().any(|w| w.cluster == cluster) {
                        self.d.error(
                            &io.at("cluster"),
                            format!("cluster {cluster:?} appears twice in the split (add up the weights instead)"),
                        );
                        ok = false;
                    }
                    split.push(WeightedCluster { cluster, weight });
                }
                _ => ok = false,
            }
        }
        if ok && split.iter().all(|w| w.weight == 0) {
            self.d.error(
                path,
                "every cluster of the split has weight 0, so no session could be sent anywhere",
            );
            ok = false;
        }
        ok.then_some(Destination::Split(split))
    }

    /// A cluster given by name (checked later) or inline (decoded now with a generated name).
    fn cluster_ref(&mut self, v: &Value, path: &FieldPath, route: &str, label: &str) -> Option<String> {
        match v {
            Value::String(c) => {
                self.refs.push((Kind::Cluster, c.clone(), path.clone()));
                Some(c.clone())
            }
            Value::Object(_) => {
                let generated = if v.get("name").is_none() {
                    Some(self.generate(Kind::Cluster, route, label))
                } else {
                    None
                };
                self.cluster(v, path, generated)
            }
            other => {
                self.d.error(
                    path,
                    format!("expected a cluster name or a cluster object, got {}", describe(other)),
                );
                None
            }
        }
    }

    fn retry(&mut self, v: &Value, path: &FieldPath) -> Option<Retry> {
        let o = self.d.object(
            v,
            path,
            &["retry_on", "num_retries", "timeout", "connect_timeout", "backoff"],
        )?;
        let mut r = Retry::default();
        let mut ok = true;
        if let Some(on) = o.get("retry_on") {
            r.retry_on = match self.d.string(on, &o.at("retry_on"))?.as_str() {
                "never" => RetryOn::Never,
                "connect-failure" => RetryOn::ConnectFailure,
                "disconnect" => RetryOn::Disconnect,
                "always" => RetryOn::Always,
                other => {
                    let msg = format!(
                        "unknown retry policy {other:?} (expected one of: never, connect-failure, disconnect, always)"
                    );
                    self.d.error(&o.at("retry_on"), msg);
                    return None;
                }
            };
        }
        if let Some(n) = o.get("num_retries") {
            r.num_retries = self.d.int_in(n, &o.at("num_retries"), 0, 1000)? as u32;
        }
        let ms = |b: &mut Self, key: &str| -> Option<Option<Duration>> {
            match o.get(key) {
                None => Some(None),
                Some(t) => {
                    b.d.int_in(t, &o.at(key), 1, 3_600_000)
                        .map(|t| Some(Duration::from_millis(t as u64)))
                }
            }
        };
        if let Some(t) = ms(self, "timeout")? {
            r.timeout = t;
        }
        // Both default to `timeout`, as in the original.
        r.connect_timeout = ms(self, "connect_timeout")?.unwrap_or(r.timeout);
        r.backoff = Backoff::fixed(r.timeout);
        if let Some(b) = o.get("backoff") {
            match self.backoff(b, &o.at("backoff"), r.timeout) {
                Some(b) => r.backoff = b,
                None => ok = false,
            }
        }
        ok.then_some(r)
    }

    /// `backoff: {initial: ms, max: ms, multiplier: x}`; `initial` defaults to the retry's `timeout`, `max` to 30 s
    /// (or `initial` when that is longer), `multiplier` to 2.
    fn backoff(&mut self, v: &Value, path: &FieldPath, timeout: Duration) -> Option<Backoff> {
        let o = self.d.object(v, path, &["initial", "max", "multiplier"])?;
        let ms = |b: &mut Self, key: &str| -> Option<Option<Duration>> {
            match o.get(key) {
                None => Some(None),
                Some(t) => {
                    b.d.int_in(t, &o.at(key), 1, 3_600_000)
                        .map(|t| Some(Duration::from_millis(t as u64)))
                }
            }
        };
        let initial = ms(self, "initial");
        let max = ms(self, "max");
        let multiplier = match o.get("multiplier") {
            None => Some(2.0),
            Some(m) => match m.as_f64() {
                Some(x) if (1.0..=100.0).contains(&x) => Some(x),
                _ => {
                    self.d.error(
                        &o.at("multiplier"),
                        format!(
                            "expected a number 1..100 (1 keeps the pause fixed), got {}",
                            describe(m)
                        ),
                    );
                    None
                }
            },
        };
        let (initial, max, multiplier) = (initial?, max?, multiplier?);
        let initial = initial.unwrap_or(timeout);
        let max = match max {
            Some(m) if m < initial => {
                self.d.error(
                    &o.at("max"),
                    format!(
                        "the longest pause ({} ms) is shorter than the first one (initial: {} ms)",
                        m.as_millis(),
                        initial.as_millis()
                    ),
                );
                return None;
            }
            Some(m) => m,
            None => DEFAULT_BACKOFF_MAX.max(initial),
        };
        Some(Backoff {
            initial,
            max,
            multiplier,
        })
    }
}

/// Why `name` cannot be a Linux network interface name (the kernel's `dev_valid_name`), or `None` if it can.
/// Cycles of `apply` jumps between RuleLists (`a -> b -> a`, or `a -> a`), each reported once at the `apply` field
/// that closes it. Run once every name resolves; the lookup's depth limit stays as a safety net. A cycle counts even
/// if an earlier rule could shadow the jump for every session: the check is on the configuration, not on traffic.
fn apply_loops(cfg: &Config, apply_paths: &HashMap<String, FieldPath>) -> Vec<FieldError> {
    let index: HashMap<&str, usize> = cfg
        .rulelists
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), i))
        .collect();
    let rules: HashMap<&str, &Rule> = cfg.rules.iter().map(|r| (r.name.as_str(), r)).collect();
    // edges[list] = (target list, the jumping rule), in rule order.
    let edges: Vec<Vec<(usize, &str)>> = cfg
        .rulelists
        .iter()
        .map(|l| {
            l.rules
                .iter()
                .filter_map(|r| {
                    let rule = rules.get(r.as_str())?;
                    let to = index.get(rule.action.apply.as_deref()?)?;
                    Some((*to, rule.name.as_str()))
                })
                .collect()
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; edges.len()];
    let mut errors = Vec::new();
    for start in 0..edges.len() {
        if mark[start] != Mark::New {
            continue;
        }
        // The DFS path: (list, index of its next edge to follow).
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::OnPath;
        while let Some(top) = path.last_mut() {
            let list = top.0;
            let Some(&(to, rule)) = edges[list].get(top.1) else {
                mark[list] = Mark::Done;
                path.pop();
                continue;
            };
            top.1 += 1;
            match mark[to] {
                Mark::New => {
                    mark[to] = Mark::OnPath;
                    path.push((to, 0));
                }
                Mark::OnPath => {
                    let from = path.iter().position(|(l, _)| *l == to).unwrap_or(0);
                    let mut names: Vec<String> = path[from..]
                        .iter()
                        .map(|(l, _)| format!("{:?}", cfg.rulelists[*l].name))
                        .collect();
                    names.push(format!("{:?}", cfg.rulelists[to].name));
                    let at = apply_paths.get(rule).cloned().unwrap_or_else(FieldPath::root);
                    errors.push(FieldError::new(
                        &at,
                        format!(
                            "rulelists {}: apply jumps form a loop (rule {rule:?} closes it)",
                            names.join(" -> ")
                        ),
                    ));
                }
                Mark::Done => {}
            }
        }
    }
    errors
}

/// Every explicit `name` of every object the loader would decode in `doc`, inline ones included, following the
/// document's structure (and skipping whatever does not have the expected shape: the decoder reports that).
pub(crate) fn explicit_names(doc: &Value) -> BTreeSet<(Kind, String)> {
    let mut out = BTreeSet::new();
    collect_names(doc, &mut out);
    out
}

fn collect_names(doc: &Value, out: &mut BTreeSet<(Kind, String)>) {
    fn name(v: &Value, kind: Kind, out: &mut BTreeSet<(Kind, String)>) {
        if let Some(n) = v.get("name").and_then(Value::as_str) {
            out.insert((kind, n.to_owned()));
        }
    }
    fn items(v: Option<&Value>) -> &[Value] {
        v.and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
    }
    fn cluster(v: &Value, out: &mut BTreeSet<(Kind, String)>) {
        if !v.is_object() {
            return;
        }
        name(v, Kind::Cluster, out);
        for e in items(v.get("endpoints")) {
            name(e, Kind::Endpoint, out);
        }
    }
    fn route(v: &Value, out: &mut BTreeSet<(Kind, String)>) {
        if !v.is_object() {
            return;
        }
        name(v, Kind::Route, out);
        match v.get("destination").or(v.get("cluster")) {
            Some(Value::Array(split)) => split
                .iter()
                .filter_map(|w| w.get("cluster"))
                .for_each(|c| cluster(c, out)),
            Some(c) => cluster(c, out),
            None => {}
        }
        for key in ["ingress", "egress"] {
            items(v.get(key)).iter().for_each(|c| cluster(c, out));
        }
    }
    fn rule(v: &Value, out: &mut BTreeSet<(Kind, String)>) {
        if !v.is_object() {
            return;
        }
        name(v, Kind::Rule, out);
        if let Some(r) = v.get("action").and_then(|a| a.get("route")) {
            route(r, out);
        }
    }
    for c in items(doc.get("clusters")) {
        cluster(c, out);
    }
    for l in items(doc.get("listeners")) {
        name(l, Kind::Listener, out);
        items(l.get("rules")).iter().for_each(|r| rule(r, out));
    }
    for l in items(doc.get("rulelists")) {
        name(l, Kind::RuleList, out);
        items(l.get("rules")).iter().for_each(|r| rule(r, out));
    }
    items(doc.get("rules")).iter().for_each(|r| rule(r, out));
    items(doc.get("routes")).iter().for_each(|r| route(r, out));
}

fn interface_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_INTERFACE_NAME {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("not a name")
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Some("contains '/', ':' or white space")
    } else {
        None
    }
}

/// An EtherType: an integer, or a `"0x..."` hex string, in 0x0600..=0xffff (smaller values are 802.3 lengths).
fn parse_ethertype(v: &Value) -> Option<u16> {
    let n = match v {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => {
            let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
            if hex.is_empty() || hex.len() > 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u64::from_str_radix(hex, 16).ok()?
        }
        _ => return None,
    };
    u16::try_from(n).ok().filter(|&t| t >= 0x0600)
}

/// One JSONSocket `header` item: `{path: ptr}`, `{path: {from, to}}` or `{set: {key, value}}`.
fn header_item(d: &mut Decoder, v: &Value, path: &FieldPath) -> Option<HeaderItem> {
    let o = d.object(v, path, &["path", "set"])?;
    let ptr = |d: &mut Decoder, v: &Value, p: &FieldPath| -> Option<Pointer> {
        let s = d.string(v, p)?;
        Pointer::parse(&s).map_err(|e| d.error(p, e)).ok()
    };
    match (o.get("path"), o.get("set")) {
        (Some(Value::Object(_)), None) => {
            let po = o.at("path");
            let pv = o.get("path")?;
            let inner = d.object(pv, &po, &["from", "to"])?;
            let from = d.required(inner, "from").and_then(|f| ptr(d, f, &inner.at("from")))?;
            let to = d.required(inner, "to").and_then(|t| ptr(d, t, &inner.at("to")))?;
            Some(HeaderItem::Move { from, to })
        }
        (Some(p), None) => Some(HeaderItem::Copy(ptr(d, p, &o.at("path"))?)),
        (None, Some(set)) => {
            let so = o.at("set");
            let inner = d.object(set, &so, &["key", "value"])?;
            let key = d.required(inner, "key").and_then(|k| ptr(d, k, &inner.at("key")))?;
            let value = d.required(inner, "value")?.clone();
            Some(HeaderItem::Set { key, value })
        }
        _ => {
            d.error(path, "expected exactly one of `path` or `set`");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        parse_config(yaml, Format::Yaml)
    }

    fn errors(yaml: &str) -> Vec<String> {
        match load(yaml) {
            Ok(_) => panic!("expected errors for {yaml}"),
            Err(e) => match e {
                ConfigError::Invalid(list) => list.iter().map(|e| e.to_string()).collect(),
                other => vec![other.to_string()],
            },
        }
    }

    #[test]
    fn deny_rules_load_dump_look_up_and_name_bad_fields() {
        let cfg = load(
            r#"
clusters: [{name: echo, spec: {protocol: Echo}}]
listeners:
  - name: l
    spec: {protocol: UDP, port: 9999}
    rules:
      - name: no-bob
        match: {op: test, path: /labels/user, value: bob}
        action: {deny: "bob is banned"}
      - name: no-eve
        match: {op: test, path: /labels/user, value: eve}
        action: {deny: {reason: "eve is banned"}}
      - name: no-mallory
        match: {op: test, path: /labels/user, value: mallory}
        action: {deny: true}
      - action: {route: {destination: echo}}
"#,
        )
        .expect("valid");
        let mut bob = serde_json::json!({"labels": {"user": "bob"}});
        let denied = crate::lookup::lookup(&cfg, "l-RuleList-0", &mut bob);
        assert_eq!(
            denied,
            Err(crate::lookup::RouteError::Denied {
                rule: "no-bob".into(),
                reason: "bob is banned".into()
            })
        );
        assert_eq!(
            denied.map_err(|e| e.to_string()),
            Err("denied by rule \"no-bob\": bob is banned".into())
        );
        let table = crate::lookup::RuleTable::new(&cfg).expect("table");
        let mut eve = serde_json::json!({"labels": {"user": "eve"}});
        assert!(matches!(table.lookup("l-RuleList-0", &mut eve),
            Err(crate::lookup::RouteError::Denied { reason, .. }) if reason == "eve is banned"));
        let mut mallory = serde_json::json!({"labels": {"user": "mallory"}});
        assert!(matches!(table.lookup("l-RuleList-0", &mut mallory),
            Err(crate::lookup::RouteError::Denied { reason, .. }) if reason == "rule no-mallory"));
        let mut alice = serde_json::json!({"labels": {"user": "alice"}});
        assert!(table.lookup("l-RuleList-0", &mut alice).is_ok());
        // The dump loads back equal.
        let again = parse_config(&crate::dump::config(&cfg).to_string(), Format::Json).expect("the dump loads");
        assert_eq!(
            again.rule("no-eve").map(|r| r.action.deny.clone()),
            Some(Some("eve is banned".into()))
        );
        // Bad denies name the field.
        let bad = |action: &str| {
            errors(&format!(
                "clusters: [{{name: echo, spec: {{protocol: Echo}}}}]\nlisteners: [{{name: l, spec: {{protocol: UDP, port: 9999}}, rules: [{{action: {action}}}]}}]\n"
            ))
        };
        let e = bad("{deny: ''}");
        assert!(
            e.iter().any(|e| e.contains(".action.deny") && e.contains("non-empty")),
            "{e:?}"
        );
        let e = bad("{deny: why, route: {destination: echo}}");
        assert!(
            e.iter().any(|e| e.contains(".action.route") && e.contains("denies")),
            "{e:?}"
        );
        let e = bad("{deny: false}");
        assert!(e.iter().any(|e| e.contains(".action.deny")), "{e:?}");
    }

    #[test]
    fn admin_offload_settings_load_dump_and_name_bad_fields() {
        let cfg = load("admin: { offload: init, offload_ifs: [eth1], offload_tcp: true }\n").expect("valid");
        assert_eq!(cfg.admin.offload, crate::model::OffloadMode::Auto);
        assert_eq!(cfg.admin.offload_ifs, ["eth1"]);
        assert!(cfg.admin.offload_tcp);
        let dumped = crate::dump::config(&cfg);
        assert_eq!(dumped["admin"]["offload_tcp"], serde_json::json!(true));
        let again = parse_config(&dumped.to_string(), Format::Json).expect("the dump loads");
        assert_eq!(again.admin, cfg.admin);
        assert!(!load("admin: { offload: force }\n").expect("valid").admin.offload_tcp);
        let e = errors("admin: { offload_tcp: yes please }\n");
        assert!(e.iter().any(|e| e.contains("admin.offload_tcp")), "{e:?}");
        let e = errors("admin: { offload: sometimes }\n");
        assert!(
            e.iter().any(|e| e.contains("admin.offload") && e.contains("sometimes")),
            "{e:?}"
        );
    }

    #[test]
    fn inline_objects_get_generated_names() {
        let cfg = load(
            r#"
listeners:
  - name: udp-in
    spec: { protocol: UDP, port: 9001 }
    rules:
      - action:
          route:
            destination:
              spec: { protocol: UDP, port: 9002 }
              endpoints: [{ spec: { address: 127.0.0.1 } }]
            ingress: [ { spec: { protocol: JSONEncap } } ]
            egress: [ echo ]
clusters:
  - name: echo
    spec: { protocol: Echo }
"#,
        )
        .expect("valid");
        assert_eq!(cfg.listeners[0].rules, "udp-in-RuleList-0");
        assert_eq!(cfg.rulelists[0].rules, vec!["udp-in-RuleList-0-Rule-0"]);
        let rule = cfg.rule("udp-in-RuleList-0-Rule-0").expect("rule");
        let route = cfg
            .route(rule.action.route.as_deref().expect("route"))
            .expect("route exists");
        assert_eq!(route.name, "udp-in-RuleList-0-Rule-0-Route-0");
        let Destination::Cluster(destination) = &route.destination else {
            panic!("one destination cluster")
        };
        assert_eq!(destination, "udp-in-RuleList-0-Rule-0-Route-0-Cluster-0");
        assert_eq!(
            route.ingress,
            vec!["udp-in-RuleList-0-Rule-0-Route-0-ingress-Cluster-1"]
        );
        assert_eq!(route.egress, vec!["echo"]);
        let dest = cfg.cluster(destination).expect("dest");
        assert_eq!(dest.endpoints[0].name, format!("{destination}-EndPoint-0"));
        // Every generated name is listed, and nothing else.
        let generated: Vec<(ObjectKind, &str)> = cfg.generated.iter().map(|(k, n)| (*k, n.as_str())).collect();
        assert_eq!(
            generated,
            [
                (ObjectKind::Cluster, "udp-in-RuleList-0-Rule-0-Route-0-Cluster-0"),
                (
                    ObjectKind::Cluster,
                    "udp-in-RuleList-0-Rule-0-Route-0-ingress-Cluster-1"
                ),
                (ObjectKind::RuleList, "udp-in-RuleList-0"),
                (ObjectKind::Rule, "udp-in-RuleList-0-Rule-0"),
                (ObjectKind::Route, "udp-in-RuleList-0-Rule-0-Route-0"),
                (
                    ObjectKind::Endpoint,
                    "udp-in-RuleList-0-Rule-0-Route-0-Cluster-0-EndPoint-0"
                ),
            ]
        );
        assert!(matches!(
            cfg.listeners[0].spec,
            ListenerSpec::Udp(UdpListenerSpec {
                mode: UdpMode::Server,
                ..
            })
        ));
    }

    #[test]
    fn field_errors_name_the_path() {
        let e = errors("listeners:\n  - name: a\n    spec: {protocol: TCP, port: abc}\n    rules: []\n");
        assert_eq!(
            e,
            vec!["listeners[0].spec.port: expected an integer 1..65535, got \"abc\""]
        );
        let e = errors("listeners:\n  - name: a\n    spec: {protocol: Foo}\n    rules: []\n");
        assert!(
            e[0].starts_with("listeners[0].spec.protocol: unknown protocol \"Foo\""),
            "{e:?}"
        );
        let e = errors("clusters:\n  - {name: a, spec: {protocol: Echo}}\n  - {name: a, spec: {protocol: Echo}}\n");
        assert_eq!(
            e,
            vec!["clusters[1].name: cluster \"a\" already defined at clusters[0]"]
        );
        let e = errors("listeners:\n  - name: a\n    spec: {protocol: TCP, port: 1}\n    rules: nolist\n");
        assert_eq!(e, vec!["listeners[0].rules: rulelist \"nolist\" is not defined"]);
        let e = errors("routes:\n  - {name: r, destination: nope}\n");
        assert_eq!(e, vec!["routes[0].destination: cluster \"nope\" is not defined"]);
    }

    #[test]
    fn apply_loops_are_rejected_at_load_naming_the_cycle() {
        let e = errors(
            "rulelists:\n  - {name: a, rules: [{name: ra, action: {apply: b}}]}\n  - {name: b, rules: [{name: rb, action: {apply: a}}]}\n",
        );
        assert_eq!(
            e,
            vec![
                "rulelists[1].rules[0].action.apply: rulelists \"a\" -> \"b\" -> \"a\": apply jumps form a loop (rule \"rb\" closes it)"
            ]
        );
        let e = errors("rulelists:\n  - {name: a, rules: [{name: self, action: {apply: a}}]}\n");
        assert_eq!(
            e,
            vec![
                "rulelists[0].rules[0].action.apply: rulelists \"a\" -> \"a\": apply jumps form a loop (rule \"self\" closes it)"
            ]
        );
        // A rule defined at the top level and shared by two lists; the loop goes through a third.
        let e = errors(
            r#"
rules: [{name: to-c, action: {apply: c}}]
rulelists:
  - {name: a, rules: [to-c]}
  - {name: b, rules: [to-c]}
  - {name: c, rules: [{name: back, match: {op: defined, path: /x}, action: {apply: b}}]}
"#,
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "rules[0].action.apply: rulelists \"c\" -> \"b\" -> \"c\": apply jumps form a loop (rule \"to-c\""
            ),
            "{e:?}"
        );
        // Two disjoint loops are both reported.
        let e = errors(
            "rulelists:\n  - {name: a, rules: [{action: {apply: a}}]}\n  - {name: b, rules: [{action: {apply: b}}]}\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn apply_chains_and_diamonds_without_a_cycle_load() {
        let cfg = load(
            r#"
clusters: [{name: e, spec: {protocol: Echo}}]
routes: [{name: r, destination: e}]
rulelists:
  - {name: a, rules: [{match: {op: defined, path: /x}, action: {apply: b}}, {action: {apply: c}}]}
  - {name: b, rules: [{action: {apply: d}}]}
  - {name: c, rules: [{action: {apply: d}}]}
  - {name: d, rules: [{action: {route: r}}]}
"#,
        )
        .expect("a diamond is no loop");
        assert_eq!(cfg.rulelists.len(), 4);
        // A dangling apply is reported as undefined, not as a loop.
        let e = errors("rulelists:\n  - {name: a, rules: [{action: {apply: nope}}]}\n");
        assert_eq!(
            e,
            vec!["rulelists[0].rules[0].action.apply: rulelist \"nope\" is not defined"]
        );
    }

    #[test]
    fn retry_fields_default_one_by_one() {
        let cfg = load("clusters: [{name: e, spec: {protocol: Echo}}]\nroutes:\n  - {name: r, destination: e, retry: {retry_on: always}}\n")
            .expect("valid");
        assert_eq!(
            cfg.routes[0].retry,
            Retry {
                retry_on: RetryOn::Always,
                ..Retry::default()
            }
        );
    }

    #[test]
    fn connect_timeout_and_backoff_default_to_timeout() {
        let r = |retry: &str| {
            load(&format!(
                "clusters: [{{name: e, spec: {{protocol: Echo}}}}]\nroutes:\n  - {{name: r, destination: e, retry: {retry}}}\n"
            ))
            .expect("valid")
            .routes[0]
                .retry
                .clone()
        };
        let ms = Duration::from_millis;
        let plain = r("{timeout: 300}");
        assert_eq!(plain.connect_timeout, ms(300));
        assert_eq!(plain.backoff, Backoff::fixed(ms(300)));
        assert_eq!(plain.backoff.pause(5), ms(300));
        let own = r("{timeout: 300, connect_timeout: 50, backoff: {initial: 100, max: 500, multiplier: 2}}");
        assert_eq!(own.connect_timeout, ms(50));
        let pauses: Vec<_> = (0..5).map(|n| own.backoff.pause(n)).collect();
        assert_eq!(pauses, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        let defaults = r("{timeout: 300, backoff: {}}");
        assert_eq!(
            defaults.backoff,
            Backoff {
                initial: ms(300),
                max: DEFAULT_BACKOFF_MAX,
                multiplier: 2.0
            }
        );
        assert_eq!(
            r("{backoff: {multiplier: 1.5, initial: 10}}").backoff.pause(2),
            ms(22) + Duration::from_micros(500)
        );
    }

    #[test]
    fn bad_connect_timeout_and_backoff_name_the_field() {
        let e = |retry: &str| {
            errors(&format!(
                "clusters: [{{name: e, spec: {{protocol: Echo}}}}]\nroutes:\n  - {{name: r, destination: e, retry: {retry}}}\n"
            ))
            .join("\n")
        };
        assert!(
            e("{connect_timeout: 0}")
                .contains("routes[0].retry.connect_timeout: expected an integer 1..3600000, got 0"),
            "{}",
            e("{connect_timeout: 0}")
        );
        let m = e("{backoff: {multiplier: 0.5}}");
        assert!(
            m.contains("routes[0].retry.backoff.multiplier: expected a number 1..100"),
            "{m}"
        );
        let m = e("{backoff: {initial: 500, max: 100}}");
        assert!(m.contains("routes[0].retry.backoff.max: the longest pause (100 ms) is shorter than the first one (initial: 500 ms)"), "{m}");
        let m = e("{backoff: {start: 5}}");
        assert!(m.contains("routes[0].retry.backoff"), "{m}");
        let m = e("{backoff: 100}");
        assert!(m.contains("routes[0].retry.backoff"), "{m}");
    }

    #[test]
    fn pipe_af_packet_and_sctp_specs() {
        let cfg = load(
            r#"
listeners:
  - name: p
    spec: { protocol: PIPE, filename: /tmp/l7mp.fifo }
    rules: r
  - name: a
    spec: { protocol: AF_PACKET, interface: veth0, ethertype: 0x88b5 }
    rules: r
  - name: a2
    spec: { protocol: AF_PACKET, interface: eth1, ethertype: "0x88B6", idle_timeout: 0 }
    rules: r
  - name: s
    spec: { protocol: SCTP, port: 9000 }
    rules: r
clusters:
  - name: pc
    spec: { protocol: PIPE }
    endpoints: [{ spec: { filename: /tmp/up.fifo } }]
  - name: ac
    spec: { protocol: AF_PACKET }
    endpoints: [{ spec: { address: veth1 } }]
  - name: sc
    spec: { protocol: SCTP, port: 9001 }
    endpoints: [{ spec: { address: 127.0.0.1 } }]
rulelists: [{ name: r, rules: [] }]
"#,
        )
        .expect("valid");
        assert_eq!(
            cfg.listeners[0].spec,
            ListenerSpec::Pipe(PipeListenerSpec {
                filename: "/tmp/l7mp.fifo".into()
            })
        );
        assert_eq!(
            cfg.listeners[1].spec,
            ListenerSpec::AfPacket(AfPacketListenerSpec {
                interface: "veth0".into(),
                ethertype: Some(0x88b5),
                idle_timeout: Some(DEFAULT_UDP_IDLE_TIMEOUT),
            })
        );
        assert!(matches!(
            &cfg.listeners[2].spec,
            ListenerSpec::AfPacket(AfPacketListenerSpec {
                ethertype: Some(0x88b6),
                idle_timeout: None,
                ..
            })
        ));
        assert!(matches!(
            cfg.listeners[3].spec,
            ListenerSpec::Sctp(TcpListenerSpec { port: 9000, .. })
        ));
        assert_eq!(cfg.clusters[0].spec, ClusterSpec::Pipe);
        assert_eq!(cfg.clusters[0].endpoints[0].address, "/tmp/up.fifo");
        assert_eq!(cfg.clusters[1].spec, ClusterSpec::AfPacket { ethertype: None });
        assert_eq!(cfg.clusters[2].spec, ClusterSpec::Sctp { port: 9001, bind: None });
        assert_eq!(pipe_reply_path("/tmp/up.fifo"), "/tmp/up.fifo.reply");
    }

    #[test]
    fn bad_ethertypes_and_interfaces_are_field_errors() {
        for bad in [
            "0x12",
            "\"0x\"",
            "\"88b5\"",
            "\"0x+8b5\"",
            "70000",
            "\"0x188b5\"",
            "-1",
            "1.5",
        ] {
            let e = errors(&format!(
                "listeners:\n  - {{name: a, spec: {{protocol: AF_PACKET, interface: eth0, ethertype: {bad}}}, rules: []}}\n"
            ));
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert!(
                e[0].starts_with("listeners[0].spec.ethertype: expected an EtherType 0x0600..0xffff"),
                "{bad}: {e:?}"
            );
        }
        let e = errors(
            "listeners:\n  - {name: a, spec: {protocol: AF_PACKET, interface: a-very-long-interface}, rules: []}\n",
        );
        assert_eq!(
            e,
            vec![
                "listeners[0].spec.interface: expected a network interface name, got \"a-very-long-interface\" (longer than 15 bytes)"
            ]
        );
        let e = errors(
            "clusters:\n  - {name: c, spec: {protocol: AF_PACKET}, endpoints: [{spec: {address: \"eth 0\"}}]}\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("clusters[0].endpoints[0].spec.address: expected a network interface name"),
            "{e:?}"
        );
        let e = errors("listeners:\n  - {name: a, spec: {protocol: PIPE, filename: \"\"}, rules: []}\n");
        assert_eq!(
            e,
            vec!["listeners[0].spec.filename: expected a FIFO path, got an empty string"]
        );
    }

    #[test]
    fn syntax_errors_say_which_format() {
        let e = parse_config("{", Format::Json).expect_err("bad json");
        assert!(e.to_string().starts_with("cannot parse the configuration as JSON"));
    }

    fn lb(spec: &str) -> Result<LoadBalancer, Vec<String>> {
        let yaml = format!(
            "clusters:\n  - name: c\n    spec: {{protocol: TCP, port: 1}}\n    endpoints: [{{spec: {{address: 127.0.0.1}}}}]\n    loadbalancer: {spec}\n"
        );
        match load(&yaml) {
            Ok(cfg) => Ok(cfg.clusters[0].loadbalancer.clone()),
            Err(_) => Err(errors(&yaml)),
        }
    }

    #[test]
    fn loadbalancer_policies_and_their_names() {
        assert_eq!(lb("{}"), Ok(LoadBalancer::default()));
        for (name, policy) in [
            ("Trivial", Policy::Trivial),
            ("WeightedRandom", Policy::WeightedRandom),
            ("Random", Policy::WeightedRandom),
            ("RoundRobin", Policy::RoundRobin),
            ("WeightedRoundRobin", Policy::RoundRobin),
        ] {
            assert_eq!(
                lb(&format!("{{policy: {name}}}")).map(|l| l.policy),
                Ok(policy),
                "{name}"
            );
        }
        let key = Some(Pointer::parse("/IP/src_addr").expect("ptr"));
        for name in ["HashRing", "ConsistentHash"] {
            assert_eq!(
                lb(&format!("{{policy: {name}, key: /IP/src_addr}}")).map(|l| l.policy),
                Ok(Policy::HashRing {
                    key: key.clone(),
                    on_missing_key: OnMissingKey::First
                })
            );
        }
        assert_eq!(
            lb("{policy: ConsistentHash, key: /IP/src_addr, on_missing_key: fail}").map(|l| l.policy),
            Ok(Policy::HashRing {
                key: key.clone(),
                on_missing_key: OnMissingKey::Fail
            })
        );
        // Keyless (the original's <RANDOM>, also as dumped).
        for spec in ["{policy: HashRing}", "{policy: HashRing, key: <RANDOM>}"] {
            assert_eq!(
                lb(spec).map(|l| l.policy),
                Ok(Policy::HashRing {
                    key: None,
                    on_missing_key: OnMissingKey::First
                }),
                "{spec}"
            );
        }
    }

    #[test]
    fn outlier_detection_defaults_and_fields() {
        assert_eq!(lb("{}").map(|l| l.outlier_detection), Ok(OutlierDetection::default()));
        assert_eq!(
            lb("{outlier_detection: false}").map(|l| l.outlier_detection.enabled()),
            Ok(false)
        );
        assert_eq!(
            lb("{policy: RoundRobin, outlier_detection: {consecutive_failures: 5, ejection_time: 0.5, max_ejection_time: 2}}")
                .map(|l| l.outlier_detection),
            Ok(OutlierDetection {
                consecutive_failures: 5,
                ejection_time: Duration::from_millis(500),
                max_ejection_time: Duration::from_secs(2),
            })
        );
    }

    #[test]
    fn bad_loadbalancers_are_field_errors() {
        let at = "clusters[0].loadbalancer";
        let cases: &[(&str, &str)] = &[
            (
                "{policy: LeastConn}",
                "policy: unknown policy \"LeastConn\" (expected one of: Trivial, HashRing",
            ),
            (
                "{policy: RoundRobin, key: /x}",
                "key: only the HashRing and ConsistentHash policies use a key",
            ),
            (
                "{policy: HashRing, key: \"\"}",
                "key: expected a JSON pointer into the session metadata",
            ),
            ("{policy: HashRing, key: /a~2}", "key: invalid escape in JSON pointer"),
            ("{policy: HashRing, key: 5}", "key: expected a string, got 5"),
            (
                "{policy: HashRing, on_missing_key: first}",
                "on_missing_key: on_missing_key needs a key",
            ),
            (
                "{policy: HashRing, key: /x, on_missing_key: drop}",
                "on_missing_key: expected one of: first, random, fail",
            ),
            (
                "{outlier_detection: {consecutive_failures: -1}}",
                "outlier_detection.consecutive_failures: expected an integer 0..1000",
            ),
            (
                "{outlier_detection: {ejection_time: 0}}",
                "outlier_detection.ejection_time: expected a number of seconds > 0",
            ),
            (
                "{outlier_detection: {max_ejection_time: 5}}",
                "outlier_detection.max_ejection_time: max_ejection_time (5s) is shorter than ejection_time (10s)",
            ),
            (
                "{outlier_detection: {cooldown: 5}}",
                "outlier_detection.cooldown: unknown field",
            ),
            ("{polcy: Trivial}", "polcy: unknown field"),
        ];
        for (spec, want) in cases {
            let e = lb(spec).expect_err(spec);
            assert_eq!(e.len(), 1, "{spec}: {e:?}");
            assert!(e[0].starts_with(&format!("{at}.{want}")), "{spec}: {e:?}");
        }
        let e = errors(
            "clusters:\n  - {name: c, spec: {protocol: TCP, port: 1}, endpoints: [{spec: {address: a}, weight: 0}, {spec: {address: b}, weight: 0}]}\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("clusters[0].endpoints: every endpoint has weight 0"),
            "{e:?}"
        );
        let e = errors(
            "clusters:\n  - {name: c, spec: {protocol: TCP, port: 1}, endpoints: [{spec: {address: a}, weight: 1.5}]}\n",
        );
        assert_eq!(
            e,
            vec!["clusters[0].endpoints[0].weight: expected an integer 0..1000000, got 1.5"]
        );
    }

    #[test]
    fn a_route_destination_may_be_a_weighted_split() {
        let cfg = load(
            r#"
clusters:
  - {name: stable, spec: {protocol: Echo}}
routes:
  - name: r
    destination:
      - {cluster: stable, weight: 90}
      - {cluster: {spec: {protocol: Discard}}, weight: 10}
  - name: r2
    cluster: [{cluster: stable}]
"#,
        )
        .expect("valid");
        assert_eq!(
            cfg.routes[0].destination,
            Destination::Split(vec![
                WeightedCluster {
                    cluster: "stable".into(),
                    weight: 90
                },
                WeightedCluster {
                    cluster: "r-Cluster-0".into(),
                    weight: 10
                },
            ])
        );
        assert_eq!(
            cfg.routes[0].destination.clusters().collect::<Vec<_>>(),
            ["stable", "r-Cluster-0"]
        );
        assert_eq!(
            cfg.routes[1].destination,
            Destination::Split(vec![WeightedCluster {
                cluster: "stable".into(),
                weight: 1
            }])
        );
        let e = errors("routes:\n  - {name: r, destination: []}\n");
        assert_eq!(
            e,
            vec!["routes[0].destination: expected a cluster, or a non-empty list of {cluster, weight}"]
        );
        let e = errors(
            "clusters: [{name: a, spec: {protocol: Echo}}]\nroutes:\n  - {name: r, destination: [{cluster: a, weight: 0}, {cluster: nope, weight: -3}, {weight: 1}, {cluster: a, wieght: 2}]}\n",
        );
        assert_eq!(
            e,
            vec![
                "routes[0].destination[1].weight: expected an integer 0..1000000, got -3",
                "routes[0].destination[2].cluster: missing required field",
                "routes[0].destination[3].wieght: unknown field (expected one of: cluster, weight)",
                "routes[0].destination[3].cluster: cluster \"a\" appears twice in the split (add up the weights instead)",
                "routes[0].destination[1].cluster: cluster \"nope\" is not defined",
            ]
        );
        let e = errors(
            "clusters: [{name: a, spec: {protocol: Echo}}]\nroutes:\n  - {name: r, destination: [{cluster: a, weight: 0}]}\n",
        );
        assert_eq!(
            e,
            vec![
                "routes[0].destination: every cluster of the split has weight 0, so no session could be sent anywhere"
            ]
        );
    }
}

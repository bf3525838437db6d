//! The `tls` block of TLS, DTLS, `wss` and `https` listeners and clusters. Only the shape is checked here (the
//! loader does no I/O); the agent reads the files when it builds the configuration and rejects it, naming the field,
//! when one is unreadable or does not parse.

use crate::decode::{Decoder, describe};
use crate::model::{ClientAuth, SniCert, TlsSpec};
use crate::path::FieldPath;
use serde_json::Value;

const LISTENER_FIELDS: &[&str] = &["cert", "key", "ca", "client_auth", "alpn", "sni"];
const SNI_FIELDS: &[&str] = &["server_name", "cert", "key"];
const CLUSTER_FIELDS: &[&str] = &["cert", "key", "ca", "server_name", "alpn"];

/// A listener's `tls`: `cert` and `key` required unless `sni` names certificates; `client_auth` other than `none`
/// needs `ca`.
pub(super) fn listener(d: &mut Decoder, v: &Value, path: &FieldPath) -> Option<TlsSpec> {
    let o = d.object(v, path, LISTENER_FIELDS)?;
    let sni = match o.get("sni") {
        None => Some(Vec::new()),
        Some(v) => sni(d, v, &o.at("sni")),
    };
    let has_sni = sni.as_ref().is_some_and(|s| !s.is_empty());
    let (cert, key) = if has_sni {
        (
            optional_file(d, o.get("cert"), &o.at("cert")),
            optional_file(d, o.get("key"), &o.at("key")),
        )
    } else {
        (
            d.required(o, "cert").and_then(|c| file(d, c, &o.at("cert"))).map(Some),
            d.required(o, "key").and_then(|k| file(d, k, &o.at("key"))).map(Some),
        )
    };
    let ca = optional_file(d, o.get("ca"), &o.at("ca"));
    let client_auth = match o.get("client_auth") {
        None => Some(ClientAuth::None),
        Some(Value::String(s)) if s == "none" => Some(ClientAuth::None),
        Some(Value::String(s)) if s == "optional" => Some(ClientAuth::Optional),
        Some(Value::String(s)) if s == "required" => Some(ClientAuth::Required),
        Some(other) => {
            d.error(
                &o.at("client_auth"),
                format!(
                    "expected \"none\", \"optional\" or \"required\", got {}",
                    describe(other)
                ),
            );
            None
        }
    };
    let alpn = alpn(d, o.get("alpn"), &o.at("alpn"));
    let (ca, client_auth) = (ca?, client_auth?);
    if client_auth != ClientAuth::None && ca.is_none() {
        d.error(
            &o.at("ca"),
            format!(
                "missing required field (client_auth: {} verifies client certificates against these CAs)",
                client_auth.as_str()
            ),
        );
        return None;
    }
    let (cert, key, sni) = (cert?, key?, sni?);
    match (&cert, &key) {
        (Some(_), None) => {
            d.error(&o.at("key"), "missing required field (the key of `cert`)");
            return None;
        }
        (None, Some(_)) => {
            d.error(&o.at("cert"), "missing required field (the certificate of `key`)");
            return None;
        }
        _ => {}
    }
    Some(TlsSpec {
        cert,
        key,
        ca,
        client_auth,
        server_name: None,
        alpn: alpn?,
        sni,
    })
}

/// `sni`: certificates by server name; names are DNS names or `*.` wildcards, each at most once.
fn sni(d: &mut Decoder, v: &Value, path: &FieldPath) -> Option<Vec<SniCert>> {
    let items = d.array(v, path, |d, item, p| {
        let o = d.object(item, p, SNI_FIELDS)?;
        let name = d
            .required(o, "server_name")
            .and_then(|n| d.string(n, &o.at("server_name")));
        let cert = d.required(o, "cert").and_then(|c| file(d, c, &o.at("cert")));
        let key = d.required(o, "key").and_then(|k| file(d, k, &o.at("key")));
        let name = name?;
        if !valid_sni_name(&name) {
            d.error(
                &o.at("server_name"),
                format!("expected a DNS name or a wildcard like \"*.example.org\", got {name:?}"),
            );
            return None;
        }
        Some(SniCert {
            server_name: name.to_ascii_lowercase(),
            cert: cert?,
            key: key?,
        })
    })?;
    for (i, c) in items.iter().enumerate() {
        if items[..i].iter().any(|o| o.server_name == c.server_name) {
            d.error(
                &path.index(i).key("server_name"),
                format!("{:?} appears twice", c.server_name),
            );
            return None;
        }
    }
    Some(items)
}

/// A DNS name (labels of letters, digits, `-`, `_`), optionally with a leading `*.` label.
fn valid_sni_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A cluster's `tls`: everything optional; `cert` and `key` (the client certificate) come together.
pub(super) fn cluster(d: &mut Decoder, v: &Value, path: &FieldPath) -> Option<TlsSpec> {
    let o = d.object(v, path, CLUSTER_FIELDS)?;
    let cert = optional_file(d, o.get("cert"), &o.at("cert"));
    let key = optional_file(d, o.get("key"), &o.at("key"));
    let ca = optional_file(d, o.get("ca"), &o.at("ca"));
    let server_name = match o.get("server_name") {
        None => Some(None),
        Some(s) => d.string(s, &o.at("server_name")).and_then(|s| {
            if s.is_empty() || s.chars().any(char::is_whitespace) {
                d.error(
                    &o.at("server_name"),
                    format!("expected a DNS name or an IP address, got {s:?}"),
                );
                None
            } else {
                Some(Some(s))
            }
        }),
    };
    let alpn = alpn(d, o.get("alpn"), &o.at("alpn"));
    let (cert, key) = (cert?, key?);
    match (&cert, &key) {
        (Some(_), None) => {
            d.error(
                &o.at("key"),
                "missing required field (the key of the client certificate `cert`)",
            );
            return None;
        }
        (None, Some(_)) => {
            d.error(
                &o.at("cert"),
                "missing required field (the client certificate of `key`)",
            );
            return None;
        }
        _ => {}
    }
    Some(TlsSpec {
        cert,
        key,
        ca: ca?,
        client_auth: ClientAuth::None,
        server_name: server_name?,
        alpn: alpn?,
        sni: Vec::new(),
    })
}

fn file(d: &mut Decoder, v: &Value, path: &FieldPath) -> Option<String> {
    let f = d.string(v, path)?;
    if f.is_empty() {
        d.error(path, "expected a PEM file path, got an empty string");
        return None;
    }
    Some(f)
}

fn optional_file(d: &mut Decoder, v: Option<&Value>, path: &FieldPath) -> Option<Option<String>> {
    match v {
        None => Some(None),
        Some(v) => file(d, v, path).map(Some),
    }
}

/// ALPN protocol names: 1..255 bytes each (RFC 7301).
fn alpn(d: &mut Decoder, v: Option<&Value>, path: &FieldPath) -> Option<Vec<String>> {
    let Some(v) = v else {
        return Some(Vec::new());
    };
    d.array(v, path, |d, item, p| {
        let s = d.string(item, p)?;
        if s.is_empty() || s.len() > 255 {
            d.error(p, format!("expected a protocol name of 1..255 bytes, got {s:?}"));
            return None;
        }
        Some(s)
    })
}

#[cfg(test)]
mod tests {
    use crate::model::{ClientAuth, ClusterSpec, ListenerSpec};
    use crate::{config_from_value, dump};
    use serde_json::{Value, json};

    fn errors(doc: Value) -> Vec<String> {
        match config_from_value(&doc) {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    }

    fn listener(spec: Value) -> Value {
        json!({"listeners": [{"name": "l", "spec": spec, "rules": [{"action": {"route": {"destination": {"spec": {"protocol": "Echo"}}}}}]}]})
    }

    fn cluster(spec: Value) -> Value {
        json!({"clusters": [{"name": "c", "spec": spec, "endpoints": [{"spec": {"address": "localhost"}}]}]})
    }

    #[test]
    fn tls_blocks_load_and_dump_back_to_equal_configurations() {
        let doc = json!({
            "listeners": [
                {"name": "t", "spec": {"protocol": "TLS", "port": 443, "tls": {"cert": "c.pem", "key": "k.pem", "ca": "ca.pem", "client_auth": "required", "alpn": ["h2"]}},
                 "rules": [{"action": {"route": {"destination": "up"}}}]},
                {"name": "d", "spec": {"protocol": "DTLS", "port": 5684, "idle_timeout": 0, "tls": {"cert": "c.pem", "key": "k.pem"}},
                 "rules": [{"action": {"route": {"destination": "up"}}}]},
                {"name": "h", "spec": {"protocol": "HTTP", "port": 8443, "tls": {"cert": "c.pem", "key": "k.pem"}},
                 "rules": [{"action": {"route": {"destination": "ws"}}}]},
                {"name": "s", "spec": {"protocol": "TLS", "port": 8444, "tls": {"sni": [
                    {"server_name": "API.example.org", "cert": "a.pem", "key": "a.key"},
                    {"server_name": "*.example.org", "cert": "w.pem", "key": "w.key"}]}},
                 "rules": [{"action": {"route": {"destination": "ws"}}}]}
            ],
            "clusters": [
                {"name": "up", "spec": {"protocol": "TLS", "port": 443, "tls": {"ca": "ca.pem", "server_name": "api.internal", "cert": "c.pem", "key": "k.pem"}},
                 "endpoints": [{"spec": {"address": "10.0.0.1"}}]},
                {"name": "ws", "spec": {"protocol": "WebSocket", "port": 443, "tls": {}}, "endpoints": [{"spec": {"address": "a"}}]}
            ]
        });
        let cfg = config_from_value(&doc).expect("valid");
        let ListenerSpec::Tls(t) = &cfg.listeners[0].spec else {
            panic!("TLS listener")
        };
        let tls = t.tls.as_deref().expect("tls");
        assert_eq!(tls.client_auth, ClientAuth::Required);
        assert_eq!(tls.alpn, vec!["h2".to_owned()]);
        assert!(matches!(&cfg.listeners[1].spec, ListenerSpec::Dtls(d) if d.idle_timeout.is_none()));
        assert!(cfg.listeners[2].spec.tls().is_some(), "https");
        let sni = &cfg.listeners[3].spec.tls().expect("tls").sni;
        assert_eq!(sni.len(), 2);
        assert_eq!(sni[0].server_name, "api.example.org", "names are kept in lower case");
        assert!(
            cfg.listeners[3].spec.tls().expect("tls").cert.is_none(),
            "no default certificate"
        );
        let ClusterSpec::Tls { tls, .. } = &cfg.clusters[0].spec else {
            panic!("TLS cluster")
        };
        assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
        assert!(cfg.clusters[1].spec.tls().is_some(), "wss");
        let again = config_from_value(&dump::config(&cfg)).expect("the dump loads");
        assert_eq!(again.listeners, cfg.listeners);
        assert_eq!(again.clusters, cfg.clusters);
    }

    #[test]
    fn bad_tls_blocks_are_rejected_naming_the_field() {
        let cases = [
            (
                listener(json!({"protocol": "TLS", "port": 443})),
                "listeners[0].spec.tls: missing required field",
            ),
            (
                listener(json!({"protocol": "TLS", "port": 443, "tls": {"key": "k.pem"}})),
                "listeners[0].spec.tls.cert: missing required field",
            ),
            (
                listener(
                    json!({"protocol": "DTLS", "port": 1, "tls": {"cert": "c", "key": "k", "client_auth": "required"}}),
                ),
                "listeners[0].spec.tls.ca: missing required field (client_auth: required",
            ),
            (
                listener(json!({"protocol": "TLS", "port": 1, "tls": {"cert": "c", "key": "k", "client_auth": "yes"}})),
                "listeners[0].spec.tls.client_auth: expected \"none\", \"optional\" or \"required\", got \"yes\"",
            ),
            (
                listener(json!({"protocol": "TLS", "port": 1, "tls": {"cert": "c", "key": "k", "server_name": "x"}})),
                "listeners[0].spec.tls.server_name: unknown field",
            ),
            (
                listener(json!({"protocol": "TCP", "port": 1, "tls": {"cert": "c", "key": "k"}})),
                "listeners[0].spec.tls: unknown field",
            ),
            (
                listener(
                    json!({"protocol": "TLS", "port": 1, "tls": {"sni": [{"server_name": "a b", "cert": "c", "key": "k"}]}}),
                ),
                "listeners[0].spec.tls.sni[0].server_name: expected a DNS name or a wildcard",
            ),
            (
                listener(json!({"protocol": "TLS", "port": 1, "tls": {"sni": [
                    {"server_name": "a.org", "cert": "c", "key": "k"}, {"server_name": "A.org", "cert": "c", "key": "k"}]}})),
                "listeners[0].spec.tls.sni[1].server_name: \"a.org\" appears twice",
            ),
            (
                listener(
                    json!({"protocol": "TLS", "port": 1, "tls": {"sni": [{"server_name": "a.org", "cert": "c"}]}}),
                ),
                "listeners[0].spec.tls.sni[0].key: missing required field",
            ),
            (
                listener(
                    json!({"protocol": "TLS", "port": 1, "tls": {"cert": "c", "sni": [{"server_name": "a.org", "cert": "c", "key": "k"}]}}),
                ),
                "listeners[0].spec.tls.key: missing required field",
            ),
            (
                cluster(json!({"protocol": "TLS", "port": 1, "tls": {"cert": "c.pem"}})),
                "clusters[0].spec.tls.key: missing required field",
            ),
            (
                cluster(json!({"protocol": "TLS", "port": 1, "tls": {"alpn": [""]}})),
                "clusters[0].spec.tls.alpn[0]: expected a protocol name of 1..255 bytes",
            ),
            (
                cluster(json!({"protocol": "DTLS", "port": 1, "tls": {"client_auth": "none"}})),
                "clusters[0].spec.tls.client_auth: unknown field",
            ),
        ];
        for (doc, want) in cases {
            let errs = errors(doc);
            assert!(errs.iter().any(|e| e.contains(want)), "want {want:?}, got {errs:?}");
        }
    }
}

//! The `tls` block of TLS, DTLS, `wss` and `https` listeners and clusters. Only the shape is checked here (the
//! loader does no I/O); the agent reads the files when it builds the configuration and rejects it, naming the field,
//! when one is unreadable or does not parse.

use crate::decode::{Decoder, describe};
use crate::model::{ClientAuth, TlsSpec};
use crate::path::FieldPath;
use serde_json::Value;

const LISTENER_FIELDS: &[&str] = &["cert", "key", "ca", "client_auth", "alpn"];
const CLUSTER_FIELDS: &[&str] = &["cert", "key", "ca", "server_name", "alpn"];

/// A listener's `tls`: `cert` and `key` required; `client_auth` other than `none` needs `ca`.
pub(super) fn listener(d: &mut Decoder, v: &Value, path: &FieldPath) -> Option<TlsSpec> {
    let o = d.object(v, path, LISTENER_FIELDS)?;
    let cert = d.required(o, "cert").and_then(|c| file(d, c, &o.at("cert")));
    let key = d.required(o, "key").and_then(|k| file(d, k, &o.at("key")));
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
    Some(TlsSpec {
        cert: Some(cert?),
        key: Some(key?),
        ca,
        client_auth,
        server_name: None,
        alpn: alpn?,
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

//! The agent's xDS client: incremental (delta) ADS against `l7mp-control`, subscribed to every l7mp resource type.
//!
//! Each response is applied through the engine's validate-then-swap path: the resources the agent holds, changed by
//! the response, are assembled into a flat configuration (over the static file, if one was given) and loaded by the
//! same loader as a file (`l7mp_api::wire`), then put in force. Success is ACKed; failure (an invalid object, a port
//! in use) is NACKed with the error, which names the object and field, and the agent keeps its last good
//! configuration and every live session. When the control plane goes away, nothing changes on the agent: it keeps
//! serving and reconnects with jittered exponential back-off (to the next server in its list), sending the versions
//! it holds (`initial_resource_versions`) so that unchanged resources are not downloaded again.

use crate::engine::Engine;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use l7mp_api::wire;
use prost::Message;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the agent tells the control plane about itself, and where the control plane is.
#[derive(Debug, Clone)]
pub struct XdsOptions {
    /// Control-plane URLs (`http://HOST:PORT`), tried in turn.
    pub servers: Vec<String>,
    pub node_id: String,
    pub labels: BTreeMap<String, String>,
    /// The address other agents reach this one at (for Targets whose endpoints select agents).
    pub address: Option<IpAddr>,
    /// The static configuration document the resources are added to (`Value::Null`: none).
    pub base: Value,
    /// TLS for `https://` servers (`crate::xds_tls`).
    pub tls: crate::xds_tls::XdsTlsArgs,
}

/// The resources the agent holds: type URL → name → (version, body).
type Held = BTreeMap<String, BTreeMap<String, (String, Vec<u8>)>>;

/// Longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Runs the client until `cancel`.
pub async fn run(engine: Arc<Engine>, opts: XdsOptions, cancel: CancellationToken) {
    let mut held: Held = BTreeMap::new();
    let mut failures: u32 = 0;
    let mut server = 0usize;
    loop {
        let Some(url) = opts.servers.get(server % opts.servers.len().max(1)).cloned() else {
            tracing::error!("xDS: no control-plane address given");
            return;
        };
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = session(&engine, &opts, &url, &mut held) => r,
        };
        match outcome {
            Ok(()) => {
                failures = 0;
                tracing::warn!(server = %url, "xDS: the control plane closed the stream; reconnecting");
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(server = %url, "xDS: {e}; keeping the configuration in force and reconnecting");
                server += 1;
            }
        }
        let pause = backoff(failures);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Exponential back-off from 100 ms to [`MAX_BACKOFF`], with ±25% jitter so that many agents do not reconnect in
/// step.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1 << failures.min(7))
        .min(MAX_BACKOFF);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 0.75 + f64::from(nanos % 1000) / 2000.0;
    base.mul_f64(jitter)
}

/// The node the agent presents: its id, and its labels and address in the metadata.
fn node(opts: &XdsOptions) -> Node {
    let mut meta = json!({"labels": opts.labels});
    if let Some(a) = opts.address {
        meta["address"] = json!(a.to_string());
    }
    // prost_types::Struct and envoy-types' own Struct are the same message: move it across by its encoding.
    let metadata = wire::to_struct(&meta)
        .and_then(|s| envoy_types::pb::google::protobuf::Struct::decode(s.encode_to_vec().as_slice()).ok());
    Node {
        id: opts.node_id.clone(),
        cluster: opts.labels.get("app").cloned().unwrap_or_default(),
        metadata,
        user_agent_name: "l7mp-agent".into(),
        ..Default::default()
    }
}

/// Why a stream ended with an error.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("cannot connect to {url}: {error}")]
    Connect { url: String, error: String },
    #[error("the stream failed: {0}")]
    Stream(String),
}

/// One stream: subscribe to every type, then apply responses until the stream ends.
async fn session(engine: &Arc<Engine>, opts: &XdsOptions, url: &str, held: &mut Held) -> Result<(), StreamError> {
    let connect_err = |error: String| StreamError::Connect {
        url: url.to_owned(),
        error: format!("{error}{}", opts.tls.hint(url)),
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| connect_err(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let endpoint = opts.tls.configure(endpoint, url).map_err(connect_err)?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| connect_err(crate::xds_tls::error_chain(&e)))?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, mut rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let requests = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut first = true;
    for ty in wire::TYPES {
        let type_url = wire::type_url(ty);
        let initial: HashMap<String, String> = held
            .get(&type_url)
            .map(|m| m.iter().map(|(n, (v, _))| (n.clone(), v.clone())).collect())
            .unwrap_or_default();
        let req = DeltaDiscoveryRequest {
            node: first.then(|| node(opts)),
            type_url,
            initial_resource_versions: initial,
            ..Default::default()
        };
        first = false;
        if tx.send(req).await.is_err() {
            return Err(StreamError::Stream("the request queue closed".into()));
        }
    }
    let mut responses = client
        .delta_aggregated_resources(requests)
        .await
        .map_err(|e| connect_err(crate::xds_tls::status_text(&e)))?
        .into_inner();
    tracing::info!(server = %url, node = %opts.node_id, "xDS: connected");
    loop {
        let resp = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => return Err(StreamError::Stream(crate::xds_tls::status_text(&e))),
        };
        let ack = apply(engine, opts, held, &resp).await;
        let error_detail = ack.err().map(|message| RpcStatus {
            code: 3, // INVALID_ARGUMENT
            message,
            details: vec![],
        });
        let reply = DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail,
            ..Default::default()
        };
        if tx.send(reply).await.is_err() {
            return Err(StreamError::Stream("the request queue closed".into()));
        }
    }
}

/// Applies one response: the held resources with its changes, loaded and put in force. On success the changes are
/// kept; on failure nothing changes and the error (for the NACK) is returned.
async fn apply(
    engine: &Arc<Engine>,
    opts: &XdsOptions,
    held: &mut Held,
    resp: &DeltaDiscoveryResponse,
) -> Result<(), String> {
    let mut next = held.clone();
    let table = next.entry(resp.type_url.clone()).or_default();
    for r in &resp.resources {
        let Some(any) = &r.resource else {
            continue; // a name-only entry (no payload): nothing to change
        };
        if any.type_url != resp.type_url {
            return Err(format!(
                "resource {:?} is a {}, in a response for {}",
                r.name, any.type_url, resp.type_url
            ));
        }
        table.insert(r.name.clone(), (r.version.clone(), any.value.clone()));
    }
    for name in &resp.removed_resources {
        table.remove(name);
    }
    let resources = next.iter().flat_map(|(ty, m)| {
        m.iter()
            .map(move |(name, (_, body))| (ty.as_str(), name.as_str(), body.as_slice()))
    });
    let cfg = wire::decode(&opts.base, resources).map_err(|e| e.to_string())?;
    let changed = resp.resources.len() + resp.removed_resources.len();
    match engine.apply(cfg).await {
        Ok(()) => {
            tracing::info!(
                type_url = %resp.type_url,
                changed,
                version = %resp.system_version_info,
                "xDS: configuration applied"
            );
            *held = next;
            Ok(())
        }
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::warn!(type_url = %resp.type_url, "xDS: rejected (NACK): {msg}");
            Err(msg)
        }
    }
}

/// Checks the control-plane URLs (the `--xds` flag) before anything connects: each must be an `http://` or
/// `https://` URL with a host.
pub fn check_servers(servers: &[String]) -> Result<(), String> {
    for s in servers {
        let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(format!("{s:?}: expected http://HOST:PORT")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("{s:?}: no host"));
        }
    }
    if servers.is_empty() {
        return Err("no control-plane URL".into());
    }
    Ok(())
}

/// Where a pod's labels are, by convention, when a `downwardAPI` volume is mounted at /etc/podinfo.
pub const DEFAULT_LABELS_FILE: &str = "/etc/podinfo/labels";

/// Who the agent says it is to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `None`: nothing said; the caller falls back to the host name.
    pub node_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub address: Option<IpAddr>,
}

/// The agent's identity from its flags and, in a pod, the downward API: the node id defaults to
/// `POD_NAME.POD_NAMESPACE` (or `POD_NAME`), the labels to those of `labels_file` (or [`DEFAULT_LABELS_FILE`] if it
/// exists) with `--labels` on top, the address to `POD_IP`. `env` reads an environment variable.
pub fn identity(
    node_id: Option<&str>,
    labels: &str,
    labels_file: Option<&std::path::Path>,
    address: Option<IpAddr>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Identity, String> {
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    let node_id = node_id.map(str::to_owned).or_else(|| {
        let name = env("POD_NAME")?;
        Some(match env("POD_NAMESPACE") {
            Some(ns) => format!("{name}.{ns}"),
            None => name,
        })
    });
    let file = match labels_file {
        Some(f) => Some(f.to_path_buf()),
        None => Some(std::path::PathBuf::from(DEFAULT_LABELS_FILE)).filter(|f| f.exists()),
    };
    let mut all = match file {
        Some(f) => {
            let text = std::fs::read_to_string(&f).map_err(|e| format!("--labels-file {}: {e}", f.display()))?;
            parse_labels_file(&text).map_err(|e| format!("--labels-file {}: {e}", f.display()))?
        }
        None => BTreeMap::new(),
    };
    all.extend(parse_labels(labels).map_err(|e| format!("--labels: {e}"))?);
    let address = match (address, env("POD_IP")) {
        (Some(a), _) => Some(a),
        (None, Some(ip)) => Some(ip.parse().map_err(|e| format!("POD_IP {ip:?}: {e}"))?),
        (None, None) => None,
    };
    Ok(Identity {
        node_id,
        labels: all,
        address,
    })
}

/// Parses the downward API's labels file: one `key="value"` per line, the value quoted with Go's escapes (`\"`,
/// `\\`, `\n`, `\t`, ...). Blank lines are skipped.
pub fn parse_labels_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        let (k, v) = line.split_once('=').ok_or_else(|| bad("expected key=\"value\""))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(bad("the key is empty"));
        }
        let v = v.trim();
        let inner = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| bad("the value is not quoted"))?;
        let mut value = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                value.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => value.push('\n'),
                Some('t') => value.push('\t'),
                Some('r') => value.push('\r'),
                Some(c @ ('"' | '\\')) => value.push(c),
                _ => return Err(bad("unsupported escape in the value")),
            }
        }
        out.insert(k.to_owned(), value);
    }
    Ok(out)
}

/// Parses `k=v,k2=v2` (the `--labels` flag).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("label {item:?}: expected key=value"))?;
        if k.is_empty() {
            return Err(format!("label {item:?}: the key is empty"));
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_from_the_downward_api() {
        let dir = std::env::temp_dir().join(format!("l7mp-podinfo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("labels");
        std::fs::write(
            &file,
            "app=\"echo\"\npod-template-hash=\"5d9f\"\nnote=\"a \\\"quoted\\\" one\"\n\n",
        )
        .expect("write");
        let env = |k: &str| match k {
            "POD_NAME" => Some("echo-5d9f-abcde".to_string()),
            "POD_NAMESPACE" => Some("media".to_string()),
            "POD_IP" => Some("10.1.2.3".to_string()),
            _ => None,
        };
        let id = identity(None, "zone=a,app=gw", Some(&file), None, env).expect("identity");
        assert_eq!(id.node_id.as_deref(), Some("echo-5d9f-abcde.media"));
        assert_eq!(id.address, Some("10.1.2.3".parse().expect("ip")));
        let want: BTreeMap<String, String> = [
            ("app", "gw"), // --labels overrides the file
            ("note", "a \"quoted\" one"),
            ("pod-template-hash", "5d9f"),
            ("zone", "a"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(id.labels, want);
        // Flags win over the environment; outside a pod nothing is made up.
        let id = identity(Some("n1"), "", None, Some("10.9.9.9".parse().expect("ip")), env).expect("identity");
        assert_eq!(id.node_id.as_deref(), Some("n1"));
        assert_eq!(id.address, Some("10.9.9.9".parse().expect("ip")));
        let id = identity(None, "", Some(&file), None, |_| None).expect("identity");
        assert_eq!((id.node_id, id.address), (None, None));
        // Errors name the file and line.
        std::fs::write(&file, "app=echo\n").expect("write");
        let e = identity(None, "", Some(&file), None, |_| None).expect_err("unquoted");
        assert!(e.contains("line 1: the value is not quoted"), "{e}");
        assert!(identity(None, "", Some(&dir.join("missing")), None, |_| None).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn labels_and_backoff() {
        let l = parse_labels("app=web, zone=a,").expect("valid");
        assert_eq!(l.get("zone").map(String::as_str), Some("a"));
        assert!(parse_labels("novalue").is_err());
        assert!(parse_labels("=x").is_err());
        assert!(check_servers(&["http://10.0.0.1:18000".into()]).is_ok());
        assert!(check_servers(&["10.0.0.1:18000".into()]).is_err());
        assert!(check_servers(&["ftp://x".into()]).is_err());
        assert!(check_servers(&[]).is_err());
        assert!(backoff(0) <= Duration::from_millis(125));
        assert!(backoff(20) <= MAX_BACKOFF.mul_f64(1.25));
        let n = node(&XdsOptions {
            servers: vec![],
            node_id: "n1".into(),
            labels: l,
            address: Some("10.0.0.1".parse().expect("ip")),
            base: Value::Null,
            tls: Default::default(),
        });
        let meta = n.metadata.expect("metadata");
        assert!(meta.fields.contains_key("labels") && meta.fields.contains_key("address"));
    }
}

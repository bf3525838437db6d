//! Many lightweight delta-ADS clients in one process against a running l7mp-control, for `e2e/bench/xds_scale.py`.
//!
//! Each client presents itself as an agent (node id `scale-N`, labels from `--labels`), subscribes to every l7mp
//! resource type and ACKs every response, like the agent does (without applying anything). After all clients have
//! received their first configuration, the program applies `--change` (a YAML file of resource objects) through the
//! Management API and reports how long each client took to receive and ACK the resulting update: p50, p99, max.
//!
//!     cargo run --release -p l7mp-control --example xds_scale -- --server http://127.0.0.1:18000 \
//!         --clients 1000 --labels app=scale --change change.yaml
//!
//! With `--hold`, once every client is configured and `--settle` has passed it prints
//! `{"event":"connected",...}` and waits for a line on stdin before applying the change (the driver measures the
//! control plane's idle memory in between). Prints one JSON object on the last line of its output.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use l7mp_api::wire;
use l7mp_protos::management::v1 as mpb;
use prost::Message;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};

struct Opts {
    server: String,
    clients: usize,
    labels: Value,
    change: Option<String>,
    settle: Duration,
    hold: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        server: "http://127.0.0.1:18000".into(),
        clients: 100,
        labels: json!({}),
        change: None,
        settle: Duration::from_secs(2),
        hold: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--server" => o.server = val()?,
            "--clients" => o.clients = val()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--labels" => {
                let mut m = serde_json::Map::new();
                for kv in val()?.split(',').filter(|s| !s.is_empty()) {
                    let (k, v) = kv.split_once('=').ok_or(format!("--labels: {kv:?} is not k=v"))?;
                    m.insert(k.into(), json!(v));
                }
                o.labels = Value::Object(m);
            }
            "--change" => o.change = Some(val()?),
            "--settle" => o.settle = Duration::from_secs_f64(val()?.parse().map_err(|e| format!("--settle: {e}"))?),
            "--hold" => o.hold = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// What the clients report: per client, when its latest update arrived (and was ACKed).
struct Shared {
    /// Responses received per client.
    responses: Vec<AtomicUsize>,
    /// The instant each client ACKed a response after the change was applied.
    after_change: Mutex<Vec<Option<Instant>>>,
    change_at: Mutex<Option<Instant>>,
}

async fn client(i: usize, server: String, labels: Value, shared: Arc<Shared>) -> Result<(), String> {
    let mut c = AggregatedDiscoveryServiceClient::connect(server)
        .await
        .map_err(|e| format!("client {i}: {e}"))?;
    let (tx, mut rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let meta = wire::to_struct(&json!({"labels": labels}))
        .and_then(|s| envoy_types::pb::google::protobuf::Struct::decode(s.encode_to_vec().as_slice()).ok());
    for (n, ty) in wire::TYPES.iter().enumerate() {
        let req = DeltaDiscoveryRequest {
            node: (n == 0).then(|| Node {
                id: format!("scale-{i}"),
                metadata: meta.clone(),
                ..Default::default()
            }),
            type_url: wire::type_url(ty),
            ..Default::default()
        };
        tx.send(req).await.map_err(|e| e.to_string())?;
    }
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut resp = c
        .delta_aggregated_resources(stream)
        .await
        .map_err(|e| format!("client {i}: {e}"))?
        .into_inner();
    while let Some(r) = resp.message().await.map_err(|e| format!("client {i}: {e}"))? {
        tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        if let Some(n) = shared.responses.get(i) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        if shared.change_at.lock().await.is_some() {
            let mut a = shared.after_change.lock().await;
            if let Some(slot) = a.get_mut(i) {
                *slot = Some(Instant::now());
            }
        }
    }
    Ok(())
}

fn rss_of_self() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xds_scale: {e}");
            std::process::exit(2);
        }
    };
    let shared = Arc::new(Shared {
        responses: (0..o.clients).map(|_| AtomicUsize::new(0)).collect(),
        after_change: Mutex::new(vec![None; o.clients]),
        change_at: Mutex::new(None),
    });
    let started = Instant::now();
    for i in 0..o.clients {
        let (server, labels, shared) = (o.server.clone(), o.labels.clone(), shared.clone());
        tokio::spawn(async move {
            if let Err(e) = client(i, server, labels, shared).await {
                eprintln!("{e}");
            }
        });
    }
    // Wait until every client has its first configuration (at least one response), then for things to settle.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = shared
            .responses
            .iter()
            .filter(|n| n.load(Ordering::Relaxed) > 0)
            .count();
        if ready == o.clients {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("xds_scale: only {ready} of {} clients got a configuration", o.clients);
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected_in = started.elapsed();
    eprintln!(
        "xds_scale: {} clients connected and configured in {connected_in:?}",
        o.clients
    );
    tokio::time::sleep(o.settle).await;
    if o.hold {
        // Tell the driver the streams are up and idle, and wait for its go (one line on stdin): it measures the
        // control plane's memory with every stream connected and nothing in flight.
        println!("{}", json!({"event": "connected", "clients": o.clients}));
        let mut line = String::new();
        let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    }
    let Some(change) = o.change else {
        println!(
            "{}",
            json!({"clients": o.clients, "connected_s": connected_in.as_secs_f64()})
        );
        return;
    };
    let text = match std::fs::read_to_string(&change) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("xds_scale: cannot read {change}: {e}");
            std::process::exit(2);
        }
    };
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        use serde::Deserialize;
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(v) => objects.push(mpb::StoredObject {
                object: wire::to_struct(&v),
                revision: 0,
            }),
            Err(e) => {
                eprintln!("xds_scale: {change}: {e}");
                std::process::exit(2);
            }
        }
    }
    let mut mgmt = match mpb::management_client::ManagementClient::connect(o.server.clone()).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("xds_scale: management API: {e}");
            std::process::exit(1);
        }
    };
    let t0 = Instant::now();
    *shared.change_at.lock().await = Some(t0);
    if let Err(e) = mgmt.apply(mpb::ApplyRequest { objects }).await {
        eprintln!("xds_scale: apply: {}", e.message());
        std::process::exit(1);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let lat: Vec<f64> = loop {
        let a = shared.after_change.lock().await;
        if a.iter().all(Option::is_some) || Instant::now() > deadline {
            break a.iter().flatten().map(|t| t.duration_since(t0).as_secs_f64()).collect();
        }
        drop(a);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        sorted
            .get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let out = json!({
        "clients": o.clients,
        "updated": sorted.len(),
        "connected_s": connected_in.as_secs_f64(),
        "p50_s": pct(0.50),
        "p99_s": pct(0.99),
        "max_s": sorted.last().copied().unwrap_or(f64::NAN),
        "client_rss_kib": rss_of_self(),
    });
    println!("{out}");
    if sorted.len() < o.clients {
        std::process::exit(1);
    }
}

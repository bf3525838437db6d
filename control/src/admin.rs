//! The control plane's admin HTTP listener: `/live`, `/ready` (the first computation is done and the store is
//! reachable, and workload discovery, if on, has listed once; else 503 with the reason) and `/metrics` (Prometheus:
//! connected agents, objects by state, snapshot pushes, ACKs and NACKs, discovery readiness and failures).

use crate::controller::ControlPlane;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

/// Binds `addr` and serves the admin routes in the background.
pub async fn start(addr: SocketAddr, cp: Arc<ControlPlane>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on the admin address {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(cp);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("admin listener stopped: {e}");
        }
    });
    tracing::info!(address = %local, "admin listener started");
    Ok(local)
}

async fn ready(State(cp): State<Arc<ControlPlane>>) -> impl IntoResponse {
    match cp.not_ready_reason() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// The text exposition, written directly (a handful of gauges and counters computed at scrape time).
async fn metrics(State(cp): State<Arc<ControlPlane>>) -> impl IntoResponse {
    let mut out = String::new();
    let agents = cp.xds().map(|x| x.agents()).unwrap_or_default();
    let (mut acks, mut nacks, mut responses) = (0u64, 0u64, 0u64);
    for a in &agents {
        acks += a.counters.acks;
        nacks += a.counters.nacks;
        responses += a.counters.responses;
    }
    let (accepted, rejected) = cp.object_counts();
    let _ = writeln!(out, "# HELP l7mp_control_agents Connected agents (xDS nodes).");
    let _ = writeln!(out, "# TYPE l7mp_control_agents gauge");
    let _ = writeln!(out, "l7mp_control_agents {}", agents.len());
    let _ = writeln!(out, "# HELP l7mp_control_objects Stored objects by computed state.");
    let _ = writeln!(out, "# TYPE l7mp_control_objects gauge");
    let _ = writeln!(out, "l7mp_control_objects{{state=\"accepted\"}} {accepted}");
    let _ = writeln!(out, "l7mp_control_objects{{state=\"rejected\"}} {rejected}");
    let _ = writeln!(
        out,
        "# HELP l7mp_control_xds_responses Responses sent to the connected agents."
    );
    let _ = writeln!(out, "# TYPE l7mp_control_xds_responses gauge");
    let _ = writeln!(out, "l7mp_control_xds_responses {responses}");
    let _ = writeln!(out, "# HELP l7mp_control_xds_acks ACKs from the connected agents.");
    let _ = writeln!(out, "# TYPE l7mp_control_xds_acks gauge");
    let _ = writeln!(out, "l7mp_control_xds_acks {acks}");
    let _ = writeln!(out, "# HELP l7mp_control_xds_nacks NACKs from the connected agents.");
    let _ = writeln!(out, "# TYPE l7mp_control_xds_nacks gauge");
    let _ = writeln!(out, "l7mp_control_xds_nacks {nacks}");
    let _ = writeln!(
        out,
        "# HELP l7mp_control_store_revision The store revision the snapshots were computed from."
    );
    let _ = writeln!(out, "# TYPE l7mp_control_store_revision gauge");
    let _ = writeln!(out, "l7mp_control_store_revision {}", cp.computed_revision());
    let problem = cp.store_problem();
    let _ = writeln!(
        out,
        "# HELP l7mp_control_store_up Whether the store answered the last call (0 while it is unreachable)."
    );
    let _ = writeln!(out, "# TYPE l7mp_control_store_up gauge");
    let _ = writeln!(out, "l7mp_control_store_up {}", u8::from(problem.is_none()));
    let _ = writeln!(
        out,
        "# HELP l7mp_control_store_unreachable_seconds How long the store has been unreachable (0 while it is up)."
    );
    let _ = writeln!(out, "# TYPE l7mp_control_store_unreachable_seconds gauge");
    let _ = writeln!(
        out,
        "l7mp_control_store_unreachable_seconds {}",
        problem
            .and_then(|p| p.since.elapsed().ok())
            .map_or(0.0, |d| d.as_secs_f64())
    );
    if let Some(d) = cp.discovery() {
        let _ = writeln!(
            out,
            "# HELP l7mp_control_discovery_ready Whether workload discovery has listed Kubernetes once (1) or not yet (0)."
        );
        let _ = writeln!(out, "# TYPE l7mp_control_discovery_ready gauge");
        let _ = writeln!(out, "l7mp_control_discovery_ready {}", u8::from(d.ready()));
        let _ = writeln!(
            out,
            "# HELP l7mp_control_discovery_failures_total Failed list or watch calls of workload discovery (each is retried)."
        );
        let _ = writeln!(out, "# TYPE l7mp_control_discovery_failures_total counter");
        let _ = writeln!(out, "l7mp_control_discovery_failures_total {}", d.failures());
    }
    if let Some(l) = cp.leadership() {
        let _ = writeln!(
            out,
            "# HELP l7mp_control_leader Whether this replica holds the leader-election Lease and writes status (1) or not (0)."
        );
        let _ = writeln!(out, "# TYPE l7mp_control_leader gauge");
        let _ = writeln!(out, "l7mp_control_leader {}", u8::from(l.leader));
    }
    // mTLS on the gRPC port (crate::tls): 0 when the port is plaintext.
    let _ = writeln!(
        out,
        "# HELP l7mp_control_tls_handshake_failures_total TLS handshakes on the gRPC port that failed (no client \
         certificate, one the client CA did not sign, not TLS, timed out)."
    );
    let _ = writeln!(out, "# TYPE l7mp_control_tls_handshake_failures_total counter");
    let _ = writeln!(
        out,
        "l7mp_control_tls_handshake_failures_total {}",
        crate::tls::handshake_failures()
    );
    // Refused Management API and CSDS calls (crate::auth).
    let (unauthenticated, denied) = crate::auth::denied();
    let _ = writeln!(
        out,
        "# HELP l7mp_control_api_refused_total Management API and CSDS calls refused: no or an unknown token or \
         identity (UNAUTHENTICATED), a role too low or an agent's certificate (PERMISSION_DENIED)."
    );
    let _ = writeln!(out, "# TYPE l7mp_control_api_refused_total counter");
    let _ = writeln!(
        out,
        "l7mp_control_api_refused_total{{code=\"UNAUTHENTICATED\"}} {unauthenticated}"
    );
    let _ = writeln!(
        out,
        "l7mp_control_api_refused_total{{code=\"PERMISSION_DENIED\"}} {denied}"
    );
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

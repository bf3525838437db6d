//! The built-in admin listener (`--admin ADDR`): the REST API under `/api/v1`, plus `/live` (the process runs),
//! `/ready` (a configuration is in force), `/metrics` (Prometheus) and `/config` (the configuration in force as a
//! static configuration file, JSON or `?format=yaml`).

use super::AdminState;
use super::reply::{self, ApiError, Format};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on the admin address {addr}: {error}")]
pub struct AdminBindError {
    pub addr: SocketAddr,
    pub error: std::io::Error,
}

/// The admin listener's router: health, metrics, configuration, and the REST API.
pub fn router(state: Arc<AdminState>) -> axum::Router {
    let admin = axum::Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .with_state(state.clone());
    super::auth::layer(admin, state.auth.clone()).merge(super::router(state))
}

/// Binds `addr` and serves the admin router until `cancel`. Returns the bound address (useful with port 0).
pub async fn start(
    addr: SocketAddr,
    state: Arc<AdminState>,
    cancel: CancellationToken,
) -> Result<SocketAddr, AdminBindError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| AdminBindError { addr, error })?;
    let local = listener.local_addr().map_err(|error| AdminBindError { addr, error })?;
    let app = router(state);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!("admin listener stopped: {e}");
        }
    });
    tracing::info!(address = %local, "admin listener started");
    Ok(local)
}

async fn live() -> Response {
    reply::json(&json!({"live": true}), Format::Terse)
}

async fn ready(State(st): State<Arc<AdminState>>) -> Response {
    if st.engine.ready() {
        reply::json(&json!({"ready": true}), Format::Terse)
    } else {
        let mut r = reply::json(
            &json!({"ready": false, "reason": "no configuration is in force yet"}),
            Format::Terse,
        );
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r
    }
}

async fn metrics(State(st): State<Arc<AdminState>>) -> Response {
    match st.engine.metrics() {
        Some(m) => {
            let mut r = m.render().into_response();
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::Metrics::CONTENT_TYPE),
            );
            r
        }
        None => ApiError::not_found("metrics are off (the agent runs with --no-metrics)").into_response(),
    }
}

async fn config(State(st): State<Arc<AdminState>>, RawQuery(q): RawQuery) -> Response {
    let cfg = st.engine.snapshot().config.clone();
    let doc = l7mp_api::dump::config(&cfg);
    let yaml = q.as_deref().is_some_and(|q| q.split('&').any(|p| p == "format=yaml"));
    if yaml {
        match serde_yaml_ng::to_string(&doc) {
            Ok(text) => {
                let mut r = text.into_response();
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
                r
            }
            Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    } else {
        reply::json(&doc, Format::Plain)
    }
}

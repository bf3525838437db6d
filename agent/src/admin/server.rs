//! The built-in admin listener (`--admin ADDR`): the REST API under `/api/v1`, plus `/live` (the process runs),
//! `/ready` (a configuration is in force), `/metrics` (Prometheus) and `/config` (the configuration in force as a
//! static configuration file, JSON or `?format=yaml`). Over plain HTTP, or HTTPS with `--admin-tls-cert/-key`; with
//! `--admin-client-ca` the peer's verified client certificate goes into each request's extensions
//! ([`super::auth::PeerCert`]), where the auth middleware finds its name and role.

use super::AdminState;
use super::auth::PeerCert;
use super::reply::{self, ApiError, Format};
use crate::protocol::tls::{HANDSHAKE_TIMEOUT, ServerTls};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use l7mp_auth::PeerIdentity;
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

/// Binds `addr` and serves the admin router until `cancel`, over HTTPS when `tls` is given. Returns the bound address
/// (useful with port 0).
pub async fn start(
    addr: SocketAddr,
    state: Arc<AdminState>,
    tls: Option<Arc<ServerTls>>,
    cancel: CancellationToken,
) -> Result<SocketAddr, AdminBindError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| AdminBindError { addr, error })?;
    let local = listener.local_addr().map_err(|error| AdminBindError { addr, error })?;
    let app = router(state);
    let https = tls.is_some();
    match tls {
        None => {
            tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(cancel.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::warn!("admin listener stopped: {e}");
                }
            });
        }
        Some(tls) => {
            tokio::spawn(serve_tls(listener, app, tls, cancel));
        }
    }
    tracing::info!(address = %local, https, "admin listener started");
    Ok(local)
}

/// Accepts TLS connections and serves `app` on each (HTTP/1.1 and HTTP/2), the client certificate (if any) in the
/// requests' extensions; until `cancel`, then finishes the requests in flight.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Arc<ServerTls>,
    cancel: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("admin listener: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let (app, tls, cancel) = (app.clone(), tls.clone(), cancel.clone());
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.get());
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, "admin listener: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "admin listener: TLS handshake failed: timed out after {HANDSHAKE_TIMEOUT:?}");
                    return;
                }
            };
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|leaf| PeerCert {
                    identity: PeerIdentity::from_der(leaf),
                    role: l7mp_auth::identity::role_in(leaf),
                });
            let app = match cert {
                Some(cert) => app.layer(axum::Extension(cert)),
                None => app,
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => r,
                () = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = done {
                tracing::debug!(%peer, "admin connection ended: {e}");
            }
        });
    }
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

//! The HTTP listener: accepts TCP connections, serves HTTP/1.1 (keep-alive) and cleartext HTTP/2 (prior knowledge)
//! on them with hyper, and emits one session per request.

use super::body::ProxyBody;
use super::{Exchange, HttpReader, HttpWriter, RequestReader, ResponseWriter, request_metadata};
use crate::engine::Engine;
use crate::protocol::tcp::{TcpBound, ip_metadata, session_name};
use crate::session::NewSession;
use crate::stream::{Reader, Writer};
use ::http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use l7mp_api::Listener;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP listener's socket, and its TLS context when it serves `https`.
pub struct HttpBound(pub TcpBound, pub Option<Arc<crate::protocol::tls::ServerTls>>);

impl HttpBound {
    pub async fn run(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        let builder = Arc::new(builder);
        while let Some((stream, peer, local)) = self.0.accept(&listener.name, &cancel).await {
            let (engine, listener, cancel, builder, tls) = (
                engine.clone(),
                listener.clone(),
                cancel.clone(),
                builder.clone(),
                self.1.clone(),
            );
            tokio::spawn(async move {
                let name = listener.name.clone();
                let Some((stream, tls_meta)) =
                    crate::protocol::tls::accept_maybe(tls.as_deref(), stream, &name, peer).await
                else {
                    return;
                };
                let tls_meta = tls_meta.map(Arc::new);
                let svc =
                    service_fn(move |req| serve(engine.clone(), listener.clone(), peer, local, tls_meta.clone(), req));
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                let done = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = cancel.cancelled() => {
                        // Finish the request in flight, then close.
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = done {
                    tracing::debug!(listener = %name, %peer, "HTTP connection ended: {e}");
                }
            });
        }
    }
}

/// Emits the session of one request and waits for its response.
async fn serve(
    engine: Arc<Engine>,
    listener: Arc<Listener>,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<Arc<serde_json::Value>>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let name = session_name("HTTP", peer, local, engine.next_id());
    let mut metadata = ip_metadata(&listener.name, &name, "TCP", peer, local);
    let scheme = if tls.is_some() { "https" } else { "http" };
    metadata["HTTP"] = request_metadata(&parts.method, &parts.uri, parts.version, &parts.headers, local, scheme);
    if let Some(t) = tls {
        metadata["TLS"] = (*t).clone();
    }
    let (tx, rx) = oneshot::channel();
    let exchange = Arc::new(Exchange::new(
        tx,
        body,
        parts.method == Method::HEAD,
        engine.options().half_close_timeout,
    ));
    engine.spawn_session(NewSession {
        name,
        listener,
        metadata,
        reader: Reader::Http(Box::new(HttpReader::Request(RequestReader::new(exchange.clone())))),
        writer: Writer::Http(Box::new(HttpWriter::Response(ResponseWriter::new(exchange)))),
        idle_timeout: None,
        on_end: None,
    });
    Ok(rx
        .await
        .unwrap_or_else(|_| super::error_response(StatusCode::BAD_GATEWAY, "the session ended without a response")))
}

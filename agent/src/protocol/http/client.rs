//! The HTTP cluster: sends a session upstream as one request, over a per-cluster pool of keep-alive connections
//! (HTTP/1.1: idle connections per endpoint, one request at a time on each; HTTP/2: one multiplexed connection per
//! endpoint).
//!
//! Connecting a stage takes a connection from the pool (or opens one), so connect failures happen before any body
//! byte is taken and the route's retry policy applies to them. The request head comes from the session metadata when
//! the source is an HTTP listener, else it is `POST /` with the session's bytes as the body.

use super::body::{self, ProxyBody};
use super::{Exchange, HttpReader, HttpWriter, strip_hop_by_hop};
use crate::protocol::{UpstreamError, resolve};
use crate::stream::{Batch, Reader, Writer};
use ::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ::http::{Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use l7mp_api::HttpVersion;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle HTTP/1.1 connections kept per endpoint.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// An idle connection older than this is closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a checkout waits for a just-returned connection to become ready.
const RETURN_GRACE: Duration = Duration::from_millis(50);

type H1 = http1::SendRequest<ProxyBody>;
type H2 = http2::SendRequest<ProxyBody>;
type Pending = Pin<Box<dyn Future<Output = hyper::Result<Response<Incoming>>> + Send>>;

/// The connections of one HTTP cluster.
pub struct Pool {
    version: HttpVersion,
    /// The client context and `tls` block of an `https` cluster.
    tls: Option<(Arc<crate::protocol::tls::ClientTls>, l7mp_api::TlsSpec)>,
    idle: Mutex<HashMap<String, Vec<(H1, Instant)>>>,
    shared: Mutex<HashMap<String, H2>>,
}

impl Pool {
    pub fn new(version: HttpVersion, tls: Option<(Arc<crate::protocol::tls::ClientTls>, l7mp_api::TlsSpec)>) -> Pool {
        Pool {
            version,
            tls,
            idle: Mutex::new(HashMap::new()),
            shared: Mutex::new(HashMap::new()),
        }
    }

    fn pop_idle(&self, address: &str) -> Option<H1> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(address)?;
        while let Some((c, since)) = list.pop() {
            if since.elapsed() <= IDLE_TIMEOUT && !c.is_closed() {
                return Some(c);
            }
        }
        None
    }

    /// A pooled connection that is ready for a request. A connection comes back to the pool as soon as its response
    /// was delivered, which can be an instant before hyper marks it idle: wait that instant rather than open another.
    async fn take_idle(&self, address: &str) -> Option<H1> {
        while let Some(mut c) = self.pop_idle(address) {
            if let Ok(Ok(())) = tokio::time::timeout(RETURN_GRACE, c.ready()).await {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, address: String, c: H1) {
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(address).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push((c, Instant::now()));
            }
        }
    }

    fn shared(&self, address: &str) -> Option<H2> {
        let shared = self.shared.lock().ok()?;
        shared.get(address).filter(|c| !c.is_closed()).cloned()
    }

    /// A connection ready for a request to `address`.
    async fn checkout(&self, address: &str) -> Result<Conn, UpstreamError> {
        match self.version {
            HttpVersion::Http1 => {
                if let Some(c) = self.take_idle(address).await {
                    return Ok(Conn::H1(c));
                }
                let io = TokioIo::new(self.open(address).await?);
                let (c, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(|e| UpstreamError::Io(io::Error::other(e)))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("HTTP/1.1 upstream connection ended: {e}");
                    }
                });
                Ok(Conn::H1(c))
            }
            HttpVersion::Http2 => {
                if let Some(mut c) = self.shared(address)
                    && c.ready().await.is_ok()
                {
                    return Ok(Conn::H2(c));
                }
                let io = TokioIo::new(self.open(address).await?);
                let (mut c, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(|e| UpstreamError::Io(io::Error::other(e)))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("HTTP/2 upstream connection ended: {e}");
                    }
                });
                c.ready().await.map_err(|e| UpstreamError::Io(io::Error::other(e)))?;
                if let Ok(mut shared) = self.shared.lock() {
                    shared.insert(address.to_owned(), c.clone());
                }
                Ok(Conn::H2(c))
            }
        }
    }
}

enum Conn {
    H1(H1),
    H2(H2),
}

impl Pool {
    /// A new connection to `address`, over TLS for an `https` cluster.
    async fn open(&self, address: &str) -> Result<crate::protocol::tls::MaybeTls, UpstreamError> {
        let addr = resolve(address).await?;
        let stream = TcpStream::connect(addr).await.map_err(UpstreamError::Io)?;
        let _ = stream.set_nodelay(true);
        let tls = self.tls.as_ref().map(|(t, spec)| (t.as_ref(), spec));
        crate::protocol::tls::connect_maybe(stream, tls, address).await
    }
}

/// Opens the session's request to `address` (`host:port`): the writer is the request body, the reader the
/// response. `exchange` is given when the source is an HTTP listener and this cluster is the destination.
pub async fn connect(
    pool: &Arc<Pool>,
    address: &str,
    metadata: &Value,
    exchange: Option<&Arc<Exchange>>,
) -> Result<(Reader, Writer), UpstreamError> {
    let conn = pool.checkout(address).await?;
    let h2 = matches!(conn, Conn::H2(_));
    let (mut req, len) = request_head(address, metadata, exchange, h2).map_err(UpstreamError::Io)?;
    // Relaying: the client's body goes upstream as it is; otherwise the session's pump feeds it.
    let relayed = exchange.filter(|x| x.direct()).and_then(|x| x.take_request_body());
    let writer = match relayed {
        Some(incoming) => {
            *req.body_mut() = ProxyBody::relay(incoming).0;
            HttpWriter::Relayed
        }
        None => {
            let (tx, body) = body::channel(len);
            *req.body_mut() = body;
            HttpWriter::Body(tx)
        }
    };
    let (pending, reuse): (Pending, _) = match conn {
        Conn::H1(mut c) => (Box::pin(c.send_request(req)), Some(c)),
        Conn::H2(mut c) => (Box::pin(c.send_request(req)), None),
    };
    let reader = ResponseReader {
        pending: Some(pending),
        body: None,
        exchange: exchange.cloned(),
        reuse: reuse.map(|c| (pool.clone(), address.to_owned(), c)),
    };
    Ok((
        Reader::Http(Box::new(HttpReader::Response(reader))),
        Writer::Http(Box::new(writer)),
    ))
}

/// The request head (with an empty body) and the body's length when known.
fn request_head(
    address: &str,
    metadata: &Value,
    exchange: Option<&Arc<Exchange>>,
    h2: bool,
) -> io::Result<(Request<ProxyBody>, Option<u64>)> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let http = metadata.get("HTTP").filter(|_| exchange.is_some());
    let method = match http.and_then(|h| h.get("method")).and_then(Value::as_str) {
        Some(m) => {
            Method::from_bytes(m.as_bytes()).map_err(|_| bad(format!("invalid method {m:?} at /HTTP/method")))?
        }
        None => Method::POST,
    };
    let path = http
        .and_then(|h| h.pointer("/url/url"))
        .and_then(Value::as_str)
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let mut headers = HeaderMap::new();
    if let Some(Value::Object(map)) = http.and_then(|h| h.get("headers")) {
        for (k, v) in map {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
                (Ok(k), Ok(v)) => {
                    headers.append(k, v);
                }
                _ => tracing::debug!(header = %k, "skipping a header that is not valid HTTP"),
            }
        }
    }
    strip_hop_by_hop(&mut headers);
    let intact = exchange.is_some_and(|x| x.request_intact());
    let mut len = None;
    if intact {
        len = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        // No length and no chunked encoding: the request has no body (RFC 9112 section 6.3).
        let chunked = http
            .and_then(|h| h.pointer("/headers/transfer-encoding"))
            .is_some_and(|te| te.as_str().is_some_and(|s| s.contains("chunked")));
        if len.is_none() && !chunked {
            len = Some(0);
        }
    } else {
        headers.remove(header::CONTENT_LENGTH);
    }
    if let Some(src) = metadata.pointer("/IP/src_addr").and_then(Value::as_str) {
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {src}"),
            None => src.to_owned(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert("x-forwarded-for", v);
        }
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(address)
        .to_owned();
    let uri: Uri = if h2 {
        headers.remove(header::HOST);
        format!("http://{host}{path}").parse()
    } else {
        if !headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(address)
        {
            headers.insert(header::HOST, v);
        }
        path.parse()
    }
    .map_err(|e| bad(format!("invalid request target {path:?}: {e}")))?;
    let mut req = Request::new(ProxyBody::empty());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
    *req.headers_mut() = headers;
    Ok((req, len))
}

/// A cluster's response: the head (handed to the exchange), then the body. The connection goes back to the pool at
/// the end of the body.
pub struct ResponseReader {
    pending: Option<Pending>,
    body: Option<Incoming>,
    exchange: Option<Arc<Exchange>>,
    reuse: Option<(Arc<Pool>, String, H1)>,
}

impl ResponseReader {
    pub(super) async fn read(&mut self, out: &mut Batch) -> io::Result<bool> {
        if let Some(pending) = self.pending.take() {
            let resp = pending
                .await
                .map_err(|e| io::Error::other(format!("HTTP upstream: {e}")))?;
            let (mut parts, body) = resp.into_parts();
            match &self.exchange {
                Some(x) if x.direct() => {
                    // Relay the response as it is and wait until the client has read it.
                    strip_hop_by_hop(&mut parts.headers);
                    parts.version = Version::HTTP_11;
                    let on_end = self.reuse.take().map(|(pool, address, c)| {
                        Box::new(move || give_back(pool, address, c)) as Box<dyn FnOnce() + Send>
                    });
                    let (body, done) = ProxyBody::relay_then(body, on_end);
                    x.respond(Response::from_parts(parts, body));
                    let _ = done.await;
                    return Ok(false);
                }
                Some(x) => x.set_upstream_head(parts),
                None if !parts.status.is_success() => {
                    tracing::debug!(status = %parts.status, "HTTP upstream answered with an error status");
                }
                None => {}
            }
            self.body = Some(body);
        }
        let Some(body) = &mut self.body else {
            return Ok(false);
        };
        loop {
            match body.frame().await {
                None => {
                    self.body = None;
                    if let Some((pool, address, c)) = self.reuse.take() {
                        give_back(pool, address, c);
                    }
                    return Ok(false);
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        out.push(data);
                        return Ok(true);
                    }
                }
                Some(Err(e)) => return Err(io::Error::other(format!("reading the HTTP upstream's body: {e}"))),
            }
        }
    }
}

/// Returns an HTTP/1.1 connection to the pool (its response was delivered whole).
fn give_back(pool: Arc<Pool>, address: String, c: H1) {
    if !c.is_closed() {
        pool.put_idle(address, c);
    }
}

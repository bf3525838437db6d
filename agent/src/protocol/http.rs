//! HTTP: a listener (HTTP/1.1 and cleartext HTTP/2 on one port) that emits a session per request, and a cluster that
//! sends its session upstream as one request over pooled keep-alive connections.
//!
//! A session's stream is the request body one way and the response body the other. When an HTTP listener's session
//! goes to an HTTP cluster, the two share an [`Exchange`]: the request head travels in the session metadata
//! (`/HTTP/method`, `/HTTP/url/url`, `/HTTP/headers`, so rules can rewrite it) and the upstream's response head
//! (status and headers) comes back through the exchange, which makes listener → cluster a real reverse proxy.
//!
//! Where an HTTP request goes to a destination that keeps message boundaries (UDP, WebSocket, ...), the exchange is
//! request/response: the whole request body is one message and the first message back is the whole response body.

pub mod body;
pub mod client;
pub mod server;

use crate::stream::Batch;
use ::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ::http::{Method, Response, StatusCode, Uri, Version};
use body::{BodyTx, ProxyBody};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

/// The largest request body sent as one message to a datagram destination.
pub const MAX_MESSAGE: usize = 1 << 20;

/// What an HTTP listener's session shares with its stages: the way to answer the client, and the upstream's
/// response head when the destination is an HTTP cluster.
pub struct Exchange {
    responder: Mutex<Option<oneshot::Sender<Response<ProxyBody>>>>,
    upstream_head: Mutex<Option<::http::response::Parts>>,
    /// The request body reaches the destination unchanged (no ingress transforms): its length can be kept.
    request_intact: AtomicBool,
    /// The response body reaches the client unchanged (no egress transforms).
    response_intact: AtomicBool,
    /// The destination keeps message boundaries: request and response are one message each.
    message_mode: AtomicBool,
    /// The destination is an HTTP cluster and nothing transforms the bodies: the cluster relays the client's request
    /// body upstream and the upstream's response (head and body) to the client as they are.
    direct: AtomicBool,
    /// The client's request body until a reader (the session's source, or a relaying cluster) takes it.
    request_body: Mutex<Option<Incoming>>,
    answered: AtomicBool,
    answered_notify: Notify,
    head_request: bool,
    /// How long a request/response exchange waits for the answer.
    pub answer_timeout: Duration,
}

impl Exchange {
    pub fn new(
        responder: oneshot::Sender<Response<ProxyBody>>,
        body: Incoming,
        head_request: bool,
        answer_timeout: Duration,
    ) -> Self {
        Exchange {
            direct: AtomicBool::new(false),
            request_body: Mutex::new(Some(body)),
            responder: Mutex::new(Some(responder)),
            upstream_head: Mutex::new(None),
            request_intact: AtomicBool::new(true),
            response_intact: AtomicBool::new(true),
            message_mode: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            answered_notify: Notify::new(),
            head_request,
            answer_timeout,
        }
    }

    /// Set by the session once it knows its route.
    pub fn configure(&self, request_intact: bool, response_intact: bool, message_mode: bool, to_http: bool) {
        self.request_intact.store(request_intact, Ordering::Relaxed);
        self.response_intact.store(response_intact, Ordering::Relaxed);
        self.message_mode.store(message_mode, Ordering::Relaxed);
        self.direct
            .store(to_http && request_intact && response_intact, Ordering::Relaxed);
    }

    /// Whether the HTTP cluster relays the bodies itself.
    pub fn direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// The client's request body, once.
    pub fn take_request_body(&self) -> Option<Incoming> {
        self.request_body.lock().ok().and_then(|mut b| b.take())
    }

    pub fn request_intact(&self) -> bool {
        self.request_intact.load(Ordering::Relaxed)
    }

    fn message_mode(&self) -> bool {
        self.message_mode.load(Ordering::Relaxed)
    }

    /// Records the upstream's response head (an HTTP cluster as the destination).
    pub fn set_upstream_head(&self, parts: ::http::response::Parts) {
        if let Ok(mut h) = self.upstream_head.lock() {
            *h = Some(parts);
        }
    }

    /// Sends `resp` to the client unless a response already went.
    pub fn respond(&self, resp: Response<ProxyBody>) -> bool {
        let tx = self.responder.lock().ok().and_then(|mut r| r.take());
        let sent = tx.is_some_and(|tx| tx.send(resp).is_ok());
        self.answered.store(true, Ordering::Release);
        self.answered_notify.notify_waiters();
        sent
    }

    /// Answers with a JSON error as the original l7mp did: `{"status", "message", "content"}`.
    pub fn refuse(&self, status: StatusCode, content: &str) -> bool {
        self.respond(error_response(status, content))
    }

    /// Waits until the client was answered.
    async fn answered(&self) {
        loop {
            let notified = self.answered_notify.notified();
            if self.answered.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Starts the response: the upstream's head when an HTTP cluster gave one, else `200 OK`. Returns the body's
    /// sender, or `None` when the client was already answered.
    fn start(&self) -> Option<BodyTx> {
        let upstream = self.upstream_head.lock().ok().and_then(|mut h| h.take());
        let intact = self.response_intact.load(Ordering::Relaxed);
        let (mut builder, len) = match upstream {
            Some(head) => {
                let mut b = Response::builder().status(head.status);
                let mut headers = head.headers;
                strip_hop_by_hop(&mut headers);
                let len = if intact && !self.head_request {
                    content_length(&headers)
                } else {
                    None
                };
                if !intact {
                    headers.remove(header::CONTENT_LENGTH);
                }
                if let Some(h) = b.headers_mut() {
                    *h = headers;
                }
                (b, len)
            }
            None => (Response::builder().status(StatusCode::OK), None),
        };
        builder = builder.version(Version::HTTP_11);
        let (tx, body) = body::channel(len);
        let resp = builder
            .body(body)
            .unwrap_or_else(|_| error_response(StatusCode::BAD_GATEWAY, "bad head"));
        self.respond(resp).then_some(tx)
    }
}

/// The JSON error response of the original l7mp (body indented by four spaces, reason phrase = message).
pub fn error_response(status: StatusCode, content: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::from(error_body(status, content))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The body of the original's JSON errors: `{"status", "message", "content"}` indented by four spaces, where
/// `message` is the status's reason phrase.
pub fn error_body(status: StatusCode, content: &str) -> Vec<u8> {
    let message = status.canonical_reason().unwrap_or("Error");
    let v = json!({ "status": status.as_u16(), "message": message, "content": content });
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    let _ = serde::Serialize::serialize(&v, &mut ser); // writing to a Vec cannot fail
    out
}

/// Headers that describe one hop's connection, never forwarded (RFC 9110 section 7.6.1), plus those the
/// `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// Hop-by-hop header names (lower case).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// `HTTP` session metadata of a request, as the original l7mp: `{version, method, url{url, href, protocol, host,
/// port, path, query}, headers}` with lower-case header names (repeated headers joined by `, `, cookies by `; `).
pub fn request_metadata(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    local: SocketAddr,
    scheme: &str,
) -> Value {
    let mut map: Map<String, Value> = Map::new();
    for (k, v) in headers {
        let v = String::from_utf8_lossy(v.as_bytes());
        match map.get_mut(k.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(if k == header::COOKIE { "; " } else { ", " });
                prev.push_str(&v);
            }
            _ => {
                map.insert(k.as_str().to_owned(), Value::String(v.into_owned()));
            }
        }
    }
    // HTTP/2 carries the host in the request's authority, not in a header.
    if !map.contains_key("host")
        && let Some(a) = uri.authority()
    {
        map.insert("host".to_owned(), Value::String(a.as_str().to_owned()));
    }
    let host_header = map.get("host").and_then(Value::as_str).unwrap_or("").to_owned();
    let (host, port) = match host_header.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_owned(), p.to_owned()),
        _ => (host_header.clone(), local.port().to_string()),
    };
    let url = uri.path_and_query().map_or("/".to_owned(), |pq| pq.as_str().to_owned());
    let version = match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2.0",
        Version::HTTP_3 => "3.0",
        _ => "1.1",
    };
    json!({
        "version": version,
        "method": method.as_str(),
        "url": {
            "url": url,
            "href": format!("{scheme}://{host_header}{url}"),
            "protocol": format!("{scheme}:"),
            "host": host,
            "port": port,
            "path": uri.path(),
            "query": uri.query().unwrap_or(""),
        },
        "headers": map,
    })
}

/// The read half of an HTTP stream.
pub enum HttpReader {
    /// A listener's request body.
    Request(RequestReader),
    /// A cluster's response (head, then body).
    Response(client::ResponseReader),
}

/// The write half of an HTTP stream.
pub enum HttpWriter {
    /// A listener's response.
    Response(ResponseWriter),
    /// A cluster's request body.
    Body(BodyTx),
    /// A cluster that relays the client's request body itself: the session has nothing to write.
    Relayed,
}

impl HttpReader {
    pub async fn read(&mut self, out: &mut Batch) -> io::Result<bool> {
        match self {
            HttpReader::Request(r) => r.read(out).await,
            HttpReader::Response(r) => r.read(out).await,
        }
    }
}

impl HttpWriter {
    pub async fn write(&mut self, batch: &mut Batch) -> io::Result<()> {
        match self {
            HttpWriter::Response(w) => w.write(batch).await,
            HttpWriter::Body(tx) => {
                for m in batch.drain(..) {
                    tx.send(m).await?;
                }
                Ok(())
            }
            HttpWriter::Relayed => Err(io::Error::other("the request body is relayed by the HTTP cluster")),
        }
    }

    pub fn shutdown(&mut self) -> bool {
        match self {
            HttpWriter::Response(w) => w.finish(),
            HttpWriter::Body(tx) => tx.finish(),
            HttpWriter::Relayed => {}
        }
        true
    }

    /// The exchange of a listener's session.
    pub fn exchange(&self) -> Option<&Arc<Exchange>> {
        match self {
            HttpWriter::Response(w) => Some(&w.exchange),
            HttpWriter::Body(_) | HttpWriter::Relayed => None,
        }
    }
}

/// A listener's request body as the session's source stream.
pub struct RequestReader {
    /// Taken from the exchange at the first read (unless an HTTP cluster took it to relay it).
    body: Option<Incoming>,
    exchange: Arc<Exchange>,
    /// The one message of a request/response exchange went out.
    sent_message: bool,
}

impl RequestReader {
    pub fn new(exchange: Arc<Exchange>) -> Self {
        RequestReader {
            body: None,
            exchange,
            sent_message: false,
        }
    }

    async fn read(&mut self, out: &mut Batch) -> io::Result<bool> {
        if self.body.is_none() && !self.sent_message {
            self.body = self.exchange.take_request_body();
        }
        if self.exchange.message_mode() {
            return self.read_message(out).await;
        }
        let Some(body) = &mut self.body else {
            return Ok(false);
        };
        loop {
            match body.frame().await {
                None => return Ok(false),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        out.push(data);
                        return Ok(true);
                    }
                }
                Some(Err(e)) => return Err(io::Error::other(format!("reading the request body: {e}"))),
            }
        }
    }

    /// The whole body as one message; then, once the client has its answer (or the wait timed out), the end.
    async fn read_message(&mut self, out: &mut Batch) -> io::Result<bool> {
        if self.sent_message {
            let _ = tokio::time::timeout(self.exchange.answer_timeout, self.exchange.answered()).await;
            if !self.exchange.answered.load(Ordering::Acquire) {
                self.exchange
                    .refuse(StatusCode::GATEWAY_TIMEOUT, "no answer from the destination");
            }
            return Ok(false);
        }
        let mut msg = Vec::new();
        while let Some(body) = &mut self.body
            && let Some(frame) = body.frame().await
        {
            let frame = frame.map_err(|e| io::Error::other(format!("reading the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if msg.len() + data.len() > MAX_MESSAGE {
                    let why = format!("a request body to a message destination is at most {MAX_MESSAGE} bytes");
                    self.exchange.refuse(StatusCode::PAYLOAD_TOO_LARGE, &why);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, why));
                }
                msg.extend_from_slice(&data);
            }
        }
        self.sent_message = true;
        out.push(Bytes::from(msg));
        Ok(true)
    }
}

/// A listener's response as the session's source writer. The head goes out with the first body bytes (or at the end),
/// so an HTTP cluster destination has set the upstream's head by then.
pub struct ResponseWriter {
    exchange: Arc<Exchange>,
    body: Option<BodyTx>,
    started: bool,
}

impl ResponseWriter {
    pub fn new(exchange: Arc<Exchange>) -> Self {
        ResponseWriter {
            exchange,
            body: None,
            started: false,
        }
    }

    async fn write(&mut self, batch: &mut Batch) -> io::Result<()> {
        if self.exchange.message_mode() {
            if !self.started {
                self.started = true;
                let first = batch.first().cloned().unwrap_or_default();
                let mut resp = Response::new(ProxyBody::full(first));
                *resp.version_mut() = Version::HTTP_11;
                self.exchange.respond(resp);
            }
            batch.clear();
            return Ok(());
        }
        if !self.started {
            self.started = true;
            self.body = self.exchange.start();
        }
        let Some(body) = &mut self.body else {
            batch.clear();
            return Ok(());
        };
        for m in batch.drain(..) {
            body.send(m).await?;
        }
        Ok(())
    }

    fn finish(&mut self) {
        if !self.started {
            self.started = true;
            self.body = self.exchange.start();
        }
        if let Some(b) = &mut self.body {
            b.finish();
        }
    }
}

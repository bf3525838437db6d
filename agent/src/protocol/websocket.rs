//! WebSocket: a listener that upgrades each TCP connection and emits a session per WebSocket, and a cluster that
//! opens a WebSocket per session. One WebSocket message is one datagram; text and binary messages are both read.
//!
//! Frame types: a writer sends a text message when the message is valid UTF-8 and its own peer has spoken text
//! (its last message was text); otherwise binary. Ping/pong is answered by the library; end of stream sends a close
//! frame.

use super::UpstreamError;
use super::tcp::{TcpBound, ip_metadata, session_name};
use crate::engine::Engine;
use crate::session::NewSession;
use crate::stream::{Reader, Writer};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use l7mp_api::Listener;
use serde_json::Value;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// How long a client may take to complete the upgrade handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<super::tls::MaybeTls>;

/// The read half of a WebSocket; `text` records whether the peer's last message was text.
pub struct WsReader {
    stream: SplitStream<Ws>,
    text: Arc<AtomicBool>,
}

/// The write half of a WebSocket.
pub struct WsWriter {
    sink: SplitSink<Ws, Message>,
    text: Arc<AtomicBool>,
}

fn split(ws: Ws) -> (Reader, Writer) {
    let text = Arc::new(AtomicBool::new(false));
    let (sink, stream) = ws.split();
    (
        Reader::Ws(Box::new(WsReader {
            stream,
            text: text.clone(),
        })),
        Writer::Ws(Box::new(WsWriter { sink, text })),
    )
}

fn ws_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

impl WsReader {
    /// One message at least, then whatever else is ready; `false` at the close handshake or end of stream.
    pub async fn read(&mut self, out: &mut Vec<Bytes>) -> io::Result<bool> {
        let mut first = true;
        loop {
            let next = if first {
                self.stream.next().await
            } else {
                match self.stream.next().now_or_never() {
                    Some(n) => n,
                    None => return Ok(true),
                }
            };
            match next {
                None | Some(Ok(Message::Close(_))) | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Ok(!out.is_empty());
                }
                Some(Ok(Message::Binary(b))) => {
                    self.text.store(false, Ordering::Relaxed);
                    out.push(b);
                }
                Some(Ok(Message::Text(t))) => {
                    self.text.store(true, Ordering::Relaxed);
                    out.push(Bytes::from(t));
                }
                Some(Ok(_)) => continue, // ping, pong, raw frames: handled by the library
                Some(Err(e)) => return Err(ws_io(e)),
            }
            first = false;
            if out.len() >= crate::sys::BATCH {
                return Ok(true);
            }
        }
    }
}

impl WsWriter {
    pub async fn write(&mut self, batch: &mut Vec<Bytes>) -> io::Result<()> {
        let text = self.text.load(Ordering::Relaxed);
        for m in batch.drain(..) {
            let msg = match text.then(|| Utf8Bytes::try_from(m.clone())) {
                Some(Ok(t)) => Message::Text(t),
                _ => Message::Binary(m),
            };
            self.sink.feed(msg).await.map_err(ws_io)?;
        }
        self.sink.flush().await.map_err(ws_io)
    }

    /// Starts the close handshake.
    pub async fn shutdown(&mut self) -> bool {
        self.sink.close().await.is_ok()
    }
}

/// `HTTP` session metadata from the upgrade request, as the original l7mp.
fn http_metadata(req: &Request, local: SocketAddr) -> Value {
    super::http::request_metadata(req.method(), req.uri(), req.version(), req.headers(), local, "ws")
}

/// The first subprotocol a client asked for, from `HTTP` metadata.
fn first_subprotocol(http: &Value) -> Option<&str> {
    let list = http.pointer("/headers/sec-websocket-protocol")?.as_str()?;
    list.split(',').map(str::trim).find(|p| !p.is_empty())
}

/// A WebSocket listener's socket, and its TLS context when it serves `wss`.
pub struct WsBound(pub TcpBound, pub Option<Arc<super::tls::ServerTls>>);

impl WsBound {
    // The handshake callback's error type is tungstenite's (an HTTP error response); it is never built here.
    #[allow(clippy::result_large_err)]
    pub async fn run(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        while let Some((stream, peer, local)) = self.0.accept(&listener.name, &cancel).await {
            let (engine, listener, tls) = (engine.clone(), listener.clone(), self.1.clone());
            // The handshake runs in its own task so a slow client cannot hold up the accept loop.
            tokio::spawn(async move {
                let Some((stream, tls_meta)) =
                    super::tls::accept_maybe(tls.as_deref(), stream, &listener.name, peer).await
                else {
                    return;
                };
                let mut http = Value::Null;
                let upgrade = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, mut resp: Response| {
                    http = http_metadata(req, local);
                    // Accept the client's first subprotocol; the cluster side asks the upstream for the same one.
                    if let Some(first) = first_subprotocol(&http)
                        && let Ok(v) = first.parse()
                    {
                        resp.headers_mut().insert("sec-websocket-protocol", v);
                    }
                    Ok(resp)
                });
                let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
                    Ok(Ok(ws)) => ws,
                    Ok(Err(e)) => {
                        tracing::debug!(listener = %listener.name, %peer, "WebSocket handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(listener = %listener.name, %peer, "WebSocket handshake timed out");
                        return;
                    }
                };
                let name = session_name("WS", peer, local, engine.next_id());
                let mut metadata = ip_metadata(&listener.name, &name, "TCP", peer, local);
                metadata["HTTP"] = http;
                if let Some(t) = tls_meta {
                    metadata["TLS"] = t;
                }
                let (reader, writer) = split(ws);
                engine.spawn_session(NewSession {
                    name,
                    listener,
                    metadata,
                    reader,
                    writer,
                    idle_timeout: None,
                    on_end: None,
                });
            });
        }
    }
}

/// Opens a WebSocket to `address` (`host:port`), requesting the session's path (`/HTTP/url/url` of a WebSocket or
/// HTTP source, else `/`) and passing its subprotocol on; over TLS (`wss`) when `tls` is given.
pub async fn connect(
    address: &str,
    metadata: &Value,
    tls: Option<(&super::tls::ClientTls, &l7mp_api::TlsSpec)>,
) -> Result<(Reader, Writer), UpstreamError> {
    let addr = super::resolve(address).await?;
    let stream = TcpStream::connect(addr).await.map_err(UpstreamError::Io)?;
    let _ = stream.set_nodelay(true);
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let stream = super::tls::connect_maybe(stream, tls, address).await?;
    let path = metadata.pointer("/HTTP/url/url").and_then(Value::as_str).unwrap_or("/");
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let url = format!("{scheme}://{address}{path}");
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| UpstreamError::Io(ws_io(e)))?;
    if let Some(proto) = first_subprotocol(metadata.pointer("/HTTP").unwrap_or(&Value::Null))
        && let Ok(v) = proto.parse()
    {
        req.headers_mut().insert("sec-websocket-protocol", v);
    }
    let (ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| UpstreamError::Io(ws_io(e)))?;
    Ok(split(ws))
}

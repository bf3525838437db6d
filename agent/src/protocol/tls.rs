//! TLS over TCP (rustls): a listener that completes a handshake per accepted connection before it emits the session
//! (with the `TLS` metadata), and a cluster that connects and handshakes per session. The stream is a byte stream.
//!
//! Certificates, keys and CAs come from PEM files ([`config`]) and are reloaded when they change. What is verified:
//! a listener with `client_auth: required` refuses clients without a certificate chaining to `ca` (`optional`
//! verifies one if sent); a cluster verifies the server's chain against `ca` (the system's roots without it), its
//! validity period, and that it is valid for `server_name` (default: the endpoint's host, a DNS name or an IP
//! address).

pub mod config;
pub mod metadata;

use super::UpstreamError;
use super::tcp::{TcpBound, ip_metadata, session_name};
use crate::engine::Engine;
use crate::session::NewSession;
use crate::stream::{Reader, Writer};
use config::{Reloading, TlsError};
use l7mp_api::{Bind, Listener, TlsSpec};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use serde_json::Value;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A TLS stream over TCP, either side.
pub type TlsStream = tokio_rustls::TlsStream<TcpStream>;
pub type TlsReader = ReadHalf<TlsStream>;
pub type TlsWriter = WriteHalf<TlsStream>;

/// How long a client may take to complete its handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's server context, reloaded when its files change.
pub type ServerTls = Reloading<ServerConfig>;
/// A cluster's client context, reloaded when its files change.
pub type ClientTls = Reloading<ClientConfig>;

pub fn server_tls(owner: String, spec: &TlsSpec) -> Result<ServerTls, TlsError> {
    Reloading::load(owner, spec, config::server_config)
}

pub fn client_tls(owner: String, spec: &TlsSpec) -> Result<ClientTls, TlsError> {
    Reloading::load(owner, spec, config::client_config)
}

pub struct TlsBound {
    pub(crate) tcp: TcpBound,
    pub(crate) tls: Arc<ServerTls>,
}

impl TlsBound {
    pub async fn run(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        while let Some((stream, peer, local)) = self.tcp.accept(&listener.name, &cancel).await {
            let (engine, listener, tls) = (engine.clone(), listener.clone(), self.tls.clone());
            // The handshake runs in its own task: a slow client does not hold up the next accept.
            tokio::spawn(async move {
                let Some((stream, tls_meta)) = accept(&tls, stream, &listener.name, peer).await else {
                    return;
                };
                let (name, metadata) = session_identity(&engine, &listener, "TLS", peer, local, tls_meta);
                let (r, w) = tokio::io::split(stream);
                engine.spawn_session(NewSession {
                    name,
                    listener,
                    metadata,
                    reader: Reader::Tls(r),
                    writer: Writer::Tls(w),
                    idle_timeout: None,
                    on_end: None,
                });
            });
        }
    }
}

/// The name and metadata of a session accepted by a TLS (`kind` "TLS", over TCP) or DTLS ("DTLS", over UDP) listener:
/// the IP metadata and the handshake's `TLS` metadata.
pub(crate) fn session_identity(
    engine: &Engine,
    listener: &Listener,
    kind: &str,
    peer: SocketAddr,
    local: SocketAddr,
    tls_meta: Value,
) -> (String, Value) {
    let name = session_name(kind, peer, local, engine.next_id());
    let transport = if kind == "DTLS" { "UDP" } else { "TCP" };
    let mut metadata = ip_metadata(&listener.name, &name, transport, peer, local);
    metadata["TLS"] = tls_meta;
    (name, metadata)
}

/// Runs the server handshake on an accepted connection; a failure is logged (with the peer and the reason) and
/// gives `None`.
pub async fn accept(
    tls: &ServerTls,
    stream: TcpStream,
    listener: &str,
    peer: SocketAddr,
) -> Option<(TlsStream, Value)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.get());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            let meta = server_metadata(s.get_ref().1);
            Some((tokio_rustls::TlsStream::Server(s), meta))
        }
        Ok(Err(e)) => {
            tracing::warn!(listener, %peer, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::warn!(listener, %peer, "TLS handshake failed: timed out after {HANDSHAKE_TIMEOUT:?}");
            None
        }
    }
}

fn server_metadata(c: &rustls::ServerConnection) -> Value {
    metadata::session(
        c.server_name(),
        c.alpn_protocol(),
        &c.protocol_version().map(metadata::version_name).unwrap_or_default(),
        &c.negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        c.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref()),
    )
}

/// The name a cluster verifies in the server's certificate (and sends as SNI unless it is an IP address).
pub fn server_name(spec: &TlsSpec, host: &str) -> Result<ServerName<'static>, UpstreamError> {
    let name = spec.server_name.as_deref().unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(name.to_owned()).map_err(|e| {
        UpstreamError::Handshake(format!(
            "{name:?} is no DNS name or IP address to verify the server's certificate against ({e}); set \
             spec.tls.server_name"
        ))
    })
}

/// Runs the client handshake over `tcp`.
pub async fn handshake(
    tls: &ClientTls,
    spec: &TlsSpec,
    host: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    let name = server_name(spec, host)?;
    let ip = matches!(name, ServerName::IpAddress(_)) && spec.server_name.is_none();
    let connector = tokio_rustls::TlsConnector::from(tls.get());
    connector.connect(name, tcp).await.map_err(|e| {
        let mut why = e.to_string();
        if ip && why.contains("not valid for name") {
            why.push_str(
                " (the endpoint is an IP address: set spec.tls.server_name to a name in the server's certificate)",
            );
        }
        UpstreamError::Handshake(why)
    })
}

/// Opens a TLS connection to `address` (`host:port`), verifying the server as `spec` says.
pub async fn connect(
    address: &str,
    host: &str,
    bind: Option<&Bind>,
    tls: &ClientTls,
    spec: &TlsSpec,
) -> Result<(Reader, Writer), UpstreamError> {
    let tcp = super::tcp::connect_stream(address, bind).await?;
    let s = handshake(tls, spec, host, tcp).await?;
    let (r, w) = tokio::io::split(tokio_rustls::TlsStream::Client(s));
    Ok((Reader::Tls(r), Writer::Tls(w)))
}

/// A TCP connection with or without TLS: the transport of `ws`/`wss` and `http`/`https` listeners and clusters.
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl tokio::io::AsyncRead for MaybeTls {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => std::pin::Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for MaybeTls {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => std::pin::Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => std::pin::Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => std::pin::Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// The server side of an accepted connection of a `wss`/`https` listener (`tls` set) or a plain one: the stream
/// and the `TLS` metadata, or `None` when the handshake failed (logged).
pub async fn accept_maybe(
    tls: Option<&ServerTls>,
    stream: TcpStream,
    listener: &str,
    peer: SocketAddr,
) -> Option<(MaybeTls, Option<Value>)> {
    match tls {
        None => Some((MaybeTls::Plain(stream), None)),
        Some(t) => {
            let (s, meta) = accept(t, stream, listener, peer).await?;
            Some((MaybeTls::Tls(Box::new(s)), Some(meta)))
        }
    }
}

/// The client side for a `wss`/`https` cluster (`tls` given) or a plain one.
pub async fn connect_maybe(
    tcp: TcpStream,
    tls: Option<(&ClientTls, &TlsSpec)>,
    address: &str,
) -> Result<MaybeTls, UpstreamError> {
    match tls {
        None => Ok(MaybeTls::Plain(tcp)),
        Some((t, spec)) => {
            let host = host_of(address);
            let s = handshake(t, spec, host, tcp).await?;
            Ok(MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Client(s))))
        }
    }
}

/// The host of `host:port` (`[v6]:port` too).
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Reads what arrived; a peer that closes the TCP connection without a TLS close_notify is taken as the end of the
/// stream (as most proxies do), not as a failure.
pub(crate) fn eof_is_end(r: io::Result<bool>) -> io::Result<bool> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        other => other,
    }
}

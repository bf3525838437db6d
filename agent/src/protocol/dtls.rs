//! DTLS 1.2 over UDP, with OpenSSL (rustls has no DTLS): a listener that demultiplexes peers by address, like the UDP
//! listener, and emits a session per peer once its handshake is done; a cluster that handshakes on a connected UDP
//! socket per session. Message boundaries are kept: one DTLS record is one message.
//!
//! Why OpenSSL: it is the reference DTLS implementation (what `openssl s_client -dtls` and most SIP/WebRTC stacks
//! speak), maintained, with the cookie exchange built in; the `openssl` crate links the system library, so the
//! dependency weight is one small crate pair (`openssl`, `tokio-openssl`) plus libssl. The pure-Rust option,
//! `webrtc-dtls`, is tied to the webrtc-rs stack (pre-1.0, being rewritten sans-I/O) and has a narrow cipher list.
//!
//! Spoofing: the listener answers a new peer's first ClientHello with a HelloVerifyRequest carrying a cookie (an
//! HMAC of the peer's address under a per-process key); no certificate work, no session and no upstream connection
//! happen before the peer echoes it. Until then a peer costs a small handshake state, dropped after
//! [`HANDSHAKE_TIMEOUT`]; at most [`MAX_HANDSHAKES`] handshakes are pending at a time.
//!
//! Lost datagrams during a handshake: OpenSSL retransmits the last flight when its timer (1 s, doubling up to 60 s)
//! has expired and the handshake is driven while it waits for the peer. With a non-blocking socket nothing would
//! drive it, so [`handshake`] polls the handshake again every [`RETRANSMIT_CHECK`] while it is pending; both the
//! listener and the cluster side recover from a lost flight within about a second.
//!
//! Not done: renegotiation, DTLS 1.3 (OpenSSL 3.0 has none).

use super::UpstreamError;
use super::tls::config::{self, Reloading, TlsError};
use super::tls::metadata;
use crate::engine::Engine;
use crate::session::NewSession;
use crate::stream::{Reader, Writer};
use bytes::{Bytes, BytesMut};
use l7mp_api::{Bind, ClientAuth, DtlsListenerSpec, Listener, TlsSpec};
use openssl::ex_data::Index;
use openssl::ssl::{
    NameType, Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslOptions, SslRef, SslVerifyMode,
};
use serde_json::Value;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_openssl::SslStream;
use tokio_util::sync::CancellationToken;

/// How long a peer may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes pending at once on one listener; new peers beyond are ignored until some finish.
pub const MAX_HANDSHAKES: usize = 1024;
/// The largest message a DTLS record carries (2^14 bytes, RFC 6347).
pub const MAX_MESSAGE: usize = 16384;
/// The path MTU the handshake fragments its flights for.
const MTU: u32 = 1400;
/// How often a pending handshake is polled again, so that OpenSSL's retransmission timer can fire.
pub const RETRANSMIT_CHECK: Duration = Duration::from_millis(100);
/// Datagrams queued for a peer's session before they are dropped.
const PEER_QUEUE: usize = 256;

pub type DtlsStream = SslStream<DgramIo>;
pub type DtlsReader = ReadHalf<DtlsStream>;
pub type DtlsWriter = WriteHalf<DtlsStream>;

/// A listener's DTLS context, reloaded when its files change.
pub type DtlsServer = Reloading<SslContext>;
/// A cluster's DTLS context, reloaded when its files change.
pub type DtlsClient = Reloading<SslContext>;

pub fn server(owner: String, spec: &TlsSpec) -> Result<DtlsServer, TlsError> {
    Reloading::load(owner, spec, server_context)
}

pub fn client(owner: String, spec: &TlsSpec) -> Result<DtlsClient, TlsError> {
    Reloading::load(owner, spec, client_context)
}

/// The UDP side of a DTLS stream: a listener's peer (datagrams handed over by the listener, replies sent from the
/// listener's socket) or a connected socket (cluster). One read is one datagram; one write is one datagram.
pub enum DgramIo {
    Peer {
        rx: mpsc::Receiver<Bytes>,
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
    },
    Connected(UdpSocket),
}

impl AsyncRead for DgramIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DgramIo::Peer { rx, .. } => match rx.poll_recv(cx) {
                Poll::Ready(Some(d)) => {
                    let n = d.len().min(buf.remaining());
                    buf.put_slice(&d[..n]);
                    Poll::Ready(Ok(()))
                }
                // The listener forgot the peer: end of stream.
                Poll::Ready(None) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            },
            DgramIo::Connected(s) => match s.poll_recv(cx, buf) {
                // An ICMP port unreachable for an earlier datagram: UDP is unreliable, keep waiting.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                other => other,
            },
        }
    }
}

impl AsyncWrite for DgramIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = match self.get_mut() {
            DgramIo::Peer { socket, peer, .. } => socket.poll_send_to(cx, buf, *peer),
            DgramIo::Connected(s) => s.poll_send(cx, buf),
        };
        match r {
            // Lost, as a datagram may be.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Poll::Ready(Ok(buf.len())),
            other => other,
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn ssl_error(field: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError {
        field: format!("spec.tls.{field}"),
        reason: e.to_string(),
    }
}

/// The per-process key of the cookies, and the slot of the peer's address in each handshake's `Ssl`.
fn cookie_key() -> &'static ring::hmac::Key {
    static KEY: OnceLock<ring::hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
            // No system randomness: a key from the clock still makes cookies unguessable enough across processes.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &t.to_le_bytes())
        })
    })
}

fn peer_index() -> Option<Index<Ssl, SocketAddr>> {
    static INDEX: OnceLock<Option<Index<Ssl, SocketAddr>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

fn peer_bytes(ssl: &SslRef) -> Vec<u8> {
    peer_index()
        .and_then(|i| ssl.ex_data(i))
        .map(|a| a.to_string().into_bytes())
        .unwrap_or_default()
}

/// The files are checked with the same readers as TLS first, so that errors name the field and the file plainly.
fn load_files(b: &mut SslContextBuilder, spec: &TlsSpec) -> Result<(), TlsError> {
    if let (Some(cert), Some(key)) = (&spec.cert, &spec.key) {
        config::read_pair(cert, key)?;
        b.set_certificate_chain_file(cert).map_err(|e| ssl_error("cert", e))?;
        b.set_private_key_file(key, SslFiletype::PEM)
            .map_err(|e| ssl_error("key", e))?;
        b.check_private_key().map_err(|e| ssl_error("key", e))?;
    }
    Ok(())
}

fn alpn_wire(alpn: &[String]) -> Vec<u8> {
    let mut w = Vec::new();
    for p in alpn {
        w.push(p.len() as u8);
        w.extend_from_slice(p.as_bytes());
    }
    w
}

/// Our most preferred protocol that the client offers (`theirs` in wire format), as a slice of `theirs`.
fn alpn_select<'a>(ours: &[String], theirs: &'a [u8]) -> Option<&'a [u8]> {
    let mut offered = Vec::new();
    let mut rest = theirs;
    while let Some((&len, tail)) = rest.split_first() {
        let (p, next) = tail.split_at_checked(len as usize)?;
        offered.push(p);
        rest = next;
    }
    ours.iter()
        .find_map(|o| offered.iter().find(|p| **p == o.as_bytes()).copied())
}

fn server_context(spec: &TlsSpec) -> Result<SslContext, TlsError> {
    if !spec.sni.is_empty() {
        return Err(TlsError {
            field: "spec.tls.sni".into(),
            reason: "not supported on DTLS listeners (one certificate per DTLS listener: use cert and key)".into(),
        });
    }
    let mut b = SslContextBuilder::new(SslMethod::dtls()).map_err(|e| ssl_error("cert", e))?;
    load_files(&mut b, spec)?;
    b.set_options(SslOptions::COOKIE_EXCHANGE | SslOptions::NO_QUERY_MTU);
    b.set_cookie_generate_cb(|ssl, out| {
        let tag = ring::hmac::sign(cookie_key(), &peer_bytes(ssl));
        let n = tag.as_ref().len().min(out.len());
        out[..n].copy_from_slice(&tag.as_ref()[..n]);
        Ok(n)
    });
    b.set_cookie_verify_cb(|ssl, cookie| ring::hmac::verify(cookie_key(), &peer_bytes(ssl), cookie).is_ok());
    match (spec.client_auth, &spec.ca) {
        (ClientAuth::None, _) => b.set_verify(SslVerifyMode::NONE),
        (_, None) => return Err(ssl_error("ca", "missing (client_auth needs the CAs to verify against)")),
        (auth, Some(ca)) => {
            config::read_roots(ca)?;
            b.set_ca_file(ca).map_err(|e| ssl_error("ca", e))?;
            let mut mode = SslVerifyMode::PEER;
            if auth == ClientAuth::Required {
                mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
            }
            b.set_verify(mode);
        }
    }
    if !spec.alpn.is_empty() {
        let ours = spec.alpn.clone();
        b.set_alpn_select_callback(move |_, theirs| alpn_select(&ours, theirs).ok_or(openssl::ssl::AlpnError::NOACK));
    }
    Ok(b.build())
}

fn client_context(spec: &TlsSpec) -> Result<SslContext, TlsError> {
    let mut b = SslContextBuilder::new(SslMethod::dtls()).map_err(|e| ssl_error("ca", e))?;
    load_files(&mut b, spec)?;
    b.set_options(SslOptions::NO_QUERY_MTU);
    match &spec.ca {
        Some(ca) => {
            config::read_roots(ca)?;
            b.set_ca_file(ca).map_err(|e| ssl_error("ca", e))?;
        }
        None => b.set_default_verify_paths().map_err(|e| ssl_error("ca", e))?,
    }
    b.set_verify(SslVerifyMode::PEER);
    if !spec.alpn.is_empty() {
        b.set_alpn_protos(&alpn_wire(&spec.alpn))
            .map_err(|e| ssl_error("alpn", e))?;
    }
    Ok(b.build())
}

fn session_metadata(ssl: &SslRef) -> Value {
    let peer = ssl.peer_certificate().and_then(|c| c.to_der().ok());
    metadata::session(
        ssl.servername(NameType::HOST_NAME),
        ssl.selected_alpn_protocol(),
        ssl.version_str(),
        ssl.current_cipher().map_or("", |c| c.name()),
        peer.as_deref(),
    )
}

/// Why a handshake failed: OpenSSL's error plus, when certificate verification failed, its reason.
fn handshake_error(e: &openssl::ssl::Error, ssl: &SslRef) -> String {
    let v = ssl.verify_result();
    if v == openssl::x509::X509VerifyResult::OK {
        e.to_string()
    } else {
        format!("{} ({e})", v.error_string())
    }
}

pub struct DtlsBound {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    idle_timeout: Option<Duration>,
    tls: Arc<DtlsServer>,
}

impl DtlsBound {
    pub fn bind(spec: &DtlsListenerSpec, tls: Arc<DtlsServer>) -> io::Result<DtlsBound> {
        let addr = SocketAddr::new(spec.address, spec.port);
        let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
        sock.set_reuse_address(true)?;
        sock.bind(&addr.into())?;
        sock.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(sock.into())?;
        let local = socket.local_addr()?;
        Ok(DtlsBound {
            socket: Arc::new(socket),
            local,
            idle_timeout: spec.idle_timeout,
            tls,
        })
    }

    pub async fn run(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        let mut peers: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
        let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<SocketAddr>();
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(65536);
            buf.resize(65536, 0);
            let (n, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                Some(p) = gone_rx.recv() => {
                    if peers.get(&p).is_some_and(|tx| tx.is_closed()) {
                        peers.remove(&p);
                    }
                    continue;
                }
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(listener = %listener.name, "DTLS listener receive failed: {e}");
                        continue;
                    }
                },
            };
            let datagram = buf.split_to(n).freeze();
            if let Some(tx) = peers.get(&peer) {
                if !tx.is_closed() {
                    // A full queue drops the datagram, as a full socket buffer would.
                    let _ = tx.try_send(datagram);
                    continue;
                }
                peers.remove(&peer);
            }
            if pending.load(std::sync::atomic::Ordering::Relaxed) >= MAX_HANDSHAKES {
                tracing::debug!(listener = %listener.name, %peer, "too many DTLS handshakes pending, datagram dropped");
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let _ = tx.try_send(datagram);
            peers.insert(peer, tx);
            let io = DgramIo::Peer {
                rx,
                socket: self.socket.clone(),
                peer,
            };
            let (engine, listener, tls, gone, pending) = (
                engine.clone(),
                listener.clone(),
                self.tls.clone(),
                gone_tx.clone(),
                pending.clone(),
            );
            let (local, idle_timeout) = (self.local, self.idle_timeout);
            pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let accepted = accept(&tls, io, &listener.name, peer).await;
                pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let Some((stream, tls_meta)) = accepted else {
                    let _ = gone.send(peer);
                    return;
                };
                let (name, metadata) = super::tls::session_identity(&engine, &listener, "DTLS", peer, local, tls_meta);
                let (r, w) = tokio::io::split(stream);
                engine.spawn_session(NewSession {
                    name,
                    listener,
                    metadata,
                    reader: Reader::Dtls(r),
                    writer: Writer::Dtls(w),
                    idle_timeout,
                    on_end: Some(Box::new(move || {
                        let _ = gone.send(peer);
                    })),
                });
            });
        }
    }
}

async fn accept(tls: &DtlsServer, io: DgramIo, listener: &str, peer: SocketAddr) -> Option<(DtlsStream, Value)> {
    let setup = || -> Result<DtlsStream, openssl::error::ErrorStack> {
        let mut ssl = Ssl::new(&tls.get())?;
        if let Some(i) = peer_index() {
            ssl.set_ex_data(i, peer);
        }
        ssl.set_mtu(MTU)?;
        SslStream::new(ssl, io)
    };
    let mut stream = match setup() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(listener, %peer, "DTLS handshake failed: {e}");
            return None;
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut stream, Side::Accept)).await {
        Ok(Ok(())) => {
            let meta = session_metadata(stream.ssl());
            Some((stream, meta))
        }
        Ok(Err(e)) => {
            tracing::warn!(listener, %peer, "DTLS handshake failed: {}", handshake_error(&e, stream.ssl()));
            None
        }
        Err(_) => {
            tracing::debug!(listener, %peer, "DTLS handshake timed out after {HANDSHAKE_TIMEOUT:?}");
            None
        }
    }
}

/// Which side of a handshake this end is.
#[derive(Clone, Copy)]
enum Side {
    Accept,
    Connect,
}

/// Runs a handshake to its end, polling it again every [`RETRANSMIT_CHECK`] while it waits: OpenSSL looks at its
/// retransmission timer when a handshake read would block, and resends its last flight once the timer has expired
/// (a lost ClientHello, HelloVerifyRequest, server or client flight). Without the extra polls a lost flight would
/// only be noticed by the peer, if at all.
async fn handshake(stream: &mut DtlsStream, side: Side) -> Result<(), openssl::ssl::Error> {
    let mut tick = tokio::time::interval(RETRANSMIT_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    std::future::poll_fn(|cx| {
        let s = Pin::new(&mut *stream);
        let r = match side {
            Side::Accept => s.poll_accept(cx),
            Side::Connect => s.poll_connect(cx),
        };
        if r.is_pending() {
            // Register the next tick's wake-up (consume ticks that are already due).
            while tick.poll_tick(cx).is_ready() {}
        }
        r
    })
    .await
}

/// Opens a DTLS association to `address` (`host:port`), verifying the server as `spec` says (the name is `host`
/// unless `server_name` is set; an IP address is checked against the certificate's IP SANs).
pub async fn connect(
    address: &str,
    host: &str,
    bind: Option<&Bind>,
    tls: &DtlsClient,
    spec: &TlsSpec,
) -> Result<(Reader, Writer), UpstreamError> {
    let addr = super::resolve(address).await?;
    let local = match bind {
        Some(b) => SocketAddr::new(
            b.address.unwrap_or(if addr.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            }),
            b.port,
        ),
        None if addr.is_ipv4() => SocketAddr::from(([0, 0, 0, 0], 0)),
        None => SocketAddr::from(([0u16; 8], 0)),
    };
    let sock = UdpSocket::bind(local).await.map_err(UpstreamError::Io)?;
    sock.connect(addr).await.map_err(UpstreamError::Io)?;
    let name = spec.server_name.as_deref().unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let ssl_err = |e: openssl::error::ErrorStack| UpstreamError::Handshake(e.to_string());
    let mut ssl = Ssl::new(&tls.get()).map_err(ssl_err)?;
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ssl.param_mut().set_ip(ip).map_err(ssl_err)?,
        Err(_) => {
            ssl.set_hostname(name).map_err(ssl_err)?;
            ssl.param_mut().set_host(name).map_err(ssl_err)?;
        }
    }
    ssl.set_mtu(MTU).map_err(ssl_err)?;
    let mut stream = SslStream::new(ssl, DgramIo::Connected(sock)).map_err(ssl_err)?;
    if let Err(e) = handshake(&mut stream, Side::Connect).await {
        return Err(UpstreamError::Handshake(handshake_error(&e, stream.ssl())));
    }
    let (r, w) = tokio::io::split(stream);
    Ok((Reader::Dtls(r), Writer::Dtls(w)))
}

/// Reads one record (one message): the buffer always has room for the largest.
pub async fn read(r: &mut DtlsReader, arena: &mut BytesMut, out: &mut crate::stream::Batch) -> io::Result<bool> {
    use tokio::io::AsyncReadExt;
    arena.reserve(MAX_MESSAGE + 1024);
    match r.read_buf(arena).await {
        Ok(0) => Ok(false),
        Ok(_) => {
            out.push(arena.split().freeze());
            Ok(true)
        }
        // close_notify or a peer gone without one.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes each message as one record; a message larger than a record is dropped (as UDP drops one too large).
pub async fn write(w: &mut DtlsWriter, batch: &mut crate::stream::Batch) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    for m in batch.drain(..) {
        if m.is_empty() {
            continue;
        }
        if m.len() > MAX_MESSAGE {
            crate::metrics::dropped(crate::metrics::DropReason::Oversize, 1);
            tracing::debug!(len = m.len(), "message too large for a DTLS record, dropped");
            continue;
        }
        w.write_all(&m).await?;
    }
    Ok(())
}

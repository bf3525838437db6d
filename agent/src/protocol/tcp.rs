//! TCP: a listener that emits a session per accepted connection, and a cluster that opens a connection per session
//! (TCP_NODELAY, optional local bind).

use super::{UpstreamError, resolve};
use crate::engine::Engine;
use crate::session::NewSession;
use crate::stream::{Reader, Writer};
use l7mp_api::{Bind, Listener, TcpListenerSpec};
use serde_json::{Value, json};
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// Session metadata of an IP transport: `IP{src_addr,dst_addr}` and `<PROTO>{src_port,dst_port}`.
pub fn ip_metadata(listener: &str, name: &str, proto: &str, peer: SocketAddr, local: SocketAddr) -> Value {
    json!({
        "name": name,
        "listener": listener,
        "IP": { "src_addr": peer.ip().to_canonical().to_string(), "dst_addr": local.ip().to_canonical().to_string() },
        proto: { "src_port": peer.port(), "dst_port": local.port() },
        "labels": {},
    })
}

/// `PROTO:<remote addr>:<remote port>-<local addr>:<local port>-<id>`, the original's session names.
pub fn session_name(proto: &str, peer: SocketAddr, local: SocketAddr, id: u64) -> String {
    format!(
        "{proto}:{}:{}-{}:{}-{id}",
        peer.ip().to_canonical(),
        peer.port(),
        local.ip().to_canonical(),
        local.port()
    )
}

pub struct TcpBound {
    pub(crate) listener: TcpListener,
    /// The bound address when it is a specific one (then no `getsockname` per connection is needed).
    pub(crate) local: Option<SocketAddr>,
}

impl TcpBound {
    pub fn bind(spec: &TcpListenerSpec) -> io::Result<TcpBound> {
        let addr = SocketAddr::new(spec.address, spec.port);
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        // Accepted sockets inherit TCP_NODELAY from the listening socket: one setsockopt instead of one per
        // connection.
        sock.set_tcp_nodelay(true)?;
        sock.bind(&addr.into())?;
        sock.listen(1024)?;
        sock.set_nonblocking(true)?;
        let listener = TcpListener::from_std(sock.into())?;
        let local = listener.local_addr()?;
        Ok(TcpBound {
            listener,
            local: (!local.ip().is_unspecified()).then_some(local),
        })
    }

    /// The next connection with its peer and local addresses, or `None` once `cancel` fires. Accept errors (out of
    /// descriptors, a connection reset before accept) are logged and the listener keeps serving.
    pub async fn accept(
        &self,
        listener: &str,
        cancel: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return None,
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let local = self.local.or_else(|| stream.local_addr().ok()).unwrap_or(peer);
                    return Some((stream, peer, local));
                }
                Err(e) => {
                    tracing::warn!(listener, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    pub async fn run(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        while let Some((stream, peer, local)) = self.accept(&listener.name, &cancel).await {
            let name = session_name("TCP", peer, local, engine.next_id());
            let metadata = ip_metadata(&listener.name, &name, "TCP", peer, local);
            let (r, w) = stream.into_split();
            engine.spawn_session(NewSession {
                name,
                listener: listener.clone(),
                metadata,
                reader: Reader::Tcp(r),
                writer: Writer::Tcp(w),
                idle_timeout: None,
                on_end: None,
            });
        }
    }
}

/// Opens a TCP connection to `address` (`host:port`).
pub async fn connect(address: &str, bind: Option<&Bind>) -> Result<(Reader, Writer), UpstreamError> {
    let (r, w) = connect_stream(address, bind).await?.into_split();
    Ok((Reader::Tcp(r), Writer::Tcp(w)))
}

/// Opens a TCP connection to `address` (`host:port`), with TCP_NODELAY and an optional local bind.
pub async fn connect_stream(address: &str, bind: Option<&Bind>) -> Result<TcpStream, UpstreamError> {
    let addr = resolve(address).await?;
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(UpstreamError::Io)?;
    if let Some(b) = bind {
        let ip = b.address.unwrap_or(if addr.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        });
        if b.port != 0 {
            sock.set_reuseaddr(true).map_err(UpstreamError::Io)?;
        }
        sock.bind(SocketAddr::new(ip, b.port)).map_err(UpstreamError::Io)?;
    }
    let stream = sock.connect(addr).await.map_err(UpstreamError::Io)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

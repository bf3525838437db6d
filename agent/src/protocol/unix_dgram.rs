//! UNIX datagram sockets (SOCK_DGRAM): message boundaries kept end to end.
//!
//! Listener: one socket bound to `filename` (removed when the listener stops); datagrams are demultiplexed by the
//! sender's address into a session per peer, and replies go back to that address. A peer must have bound its own
//! socket to an address (a file or an abstract name), or nothing could be sent back: datagrams from unbound sockets
//! are dropped with a warning. Cluster: a socket bound to a fresh abstract address, connected to the endpoint's
//! path, per session.

use super::UpstreamError;
use crate::engine::Engine;
use crate::session::NewSession;
use crate::stream::{Reader, Writer};
use bytes::Bytes;
use l7mp_api::{Listener, UnixDgramListenerSpec};
use serde_json::json;
use std::collections::HashMap;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr as UnixAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Datagrams queued per session between the listener and the session.
const QUEUE_DEPTH: usize = 256;

pub struct UnixDgramBound {
    socket: Arc<UnixDatagram>,
    path: PathBuf,
    spec: UnixDgramListenerSpec,
}

/// A peer's address as a map key and a printable name.
fn peer_key(addr: &UnixAddr) -> Option<String> {
    if let Some(p) = addr.as_pathname() {
        return Some(p.to_string_lossy().into_owned());
    }
    addr.as_abstract_name()
        .map(|n| format!("@{}", String::from_utf8_lossy(n)))
}

impl UnixDgramBound {
    pub fn bind(spec: &UnixDgramListenerSpec) -> io::Result<UnixDgramBound> {
        let path = PathBuf::from(&spec.filename);
        super::unix::clear_stale_socket(&path, true)?;
        Ok(UnixDgramBound {
            socket: Arc::new(UnixDatagram::bind(&path)?),
            path,
            spec: spec.clone(),
        })
    }

    pub async fn run(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        let mut peers: HashMap<String, mpsc::Sender<Bytes>> = HashMap::new();
        let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<String>();
        let mut buf = vec![0u8; crate::sys::MAX_DATAGRAM];
        let mut warned_unbound = false;
        let filename = self.path.to_string_lossy().into_owned();
        loop {
            let (n, from) = tokio::select! {
                _ = cancel.cancelled() => break,
                Some(gone) = gone_rx.recv() => {
                    peers.remove(&gone);
                    continue;
                }
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(listener = %listener.name, "recv failed: {e}");
                        continue;
                    }
                },
            };
            let msg = Bytes::copy_from_slice(&buf[..n]);
            let from: UnixAddr = from.into();
            let Some(key) = peer_key(&from) else {
                crate::metrics::dropped(crate::metrics::DropReason::UnboundPeer, 1);
                if !warned_unbound {
                    tracing::warn!(listener = %listener.name, "datagram from an unbound UNIX socket dropped: replies could not reach it (bind the client socket; logged once)");
                    warned_unbound = true;
                }
                continue;
            };
            if let Some(tx) = peers.get(&key) {
                if tx.try_send(msg).is_err() {
                    crate::metrics::dropped(crate::metrics::DropReason::QueueFull, 1);
                    tracing::debug!(listener = %listener.name, peer = %key, "session queue full, datagram dropped");
                }
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
            let _ = tx.try_send(msg);
            peers.insert(key.clone(), tx);
            let name = format!("UNIX/dgram:{}-{}", listener.name, engine.next_id());
            let gone = gone_tx.clone();
            let peer_name = key.clone();
            engine.spawn_session(NewSession {
                metadata: json!({
                    "name": name,
                    "listener": listener.name,
                    "UNIX": { "filename": filename, "peer": key },
                    "labels": {},
                }),
                name,
                listener: listener.clone(),
                reader: Reader::Chan(rx),
                writer: Writer::UnixDgramTo(self.socket.clone(), from),
                idle_timeout: self.spec.idle_timeout,
                on_end: Some(Box::new(move || {
                    let _ = gone.send(peer_name);
                })),
            });
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(listener = %listener.name, path = %filename, "cannot remove socket file: {e}");
        }
    }
}

/// A process-unique abstract address for a cluster socket, so the server can answer it.
fn abstract_addr() -> io::Result<UnixAddr> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!("l7mp-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    UnixAddr::from_abstract_name(name.as_bytes())
}

/// A datagram socket bound to a fresh abstract address and connected to the server socket at `path`.
pub async fn connect(path: &str) -> Result<(Reader, Writer), UpstreamError> {
    let addr = abstract_addr().map_err(UpstreamError::Io)?;
    let std_sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).map_err(UpstreamError::Io)?;
    std_sock.connect(path).map_err(UpstreamError::Io)?;
    std_sock.set_nonblocking(true).map_err(UpstreamError::Io)?;
    let socket = Arc::new(UnixDatagram::from_std(std_sock).map_err(UpstreamError::Io)?);
    Ok((Reader::UnixDgram(socket.clone()), Writer::UnixDgram(socket)))
}

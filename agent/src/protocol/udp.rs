//! UDP: a listener in server mode (one session per remote address, each on its own socket connected to that peer, so
//! the kernel demultiplexes and every session reads and writes in batches) or singleton mode (one session on a
//! socket connected to `connect`), and a cluster that opens a connected socket per session.
//!
//! Server mode: the listening socket only sees a peer's first datagrams. For a new peer it binds a second socket to
//! the same local address (SO_REUSEADDR) and connects it to the peer; datagrams that still reach the listening socket
//! for a known peer are handed to its session. Between that bind and connect the new socket is the kernel's choice
//! for every new peer's datagrams on the port, and one looked up then may still be queued on it after the connect:
//! a session socket therefore checks the source of what it reads and hands other peers' datagrams back to the
//! listener, so no session ever sees another peer's data. A half-connected listener (only `connect.address` or only
//! `connect.port`, or both with `mode: server`) accepts peers matching what is given and drops the rest.

use super::tcp::{ip_metadata, session_name};
use super::{UpstreamError, resolve};
use crate::engine::Engine;
use crate::session::NewSession;
use crate::stream::{Reader, UdpReader, Writer};
use bytes::Bytes;
use l7mp_api::{Bind, Listener, UdpListenerSpec, UdpMode};
use socket2::{Domain, Socket, Type};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Datagrams queued for a session whose socket is not connected yet.
const EARLY_DEPTH: usize = 256;
/// Receive buffer asked for the listening socket, which takes a burst of new peers' first datagrams.
const LISTENER_RCVBUF: usize = 4 << 20;
/// Receive buffer asked for each session socket: room for a burst while the session task is busy or not yet
/// scheduled. A limit, not an allocation: the kernel charges only the datagrams actually queued.
const SESSION_RCVBUF: usize = 1 << 20;

pub struct UdpBound {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    spec: UdpListenerSpec,
}

/// A non-blocking UDP socket bound to `local`; `rcvbuf` is asked for before the bind, so the socket has it from
/// the first datagram the kernel hands it.
fn udp_socket(local: SocketAddr, reuse: bool, rcvbuf: Option<usize>) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(local), Type::DGRAM, None)?;
    if reuse {
        sock.set_reuse_address(true)?;
    }
    if let Some(size) = rcvbuf {
        // Best effort: the kernel caps it at net.core.rmem_max.
        let _ = sock.set_recv_buffer_size(size);
    }
    if local.is_ipv6() {
        // Accept IPv4-mapped peers on a wildcard IPv6 socket, as a dual-stack listener should.
        let _ = sock.set_only_v6(false);
    }
    sock.bind(&local.into())?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

impl UdpBound {
    pub fn bind(spec: &UdpListenerSpec) -> io::Result<UdpBound> {
        let addr = SocketAddr::new(spec.address, spec.port);
        if spec.port != 0 {
            // The listening socket needs SO_REUSEADDR (its sessions bind the same address), and with it a second
            // process could silently bind the same port too. Probe without it first: a port in use is an error.
            drop(udp_socket(addr, false, None)?);
        }
        let sock = udp_socket(addr, true, Some(LISTENER_RCVBUF))?;
        let socket = UdpSocket::from_std(sock.into())?;
        let local = socket.local_addr()?;
        if spec.mode == UdpMode::Singleton
            && let (Some(a), Some(p)) = (spec.connect_address, spec.connect_port)
        {
            // A connect failure here is synchronous (no packet is sent), e.g. a family mismatch.
            socket_connect_blocking(&socket, SocketAddr::new(a, p))?;
        }
        Ok(UdpBound {
            socket: Arc::new(socket),
            local,
            spec: spec.clone(),
        })
    }

    pub async fn run(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        match self.spec.mode {
            UdpMode::Singleton => self.run_singleton(engine, listener, cancel).await,
            UdpMode::Server => self.run_server(engine, listener, cancel).await,
        }
    }

    /// Emits one session at start; when it ends, emits the next one on the same socket.
    async fn run_singleton(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        let peer = match self.socket.peer_addr() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(listener = %listener.name, "singleton UDP socket is not connected: {e}");
                return;
            }
        };
        loop {
            let name = session_name("UDP", peer, self.local, engine.next_id());
            let (done_tx, done_rx) = oneshot::channel::<()>();
            engine.spawn_session(NewSession {
                metadata: ip_metadata(&listener.name, &name, "UDP", peer, self.local),
                name,
                listener: listener.clone(),
                reader: Reader::Udp(UdpReader {
                    socket: self.socket.clone(),
                    early: None,
                    only_from: None,
                }),
                writer: Writer::Udp(self.socket.clone()),
                idle_timeout: None,
                on_end: Some(Box::new(move || {
                    let _ = done_tx.send(());
                })),
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = done_rx => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    fn accepts(&self, peer: SocketAddr) -> bool {
        self.spec
            .connect_address
            .is_none_or(|a| a.to_canonical() == peer.ip().to_canonical())
            && self.spec.connect_port.is_none_or(|p| p == peer.port())
    }

    async fn run_server(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<SocketAddr>();
        let (stray_tx, mut stray_rx) = mpsc::unbounded_channel::<(Bytes, SocketAddr)>();
        let mut st = ServerState {
            peers: HashMap::new(),
            redeliver: VecDeque::new(),
            gone_tx,
            stray_tx,
            scratch: vec![0u8; crate::sys::MAX_DATAGRAM],
            warned_reject: false,
        };
        let mut buf = vec![0u8; crate::sys::MAX_DATAGRAM];
        loop {
            let (msg, peer) = match st.redeliver.pop_front() {
                Some(x) => x,
                None => tokio::select! {
                    _ = cancel.cancelled() => return,
                    Some(gone) = gone_rx.recv() => {
                        st.peers.remove(&gone);
                        continue;
                    }
                    Some(stray) = stray_rx.recv() => stray,
                    r = self.socket.recv_from(&mut buf) => match r {
                        Ok((n, peer)) => (Bytes::copy_from_slice(&buf[..n]), peer),
                        Err(e) => {
                            tracing::debug!(listener = %listener.name, "recv failed: {e}");
                            continue;
                        }
                    },
                },
            };
            self.dispatch(&mut st, msg, peer, &engine, &listener);
        }
    }

    /// Hands a datagram to its peer's session, or starts a session for a new peer.
    fn dispatch(
        &self,
        st: &mut ServerState,
        msg: Bytes,
        peer: SocketAddr,
        engine: &Arc<Engine>,
        listener: &Arc<Listener>,
    ) {
        if let Some(tx) = st.peers.get(&peer) {
            if tx.try_send(msg).is_err() {
                crate::metrics::dropped(crate::metrics::DropReason::QueueFull, 1);
                tracing::debug!(listener = %listener.name, %peer, "session queue full, datagram dropped");
            }
            return;
        }
        if !self.accepts(peer) {
            crate::metrics::dropped(crate::metrics::DropReason::PeerRejected, 1);
            if !st.warned_reject {
                tracing::warn!(listener = %listener.name, %peer, "datagram from a peer the listener's connect spec excludes dropped (logged once)");
                st.warned_reject = true;
            }
            return;
        }
        let (tx, rx) = mpsc::channel(EARLY_DEPTH);
        let _ = tx.try_send(msg);
        // Keep the peer's datagrams in order: all of them must be queued before the session starts reading its
        // socket. First those met while earlier sessions were set up (older than anything still in a socket)...
        st.redeliver.retain(|(m, from)| {
            let mine = *from == peer;
            if mine {
                let _ = tx.try_send(m.clone());
            }
            !mine
        });
        // ... then those still queued on the listening socket. Other peers' datagrams met on the way go back
        // through dispatch.
        let others = self.drain_listener(&mut st.scratch, peer, &tx);
        st.redeliver.extend(others);
        let socket = match session_socket(self.local, peer) {
            Ok((s, caught)) => {
                // Between the session socket's bind and its connect the kernel hands it every new peer's datagrams
                // for this port; after the connect, this peer's go to it and the others' to the listening socket
                // again. So this peer's datagrams that reached the listening socket meanwhile (just before the
                // bind) precede those the session socket caught, while the other peers' caught ones precede what
                // they sent to the listening socket after the connect.
                let later = self.drain_listener(&mut st.scratch, peer, &tx);
                for (m, from) in caught {
                    if from == peer {
                        let _ = tx.try_send(m);
                    } else {
                        st.redeliver.push_back((m, from));
                    }
                }
                st.redeliver.extend(later);
                Arc::new(s)
            }
            Err(e) => {
                tracing::warn!(listener = %listener.name, %peer, "cannot open a session socket: {e}");
                return;
            }
        };
        st.peers.insert(peer, tx);
        let name = session_name("UDP", peer, self.local, engine.next_id());
        let gone = st.gone_tx.clone();
        engine.spawn_session(NewSession {
            metadata: ip_metadata(&listener.name, &name, "UDP", peer, self.local),
            name,
            listener: listener.clone(),
            reader: Reader::Udp(UdpReader {
                socket: socket.clone(),
                early: Some(rx),
                only_from: Some((peer, st.stray_tx.clone())),
            }),
            writer: Writer::Udp(socket),
            idle_timeout: self.spec.idle_timeout,
            on_end: Some(Box::new(move || {
                let _ = gone.send(peer);
            })),
        });
    }

    /// Reads what waits on the listening socket: `peer`'s datagrams go to `tx`, the others are returned in order.
    /// A raw non-blocking recv: tokio's try_recv_from would answer from its readiness cache without asking the
    /// kernel.
    fn drain_listener(
        &self,
        scratch: &mut [u8],
        peer: SocketAddr,
        tx: &mpsc::Sender<Bytes>,
    ) -> Vec<(Bytes, SocketAddr)> {
        let raw = socket2::SockRef::from(&*self.socket);
        let mut others = Vec::new();
        while let Ok((n, from)) = raw.recv_from(as_uninit(scratch)) {
            let Some(from) = from.as_socket() else { continue };
            let m = Bytes::copy_from_slice(&scratch[..n]);
            if from == peer {
                let _ = tx.try_send(m);
            } else {
                others.push((m, from));
            }
        }
        others
    }
}

/// The peer table of a server-mode listener.
struct ServerState {
    peers: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    /// Datagrams of other peers met while a new session was set up, to dispatch next.
    redeliver: VecDeque<(Bytes, SocketAddr)>,
    gone_tx: mpsc::UnboundedSender<SocketAddr>,
    /// Where session sockets hand back datagrams that were not their peer's.
    stray_tx: mpsc::UnboundedSender<(Bytes, SocketAddr)>,
    warned_reject: bool,
    scratch: Vec<u8>,
}

/// A byte buffer seen as the uninitialised-byte slice socket2 reads into.
fn as_uninit(buf: &mut [u8]) -> &mut [std::mem::MaybeUninit<u8>] {
    // SAFETY: u8 and MaybeUninit<u8> have the same layout; initialised bytes stay valid MaybeUninit.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), buf.len()) }
}

/// A socket bound to the listener's address and connected to one peer, with the datagrams it caught before the
/// connect took effect (from any peer: the kernel may deliver to it while it is bound but not yet connected).
fn session_socket(local: SocketAddr, peer: SocketAddr) -> io::Result<(UdpSocket, Vec<(Bytes, SocketAddr)>)> {
    // Between its bind and its connect the new socket is the kernel's first choice for *every* new peer's
    // datagrams on this port (the newest of equal sockets wins). If this thread is descheduled right then, a burst
    // of new peers lands here, so the socket starts with the listener's large buffer; everything it catches is
    // handed back below, and the buffer shrinks to the session size afterwards.
    let sock = udp_socket(local, true, Some(LISTENER_RCVBUF))?;
    sock.connect(&peer.into())?;
    let mut caught = Vec::new();
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); crate::sys::MAX_DATAGRAM];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        // SAFETY: recv_from initialised the first n bytes.
        let bytes: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
        if let Some(from) = from.as_socket() {
            caught.push((Bytes::copy_from_slice(bytes), from));
        }
    }
    let _ = sock.set_recv_buffer_size(SESSION_RCVBUF);
    Ok((UdpSocket::from_std(sock.into())?, caught))
}

fn socket_connect_blocking(socket: &UdpSocket, peer: SocketAddr) -> io::Result<()> {
    let sock = socket2::SockRef::from(socket);
    sock.connect(&peer.into())
}

/// Opens a UDP socket connected to `address` (`host:port`), bound to `bind` if given.
pub async fn connect(address: &str, bind: Option<&Bind>) -> Result<(Reader, Writer), UpstreamError> {
    let addr = resolve(address).await?;
    let any: IpAddr = if addr.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let local = SocketAddr::new(bind.and_then(|b| b.address).unwrap_or(any), bind.map_or(0, |b| b.port));
    let sock = udp_socket(local, local.port() != 0, None).map_err(UpstreamError::Io)?;
    sock.connect(&addr.into()).map_err(UpstreamError::Io)?;
    let socket = Arc::new(UdpSocket::from_std(sock.into()).map_err(UpstreamError::Io)?);
    Ok((
        Reader::Udp(UdpReader {
            socket: socket.clone(),
            early: None,
            only_from: None,
        }),
        Writer::Udp(socket),
    ))
}

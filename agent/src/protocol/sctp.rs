//! SCTP, one-to-one style (`SOCK_STREAM` + `IPPROTO_SCTP`): a datagram stream over an association. Each message
//! is kept whole: a read returns one message (pieces of a message larger than the buffer are joined until
//! `MSG_EOR`), and each write sends one message.
//!
//! Listener: bound to `address:port`, a session per accepted association, with `IP` and `SCTP` metadata like TCP.
//! Cluster: an association per session to `<endpoint>:<port>`, optionally bound to `bind`. SCTP has no half-close,
//! so a session ends when either direction ends. On a kernel without SCTP every socket fails with
//! [`UNSUPPORTED`]: binding a listener fails the configuration, a cluster fails its sessions.

use super::tcp::{ip_metadata, session_name};
use super::{UpstreamError, resolve};
use crate::engine::Engine;
use crate::session::NewSession;
use crate::stream::{Batch, Reader, Writer};
use crate::sys::{BATCH, MAX_DATAGRAM};
use bytes::BytesMut;
use l7mp_api::{Bind, Listener, TcpListenerSpec};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

/// What every SCTP socket operation says on a kernel without SCTP.
pub const UNSUPPORTED: &str = "SCTP is not supported by this kernel";
/// `MSG_NOTIFICATION` (linux/sctp.h): the message is an SCTP event, not data.
const MSG_NOTIFICATION: libc::c_int = 0x8000;

/// A new SCTP socket for `domain`, or [`UNSUPPORTED`] when the kernel has no SCTP.
fn sctp_socket(domain: Domain) -> io::Result<Socket> {
    Socket::new(domain, Type::STREAM, Some(Protocol::from(libc::IPPROTO_SCTP))).map_err(|e| match e.raw_os_error() {
        Some(libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT) => io::Error::new(io::ErrorKind::Unsupported, UNSUPPORTED),
        _ => e,
    })
}

/// Whether this kernel has SCTP (probed once).
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| !matches!(sctp_socket(Domain::IPV4), Err(e) if e.kind() == io::ErrorKind::Unsupported))
}

/// A connected SCTP socket, shared by a session's reader and writer.
pub struct SctpSocket {
    fd: AsyncFd<Socket>,
}

/// The read half of an association.
pub struct SctpReader {
    sock: Arc<SctpSocket>,
    messages: Messages,
}

/// Joins what `recvmsg` returns into whole messages: pieces of a message until its `MSG_EOR`, notifications
/// dropped.
#[derive(Default)]
struct Messages {
    /// The pieces of a message read so far.
    partial: BytesMut,
    /// The message being read is a notification: its pieces are dropped.
    skipping: bool,
}

impl Messages {
    /// Takes one piece with its `recvmsg` flags; a completed message is appended to `out` (copied into `arena`
    /// when it came in one piece).
    fn piece(&mut self, piece: &[u8], flags: libc::c_int, arena: &mut BytesMut, out: &mut Batch) {
        let eor = flags & libc::MSG_EOR != 0;
        if flags & MSG_NOTIFICATION != 0 || self.skipping {
            self.skipping = !eor;
            return;
        }
        if !eor {
            self.partial.extend_from_slice(piece);
        } else if self.partial.is_empty() {
            arena.extend_from_slice(piece);
            out.push(arena.split().freeze());
        } else {
            self.partial.extend_from_slice(piece);
            out.push(self.partial.split().freeze());
        }
    }

    /// End of stream: an unfinished message is dropped.
    fn end(&mut self) {
        if !self.partial.is_empty() {
            crate::metrics::dropped(crate::metrics::DropReason::Truncated, 1);
            tracing::debug!("SCTP association ended inside a message; its start is dropped");
            self.partial.clear();
        }
    }
}

fn split(sock: Socket) -> io::Result<(Reader, Writer)> {
    sock.set_nonblocking(true)?;
    let sock = Arc::new(SctpSocket {
        fd: crate::sys::async_socket(sock)?,
    });
    Ok((
        Reader::Sctp(Box::new(SctpReader {
            sock: sock.clone(),
            messages: Messages::default(),
        })),
        Writer::Sctp(sock),
    ))
}

/// One `recvmsg` into `buf`: bytes read and flags; 0 bytes is end of stream.
fn recvmsg(fd: libc::c_int, buf: &mut [u8]) -> io::Result<(usize, libc::c_int)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; it points at one iovec over `buf`, which outlives the call.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    // SAFETY: `hdr` is initialised as above; the kernel writes at most `iov_len` bytes.
    let n = unsafe { libc::recvmsg(fd, &mut hdr, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, hdr.msg_flags))
}

/// What one pass over a readable socket found.
enum Pass {
    /// The socket has nothing more right now.
    Drained,
    /// A batch is full.
    Full,
    /// End of stream.
    Eof,
}

impl SctpReader {
    /// Waits for at least one whole message and appends what is ready (up to a batch) to `out`, each message copied
    /// into `arena` at its size. Returns `false` at end of stream.
    pub async fn read(&mut self, arena: &mut BytesMut, out: &mut Batch) -> io::Result<bool> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        loop {
            let mut guard = self.sock.fd.readable().await?;
            let fd = self.sock.fd.as_raw_fd();
            // Messages land in a per-thread scratch buffer (never held across an `.await`) and are copied out.
            let pass = SCRATCH.with(|cell| {
                let mut scratch = cell.borrow_mut();
                scratch.resize(MAX_DATAGRAM, 0);
                loop {
                    let (n, flags) = match recvmsg(fd, &mut scratch) {
                        Ok(x) => x,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Pass::Drained),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    if n == 0 {
                        self.messages.end();
                        return Ok(Pass::Eof);
                    }
                    self.messages.piece(&scratch[..n], flags, arena, out);
                    if out.len() >= BATCH {
                        return Ok(Pass::Full);
                    }
                }
            })?;
            match pass {
                Pass::Drained => guard.clear_ready(),
                Pass::Full => return Ok(true),
                Pass::Eof => return Ok(!out.is_empty()),
            }
            if !out.is_empty() {
                return Ok(true);
            }
        }
    }
}

impl SctpSocket {
    /// Sends every message of `batch` as one SCTP message (and empties it).
    pub async fn send_batch(&self, batch: &mut Batch) -> io::Result<()> {
        for m in batch.drain(..) {
            self.fd
                .async_io(Interest::WRITABLE, |s| {
                    // SAFETY: `m` is a live buffer of m.len() bytes.
                    let n = unsafe {
                        libc::send(
                            s.as_raw_fd(),
                            m.as_ptr().cast(),
                            m.len(),
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    };
                    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
                })
                .await?;
        }
        Ok(())
    }
}

pub struct SctpBound {
    listener: AsyncFd<Socket>,
    /// The bound address when it is a specific one.
    local: Option<SocketAddr>,
}

impl SctpBound {
    pub fn bind(spec: &TcpListenerSpec) -> io::Result<SctpBound> {
        let addr = SocketAddr::new(spec.address, spec.port);
        let sock = sctp_socket(Domain::for_address(addr))?;
        sock.set_reuse_address(true)?;
        sock.bind(&addr.into())?;
        sock.listen(1024)?;
        sock.set_nonblocking(true)?;
        let local = sock.local_addr()?.as_socket().filter(|a| !a.ip().is_unspecified());
        Ok(SctpBound {
            listener: crate::sys::async_socket(sock)?,
            local,
        })
    }

    async fn accept(&self) -> io::Result<(Socket, SockAddr)> {
        self.listener.async_io(Interest::READABLE, |s| s.accept()).await
    }

    pub async fn run(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.accept() => r,
            };
            let (sock, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = %listener.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Some(peer) = peer.as_socket() else { continue };
            let local = self
                .local
                .or_else(|| sock.local_addr().ok().and_then(|a| a.as_socket()))
                .unwrap_or(peer);
            let (reader, writer) = match split(sock) {
                Ok(rw) => rw,
                Err(e) => {
                    tracing::warn!(listener = %listener.name, %peer, "cannot use the association: {e}");
                    continue;
                }
            };
            let name = session_name("SCTP", peer, local, engine.next_id());
            engine.spawn_session(NewSession {
                metadata: ip_metadata(&listener.name, &name, "SCTP", peer, local),
                name,
                listener: listener.clone(),
                reader,
                writer,
                idle_timeout: None,
                on_end: None,
            });
        }
    }
}

/// Opens an association to `address` (`host:port`), bound to `bind` if given.
pub async fn connect(address: &str, bind: Option<&Bind>) -> Result<(Reader, Writer), UpstreamError> {
    let addr = resolve(address).await?;
    let sock = sctp_socket(Domain::for_address(addr)).map_err(UpstreamError::Io)?;
    if let Some(b) = bind {
        let any: IpAddr = if addr.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        if b.port != 0 {
            sock.set_reuse_address(true).map_err(UpstreamError::Io)?;
        }
        sock.bind(&SocketAddr::new(b.address.unwrap_or(any), b.port).into())
            .map_err(UpstreamError::Io)?;
    }
    sock.set_nonblocking(true).map_err(UpstreamError::Io)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(UpstreamError::Io(e)),
    }
    let fd = crate::sys::async_socket(sock).map_err(UpstreamError::Io)?;
    // The connect is done when the socket turns writable; SO_ERROR says how it went.
    let _ = fd.writable().await.map_err(UpstreamError::Io)?;
    if let Some(e) = fd.get_ref().take_error().map_err(UpstreamError::Io)? {
        return Err(UpstreamError::Io(e));
    }
    let sock = fd.into_inner();
    split(sock).map_err(UpstreamError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_until_eor_and_notifications_are_dropped() {
        let (mut m, mut arena, mut out) = (Messages::default(), BytesMut::new(), Batch::new());
        m.piece(b"whole", libc::MSG_EOR, &mut arena, &mut out);
        m.piece(b"fir", 0, &mut arena, &mut out);
        m.piece(b"st ", 0, &mut arena, &mut out);
        assert_eq!(out.len(), 1, "no message before its MSG_EOR");
        m.piece(b"part", libc::MSG_EOR, &mut arena, &mut out);
        m.piece(b"event", MSG_NOTIFICATION, &mut arena, &mut out);
        m.piece(b"eve", MSG_NOTIFICATION | libc::MSG_EOR, &mut arena, &mut out);
        m.piece(b"next", libc::MSG_EOR, &mut arena, &mut out);
        m.piece(b"cut", 0, &mut arena, &mut out);
        m.end();
        m.piece(b"after", libc::MSG_EOR, &mut arena, &mut out);
        let got: Vec<&[u8]> = out.iter().map(|b| &b[..]).collect();
        assert_eq!(got, [&b"whole"[..], b"first part", b"next", b"after"]);
    }
}

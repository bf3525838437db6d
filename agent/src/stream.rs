//! The two halves of every stream the engine moves data between: a [`Reader`] that yields batches of messages and a
//! [`Writer`] that takes them.
//!
//! A message is one datagram on datagram streams (UDP, in-process channels) and an arbitrary chunk on byte streams
//! (TCP, UNIX stream, stdio). One enum arm per transport gives static dispatch on the hot path; adding a protocol
//! adds an arm here.

use crate::protocol::af_packet::PacketSocket;
use crate::protocol::http::{HttpReader, HttpWriter};
use crate::protocol::pipe::PipeWriter;
use crate::protocol::process::ProcessReader;
use crate::protocol::sctp::{SctpReader, SctpSocket};
use crate::protocol::sync::SyncPort;
use crate::protocol::websocket::{WsReader, WsWriter};
use crate::sys;
use bytes::{Bytes, BytesMut};
use l7mp_api::StreamKind;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::net::{UdpSocket, UnixDatagram, tcp, unix};
use tokio::sync::mpsc;

/// A batch of messages moved together.
pub type Batch = Vec<Bytes>;

/// How much a byte-stream read asks for at once.
const READ_CHUNK: usize = 64 * 1024;
/// Capacity of in-process message channels.
pub const CHANNEL_DEPTH: usize = 256;
/// The largest UDP payload over IPv4 (65535 minus the IP and UDP headers); IPv6 allows 20 bytes more.
pub const MAX_UDP_PAYLOAD: usize = 65507;

/// The receiving half of a connected UDP socket, plus the datagrams its listener received for it before the socket
/// was connected (server-mode UDP sessions).
pub struct UdpReader {
    pub socket: Arc<UdpSocket>,
    pub early: Option<mpsc::Receiver<Bytes>>,
    /// A server-mode session's peer, and where datagrams from anyone else go (back to the listener). A session
    /// socket shares its port with the listener and, for an instant after its bind, may be handed other peers'
    /// datagrams (see `protocol::udp`); they must never reach this session.
    pub only_from: Option<(SocketAddr, mpsc::UnboundedSender<(Bytes, SocketAddr)>)>,
}

/// The read half of a stream.
pub enum Reader {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
    Udp(UdpReader),
    /// An in-process channel (virtual clusters used as a destination).
    Chan(mpsc::Receiver<Bytes>),
    Stdin(tokio::io::Stdin),
    /// The stdout of a forked command (StdioFork).
    Process(Box<ProcessReader>),
    /// A connected UNIX datagram socket.
    UnixDgram(Arc<UnixDatagram>),
    /// A WebSocket: one message per datagram.
    Ws(Box<WsReader>),
    /// An HTTP request body (listener) or response (cluster).
    Http(Box<HttpReader>),
    /// Messages to hand out before reading from the inner reader (data that arrived with a JSONSocket header, the
    /// first bytes a PIPE listener read).
    Prefixed(Box<(Batch, Reader)>),
    /// The read end of a FIFO.
    Pipe(pipe::Receiver),
    /// A packet socket: one Ethernet frame per datagram.
    Packet(Arc<PacketSocket>),
    /// An SCTP association: one message per datagram.
    Sctp(Box<SctpReader>),
    /// A TLS connection (either side).
    Tls(crate::protocol::tls::TlsReader),
    /// A DTLS association (either side): one record per message.
    Dtls(crate::protocol::dtls::DtlsReader),
}

/// The write half of a stream.
pub enum Writer {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
    Udp(Arc<UdpSocket>),
    /// `None` once shut down.
    Chan(Option<mpsc::Sender<Bytes>>),
    Stdout(tokio::io::Stdout),
    /// The stdin of a forked command; `None` once shut down (the command sees EOF).
    Process(Option<tokio::process::ChildStdin>),
    /// A Sync group membership; `None` once left.
    Sync(Option<SyncPort>),
    /// A connected UNIX datagram socket.
    UnixDgram(Arc<UnixDatagram>),
    /// A UNIX datagram listener's socket, answering one peer.
    UnixDgramTo(Arc<UnixDatagram>, std::os::unix::net::SocketAddr),
    /// A WebSocket: one message per datagram.
    Ws(Box<WsWriter>),
    /// An HTTP response (listener) or request body (cluster).
    Http(Box<HttpWriter>),
    /// The write end of a FIFO, opened when first needed.
    Pipe(Box<PipeWriter>),
    /// A packet socket: one Ethernet frame per datagram.
    Packet(Arc<PacketSocket>),
    /// An SCTP association: one message per datagram.
    Sctp(Arc<SctpSocket>),
    /// A TLS connection (either side); flushed after every batch.
    Tls(crate::protocol::tls::TlsWriter),
    /// A DTLS association (either side): one record per message.
    Dtls(crate::protocol::dtls::DtlsWriter),
}

impl Reader {
    pub fn kind(&self) -> StreamKind {
        match self {
            Reader::Prefixed(p) => p.1.kind(),
            Reader::Tcp(_)
            | Reader::Unix(_)
            | Reader::Stdin(_)
            | Reader::Process(_)
            | Reader::Pipe(_)
            | Reader::Tls(_)
            | Reader::Http(_) => StreamKind::ByteStream,
            Reader::Udp(_)
            | Reader::Chan(_)
            | Reader::UnixDgram(_)
            | Reader::Ws(_)
            | Reader::Packet(_)
            | Reader::Dtls(_)
            | Reader::Sctp(_) => StreamKind::Datagram,
        }
    }

    /// Waits for at least one message and appends what is available (up to a batch) to `out`, cutting the bytes
    /// from `arena`. Returns `false` at end of stream.
    pub async fn read(&mut self, arena: &mut BytesMut, out: &mut Batch) -> io::Result<bool> {
        match self {
            Reader::Tcp(r) => read_bytes(r, arena, out).await,
            Reader::Unix(r) => read_bytes(r, arena, out).await,
            Reader::Stdin(r) => read_bytes(r, arena, out).await,
            Reader::Pipe(r) => read_bytes(r, arena, out).await,
            Reader::Tls(r) => crate::protocol::tls::eof_is_end(read_bytes(r, arena, out).await),
            Reader::Dtls(r) => crate::protocol::dtls::read(r, arena, out).await,
            Reader::Packet(sock) => sock.recv_batch(arena, out).await.map(|()| true),
            Reader::Sctp(r) => r.read(arena, out).await,
            Reader::Ws(ws) => ws.read(out).await,
            Reader::Http(h) => h.read(out).await,
            Reader::Prefixed(p) => {
                if p.0.is_empty() {
                    return Box::pin(p.1.read(arena, out)).await;
                }
                out.append(&mut p.0);
                Ok(true)
            }
            Reader::UnixDgram(sock) => loop {
                sock.readable().await?;
                let fd = sock.as_raw_fd();
                match sock.try_io(tokio::io::Interest::READABLE, || {
                    sys::recv_batch(fd, sys::BATCH, arena, out)
                }) {
                    Ok(_) => return Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            },
            Reader::Process(p) => {
                let more = read_bytes(&mut p.stdout, arena, out).await?;
                if !more {
                    p.reap().await;
                }
                Ok(more)
            }
            Reader::Chan(rx) => {
                let Some(first) = rx.recv().await else {
                    return Ok(false);
                };
                out.push(first);
                while out.len() < sys::BATCH {
                    match rx.try_recv() {
                        Ok(m) => out.push(m),
                        Err(_) => break,
                    }
                }
                Ok(true)
            }
            Reader::Udp(u) => loop {
                if let Some(early) = &mut u.early {
                    match early.try_recv() {
                        Ok(m) => {
                            out.push(m);
                            return Ok(true);
                        }
                        Err(mpsc::error::TryRecvError::Disconnected) => u.early = None,
                        Err(mpsc::error::TryRecvError::Empty) => {}
                    }
                }
                let ready = match &mut u.early {
                    Some(early) => tokio::select! {
                        biased;
                        m = early.recv() => {
                            match m {
                                Some(m) => { out.push(m); return Ok(true); }
                                None => { u.early = None; continue; }
                            }
                        }
                        r = u.socket.readable() => r,
                    },
                    None => u.socket.readable().await,
                };
                ready?;
                let fd = u.socket.as_raw_fd();
                let mut strays = Vec::new();
                let got = u.socket.try_io(tokio::io::Interest::READABLE, || match &u.only_from {
                    None => sys::recv_batch(fd, sys::BATCH, arena, out),
                    Some((peer, _)) => sys::recv_batch_from(fd, sys::BATCH, arena, out, *peer, &mut strays),
                });
                if let Some((peer, back)) = &u.only_from {
                    for (m, from) in strays {
                        tracing::debug!(%peer, %from, "datagram for another peer on a session socket, handed back");
                        let _ = back.send((m, from));
                    }
                }
                match got {
                    Ok(0) => continue,
                    Ok(_) => return Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    // An ICMP port-unreachable for an earlier send: UDP is unreliable, keep the session.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => return Err(e),
                }
            },
        }
    }
}

async fn read_bytes<R: AsyncReadExt + Unpin>(r: &mut R, arena: &mut BytesMut, out: &mut Batch) -> io::Result<bool> {
    if arena.capacity() < READ_CHUNK / 4 {
        arena.reserve(READ_CHUNK);
    }
    let n = r.read_buf(arena).await?;
    if n == 0 {
        return Ok(false);
    }
    out.push(arena.split().freeze());
    Ok(true)
}

impl Writer {
    pub fn kind(&self) -> StreamKind {
        match self {
            Writer::Tcp(_)
            | Writer::Unix(_)
            | Writer::Stdout(_)
            | Writer::Process(_)
            | Writer::Pipe(_)
            | Writer::Tls(_)
            | Writer::Http(_) => StreamKind::ByteStream,
            Writer::Udp(_)
            | Writer::Chan(_)
            | Writer::Sync(_)
            | Writer::UnixDgram(_)
            | Writer::UnixDgramTo(..)
            | Writer::Ws(_)
            | Writer::Packet(_)
            | Writer::Dtls(_)
            | Writer::Sctp(_) => StreamKind::Datagram,
        }
    }

    /// The largest message this writer can send as one datagram, where there is a limit. A byte stream routed into
    /// such a writer is cut into pieces of at most this size.
    pub fn max_message(&self) -> Option<usize> {
        match self {
            Writer::Udp(_) => Some(MAX_UDP_PAYLOAD),
            Writer::Dtls(_) => Some(crate::protocol::dtls::MAX_MESSAGE),
            // What the agent's own UNIX datagram sockets receive whole.
            Writer::UnixDgram(_) | Writer::UnixDgramTo(..) => Some(sys::MAX_DATAGRAM),
            _ => None,
        }
    }

    /// Writes every message of `batch` (and empties it).
    pub async fn write(&mut self, batch: &mut Batch) -> io::Result<()> {
        match self {
            Writer::Tcp(w) => write_bytes(w, batch).await,
            Writer::Unix(w) => write_bytes(w, batch).await,
            Writer::Stdout(w) => {
                write_bytes(w, batch).await?;
                w.flush().await
            }
            Writer::Tls(w) => {
                write_bytes(w, batch).await?;
                w.flush().await
            }
            Writer::Dtls(w) => crate::protocol::dtls::write(w, batch).await,
            Writer::Ws(ws) => ws.write(batch).await,
            Writer::Http(h) => h.write(batch).await,
            Writer::Pipe(w) => w.write(batch).await,
            Writer::Packet(sock) => sock.send_batch(batch).await,
            Writer::Sctp(sock) => sock.send_batch(batch).await,
            Writer::UnixDgram(sock) => {
                let fd = sock.as_raw_fd();
                let mut off = 0;
                while off < batch.len() {
                    sock.writable().await?;
                    // No GSO here: UDP_SEGMENT is a UDP option.
                    match sock.try_io(tokio::io::Interest::WRITABLE, || {
                        sys::send_batch(fd, &batch[off..], false)
                    }) {
                        Ok(n) => off += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if too_large(&e, batch[off].len()) => off += 1,
                        Err(e) => return Err(e),
                    }
                }
                batch.clear();
                Ok(())
            }
            Writer::UnixDgramTo(sock, peer) => {
                for m in batch.drain(..) {
                    loop {
                        sock.writable().await?;
                        match sock.try_io(tokio::io::Interest::WRITABLE, || send_to_unix(sock, &m, peer)) {
                            Ok(_) => break,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(e) if too_large(&e, m.len()) => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(())
            }
            Writer::Process(stdin) => match stdin {
                Some(w) => write_bytes(w, batch).await,
                None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "process input closed")),
            },
            Writer::Sync(port) => {
                if let Some(p) = port {
                    p.broadcast(batch);
                }
                batch.clear();
                Ok(())
            }
            Writer::Chan(tx) => {
                let Some(tx) = tx else {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "channel shut down"));
                };
                for m in batch.drain(..) {
                    tx.send(m)
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "peer stage ended"))?;
                }
                Ok(())
            }
            Writer::Udp(sock) => {
                let fd = sock.as_raw_fd();
                let mut off = 0;
                while off < batch.len() {
                    sock.writable().await?;
                    match sock.try_io(tokio::io::Interest::WRITABLE, || {
                        sys::send_batch(fd, &batch[off..], true)
                    }) {
                        Ok(n) => off += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // Nobody listens upstream (yet): the datagram is lost, as UDP allows.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            crate::metrics::dropped(crate::metrics::DropReason::Refused, 1);
                            off += 1
                        }
                        Err(e) if too_large(&e, batch[off].len()) => off += 1,
                        Err(e) => return Err(e),
                    }
                }
                batch.clear();
                Ok(())
            }
        }
    }

    /// Whether ending this stream takes more than a plain close: a WebSocket close handshake, the end of an HTTP
    /// body (a body dropped unfinished is aborted), or opening a FIFO that was never written so that its reader sees
    /// the end.
    pub fn needs_graceful_close(&self) -> bool {
        match self {
            Writer::Ws(_) | Writer::Http(_) => true,
            Writer::Pipe(w) => w.needs_graceful_close(),
            _ => false,
        }
    }

    /// The HTTP exchange of an HTTP listener's session.
    pub fn http_exchange(&self) -> Option<&Arc<crate::protocol::http::Exchange>> {
        match self {
            Writer::Http(h) => h.exchange(),
            _ => None,
        }
    }

    /// Signals end of stream to the peer. Returns whether the peer can see it: a datagram socket has no way to say
    /// "no more data", so a session whose other direction ended is then over.
    pub async fn shutdown(&mut self) -> bool {
        match self {
            Writer::Tcp(w) => w.shutdown().await.is_ok(),
            Writer::Unix(w) => w.shutdown().await.is_ok(),
            // close_notify, then the TCP FIN.
            Writer::Tls(w) => w.shutdown().await.is_ok(),
            // A close_notify; the session ends all the same (datagram streams have no half-close).
            Writer::Dtls(w) => {
                let _ = w.shutdown().await;
                false
            }
            Writer::Stdout(w) => {
                // Standard output stays open for the process; the peer cannot be told.
                let _ = w.flush().await;
                false
            }
            Writer::Chan(tx) => tx.take().is_some(),
            // Closing its stdin is how a command learns there is no more input.
            Writer::Process(stdin) => stdin.take().is_some(),
            // Other members cannot be told that one member is done; the session ends.
            Writer::Sync(port) => {
                port.take();
                false
            }
            // SCTP has no half-close: a SHUTDOWN ends the association both ways.
            Writer::Udp(_) | Writer::UnixDgram(_) | Writer::UnixDgramTo(..) | Writer::Packet(_) | Writer::Sctp(_) => {
                false
            }
            Writer::Ws(ws) => ws.shutdown().await,
            Writer::Http(h) => h.shutdown(),
            Writer::Pipe(w) => w.shutdown().await,
        }
    }
}

/// Whether a send failed because the message is larger than the socket can send as one datagram (e.g. a 100 kB
/// WebSocket message routed to UDP). Such a message is dropped, as a datagram network would; the session goes on.
/// The first drop in the process is a warning, the others are logged at debug level.
fn too_large(e: &io::Error, len: usize) -> bool {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if e.raw_os_error() != Some(libc::EMSGSIZE) {
        return false;
    }
    crate::metrics::dropped(crate::metrics::DropReason::Oversize, 1);
    if WARNED.swap(true, Ordering::Relaxed) {
        tracing::debug!(len, "message too large for a datagram, dropped");
    } else {
        tracing::warn!(
            len,
            "message too large for a datagram (UDP takes 65507 bytes), dropped (logged once; the rest at debug level)"
        );
    }
    true
}

/// One datagram to a UNIX socket address, path or abstract (tokio's `send_to` takes only paths).
fn send_to_unix(sock: &UnixDatagram, msg: &[u8], peer: &std::os::unix::net::SocketAddr) -> io::Result<usize> {
    use std::os::fd::FromRawFd;
    // SAFETY: the descriptor stays owned by `sock`; ManuallyDrop keeps this borrowed view from closing it.
    let view = std::mem::ManuallyDrop::new(unsafe { std::os::unix::net::UnixDatagram::from_raw_fd(sock.as_raw_fd()) });
    view.send_to_addr(msg, peer)
}

/// Writes every message of `batch` in order, then clears it. Written bytes are taken off the messages as they go, so
/// when the future is dropped midway, `batch` holds exactly what is still to be written.
async fn write_bytes<W: AsyncWriteExt + Unpin>(w: &mut W, batch: &mut Batch) -> io::Result<()> {
    for m in batch.iter_mut() {
        while !m.is_empty() {
            let n = w.write(m).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "peer stopped taking data"));
            }
            bytes::Buf::advance(m, n);
        }
    }
    batch.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_stopped_byte_stream_write_leaves_exactly_the_rest_in_the_batch() {
        let data: Vec<u8> = (0..=255u8).cycle().take(100).collect();
        let mut batch: Batch = data.chunks(30).map(Bytes::copy_from_slice).collect();
        // A 16-byte pipe nobody reads: the write stops after 16 bytes and is dropped there.
        let (mut w, mut r) = tokio::io::duplex(16);
        let stopped = tokio::time::timeout(std::time::Duration::from_millis(20), write_bytes(&mut w, &mut batch)).await;
        assert!(stopped.is_err(), "the write cannot have finished");
        let left: usize = batch.iter().map(Bytes::len).sum();
        assert_eq!(left, 100 - 16);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.map(|_| got)
        });
        write_bytes(&mut w, &mut batch).await.expect("resumed write");
        assert!(batch.is_empty());
        drop(w);
        assert_eq!(reader.await.expect("reader").expect("read"), data);
    }
}

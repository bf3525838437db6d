//! AF_PACKET: raw Ethernet frames on a named interface. One frame is one datagram, the whole frame (destination MAC,
//! source MAC, EtherType, payload) in both directions.
//!
//! Listener: one `SOCK_RAW` packet socket bound to the interface and to `ethertype` (every EtherType if none). Frames
//! the host itself sends are ignored (`PACKET_IGNORE_OUTGOING`, and a `PACKET_OUTGOING` check where the kernel lacks
//! it), so the agent never hears what it sends. Frames are demultiplexed by source MAC address into a session per
//! MAC, which ends after `idle_timeout` without traffic; what a session writes goes out on the interface as whole
//! frames. Cluster: a packet socket per session bound to the endpoint's interface (the endpoint address is the
//! interface name): it sends the session's messages as frames and hears the incoming frames of the cluster's
//! `ethertype` (every incoming frame if none).

use super::UpstreamError;
use crate::engine::Engine;
use crate::session::NewSession;
use crate::stream::{Batch, Reader, Writer};
use crate::sys::{BATCH, MAX_DATAGRAM};
use bytes::{Bytes, BytesMut};
use l7mp_api::{AfPacketListenerSpec, Listener};
use serde_json::json;
use socket2::{Domain, Socket, Type};
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Frames queued per session between the listener and the session.
const QUEUE_DEPTH: usize = 256;
/// An Ethernet header: destination MAC, source MAC, EtherType.
const ETH_HLEN: usize = 14;
/// `SOL_PACKET` options and packet types (linux/if_packet.h).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_OUTGOING: u8 = 4;

/// A packet socket bound to one interface.
pub struct PacketSocket {
    fd: AsyncFd<Socket>,
    interface: String,
}

/// The index of the interface `name`, or an error naming it.
fn if_index(name: &str) -> io::Result<libc::c_int> {
    let c = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no network interface named {name:?}"),
        ));
    }
    libc::c_int::try_from(index).map_err(|_| io::Error::other("interface index out of range"))
}

impl PacketSocket {
    /// Opens a raw packet socket on `interface` hearing frames of `ethertype` (all if `None`).
    pub fn open(interface: &str, ethertype: Option<u16>) -> io::Result<PacketSocket> {
        let ifindex = if_index(interface)?;
        let proto = ethertype.unwrap_or(libc::ETH_P_ALL as u16).to_be();
        // Protocol 0 hears nothing until the bind below names the protocol and the interface: a socket created
        // with ETH_P_ALL would queue frames of every interface in between.
        let sock = Socket::new(Domain::PACKET, Type::RAW, Some(0.into()))?;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a pointer to a live c_int and its size. Best effort: recv checks the packet type
        // too, for kernels older than 4.20.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is a valid sockaddr_ll and the length is its size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        sock.set_nonblocking(true)?;
        Ok(PacketSocket {
            fd: crate::sys::async_socket(sock)?,
            interface: interface.to_owned(),
        })
    }

    /// One incoming frame into `buf` without blocking: its length, or `None` for a frame to skip (sent by this
    /// host, or larger than `buf`).
    fn try_recv(&self, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<Option<usize>> {
        // SAFETY: an all-zero sockaddr_ll is valid; recvfrom writes at most `len` bytes into it and at most
        // `buf.len()` bytes into `buf`.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if from.sll_pkttype == PACKET_OUTGOING || n > buf.len() {
            return Ok(None);
        }
        Ok(Some(n))
    }

    /// Waits for incoming frames and appends up to a batch of them to `out`, each copied into `arena` at its size
    /// (frames land in a per-thread scratch buffer first, never held across an `.await`).
    pub async fn recv_batch(&self, arena: &mut BytesMut, out: &mut Batch) -> io::Result<()> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let r = SCRATCH.with(|cell| {
                let mut scratch = cell.borrow_mut();
                scratch.resize(MAX_DATAGRAM, 0);
                while out.len() < BATCH {
                    match self.try_recv(as_uninit(&mut scratch)) {
                        Ok(Some(n)) => {
                            arena.extend_from_slice(&scratch[..n]);
                            out.push(arena.split().freeze());
                        }
                        Ok(None) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            });
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            if !out.is_empty() {
                return Ok(());
            }
        }
    }

    /// Waits for one incoming frame (the listener's read).
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let raw = as_uninit(buf);
        loop {
            let mut guard = self.fd.readable().await?;
            loop {
                match self.try_recv(raw) {
                    Ok(Some(n)) => return Ok(n),
                    Ok(None) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Sends every message of `batch` as one frame on the interface (and empties it). A frame the interface refuses
    /// (shorter than an Ethernet header, longer than the MTU) or cannot take right now (down, out of buffers) is
    /// dropped, as a network may drop it.
    pub async fn send_batch(&self, batch: &mut Batch) -> io::Result<()> {
        for m in batch.drain(..) {
            loop {
                let sent = self.fd.async_io(Interest::WRITABLE, |s| {
                    // SAFETY: `m` is a live buffer of m.len() bytes; the socket is bound, so no address is needed.
                    let n = unsafe { libc::send(s.as_raw_fd(), m.as_ptr().cast(), m.len(), libc::MSG_DONTWAIT) };
                    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
                });
                match sent.await {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EMSGSIZE | libc::EINVAL | libc::ENETDOWN | libc::ENOBUFS | libc::ENXIO)
                        ) =>
                    {
                        crate::metrics::dropped(crate::metrics::DropReason::FrameRejected, 1);
                        tracing::debug!(interface = %self.interface, len = m.len(), "frame dropped: {e}");
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// A byte buffer seen as the uninitialised-byte slice a receive writes into.
fn as_uninit(buf: &mut [u8]) -> &mut [std::mem::MaybeUninit<u8>] {
    // SAFETY: u8 and MaybeUninit<u8> have the same layout; initialised bytes stay valid MaybeUninit.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), buf.len()) }
}

/// `aa:bb:cc:dd:ee:ff`.
fn mac(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// `0x88b5`, as the configuration writes EtherTypes.
pub fn ethertype_str(t: u16) -> String {
    format!("0x{t:04x}")
}

pub struct AfPacketBound {
    socket: Arc<PacketSocket>,
    spec: AfPacketListenerSpec,
}

impl AfPacketBound {
    pub fn bind(spec: &AfPacketListenerSpec) -> io::Result<AfPacketBound> {
        Ok(AfPacketBound {
            socket: Arc::new(PacketSocket::open(&spec.interface, spec.ethertype)?),
            spec: spec.clone(),
        })
    }

    pub async fn run(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        let mut peers: HashMap<[u8; 6], mpsc::Sender<Bytes>> = HashMap::new();
        let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<[u8; 6]>();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let n = tokio::select! {
                _ = cancel.cancelled() => break,
                Some(gone) = gone_rx.recv() => {
                    peers.remove(&gone);
                    continue;
                }
                r = self.socket.recv(&mut buf) => match r {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(listener = %listener.name, interface = %self.spec.interface, "receive failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let frame = &buf[..n];
            let Some((dst, src, ethertype)) = header(frame) else {
                continue;
            };
            let msg = Bytes::copy_from_slice(frame);
            if let Some(tx) = peers.get(&src) {
                if tx.try_send(msg).is_err() {
                    crate::metrics::dropped(crate::metrics::DropReason::QueueFull, 1);
                    tracing::debug!(listener = %listener.name, src = %mac(&src), "session queue full, frame dropped");
                }
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
            let _ = tx.try_send(msg);
            peers.insert(src, tx);
            let src_mac = mac(&src);
            let name = format!("AF_PACKET:{}:{src_mac}-{}", self.spec.interface, engine.next_id());
            let gone = gone_tx.clone();
            engine.spawn_session(NewSession {
                metadata: json!({
                    "name": name,
                    "listener": listener.name,
                    "AF_PACKET": {
                        "interface": self.spec.interface,
                        "src_mac": src_mac,
                        "dst_mac": mac(&dst),
                        "ethertype": ethertype_str(ethertype),
                    },
                    "labels": {},
                }),
                name,
                listener: listener.clone(),
                reader: Reader::Chan(rx),
                writer: Writer::Packet(self.socket.clone()),
                idle_timeout: self.spec.idle_timeout,
                on_end: Some(Box::new(move || {
                    let _ = gone.send(src);
                })),
            });
        }
    }
}

/// Destination MAC, source MAC and EtherType of a frame; `None` if it is shorter than an Ethernet header.
fn header(frame: &[u8]) -> Option<([u8; 6], [u8; 6], u16)> {
    let h = frame.get(..ETH_HLEN)?;
    let dst: [u8; 6] = h[0..6].try_into().ok()?;
    let src: [u8; 6] = h[6..12].try_into().ok()?;
    Some((dst, src, u16::from_be_bytes([h[12], h[13]])))
}

/// A packet socket on the interface `interface` for one session.
pub fn connect(interface: &str, ethertype: Option<u16>) -> Result<(Reader, Writer), UpstreamError> {
    let socket = Arc::new(PacketSocket::open(interface, ethertype).map_err(UpstreamError::Io)?);
    Ok((Reader::Packet(socket.clone()), Writer::Packet(socket)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_names() {
        let mut f = vec![0xffu8; 6];
        f.extend([2, 0, 0, 0, 0, 1, 0x88, 0xb5, 1, 2, 3]);
        let (dst, src, t) = header(&f).expect("header");
        assert_eq!(mac(&dst), "ff:ff:ff:ff:ff:ff");
        assert_eq!(mac(&src), "02:00:00:00:00:01");
        assert_eq!(ethertype_str(t), "0x88b5");
        assert!(header(&f[..13]).is_none());
    }
}

//! Thin, safe wrappers over the batch datagram syscalls (`recvmmsg`/`sendmmsg`) on connected sockets.
//!
//! Each call moves up to [`BATCH`] datagrams with one syscall. Received datagrams land in a per-thread scratch area
//! (never touched across an `.await`) and are copied out into the caller's arena, so the hot path allocates nothing
//! per packet and a session holds no large buffer of its own.

use bytes::{Bytes, BytesMut};
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Datagrams moved per syscall at most.
pub const BATCH: usize = 32;
/// The largest datagram we accept (the UDP maximum).
pub const MAX_DATAGRAM: usize = 65536;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Receives up to `max` datagrams from a connected datagram socket without blocking, appending each as one
/// [`Bytes`] (cut from `arena`) to `out`. Returns how many arrived; `WouldBlock` when none was waiting.
pub fn recv_batch(fd: RawFd, max: usize, arena: &mut BytesMut, out: &mut Vec<Bytes>) -> io::Result<usize> {
    recv_inner(fd, max, arena, out, None)
}

/// Like [`recv_batch`], for a UDP socket connected to `peer` that may still hold datagrams from other sources (a
/// server-mode session socket: see `protocol::udp`). Those go to `strays` with their source instead of `out`.
/// Returns how many were appended to `out`.
pub fn recv_batch_from(
    fd: RawFd,
    max: usize,
    arena: &mut BytesMut,
    out: &mut Vec<Bytes>,
    peer: SocketAddr,
    strays: &mut Vec<(Bytes, SocketAddr)>,
) -> io::Result<usize> {
    recv_inner(fd, max, arena, out, Some((peer, strays)))
}

fn recv_inner(
    fd: RawFd,
    max: usize,
    arena: &mut BytesMut,
    out: &mut Vec<Bytes>,
    mut check: Option<(SocketAddr, &mut Vec<(Bytes, SocketAddr)>)>,
) -> io::Result<usize> {
    let max = max.clamp(1, BATCH);
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        if scratch.len() < BATCH * MAX_DATAGRAM {
            // A zeroed allocation this large comes as fresh pages from the OS: only the bytes datagrams actually
            // touch become resident.
            *scratch = vec![0u8; BATCH * MAX_DATAGRAM];
        }
        let base = scratch.as_mut_ptr();
        // SAFETY: zeroed mmsghdr/iovec/sockaddr_storage are valid "empty" values; every pointer set below points
        // into `scratch` or `names`, which outlive the syscall, and each iovec covers a disjoint MAX_DATAGRAM-sized
        // slot.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        // Source addresses, only asked for when they are checked.
        let mut names: Option<[libc::sockaddr_storage; BATCH]> = check.is_some().then(|| unsafe { std::mem::zeroed() });
        for i in 0..max {
            iovs[i] = libc::iovec {
                iov_base: unsafe { base.add(i * MAX_DATAGRAM) }.cast(),
                iov_len: MAX_DATAGRAM,
            };
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            if let Some(names) = &mut names {
                hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
                hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            }
        }
        // SAFETY: `hdrs[..max]` are initialised as above; the kernel writes at most `iov_len` bytes per slot.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                max as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let total: usize = hdrs[..n].iter().map(|h| h.msg_len as usize).sum();
        arena.reserve(total);
        let mut kept = 0;
        for (i, h) in hdrs[..n].iter().enumerate() {
            let len = (h.msg_len as usize).min(MAX_DATAGRAM);
            arena.extend_from_slice(&scratch[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len]);
            let msg = arena.split().freeze();
            if let (Some((peer, strays)), Some(names)) = (&mut check, &names)
                && !is_from(&names[i], *peer)
                && let Some(from) = socket_addr(&names[i], h.msg_hdr.msg_namelen)
                && (from.ip().to_canonical(), from.port()) != (peer.ip().to_canonical(), peer.port())
            {
                strays.push((msg, from));
                continue;
            }
            out.push(msg);
            kept += 1;
        }
        Ok(kept)
    })
}

/// Whether `name` is `peer` in the same representation (the common case, checked without conversions).
fn is_from(name: &libc::sockaddr_storage, peer: SocketAddr) -> bool {
    match peer {
        SocketAddr::V4(p) if i32::from(name.ss_family) == libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            u16::from_be(sin.sin_port) == p.port() && sin.sin_addr.s_addr == u32::from(*p.ip()).to_be()
        }
        SocketAddr::V6(p) if i32::from(name.ss_family) == libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            u16::from_be(sin6.sin6_port) == p.port() && sin6.sin6_addr.s6_addr == p.ip().octets()
        }
        _ => false,
    }
}

/// The IP socket address the kernel wrote into `name` (`None` for another family).
fn socket_addr(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: SockAddrStorage is a sockaddr_storage; the kernel initialised `len` bytes of `name` for its family.
    unsafe {
        *storage.view_as::<libc::sockaddr_storage>() = *name;
        socket2::SockAddr::new(storage, len)
    }
    .as_socket()
}

/// Whether UDP GSO (`UDP_SEGMENT`) may be used; cleared the first time the kernel refuses it.
static GSO_OK: AtomicBool = AtomicBool::new(true);
/// Datagrams at most this large are sent as GSO segments (below any Ethernet MTU, so the kernel never refuses).
const GSO_MAX_SEGMENT: usize = 1400;
/// Segments per GSO send at most (the kernel's UDP_MAX_SEGMENTS is 64 or more).
const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes per GSO send at most (the UDP payload limit).
const GSO_MAX_BYTES: usize = 65000;

/// Sends the datagrams of `msgs` on a connected datagram socket without blocking. Returns how many were sent (at
/// least one), or `WouldBlock`.
///
/// With `gso`, runs of equal-sized datagrams (the last of a run may be shorter) go out as one UDP GSO send each
/// (`UDP_SEGMENT`): the kernel builds and routes one buffer and cuts it into datagrams at the end, which costs a
/// fraction of sending each datagram alone. The receiver still gets separate datagrams, boundaries intact.
pub fn send_batch(fd: RawFd, msgs: &[Bytes], gso: bool) -> io::Result<usize> {
    if msgs.is_empty() {
        return Ok(0);
    }
    if gso && GSO_OK.load(Ordering::Relaxed) {
        match send_gso(fd, msgs) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT)) => {
                tracing::debug!("UDP GSO refused by the kernel ({e}); sending datagrams one by one from now on");
                GSO_OK.store(false, Ordering::Relaxed);
            }
            other => return other,
        }
    }
    let n = msgs.len().min(BATCH);
    // SAFETY: zeroed headers are valid; iovecs point into `msgs`, which outlive the syscall and are only read.
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovs[i] = libc::iovec {
            iov_base: msgs[i].as_ptr() as *mut libc::c_void,
            iov_len: msgs[i].len(),
        };
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `hdrs[..n]` are initialised; the kernel only reads the buffers.
    let sent = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Control message space for one `UDP_SEGMENT` (u16) option, 8-byte aligned.
const CMSG_BUF: usize = 32;

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF]);

/// One sendmmsg call in which every header carries a run of equal-sized datagrams as a GSO send (or one datagram
/// alone). Returns how many datagrams of `msgs` were sent.
fn send_gso(fd: RawFd, msgs: &[Bytes]) -> io::Result<usize> {
    // SAFETY: zeroed iovecs, headers and control buffers are valid empty values.
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut cmsgs: [CmsgBuf; BATCH] = std::array::from_fn(|_| CmsgBuf([0; CMSG_BUF]));
    // How many datagrams each header carries.
    let mut counts = [0usize; BATCH];
    let (mut h, mut i) = (0usize, 0usize);
    let n = msgs.len().min(BATCH);
    while i < n && h < BATCH {
        let seg = msgs[i].len();
        let mut j = i + 1;
        let mut total = seg;
        if seg > 0 && seg <= GSO_MAX_SEGMENT {
            while j < n && j - i < GSO_MAX_SEGMENTS && total + msgs[j].len() <= GSO_MAX_BYTES {
                let len = msgs[j].len();
                if len > seg || len == 0 {
                    break;
                }
                total += len;
                j += 1;
                if len < seg {
                    break; // a shorter datagram may only end a run
                }
            }
        }
        for (k, m) in msgs[i..j].iter().enumerate() {
            iovs[i + k] = libc::iovec {
                iov_base: m.as_ptr() as *mut libc::c_void,
                iov_len: m.len(),
            };
        }
        hdrs[h].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[h].msg_hdr.msg_iovlen = j - i;
        if j - i > 1 {
            let buf = &mut cmsgs[h];
            let mh = &mut hdrs[h].msg_hdr;
            mh.msg_control = buf.0.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE/LEN are pure arithmetic.
            mh.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
            // SAFETY: msg_control points at a buffer large enough for one u16 option, 8-byte aligned.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(mh);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
            }
        }
        counts[h] = j - i;
        h += 1;
        i = j;
    }
    // SAFETY: `hdrs[..h]` point into `iovs` and `cmsgs`, which live until after the call; buffers are only read.
    let sent = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), h as libc::c_uint, libc::MSG_DONTWAIT) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(counts[..sent as usize].iter().sum())
}

/// Raises the soft open-file limit to the hard limit: every UDP session owns a socket.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// Registers a non-blocking socket with the runtime's reactor.
pub fn async_socket(sock: socket2::Socket) -> io::Result<tokio::io::unix::AsyncFd<socket2::Socket>> {
    // SAFETY: a socket2::Socket owns its descriptor: it stays open, and the same, until the Socket is dropped,
    // which only the AsyncFd can do (or `into_inner` hands it back).
    Ok(unsafe { tokio::io::unix::AsyncFd::register(sock) }?)
}

/// The host name (gethostname(2)), the default node id at the control plane.
pub fn hostname() -> std::io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_round_trip_keeps_boundaries() {
        round_trip(false);
    }

    #[test]
    fn gso_batches_keep_boundaries() {
        round_trip(true);
    }

    #[test]
    fn recv_batch_from_sets_other_sources_apart() {
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let other = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = b.local_addr().expect("addr");
        peer.send_to(b"mine 1", to).expect("send");
        other.send_to(b"not mine", to).expect("send");
        peer.send_to(b"mine 2", to).expect("send");
        let (mut arena, mut out, mut strays) = (BytesMut::new(), Vec::new(), Vec::new());
        let peer_addr = peer.local_addr().expect("addr");
        while out.len() + strays.len() < 3 {
            match recv_batch_from(b.as_raw_fd(), BATCH, &mut arena, &mut out, peer_addr, &mut strays) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(out, [Bytes::from_static(b"mine 1"), Bytes::from_static(b"mine 2")]);
        assert_eq!(
            strays,
            [(Bytes::from_static(b"not mine"), other.local_addr().expect("addr"))]
        );
    }

    fn round_trip(gso: bool) {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        a.connect(b.local_addr().expect("addr")).expect("connect");
        b.connect(a.local_addr().expect("addr")).expect("connect");
        // Runs of equal sizes (GSO candidates), a shorter tail, big ones and single ones.
        let sizes = [
            64, 64, 64, 64, 10, 64, 64, 3000, 1, 1, 1, 500, 500, 499, 500, 9000, 7, 7, 7, 7, 7, 7, 7, 7,
        ];
        let msgs: Vec<Bytes> = (0..40)
            .map(|i| Bytes::from(vec![i as u8; sizes[i % sizes.len()] + (i / sizes.len())]))
            .collect();
        let mut off = 0;
        while off < msgs.len() {
            off += send_batch(a.as_raw_fd(), &msgs[off..], gso).expect("send");
        }
        let mut arena = BytesMut::new();
        let mut got = Vec::new();
        while got.len() < msgs.len() {
            match recv_batch(b.as_raw_fd(), BATCH, &mut arena, &mut got) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, msgs);
        if gso {
            assert!(
                GSO_OK.load(Ordering::Relaxed),
                "this kernel refused UDP GSO: the test did not exercise it"
            );
        }
    }
}

//! TCP splices: the `splice_socks` SOCKHASH and `splice_peers` map of `bpf/tcp_splice.c`.
//!
//! Splicing two established sockets puts both into the SOCKHASH (keyed by socket cookie) and records each one's
//! peer; from then on the stream verdict program sends whatever arrives on one socket out of the other. Data that was
//! already queued on a socket before the splice goes first (the splice runs the receive queues through the program);
//! EOF still reaches the owner. Redirected data reaches the peer's send queue asynchronously (a kernel work queue):
//! [`crate::Kernel::tcp_unsent`] tells when it is all there, which is when the owner may shut the peer down.

use std::{io, os::fd::AsRawFd, os::fd::BorrowedFd};

/// Two sockets spliced by [`crate::Kernel::splice_tcp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpliceHandle {
    pub(crate) a: u64,
    pub(crate) b: u64,
    /// What `a` and `b` had queued for sending over their lives ([`queued_total`]) when they were spliced.
    pub(crate) base_a: u64,
    pub(crate) base_b: u64,
}

impl SpliceHandle {
    /// The socket cookies of `a` and `b` (as `bpftool map dump name splice_peers` shows them).
    pub fn cookies(&self) -> (u64, u64) {
        (self.a, self.b)
    }
}

/// Bytes carried by a splice, per direction, as counted by the program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceStats {
    /// Bytes that arrived on `a` and left through `b`.
    pub a_to_b_bytes: u64,
    /// Bytes that arrived on `b` and left through `a`.
    pub b_to_a_bytes: u64,
    /// sk_buffs redirected a → b.
    pub a_to_b_segments: u64,
    /// sk_buffs redirected b → a.
    pub b_to_a_segments: u64,
    /// sk_buffs dropped because the peer socket had left the map (both directions).
    pub dropped: u64,
}

/// `struct peer` of `tcp_splice.c` (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) peer_cookie: u64,
    pub(crate) bytes: u64,
    pub(crate) segments: u64,
    pub(crate) dropped: u64,
}

// SAFETY: repr(C) struct of u64s; every bit pattern is valid.
unsafe impl aya::Pod for Peer {}

/// Plain-data socket option values that any bit pattern (zero included) makes valid.
trait SockOpt: Copy {}
impl SockOpt for u64 {}
impl SockOpt for libc::c_int {}
impl SockOpt for libc::tcp_info {}

/// `getsockopt(fd, level, name)` into a `T`.
fn getsockopt<T: SockOpt>(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    // SAFETY: `T` is plain data (SockOpt) for which zero is a valid value.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the fd is valid for the borrow; `value`/`len` are valid out-pointers of the right size.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&raw mut value).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// The socket cookie (`SO_COOKIE`), the key the programs use for a socket.
pub(crate) fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    getsockopt(fd, libc::SOL_SOCKET, libc::SO_COOKIE)
}

/// Every byte ever queued for sending on a TCP socket (not counting SYN/FIN): the bytes acknowledged by the peer
/// (`tcpi_bytes_acked`) plus the send queue (`SIOCOUTQ`: sent but not acknowledged, and not yet sent). The kernel
/// moves redirected data into the peer socket's send queue from a work queue, later than the verdict counted it;
/// comparing the two tells when it is all there.
pub(crate) fn queued_total(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let info: libc::tcp_info = getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    let mut outq: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut outq) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_bytes_acked + u64::try_from(outq).unwrap_or(0))
}

/// Runs what a socket already has in its receive queue through its (new) stream verdict program. Data that arrived
/// before the socket entered the SOCKHASH waits in the queue until the next arrival runs the whole queue through the
/// program; setting `SO_RCVLOWAT` (to its current value) makes TCP signal "data ready" now, which does the same.
pub(crate) fn run_receive_queue(fd: BorrowedFd<'_>) -> io::Result<()> {
    let lowat: libc::c_int = getsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT)?;
    // SAFETY: the fd is valid for the borrow; SO_RCVLOWAT takes one int.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const lowat).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the fd is a TCP stream socket (`SO_PROTOCOL`).
pub(crate) fn is_tcp(fd: BorrowedFd<'_>) -> bool {
    getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).is_ok_and(|p| p == libc::IPPROTO_TCP)
}

/// Whether the fd is a TCP socket in the ESTABLISHED state (`TCP_INFO`). The kernel also accepts listening sockets
/// into a SOCKHASH, which would make no sense for a splice.
pub(crate) fn is_established(fd: BorrowedFd<'_>) -> bool {
    const TCP_ESTABLISHED: u8 = 1;
    getsockopt::<libc::tcp_info>(fd, libc::IPPROTO_TCP, libc::TCP_INFO).is_ok_and(|i| i.tcpi_state == TCP_ESTABLISHED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_layout_matches_the_c_struct() {
        assert_eq!(size_of::<Peer>(), 32);
    }

    #[test]
    fn cookies_are_distinct_and_udp_is_not_tcp() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        use std::os::fd::AsFd;
        let (ca, cb) = (socket_cookie(a.as_fd()), socket_cookie(b.as_fd()));
        assert!(matches!((ca, cb), (Ok(x), Ok(y)) if x != y));
        assert!(!is_tcp(a.as_fd()));
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert!(is_tcp(l.as_fd()));
    }
}

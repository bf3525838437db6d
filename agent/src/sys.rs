//! Thin, safe wrappers over the batch datagram syscalls (`recvmmsg`/`sendmmsg`) on connected sockets.
//!
//! Each call moves up to [`BATCH`] datagrams with one syscall. Received datagrams land in a per-thread scratch area
//! (never touched across an `.await`) and are copied out into the caller's arena, so the hot path allocates nothing
//! per packet and a session holds no large buffer of its own.

use bytes::{Bytes, BytesMut};
use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;

/// Datagrams moved per syscall at most.
pub const BATCH: usize = 32;
/// The largest datagram we accept (the UDP maximum).
pub const MAX_DATAGRAM: usize = 65536;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Receives up to `max` datagrams from a connected datagram socket without blocking, appending each as one
/// [`Bytes`] (cut from `arena`) to `out`. Returns how many arrived; `WouldBlock` when none was waiting.
pub fn recv_batch(
    fd: RawFd,
    max: usize,
    arena: &mut BytesMut,
    out: &mut Vec<Bytes>,
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
        // SAFETY: zeroed mmsghdr/iovec are valid "empty" values; every pointer set below points into `scratch`,
        // which outlives the syscall, and each iovec covers a disjoint MAX_DATAGRAM-sized slot.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..max {
            iovs[i] = libc::iovec {
                iov_base: unsafe { base.add(i * MAX_DATAGRAM) }.cast(),
                iov_len: MAX_DATAGRAM,
            };
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
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
        for (i, h) in hdrs[..n].iter().enumerate() {
            let len = (h.msg_len as usize).min(MAX_DATAGRAM);
            arena.extend_from_slice(&scratch[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len]);
            out.push(arena.split().freeze());
        }
        Ok(n)
    })
}

/// Sends the datagrams of `msgs` on a connected datagram socket without blocking. Returns how many were sent (at
/// least one), or `WouldBlock`.
pub fn send_batch(fd: RawFd, msgs: &[Bytes]) -> io::Result<usize> {
    let n = msgs.len().min(BATCH);
    if n == 0 {
        return Ok(0);
    }
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
    let sent =
        unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_round_trip_keeps_boundaries() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        a.connect(b.local_addr().expect("addr")).expect("connect");
        b.connect(a.local_addr().expect("addr")).expect("connect");
        let msgs: Vec<Bytes> = (0..40).map(|i| Bytes::from(vec![i as u8; i + 1])).collect();
        let mut off = 0;
        while off < msgs.len() {
            off += send_batch(a.as_raw_fd(), &msgs[off..]).expect("send");
        }
        let mut arena = BytesMut::new();
        let mut got = Vec::new();
        while got.len() < 40 {
            match recv_batch(b.as_raw_fd(), BATCH, &mut arena, &mut got) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, msgs);
    }
}

//! Zero-copy relaying between byte-stream sockets with `splice(2)`: socket → pipe → socket, the bytes never enter
//! user space. The pipeline uses it for a pump between two TCP/UNIX stream sockets with no transform in between.

use crate::stream::{Reader, Writer};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// Pipe capacity asked for (the kernel may grant less): bigger pipes move more per syscall.
const PIPE_SIZE: libc::c_int = 1 << 20;
/// Bytes asked for per splice call.
const CHUNK: usize = 1 << 20;

/// A stream socket the pump can splice from or to.
#[derive(Clone, Copy)]
pub enum Sock<'a> {
    Tcp(&'a TcpStream),
    Unix(&'a UnixStream),
}

impl Sock<'_> {
    pub fn of_reader(r: &Reader) -> Option<Sock<'_>> {
        match r {
            Reader::Tcp(h) => Some(Sock::Tcp(h.as_ref())),
            Reader::Unix(h) => Some(Sock::Unix(h.as_ref())),
            _ => None,
        }
    }

    pub fn of_writer(w: &Writer) -> Option<Sock<'_>> {
        match w {
            Writer::Tcp(h) => Some(Sock::Tcp(h.as_ref())),
            Writer::Unix(h) => Some(Sock::Unix(h.as_ref())),
            _ => None,
        }
    }

    /// The socket's descriptor, borrowed.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Sock::Tcp(s) => s.as_fd(),
            Sock::Unix(s) => s.as_fd(),
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
        }
    }

    async fn ready(&self, interest: Interest) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.ready(interest).await.map(drop),
            Sock::Unix(s) => s.ready(interest).await.map(drop),
        }
    }

    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        match self {
            Sock::Tcp(s) => s.try_io(interest, f),
            Sock::Unix(s) => s.try_io(interest, f),
        }
    }
}

/// A non-blocking pipe used as the splice buffer.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes sitting in the pipe.
    pending: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on our own pipe; failure only leaves the default size.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(Pipe {
            read,
            write,
            pending: 0,
        })
    }

    /// Moves what `from` has into the pipe. `Ok(0)` is end of stream.
    pub async fn fill(&mut self, from: Sock<'_>) -> io::Result<usize> {
        loop {
            from.ready(Interest::READABLE).await?;
            let (src, dst) = (from.fd(), self.write.as_raw_fd());
            match from.try_io(Interest::READABLE, || splice(src, dst, CHUNK)) {
                Ok(n) => {
                    self.pending += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves everything in the pipe out to `to`.
    pub async fn drain(&mut self, to: Sock<'_>) -> io::Result<()> {
        while self.pending > 0 {
            to.ready(Interest::WRITABLE).await?;
            let (src, dst) = (self.read.as_raw_fd(), to.fd());
            match to.try_io(Interest::WRITABLE, || splice(src, dst, self.pending)) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "peer stopped taking data"));
                }
                Ok(n) => self.pending -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call; null offsets mean "current position".
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

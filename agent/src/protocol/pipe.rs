//! PIPE: named FIFOs, a byte stream. A FIFO pair is the request FIFO `<path>`, which carries bytes towards the side
//! that serves, and the reply FIFO `<path>.reply`, which carries them back.
//!
//! Listener: creates both FIFOs if missing (mode 0600) and removes the ones it created when it stops. It serves one
//! writer of the request FIFO at a time: a session starts with the first bytes a writer sends and its uplink ends
//! when no writer has the FIFO open any more; the next writer gets the next session once that one has ended. The
//! listener holds a read end of the request FIFO all along, so writers can open it at any time and what they write
//! between sessions waits in the pipe. The reply FIFO is opened for writing when the session first answers (or ends),
//! waiting for the peer to open it for reading, so a peer may open it after sending its request.
//!
//! Cluster: the endpoint address is the request FIFO of a server; per session the agent opens `<address>.reply` for
//! reading, then `<address>` for writing (waiting, within the connect timeout, for the server to have it open).
//! A FIFO pair carries one conversation at a time: sessions sharing it interleave their bytes.

use super::UpstreamError;
use crate::engine::Engine;
use crate::session::NewSession;
use crate::stream::{Batch, Reader, Writer};
use bytes::{Bytes, BytesMut};
use l7mp_api::{Listener, PipeListenerSpec, pipe_reply_path};
use serde_json::json;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long ending a session waits for the peer to open the reply FIFO, so that it sees the end of the reply.
const REPLY_EOF_GRACE: Duration = Duration::from_secs(2);
/// The longest pause between attempts to open a FIFO that nobody reads yet.
const MAX_OPEN_BACKOFF: Duration = Duration::from_millis(100);
/// Bytes asked for by the first read of a session.
const FIRST_READ: usize = 64 * 1024;

/// Creates a FIFO at `path` unless one is there. Returns whether it was created; anything else at the path is an
/// error.
fn ensure_fifo(path: &Path) -> io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_fifo() => Ok(false),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a FIFO", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let c = CString::new(path.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path contains a NUL byte"))?;
            // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", path.display()),
                ));
            }
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// A listener's FIFO pair. Removes the FIFOs it created when dropped (the listener stopped, or the configuration
/// that bound it was not put in force).
pub struct PipeBound {
    path: PathBuf,
    reply: PathBuf,
    created: Vec<PathBuf>,
    /// A read end held while the listener lives: writers can always open the request FIFO, and bytes written
    /// between two sessions stay in the pipe for the next one.
    _keeper: std::fs::File,
}

impl PipeBound {
    pub fn bind(spec: &PipeListenerSpec) -> io::Result<PipeBound> {
        let path = PathBuf::from(&spec.filename);
        let reply = PathBuf::from(pipe_reply_path(&spec.filename));
        // Built field by field so that a failure half way removes what was already created (via Drop).
        let mut created = Vec::new();
        let mut make = |p: &Path| -> io::Result<()> {
            if ensure_fifo(p)? {
                created.push(p.to_path_buf());
            }
            Ok(())
        };
        let result = make(&path).and_then(|()| make(&reply));
        let keeper = result.and_then(|()| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&path)
        });
        match keeper {
            Ok(keeper) => Ok(PipeBound {
                path,
                reply,
                created,
                _keeper: keeper,
            }),
            Err(e) => {
                remove_all(&created);
                Err(e)
            }
        }
    }

    pub async fn run(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        let filename = self.path.to_string_lossy().into_owned();
        let reply_filename = self.reply.to_string_lossy().into_owned();
        loop {
            // A fresh read end per session: it reports end of stream only once a writer that came after it is gone.
            let rx = match pipe::OpenOptions::new().open_receiver(&self.path) {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!(listener = %listener.name, path = %filename, "cannot open the FIFO: {e}");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let first = tokio::select! {
                _ = cancel.cancelled() => break,
                r = first_chunk(&rx) => r,
            };
            let first = match first {
                Ok(Some(b)) => b,
                // A writer came and went without a byte: no session.
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(listener = %listener.name, path = %filename, "cannot read the FIFO: {e}");
                    continue;
                }
            };
            let name = format!("PIPE:{}-{}", listener.name, engine.next_id());
            let (done_tx, done_rx) = oneshot::channel::<()>();
            engine.spawn_session(NewSession {
                metadata: json!({
                    "name": name,
                    "listener": listener.name,
                    "PIPE": { "filename": filename, "reply_filename": reply_filename },
                    "labels": {},
                }),
                name,
                listener: listener.clone(),
                reader: Reader::Prefixed(Box::new((vec![first], Reader::Pipe(rx)))),
                writer: Writer::Pipe(Box::new(PipeWriter::lazy(self.reply.clone()))),
                idle_timeout: None,
                on_end: Some(Box::new(move || {
                    let _ = done_tx.send(());
                })),
            });
            // One session at a time: a FIFO cannot tell two writers' bytes apart.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = done_rx => {}
            }
        }
    }
}

impl Drop for PipeBound {
    fn drop(&mut self) {
        remove_all(&self.created);
    }
}

fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        if let Err(e) = std::fs::remove_file(p) {
            tracing::warn!(path = %p.display(), "cannot remove the FIFO: {e}");
        }
    }
}

/// Waits for the first bytes of a writer; `None` when a writer closed without sending any.
async fn first_chunk(rx: &pipe::Receiver) -> io::Result<Option<Bytes>> {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        rx.readable().await?;
        match rx.try_read_buf(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(buf.freeze())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Opens `path` for writing, waiting for a reader: a FIFO cannot be opened for writing without blocking while
/// nobody has it open for reading (ENXIO), so the attempt is repeated with a growing pause.
async fn open_sender(path: &Path) -> io::Result<pipe::Sender> {
    let mut pause = Duration::from_millis(2);
    loop {
        match pipe::OpenOptions::new().open_sender(path) {
            Ok(tx) => return Ok(tx),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_OPEN_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The writing end of a FIFO, opened when first needed.
pub struct PipeWriter {
    path: PathBuf,
    tx: Option<pipe::Sender>,
    /// Shut down: nothing more may be written.
    closed: bool,
}

impl PipeWriter {
    /// A writer that opens `path` on its first write (or when it is shut down).
    pub fn lazy(path: PathBuf) -> PipeWriter {
        PipeWriter {
            path,
            tx: None,
            closed: false,
        }
    }

    fn opened(path: PathBuf, tx: pipe::Sender) -> PipeWriter {
        PipeWriter {
            path,
            tx: Some(tx),
            closed: false,
        }
    }

    pub async fn write(&mut self, batch: &mut Batch) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "FIFO writer shut down"));
        }
        let tx = match &mut self.tx {
            Some(tx) => tx,
            None => self.tx.insert(open_sender(&self.path).await?),
        };
        for m in batch.drain(..) {
            tx.write_all(&m).await?;
        }
        Ok(())
    }

    /// A writer that never opened its FIFO must open it to close it: only then does a reader waiting on the FIFO
    /// see the end of stream.
    pub fn needs_graceful_close(&self) -> bool {
        self.tx.is_none() && !self.closed
    }

    /// Closes the FIFO (the reader sees end of stream once no other writer has it open). Returns whether a reader
    /// could be told.
    pub async fn shutdown(&mut self) -> bool {
        if self.closed {
            return false;
        }
        self.closed = true;
        if self.tx.take().is_some() {
            return true;
        }
        matches!(
            tokio::time::timeout(REPLY_EOF_GRACE, open_sender(&self.path)).await,
            Ok(Ok(_))
        )
    }
}

impl Drop for PipeWriter {
    /// A session that ends without a graceful close (an error, a datagram peer that cannot carry the end) never
    /// opened its reply FIFO: a peer already waiting to read it is released with end of file. One non-blocking
    /// attempt; nobody waiting means nobody to tell.
    fn drop(&mut self) {
        if self.tx.is_none() && !self.closed {
            let _ = pipe::OpenOptions::new().open_sender(&self.path);
        }
    }
}

/// Opens a server's FIFO pair: the reply FIFO `<path>.reply` for reading first (so that no reply can be missed),
/// then the request FIFO `path` for writing, waiting up to `timeout` for the server to have it open for reading.
pub async fn connect(path: &str, timeout: Duration) -> Result<(Reader, Writer), UpstreamError> {
    let reply = pipe_reply_path(path);
    let rx = pipe::OpenOptions::new()
        .open_receiver(&reply)
        .map_err(|e| UpstreamError::Io(io::Error::new(e.kind(), format!("reply FIFO {reply:?}: {e}"))))?;
    let request = PathBuf::from(path);
    let tx = match tokio::time::timeout(timeout, open_sender(&request)).await {
        Ok(r) => r.map_err(UpstreamError::Io)?,
        Err(_) => {
            return Err(UpstreamError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "nobody has the FIFO open for reading",
            )));
        }
    };
    Ok((
        Reader::Pipe(rx),
        Writer::Pipe(Box::new(PipeWriter::opened(request, tx))),
    ))
}

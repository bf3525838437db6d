//! UnixDomainSocket (stream): a listener on a socket file, which it removes when it stops, and a cluster whose
//! endpoint address is the socket path.

use super::UpstreamError;
use crate::engine::Engine;
use crate::session::NewSession;
use crate::stream::{Reader, Writer};
use l7mp_api::{Listener, UnixListenerSpec};
use serde_json::json;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

pub struct UnixBound {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixBound {
    /// Binds the socket file. A stale socket file (nobody listening on it) is replaced; a live one is an error.
    pub fn bind(spec: &UnixListenerSpec) -> io::Result<UnixBound> {
        let path = PathBuf::from(&spec.filename);
        clear_stale_socket(&path, false)?;
        Ok(UnixBound {
            listener: UnixListener::bind(&path)?,
            path,
        })
    }

    pub async fn run(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        let filename = self.path.to_string_lossy().into_owned();
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.listener.accept() => r,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(listener = %listener.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let name = format!("UNIX:{}-{}", listener.name, engine.next_id());
            let metadata = json!({
                "name": name,
                "listener": listener.name,
                "UNIX": { "filename": filename },
                "labels": {},
            });
            let (r, w) = stream.into_split();
            engine.spawn_session(NewSession {
                name,
                listener: listener.clone(),
                metadata,
                reader: Reader::Unix(r),
                writer: Writer::Unix(w),
                idle_timeout: None,
                on_end: None,
            });
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(listener = %listener.name, path = %filename, "cannot remove socket file: {e}");
        }
    }
}

/// Makes room for a new socket file at `path`: a stale socket file (nobody bound to it) is removed; anything else
/// there, or a socket in use, is an error.
pub fn clear_stale_socket(path: &Path, dgram: bool) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    let live = if dgram {
        std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(path))
            .is_ok()
    } else {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    };
    if live {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on this socket",
        ));
    }
    std::fs::remove_file(path)
}

/// Connects to the socket file at `path`.
pub async fn connect(path: &str) -> Result<(Reader, Writer), UpstreamError> {
    let stream = UnixStream::connect(path).await.map_err(UpstreamError::Io)?;
    let (r, w) = stream.into_split();
    Ok((Reader::Unix(r), Writer::Unix(w)))
}

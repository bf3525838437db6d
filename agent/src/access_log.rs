//! The access log: one JSON line per session, written when the session ends.
//!
//! A line looks like this (one line in the file; keys in this order, `null` where unknown):
//!
//! ```json
//! {"time":"2026-11-25T21:50:01.250Z","session":"TCP:127.0.0.1:40612-127.0.0.1:9002-7","listener":"tcp-in",
//!  "protocol":"TCP","peer":"127.0.0.1:40612","route":"tcp-in-Route-0","cluster":"backend",
//!  "endpoint":"backend-EndPoint-0","status":"ended","reason":"finished","duration":0.0312,
//!  "up_bytes":1000,"up_msgs":1,"down_bytes":1000,"down_msgs":1}
//! ```
//!
//! `time` is when the session ended (RFC 3339, UTC, milliseconds); `duration` the seconds since it was emitted;
//! `up_*` count what the peer sent, `down_*` what it was sent. `status` is `ended` (`reason`: `finished`, `idle
//! timeout`, `cancelled`) or `failed` (`reason`: the error).
//!
//! Sessions never wait for the disk: a line goes into a bounded queue ([`QUEUE`] lines) that a dedicated thread
//! writes out through a buffer, flushed whenever the queue is empty and at shutdown. When the queue is full the line
//! is dropped and counted ([`AccessLog::dropped`]); the writer thread logs a warning with the count.

use crate::pipeline::{EndReason, Stats};
use crate::session::{NewSession, SessionError, SessionInfo};
use l7mp_api::time::rfc3339;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Lines that may wait for the writer before new ones are dropped.
pub const QUEUE: usize = 16 * 1024;

/// Why the access log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// `reason` is the OS error without its number (`Permission denied`).
    #[error("cannot open access log {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error("cannot start the access log writer: {0}")]
    Thread(std::io::Error),
}

enum Msg {
    Line(String),
    Shutdown,
}

/// The access log writer. Shared by the engine (through `EngineOptions::access_log`) and the sessions.
pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    closed: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    dest: String,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("dest", &self.dest)
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl AccessLog {
    /// Opens `path` for appending (creating it), or standard output for `-`, and starts the writer thread.
    pub fn open(path: &str) -> Result<Arc<AccessLog>, AccessLogError> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(Path::new(path))
                .map_err(|e| AccessLogError::Open {
                    path: PathBuf::from(path),
                    reason: crate::logging::os_reason(&e),
                })?;
            Box::new(file)
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        let dest = if path == "-" {
            "stdout".to_owned()
        } else {
            path.to_owned()
        };
        let name = dest.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, out, d, name))
            .map_err(AccessLogError::Thread)?;
        Ok(Arc::new(AccessLog {
            tx,
            dropped,
            closed: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
            dest,
        }))
    }

    /// Lines dropped so far because the writer was behind (or the log was shut down).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Notes what is known of a session when it is emitted; [`Started::finish`] writes its line.
    pub fn start(self: &Arc<Self>, s: &NewSession) -> Started {
        Started {
            log: self.clone(),
            at: Instant::now(),
            protocol: s.listener.spec.protocol(),
            peer: peer(&s.metadata),
        }
    }

    /// Queues a line without waiting; drops and counts it when the queue is full.
    pub fn write_line(&self, line: String) {
        if self.closed.load(Relaxed) {
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Writes out every queued line, flushes and stops the writer thread. Lines queued later are dropped. Blocks
    /// (call it once the sessions are gone).
    pub fn shutdown(&self) {
        if self.closed.swap(true, Relaxed) {
            return;
        }
        let _ = self.tx.send(Msg::Shutdown);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// A session being logged: made by [`AccessLog::start`] when it is emitted, consumed when it ends.
pub struct Started {
    log: Arc<AccessLog>,
    at: Instant,
    protocol: &'static str,
    peer: Option<String>,
}

impl Started {
    /// Writes the session's line.
    pub fn finish(self, info: &SessionInfo, result: &Result<EndReason, SessionError>) {
        let (status, reason) = outcome(result);
        let (cluster, endpoint) = info.destination();
        let line = line(
            &Record {
                session: &info.name,
                listener: &info.listener,
                protocol: self.protocol,
                peer: self.peer.as_deref(),
                route: info.route().as_deref(),
                cluster: cluster.as_deref(),
                endpoint: endpoint.as_deref(),
                status,
                reason: &reason,
                duration: self.at.elapsed(),
                stats: &info.stats,
            },
            SystemTime::now(),
        );
        self.log.write_line(line);
    }
}

/// What one access log line says.
struct Record<'a> {
    session: &'a str,
    listener: &'a str,
    protocol: &'a str,
    peer: Option<&'a str>,
    route: Option<&'a str>,
    cluster: Option<&'a str>,
    endpoint: Option<&'a str>,
    status: &'static str,
    reason: &'a str,
    duration: Duration,
    stats: &'a Stats,
}

fn line(r: &Record<'_>, now: SystemTime) -> String {
    let v = json!({
        "time": rfc3339(now),
        "session": r.session,
        "listener": r.listener,
        "protocol": r.protocol,
        "peer": r.peer,
        "route": r.route,
        "cluster": r.cluster,
        "endpoint": r.endpoint,
        "status": r.status,
        "reason": r.reason,
        "duration": (r.duration.as_secs_f64() * 1e6).round() / 1e6,
        "up_bytes": r.stats.up_bytes.load(Relaxed),
        "up_msgs": r.stats.up_msgs.load(Relaxed),
        "down_bytes": r.stats.down_bytes.load(Relaxed),
        "down_msgs": r.stats.down_msgs.load(Relaxed),
    });
    v.to_string()
}

fn outcome(result: &Result<EndReason, SessionError>) -> (&'static str, String) {
    match result {
        Ok(EndReason::Finished) => ("ended", "finished".into()),
        Ok(EndReason::Idle(d)) => ("ended", format!("idle timeout ({}s)", d.as_secs_f64())),
        Ok(EndReason::Cancelled) => ("ended", "cancelled".into()),
        Ok(EndReason::Failed(e)) => ("failed", e.to_string()),
        Ok(EndReason::StageLost(which, e)) => (
            "failed",
            match e {
                Some(e) => format!("{which:?} stage failed: {e}"),
                None => format!("{which:?} stage closed"),
            },
        ),
        Err(e) => ("failed", e.to_string()),
    }
}

/// The peer's address from a listener's session metadata: `addr:port` (`[addr]:port` for IPv6) for IP transports,
/// the peer's path (or the socket file) for UNIX sockets, the FIFO for PIPE, the source MAC for AF_PACKET.
pub fn peer(metadata: &Value) -> Option<String> {
    if let Some(ip) = metadata
        .get("IP")
        .and_then(|ip| ip.get("src_addr"))
        .and_then(Value::as_str)
    {
        let port = ["UDP", "TCP", "SCTP"]
            .iter()
            .find_map(|p| metadata.get(*p)?.get("src_port")?.as_u64());
        return Some(match (port, ip.parse::<std::net::IpAddr>()) {
            (Some(port), Ok(addr)) => std::net::SocketAddr::new(addr, port.try_into().unwrap_or(0)).to_string(),
            (Some(port), Err(_)) => format!("{ip}:{port}"),
            (None, _) => ip.to_owned(),
        });
    }
    let str_at = |a: &str, b: &str| metadata.get(a)?.get(b)?.as_str().map(str::to_owned);
    str_at("UNIX", "peer")
        .or_else(|| str_at("UNIX", "filename"))
        .or_else(|| str_at("PIPE", "filename"))
        .or_else(|| str_at("AF_PACKET", "src_mac"))
}

/// The writer thread: writes lines as they come, flushes whenever the queue is empty, reports dropped lines.
fn writer(rx: Receiver<Msg>, out: Box<dyn Write + Send>, dropped: Arc<AtomicU64>, dest: String) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut reported = 0;
    let mut failing = false;
    let mut write = |out: &mut std::io::BufWriter<Box<dyn Write + Send>>, line: &str| {
        let r = out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n"));
        match r {
            Ok(()) => failing = false,
            Err(e) => {
                dropped.fetch_add(1, Relaxed);
                if !failing {
                    tracing::warn!(access_log = %dest, "cannot write the access log: {e}");
                    failing = true;
                }
            }
        }
    };
    loop {
        let msg = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Msg::Shutdown),
        };
        let mut stop = false;
        match msg {
            Some(Msg::Line(l)) => {
                write(&mut out, &l);
                // Whatever else is queued goes out in the same buffer.
                while let Ok(m) = rx.try_recv() {
                    match m {
                        Msg::Line(l) => write(&mut out, &l),
                        Msg::Shutdown => {
                            stop = true;
                            break;
                        }
                    }
                }
            }
            Some(Msg::Shutdown) => stop = true,
            None => {}
        }
        let _ = out.flush();
        let lost = dropped.load(Relaxed);
        if lost > reported {
            tracing::warn!(
                access_log = %dest,
                dropped = lost,
                "access log lines dropped (the writer fell behind)"
            );
            reported = lost;
        }
        if stop {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_from_metadata() {
        let udp = json!({"IP": {"src_addr": "10.0.0.1", "dst_addr": "10.0.0.2"}, "UDP": {"src_port": 5000}});
        assert_eq!(peer(&udp).as_deref(), Some("10.0.0.1:5000"));
        let tcp6 = json!({"IP": {"src_addr": "::1"}, "TCP": {"src_port": 80}});
        assert_eq!(peer(&tcp6).as_deref(), Some("[::1]:80"));
        let unix = json!({"UNIX": {"filename": "/run/x.sock"}});
        assert_eq!(peer(&unix).as_deref(), Some("/run/x.sock"));
        let dgram = json!({"UNIX": {"filename": "/run/x.sock", "peer": "@client"}});
        assert_eq!(peer(&dgram).as_deref(), Some("@client"));
        assert_eq!(peer(&json!({})), None);
    }

    #[test]
    fn a_line_has_every_field() {
        let stats = Stats::default();
        stats.up_bytes.store(10, Relaxed);
        stats.down_msgs.store(2, Relaxed);
        let l = line(
            &Record {
                session: "s",
                listener: "l",
                protocol: "UDP",
                peer: Some("10.0.0.1:5"),
                route: Some("r"),
                cluster: Some("c"),
                endpoint: None,
                status: "ended",
                reason: "finished",
                duration: Duration::from_millis(1500),
                stats: &stats,
            },
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(
            l,
            r#"{"time":"1970-01-01T00:00:00.000Z","session":"s","listener":"l","protocol":"UDP","peer":"10.0.0.1:5","route":"r","cluster":"c","endpoint":null,"status":"ended","reason":"finished","duration":1.5,"up_bytes":10,"up_msgs":0,"down_bytes":0,"down_msgs":2}"#
        );
    }

    #[test]
    fn lines_reach_the_file_and_a_closed_log_counts_drops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path.display().to_string()).expect("open");
        log.write_line("{\"a\":1}".into());
        log.write_line("{\"a\":2}".into());
        log.shutdown();
        log.write_line("{\"a\":3}".into());
        assert_eq!(log.dropped(), 1);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
    }

    #[test]
    fn an_unwritable_path_says_why() {
        let e = AccessLog::open("/nonexistent-dir/x/access.log").expect_err("must fail");
        assert_eq!(
            e.to_string(),
            "cannot open access log /nonexistent-dir/x/access.log: No such file or directory"
        );
    }
}

//! Transform clusters: Echo, Discard, Logger, JSONEncap, JSONDecap and Metric.
//!
//! They have no endpoints and no sockets; each is a function applied to the messages that pass through it, in the
//! pump that carries them. Used as a route's destination, a transform loops the uplink back into the downlink (Echo
//! echoes, Discard swallows, Logger logs and echoes, JSONEncap returns the encapsulated messages).

use crate::stream::Batch;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Where a Logger cluster writes.
pub enum LogSink {
    Stdout,
    Stderr,
    File(Mutex<File>),
}

impl LogSink {
    /// Opens `log_file`: `-` or `stdout` is standard output, `stderr` standard error, anything else a file opened
    /// for appending (the original truncated it for every session).
    pub fn open(log_file: &str) -> io::Result<LogSink> {
        Ok(match log_file {
            "-" | "stdout" => LogSink::Stdout,
            "stderr" => LogSink::Stderr,
            path => LogSink::File(Mutex::new(OpenOptions::new().create(true).append(true).open(path)?)),
        })
    }

    fn write_record(&self, prefix: Option<&str>, msg: &[u8]) {
        let mut rec = Vec::with_capacity(msg.len() + prefix.map_or(0, |p| p.len() + 2));
        if let Some(p) = prefix {
            rec.extend_from_slice(p.as_bytes());
            rec.extend_from_slice(b": ");
        }
        rec.extend_from_slice(msg);
        // One write per record so records from concurrent sessions do not interleave (O_APPEND).
        let res = match self {
            LogSink::Stdout => io::stdout().lock().write_all(&rec),
            LogSink::Stderr => io::stderr().lock().write_all(&rec),
            LogSink::File(f) => match f.lock() {
                Ok(mut f) => f.write_all(&rec),
                Err(_) => Ok(()),
            },
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "Logger cluster cannot write its log");
        }
    }
}

/// A transform applied to every message passing a stage.
#[derive(Clone)]
pub enum Transform {
    /// Passes messages unchanged (Echo).
    Echo,
    /// Drops every message.
    Discard,
    /// Writes each message to a log, then passes it on.
    Logger {
        sink: Arc<LogSink>,
        prefix: Option<Arc<str>>,
    },
    /// Wraps each message as `{"metadata": <session metadata>, "payload": "<base64>"}`.
    JsonEncap,
    /// Unwraps the base64 `payload` of each JSON message; messages that are not such JSON are dropped.
    JsonDecap,
    /// Passes messages unchanged, counting them into a session's `session_*_counter_total` series (Metric).
    Metric {
        bytes: prometheus::IntCounter,
        packets: prometheus::IntCounter,
    },
}

impl Transform {
    pub fn apply(&self, batch: &mut Batch, metadata: &Value) {
        match self {
            Transform::Echo => {}
            Transform::Metric { bytes, packets } => {
                packets.inc_by(batch.len() as u64);
                bytes.inc_by(batch.iter().map(|m| m.len() as u64).sum());
            }
            Transform::Discard => batch.clear(),
            Transform::Logger { sink, prefix } => {
                for m in batch.iter() {
                    sink.write_record(prefix.as_deref(), m);
                }
            }
            Transform::JsonEncap => {
                for m in batch.iter_mut() {
                    *m = encap(metadata, m);
                }
            }
            Transform::JsonDecap => batch.retain_mut(|m| match decap(m) {
                Some(payload) => {
                    *m = payload;
                    true
                }
                None => {
                    crate::metrics::dropped(crate::metrics::DropReason::BadEnvelope, 1);
                    tracing::debug!(
                        len = m.len(),
                        "JSONDecap: dropping a message that is not an l7mp JSON envelope"
                    );
                    false
                }
            }),
        }
    }
}

fn encap(metadata: &Value, msg: &[u8]) -> Bytes {
    let env = serde_json::json!({ "metadata": metadata, "payload": B64.encode(msg) });
    Bytes::from(serde_json::to_vec(&env).unwrap_or_default())
}

fn decap(msg: &[u8]) -> Option<Bytes> {
    let v: Value = serde_json::from_slice(msg).ok()?;
    let payload = v.get("payload")?.as_str()?;
    B64.decode(payload).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encap_then_decap_is_identity_and_carries_metadata() {
        let meta = json!({"IP": {"src_addr": "127.0.0.1"}});
        let mut batch = vec![Bytes::from_static(b"hello"), Bytes::from_static(b"\x00\xff")];
        Transform::JsonEncap.apply(&mut batch, &meta);
        let env: Value = serde_json::from_slice(&batch[0]).expect("json");
        assert_eq!(env["metadata"], meta);
        assert_eq!(env["payload"], json!("aGVsbG8="));
        Transform::JsonDecap.apply(&mut batch, &meta);
        assert_eq!(
            batch,
            vec![Bytes::from_static(b"hello"), Bytes::from_static(b"\x00\xff")]
        );
    }

    #[test]
    fn decap_drops_garbage_and_discard_drops_all() {
        let mut batch = vec![
            Bytes::from_static(b"not json"),
            Bytes::from_static(br#"{"payload":"eA=="}"#),
        ];
        Transform::JsonDecap.apply(&mut batch, &Value::Null);
        assert_eq!(batch, vec![Bytes::from_static(b"x")]);
        Transform::Discard.apply(&mut batch, &Value::Null);
        assert!(batch.is_empty());
    }
}

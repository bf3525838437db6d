//! JSONSocket. Listener side: a transport session (UDP, TCP, UNIX, WebSocket) that starts with a JSON header.
//!
//! The client's first message must be a JSON object with an integer `JSONSocketVersion` (0 or 1); the header is put
//! into the session metadata at `/JSONSocket`, so rules can match on it. The agent answers
//! `{"JSONSocketVersion":1,"JSONSocketStatus":<code>,"JSONSocketMessage":<text>}`: 200 once the session is routed and
//! connected, 400 for a header that is not valid, 505 for a version above 1, 404 when no route or no upstream can
//! be had; on an error the session then ends. The client should wait for the answer before sending data (the
//! specification's two-way handshake); data that arrives together with the header is kept and sent on after it.
//!
//! Cluster side ([`client_handshake`]): after the transport connects, the agent sends a header built from the
//! cluster's `header` items (plus `JSONSocketVersion: 1`) and waits, within the route's timeout, for an answer with
//! a 2xx `JSONSocketStatus`.

use crate::stream::{Batch, Reader, Writer};
use bytes::{Bytes, BytesMut};
use l7mp_api::HeaderItem;
use serde_json::{Value, json};
use std::io;
use std::time::Duration;

/// How long a client has to send its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A handshake failure, with the status code to answer.
#[derive(Debug, thiserror::Error)]
#[error("JSONSocket header rejected ({status}): {message}")]
pub struct HeaderError {
    pub status: u16,
    pub message: String,
}

fn bad(message: impl Into<String>) -> HeaderError {
    HeaderError {
        status: 400,
        message: format!("Bad Request: {}", message.into()),
    }
}

/// Parses and checks a header message.
pub fn parse_header(msg: &[u8]) -> Result<Value, HeaderError> {
    let v: Value = serde_json::from_slice(msg).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad("header is not a JSON object"));
    }
    match v.get("JSONSocketVersion").map(|x| (x, x.as_i64())) {
        None => Err(bad("JSONSocketVersion missing")),
        Some((_, Some(n))) if n > 1 => Err(HeaderError {
            status: 505,
            message: format!("Version Not Supported: JSONSocketVersion {n} (this agent speaks 0 and 1)"),
        }),
        Some((_, Some(n))) if n >= 0 => Ok(v),
        Some((x, _)) => Err(bad(format!("JSONSocketVersion must be 0 or 1, got {x}"))),
    }
}

/// Reads the header: the first message, and whatever arrived with it (returned to be sent on first).
pub async fn read_header(reader: &mut Reader) -> Result<(Bytes, Batch), HeaderError> {
    let mut arena = BytesMut::new();
    let mut batch = Vec::new();
    match tokio::time::timeout(HEADER_TIMEOUT, reader.read(&mut arena, &mut batch)).await {
        Err(_) => Err(bad(format!("no header within {HEADER_TIMEOUT:?}"))),
        Ok(Err(e)) => Err(bad(format!("cannot read the header: {e}"))),
        Ok(Ok(false)) => Err(bad("the stream ended before a header")),
        Ok(Ok(true)) => {
            let mut rest = batch.split_off(1);
            let header = batch.pop().unwrap_or_default();
            rest.shrink_to_fit();
            Ok((header, rest))
        }
    }
}

/// Writes a status answer.
pub async fn answer(writer: &mut Writer, status: u16, message: &str) -> io::Result<()> {
    let body = json!({ "JSONSocketVersion": 1, "JSONSocketStatus": status, "JSONSocketMessage": message });
    let mut batch = vec![Bytes::from(body.to_string())];
    writer.write(&mut batch).await
}

/// Builds the header a JSONSocket cluster sends for a session.
pub fn build_header(items: &[HeaderItem], metadata: &Value) -> Value {
    let mut h = json!({});
    for item in items {
        match item {
            HeaderItem::Copy(p) => {
                if let Some(v) = p.get(metadata) {
                    p.set(&mut h, v.clone());
                }
            }
            HeaderItem::Move { from, to } => {
                if let Some(v) = from.get(metadata) {
                    to.set(&mut h, v.clone());
                }
            }
            HeaderItem::Set { key, value } => key.set(&mut h, value.clone()),
        }
    }
    h["JSONSocketVersion"] = json!(1);
    h
}

/// Sends the header on a freshly connected transport and waits for a 2xx answer. Returns the streams, with any
/// data that came after the answer kept for the session.
pub async fn client_handshake(
    mut reader: Reader,
    mut writer: Writer,
    items: &[HeaderItem],
    metadata: &Value,
    timeout: Duration,
) -> Result<(Reader, Writer), String> {
    let header = build_header(items, metadata);
    let mut batch = vec![Bytes::from(header.to_string())];
    writer
        .write(&mut batch)
        .await
        .map_err(|e| format!("cannot send the header: {e}"))?;
    let mut arena = BytesMut::new();
    let mut got = Vec::new();
    match tokio::time::timeout(timeout, reader.read(&mut arena, &mut got)).await {
        Err(_) => return Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => return Err(format!("cannot read the answer: {e}")),
        Ok(Ok(false)) => return Err("the upstream closed before answering".into()),
        Ok(Ok(true)) => {}
    }
    let rest = got.split_off(1);
    let answer: Value = got
        .first()
        .and_then(|m| serde_json::from_slice(m).ok())
        .ok_or_else(|| "the answer is not JSON".to_owned())?;
    let status = answer.get("JSONSocketStatus").and_then(Value::as_i64).unwrap_or(0);
    if !(200..300).contains(&status) {
        let msg = answer.get("JSONSocketMessage").and_then(Value::as_str).unwrap_or("");
        return Err(format!("upstream answered {status} {msg}"));
    }
    let reader = if rest.is_empty() {
        reader
    } else {
        Reader::Prefixed(Box::new((rest, reader)))
    };
    Ok((reader, writer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_header_items() {
        use l7mp_api::Pointer;
        let p = |s: &str| Pointer::parse(s).unwrap();
        let items = vec![
            HeaderItem::Copy(p("/IP/src_addr")),
            HeaderItem::Move {
                from: p("/labels/user"),
                to: p("/user"),
            },
            HeaderItem::Set {
                key: p("/app"),
                value: json!("media"),
            },
        ];
        let meta = json!({"IP": {"src_addr": "10.0.0.1", "src_port": 5}, "labels": {"user": "bob"}});
        assert_eq!(
            build_header(&items, &meta),
            json!({"IP": {"src_addr": "10.0.0.1"}, "user": "bob", "app": "media", "JSONSocketVersion": 1})
        );
    }

    #[test]
    fn header_checks() {
        assert!(parse_header(br#"{"JSONSocketVersion":1,"room":"a"}"#).is_ok());
        assert!(parse_header(br#"{"JSONSocketVersion":0}"#).is_ok());
        assert_eq!(parse_header(br#"{"JSONSocketVersion":2}"#).unwrap_err().status, 505);
        assert_eq!(parse_header(br#"{"JSONSocketVersion":"1"}"#).unwrap_err().status, 400);
        assert_eq!(parse_header(br#"{"v":1}"#).unwrap_err().status, 400);
        assert_eq!(parse_header(b"hello").unwrap_err().status, 400);
        assert_eq!(parse_header(b"[1]").unwrap_err().status, 400);
    }
}

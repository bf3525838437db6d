//! The `Prometheus` and `Metric` clusters: virtual clusters that need the engine's [`Metrics`], opened by the
//! session (`session::open_virtual`) rather than by [`super::connect`].
//!
//! `Prometheus` answers with one scrape: an HTTP listener's request gets `200` with
//! `Content-Type: text/plain; version=0.0.4` and the exposition as its body; any other source gets the exposition
//! written once, then the end of stream (the request, if any, is read and discarded). With metrics off
//! (`--no-metrics`) the answer is `404` with a one-line explanation instead.
//!
//! `Metric` is a pass-through transform that counts the bytes and messages passing it into
//! `session_byte_counter_total{sessionName,clusterName}` and `session_packet_counter_total` (the series are removed
//! when the session ends). With metrics off it passes messages on without counting.

use super::http::Exchange;
use super::transform::Transform;
use super::{ConnectError, Stage};
use crate::metrics::Metrics;
use crate::stream::{Reader, Writer};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// What a `Prometheus` stage answers when the agent runs with `--no-metrics`.
pub const DISABLED: &str = "metrics are disabled in this agent (--no-metrics)\n";

/// Opens a `Prometheus` stage: a byte stream whose read side is one scrape followed by end of stream, and whose
/// write side swallows what the client sends.
pub fn open(metrics: Option<&Arc<Metrics>>, exchange: Option<&Arc<Exchange>>) -> Result<Stage, ConnectError> {
    let (status, body) = match metrics {
        Some(m) => (StatusCode::OK, m.render()),
        None => (StatusCode::NOT_FOUND, DISABLED.to_owned()),
    };
    if let Some(x) = exchange {
        let (mut head, ()) = Response::new(()).into_parts();
        head.status = status;
        head.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static(Metrics::CONTENT_TYPE));
        x.set_upstream_head(head);
    }
    let (ours, theirs) = tokio::net::UnixStream::pair().map_err(|e| ConnectError::Unavailable {
        protocol: "Prometheus",
        reason: format!("cannot create a socket pair: {e}"),
    })?;
    // The far end: says end of stream at once (after the exposition, our reader sees EOF) and discards the request.
    tokio::spawn(async move {
        let mut theirs = theirs;
        let _ = theirs.shutdown().await;
        let _ = tokio::io::copy(&mut theirs, &mut tokio::io::sink()).await;
    });
    let (r, w) = ours.into_split();
    Ok(Stage::Stream {
        reader: Reader::Prefixed(Box::new((vec![Bytes::from(body)], Reader::Unix(r)))),
        writer: Writer::Unix(w),
        endpoint: None,
    })
}

/// A `Metric` stage of cluster `cluster` in session `session`.
pub fn metric_stage(metrics: Option<&Arc<Metrics>>, session: &str, cluster: &str) -> Stage {
    match metrics {
        Some(m) => {
            let (bytes, packets) = m.metric_counters(session, cluster);
            Stage::Transform(Transform::Metric { bytes, packets })
        }
        None => Stage::Transform(Transform::Echo),
    }
}

//! The `L7mpController` cluster: the admin REST API as a session's destination, the original l7mp's way of
//! serving it (an HTTP listener whose rule routes to this cluster).
//!
//! The stage collects the request body the session carries, rebuilds the HTTP request from the session's `HTTP`
//! metadata (method, URL, headers — after any rule rewrites), runs it through the API router in process, hands the
//! response's status and headers to the HTTP listener's exchange and writes the body back as the session's
//! downlink.

use super::http::Exchange;
use super::{ConnectError, Stage};
use crate::stream::{CHANNEL_DEPTH, Reader, Writer};
use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use axum::http::{Method, Request, StatusCode};
use axum::response::IntoResponse;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::mpsc;
use tower::ServiceExt;

/// The largest request body the controller takes.
const MAX_REQUEST: usize = 4 << 20;

/// Opens a stage that serves one API request with `router`. The session must come from an HTTP listener (its
/// metadata holds the request head).
pub fn open(router: axum::Router, metadata: &Value, exchange: Option<&Arc<Exchange>>) -> Result<Stage, ConnectError> {
    let http = metadata.get("HTTP").ok_or_else(|| ConnectError::Unavailable {
        protocol: "L7mpController",
        reason: "the REST API is HTTP: route an HTTP listener's sessions to this cluster".into(),
    })?;
    let method = http
        .get("method")
        .and_then(Value::as_str)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(Method::GET);
    let target = http
        .pointer("/url/url")
        .and_then(Value::as_str)
        .filter(|u| u.starts_with('/'))
        .unwrap_or("/")
        .to_owned();
    let headers: Vec<(HeaderName, HeaderValue)> = match http.get("headers") {
        Some(Value::Object(m)) => m
            .iter()
            .filter_map(|(k, v)| {
                let v = v.as_str()?;
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect(),
        _ => Vec::new(),
    };
    // Who sent the request, for the auth middleware (an open API serves loopback clients only).
    let client = metadata
        .pointer("/IP/src_addr")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<std::net::IpAddr>().ok());
    let (req_tx, mut req_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let (resp_tx, resp_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let exchange = exchange.cloned();
    tokio::spawn(async move {
        let mut body = BytesMut::new();
        let mut too_large = false;
        while let Some(chunk) = req_rx.recv().await {
            if body.len() + chunk.len() > MAX_REQUEST {
                too_large = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        drop(req_rx);
        let response = if too_large {
            super::super::admin::reply::ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {MAX_REQUEST} bytes"),
            )
            .into_response()
        } else {
            let mut req = Request::new(Body::from(body.freeze()));
            *req.method_mut() = method;
            match target.parse() {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => *req.uri_mut() = axum::http::Uri::from_static("/"),
            }
            for (k, v) in headers {
                req.headers_mut().append(k, v);
            }
            if let Some(ip) = client {
                req.extensions_mut().insert(crate::admin::auth::RemoteClient(ip));
            }
            match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        };
        let (mut parts, body) = response.into_parts();
        let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        if let Some(x) = &exchange {
            parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            x.set_upstream_head(parts);
        }
        if !bytes.is_empty() {
            let _ = resp_tx.send(bytes).await;
        }
    });
    Ok(Stage::Stream {
        reader: Reader::Chan(resp_rx),
        writer: Writer::Chan(Some(req_tx)),
        endpoint: None,
    })
}

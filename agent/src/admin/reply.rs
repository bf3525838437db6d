//! The REST API's wire conventions, as the original l7mp had them: request bodies in JSON or YAML chosen by
//! `Content-Type`, the `recursive` and `format` query parameters, `{status, message[, content]}` status bodies and
//! JSON errors.

use axum::body::{Body, Bytes};
use axum::http::header::{CONTENT_TYPE, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A failed API call: the status and what went wrong (the `content` of the error body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub content: String,
}

impl ApiError {
    pub fn new(status: StatusCode, content: impl Into<String>) -> Self {
        ApiError {
            status,
            content: content.into(),
        }
    }

    pub fn bad_request(content: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, content)
    }

    pub fn not_found(content: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, content)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = crate::protocol::http::error_body(self.status, &self.content);
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = self.status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }
}

/// How a JSON reply is laid out (`?format=`, the names of the original's `format-json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Indented by two spaces (the default).
    #[default]
    Plain,
    /// Compact, on one line.
    Terse,
    /// One line, a space after every `:` and `,`.
    Space,
    /// A list with one compact item per line (other values as `terse`).
    Lines,
    /// Indented, object keys sorted (stable for diffs).
    Diffy,
}

/// The query parameters every route understands.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opts {
    /// `recursive=true`: expand referenced objects on GET; delete generated children on DELETE.
    pub recursive: bool,
    pub format: Format,
}

impl Opts {
    /// Parses `recursive` and `format`; other parameters are ignored, as the original did.
    pub fn parse(query: Option<&str>) -> Result<Opts, ApiError> {
        let mut opts = Opts::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "recursive" => {
                    opts.recursive = match v {
                        "" | "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        other => {
                            return Err(ApiError::bad_request(format!(
                                "query parameter recursive: expected true or false, got {other:?}"
                            )));
                        }
                    }
                }
                "format" => {
                    opts.format = match v {
                        "plain" => Format::Plain,
                        "terse" => Format::Terse,
                        "space" => Format::Space,
                        "lines" => Format::Lines,
                        "diffy" => Format::Diffy,
                        other => {
                            return Err(ApiError::bad_request(format!(
                                "query parameter format: expected one of plain, terse, space, lines, diffy, got \
                                 {other:?}"
                            )));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(opts)
    }
}

/// `200 OK` with `v` as JSON laid out as asked.
pub fn json(v: &Value, format: Format) -> Response {
    let text = render(v, format);
    let mut resp = Response::new(Body::from(text));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The status body of a successful change: `{"status": 200, "message": "OK"}`.
pub fn ok(format: Format) -> Response {
    json(&json!({"status": 200, "message": "OK"}), format)
}

fn render(v: &Value, format: Format) -> String {
    match format {
        Format::Plain => serde_json::to_string_pretty(v).unwrap_or_default(),
        Format::Terse => v.to_string(),
        Format::Space => spaced(v),
        Format::Lines => match v {
            Value::Array(items) => {
                let lines: Vec<String> = items.iter().map(Value::to_string).collect();
                format!("[\n{}\n]", lines.join(",\n"))
            }
            other => other.to_string(),
        },
        Format::Diffy => serde_json::to_string_pretty(&sorted(v)).unwrap_or_default(),
    }
}

fn spaced(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("[{}]", a.iter().map(spaced).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), spaced(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

fn sorted(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&o[k]))).collect())
        }
        other => other.clone(),
    }
}

const JSON_TYPES: &[&str] = &["application/json", "application/x-json", "text/json", "text/x-json"];
const YAML_TYPES: &[&str] = &["text/yaml", "text/x-yaml", "application/yaml", "application/x-yaml"];

/// The request body as a JSON value: JSON or YAML by `Content-Type` (parameters such as `charset` ignored).
/// Another or a missing content type is `415 Unsupported Media Type` (the original answered 500 by mistake); a body
/// that does not parse is `400`.
pub fn body(headers: &HeaderMap, bytes: &Bytes) -> Result<Value, ApiError> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let unsupported = |what: String| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{what}: send the body as JSON (Content-Type: {}) or YAML ({})",
                JSON_TYPES.join(", "),
                YAML_TYPES.join(", ")
            ),
        )
    };
    let Some(ct) = ct else {
        return Err(unsupported("no Content-Type".into()));
    };
    let text = std::str::from_utf8(bytes).map_err(|e| ApiError::bad_request(format!("the body is not UTF-8: {e}")))?;
    if JSON_TYPES.contains(&ct.as_str()) {
        if text.trim().is_empty() {
            return Err(ApiError::bad_request("the request body is empty"));
        }
        serde_json::from_str(text).map_err(|e| ApiError::bad_request(format!("cannot parse the body as JSON: {e}")))
    } else if YAML_TYPES.contains(&ct.as_str()) {
        let v: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("cannot parse the body as YAML: {e}")))?;
        if v.is_null() {
            return Err(ApiError::bad_request("the request body is empty"));
        }
        Ok(v)
    } else {
        Err(unsupported(format!("unsupported Content-Type {ct:?}")))
    }
}

/// The value under `key` of a request body (`{"listener": {...}}`), as the original's API wraps objects.
pub fn wrapped<'a>(body: &'a Value, key: &str) -> Result<&'a Value, ApiError> {
    match body {
        Value::Object(o) => o.get(key).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{key}: missing required field (the body is {{\"{key}\": {{...}}}})"
            ))
        }),
        other => Err(ApiError::bad_request(format!(
            "expected an object {{\"{key}\": {{...}}}}, got {}",
            l7mp_api::decode::describe(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_content_types() {
        let o = Opts::parse(Some("recursive=true&format=terse&x=1")).expect("valid");
        assert!(o.recursive);
        assert_eq!(o.format, Format::Terse);
        assert!(Opts::parse(Some("format=pretty")).is_err());
        let mut h = HeaderMap::new();
        let b = Bytes::from_static(b"{\"a\": 1}");
        assert_eq!(
            body(&h, &b).map_err(|e| e.status),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(body(&h, &b), Ok(json!({"a": 1})));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/yaml"));
        assert_eq!(body(&h, &Bytes::from_static(b"a: 1\n")), Ok(json!({"a": 1})));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(
            body(&h, &b).map_err(|e| e.status),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(
            render(&json!({"b": [1, 2], "a": null}), Format::Space),
            "{\"b\": [1, 2], \"a\": null}"
        );
    }
}

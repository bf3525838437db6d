//! Errors as the API server reports them: a `metav1.Status` with an HTTP code and a machine-readable reason.

use serde_json::{Value, json};

/// One failed request, rendered as a `Status` object (`kind: Status`, `status: Failure`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// The HTTP status code, also `Status.code`.
    pub code: u16,
    /// `Status.reason`: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`, `Expired`, ...
    pub reason: &'static str,
    /// `Status.message`, worded like the real server's.
    pub message: String,
    /// `Status.details` (name, group, kind, causes), when the real server sends them.
    pub details: Option<Value>,
}

/// What a resource is called in messages: `pods`, `virtualservices.l7mp.io`.
pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

fn details(group: &str, plural: &str, name: &str) -> Value {
    let mut d = json!({ "name": name, "kind": plural });
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

/// The `causes[].reason` of a field error, from the wording of its message.
fn cause_reason(message: &str) -> &'static str {
    match message.split(':').next().unwrap_or_default() {
        "Required value" => "FieldValueRequired",
        "Unsupported value" => "FieldValueNotSupported",
        "Too long" => "FieldValueTooLong",
        "Too many" => "FieldValueTooMany",
        "Forbidden" => "FieldValueForbidden",
        _ => "FieldValueInvalid",
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, plural)),
        )
        .with_details(details(group, plural, name))
    }

    /// A path that names no resource at all (the real server answers these with a bare 404 Status).
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, plural)),
        )
        .with_details(details(group, plural, name))
    }

    /// Optimistic concurrency failed: the request's `resourceVersion` (or a precondition) is not the object's.
    pub fn conflict(group: &str, plural: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, plural)
            ),
        )
        .with_details(details(group, plural, name))
    }

    /// 422 with one cause per bad field (`field`, `message`), like field validation errors.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: &[(String, String)]) -> Self {
        let what = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let list: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let message = if list.len() == 1 {
            format!("{what} \"{name}\" is invalid: {}", list.join(", "))
        } else {
            format!("{what} \"{name}\" is invalid: [{}]", list.join(", "))
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|(f, m)| json!({ "reason": cause_reason(m), "message": m, "field": f }))
            .collect();
        let mut d = json!({ "name": name, "kind": kind, "causes": causes });
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        Self::new(422, "Invalid", message).with_details(d)
    }

    /// 422 for a JSON patch that cannot be applied (a failed `test`, a missing path).
    pub fn invalid_patch(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 410: the resourceVersion asked for has been compacted away.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn forbidden(message: &str) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"
            ),
        )
    }

    /// 415 for a create or update body the fake cannot decode.
    pub fn unsupported_body(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {content_type:?}; the fake API server does not decode protobuf or CBOR)"
            ),
        )
    }

    /// 504: a resourceVersion newer than any the server has (the real server waits, then gives up).
    pub fn too_large_resource_version(asked: u64, current: u64) -> Self {
        Self::new(504, "Timeout", format!("Too large resource version: {asked}, current: {current}"))
            .with_details(json!({ "causes": [{ "reason": "ResourceVersionTooLarge", "message": "Too large resource version" }], "retryAfterSeconds": 1 }))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `metav1.Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_like_the_real_servers() {
        let e = ApiError::not_found("", "pods", "p1");
        assert_eq!(e.to_status()["message"], "pods \"p1\" not found");
        assert_eq!(e.to_status()["code"], 404);
        let e = ApiError::already_exists("l7mp.io", "virtualservices", "v");
        assert_eq!(e.to_status()["message"], "virtualservices.l7mp.io \"v\" already exists");
        assert_eq!(e.to_status()["details"]["group"], "l7mp.io");
        let e = ApiError::invalid("Pod", "", "p", &[("metadata.name".into(), "Required value".into())]);
        assert_eq!(e.message, "Pod \"p\" is invalid: metadata.name: Required value");
        let e = ApiError::invalid(
            "VirtualService",
            "l7mp.io",
            "v",
            &[("a".into(), "x".into()), ("b".into(), "y".into())],
        );
        assert_eq!(e.message, "VirtualService.l7mp.io \"v\" is invalid: [a: x, b: y]");
    }
}

//! Validates an object against a CRD's `openAPIV3Schema`, for the subset of keywords our schemas use, the way the
//! API server would (with strict field validation: an unknown field is an error, not silently pruned).
//!
//! Supported: `type` (with `nullable`), `properties`, `required`, `additionalProperties` (a schema), `items`,
//! `enum`, `minimum`, `maximum`, `x-kubernetes-preserve-unknown-fields`, `x-kubernetes-int-or-string`;
//! `description`, `title` and `format` are annotations. Any other keyword is reported as unsupported, so the
//! validator cannot silently ignore a rule a schema gains later.

use serde_json::{Map, Value};

/// One problem: the field path inside the object (`spec.listener.spec`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub path: String,
    pub problem: String,
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() { "<root>" } else { &self.path };
        write!(f, "{path}: {}", self.problem)
    }
}

const ANNOTATIONS: &[&str] = &["description", "title", "format"];

/// Validates a whole object (`apiVersion`, `kind` and `metadata` are the API server's, not the schema's).
pub fn validate_resource(schema: &Value, object: &Value) -> Vec<ValidationError> {
    let mut errs = Vec::new();
    match object {
        Value::Object(o) => {
            let rest: Map<String, Value> = o
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            validate_at(schema, &Value::Object(rest), "", &mut errs);
        }
        other => validate_at(schema, other, "", &mut errs),
    }
    errs
}

/// Validates `value` against `schema`; `path` prefixes the errors' paths.
pub fn validate_at(schema: &Value, value: &Value, path: &str, errs: &mut Vec<ValidationError>) {
    let mut err = |problem: String| {
        errs.push(ValidationError {
            path: path.to_owned(),
            problem,
        })
    };
    let Some(s) = schema.as_object() else {
        err(format!("unsupported schema {schema}"));
        return;
    };
    const KNOWN: &[&str] = &[
        "type",
        "nullable",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "minimum",
        "maximum",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-int-or-string",
    ];
    for k in s.keys() {
        if !KNOWN.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()) {
            err(format!("the validator does not support the schema keyword `{k}`"));
        }
    }
    let flag = |k: &str| s.get(k).and_then(Value::as_bool) == Some(true);
    if value.is_null() {
        if !flag("nullable") && !flag("x-kubernetes-preserve-unknown-fields") {
            err("must not be null".into());
        }
        return;
    }
    if flag("x-kubernetes-int-or-string") && !(value.is_string() || value.is_i64() || value.is_u64()) {
        err(format!("expected an integer or a string, got {}", kind(value)));
        return;
    }
    if let Some(ty) = s.get("type").and_then(Value::as_str) {
        let ok = match ty {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => false,
        };
        if !ok {
            err(format!("expected {ty}, got {}", kind(value)));
            return;
        }
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        err(format!("{value} is not one of {}", Value::Array(allowed.clone())));
    }
    if let Some(x) = value.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64)
            && x < min
        {
            err(format!("{value} is less than the minimum {min}"));
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64)
            && x > max
        {
            err(format!("{value} is more than the maximum {max}"));
        }
    }
    let sub = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match value {
        Value::Object(o) => {
            if let Some(req) = s.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !o.contains_key(r) {
                        errs.push(ValidationError {
                            path: sub(r),
                            problem: "missing required field".into(),
                        });
                    }
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in o {
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(ps), _) | (None, Some(ps)) => validate_at(ps, v, &sub(k), errs),
                    (None, None) if flag("x-kubernetes-preserve-unknown-fields") => {}
                    (None, None) => errs.push(ValidationError {
                        path: sub(k),
                        problem: "unknown field".into(),
                    }),
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for (i, it) in items.iter().enumerate() {
                    validate_at(is, it, &format!("{path}[{i}]"), errs);
                }
            }
        }
        _ => {}
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

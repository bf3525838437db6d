//! Custom resources against their CRD's structural schema, as the real server treats them: unknown fields are
//! pruned (and reported, for `fieldValidation` Warn or Strict), `null` is dropped where the schema does not allow
//! it, then `type`, `nullable`, `required`, `enum`, `minimum`/`maximum`, `minLength`/`maxLength`,
//! `minItems`/`maxItems` and `x-kubernetes-int-or-string` are checked, with the server's field paths and
//! wording. Not checked: `pattern`, `format`, CEL rules (`x-kubernetes-validations`), defaults, list types.

use serde_json::{Map, Value};

/// Removes what the schema does not allow from `v` (a whole object: `apiVersion`, `kind` and `metadata` are the
/// server's) and returns the paths of the unknown fields it removed.
pub fn prune_object(schema: &Value, v: &mut Value) -> Vec<String> {
    let mut pruned = Vec::new();
    if let Some(o) = v.as_object_mut() {
        let mut rest: Map<String, Value> = o
            .iter()
            .filter(|(k, _)| !is_root_meta(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        o.retain(|k, _| is_root_meta(k));
        let mut rest_v = Value::Object(std::mem::take(&mut rest));
        prune(schema, &mut rest_v, "", &mut pruned);
        if let Value::Object(r) = rest_v {
            o.extend(r);
        }
    }
    pruned
}

fn is_root_meta(k: &str) -> bool {
    matches!(k, "apiVersion" | "kind" | "metadata")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn prune(schema: &Value, v: &mut Value, path: &str, pruned: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
            let embedded = flag(schema, "x-kubernetes-embedded-resource");
            let keys: Vec<String> = o.keys().cloned().collect();
            for k in keys {
                let sub = props.and_then(|p| p.get(&k)).or(additional);
                let keep_meta = embedded && is_root_meta(&k);
                match (sub, o.get_mut(&k)) {
                    (Some(s), Some(child)) => {
                        if child.is_null() && !flag(s, "nullable") {
                            o.remove(&k);
                        } else {
                            prune(s, child, &join(path, &k), pruned);
                        }
                    }
                    (None, _) if preserve || keep_meta => {}
                    (None, _) => {
                        o.remove(&k);
                        pruned.push(join(path, &k));
                    }
                    (Some(_), None) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(s, item, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

/// The invalid fields of an object (after pruning), as (path, problem).
pub fn validate_object(schema: &Value, v: &Value) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    if let Some(o) = v.as_object() {
        let rest: Map<String, Value> = o
            .iter()
            .filter(|(k, _)| !is_root_meta(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        validate(schema, &Value::Object(rest), "", &mut errs);
    }
    errs
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_ok(want: &str, v: &Value) -> bool {
    match (want, v) {
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
        ("number", Value::Number(_)) => true,
        (want, v) => want == type_name(v),
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".to_owned(),
        Value::Array(_) => "\"array\"".to_owned(),
        other => other.to_string(),
    }
}

fn validate(schema: &Value, v: &Value, path: &str, errs: &mut Vec<(String, String)>) {
    let shown_path = if path.is_empty() { "<root>" } else { path };
    let mut err = |problem: String| errs.push((path.to_owned(), problem));
    if v.is_null() {
        if !flag(schema, "nullable") {
            err(format!(
                "Invalid value: \"null\": {shown_path} in body must be of type {}: \"null\"",
                schema["type"].as_str().unwrap_or("object")
            ));
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(type_ok("integer", v) || v.is_string()) {
            err(format!(
                "Invalid value: {}: {shown_path} in body must be of type integer or string: {}",
                shown(v),
                shown(v)
            ));
        }
        return;
    }
    if let Some(want) = schema.get("type").and_then(Value::as_str)
        && !type_ok(want, v)
    {
        err(format!(
            "Invalid value: {}: {shown_path} in body must be of type {want}: {}",
            shown(v),
            shown(v)
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        err(format!("Unsupported value: {v}: supported values: {}", list.join(", ")));
    }
    let num = v.as_f64();
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), num)
        && n < min
    {
        err(format!(
            "Invalid value: {v}: {shown_path} in body should be greater than or equal to {min}"
        ));
    }
    if let (Some(max), Some(n)) = (schema.get("maximum").and_then(Value::as_f64), num)
        && n > max
    {
        err(format!(
            "Invalid value: {v}: {shown_path} in body should be less than or equal to {max}"
        ));
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64).filter(|m| len < *m) {
            err(format!(
                "Invalid value: {v}: {shown_path} in body should be at least {min} chars long"
            ));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64).filter(|m| len > *m) {
            err(format!("Too long: may not be more than {max} bytes"));
        }
    }
    match v {
        Value::Object(o) => {
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !o.contains_key(r) {
                    errs.push((join(path, r), "Required value".to_owned()));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in o {
                if let Some(s) = props.and_then(|p| p.get(k)).or(additional) {
                    validate(s, child, &join(path, k), errs);
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64).filter(|m| n < *m) {
                errs.push((
                    path.to_owned(),
                    format!("Invalid value: {n}: {shown_path} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64).filter(|m| n > *m) {
                errs.push((path.to_owned(), format!("Too many: {n}: must have at most {max} items")));
            }
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(s, item, &format!("{path}[{i}]"), errs);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["port"], "properties": {
                "port": {"type": "integer", "minimum": 1},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "list": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}}}},
                "ios": {"x-kubernetes-int-or-string": true},
            }},
            "status": {"type": "object", "nullable": true, "properties": {"state": {"type": "string", "enum": ["A", "B"]}}},
        }})
    }

    #[test]
    fn prunes_unknown_fields_and_disallowed_nulls() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"},
            "spec": {"port": 1, "bogus": 1, "free": {"any": {"thing": 1}}, "labels": {"a": "b"}, "list": [{"a": "x", "b": "y"}], "ios": null},
            "extra": true, "status": null});
        let pruned = prune_object(&schema(), &mut o);
        assert_eq!(pruned, ["spec.bogus", "spec.list[0].b", "extra"]);
        assert_eq!(o["spec"]["free"]["any"]["thing"], 1);
        assert!(o["spec"].get("ios").is_none(), "null where not nullable is dropped");
        assert!(o.get("status").is_some_and(Value::is_null), "nullable null is kept");
        assert!(o["metadata"]["name"] == "n");
    }

    #[test]
    fn validates_with_field_paths() {
        let o = json!({"spec": {"port": "x", "ios": 1.5, "labels": {"a": 1}, "list": [{"a": 2}]}, "status": {"state": "C"}});
        let errs: Vec<String> = validate_object(&schema(), &o)
            .into_iter()
            .map(|(p, m)| format!("{p}: {m}"))
            .collect();
        assert_eq!(
            errs,
            [
                "spec.port: Invalid value: \"x\": spec.port in body must be of type integer: \"x\"",
                "spec.ios: Invalid value: 1.5: spec.ios in body must be of type integer or string: 1.5",
                "spec.labels.a: Invalid value: 1: spec.labels.a in body must be of type string: 1",
                "spec.list[0].a: Invalid value: 2: spec.list[0].a in body must be of type string: 2",
                "status.state: Unsupported value: \"C\": supported values: \"A\", \"B\"",
            ]
        );
        let errs = validate_object(&schema(), &json!({"spec": {"port": 0}}));
        assert_eq!(
            errs,
            [(
                "spec.port".to_owned(),
                "Invalid value: 0: spec.port in body should be greater than or equal to 1".to_owned()
            )]
        );
        assert_eq!(validate_object(&schema(), &json!({"spec": {}}))[0].0, "spec.port");
        assert!(validate_object(&schema(), &json!({"spec": {"port": 2.0, "ios": "x"}})).is_empty());
    }
}

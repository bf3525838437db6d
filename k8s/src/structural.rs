//! Checks that a CRD's `openAPIV3Schema` is *structural*, offline: the rules of the Kubernetes documentation
//! ("Specifying a structural schema", apiextensions.k8s.io/v1) that need no API server. A real API server refuses a
//! CRD whose schema breaks them; a `serde_json::Value` field that derives as an untyped `{}` is the usual culprit.
//!
//! Checked, each error naming the JSON path of the node:
//! 1. every node (the root, each `properties` value, `items`, `additionalProperties`) has one `type` of object,
//!    array, string, integer, number, boolean, unless it has `x-kubernetes-preserve-unknown-fields: true` or
//!    `x-kubernetes-int-or-string: true`;
//! 2. `properties` and `additionalProperties` are not both set; `additionalProperties: false` is not used;
//!    `properties` only on `type: object`; `items` is set (one schema, not a list) exactly on `type: array`;
//! 3. inside `allOf`, `anyOf`, `oneOf` and `not` there is no `description`, `type`, `default`,
//!    `additionalProperties` or `nullable` (except the two int-or-string patterns), and every property and `items`
//!    named there is also specified outside;
//! 4. `x-kubernetes-int-or-string` nodes have no `type`, and only the `anyOf: [{type: integer}, {type: string}]`
//!    junctor (optionally inside `allOf`); `x-kubernetes-embedded-resource` needs `type: object`;
//! 5. only keywords of Kubernetes' `JSONSchemaProps` appear (no `$ref`, `definitions`, `const`,
//!    `patternProperties`, `additionalItems`, `$schema`, ...), and `uniqueItems` is not true;
//! 6. the root is `type: object` and not nullable; `metadata`, if given, is only `type: object`.
//!
//! Not checked (need the server): CEL rules, defaults being valid under their schema after pruning, formats.

use serde_json::{Map, Value};

/// One violation: the JSON path of the node and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructuralError {
    pub path: String,
    pub problem: String,
}

impl std::fmt::Display for StructuralError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

/// The keywords of `JSONSchemaProps` (k8s.io/apiextensions-apiserver v1).
const KEYWORDS: &[&str] = &[
    "description",
    "type",
    "format",
    "title",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "properties",
    "additionalProperties",
    "nullable",
    "example",
    "externalDocs",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

/// Checks `openAPIV3Schema` (the value at `spec.versions[].schema.openAPIV3Schema`); `path` names it in errors.
pub fn check(schema: &Value, path: &str) -> Vec<StructuralError> {
    let mut errs = Vec::new();
    let Some(root) = schema.as_object() else {
        push(&mut errs, path, "expected a schema object");
        return errs;
    };
    if root.get("type").and_then(Value::as_str) != Some("object") {
        push(&mut errs, path, "the root must be `type: object`");
    }
    if flag(root, "nullable") {
        push(&mut errs, path, "the root must not be nullable");
    }
    if let Some(meta) = root
        .get("properties")
        .and_then(|p| p.get("metadata"))
        .and_then(Value::as_object)
        && meta.keys().any(|k| k != "type")
    {
        push(
            &mut errs,
            &format!("{path}.properties.metadata"),
            "metadata may only be `type: object`",
        );
    }
    node(root, path, &mut errs);
    errs
}

fn push(errs: &mut Vec<StructuralError>, path: &str, problem: impl Into<String>) {
    errs.push(StructuralError {
        path: path.to_owned(),
        problem: problem.into(),
    });
}

fn flag(o: &Map<String, Value>, key: &str) -> bool {
    o.get(key).and_then(Value::as_bool) == Some(true)
}

/// A node in a structural position.
fn node(o: &Map<String, Value>, path: &str, errs: &mut Vec<StructuralError>) {
    keywords(o, path, errs);
    let preserve = flag(o, "x-kubernetes-preserve-unknown-fields");
    let int_or_string = flag(o, "x-kubernetes-int-or-string");
    let ty = o.get("type");
    match ty {
        None if preserve || int_or_string => {}
        None => push(
            errs,
            path,
            "no `type` (give one, or x-kubernetes-preserve-unknown-fields: true for a free-form value)",
        ),
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {}
        Some(other) => push(errs, path, format!("`type` must be one of {TYPES:?}, got {other}")),
    }
    let ty = ty.and_then(Value::as_str);
    if int_or_string {
        if ty.is_some() {
            push(errs, path, "x-kubernetes-int-or-string must not have a `type`");
        }
        int_or_string_junctors(o, path, errs);
    }
    if flag(o, "x-kubernetes-embedded-resource") && ty != Some("object") {
        push(errs, path, "x-kubernetes-embedded-resource needs `type: object`");
    }
    match (o.get("properties"), o.get("additionalProperties")) {
        (Some(_), Some(_)) => push(
            errs,
            path,
            "`properties` and `additionalProperties` are mutually exclusive",
        ),
        (_, Some(Value::Bool(false))) => push(errs, path, "`additionalProperties: false` is not allowed"),
        _ => {}
    }
    if let Some(props) = o.get("properties") {
        if ty != Some("object") {
            push(errs, path, "`properties` needs `type: object`");
        }
        match props.as_object() {
            Some(props) => {
                for (k, v) in props {
                    child(v, &format!("{path}.properties.{k}"), errs);
                }
            }
            None => push(errs, &format!("{path}.properties"), "expected a map of schemas"),
        }
    }
    match o.get("additionalProperties") {
        None | Some(Value::Bool(true)) => {}
        Some(ap) => child(ap, &format!("{path}.additionalProperties"), errs),
    }
    match (o.get("items"), ty) {
        (Some(items @ Value::Object(_)), Some("array")) => child(items, &format!("{path}.items"), errs),
        (Some(_), Some("array")) => push(errs, &format!("{path}.items"), "must be one schema, not a list"),
        (None, Some("array")) => push(errs, path, "`type: array` needs `items`"),
        (Some(_), _) => push(errs, path, "`items` needs `type: array`"),
        (None, _) => {}
    }
    if !int_or_string {
        for j in ["allOf", "anyOf", "oneOf"] {
            if let Some(list) = o.get(j) {
                for (i, s) in list
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    junctor(s, o, &format!("{path}.{j}[{i}]"), errs);
                }
            }
        }
        if let Some(s) = o.get("not") {
            junctor(s, o, &format!("{path}.not"), errs);
        }
    }
}

fn child(v: &Value, path: &str, errs: &mut Vec<StructuralError>) {
    match v.as_object() {
        Some(o) => node(o, path, errs),
        None => push(errs, path, "expected a schema object"),
    }
}

fn keywords(o: &Map<String, Value>, path: &str, errs: &mut Vec<StructuralError>) {
    for k in o.keys() {
        if !KEYWORDS.contains(&k.as_str()) {
            push(
                errs,
                path,
                format!("`{k}` is not a keyword of Kubernetes' JSONSchemaProps"),
            );
        }
    }
    if flag(o, "uniqueItems") {
        push(errs, path, "`uniqueItems: true` is not allowed");
    }
}

/// A schema inside a logical junctor: value validation only; what it names must exist outside.
fn junctor(s: &Value, outer: &Map<String, Value>, path: &str, errs: &mut Vec<StructuralError>) {
    let Some(o) = s.as_object() else {
        push(errs, path, "expected a schema object");
        return;
    };
    keywords(o, path, errs);
    for k in ["description", "type", "default", "additionalProperties", "nullable"] {
        if o.contains_key(k) {
            push(errs, path, format!("`{k}` is not allowed inside allOf/anyOf/oneOf/not"));
        }
    }
    if let Some(props) = o.get("properties").and_then(Value::as_object) {
        let outside = outer.get("properties").and_then(Value::as_object);
        for (k, v) in props {
            match outside.and_then(|p| p.get(k)) {
                Some(out) => {
                    if let Some(out) = out.as_object() {
                        junctor(v, out, &format!("{path}.properties.{k}"), errs);
                    }
                }
                None => push(
                    errs,
                    &format!("{path}.properties.{k}"),
                    "not specified outside the junctor",
                ),
            }
        }
    }
    if let Some(items) = o.get("items") {
        match outer.get("items").and_then(Value::as_object) {
            Some(out) => junctor(items, out, &format!("{path}.items"), errs),
            None => push(errs, &format!("{path}.items"), "not specified outside the junctor"),
        }
    }
    for j in ["allOf", "anyOf", "oneOf"] {
        if let Some(list) = o.get(j).and_then(Value::as_array) {
            for (i, s) in list.iter().enumerate() {
                junctor(s, outer, &format!("{path}.{j}[{i}]"), errs);
            }
        }
    }
    if let Some(s) = o.get("not") {
        junctor(s, outer, &format!("{path}.not"), errs);
    }
}

/// The only junctors an int-or-string node may have: `anyOf: [{type: integer}, {type: string}]`, optionally as
/// the single item of `allOf`.
fn int_or_string_junctors(o: &Map<String, Value>, path: &str, errs: &mut Vec<StructuralError>) {
    let pattern = serde_json::json!([{"type": "integer"}, {"type": "string"}]);
    let ok_any = |v: Option<&Value>| v.is_none_or(|a| a == &pattern);
    let ok_all = match o.get("allOf") {
        None => true,
        Some(Value::Array(items)) => {
            items.len() == 1
                && items[0]
                    .as_object()
                    .is_some_and(|i| i.len() == 1 && ok_any(i.get("anyOf")))
        }
        Some(_) => false,
    };
    if !ok_any(o.get("anyOf")) || !ok_all || o.contains_key("oneOf") || o.contains_key("not") {
        push(
            errs,
            path,
            "x-kubernetes-int-or-string allows only anyOf: [{type: integer}, {type: string}] (optionally in allOf)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(v: Value) -> Vec<String> {
        check(&v, "s").into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn untyped_value_is_named_by_path() {
        let p = problems(json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"x": {}}}}}));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("s.properties.spec.properties.x: no `type`"), "{p:?}");
    }

    #[test]
    fn preserve_unknown_and_int_or_string_need_no_type() {
        let ok = json!({"type": "object", "properties": {
            "a": {"x-kubernetes-preserve-unknown-fields": true},
            "b": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}}});
        assert!(problems(ok).is_empty());
    }

    #[test]
    fn forbidden_shapes_are_reported() {
        let p = problems(json!({"type": "object", "properties": {
            "a": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "b": {"type": "array"},
            "c": {"$ref": "#/definitions/x"},
            "d": {"type": "string", "anyOf": [{"type": "string"}]},
            "e": {"type": ["string", "null"]},
            "f": {"type": "object", "anyOf": [{"properties": {"g": {}}}]}}}));
        let want = [
            "s.properties.a: `properties` and `additionalProperties` are mutually exclusive",
            "s.properties.b: `type: array` needs `items`",
            "s.properties.c: `$ref` is not a keyword",
            "s.properties.d.anyOf[0]: `type` is not allowed",
            "s.properties.e: `type` must be one of",
            "s.properties.f.anyOf[0].properties.g: not specified outside",
        ];
        for w in want {
            assert!(p.iter().any(|x| x.starts_with(w)), "missing {w:?} in {p:?}");
        }
    }
}

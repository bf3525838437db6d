//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch (built-in kinds only,
//! approximated), and server-side apply (approximated: see `apply`).

use serde_json::{Map, Value};

use crate::error::ApiError;

/// The patch types the server understands, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// Parses a patch body: JSON for every type, YAML (a superset) for apply.
pub fn parse_body(pt: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(e) if pt == PatchType::Apply => {
            let text =
                std::str::from_utf8(body).map_err(|_| ApiError::bad_request("error decoding YAML: not UTF-8"))?;
            serde_yaml_ng::from_str(text)
                .map_err(|e2| ApiError::bad_request(format!("error decoding YAML: {e2} (as JSON: {e})")))
        }
        Err(e) => Err(ApiError::bad_request(format!("error decoding patch: {e}"))),
    }
}

/// Applies a merge, JSON or strategic patch to `doc`.
pub fn apply_patch(pt: PatchType, doc: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut out = doc.clone();
    match pt {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: a merge patch must be a JSON object",
                ));
            }
            json_patch::merge(&mut out, patch);
        }
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: a strategic merge patch must be a JSON object",
                ));
            }
            strategic_merge(&mut out, patch);
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(&mut out, &ops).map_err(|e| {
                ApiError::invalid_patch(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
        }
        PatchType::Apply => return Err(ApiError::internal("apply is not a plain patch")),
    }
    Ok(out)
}

/// The merge key of a list field of the built-in kinds (`containers` merge by `name`, ...).
fn merge_key(field: &str, item: &Value) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "readinessGates" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "conditions" => Some("type"),
        "ports" if item.get("containerPort").is_some() => Some("containerPort"),
        "ports" if item.get("port").is_some() => Some("port"),
        _ => None,
    }
}

/// Strategic merge patch, simplified: a merge patch in which lists of the well-known fields (containers, env,
/// volumes, ports, conditions, ...) merge element-wise by their merge key, `$patch: delete|replace` works on maps
/// and list elements, and the other directives (`$setElementOrder`, `$retainKeys`, `$deleteFromPrimitiveList`)
/// are dropped. The real server reads merge keys from the Go types of every kind.
pub fn strategic_merge(doc: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *doc = patch.clone();
        return;
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *doc = Value::Object(strip_directives(p));
            return;
        }
        Some("delete") => {
            *doc = Value::Null;
            return;
        }
        _ => {}
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Some(d) = doc.as_object_mut() else { return };
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                d.remove(k);
            }
            Value::Array(items) if items.first().is_some_and(|i| merge_key(k, i).is_some()) => {
                let existing = d.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
                d.insert(k.clone(), Value::Array(merge_list(k, existing, items)));
            }
            Value::Object(_) => {
                let entry = d.entry(k.clone()).or_insert(Value::Null);
                strategic_merge(entry, v);
                if entry.is_null() {
                    d.remove(k);
                }
            }
            other => {
                d.insert(k.clone(), other.clone());
            }
        }
    }
}

fn merge_list(field: &str, mut existing: Vec<Value>, patch: &[Value]) -> Vec<Value> {
    for item in patch {
        let Some(key) = merge_key(field, item) else { continue };
        let id = item.get(key).cloned();
        let pos = existing.iter().position(|e| e.get(key) == id.as_ref());
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (Some(i), false) => strategic_merge(&mut existing[i], item),
            (None, true) => {}
            (None, false) => {
                let mut fresh = Value::Object(Map::new());
                strategic_merge(&mut fresh, item);
                existing.push(fresh);
            }
        }
    }
    existing
}

fn strip_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Server-side apply, simplified: the applied configuration is merged into the object (maps recursively, lists
/// and scalars replaced), and the fields this manager applied last time but no longer does are removed. The
/// real server tracks the owner of every field (`managedFields`), merges lists by their keys and reports a
/// conflict when another manager owns a field the apply changes; none of that is modelled.
pub fn server_side_apply(doc: &Value, applied: &Value, previous: Option<&Value>) -> Value {
    let mut out = doc.clone();
    if let Some(prev) = previous {
        remove_dropped(&mut out, prev, applied);
    }
    merge_into(&mut out, applied);
    out
}

/// Removes from `doc` the fields that are in `prev` but not in `now`; a map left empty goes too.
fn remove_dropped(doc: &mut Value, prev: &Value, now: &Value) {
    let (Some(d), Some(p)) = (doc.as_object_mut(), prev.as_object()) else {
        return;
    };
    for (k, pv) in p {
        match now.get(k) {
            None if pv.is_object() => {
                if let Some(dv) = d.get_mut(k) {
                    remove_dropped(dv, pv, &Value::Object(Map::new()));
                    if dv.as_object().is_some_and(Map::is_empty) {
                        d.remove(k);
                    }
                }
            }
            None => {
                d.remove(k);
            }
            Some(nv) if pv.is_object() && nv.is_object() => {
                if let Some(dv) = d.get_mut(k) {
                    remove_dropped(dv, pv, nv);
                }
            }
            Some(_) => {}
        }
    }
}

fn merge_into(doc: &mut Value, applied: &Value) {
    match (doc.as_object_mut(), applied.as_object()) {
        (Some(d), Some(a)) => {
            for (k, v) in a {
                match d.get_mut(k) {
                    Some(dv) if dv.is_object() && v.is_object() => merge_into(dv, v),
                    _ => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => *doc = applied.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_and_json_patches() {
        let doc = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        let m = apply_patch(PatchType::Merge, &doc, &json!({"b": {"c": null, "e": 4}, "l": [3]})).expect("merge");
        assert_eq!(m, json!({"a": 1, "b": {"d": 3, "e": 4}, "l": [3]}));
        let j = apply_patch(
            PatchType::Json,
            &doc,
            &json!([{"op": "replace", "path": "/a", "value": 5}, {"op": "add", "path": "/l/-", "value": 9}]),
        )
        .expect("json");
        assert_eq!(j["a"], 5);
        assert_eq!(j["l"], json!([1, 2, 9]));
        let e = apply_patch(
            PatchType::Json,
            &doc,
            &json!([{"op": "test", "path": "/a", "value": 2}]),
        )
        .expect_err("test fails");
        assert_eq!(e.code, 422);
        assert_eq!(
            apply_patch(PatchType::Json, &doc, &json!({"op": "x"}))
                .expect_err("not a list")
                .code,
            400
        );
    }

    #[test]
    fn strategic_merge_by_key() {
        let mut doc = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        strategic_merge(
            &mut doc,
            &json!({"spec": {"$setElementOrder/containers": [{"name": "a"}],
            "containers": [{"name": "a", "image": "z"}, {"name": "b", "$patch": "delete"}, {"name": "c", "image": "w"}]}}),
        );
        assert_eq!(
            doc,
            json!({"spec": {"containers": [{"name": "a", "image": "z"}, {"name": "c", "image": "w"}]}})
        );
    }

    #[test]
    fn apply_removes_what_the_manager_dropped() {
        let doc = json!({"metadata": {"name": "x", "labels": {"a": "1", "other": "keep"}}, "spec": {"p": 1, "q": 2}});
        let prev = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"p": 1, "q": 2}});
        let now = json!({"metadata": {"name": "x"}, "spec": {"p": 3}});
        assert_eq!(
            server_side_apply(&doc, &now, Some(&prev)),
            json!({"metadata": {"name": "x", "labels": {"other": "keep"}}, "spec": {"p": 3}})
        );
    }

    #[test]
    fn apply_bodies_may_be_yaml() {
        let v = parse_body(PatchType::Apply, b"apiVersion: v1\nkind: ConfigMap\n").expect("yaml");
        assert_eq!(v["kind"], "ConfigMap");
        assert_eq!(
            parse_body(PatchType::Merge, b"kind: x").expect_err("json only").code,
            400
        );
    }
}

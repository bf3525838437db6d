//! `as=Table` responses (what `kubectl get` asks for): Name plus the CRD version's `additionalPrinterColumns`
//! (simple JSONPaths: `.a.b`, `.a[0]`, `.a[?(@.k=="v")].b`), or Age for types without columns; Pods get kubectl's
//! usual Ready/Status/Restarts/Age. Dates are shown as ages, as the real server renders them.

use serde_json::{Value, json};

use crate::meta;
use crate::resources::{PrinterColumn, ResourceType};

fn age_column() -> PrinterColumn {
    PrinterColumn {
        name: "Age".to_owned(),
        type_: "date".to_owned(),
        format: String::new(),
        description: "CreationTimestamp is a timestamp representing the server time when this object was created."
            .to_owned(),
        priority: 0,
        json_path: ".metadata.creationTimestamp".to_owned(),
    }
}

fn columns(t: &ResourceType, version: &str) -> Vec<PrinterColumn> {
    match t.columns.get(version) {
        Some(cols) if !cols.is_empty() => cols.clone(),
        _ => vec![age_column()],
    }
}

/// Evaluates the simple JSONPath subset CRD printer columns use; `None` when nothing is there.
pub fn json_path<'a>(o: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = o;
    let mut rest = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            v = v.get(&r[..end])?;
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (key, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                v = v
                    .as_array()?
                    .iter()
                    .find(|e| e.get(key.trim()).and_then(Value::as_str) == Some(want))?;
            } else {
                v = v.get(inner.parse::<usize>().ok()?)?;
            }
        } else {
            return None;
        }
    }
    (!v.is_null()).then_some(v)
}

fn cell(col: &PrinterColumn, o: &Value) -> Value {
    let Some(v) = json_path(o, &col.json_path) else {
        return Value::Null;
    };
    match (col.type_.as_str(), v) {
        ("date", Value::String(s)) => json!(meta::human_age(s)),
        ("integer", Value::Number(n)) => json!(n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))),
        ("number", Value::Number(n)) => json!(n.as_f64()),
        ("boolean", Value::Bool(b)) => json!(b),
        ("string", Value::String(s)) => json!(s),
        ("string", other) => json!(other.to_string()),
        _ => Value::Null,
    }
}

fn pod_cells(o: &Value) -> Vec<Value> {
    let statuses = o["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
    let total = o["spec"]["containers"].as_array().map(Vec::len).unwrap_or(0);
    let ready = statuses.iter().filter(|s| s["ready"] == true).count();
    let restarts: i64 = statuses.iter().filter_map(|s| s["restartCount"].as_i64()).sum();
    let status = o["status"]["reason"]
        .as_str()
        .or(o["status"]["phase"].as_str())
        .unwrap_or("Unknown");
    vec![json!(format!("{ready}/{total}")), json!(status), json!(restarts)]
}

fn definition(name: &str, type_: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({ "name": name, "type": type_, "format": format, "description": description, "priority": priority })
}

/// A `meta.k8s.io/v1` Table of `objects`; `include` is the `includeObject` option (`None`, `Metadata`, `Object`).
pub fn table(t: &ResourceType, version: &str, objects: &[Value], list_meta: Value, include: &str) -> Value {
    let pods = t.group.is_empty() && t.plural == "pods";
    let cols = columns(t, version);
    let mut defs = vec![definition(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    )];
    if pods {
        defs.push(definition("Ready", "string", "", "The number of ready containers.", 0));
        defs.push(definition("Status", "string", "", "The pod's phase or reason.", 0));
        defs.push(definition(
            "Restarts",
            "integer",
            "",
            "The number of container restarts.",
            0,
        ));
        let age = age_column();
        defs.push(definition(&age.name, "string", "", &age.description, 0));
    } else {
        defs.extend(
            cols.iter()
                .map(|c| definition(&c.name, &c.type_, &c.format, &c.description, c.priority)),
        );
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            if pods {
                cells.extend(pod_cells(o));
                cells.push(cell(&age_column(), o));
            } else {
                cells.extend(cols.iter().map(|c| cell(c, o)));
            }
            let mut row = json!({ "cells": cells });
            match include {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o["metadata"],
                    })
                }
            }
            row
        })
        .collect();
    json!({ "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": defs, "rows": rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_json_paths() {
        let o = json!({"status": {"state": "Accepted", "n": 3, "conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}, "l": [1, 2]});
        assert_eq!(json_path(&o, ".status.state"), Some(&json!("Accepted")));
        assert_eq!(json_path(&o, ".l[1]"), Some(&json!(2)));
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(json_path(&o, ".status.missing"), None);
        assert_eq!(json_path(&o, "garbage"), None);
    }
}

//! A skeleton of the OpenAPI v3 documents, enough for kubectl: `/openapi/v3` lists the group-versions, and each
//! `/openapi/v3/apis/GROUP/VERSION` has a PATCH operation per resource that names its kind and accepts the
//! `fieldValidation` parameter. That tells kubectl the server validates fields itself, so `kubectl apply` sends
//! `fieldValidation=Strict` instead of validating against schemas it would download (there are none here).
//! Strategic merge patch is not advertised, so kubectl computes those patches from its built-in types.
//! `/openapi/v2` is not served (404); kubectl then falls back as described above.

use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Value, json};

use crate::resources::{Registry, ResourceType, api_version};

fn path_prefix(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the group-versions and where their documents are (the hash changes when they do).
pub fn root(reg: &Registry) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, vs) in reg.groups() {
        for v in vs {
            let prefix = path_prefix(&g, &v);
            let mut h = DefaultHasher::new();
            group_version(reg, &g, &v).map(|d| d.to_string()).hash(&mut h);
            let url = format!("/openapi/v3/{prefix}?hash={:016X}", h.finish());
            paths.insert(prefix, json!({ "serverRelativeURL": url }));
        }
    }
    json!({ "paths": paths })
}

fn operations(t: &ResourceType, version: &str) -> Value {
    let gvk = json!({ "group": t.group, "version": version, "kind": t.kind });
    let param =
        |name: &str| json!({ "name": name, "in": "query", "schema": { "type": "string", "uniqueItems": true } });
    let body = json!({ "content": {
        "application/apply-patch+yaml": { "schema": { "type": "object" } },
        "application/json-patch+json": { "schema": { "type": "object" } },
        "application/merge-patch+json": { "schema": { "type": "object" } },
    } });
    let op = |verb: &str, extra: Value| {
        let mut o = json!({
            "operationId": format!("{verb}{}", t.kind),
            "x-kubernetes-action": verb,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation")],
            "responses": { "200": { "description": "OK" } },
        });
        if let (Some(o), Some(e)) = (o.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        o
    };
    json!({
        "get": op("get", json!({ "parameters": [] })),
        "put": op("put", json!({})),
        "patch": op("patch", json!({ "requestBody": body })),
        "delete": op("delete", json!({ "parameters": [param("dryRun")] })),
    })
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/GROUP/VERSION`.
pub fn group_version(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = reg.in_group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    for t in types {
        let base = format!("/{}", path_prefix(group, version));
        let item = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{base}/{}/{{name}}", t.plural)
        };
        paths.insert(item, operations(t, version));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes (l7mp fake API server)", "version": api_version(group, version) },
        "paths": paths,
        "components": { "schemas": {} },
    }))
}

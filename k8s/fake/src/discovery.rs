//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/GROUP`, and the APIResourceLists of `/api/v1` and
//! `/apis/GROUP/VERSION`, built from the registry (so a new CRD shows up at once). Only the legacy (v1) forms
//! are served: clients that ask for aggregated discovery (`as=APIGroupDiscoveryList`) fall back to them when the
//! response's Content-Type is plain `application/json`, as kubectl does.

use serde_json::{Value, json};

use crate::resources::{Registry, ResourceType, api_version};

/// The Kubernetes version the fake claims (a minor kubectl 1.32..1.34 accepts without a skew warning).
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-l7mp-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
    })
}

fn group_entry(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({ "groupVersion": api_version(name, v), "version": v }))
        .collect();
    json!({ "name": name, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null) })
}

/// `/apis`: every named group (not the core group).
pub fn group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_entry(g, vs))
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `/apis/GROUP`, if the group exists.
pub fn group(reg: &Registry, name: &str) -> Option<Value> {
    let (g, vs) = reg.groups().into_iter().find(|(g, _)| g == name && !g.is_empty())?;
    let mut e = group_entry(&g, &vs);
    e["kind"] = json!("APIGroup");
    e["apiVersion"] = json!("v1");
    Some(e)
}

fn resource_entry(t: &ResourceType) -> Value {
    let verbs: Vec<&str> = ResourceType::VERBS
        .iter()
        .copied()
        .filter(|v| !(t.group.is_empty() && t.plural == "namespaces" && *v == "deletecollection"))
        .collect();
    let mut e = json!({
        "name": t.plural,
        "singularName": t.singular,
        "namespaced": t.namespaced,
        "kind": t.kind,
        "verbs": verbs,
    });
    if !t.short_names.is_empty() {
        e["shortNames"] = json!(t.short_names);
    }
    if !t.categories.is_empty() {
        e["categories"] = json!(t.categories);
    }
    e
}

/// `/api/v1` or `/apis/GROUP/VERSION`, if the group serves the version.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = reg.in_group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for t in types {
        resources.push(resource_entry(t));
        if t.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    Some(
        json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version(group, version), "resources": resources }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_and_groups() {
        let reg = Registry::default();
        let core = resource_list(&reg, "", "v1").expect("core");
        let names: Vec<&str> = core["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(names.contains(&"pods") && names.contains(&"pods/status") && names.contains(&"namespaces"));
        let groups = group_list(&reg);
        let gnames: Vec<&str> = groups["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["name"].as_str())
            .collect();
        assert_eq!(
            gnames,
            ["discovery.k8s.io", "coordination.k8s.io", "apiextensions.k8s.io"]
        );
        assert_eq!(
            group(&reg, "coordination.k8s.io").expect("group")["preferredVersion"]["groupVersion"],
            "coordination.k8s.io/v1"
        );
        assert!(group(&reg, "nope.io").is_none());
        assert!(resource_list(&reg, "coordination.k8s.io", "v2").is_none());
    }
}

//! What the real server's per-kind strategies do on create and update that clients can observe: Namespace
//! finalizers, phase and name label; Pod phase; Service ClusterIP and defaults; and for a
//! CustomResourceDefinition, validation, the Established status and the type it defines.

use serde_json::{Value, json};

use crate::meta::{self, NameRule};
use crate::resources::{self, ResourceType};
use crate::store::Store;

/// The name rule of a type.
pub fn name_rule(t: &ResourceType) -> NameRule {
    match (t.group.as_str(), t.plural.as_str()) {
        ("", "namespaces") => NameRule::Label,
        ("", "services") => NameRule::Dns1035,
        _ => NameRule::Subdomain,
    }
}

/// Applies a kind's defaults to a new object (`old` is `None`) or an update. Returns the type a CRD defines, or
/// the invalid fields (path, problem).
pub fn admit(
    store: &mut Store,
    t: &ResourceType,
    o: &mut Value,
    old: Option<&Value>,
) -> Result<Option<ResourceType>, Vec<(String, String)>> {
    if !t.builtin {
        return Ok(None);
    }
    match (t.group.as_str(), t.plural.as_str()) {
        ("", "namespaces") => {
            let name = o["metadata"]["name"].clone();
            if !o["metadata"]["labels"].is_object() {
                o["metadata"]["labels"] = json!({});
            }
            o["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            if old.is_none() {
                o["spec"] = json!({ "finalizers": ["kubernetes"] });
                o["status"] = json!({ "phase": "Active" });
            }
        }
        ("", "pods") if old.is_none() => {
            o["status"] = json!({ "phase": "Pending", "qosClass": "BestEffort" });
            let spec = &mut o["spec"];
            for (field, value) in [
                ("restartPolicy", json!("Always")),
                ("dnsPolicy", json!("ClusterFirst")),
                ("schedulerName", json!("default-scheduler")),
                ("terminationGracePeriodSeconds", json!(30)),
            ] {
                if spec.is_object() && spec.get(field).is_none() {
                    spec[field] = value;
                }
            }
        }
        ("", "services") => service_defaults(store, o, old),
        ("apiextensions.k8s.io", "customresourcedefinitions") => return crd_status(o, old).map(Some),
        _ => {}
    }
    Ok(None)
}

fn service_defaults(store: &mut Store, o: &mut Value, old: Option<&Value>) {
    if !o["spec"].is_object() {
        o["spec"] = json!({});
    }
    let spec = &mut o["spec"];
    if spec["type"].as_str().is_none() {
        spec["type"] = json!("ClusterIP");
    }
    let external = spec["type"] == "ExternalName";
    if let Some(old) = old {
        for f in ["clusterIP", "clusterIPs"] {
            if spec[f].is_null() && !old["spec"][f].is_null() {
                spec[f] = old["spec"][f].clone();
            }
        }
    }
    if !external && spec["clusterIP"].as_str().is_none_or(str::is_empty) {
        let n = store.next_cluster_ip;
        store.next_cluster_ip += 1;
        spec["clusterIP"] = json!(format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff));
    }
    if !external && spec["clusterIPs"].is_null() {
        spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
    }
    for (field, value) in [
        ("sessionAffinity", json!("None")),
        ("ipFamilies", json!(["IPv4"])),
        ("ipFamilyPolicy", json!("SingleStack")),
        ("internalTrafficPolicy", json!("Cluster")),
    ] {
        if !external && spec[field].is_null() {
            spec[field] = value;
        }
    }
    if let Some(ports) = spec["ports"].as_array_mut() {
        for p in ports {
            if p["protocol"].is_null() {
                p["protocol"] = json!("TCP");
            }
            if p["targetPort"].is_null() {
                p["targetPort"] = p["port"].clone();
            }
        }
    }
    if old.is_none() {
        o["status"] = json!({ "loadBalancer": {} });
    }
}

/// Validates a CRD and sets what its controllers would: defaulted names, `status.acceptedNames`, the
/// NamesAccepted and Established conditions, `storedVersions`.
fn crd_status(o: &mut Value, old: Option<&Value>) -> Result<ResourceType, Vec<(String, String)>> {
    let t = resources::from_crd(o)?;
    let names = &mut o["spec"]["names"];
    if names["singular"].is_null() {
        names["singular"] = json!(t.singular);
    }
    if names["listKind"].is_null() {
        names["listKind"] = json!(format!("{}List", t.kind));
    }
    let accepted = names.clone();
    let old_status = old.map(|o| o["status"].clone()).unwrap_or(Value::Null);
    let since = |ty: &str| {
        old_status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == ty && c["status"] == "True"))
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
            .unwrap_or_else(meta::now)
    };
    let mut stored: Vec<Value> = old_status["storedVersions"].as_array().cloned().unwrap_or_default();
    let storage = json!(t.storage_version());
    if !stored.contains(&storage) {
        stored.push(storage);
    }
    o["status"] = json!({
        "acceptedNames": accepted,
        "conditions": [
            { "type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": since("NamesAccepted") },
            { "type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": since("Established") },
        ],
        "storedVersions": stored,
    });
    Ok(t)
}

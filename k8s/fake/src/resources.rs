//! The resource types the fake serves: the built-in ones and those the stored CRDs define.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// Group, version and resource (plural): how a request names a collection. The core group is `""`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gvr {
    pub group: String,
    pub version: String,
    pub resource: String,
}

impl Gvr {
    pub fn new(group: &str, version: &str, resource: &str) -> Self {
        Gvr {
            group: group.to_owned(),
            version: version.to_owned(),
            resource: resource.to_owned(),
        }
    }

    /// A core (`/api/v1`) resource: `Gvr::core("pods")`.
    pub fn core(resource: &str) -> Self {
        Self::new("", "v1", resource)
    }

    /// `v1` or `l7mp.io/v1`.
    pub fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }
}

impl fmt::Display for Gvr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.api_version(), self.resource)
    }
}

pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// Where a type's objects live in the store: group and plural (all versions share the objects).
pub type TypeKey = (String, String);

/// An `additionalPrinterColumns` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// One resource type, as discovery describes it and as the handlers treat it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    pub group: String,
    /// Served versions, the preferred (storage) one first.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `/status` subresource: writes to the object leave `.status` alone and the reverse.
    pub status_subresource: bool,
    /// Built in (strategic merge patch accepted) rather than defined by a CRD.
    pub builtin: bool,
    /// Printer columns per served version (CRDs); empty: Name and Age.
    pub columns: BTreeMap<String, Vec<PrinterColumn>>,
    /// The fields a field selector may use besides `metadata.name` and `metadata.namespace`.
    pub selectable_fields: Vec<&'static str>,
    /// The storage version's `openAPIV3Schema` (custom resources): unknown fields are pruned, the rest validated.
    pub schema: Option<Value>,
    /// DELETE answers with the object (else with a `Success` Status), as `ReturnDeletedObject` in the server.
    pub returns_deleted: bool,
}

impl ResourceType {
    pub fn key(&self) -> TypeKey {
        (self.group.clone(), self.plural.clone())
    }

    pub fn storage_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    pub const VERBS: [&'static str; 8] = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ];

    fn builtin(group: &str, plural: &str, kind: &str, namespaced: bool, short: &[&str]) -> Self {
        ResourceType {
            group: group.to_owned(),
            versions: vec!["v1".to_owned()],
            plural: plural.to_owned(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.to_owned(),
            namespaced,
            short_names: short.iter().map(|s| (*s).to_owned()).collect(),
            categories: Vec::new(),
            status_subresource: false,
            builtin: true,
            columns: BTreeMap::new(),
            selectable_fields: Vec::new(),
            schema: None,
            returns_deleted: false,
        }
    }
}

/// The built-in types: core/v1 namespaces, pods, services, configmaps, secrets; discovery.k8s.io/v1
/// endpointslices; coordination.k8s.io/v1 leases; apiextensions.k8s.io/v1 customresourcedefinitions.
pub fn builtins() -> Vec<ResourceType> {
    let mut namespaces = ResourceType::builtin("", "namespaces", "Namespace", false, &["ns"]);
    namespaces.status_subresource = true;
    namespaces.selectable_fields = vec!["status.phase"];
    let mut pods = ResourceType::builtin("", "pods", "Pod", true, &["po"]);
    pods.status_subresource = true;
    pods.categories = vec!["all".to_owned()];
    pods.selectable_fields = vec![
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ];
    let mut services = ResourceType::builtin("", "services", "Service", true, &["svc"]);
    services.status_subresource = true;
    services.categories = vec!["all".to_owned()];
    let mut secrets = ResourceType::builtin("", "secrets", "Secret", true, &[]);
    secrets.selectable_fields = vec!["type"];
    let mut crds = ResourceType::builtin(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
    );
    crds.status_subresource = true;
    for t in [&mut namespaces, &mut pods, &mut services, &mut crds] {
        t.returns_deleted = true;
    }
    vec![
        namespaces,
        pods,
        services,
        ResourceType::builtin("", "configmaps", "ConfigMap", true, &["cm"]),
        secrets,
        ResourceType::builtin("discovery.k8s.io", "endpointslices", "EndpointSlice", true, &[]),
        ResourceType::builtin("coordination.k8s.io", "leases", "Lease", true, &[]),
        crds,
    ]
}

/// The types by group and plural, built-ins first, then CRD-defined ones in the order they were registered.
#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { types: builtins() }
    }
}

impl Registry {
    /// The type serving `gvr`, if its version is served.
    pub fn find(&self, gvr: &Gvr) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == gvr.group && t.plural == gvr.resource && t.serves(&gvr.version))
    }

    pub fn by_key(&self, key: &TypeKey) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.group == key.0 && t.plural == key.1)
    }

    /// Adds or replaces a (CRD-defined) type; built-ins cannot be replaced.
    pub fn register(&mut self, t: ResourceType) {
        match self
            .types
            .iter_mut()
            .find(|x| x.group == t.group && x.plural == t.plural)
        {
            Some(x) if x.builtin => {}
            Some(x) => *x = t,
            None => self.types.push(t),
        }
    }

    pub fn unregister(&mut self, key: &TypeKey) {
        self.types.retain(|t| t.builtin || t.key() != *key);
    }

    /// Groups with their versions, in registration order (core `""` included), for discovery.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for t in &self.types {
            let entry = match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some(e) => e,
                None => {
                    out.push((t.group.clone(), Vec::new()));
                    let last = out.len() - 1;
                    &mut out[last]
                }
            };
            for v in &t.versions {
                if !entry.1.contains(v) {
                    entry.1.push(v.clone());
                }
            }
        }
        out
    }

    /// The types of one group/version, for `/api/v1` and `/apis/GROUP/VERSION`.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<&ResourceType> {
        self.types
            .iter()
            .filter(|t| t.group == group && t.serves(version))
            .collect()
    }
}

/// The type a `CustomResourceDefinition` object defines, or why it cannot (each problem with its field path).
pub fn from_crd(crd: &Value) -> Result<ResourceType, Vec<(String, String)>> {
    let mut errs = Vec::new();
    let spec = &crd["spec"];
    let text = |v: &Value, field: &str, errs: &mut Vec<(String, String)>| -> String {
        match v.as_str() {
            Some(s) if !s.is_empty() => s.to_owned(),
            _ => {
                errs.push((field.to_owned(), "Required value".to_owned()));
                String::new()
            }
        }
    };
    let group = text(&spec["group"], "spec.group", &mut errs);
    let names = &spec["names"];
    let plural = text(&names["plural"], "spec.names.plural", &mut errs);
    let kind = text(&names["kind"], "spec.names.kind", &mut errs);
    let singular = names["singular"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => {
            errs.push((
                "spec.scope".to_owned(),
                "Unsupported value: supported values: \"Cluster\", \"Namespaced\"".to_owned(),
            ));
            true
        }
    };
    let expected = format!("{plural}.{group}");
    match crd["metadata"]["name"].as_str() {
        Some(n) if n == expected => {}
        _ => errs.push((
            "metadata.name".to_owned(),
            format!("Invalid value: must be spec.names.plural+\".\"+spec.group ({expected:?})"),
        )),
    }
    let mut versions = Vec::new();
    let mut storage = Vec::new();
    let mut status_subresource = false;
    let mut schema = None;
    let mut columns = BTreeMap::new();
    match spec["versions"].as_array() {
        Some(vs) if !vs.is_empty() => {
            for (i, v) in vs.iter().enumerate() {
                let name = text(&v["name"], &format!("spec.versions[{i}].name"), &mut errs);
                if v["storage"].as_bool() == Some(true) {
                    storage.push(name.clone());
                    schema = v["schema"]["openAPIV3Schema"]
                        .as_object()
                        .map(|s| Value::Object(s.clone()));
                }
                if v["served"].as_bool() == Some(true) {
                    versions.push(name.clone());
                }
                if v["subresources"]["status"].is_object() {
                    status_subresource = true;
                }
                columns.insert(name, printer_columns(&v["additionalPrinterColumns"]));
            }
        }
        _ => errs.push((
            "spec.versions".to_owned(),
            "Invalid value: must have exactly one version marked as storage version".to_owned(),
        )),
    }
    if storage.len() != 1 && !errs.iter().any(|(f, _)| f == "spec.versions") {
        errs.push((
            "spec.versions".to_owned(),
            "Invalid value: must have exactly one version marked as storage version".to_owned(),
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    // The storage version first, then the other served versions in the CRD's order.
    versions.sort_by_key(|v| !storage.contains(v));
    Ok(ResourceType {
        group,
        versions,
        plural,
        singular,
        kind,
        namespaced,
        short_names: strings(&names["shortNames"]),
        categories: strings(&names["categories"]),
        status_subresource,
        builtin: false,
        columns,
        selectable_fields: Vec::new(),
        schema,
        returns_deleted: true,
    })
}

fn printer_columns(v: &Value) -> Vec<PrinterColumn> {
    let s = |c: &Value, k: &str| c[k].as_str().unwrap_or_default().to_owned();
    v.as_array()
        .map(|cols| {
            cols.iter()
                .map(|c| PrinterColumn {
                    name: s(c, "name"),
                    type_: s(c, "type"),
                    format: s(c, "format"),
                    description: s(c, "description"),
                    priority: c["priority"].as_i64().unwrap_or(0),
                    json_path: s(c, "jsonPath"),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_crd_defines_a_type() {
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                     "additionalPrinterColumns": [{"name": "State", "type": "string", "jsonPath": ".status.state"}]}
                ]}
        });
        let t = from_crd(&crd).expect("valid");
        assert_eq!(t.versions, ["v1", "v1beta1"]);
        assert_eq!(t.singular, "widget");
        assert!(t.status_subresource && t.namespaced);
        assert_eq!(t.columns["v1"][0].json_path, ".status.state");
    }

    #[test]
    fn a_bad_crd_names_its_fields() {
        let crd = json!({"metadata": {"name": "x"}, "spec": {"scope": "Everywhere", "names": {}}});
        let errs = from_crd(&crd).expect_err("invalid");
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.group",
                "spec.names.plural",
                "spec.names.kind",
                "spec.scope",
                "metadata.name",
                "spec.versions"
            ]
        );
    }

    #[test]
    fn groups_list_versions_once() {
        let r = Registry::default();
        let g = r.groups();
        assert_eq!(g[0], ("".to_owned(), vec!["v1".to_owned()]));
        assert!(g.iter().any(|(n, _)| n == "coordination.k8s.io"));
        assert!(r.find(&Gvr::core("pods")).is_some_and(|t| t.namespaced));
        assert!(r.find(&Gvr::new("", "v2", "pods")).is_none());
    }
}

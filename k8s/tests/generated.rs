//! The checked-in CRDs are current, structural, and name what the issue asks for.

mod common;

use l7mp_k8s::generate::{self, REGENERATE};
use l7mp_k8s::structural;

#[test]
fn checked_in_crds_are_fresh() {
    let dir = common::root().join("manifests/crds");
    let stale = generate::check(&dir).expect("read manifests/crds");
    assert!(
        stale.is_empty(),
        "manifests/crds is stale:\n  {}\nregenerate with: {REGENERATE}",
        stale.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn check_reports_a_changed_a_missing_and_an_extra_file() {
    let dir = std::env::temp_dir().join(format!("l7mp-crds-{}", std::process::id()));
    generate::write(&dir).expect("write");
    assert!(generate::check(&dir).expect("check").is_empty());
    std::fs::write(dir.join("l7mp.io_routes.yaml"), "x").expect("write");
    std::fs::remove_file(dir.join("l7mp.io_rules.yaml")).expect("remove");
    std::fs::write(dir.join("old.yaml"), "x").expect("write");
    let stale: Vec<String> = generate::check(&dir)
        .expect("check")
        .iter()
        .map(ToString::to_string)
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        stale,
        [
            "l7mp.io_routes.yaml: differs from the generated file",
            "l7mp.io_rules.yaml: missing",
            "old.yaml: not generated (remove it)"
        ]
    );
}

#[test]
fn schemas_are_structural() {
    let mut all = Vec::new();
    for (kind, schema) in common::schemas() {
        all.extend(structural::check(&schema, &format!("{kind}.openAPIV3Schema")));
    }
    assert!(
        all.is_empty(),
        "not structural:\n{}",
        all.iter().map(|e| format!("  {e}\n")).collect::<String>()
    );
}

#[test]
fn names_status_subresource_and_printer_columns() {
    let want = [
        ("VirtualService", "virtualservices", Some("vsvc")),
        ("Target", "targets", Some("tr")),
        ("Route", "routes", None),
        ("Rule", "rules", None),
    ];
    let crds = l7mp_k8s::crds();
    assert_eq!(crds.len(), want.len());
    for (crd, (kind, plural, short)) in crds.iter().zip(want) {
        let s = &crd.spec;
        assert_eq!((s.group.as_str(), s.scope.as_str()), ("l7mp.io", "Namespaced"));
        assert_eq!((s.names.kind.as_str(), s.names.plural.as_str()), (kind, plural));
        assert_eq!(
            s.names.short_names.clone().unwrap_or_default(),
            short.into_iter().map(String::from).collect::<Vec<_>>()
        );
        assert_eq!(s.names.categories.clone().unwrap_or_default(), ["l7mp"]);
        assert_eq!(s.versions.len(), 1);
        let v = &s.versions[0];
        assert!(v.name == "v1" && v.served && v.storage);
        assert!(
            v.subresources.as_ref().and_then(|r| r.status.as_ref()).is_some(),
            "{kind}: no status subresource"
        );
        // Every printer column points at a field the schema has (or at metadata).
        let schema =
            serde_json::to_value(v.schema.as_ref().and_then(|x| x.open_api_v3_schema.as_ref())).expect("schema");
        let cols = v.additional_printer_columns.clone().unwrap_or_default();
        let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        assert!(names.contains(&"State") && names.contains(&"Age"), "{kind}: {names:?}");
        for c in &cols {
            if c.json_path.starts_with(".metadata.") {
                continue;
            }
            let mut node = &schema;
            for seg in c.json_path.trim_start_matches('.').split('.') {
                node = &node["properties"][seg];
            }
            assert!(
                node.is_object(),
                "{kind}: printer column {} names a missing field {}",
                c.name,
                c.json_path
            );
        }
    }
}

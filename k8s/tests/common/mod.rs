//! Shared by the integration tests: the workspace root, the CRD schemas, and the example objects.
#![allow(dead_code)]

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("..")
}

/// `(kind, openAPIV3Schema)` of each CRD.
pub fn schemas() -> Vec<(String, Value)> {
    l7mp_k8s::crds()
        .into_iter()
        .map(|crd| {
            let kind = crd.spec.names.kind.clone();
            let v = serde_json::to_value(&crd).expect("CRD serializes");
            let schema = v["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
            assert!(schema.is_object(), "{kind}: no openAPIV3Schema");
            (kind, schema)
        })
        .collect()
}

pub fn schema_of(kind: &str) -> Value {
    schemas()
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

fn documents(text: &str, source: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{source}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

const KINDS: [&str; 4] = ["VirtualService", "Target", "Route", "Rule"];

fn is_l7mp(v: &Value) -> bool {
    v["apiVersion"] == "l7mp.io/v1" && v["kind"].as_str().is_some_and(|k| KINDS.contains(&k))
}

/// Every l7mp.io/v1 object in `examples/mesh/*.yaml`, with where it came from.
pub fn mesh_examples() -> Vec<(String, Value)> {
    let mut paths: Vec<_> = ["examples/mesh", "examples/grpc"]
        .into_iter()
        .flat_map(|d| std::fs::read_dir(root().join(d)).unwrap_or_else(|e| panic!("{d}: {e}")))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).expect("read example");
        let rel = p.strip_prefix(root()).unwrap_or(&p);
        let name = rel.display().to_string();
        for (i, v) in documents(&text, &name).into_iter().enumerate() {
            if is_l7mp(&v) {
                out.push((format!("{name}[{i}]"), v));
            }
        }
    }
    out
}

/// Every l7mp.io/v1 object in the ```yaml blocks of docs/resources.md.
pub fn doc_examples() -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(root().join("docs/resources.md")).expect("docs/resources.md");
    let mut out = Vec::new();
    let mut block: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match (&mut block, line.trim_start()) {
            (None, "```yaml") => block = Some((n + 1, String::new())),
            (Some((start, body)), "```") => {
                let source = format!("docs/resources.md:{start}");
                for v in documents(body, &source) {
                    if is_l7mp(&v) {
                        out.push((source.clone(), v));
                    }
                }
                block = None;
            }
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

//! Shared by the integration tests: the repository's CRDs and example objects, and error helpers.
#![allow(dead_code)]

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../..")
}

/// The YAML documents of a file, as JSON values.
pub fn documents(path: &PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// The CRD files in manifests/crds/ (not the kustomization).
pub fn crd_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("manifests/crds"))
        .expect("manifests/crds")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("l7mp.io_"))
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "the four l7mp CRDs");
    files
}

pub fn crds() -> Vec<Value> {
    crd_files().iter().flat_map(documents).collect()
}

/// The objects of examples/mesh/udp-to-tcp.yaml: Targets, a Route, VirtualServices and a Rule.
pub fn mesh_example() -> Vec<Value> {
    documents(&root().join("examples/mesh/udp-to-tcp.yaml"))
}

/// The HTTP code of a kube API error.
pub fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

pub fn reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.reason.clone(),
        other => format!("not an API error: {other}"),
    }
}

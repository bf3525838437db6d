//! The fake Kubernetes API server (`l7mp-kube-fake`) with the l7mp CRDs installed, for the kubernetes store's tests.

use std::sync::Arc;
use std::time::Duration;

use l7mp_control::store::conformance::NAMESPACES;
use l7mp_control::store::{KubernetesStore, Store};
use l7mp_kube_fake::{FakeApiServer, Gvr, Options};
use serde::Deserialize;
use serde_json::Value;

/// The four CRDs of `manifests/crds/`, as JSON.
pub fn crds() -> Vec<Value> {
    let dir = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../manifests/crds");
    let mut out = Vec::new();
    for kind in ["virtualservices", "targets", "routes", "rules"] {
        let path = dir.join(format!("l7mp.io_{kind}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if !v.is_null() {
                out.push(v);
            }
        }
    }
    out
}

/// A fake API server with the CRDs and the conformance suite's namespaces (plus `l7mp-system`), sending
/// bookmarks every `bookmarks`.
pub fn fake(bookmarks: Duration) -> FakeApiServer {
    let mut namespaces: Vec<String> = NAMESPACES.iter().map(|n| n.to_string()).collect();
    namespaces.extend(["kube-system", "kube-public", "kube-node-lease", "l7mp-system"].map(String::from));
    let fake = FakeApiServer::start(Options {
        bookmark_interval: bookmarks,
        namespaces,
        ..Options::default()
    })
    .expect("the fake API server starts");
    let gvr = Gvr::new("apiextensions.k8s.io", "v1", "customresourcedefinitions");
    for crd in crds() {
        fake.create(&gvr, "", crd).expect("a CRD is created");
    }
    fake
}

/// A kubernetes store on `fake` (every namespace).
pub fn store(fake: &FakeApiServer) -> Arc<dyn Store> {
    Arc::new(KubernetesStore::new(fake.client(), None, &fake.url()))
}

/// The GVR of an l7mp kind's plural (`virtualservices`).
pub fn l7mp(plural: &str) -> Gvr {
    Gvr::new("l7mp.io", "v1", plural)
}

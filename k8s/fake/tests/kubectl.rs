//! The fake driven by the real kubectl: apply the l7mp CRDs and the mesh example, get them back (also by the
//! short name `vsvc`, as a Table with the CRD's printer columns, and as YAML), label, server-side apply, delete.
//! Skipped (with a message) when kubectl is not installed, unless `L7MP_REQUIRE_KUBECTL=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use l7mp_kube_fake::{FakeApiServer, Gvr, Options};
use serde_json::Value;

const KUBECTL: &str = "/usr/bin/kubectl";

fn kubectl_available() -> bool {
    if Path::new(KUBECTL).exists() {
        return true;
    }
    assert!(
        std::env::var("L7MP_REQUIRE_KUBECTL").as_deref() != Ok("1"),
        "L7MP_REQUIRE_KUBECTL=1 but {KUBECTL} is missing"
    );
    eprintln!("skipped: {KUBECTL} is not installed (set L7MP_REQUIRE_KUBECTL=1 to make this a failure)");
    false
}

/// kubectl with its own kubeconfig and discovery cache, so nothing leaks between tests or from the user.
struct Kubectl {
    dir: PathBuf,
}

impl Kubectl {
    fn new(fake: &FakeApiServer, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("l7mp-kube-fake-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        fake.write_kubeconfig(dir.join("kubeconfig"))
            .expect("kubeconfig written");
        Kubectl { dir }
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    fn try_run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(KUBECTL)
            .args(args)
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .env("HOME", &self.dir)
            .output()
            .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn run(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.try_run(args);
        assert!(ok, "kubectl {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.run(&a)).expect("kubectl printed JSON")
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn kubectl_apply_get_label_delete() {
    if !kubectl_available() {
        return;
    }
    let fake = FakeApiServer::start(Options::default()).expect("fake starts");
    let k = Kubectl::new(&fake, "crud");
    for f in common::crd_files() {
        let out = k.run(&["apply", "-f", &path(f)]);
        assert!(
            out.contains("customresourcedefinition.apiextensions.k8s.io/") && out.contains("created"),
            "{out}"
        );
    }
    let example = path(common::root().join("examples/mesh/udp-to-tcp.yaml"));
    let out = k.run(&["apply", "-f", &example]);
    assert!(
        out.contains("virtualservice.l7mp.io/udp-gateway created") && out.contains("rule.l7mp.io/tag-internal created"),
        "{out}"
    );
    // Applying again changes nothing.
    let rv = fake.resource_version();
    let out = k.run(&["apply", "-f", &example]);
    assert!(out.contains("virtualservice.l7mp.io/udp-gateway unchanged"), "{out}");
    assert_eq!(fake.resource_version(), rv);

    // By short name, as a Table with the CRD's printer columns.
    let table = k.run(&["get", "vsvc"]);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATE", "AGENTS", "AGE"], "{table}");
    assert!(
        table.contains("udp-gateway") && table.contains("tcp-echo-service"),
        "{table}"
    );
    fake.update(&Gvr::new("l7mp.io", "v1", "virtualservices"), "default",
        serde_json::json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": "udp-gateway"}, "status": {"state": "Accepted", "agents": {"placed": 2, "acked": 2, "nacked": 0}}}), true)
        .expect("status set");
    let row = k.run(&["get", "vsvc", "udp-gateway", "--no-headers"]);
    assert_eq!(
        row.split_whitespace().take(3).collect::<Vec<_>>(),
        ["udp-gateway", "Accepted", "2"],
        "{row}"
    );
    let yaml = k.run(&["get", "virtualservice", "udp-gateway", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: VirtualService") && yaml.contains("port: 9001") && yaml.contains("resourceVersion:"),
        "{yaml}"
    );
    let targets = k.json(&["get", "tr"]);
    let names: Vec<&str> = targets["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["echo", "tcp-backend"]);

    // Label, select by label, unlabel.
    k.run(&["label", "vsvc", "udp-gateway", "team=edge"]);
    let stored = fake
        .get(&Gvr::new("l7mp.io", "v1", "virtualservices"), "default", "udp-gateway")
        .expect("stored");
    assert_eq!(stored["metadata"]["labels"]["team"], "edge");
    let selected = k.run(&["get", "vsvc", "-l", "team=edge", "-o", "name"]);
    assert_eq!(selected.trim(), "virtualservice.l7mp.io/udp-gateway");
    k.run(&["label", "vsvc", "udp-gateway", "team-"]);
    assert!(
        k.run(&["get", "vsvc", "-l", "team=edge", "-o", "name"])
            .trim()
            .is_empty()
    );

    // Errors come back as the server's Status messages.
    let (ok, _, err) = k.try_run(&["get", "vsvc", "missing"]);
    assert!(
        !ok && err.contains("virtualservices.l7mp.io \"missing\" not found"),
        "{err}"
    );

    // Delete by file and by name.
    let out = k.run(&["delete", "-f", &example]);
    assert!(out.contains("virtualservice.l7mp.io \"udp-gateway\" deleted"), "{out}");
    assert!(
        fake.list(&Gvr::new("l7mp.io", "v1", "virtualservices"), None)
            .is_empty()
    );
    k.run(&["delete", "crd", "rules.l7mp.io"]);
    let (ok, _, err) = k.try_run(&["get", "rules.l7mp.io"]);
    assert!(!ok && err.contains("the server doesn't have a resource type"), "{err}");
}

#[test]
fn kubectl_server_side_apply_and_builtins() {
    if !kubectl_available() {
        return;
    }
    let fake = FakeApiServer::start(Options::default()).expect("fake starts");
    let k = Kubectl::new(&fake, "ssa");
    for f in common::crd_files() {
        k.run(&["apply", "--server-side", "-f", &path(f)]);
    }
    let example = path(common::root().join("examples/mesh/websocket-to-unix.yaml"));
    let out = k.run(&["apply", "--server-side", "-f", &example]);
    assert!(out.contains("serverside-applied"), "{out}");
    let applies = fake
        .requests()
        .into_iter()
        .filter(|r| r.content_type.as_deref() == Some("application/apply-patch+yaml"))
        .count();
    assert!(applies >= 3, "kubectl used server-side apply");
    assert!(
        k.run(&["get", "vsvc", "-o", "name"])
            .contains("virtualservice.l7mp.io/")
    );

    // Built-in kinds: a namespace, a pod and a configmap from a manifest, labelled and deleted.
    let manifest = k.dir.join("builtins.yaml");
    std::fs::write(&manifest, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: demo\n  labels: {app: web}\nspec:\n  containers:\n  - name: app\n    image: nginx\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: demo\ndata:\n  a: \"1\"\n").expect("manifest");
    k.run(&["apply", "-f", &path(manifest.clone())]);
    let pods = k.run(&["get", "pods", "-n", "demo"]);
    assert!(pods.contains("web") && pods.contains("Pending"), "{pods}");
    std::fs::write(
        &manifest,
        std::fs::read_to_string(&manifest)
            .expect("read")
            .replace("a: \"1\"", "a: \"2\""),
    )
    .expect("manifest");
    let out = k.run(&["apply", "-f", &path(manifest.clone())]);
    assert!(out.contains("configmap/settings configured"), "{out}");
    assert_eq!(
        fake.get(&Gvr::core("configmaps"), "demo", "settings").expect("stored")["data"]["a"],
        "2"
    );
    k.run(&["label", "pod", "web", "-n", "demo", "tier=front"]);
    assert_eq!(
        k.run(&["get", "pods", "-A", "-l", "tier=front", "-o", "name"]).trim(),
        "pod/web"
    );
    // Deleting the namespace deletes what is in it.
    k.run(&["delete", "namespace", "demo"]);
    assert!(fake.get(&Gvr::core("pods"), "demo", "web").is_none());
    assert!(fake.get(&Gvr::core("namespaces"), "", "demo").is_none());
}

//! The kubeconfig the fake writes for kubectl and clients: one cluster at the fake's plain-HTTP URL, no user
//! credentials, namespace `default`.

use std::path::Path;

/// The kubeconfig text for a server at `url`.
pub fn render(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: l7mp-fake
  cluster:
    server: {url}
contexts:
- name: l7mp-fake
  context:
    cluster: l7mp-fake
    namespace: default
    user: l7mp-fake
current-context: l7mp-fake
users:
- name: l7mp-fake
  user: {{}}
"
    )
}

pub fn write(path: &Path, url: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, render(url))
}

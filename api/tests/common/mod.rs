//! Shared by the api crate's tests: the repository root and the YAML blocks of a Markdown page.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

/// The repository root, from the directory `cargo test` runs in (a binary reused from a shared build cache may come
/// from another checkout).
pub fn repo() -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    dir.join("..")
}

/// The ```yaml blocks of a Markdown text.
pub fn yaml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start() == "```yaml" => current = Some(String::new()),
            Some(_) if line.trim_start() == "```" => blocks.push(current.take().unwrap()),
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    blocks
}

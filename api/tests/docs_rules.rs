//! Every YAML example in docs/rules.md is a configuration that loads (what `l7mp-agent --check` checks), and the
//! page shows every operator.

#![allow(clippy::unwrap_used)]

use l7mp_api::predicate::OPERATORS;
use l7mp_api::{Format, parse_config};
use std::path::PathBuf;

fn page() -> String {
    // The directory `cargo test` runs in (a binary reused from a shared build cache may come from another checkout).
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    std::fs::read_to_string(dir.join("../docs/rules.md")).unwrap()
}

fn yaml_blocks(text: &str) -> Vec<String> {
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

#[test]
fn every_yaml_example_loads() {
    let blocks = yaml_blocks(&page());
    assert!(blocks.len() >= 5, "only {} examples", blocks.len());
    for (i, yaml) in blocks.iter().enumerate() {
        if let Err(e) = parse_config(yaml, Format::Yaml) {
            panic!("example {i} of docs/rules.md is rejected:\n{e}\n{yaml}");
        }
    }
}

#[test]
fn every_operator_has_an_example() {
    let text = page();
    for op in OPERATORS {
        assert!(
            text.contains(&format!("{{op: {op}, ")),
            "docs/rules.md has no example of {op}"
        );
    }
}

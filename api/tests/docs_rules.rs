//! Every YAML example in docs/rules.md is a configuration that loads (what `l7mp-agent --check` checks), and the
//! page shows every operator.

#![allow(clippy::unwrap_used)]

mod common;
use common::{repo, yaml_blocks};
use l7mp_api::predicate::OPERATORS;
use l7mp_api::{Format, parse_config};

fn page() -> String {
    std::fs::read_to_string(repo().join("docs/rules.md")).unwrap()
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

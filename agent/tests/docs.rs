//! The documentation keeps its promises: every YAML example on a protocol page is a configuration the agent accepts,
//! the protocol index links every page, and every relative link (and `#anchor`) in the README and docs resolves.

#![allow(clippy::unwrap_used)]

mod common;
use common::{BIN, repo_root};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The protocol pages, `docs/protocols/*.md`.
fn protocol_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo_root().join("docs/protocols"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages
}

/// The contents of the fenced code blocks of `lang` in a Markdown text.
fn code_blocks(text: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start() == format!("```{lang}") => current = Some(String::new()),
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
fn every_yaml_example_on_a_protocol_page_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for page in protocol_pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        let blocks = code_blocks(&text, "yaml");
        assert!(!blocks.is_empty(), "{name} has no YAML example");
        for (i, yaml) in blocks.iter().enumerate() {
            let file = dir.path().join(format!("{name}-{i}.yaml"));
            std::fs::write(&file, yaml).unwrap();
            let out = Command::new(BIN).arg("--check").arg("-c").arg(&file).output().unwrap();
            assert!(
                out.status.success(),
                "example {i} of {name} is rejected:\n{}\n{yaml}",
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} examples found");
}

#[test]
fn the_protocol_index_links_every_page() {
    let index = std::fs::read_to_string(repo_root().join("docs/protocols.md")).unwrap();
    for page in protocol_pages() {
        let link = format!("(protocols/{}", page.file_name().unwrap().to_string_lossy());
        assert!(index.contains(&link), "docs/protocols.md does not link {link})");
    }
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Relative link targets of a Markdown text (`[text](target)`), without web links.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = &rest[..end];
        if !target.contains("://") && !target.starts_with("mailto:") && !target.contains(' ') {
            out.push(target.to_owned());
        }
        rest = &rest[end..];
    }
    out
}

#[test]
fn relative_links_and_anchors_in_the_docs_resolve() {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    for dir in ["docs", "docs/protocols"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|e| e == "md") {
                files.push(p);
            }
        }
    }
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let base = file.parent().unwrap();
        for link in links(&text) {
            let (path, frag) = link.split_once('#').unwrap_or((&link, ""));
            let target: &Path = &if path.is_empty() { file.clone() } else { base.join(path) };
            if !target.exists() {
                broken.push(format!("{}: {link} (no such file)", file.display()));
                continue;
            }
            if !frag.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let body = std::fs::read_to_string(target).unwrap();
                let found = body
                    .lines()
                    .filter_map(|l| l.strip_prefix('#'))
                    .map(|h| anchor(h.trim_start_matches('#')))
                    .any(|a| a == frag);
                if !found {
                    broken.push(format!("{}: {link} (no such heading)", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n  {}", broken.join("\n  "));
}

//! What a session's rule lookup costs: `RuleTable::lookup` (the agent's path: rules pre-resolved per RuleList, no
//! name hashing per rule) over RuleLists of 1, 10 and 100 rules.
//!
//! Every rule carries one of three typical predicates (`starts` on the URL path, `test` on a header, an `and` of a
//! `test` on the method and a `starts` on the path), each with a value no other rule has. `last` is the worst case
//! that still routes: only the last rule matches. `none`: no rule matches. `by_name_last`/`by_name_none` do the same
//! through `l7mp_api::lookup::lookup` over name maps (`HashMap<String, Arc<_>>`, how the agent looked rules up
//! before the table), to show what resolving each name costs. `eval_only` evaluates the same predicates from a
//! `Vec`, the floor.
//!
//! Run: `cargo bench -p l7mp-api --bench rules`.

#![allow(clippy::unwrap_used)]

use divan::{Bencher, black_box};
use l7mp_api::load::config_from_value;
use l7mp_api::lookup::{RuleTable, Rules, lookup};
use l7mp_api::{Predicate, Rule, RuleList};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

fn main() {
    divan::main();
}

const SIZES: &[usize] = &[1, 10, 100];

/// Name maps, as the agent's `Snapshot` kept them.
struct Maps {
    table: RuleTable,
    rulelists: HashMap<String, Arc<RuleList>>,
    rules: HashMap<String, Arc<Rule>>,
}

impl Rules for Maps {
    fn rulelist(&self, name: &str) -> Option<&RuleList> {
        self.rulelists.get(name).map(|l| &**l)
    }
    fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.get(name).map(|r| &**r)
    }
}

fn predicate(i: usize) -> Value {
    let path = json!({"op": "starts", "path": "/HTTP/url/path", "value": format!("/svc{i}/")});
    match i % 3 {
        0 => path,
        1 => json!({"op": "test", "path": "/HTTP/headers/x-tenant", "value": format!("tenant-{i}")}),
        _ => json!({"op": "and", "apply": [{"op": "test", "path": "/HTTP/method", "value": "GET"}, path]}),
    }
}

fn maps(n: usize) -> Maps {
    let rules: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("r{i}"), "match": predicate(i), "action": {"route": "to-echo"}}))
        .collect();
    let cfg = config_from_value(&json!({
        "clusters": [{"name": "echo", "spec": {"protocol": "Echo"}}],
        "routes": [{"name": "to-echo", "destination": "echo"}],
        "rulelists": [{"name": "main", "rules": rules}],
    }))
    .unwrap();
    Maps {
        table: RuleTable::new(&cfg).unwrap(),
        rulelists: cfg
            .rulelists
            .into_iter()
            .map(|l| (l.name.clone(), Arc::new(l)))
            .collect(),
        rules: cfg.rules.into_iter().map(|r| (r.name.clone(), Arc::new(r))).collect(),
    }
}

/// HTTP session metadata that matches rule `i` only (any `i >= n` matches none of `n` rules).
fn metadata(i: usize) -> Value {
    json!({
        "name": "HTTP:10.0.0.1:40000-10.0.0.2:8080-1",
        "listener": "http",
        "IP": {"src_addr": "10.0.0.1", "dst_addr": "10.0.0.2"},
        "TCP": {"src_port": 40000, "dst_port": 8080},
        "HTTP": {
            "version": "1.1",
            "method": if i % 3 == 2 { "GET" } else { "POST" },
            "url": {"url": format!("/svc{i}/x?y=1"), "path": format!("/svc{i}/x"), "query": "y=1"},
            "headers": {"host": "example.org", "user-agent": "bench", "x-tenant": format!("tenant-{i}")},
        },
        "labels": {},
    })
}

/// Only the last rule matches (every path value ends in `/`, so `/svc1/` is no prefix of `/svc10/x`).
#[divan::bench(args = SIZES)]
fn last(bencher: Bencher, n: usize) {
    let m = maps(n);
    let mut meta = metadata(n - 1);
    assert_eq!(m.table.lookup("main", &mut meta), Ok("to-echo"));
    bencher.bench_local(|| black_box(&m.table).lookup("main", black_box(&mut meta)).is_ok());
}

#[divan::bench(args = SIZES)]
fn none(bencher: Bencher, n: usize) {
    let m = maps(n);
    let mut meta = metadata(n + 1000);
    assert!(m.table.lookup("main", &mut meta).is_err());
    bencher.bench_local(|| black_box(&m.table).lookup("main", black_box(&mut meta)).is_err());
}

#[divan::bench(args = SIZES)]
fn by_name_last(bencher: Bencher, n: usize) {
    let m = maps(n);
    let mut meta = metadata(n - 1);
    assert_eq!(lookup(&m, "main", &mut meta), Ok("to-echo"));
    bencher.bench_local(|| lookup(black_box(&m), "main", black_box(&mut meta)).is_ok());
}

#[divan::bench(args = SIZES)]
fn by_name_none(bencher: Bencher, n: usize) {
    let m = maps(n);
    let mut meta = metadata(n + 1000);
    assert!(lookup(&m, "main", &mut meta).is_err());
    bencher.bench_local(|| lookup(black_box(&m), "main", black_box(&mut meta)).is_err());
}

#[divan::bench(args = SIZES)]
fn eval_only(bencher: Bencher, n: usize) {
    let m = maps(n);
    let preds: Vec<Predicate> = (0..n)
        .map(|i| m.rules[&format!("r{i}")].matcher.clone().unwrap())
        .collect();
    let meta = metadata(n - 1);
    assert_eq!(preds.iter().position(|p| p.eval(&meta)), Some(n - 1));
    bencher.bench_local(|| black_box(&preds).iter().position(|p| p.eval(black_box(&meta))));
}

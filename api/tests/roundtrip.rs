//! `dump::config` round-trips: for every example configuration, every YAML block of the docs that loads, and
//! hand-written configurations using every field, `load(dump(load(x))) == load(x)` and
//! `dump(load(dump(c))) == dump(c)`.

#![allow(clippy::unwrap_used)]

mod common;
use common::{repo, yaml_blocks};
use l7mp_api::{Config, Format, config_from_value, dump, parse_config};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Both round-trip properties for one loaded configuration.
fn assert_round_trip(c: &Config, what: &str) {
    let d = dump::config(c);
    let c2 = config_from_value(&d).unwrap_or_else(|e| panic!("{what}: the dump does not load: {e}\n{d:#}"));
    assert_eq!(&c2, c, "{what}: load(dump(c)) != c\n{d:#}");
    assert_eq!(dump::config(&c2), d, "{what}: dump(load(dump(c))) != dump(c)");
    // Through YAML text too, as a dump saved to a file would be read.
    let yaml = serde_yaml_ng::to_string(&d).unwrap();
    assert_eq!(&parse_config(&yaml, Format::Yaml).unwrap(), c, "{what}: via YAML");
}

#[test]
fn every_example_config_round_trips() {
    let examples = files(&repo().join("examples"), "yaml");
    assert!(examples.len() >= 5, "examples missing: {examples:?}");
    for f in examples {
        let c = parse_config(&std::fs::read_to_string(&f).unwrap(), Format::Yaml).unwrap();
        assert_round_trip(&c, &f.display().to_string());
    }
}

#[test]
fn every_loadable_docs_yaml_block_round_trips() {
    let mut pages = files(&repo().join("docs"), "md");
    pages.extend(files(&repo().join("docs/protocols"), "md"));
    let (mut loaded, mut total) = (0, 0);
    for page in pages {
        for (i, block) in yaml_blocks(&std::fs::read_to_string(&page).unwrap()).iter().enumerate() {
            total += 1;
            // Some blocks are fragments or deliberately wrong examples; only configurations are checked.
            if let Ok(c) = parse_config(block, Format::Yaml) {
                assert_round_trip(&c, &format!("{} block {i}", page.display()));
                loaded += 1;
            }
        }
    }
    eprintln!("{loaded} of {total} docs YAML blocks load and round-trip");
    assert!(loaded >= 20, "only {loaded} of {total} docs blocks load");
}

/// A configuration that sets every field the loader reads, mostly to a non-default value.
fn every_field() -> Value {
    json!({
        "admin": {"log_level": "warn", "log_file": "/tmp/l7mp.log", "access_log_path": "/tmp/access", "strict": true},
        "listeners": [
            {"name": "udp", "spec": {"protocol": "UDP", "address": "127.0.0.1", "port": 5000,
                "connect": {"address": "10.0.0.1", "port": 6000}, "options": {"mode": "server"}, "idle_timeout": 1.5},
             "rules": "main", "options": {"track": 30}},
            {"name": "udp-single", "spec": {"protocol": "UDP", "port": 5001,
                "connect": {"address": "::1", "port": 6001}, "idle_timeout": 0}, "rules": "main"},
            {"name": "udp-half", "spec": {"protocol": "UDP", "connect": {"port": 6002}}, "rules": "main",
             "options": {"track": 0.1}},
            {"name": "tcp", "spec": {"protocol": "TCP", "address": "::", "port": 5002}, "rules": "main"},
            {"name": "ws", "spec": {"protocol": "WS", "port": 5003}, "rules": "main"},
            {"name": "http", "spec": {"protocol": "HTTP", "port": 5004, "path": "/ignored"}, "rules": "main"},
            {"name": "sctp", "spec": {"protocol": "SCTP", "port": 5005}, "rules": "main"},
            {"name": "uds", "spec": {"protocol": "UnixDomainSocket", "filename": "/tmp/uds"}, "rules": "main"},
            {"name": "ud", "spec": {"protocol": "UNIX/dgram", "filename": "/tmp/ud", "idle_timeout": 7.3}, "rules": "main"},
            {"name": "js", "spec": {"protocol": "JSONSocket", "transport_spec": {"protocol": "UDP", "port": 5006}},
             "rules": "main"},
            {"name": "pipe", "spec": {"protocol": "PIPE", "filename": "/tmp/fifo"}, "rules": "main"},
            {"name": "raw", "spec": {"protocol": "AF_PACKET", "interface": "eth0", "ethertype": "0x88b5",
                "idle_timeout": 1e-3}, "rules": "main"},
            {"name": "raw-all", "spec": {"protocol": "AF_PACKET", "interface": "lo"}, "rules": [
                {"match": "*", "action": {"route": {"destination": {"spec": {"protocol": "Echo"}}}}}
            ]}
        ],
        "clusters": [
            {"name": "udp-c", "spec": {"protocol": "UDP", "port": 7000, "bind": {"address": "127.0.0.1", "port": 7001}},
             "endpoints": [{"name": "e1", "spec": {"address": "127.0.0.1"}, "weight": 3},
                           {"spec": {"address": "localhost"}, "weight": 0}],
             "loadbalancer": {"policy": "HashRing", "key": "/IP/src_addr", "on_missing_key": "fail",
                              "outlier_detection": {"consecutive_failures": 5, "ejection_time": 0.5,
                                                    "max_ejection_time": 60}},
             "options": {"anything": [1, 2, {"x": null}]}},
            {"name": "tcp-c", "spec": {"protocol": "TCP", "port": 7002, "bind": {"port": 0}},
             "endpoints": [{"name": "e2", "spec": {"address": "10.0.0.2", "weight": 2}}],
             "loadbalancer": {"policy": "ConsistentHash"}},
            {"name": "sctp-c", "spec": {"protocol": "SCTP", "port": 7003},
             "endpoints": [{"name": "e3", "spec": {"address": "10.0.0.3"}}],
             "loadbalancer": {"policy": "RoundRobin", "outlier_detection": {"ejection_time": 0.3, "max_ejection_time": 1.7}}},
            {"name": "uds-c", "spec": {"protocol": "UnixDomainSocket"},
             "endpoints": [{"name": "e4", "spec": {"filename": "/tmp/s"}}], "loadbalancer": {"policy": "Random", "outlier_detection": false}},
            {"name": "ud-c", "spec": {"protocol": "UnixDgram"}, "endpoints": [{"name": "e5", "spec": {"address": "/tmp/d"}}]},
            {"name": "ws-c", "spec": {"protocol": "WebSocket", "port": 7004}, "endpoints": []},
            {"name": "http1", "spec": {"protocol": "HTTP", "port": 7005}},
            {"name": "http2", "spec": {"protocol": "HTTP", "port": 7006, "version": 2}},
            {"name": "js-c", "spec": {"protocol": "JSONSocket", "transport": {"protocol": "TCP", "port": 7007},
                "header": [{"path": "/a/b"}, {"path": {"from": "/x", "to": "/y~1z"}},
                           {"set": {"key": "/k", "value": {"deep": [true]}}}]},
             "endpoints": [{"name": "e6", "spec": {"address": "10.0.0.6"}}]},
            {"name": "echo", "spec": {"protocol": "Echo"}},
            {"name": "discard", "spec": {"protocol": "Discard"}},
            {"name": "log", "spec": {"protocol": "Logger", "log_file": "/tmp/log", "log_prefix": "p: "}},
            {"name": "log-default", "spec": {"protocol": "Logger"}},
            {"name": "stdio", "spec": {"protocol": "Stdio"}},
            {"name": "encap", "spec": {"protocol": "JSONEncap"}},
            {"name": "decap", "spec": {"protocol": "JSONDecap"}},
            {"name": "fork-sh", "spec": {"protocol": "STDIO-fork", "command": "cat | tr a b"}},
            {"name": "fork", "spec": {"protocol": "StdioFork", "command": ["/bin/cat", "-u"]}},
            {"name": "sync", "spec": {"protocol": "Sync", "query": "JSONSocket/room"}},
            {"name": "pipe-c", "spec": {"protocol": "PIPE"}, "endpoints": [{"name": "e7", "spec": {"address": "/tmp/f"}}]},
            {"name": "raw-c", "spec": {"protocol": "AF_PACKET", "ethertype": 34997},
             "endpoints": [{"name": "e8", "spec": {"address": "eth1"}}]},
            {"name": "raw-c-all", "spec": {"protocol": "AF_PACKET"}},
            {"name": "api", "spec": {"protocol": "L7mpController"}},
            {"name": "prom", "spec": {"protocol": "Prometheus"}},
            {"name": "metric", "spec": {"protocol": "Metric", "byteCounterName": "ignored"}}
        ],
        "rulelists": [
            {"name": "main", "rules": [
                "r-test",
                {"name": "r-inline", "match": {"op": "starts", "path": "/HTTP/url/path", "value": "/api"},
                 "action": {"route": "rt-split"}},
                {"match": {"op": "and", "path": "/IP", "apply": [{"op": "defined", "path": "/src_addr"}]},
                 "action": {"apply": "other"}},
                {"action": {"route": {"destination": "echo", "ingress": [{"spec": {"protocol": "Metric"}}]}}}
            ]},
            {"name": "other", "rules": [{"action": {"rewrite": [{"path": "/a/b", "value": {"c": 1}}],
                                                    "route": "rt-full"}}]}
        ],
        "rules": [
            {"name": "r-test", "match": {"op": "test", "path": "/x", "value": 1, "ignore_case": true},
             "action": {"route": "rt-full", "rewrite": [{"path": "/y", "value": "z"}]}},
            {"name": "r-star", "match": {"match": "*"}, "action": {"route": "rt-default"}}
        ],
        "routes": [
            {"name": "rt-full", "destination": "udp-c", "ingress": ["log", "encap"], "egress": ["decap"],
             "retry": {"retry_on": "connect-failure", "num_retries": 4, "timeout": 250, "connect_timeout": 100,
                       "backoff": {"initial": 10, "max": 5000, "multiplier": 1.5}}},
            {"name": "rt-split", "cluster": [{"cluster": "tcp-c", "weight": 9}, {"cluster": "sctp-c"},
                                              {"cluster": {"spec": {"protocol": "Discard"}}, "weight": 0}]},
            {"name": "rt-default", "destination": "echo", "retry": {"retry_on": "always", "timeout": 30}},
            {"name": "rt-backoff", "destination": "echo", "retry": {"retry_on": "disconnect", "backoff": {}}},
            {"name": "rt-others", "destination": "js-c", "ingress": ["uds-c", "ud-c", "ws-c", "http1", "http2",
                "discard", "log-default", "stdio", "fork-sh", "fork", "sync", "pipe-c", "raw-c", "raw-c-all", "api",
                "prom", "metric"]}
        ]
    })
}

#[test]
fn a_config_with_every_field_round_trips() {
    let c = config_from_value(&every_field()).unwrap();
    assert_round_trip(&c, "every field");
}

#[test]
fn the_dump_writes_the_original_forms() {
    let c = config_from_value(&every_field()).unwrap();
    let d = dump::config(&c);
    let find = |table: &str, name: &str| -> Value {
        d[table]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{table} {name} not dumped"))
    };
    // Flat: references by name, generated names written out.
    assert_eq!(find("listeners", "raw-all")["rules"], json!("raw-all-RuleList-0"));
    assert_eq!(find("rulelists", "main")["rules"][1], json!("r-inline"));
    assert_eq!(find("rules", "r-star")["match"], json!({"match": "*"}));
    // The rule counter is per kind across the document: raw-all's inline rule took 0.
    assert_eq!(find("rulelists", "main")["rules"][2], json!("main-Rule-1"));
    assert_eq!(
        find("rules", "main-Rule-2")["action"]["route"],
        json!("main-Rule-2-Route-1")
    );
    assert_eq!(find("listeners", "udp-half")["spec"].get("port"), None);
    assert_eq!(
        find("routes", "rt-split")["destination"],
        json!([{"cluster": "tcp-c", "weight": 9}, {"cluster": "sctp-c", "weight": 1},
               {"cluster": "rt-split-Cluster-2", "weight": 0}])
    );
    // Units: seconds for track and idle_timeout, ms for retries; never as 0.
    let udp = find("listeners", "udp");
    assert_eq!(udp["options"], json!({"track": 30}));
    assert_eq!(udp["spec"]["idle_timeout"], json!(1.5));
    assert_eq!(find("listeners", "udp-single")["spec"]["idle_timeout"], json!(0));
    assert_eq!(
        find("listeners", "udp-single")["spec"]["options"],
        json!({"mode": "singleton"})
    );
    assert_eq!(
        find("routes", "rt-full")["retry"],
        json!({"retry_on": "connect-failure", "num_retries": 4, "timeout": 250, "connect_timeout": 100,
               "backoff": {"initial": 10, "max": 5000, "multiplier": 1.5}})
    );
    let udp_c = find("clusters", "udp-c");
    assert_eq!(
        udp_c["loadbalancer"],
        json!({"policy": "ConsistentHash", "key": "/IP/src_addr", "on_missing_key": "fail",
               "outlier_detection": {"consecutive_failures": 5, "ejection_time": 0.5, "max_ejection_time": 60}})
    );
    assert_eq!(
        udp_c["endpoints"][1],
        json!({"name": "udp-c-EndPoint-0", "spec": {"address": "localhost"}, "weight": 0})
    );
    assert_eq!(find("clusters", "tcp-c")["loadbalancer"]["key"], json!("<RANDOM>"));
    assert_eq!(
        find("clusters", "http2")["spec"],
        json!({"protocol": "HTTP", "port": 7006, "version": "2"})
    );
    assert_eq!(
        find("clusters", "fork-sh")["spec"]["command"],
        json!(["/bin/sh", "-c", "cat | tr a b"])
    );
    assert_eq!(find("clusters", "sync")["spec"]["query"], json!("/JSONSocket/room"));
    assert!(find("clusters", "echo").get("endpoints").is_none());
    assert_eq!(find("clusters", "ws-c")["endpoints"], json!([]));
    assert_eq!(
        d["admin"],
        json!({"log_level": "warn", "log_file": "/tmp/l7mp.log",
                                  "access_log_path": "/tmp/access", "strict": true})
    );
}

#[test]
fn per_object_dumps_have_the_original_shapes() {
    let c = config_from_value(&every_field()).unwrap();
    let l = c.listener("raw-all").unwrap();
    assert_eq!(dump::listener(&c, l, false)["rules"], json!("raw-all-RuleList-0"));
    let rec = dump::listener(&c, l, true);
    let rule = &rec["rules"][0];
    assert_eq!(rule["name"], json!("raw-all-RuleList-0-Rule-0"));
    assert_eq!(rule["match"], json!({"match": "*"}));
    let route = &rule["action"]["route"];
    assert_eq!(route["name"], json!("raw-all-RuleList-0-Rule-0-Route-0"));
    assert_eq!(route["destination"]["spec"], json!({"protocol": "Echo"}));
    assert_eq!(
        route["destination"]["endpoints"],
        json!([{"name": "raw-all-RuleList-0-Rule-0-Route-0-Cluster-0", "spec": {"address": "<VIRTUAL>"}}])
    );

    let udp_c = c.cluster("udp-c").unwrap();
    assert_eq!(dump::cluster(&c, udp_c, false)["endpoints"], json!(2));
    assert_eq!(
        dump::cluster(&c, udp_c, true)["endpoints"][0],
        json!({"name": "e1", "spec": {"address": "127.0.0.1"}, "weight": 3})
    );
    assert_eq!(
        dump::endpoint(&udp_c.endpoints[0]),
        json!({"name": "e1", "spec": {"address": "127.0.0.1"}, "weight": 3})
    );

    let main = c.rulelist("main").unwrap();
    assert_eq!(dump::rulelist(&c, main, false)["rules"][0], json!("r-test"));
    assert_eq!(
        dump::rulelist(&c, main, true)["rules"][0]["action"]["route"]["name"],
        json!("rt-full")
    );

    let rt = c.route("rt-full").unwrap();
    let flat = dump::route(&c, rt, false);
    assert_eq!(flat["destination"], json!("udp-c"));
    assert_eq!(flat["ingress"], json!(["log", "encap"]));
    let rec = dump::route(&c, rt, true);
    assert_eq!(rec["destination"]["name"], json!("udp-c"));
    assert_eq!(rec["egress"][0]["spec"], json!({"protocol": "JSONDecap"}));

    let r = c.rule("r-test").unwrap();
    let rd = dump::rule(&c, r, false);
    assert_eq!(
        rd["match"],
        json!({"op": "test", "path": "/x", "value": 1, "ignore_case": true})
    );
    assert_eq!(
        rd["action"],
        json!({"route": "rt-full", "rewrite": [{"path": "/y", "value": "z"}]})
    );

    assert_eq!(
        dump::admin(&l7mp_api::Admin::default()),
        json!({"log_level": "info", "strict": false})
    );
    // Per-object dumps (non-recursive) are what POST/PUT accept back.
    let mut doc = dump::config(&c);
    let i = doc["rules"]
        .as_array()
        .unwrap()
        .iter()
        .position(|o| o["name"] == "r-test")
        .unwrap();
    doc["rules"][i] = dump::rule(&c, r, false);
    assert_eq!(config_from_value(&doc).unwrap(), c);
}

#[test]
fn a_wildcard_rule_reads_back_from_the_originals_form() {
    for m in [json!("*"), json!({"match": "*"})] {
        let c = config_from_value(&json!({
            "clusters": [{"name": "e", "spec": {"protocol": "Echo"}}],
            "rules": [{"name": "r", "match": m, "action": {"route": {"name": "rt", "destination": "e"}}}],
        }))
        .unwrap();
        assert!(c.rule("r").unwrap().matcher.is_none());
        assert_round_trip(&c, "wildcard");
    }
}

#[test]
fn equality_sees_every_change() {
    // The round-trip assertions above would pass vacuously if `==` ignored fields: it does not.
    let c = config_from_value(&every_field()).unwrap();
    let mut d = dump::config(&c);
    let at = |table: &str, name: &str| -> usize {
        d[table]
            .as_array()
            .unwrap()
            .iter()
            .position(|o| o["name"] == name)
            .unwrap()
    };
    let (rt, udp_c, udp, r_test) = (
        at("routes", "rt-full"),
        at("clusters", "udp-c"),
        at("listeners", "udp"),
        at("rules", "r-test"),
    );
    for (ptr, v) in [
        (format!("/routes/{rt}/retry/backoff/multiplier"), json!(1.25)),
        (format!("/routes/{rt}/retry/connect_timeout"), json!(101)),
        (
            format!("/clusters/{udp_c}/loadbalancer/outlier_detection/ejection_time"),
            json!(2),
        ),
        (format!("/clusters/{udp_c}/options/anything/0"), json!(7)),
        (format!("/listeners/{udp}/options/track"), json!(31)),
        (format!("/listeners/{udp}/spec/idle_timeout"), json!(1.25)),
        (format!("/rules/{r_test}/match/value"), json!(2)),
        (format!("/rules/{r_test}/action/rewrite/0/value"), json!("w")),
        (format!("/clusters/{udp_c}/endpoints/0/weight"), json!(4)),
        ("/admin/strict".to_owned(), json!(false)),
    ] {
        let old = d.pointer(&ptr).unwrap().clone();
        *d.pointer_mut(&ptr).unwrap() = v;
        assert_ne!(config_from_value(&d).unwrap(), c, "{ptr}");
        *d.pointer_mut(&ptr).unwrap() = old;
    }
    assert_eq!(config_from_value(&d).unwrap(), c);
}

//! The l7mp.io/v1 resource model: parsing every form, field-path errors, canonical JSON, selectors and the
//! translation to per-agent flat configurations.

mod common;
use common::{repo, yaml_blocks};
use l7mp_api::resource::*;
use l7mp_api::{ClusterSpec, Config, Destination, ListenerSpec, config_from_value, dump};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("test YAML")
}

fn parse(text: &str) -> Resource {
    match parse_resource(&yaml(text)) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

fn parse_err(v: &Value) -> String {
    match parse_resource(v) {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => e.to_string(),
    }
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn agent(id: &str, kv: &[(&str, &str)], addr: Option<&str>) -> AgentInfo {
    AgentInfo {
        node_id: id.into(),
        labels: labels(kv),
        address: addr.map(|a| a.parse::<IpAddr>().expect("test address")),
    }
}

/// What an agent does on receipt: dump, load again, compare.
fn assert_loadable(t: &Translation) {
    for (node, cfg) in &t.per_agent {
        let again = config_from_value(&dump::config(cfg)).unwrap_or_else(|e| panic!("agent {node}: {e}"));
        assert_eq!(&again, &**cfg, "agent {node}: the dump does not load back equal");
    }
}

fn cfg<'a>(t: &'a Translation, node: &str) -> &'a Config {
    t.per_agent.get(node).unwrap_or_else(|| panic!("no config for {node}"))
}

fn listener_names(c: &Config) -> Vec<&str> {
    c.listeners.iter().map(|l| l.name.as_str()).collect()
}

fn vsvc(name: &str, app: &str, port: u16, target: &str) -> Value {
    json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": name},
           "spec": {"selector": {"matchLabels": {"app": app}},
                    "listener": {"spec": {"UDP": {"port": port}},
                                 "rules": [{"action": {"route": {"destinationRef": target}}}]}}})
}

fn target(name: &str, port: Value) -> Value {
    json!({"apiVersion": "l7mp.io/v1", "kind": "Target", "metadata": {"name": name},
           "spec": {"selector": {"app": "nobody"},
                    "cluster": {"spec": {"protocol": "TCP", "port": port},
                                "endpoints": [{"spec": {"address": "10.1.1.1"}}]}}})
}

// ----------------------------------------------------------------------------------------------------------------
// Parsing.

#[test]
fn kinds_parse_from_names_plurals_and_short_names() {
    for (s, k) in [
        ("VirtualService", ResourceKind::VirtualService),
        ("virtualservices", ResourceKind::VirtualService),
        ("vsvc", ResourceKind::VirtualService),
        ("Target", ResourceKind::Target),
        ("tr", ResourceKind::Target),
        ("targets", ResourceKind::Target),
        ("route", ResourceKind::Route),
        ("Rules", ResourceKind::Rule),
    ] {
        assert_eq!(s.parse::<ResourceKind>(), Ok(k), "{s}");
    }
    assert!("listener".parse::<ResourceKind>().is_err());
    assert_eq!(ResourceKind::VirtualService.to_string(), "VirtualService");
}

#[test]
fn every_ref_form_parses() {
    let want = ResourceRef::new(ResourceKind::Target, "prod", "uds");
    for s in [
        "prod/uds",
        "/l7mp.io/v1/Target/prod/uds",
        "/apis/l7mp.io/v1/namespaces/prod/targets/uds",
    ] {
        assert_eq!(parse_ref(ResourceKind::Target, s, "default"), Ok(want.clone()), "{s}");
    }
    assert_eq!(parse_ref(ResourceKind::Target, "uds", "prod"), Ok(want));
    // The kind in a path form must be the expected one.
    assert!(parse_ref(ResourceKind::Target, "/l7mp.io/v1/Route/prod/uds", "default").is_err());
    assert!(
        parse_ref(
            ResourceKind::Target,
            "/apis/l7mp.io/v1/namespaces/prod/routes/uds",
            "default"
        )
        .is_err()
    );
    assert!(parse_ref(ResourceKind::Target, "a/b/c", "default").is_err());
    assert!(parse_ref(ResourceKind::Target, "", "default").is_err());
    assert!(parse_ref(ResourceKind::Target, "has space", "default").is_err());
}

#[test]
fn keyed_and_flat_specs_are_the_same() {
    let keyed = parse(
        "apiVersion: l7mp.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  selector: {}\n  listener:\n    spec: {UDP: {port: 9001}}\n    rules: []\n",
    );
    let flat = parse(
        "apiVersion: l7mp.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  listener:\n    spec: {protocol: UDP, port: 9001}\n    rules: []\n",
    );
    assert_eq!(keyed.spec, flat.spec);
    let ResourceSpec::VirtualService(v) = &keyed.spec else {
        panic!("kind")
    };
    assert!(matches!(&v.listener.spec, Some(ListenerSpec::Udp(u)) if u.port == 9001));
    assert_eq!(keyed.meta.namespace, "default");
}

#[test]
fn rule_refs_in_every_form() {
    let r = parse(
        r#"
apiVersion: l7mp.io/v1
kind: VirtualService
metadata: {name: v, namespace: ns1, labels: {tier: edge}}
spec:
  selector: {app: gw}
  listener:
    name: websocket
    spec: {WebSocket: {port: 8888}}
    rules:
      - match: {op: test, path: /a, value: 1}
        action: {route: {destinationRef: /apis/l7mp.io/v1/namespaces/default/targets/uds-cluster}}
      - action: {routeRef: /l7mp.io/v1/Route/other/r}
      - action: {route: r2}
      - action:
          rewrite: [{path: /x, valueStr: "y"}]
          apply: base
      - action:
          route:
            destination: [{target: t1, weight: 3}, {destinationRef: ns2/t2, weight: 1}]
            ingress: [t3]
            retry: {retry_on: always, num_retries: 2}
"#,
    );
    let ResourceSpec::VirtualService(v) = &r.spec else {
        panic!("kind")
    };
    assert_eq!(v.selector.match_labels, labels(&[("app", "gw")]));
    assert_eq!(r.meta.labels, labels(&[("tier", "edge")]));
    let RulesSource::Inline(rules) = &v.listener.rules else {
        panic!("inline")
    };
    assert_eq!(rules.len(), 5);
    let tref = |ns: &str, n: &str| ResourceRef::new(ResourceKind::Target, ns, n);
    let rref = |ns: &str, n: &str| ResourceRef::new(ResourceKind::Route, ns, n);
    match &rules[0].action.route {
        Some(RouteChoice::Inline(rt)) => {
            assert_eq!(rt.destination, DestinationSpec::Target(tref("default", "uds-cluster")))
        }
        other => panic!("{other:?}"),
    }
    assert!(rules[0].matcher.is_some());
    assert_eq!(rules[1].action.route, Some(RouteChoice::Ref(rref("other", "r"))));
    assert_eq!(rules[2].action.route, Some(RouteChoice::Ref(rref("ns1", "r2"))));
    assert_eq!(
        rules[3].action.apply,
        Some(ResourceRef::new(ResourceKind::VirtualService, "ns1", "base"))
    );
    assert_eq!(rules[3].action.rewrite[0].value, json!("y"));
    match &rules[4].action.route {
        Some(RouteChoice::Inline(rt)) => {
            assert_eq!(
                rt.destination,
                DestinationSpec::Split(vec![(tref("ns1", "t1"), 3), (tref("ns2", "t2"), 1)])
            );
            assert_eq!(rt.ingress, vec![tref("ns1", "t3")]);
            assert_eq!(rt.retry.num_retries, 2);
        }
        other => panic!("{other:?}"),
    }
    // rulesRef.
    let r = parse(
        "apiVersion: l7mp.io/v1\nkind: VirtualService\nmetadata: {name: v2}\nspec:\n  listener:\n    spec: {TCP: {port: 80}}\n    rulesRef: /l7mp.io/v1/VirtualService/default/v\n",
    );
    let ResourceSpec::VirtualService(v) = &r.spec else {
        panic!("kind")
    };
    assert_eq!(
        v.listener.rules,
        RulesSource::Ref(ResourceRef::new(ResourceKind::VirtualService, "default", "v"))
    );
}

#[test]
fn target_forms() {
    let r = parse(
        r#"
apiVersion: l7mp.io/v1
kind: Target
metadata: {name: t}
spec:
  selector: {matchLabels: {app: a}}
  cluster:
    spec: {UDP: {port: 9001}}
    loadbalancer: {policy: ConsistentHash}
    endpoints:
      - spec: {address: 10.0.0.1}
      - {name: second, spec: {address: 10.0.0.2}, weight: 5}
      - selector: {matchLabels: {app: backend}}
"#,
    );
    let ResourceSpec::Target(t) = &r.spec else {
        panic!("kind")
    };
    let TargetBackend::Cluster(c) = &t.backend else {
        panic!("cluster")
    };
    assert!(matches!(c.spec, ClusterSpec::Udp { port: 9001, .. }));
    assert_eq!(c.endpoints.len(), 3);
    assert_eq!(
        c.endpoints[1],
        EndpointSpec::Static {
            name: Some("second".into()),
            address: "10.0.0.2".into(),
            weight: 5
        }
    );
    assert!(matches!(&c.endpoints[2], EndpointSpec::Selector(s) if s.match_labels == labels(&[("app", "backend")])));
    let r = parse("apiVersion: l7mp.io/v1\nkind: Target\nmetadata: {name: t}\nspec:\n  linkedVirtualService: ns/v\n");
    let ResourceSpec::Target(t) = &r.spec else {
        panic!("kind")
    };
    assert_eq!(
        t.backend,
        TargetBackend::LinkedVirtualService(ResourceRef::new(ResourceKind::VirtualService, "ns", "v"))
    );
}

#[test]
fn rule_objects_and_status() {
    let r = parse(
        r#"
apiVersion: l7mp.io/v1
kind: Rule
metadata: {name: first}
spec:
  virtualService: v
  position: 0
  match: {op: defined, path: /a}
  action: {routeRef: r}
status:
  state: Rejected
  reason: "spec.action.routeRef: Route default/r does not exist"
  agents: {acked: [n1], nacked: [n2]}
  observedRevision: 7
"#,
    );
    let ResourceSpec::Rule(ru) = &r.spec else {
        panic!("kind")
    };
    assert_eq!(ru.position, Some(0));
    assert_eq!(
        ru.virtual_service,
        ResourceRef::new(ResourceKind::VirtualService, "default", "v")
    );
    let s = r.status.as_ref().expect("status");
    assert_eq!(s.state, State::Rejected);
    assert_eq!((s.acked, s.nacked), (1, 1), "a list of node ids counts");
    assert_eq!(s.observed_revision, Some(7));
}

#[test]
fn bad_input_names_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (target("t", json!(70000)), "spec.cluster.spec.port: "),
        (
            json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": "v"},
                   "spec": {"listener": {"spec": {"UDP": {"port": "abc"}}, "rules": []}}}),
            "spec.listener.spec.UDP.port: ",
        ),
        (
            json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": "v"},
                   "spec": {"listener": {"spec": {"FOO": {"port": 1}}, "rules": []}}}),
            "spec.listener.spec.FOO: ",
        ),
        (
            json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": "v"},
                   "spec": {"listener": {"spec": {"protocol": "UDP", "port": -1}, "rules": []}}}),
            "spec.listener.spec.port: ",
        ),
        (
            json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": "v"},
                   "spec": {"selector": {"app": 3}, "listener": {"spec": {"UDP": {"port": 1}}}}}),
            "spec.selector.app: ",
        ),
        (
            json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": "v"},
                   "spec": {"listener": {"spec": {"UDP": {"port": 1}},
                            "rules": [{"action": {"route": {"destinationRef": "a/b/c"}}}]}}}),
            "spec.listener.rules[0].action.route.destinationRef: ",
        ),
        (
            json!({"apiVersion": "l7mp.io/v1", "kind": "Rule", "metadata": {"name": "r"},
                   "spec": {"virtualService": "v", "position": -1, "action": {"routeRef": "x"}}}),
            "spec.position: ",
        ),
        (
            json!({"apiVersion": "l7mp.io/v1", "kind": "Rule", "metadata": {"name": "r"},
                   "spec": {"virtualService": "v", "match": {"op": "nope"}, "action": {"routeRef": "x"}}}),
            "spec.match",
        ),
        (
            json!({"apiVersion": "l7mp.io/v1", "kind": "Route", "metadata": {"name": "r"},
                   "spec": {"destinationRef": "t", "retry": {"num_retries": "x"}}}),
            "spec.retry.num_retries: ",
        ),
        (
            json!({"apiVersion": "l7mp.io/v1", "kind": "Target", "metadata": {"name": "t"},
                   "spec": {"cluster": {"spec": {"TCP": {"port": 1}}, "endpoints": [{"spec": {}}]}}}),
            "spec.cluster.endpoints[0].spec.address: ",
        ),
        (
            json!({"apiVersion": "l7mp.io/v1", "kind": "Target", "metadata": {"name": "t"},
                   "spec": {"cluster": {"spec": {"TCP": {"port": 1}}}, "linkedVirtualService": "v"}}),
            "spec: exactly one of",
        ),
        (
            json!({"apiVersion": "l7mp.io/v2", "kind": "Target", "metadata": {"name": "t"}, "spec": {}}),
            "apiVersion: ",
        ),
        (
            json!({"apiVersion": "l7mp.io/v1", "kind": "Listener", "metadata": {"name": "t"}, "spec": {}}),
            "kind: ",
        ),
        (
            json!({"apiVersion": "l7mp.io/v1", "kind": "Route", "metadata": {"name": "a b"}, "spec": {}}),
            "metadata.name: ",
        ),
        (
            json!({"apiVersion": "l7mp.io/v1", "kind": "Route", "metadata": {"name": "r"}, "spec": {"destinationRef": "t", "bogus": 1}}),
            "spec.bogus: unknown field",
        ),
    ];
    for (v, want) in cases {
        let e = parse_err(&v);
        assert!(e.contains(want), "expected {want:?} in:\n{e}\nfor {v}");
    }
}

#[test]
fn multi_document_yaml_names_the_bad_document() {
    let text = "apiVersion: l7mp.io/v1\nkind: Route\nmetadata: {name: a}\nspec: {destinationRef: t}\n---\n\
                apiVersion: l7mp.io/v1\nkind: Route\nmetadata: {name: b}\nspec: {destinationRef: t}\n---\n\
                apiVersion: l7mp.io/v1\nkind: VirtualService\nmetadata: {name: c}\nspec:\n  selector: [x]\n  listener: {spec: {UDP: {port: 1}}}\n";
    let e = parse_documents(text).expect_err("doc 2 is bad").to_string();
    assert!(
        e.starts_with("[2].spec.selector: ") || e.starts_with("[2] spec.selector: "),
        "{e}"
    );
    let ok = parse_documents(&text.replace("[x]", "{}")).expect("valid");
    assert_eq!(ok.len(), 3);
    // JSON: an object or an array.
    let one = parse_documents(&target("t", json!(80)).to_string()).expect("json object");
    assert_eq!(one.len(), 1);
    let two =
        parse_documents(&json!([target("t", json!(80)), target("u", json!(81))]).to_string()).expect("json array");
    assert_eq!(two.len(), 2);
    assert!(matches!(
        parse_documents("{"),
        Err(l7mp_api::ConfigError::Syntax { .. })
    ));
}

#[test]
fn canonical_json_round_trips() {
    for file in ["udp-to-tcp.yaml", "websocket-to-unix.yaml"] {
        for r in parse_documents(&example(file)).expect("example") {
            let v = to_value(&r);
            let again = parse_resource(&v).unwrap_or_else(|e| panic!("{file}: {e}\n{v}"));
            assert_eq!(again.spec, r.spec, "{file}");
            assert_eq!(again.meta, r.meta);
            assert_eq!(to_value(&again), v, "canonical form is a fixed point");
        }
    }
    let with_status = parse(
        "apiVersion: l7mp.io/v1\nkind: Route\nmetadata: {name: r}\nspec: {destinationRef: t}\nstatus: {state: Pending, agents: {placed: 2, acked: 1, nacked: 0}, observedRevision: 3}\n",
    );
    let again = parse_resource(&to_value(&with_status)).expect("round trip");
    assert_eq!(again.status, with_status.status);
}

#[test]
fn selectors_match_labels() {
    let sel = Selector {
        match_labels: labels(&[("app", "gw"), ("zone", "a")]),
    };
    assert!(selector_matches(
        &sel,
        &labels(&[("app", "gw"), ("zone", "a"), ("x", "y")])
    ));
    assert!(!selector_matches(&sel, &labels(&[("app", "gw")])));
    assert!(!selector_matches(&sel, &labels(&[("app", "gw"), ("zone", "b")])));
    assert!(selector_matches(&Selector::default(), &BTreeMap::new()));
    // matchLabels and a plain map combine.
    let r = parse(
        "apiVersion: l7mp.io/v1\nkind: Target\nmetadata: {name: t}\nspec:\n  selector: {matchLabels: {app: gw}, zone: a}\n  linkedVirtualService: v\n",
    );
    let ResourceSpec::Target(t) = &r.spec else {
        panic!("kind")
    };
    assert_eq!(t.selector, sel);
}

// ----------------------------------------------------------------------------------------------------------------
// Translation.

fn example(file: &str) -> String {
    let p = repo().join("examples/mesh").join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn resources(values: &[Value]) -> Vec<Resource> {
    values
        .iter()
        .map(|v| parse_resource(v).unwrap_or_else(|e| panic!("{e}\n{v}")))
        .collect()
}

#[test]
fn agents_get_only_their_virtual_services() {
    let rs = resources(&[
        vsvc("a", "one", 9001, "t"),
        vsvc("b", "two", 9002, "t"),
        target("t", json!(80)),
    ]);
    let agents = [
        agent("n1", &[("app", "one")], Some("10.0.0.1")),
        agent("n2", &[("app", "two")], None),
    ];
    let t = translate(&rs, &agents);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert_loadable(&t);
    assert_eq!(listener_names(cfg(&t, "n1")), vec!["default/a"]);
    assert_eq!(listener_names(cfg(&t, "n2")), vec!["default/b"]);
    // The Target's selector picks nobody, but both agents route to it.
    for n in ["n1", "n2"] {
        assert!(cfg(&t, n).cluster("default/t").is_some(), "{n}");
    }
    let l = cfg(&t, "n1").listener("default/a").expect("listener");
    assert_eq!(l.rules, "default/a");
    assert_eq!(
        cfg(&t, "n1").rulelist("default/a").expect("rulelist").rules,
        vec!["default/a/rules/0"]
    );
    assert_eq!(
        cfg(&t, "n1")
            .route("default/a/rules/0/route")
            .map(|r| r.destination.clone()),
        Some(Destination::Cluster("default/t".into()))
    );
}

#[test]
fn agents_with_the_same_labels_share_one_translation() {
    let rs = resources(&[vsvc("a", "one", 9001, "t"), target("t", json!(80))]);
    let agents = [
        agent("n1", &[("app", "one")], Some("10.0.0.1")),
        agent("n2", &[("app", "one")], Some("10.0.0.2")),
        agent("n3", &[("app", "two")], None),
    ];
    let t = translate(&rs, &agents);
    assert_eq!(t.per_agent.len(), 3);
    let (n1, n2, n3) = (&t.per_agent["n1"], &t.per_agent["n2"], &t.per_agent["n3"]);
    assert!(std::sync::Arc::ptr_eq(n1, n2), "same labels: one configuration");
    assert!(!std::sync::Arc::ptr_eq(n1, n3));
    assert_eq!(listener_names(n1), vec!["default/a"]);
    assert!(listener_names(n3).is_empty());
}

#[test]
fn selector_endpoints_resolve_to_agent_addresses() {
    let rs = parse_documents(&example("udp-to-tcp.yaml")).expect("example");
    let agents = [
        agent("gw", &[("app", "gateway")], Some("10.0.0.1")),
        agent("be1", &[("app", "backend")], Some("10.0.0.2")),
        agent("be2", &[("app", "backend")], Some("fd00::3")),
        agent("be3", &[("app", "backend")], None),
    ];
    let t = translate(&rs, &agents);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert_loadable(&t);
    let gw = cfg(&t, "gw");
    let c = gw.cluster("default/tcp-backend").expect("cluster on the gateway");
    let addrs: Vec<&str> = c.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addrs, vec!["10.0.0.2", "fd00::3"]);
    // The Rule at position 0 comes before the inline rule.
    assert_eq!(
        gw.rulelist("default/udp-gateway").expect("rulelist").rules,
        vec!["default/tag-internal", "default/udp-gateway/rules/0"]
    );
    // Backends get their own service (TCP 9002 -> Echo), not the gateway's listener or cluster.
    let be = cfg(&t, "be1");
    assert_eq!(listener_names(be), vec!["default/tcp-echo-service"]);
    assert!(be.cluster("default/tcp-backend").is_none());
    assert!(gw.listener("default/tcp-echo-service").is_none());
}

#[test]
fn a_route_shared_by_two_rules_is_installed_once() {
    let text = example("udp-to-tcp.yaml");
    let rs = parse_documents(&text).expect("example");
    let t = translate(&rs, &[agent("gw", &[("app", "gateway")], None)]);
    assert_loadable(&t);
    let gw = cfg(&t, "gw");
    assert_eq!(gw.routes.len(), 1, "{:?}", gw.routes);
    for r in ["default/tag-internal", "default/udp-gateway/rules/0"] {
        assert_eq!(
            gw.rule(r).and_then(|x| x.action.route.clone()).as_deref(),
            Some("default/to-backend"),
            "{r}"
        );
    }
    assert_eq!(gw.route("default/to-backend").map(|r| r.retry.num_retries), Some(3));
}

#[test]
fn rule_positions_and_ties() {
    let rule = |name: &str, pos: Option<u64>| {
        let mut v = json!({"apiVersion": "l7mp.io/v1", "kind": "Rule", "metadata": {"name": name},
                           "spec": {"virtualService": "a", "action": {"route": {"destinationRef": "t"}}}});
        if let Some(p) = pos {
            v["spec"]["position"] = json!(p);
        }
        v
    };
    let mut base = vsvc("a", "one", 9001, "t");
    base["spec"]["listener"]["rules"] = json!([
        {"action": {"route": {"destinationRef": "t"}}},
        {"action": {"route": {"destinationRef": "t"}}}
    ]);
    let values = [
        base,
        target("t", json!(80)),
        rule("z-end", None),
        rule("b0", Some(0)),
        rule("a0", Some(0)),
        rule("m1", Some(1)),
        rule("far", Some(99)),
        json!({"apiVersion": "l7mp.io/v1", "kind": "Rule", "metadata": {"name": "orphan"},
               "spec": {"virtualService": "missing", "action": {"routeRef": "x"}}}),
    ];
    let t = translate(&resources(&values), &[agent("n1", &[("app", "one")], None)]);
    assert_loadable(&t);
    assert_eq!(
        cfg(&t, "n1").rulelist("default/a").expect("rulelist").rules,
        vec![
            "default/a0",
            "default/b0",
            "default/a/rules/0",
            "default/m1",
            "default/a/rules/1",
            "default/far",
            "default/z-end"
        ]
    );
    let orphan = ResourceRef::new(ResourceKind::Rule, "default", "orphan");
    assert_eq!(t.errors.len(), 1, "{:?}", t.errors);
    assert!(t.errors[&orphan].starts_with("spec.virtualService: VirtualService default/missing does not exist"));
}

#[test]
fn a_broken_target_is_left_out_with_what_routes_to_it() {
    let values = [
        vsvc("good", "one", 9001, "ok"),
        vsvc("bad", "one", 9002, "broken"),
        target("ok", json!(80)),
        target("broken", json!(0)),
    ];
    let agents = [agent("n1", &[("app", "one")], None)];
    let t = translate_values(&values, &agents);
    assert_loadable(&t);
    let broken = ResourceRef::new(ResourceKind::Target, "default", "broken");
    let bad = ResourceRef::new(ResourceKind::VirtualService, "default", "bad");
    assert_eq!(
        t.errors.keys().cloned().collect::<Vec<_>>(),
        vec![bad.clone(), broken.clone()]
    );
    assert!(
        t.errors[&broken].contains("spec.cluster.spec.port: "),
        "{}",
        t.errors[&broken]
    );
    assert_eq!(
        t.errors[&bad],
        "spec.listener.rules[0].action.route.destination: Target default/broken does not exist"
    );
    let c = cfg(&t, "n1");
    assert_eq!(listener_names(c), vec!["default/good"]);
    assert!(c.cluster("default/broken").is_none());
}

#[test]
fn unresolvable_refs_are_reported_alone() {
    let values = [
        vsvc("good", "one", 9001, "t"),
        target("t", json!(80)),
        json!({"apiVersion": "l7mp.io/v1", "kind": "Route", "metadata": {"name": "r"},
               "spec": {"destinationRef": "nope", "egress": ["t"]}}),
        json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": "uses-r"},
               "spec": {"listener": {"spec": {"TCP": {"port": 81}}, "rules": [{"action": {"routeRef": "r"}}]}}}),
        json!({"apiVersion": "l7mp.io/v1", "kind": "Target", "metadata": {"name": "linked-nothing"},
               "spec": {"linkedVirtualService": "ghost"}}),
        json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": "shares"},
               "spec": {"listener": {"spec": {"TCP": {"port": 82}}, "rulesRef": "good"}}}),
    ];
    let t = translate(&resources(&values), &[agent("n1", &[("app", "one")], Some("10.9.9.9"))]);
    assert_loadable(&t);
    let k = |kind, n: &str| ResourceRef::new(kind, "default", n);
    assert_eq!(
        t.errors.keys().cloned().collect::<Vec<_>>(),
        vec![
            k(ResourceKind::VirtualService, "uses-r"),
            k(ResourceKind::Target, "linked-nothing"),
            k(ResourceKind::Route, "r"),
        ]
    );
    assert_eq!(
        t.errors[&k(ResourceKind::Route, "r")],
        "spec.destination: Target default/nope does not exist"
    );
    assert_eq!(
        t.errors[&k(ResourceKind::VirtualService, "uses-r")],
        "spec.listener.rules[0].action.routeRef: Route default/r is rejected"
    );
    let c = cfg(&t, "n1");
    assert_eq!(listener_names(c), vec!["default/good", "default/shares"]);
    // rulesRef: the listener uses the other VirtualService's RuleList.
    assert_eq!(
        c.listener("default/shares").map(|l| l.rules.as_str()),
        Some("default/good")
    );
}

#[test]
fn linked_virtual_service_targets_point_at_its_agents() {
    let rs = parse_documents(&example("websocket-to-unix.yaml")).expect("example");
    let agents = [
        agent("tc1", &[("role", "transcoder")], Some("10.0.1.1")),
        agent("tc2", &[("role", "transcoder")], Some("10.0.1.2")),
        agent("in", &[("app", "l7mp-ingress")], Some("10.0.0.1")),
    ];
    let t = translate(&rs, &agents);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert_loadable(&t);
    let ingress = cfg(&t, "in");
    let c = ingress.cluster("default/websocket-cluster").expect("linked cluster");
    assert!(matches!(c.spec, ClusterSpec::WebSocket { port: 8888, .. }));
    let addrs: Vec<&str> = c.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addrs, vec!["10.0.1.1", "10.0.1.2"]);
    assert!(ingress.listeners.is_empty());
    let tc = cfg(&t, "tc1");
    assert_eq!(listener_names(tc), vec!["default/transcoder-vsvc"]);
    let uds = tc.cluster("default/uds-cluster").expect("uds cluster");
    assert_eq!(uds.endpoints[0].address, "/tmp/l7mp-transcoder.sock");
    assert!(tc.cluster("default/websocket-cluster").is_none());
}

#[test]
fn translation_is_deterministic() {
    let mut rs = parse_documents(&example("udp-to-tcp.yaml")).expect("example");
    rs.extend(parse_documents(&example("websocket-to-unix.yaml")).expect("example"));
    let agents = [
        agent("gw", &[("app", "gateway")], Some("10.0.0.1")),
        agent("be", &[("app", "backend")], Some("10.0.0.2")),
        agent("tc", &[("app", "backend"), ("role", "transcoder")], Some("10.0.0.3")),
    ];
    let a = translate(&rs, &agents);
    let b = translate(&rs, &agents);
    assert_eq!(a, b);
    let dumps = |t: &Translation| t.per_agent.values().map(|c| dump::config(c)).collect::<Vec<_>>();
    assert_eq!(dumps(&a), dumps(&b));
    // The order of the input does not matter either.
    let mut reversed = rs.clone();
    reversed.reverse();
    assert_eq!(dumps(&translate(&reversed, &agents)), dumps(&a));
    // Every object name is free of white space.
    for c in a.per_agent.values() {
        for n in c
            .listeners
            .iter()
            .map(|x| &x.name)
            .chain(c.clusters.iter().map(|x| &x.name))
            .chain(c.rules.iter().map(|x| &x.name))
        {
            assert!(!n.chars().any(char::is_whitespace), "{n}");
        }
    }
}

#[test]
fn duplicates_are_rejected() {
    let values = [target("t", json!(80)), target("t", json!(81))];
    let t = translate(&resources(&values), &[agent("n", &[], None)]);
    assert_eq!(
        t.errors
            .get(&ResourceRef::new(ResourceKind::Target, "default", "t"))
            .map(String::as_str),
        Some("metadata.name: defined more than once")
    );
    assert!(cfg(&t, "n").clusters.is_empty());
}

#[test]
fn every_example_parses_and_translates_cleanly() {
    let dir = repo().join("examples/mesh");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let agents = [
        agent("gw", &[("app", "gateway")], Some("10.0.0.1")),
        agent("be", &[("app", "backend")], Some("10.0.0.2")),
        agent("tc", &[("app", "backend"), ("role", "transcoder")], Some("10.0.0.3")),
        agent("in", &[("app", "l7mp-ingress")], Some("10.0.0.4")),
    ];
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let rs = parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let t = translate(&rs, &agents);
        assert!(t.errors.is_empty(), "{}: {:?}", f.display(), t.errors);
        assert_loadable(&t);
        assert!(t.per_agent.values().any(|c| !c.listeners.is_empty()), "{}", f.display());
    }
}

#[test]
fn every_resource_example_in_the_docs_parses() {
    let page = std::fs::read_to_string(repo().join("docs/resources.md")).unwrap_or_else(|e| panic!("{e}"));
    let blocks: Vec<String> = yaml_blocks(&page)
        .into_iter()
        .filter(|b| b.contains("apiVersion") && !b.contains("{...}"))
        .collect();
    assert!(blocks.len() >= 5, "only {} examples", blocks.len());
    for b in blocks {
        if let Err(e) = parse_documents(&b) {
            panic!("docs/resources.md example rejected:\n{e}\n{b}");
        }
    }
}

#[test]
fn apply_installs_the_other_rulelist_one_level_deep() {
    let mut base = vsvc("base", "nobody", 9001, "t");
    base["spec"]["listener"]["rules"][0]["match"] = json!({"op": "defined", "path": "/x"});
    let front = json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": "front"},
        "spec": {"selector": {"app": "one"}, "listener": {"spec": {"TCP": {"port": 80}},
                 "rules": [{"action": {"rewrite": [{"path": "/x", "value": 1}], "apply": "base"}}]}}});
    let chained = json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": "chained"},
        "spec": {"selector": {"app": "one"}, "listener": {"spec": {"TCP": {"port": 81}},
                 "rules": [{"action": {"apply": "front"}}]}}});
    let t = translate(
        &resources(&[base, front, chained, target("t", json!(80))]),
        &[agent("n1", &[("app", "one")], None)],
    );
    assert_loadable(&t);
    let c = cfg(&t, "n1");
    assert_eq!(listener_names(c), vec!["default/front"]);
    assert_eq!(
        c.rule("default/front/rules/0")
            .and_then(|r| r.action.apply.clone())
            .as_deref(),
        Some("default/base")
    );
    assert_eq!(
        c.rulelist("default/base").map(|l| l.rules.clone()),
        Some(vec!["default/base/rules/0".to_string()])
    );
    assert!(c.cluster("default/t").is_some());
    let chained = ResourceRef::new(ResourceKind::VirtualService, "default", "chained");
    assert_eq!(
        t.errors.get(&chained).map(String::as_str),
        Some(
            "spec.listener.rules[0].action.apply: VirtualService default/front uses apply itself (only one level is allowed)"
        )
    );
}

#[test]
fn a_target_that_only_fails_on_one_agent_is_left_out_there_alone() {
    // Its only endpoint of weight > 0 comes from a selector that picks no agent with an address: the cluster would
    // have every endpoint at weight 0, which the agent refuses.
    let t0 = json!({"apiVersion": "l7mp.io/v1", "kind": "Target", "metadata": {"name": "t0"},
        "spec": {"selector": {"app": "one"}, "cluster": {"spec": {"TCP": {"port": 80}},
                 "endpoints": [{"spec": {"address": "10.0.0.9"}, "weight": 0}, {"selector": {"app": "none"}}]}}});
    let values = [vsvc("a", "one", 9001, "t"), target("t", json!(80)), t0];
    let t = translate(&resources(&values), &[agent("n1", &[("app", "one")], None)]);
    assert_loadable(&t);
    let t0 = ResourceRef::new(ResourceKind::Target, "default", "t0");
    assert_eq!(t.errors.keys().collect::<Vec<_>>(), vec![&t0]);
    assert!(t.errors[&t0].starts_with("on agent n1: "), "{}", t.errors[&t0]);
    assert_eq!(listener_names(cfg(&t, "n1")), vec!["default/a"]);
}

#[test]
fn a_virtual_cluster_target_translates_without_endpoints() {
    let echo = yaml(
        "
apiVersion: l7mp.io/v1
kind: Target
metadata: { name: echo }
spec:
  cluster:
    spec: { Echo: {} }
",
    );
    let vs = yaml(
        "
apiVersion: l7mp.io/v1
kind: VirtualService
metadata: { name: gw }
spec:
  listener:
    spec: { UDP: { port: 9000 } }
    rules: [ { action: { route: { destinationRef: echo } } } ]
",
    );
    let t = translate_values(&[echo, vs], &[agent("n1", &[], None)]);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert_loadable(&t);
    let c = cfg(&t, "n1");
    assert!(matches!(c.clusters[0].spec, ClusterSpec::Echo), "{:?}", c.clusters);
    assert_eq!(listener_names(c), ["default/gw"]);
}

#[test]
fn deny_rules_reach_the_agents_and_bad_ones_name_the_field() {
    let mut v = vsvc("edge", "gateway", 9001, "backend");
    v["spec"]["listener"]["rules"] = json!([
        {"match": {"op": "test", "path": "/IP/src_addr", "value": "10.0.0.9"}, "action": {"deny": "10.0.0.9 is banned"}},
        {"action": {"deny": {"reason": "second"}}},
    ]);
    let rs = vec![
        parse_resource(&v).expect("a deny rule parses"),
        parse_resource(&target("backend", json!(7000))).expect("target"),
    ];
    let canonical = to_value(&rs[0]);
    assert_eq!(
        canonical["spec"]["listener"]["rules"][0]["action"]["deny"],
        "10.0.0.9 is banned"
    );
    assert_eq!(parse_resource(&canonical).expect("canonical parses").spec, rs[0].spec);
    let t = translate(&rs, &[agent("gw", &[("app", "gateway")], None)]);
    assert_loadable(&t);
    let gw = cfg(&t, "gw");
    assert_eq!(
        gw.rule("default/edge/rules/0")
            .and_then(|r| r.action.deny.clone())
            .as_deref(),
        Some("10.0.0.9 is banned")
    );
    let mut m = json!({"IP": {"src_addr": "10.0.0.9"}});
    let denied = l7mp_api::lookup::lookup(gw, &gw.listeners[0].rules, &mut m);
    assert!(
        matches!(&denied, Err(l7mp_api::lookup::RouteError::Denied { reason, .. }) if reason == "10.0.0.9 is banned"),
        "{denied:?}"
    );

    v["spec"]["listener"]["rules"] = json!([{"action": {"deny": "x", "routeRef": "r"}}]);
    let e = parse_err(&v);
    assert!(
        e.contains("spec.listener.rules[0].action.routeRef") && e.contains("denies"),
        "{e}"
    );
    v["spec"]["listener"]["rules"] = json!([{"action": {"deny": ""}}]);
    let e = parse_err(&v);
    assert!(
        e.contains("spec.listener.rules[0].action.deny") && e.contains("non-empty"),
        "{e}"
    );
}

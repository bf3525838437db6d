//! VirtualServices marked `spec.grpc`: parsing (errors name the field), canonical JSON, and the translation to
//! proxyless gRPC services (`l7mp_api::resource::grpc`): routes in lookup order, matches, splits, retries, load
//! balancers, endpoints from every source, and the errors that reject a service gRPC cannot express.

#![allow(clippy::unwrap_used)]

use l7mp_api::resource::grpc::*;
use l7mp_api::resource::*;
use serde_json::{Value, json};
use std::net::IpAddr;
use std::time::Duration;

fn docs(text: &str) -> Vec<Resource> {
    parse_documents(text).unwrap_or_else(|e| panic!("{e}"))
}

fn err_of(text: &str) -> String {
    match parse_documents(text) {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => e.to_string(),
    }
}

fn agent(id: &str, app: &str, addr: &str) -> AgentInfo {
    AgentInfo {
        node_id: id.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        address: Some(addr.parse().unwrap()),
    }
}

const TARGETS: &str = r#"
apiVersion: l7mp.io/v1
kind: Target
metadata: {name: v1}
spec:
  cluster:
    spec: {HTTP: {port: 50051}}
    endpoints:
      - {name: a, spec: {address: 10.0.0.1}, weight: 3}
      - {name: b, spec: {address: 10.0.0.2}, weight: 0}
      - {name: dup, spec: {address: 10.0.0.1}, weight: 2}
      - selector: {app: echo}
---
apiVersion: l7mp.io/v1
kind: Target
metadata: {name: v2}
spec:
  cluster:
    spec: {TCP: {port: 50052}}
    loadbalancer: {policy: ConsistentHash, key: /HTTP/headers/X-User}
    endpoints: [{spec: {address: 10.0.0.9}}]
---
"#;

fn translate_with(extra: &str) -> Translation {
    let resources = docs(&format!("{TARGETS}{extra}"));
    translate(
        &resources,
        &[agent("e1", "echo", "10.1.0.1"), agent("gw", "gw", "10.1.0.2")],
    )
}

#[test]
fn grpc_true_or_an_object_and_listener_spec_optional() {
    let r = docs(
        "apiVersion: l7mp.io/v1\nkind: VirtualService\nmetadata: {name: echo}\nspec:\n  grpc: true\n  listener: {rules: []}\n",
    );
    let ResourceSpec::VirtualService(v) = &r[0].spec else {
        panic!()
    };
    assert_eq!(v.grpc, Some(GrpcSpec::default()));
    assert_eq!(v.listener.spec, None);
    // Canonical JSON reads back equal.
    let back = parse_resource(&to_value(&r[0])).unwrap();
    assert_eq!(back.spec, r[0].spec);

    let r = docs(
        "apiVersion: l7mp.io/v1\nkind: VirtualService\nmetadata: {name: echo}\nspec:\n  grpc: {name: echo.svc:50051, timeout: 2500}\n  listener: {rules: []}\n",
    );
    let ResourceSpec::VirtualService(v) = &r[0].spec else {
        panic!()
    };
    let g = v.grpc.as_ref().unwrap();
    assert_eq!(g.name.as_deref(), Some("echo.svc:50051"));
    assert_eq!(g.timeout, Some(Duration::from_millis(2500)));
    let back = parse_resource(&to_value(&r[0])).unwrap();
    assert_eq!(back.spec, r[0].spec);
}

#[test]
fn grpc_errors_name_the_field() {
    let frame =
        |spec: &str| format!("apiVersion: l7mp.io/v1\nkind: VirtualService\nmetadata: {{name: e}}\nspec: {spec}\n");
    for (spec, want) in [
        (
            "{listener: {rules: []}}",
            "[0].spec.listener.spec: missing required field (only a gRPC service",
        ),
        (
            "{grpc: yes, listener: {rules: []}}",
            "[0].spec.grpc: expected true or an object",
        ),
        (
            "{grpc: {name: 'a b'}, listener: {rules: []}}",
            "[0].spec.grpc.name: \"a b\" may only contain",
        ),
        (
            "{grpc: {timeout: 0}, listener: {rules: []}}",
            "[0].spec.grpc.timeout: expected a number of milliseconds",
        ),
        (
            "{grpc: {port: 1}, listener: {rules: []}}",
            "[0].spec.grpc.port: unknown field",
        ),
        (
            "{grpc: false, listener: {rules: []}}",
            "[0].spec.listener.spec: missing required field",
        ),
    ] {
        let e = err_of(&frame(spec));
        assert!(e.contains(want), "{spec}: {e}");
    }
}

#[test]
fn services_routes_and_clusters() {
    let t = translate_with(
        r#"
apiVersion: l7mp.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  grpc: {timeout: 3000}
  listener:
    rules:
      - match: {op: and, apply: [{op: starts, path: /HTTP/url/path, value: /test.Echo/},
                                 {op: test, path: /HTTP/headers/x-canary, value: "yes"}]}
        action:
          route:
            destination: [{target: v1, weight: 9}, {target: v2, weight: 1}]
            retry: {retry_on: always, num_retries: 3, backoff: {initial: 100, max: 1000}}
      - action: {routeRef: to-v1}
---
apiVersion: l7mp.io/v1
kind: Route
metadata: {name: to-v1}
spec: {destination: v1}
---
apiVersion: l7mp.io/v1
kind: Rule
metadata: {name: first}
spec:
  virtualService: echo
  position: 0
  match: {op: test, path: /HTTP/url/path, value: /test.Echo/Health}
  action: {route: {destination: v2}}
"#,
    );
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    let svc = &t.grpc.services["echo"];
    assert_eq!(svc.source.fqn(), "default/echo");
    assert_eq!(svc.timeout, Some(Duration::from_millis(3000)));
    let names: Vec<&str> = svc.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["default/first", "default/echo/rules/0", "default/echo/rules/1"]);
    assert_eq!(svc.routes[0].matcher.path, PathMatch::Exact("/test.Echo/Health".into()));
    assert_eq!(svc.routes[0].destination, GrpcDestination::Cluster("default/v2".into()));
    // The ring-hash Target brings its hash key to the routes that use it.
    assert_eq!(svc.routes[0].hash, [HashOn::Header("x-user".into())]);
    let r = &svc.routes[1];
    assert_eq!(r.matcher.path, PathMatch::Prefix("/test.Echo/".into()));
    assert_eq!(r.matcher.headers[0].name, "x-canary");
    assert_eq!(
        r.destination,
        GrpcDestination::Split(vec![("default/v1".into(), 9), ("default/v2".into(), 1)])
    );
    let retry = r.retry.as_ref().unwrap();
    assert_eq!(retry.num_retries, 3);
    assert_eq!(retry.base_interval, Duration::from_millis(100));
    assert_eq!(retry.max_interval, Duration::from_millis(1000));
    assert!(retry.retry_on.contains(&"unavailable"));
    assert_eq!(svc.routes[2].matcher, RouteMatch::default());
    assert_eq!(svc.routes[2].retry, None);

    let v1 = &t.grpc.clusters["default/v1"];
    assert_eq!((v1.lb, v1.port), (GrpcLb::RoundRobin, 50051));
    // Weight 0 left out; the same address twice is one endpoint with both weights; selector endpoints are the
    // matching agents' addresses.
    let eps: Vec<(IpAddr, u32)> = v1.endpoints.iter().map(|e| (e.address, e.weight)).collect();
    assert_eq!(
        eps,
        [("10.0.0.1".parse().unwrap(), 5), ("10.1.0.1".parse().unwrap(), 1)]
    );
    let v2 = &t.grpc.clusters["default/v2"];
    assert_eq!((v2.lb, v2.port), (GrpcLb::RingHash, 50052));

    // A gRPC-only service installs nothing on agents.
    assert!(t.per_agent.values().all(|c| c.listeners.is_empty()));
}

#[test]
fn a_service_with_a_listener_is_both() {
    let t = translate_with(
        r#"
apiVersion: l7mp.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  selector: {app: gw}
  grpc: true
  listener:
    spec: {HTTP: {port: 8080}}
    rules: [{action: {route: {destination: v1}}}]
"#,
    );
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert!(t.grpc.services.contains_key("echo"));
    assert_eq!(t.per_agent["gw"].listeners.len(), 1);
    assert!(t.per_agent["e1"].listeners.is_empty());
}

fn rejected(extra: &str, vs: &str) -> String {
    let t = translate_with(extra);
    assert!(
        !t.grpc.services.values().any(|s| s.source.name == vs),
        "{vs} was translated"
    );
    t.errors
        .get(&ResourceRef::new(ResourceKind::VirtualService, "default", vs))
        .cloned()
        .unwrap_or_else(|| panic!("no error for {vs}: {:?}", t.errors))
}

fn vs(name: &str, grpc: &str, rules: &str) -> String {
    format!(
        "apiVersion: l7mp.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  grpc: {grpc}\n  listener:\n    rules: {rules}\n---\n"
    )
}

#[test]
fn what_grpc_cannot_do_rejects_the_service_naming_the_field() {
    let udp = "apiVersion: l7mp.io/v1\nkind: Target\nmetadata: {name: u}\nspec: {cluster: {spec: {UDP: {port: 9}}, endpoints: [{spec: {address: 10.0.0.5}}]}}\n---\n";
    let named = "apiVersion: l7mp.io/v1\nkind: Target\nmetadata: {name: dns}\nspec: {cluster: {spec: {TCP: {port: 9}}, endpoints: [{spec: {address: backend.local}}]}}\n---\n";
    let hashed = "apiVersion: l7mp.io/v1\nkind: Target\nmetadata: {name: h}\nspec: {cluster: {spec: {TCP: {port: 9}}, loadbalancer: {policy: ConsistentHash, key: /labels/user}, endpoints: [{spec: {address: 10.0.0.5}}]}}\n---\n";
    for (extra, want) in [
        (
            vs(
                "e",
                "true",
                "[{match: {op: test, path: /IP/src_addr, value: 1.2.3.4}, action: {route: {destination: v1}}}]",
            ),
            "spec.listener.rules[0].match: `test` on /IP/src_addr has no gRPC equivalent",
        ),
        (
            vs(
                "e",
                "true",
                "[{action: {rewrite: [{path: /labels/x, value: 1}], route: {destination: v1}}}]",
            ),
            "spec.listener.rules[0].action.rewrite: not supported by a gRPC service",
        ),
        (
            vs("e", "true", "[{action: {route: {destination: v1, ingress: [v2]}}}]"),
            "spec.listener.rules[0].action.route.ingress: chains are not supported",
        ),
        (
            format!("{udp}{}", vs("e", "true", "[{action: {route: {destination: u}}}]")),
            "spec.listener.rules[0].action.route.destination: Target default/u is a UDP cluster",
        ),
        (
            format!("{named}{}", vs("e", "true", "[{action: {route: {destination: dns}}}]")),
            "spec.cluster.endpoints[0].spec.address: \"backend.local\" is not an IP address",
        ),
        (
            format!("{hashed}{}", vs("e", "true", "[{action: {route: {destination: h}}}]")),
            "spec.cluster.loadbalancer.key: /labels/user cannot be hashed by a gRPC client",
        ),
    ] {
        let e = rejected(&extra, "e");
        assert!(e.contains(want), "want {want:?}, got {e:?}");
    }
}

#[test]
fn a_name_is_served_once() {
    let t = translate_with(&format!(
        "{}{}",
        vs("a", "{name: echo}", "[{action: {route: {destination: v1}}}]"),
        vs("b", "{name: echo}", "[{action: {route: {destination: v2}}}]")
    ));
    assert_eq!(t.grpc.services["echo"].source.name, "a");
    let e = &t.errors[&ResourceRef::new(ResourceKind::VirtualService, "default", "b")];
    assert_eq!(
        e,
        "spec.grpc.name: xds:///echo is already served by VirtualService default/a"
    );
}

#[test]
fn a_grpc_only_service_cannot_be_linked() {
    let t = translate_with(&format!(
        "{}apiVersion: l7mp.io/v1\nkind: Target\nmetadata: {{name: link}}\nspec: {{linkedVirtualService: echo}}\n",
        vs("echo", "true", "[{action: {route: {destination: v1}}}]")
    ));
    let e = &t.errors[&ResourceRef::new(ResourceKind::Target, "default", "link")];
    assert!(e.contains("no listener (a gRPC-only service)"), "{e}");
}

#[test]
fn route_matches_cover_the_table() {
    let m = |p: Value| route_match(Some(&p));
    let ci = m(json!({"op": "starts", "path": "/HTTP/url/path", "value": "/a.B/", "ignore_case": true})).unwrap();
    assert!(!ci.case_sensitive);
    let h = m(json!({"op": "in", "path": "/HTTP/headers/env", "value": ["a.b", "c"]})).unwrap();
    assert_eq!(h.headers[0].value, HeaderValue::Regex("(?:a\\.b|c)".into()));
    let h = m(json!({"op": "not", "apply": [{"op": "contains", "path": "/HTTP/headers/ua", "value": "bot"}]})).unwrap();
    assert!(h.headers[0].invert);
    assert!(m(json!({"op": "more", "path": "/TCP/src_port", "value": 1})).is_err());
}

/// The ```yaml blocks of a Markdown page.
fn yaml_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match &mut cur {
            None if line.trim_start() == "```yaml" => cur = Some(String::new()),
            Some(_) if line.trim_start() == "```" => out.extend(cur.take()),
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn the_guide_and_the_example_translate() {
    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("..");
    let example = std::fs::read_to_string(root.join("examples/grpc/echo.yaml")).unwrap();
    let guide = std::fs::read_to_string(root.join("docs/grpc.md")).unwrap();
    let blocks = yaml_blocks(&guide);
    assert_eq!(
        blocks.first(),
        Some(&example),
        "docs/grpc.md shows examples/grpc/echo.yaml as it is"
    );
    let t = translate(
        &docs(&example),
        &[
            agent("v2-1", "echo-v2", "10.0.1.1"),
            agent("v2-2", "echo-v2", "10.0.1.2"),
        ],
    );
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    let svc = &t.grpc.services["echo"];
    assert_eq!(svc.routes.len(), 1);
    assert_eq!(t.grpc.clusters["default/echo-v1"].endpoints.len(), 2);
    assert_eq!(t.grpc.clusters["default/echo-v2"].endpoints.len(), 2);
}

//! Targets whose endpoints are discovered workloads (`pods`, `service`): parsing with field-path errors, the
//! canonical form, and translation to exactly the ready addresses.

use l7mp_api::resource::*;
use l7mp_api::workload::{EndpointSlice, Pod, SliceEndpoint, Workloads};
use l7mp_api::{Config, config_from_value, dump};
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn target(endpoints: Value) -> Value {
    json!({"apiVersion": "l7mp.io/v1", "kind": "Target", "metadata": {"name": "echo", "namespace": "media"},
           "spec": {"cluster": {"spec": {"UDP": {"port": 7000}}, "endpoints": endpoints}}})
}

fn parse_err(v: &Value) -> String {
    match parse_resource(v) {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => e.to_string(),
    }
}

fn endpoints(r: &Resource) -> &[EndpointSpec] {
    match &r.spec {
        ResourceSpec::Target(TargetSpec {
            backend: TargetBackend::Cluster(c),
            ..
        }) => &c.endpoints,
        other => panic!("not a cluster Target: {other:?}"),
    }
}

fn pod(ns: &str, name: &str, app: &str, ip: &str, ready: bool) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ip: Some(ip.parse().expect("ip")),
        ready,
    }
}

fn agent(id: &str) -> AgentInfo {
    AgentInfo {
        node_id: id.into(),
        labels: BTreeMap::new(),
        address: None,
    }
}

/// The addresses of a cluster in an agent's configuration, as the agent loads it.
fn addresses(t: &Translation, node: &str, cluster: &str) -> Vec<String> {
    let cfg: &Config = t.per_agent.get(node).expect("agent config");
    let again = config_from_value(&dump::config(cfg)).expect("the agent loads it");
    assert_eq!(&again, cfg);
    cfg.clusters
        .iter()
        .find(|c| c.name == cluster)
        .unwrap_or_else(|| panic!("no cluster {cluster}: {:?}", t.errors))
        .endpoints
        .iter()
        .map(|e| e.address.clone())
        .collect()
}

#[test]
fn pods_and_service_endpoints_parse_with_defaults() {
    let r = parse_resource(&target(json!([
        {"pods": {"selector": {"app": "echo"}}},
        {"pods": {"selector": {"matchLabels": {"app": "echo", "tier": "a"}}, "namespace": "other"}, "weight": 3},
        {"service": {"name": "echo"}},
        {"spec": {"address": "10.9.9.9"}},
    ])))
    .expect("valid");
    let sel = |kv: &[(&str, &str)]| Selector {
        match_labels: kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    assert_eq!(
        endpoints(&r),
        &[
            EndpointSpec::Pods {
                selector: sel(&[("app", "echo")]),
                namespace: "media".into(), // the Target's
                weight: 1,
            },
            EndpointSpec::Pods {
                selector: sel(&[("app", "echo"), ("tier", "a")]),
                namespace: "other".into(),
                weight: 3,
            },
            EndpointSpec::Service {
                name: "echo".into(),
                namespace: "media".into(),
                weight: 1,
            },
            EndpointSpec::Static {
                name: None,
                address: "10.9.9.9".into(),
                weight: 1,
            },
        ]
    );
    // The canonical form reads back equal.
    let again = parse_resource(&to_value(&r)).expect("canonical form");
    assert_eq!(again.spec, r.spec);
}

#[test]
fn bad_workload_endpoints_name_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!([{"pods": {"selector": {"app": 3}}}]),
            "spec.cluster.endpoints[0].pods.selector.app: expected a label value",
        ),
        (
            json!([{"pods": {"selector": {"app": "-echo-"}}}]),
            "spec.cluster.endpoints[0].pods.selector.app: \"-echo-\" is no valid label value",
        ),
        (
            json!([{"pods": {"selector": {"bad key": "x"}}}]),
            "spec.cluster.endpoints[0].pods.selector.bad key: \"bad key\" is no valid label key",
        ),
        (
            json!([{"pods": {"selector": {}}}]),
            "spec.cluster.endpoints[0].pods.selector: an empty selector",
        ),
        (
            json!([{"pods": {"selector": {"matchExpressions": []}}}]),
            "spec.cluster.endpoints[0].pods.selector.matchExpressions: not supported",
        ),
        (
            json!([{"pods": {"namespace": "media"}}]),
            "spec.cluster.endpoints[0].pods.selector: missing required field",
        ),
        (
            json!([{"pods": {"selector": {"app": "x"}, "namespace": "Media"}}]),
            "spec.cluster.endpoints[0].pods.namespace: \"Media\" must be a DNS label",
        ),
        (
            json!([{"spec": {"address": "10.0.0.1"}}, {"pods": {"selector": {"app": "x"}, "port": 1}}]),
            "spec.cluster.endpoints[1].pods.port: unknown field",
        ),
        (
            json!([{"service": {"namespace": "media"}}]),
            "spec.cluster.endpoints[0].service.name: missing required field",
        ),
        (
            json!([{"service": {"name": "Echo_1"}}]),
            "spec.cluster.endpoints[0].service.name: \"Echo_1\" must be a DNS label",
        ),
        (
            json!([{"service": {"name": "echo"}, "pods": {"selector": {"app": "x"}}}]),
            "spec.cluster.endpoints[0].service: give `pods` or `service`, not both",
        ),
        (
            json!([{"service": {"name": "echo"}, "weight": -1}]),
            "spec.cluster.endpoints[0].weight: expected a non-negative integer",
        ),
    ];
    for (eps, want) in cases {
        let e = parse_err(&target(eps.clone()));
        assert!(e.contains(want), "{eps}: got {e:?}, want {want:?}");
    }
    // A cluster that does not connect to IP addresses cannot take workloads.
    let uds = json!({"apiVersion": "l7mp.io/v1", "kind": "Target", "metadata": {"name": "u"},
                     "spec": {"cluster": {"spec": {"UnixDomainSocket": {}},
                                          "endpoints": [{"pods": {"selector": {"app": "x"}}}]}}});
    let e = parse_err(&uds);
    assert!(
        e.contains("spec.cluster.endpoints[0].pods: workload endpoints need a cluster that connects to an IP"),
        "{e}"
    );
}

#[test]
fn translation_takes_exactly_the_ready_addresses() {
    let t1 = parse_resource(&target(json!([{"pods": {"selector": {"app": "echo"}}}]))).expect("valid");
    let w = Workloads {
        enabled: true,
        pods: vec![
            pod("media", "a", "echo", "10.0.0.1", true),
            pod("media", "b", "echo", "10.0.0.2", false),
            pod("media", "c", "echo", "10.0.0.3", true),
            pod("other", "d", "echo", "10.0.0.4", true),
            pod("media", "e", "web", "10.0.0.5", true),
        ],
        slices: vec![],
    };
    let agents = [agent("n1")];
    let t = translate_with(&[&t1], &agents, &w);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert_eq!(addresses(&t, "n1", "media/echo"), ["10.0.0.1", "10.0.0.3"]);
    let c = t.per_agent["n1"]
        .clusters
        .iter()
        .find(|c| c.name == "media/echo")
        .expect("cluster");
    let names: Vec<&str> = c.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["media/echo/10.0.0.1", "media/echo/10.0.0.3"]);

    // No ready pod: the cluster stays, without endpoints (the VirtualServices routing to it are not torn down).
    let none = Workloads {
        enabled: true,
        ..Default::default()
    };
    let t = translate_with(&[&t1], &agents, &none);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert!(addresses(&t, "n1", "media/echo").is_empty());

    // Without discovery the Target is rejected, naming the endpoint.
    let t = translate(&[&t1], &agents);
    let e = t.errors.get(&t1.reference()).expect("rejected");
    assert!(
        e.starts_with("spec.cluster.endpoints[0].pods: workload discovery is off"),
        "{e}"
    );
}

#[test]
fn service_endpoints_serve_the_cluster_port() {
    let t1 = parse_resource(&target(json!([{"service": {"name": "echo"}, "weight": 2}]))).expect("valid");
    let ep = |a: &str, ready| SliceEndpoint {
        addresses: vec![a.parse().expect("ip")],
        ready,
    };
    let slice = |name: &str, port: u16, endpoints| EndpointSlice {
        namespace: "media".into(),
        name: name.into(),
        service: "echo".into(),
        ports: vec![port],
        endpoints,
    };
    let w = Workloads {
        enabled: true,
        pods: vec![],
        slices: vec![
            slice("echo-1", 7000, vec![ep("10.1.0.1", true), ep("10.1.0.2", false)]),
            slice("echo-2", 7000, vec![ep("10.1.0.3", true)]),
            slice("echo-3", 9999, vec![ep("10.1.0.4", true)]), // another port of the Service
        ],
    };
    let t = translate_with(&[&t1], &[agent("n1")], &w);
    assert_eq!(addresses(&t, "n1", "media/echo"), ["10.1.0.1", "10.1.0.3"]);
    let weights: Vec<u32> = t.per_agent["n1"].clusters[0]
        .endpoints
        .iter()
        .map(|e| e.weight)
        .collect();
    assert_eq!(weights, [2, 2]);
}

//! Every l7mp.io/v1 object in examples/mesh/*.yaml, examples/grpc/*.yaml and in the YAML blocks of docs/resources.md validates against
//! its CRD schema, deserializes into the typed struct, and serializes back to the same JSON, which
//! `l7mp_api::resource::parse_resource` accepts. Wrong objects fail, naming the field.

mod common;

use l7mp_api::resource::{parse_resource, to_value};
use l7mp_k8s::validate::validate_resource;
use l7mp_k8s::{Route, Rule, Target, VirtualService};
use serde_json::{Value, json};

fn all_examples() -> Vec<(String, Value)> {
    let mut v = common::mesh_examples();
    let docs = common::doc_examples();
    assert!(
        docs.len() >= 6,
        "expected the docs' example objects, found {}",
        docs.len()
    );
    v.extend(docs);
    v
}

/// Deserializes into the kind's typed struct and serializes it again.
fn typed_round_trip(v: &Value) -> Result<Value, String> {
    fn rt<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Result<Value, String> {
        let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(&t).map_err(|e| e.to_string())
    }
    match v["kind"].as_str() {
        Some("VirtualService") => rt::<VirtualService>(v),
        Some("Target") => rt::<Target>(v),
        Some("Route") => rt::<Route>(v),
        Some("Rule") => rt::<Rule>(v),
        other => Err(format!("not an l7mp kind: {other:?}")),
    }
}

/// The objects the model accepts; the one that it does not is the frame in docs/resources.md (`spec: {...}`).
fn accepted_examples() -> Vec<(String, Value)> {
    let (ok, rejected): (Vec<_>, Vec<_>) = all_examples().into_iter().partition(|(_, v)| parse_resource(v).is_ok());
    let rejected: Vec<&str> = rejected
        .iter()
        .map(|(_, v)| v["metadata"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        rejected,
        ["my-vsvc"],
        "only the frame example may be rejected by parse_resource"
    );
    assert!(ok.len() >= 12, "found only {} example objects", ok.len());
    ok
}

#[test]
fn examples_validate_against_the_crd_schemas() {
    let mut problems = Vec::new();
    for (source, v) in accepted_examples() {
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        for e in validate_resource(&common::schema_of(&kind), &v) {
            problems.push(format!("{source} ({kind}): {e}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn examples_round_trip_through_the_typed_structs() {
    for (source, v) in accepted_examples() {
        let back = typed_round_trip(&v).unwrap_or_else(|e| panic!("{source}: does not deserialize: {e}"));
        assert_eq!(back, v, "{source}: the typed struct changes the object");
        let model = parse_resource(&back).unwrap_or_else(|e| panic!("{source}: parse_resource refuses: {e}"));
        let original = parse_resource(&v).expect("accepted above");
        assert_eq!(to_value(&model), to_value(&original), "{source}");
    }
}

fn vsvc(spec: Value) -> Value {
    json!({"apiVersion": "l7mp.io/v1", "kind": "VirtualService", "metadata": {"name": "v"}, "spec": spec})
}

#[test]
fn wrong_objects_fail_naming_the_field() {
    let cases = [
        (
            "VirtualService",
            vsvc(json!({"listener": {"spec": {"UDP": {"port": 9001}}, "rulez": []}})),
            "spec.listener.rulez: unknown field",
        ),
        // (`spec.listener` may be left out by a gRPC-only service: the control plane checks that, naming the field.)
        (
            "VirtualService",
            vsvc(json!({"listener": {"spec": {"UDP": {"port": 9001}}}, "grpcc": true})),
            "spec.grpcc: unknown field",
        ),
        (
            "VirtualService",
            vsvc(json!({"listener": {"spec": "UDP"}})),
            "spec.listener.spec: expected object, got a string",
        ),
        (
            "Route",
            json!({"apiVersion": "l7mp.io/v1", "kind": "Route", "metadata": {"name": "r"},
                   "spec": {"destinationRef": "t", "retry": {"retry_on": "sometimes", "num_retries": 5000}}}),
            "spec.retry.retry_on: \"sometimes\" is not one of",
        ),
        (
            "Target",
            json!({"apiVersion": "l7mp.io/v1", "kind": "Target", "metadata": {"name": "t"},
                   "spec": {"cluster": {"spec": {"protocol": "TCP"}, "endpoints": [{"spec": {"address": 1}}]}}}),
            "spec.cluster.endpoints[0].spec.address: expected string, got an integer",
        ),
        (
            "Rule",
            json!({"apiVersion": "l7mp.io/v1", "kind": "Rule", "metadata": {"name": "r"},
                   "spec": {"virtualService": "v", "position": -1, "action": {"routeRef": "x"}}}),
            "spec.position: -1 is less than the minimum 0",
        ),
    ];
    for (kind, obj, want) in cases {
        let errs: Vec<String> = validate_resource(&common::schema_of(kind), &obj)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "{obj}: want {want:?}, got {errs:?}"
        );
        // The typed structs ignore unknown fields (as Kubernetes clients do; `deny_unknown_fields` would derive
        // `additionalProperties: false`, which a structural schema forbids); everything else they refuse too.
        if !want.ends_with("unknown field") {
            assert!(
                typed_round_trip(&obj).is_err(),
                "{obj}: the typed struct should refuse it too"
            );
        }
    }
}

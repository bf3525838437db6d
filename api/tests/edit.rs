//! `edit::apply`: the REST API's changes, validated by the loader, with errors phrased for the API caller and
//! generated objects tracked.

#![allow(clippy::unwrap_used)]

use l7mp_api::edit::{self, Edit, EditError, RuleRef};
use l7mp_api::{Config, ObjectKind, config_from_value, dump};
use serde_json::{Value, json};

fn base() -> Config {
    config_from_value(&json!({
        "clusters": [
            {"name": "c1", "spec": {"protocol": "TCP", "port": 80},
             "endpoints": [{"name": "ep1", "spec": {"address": "10.0.0.1"}}]},
            {"name": "c2", "spec": {"protocol": "Echo"}}
        ],
        "listeners": [{"name": "l1", "spec": {"protocol": "TCP", "port": 1000}, "rules": "rl1"}],
        "rulelists": [{"name": "rl1", "rules": ["ra", "rb"]}],
        "rules": [
            {"name": "ra", "match": {"op": "test", "path": "/x", "value": 1}, "action": {"route": "r1"}},
            {"name": "rb", "action": {"route": "r2"}},
            {"name": "rc", "action": {"route": "r2"}}
        ],
        "routes": [{"name": "r1", "destination": "c1"}, {"name": "r2", "destination": "c2"}]
    }))
    .unwrap()
}

fn generated(c: &Config) -> Vec<(ObjectKind, &str)> {
    c.generated.iter().map(|(k, n)| (*k, n.as_str())).collect()
}

/// The field errors of an `Invalid` edit error, as `path: reason` lines.
fn invalid(e: EditError) -> Vec<String> {
    match e {
        EditError::Invalid(c) => c.field_errors().iter().map(ToString::to_string).collect(),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn inline_listener() -> Value {
    json!({"name": "l2", "spec": {"protocol": "TCP", "port": 2000},
           "rules": [{"action": {"route": {"destination": {"spec": {"protocol": "Echo"}}}}}]})
}

fn with_l2() -> Config {
    edit::apply(
        &base(),
        Edit::Add {
            kind: ObjectKind::Listener,
            object: &inline_listener(),
        },
    )
    .unwrap()
}

const L2_GENERATED: [(ObjectKind, &str); 4] = [
    (ObjectKind::Cluster, "l2-RuleList-0-Rule-0-Route-0-Cluster-0"),
    (ObjectKind::RuleList, "l2-RuleList-0"),
    (ObjectKind::Rule, "l2-RuleList-0-Rule-0"),
    (ObjectKind::Route, "l2-RuleList-0-Rule-0-Route-0"),
];

#[test]
fn add_a_listener_with_inline_rules_generates_and_flags_its_children() {
    let c = with_l2();
    assert_eq!(c.listener("l2").unwrap().rules, "l2-RuleList-0");
    assert_eq!(c.rulelist("l2-RuleList-0").unwrap().rules, ["l2-RuleList-0-Rule-0"]);
    assert_eq!(
        c.rule("l2-RuleList-0-Rule-0").unwrap().action.route.as_deref(),
        Some("l2-RuleList-0-Rule-0-Route-0")
    );
    assert!(c.cluster("l2-RuleList-0-Rule-0-Route-0-Cluster-0").is_some());
    assert_eq!(generated(&c), L2_GENERATED);
    // Later edits keep the flags of the objects that still exist.
    let c = edit::apply(
        &c,
        Edit::Add {
            kind: ObjectKind::Cluster,
            object: &json!({"name": "c3", "spec": {"protocol": "Discard"}}),
        },
    )
    .unwrap();
    assert!(c.cluster("c3").is_some());
    assert_eq!(generated(&c), L2_GENERATED);
    assert!(c.is_generated(ObjectKind::RuleList, "l2-RuleList-0"));
    assert!(!c.is_generated(ObjectKind::Cluster, "c3"));
}

#[test]
fn a_bad_field_is_named_relative_to_the_request_body() {
    let c = base();
    let bad = json!({"name": "l3", "spec": {"protocol": "TCP", "port": "abc"}, "rules": "rl1"});
    let e = edit::apply(
        &c,
        Edit::Add {
            kind: ObjectKind::Listener,
            object: &bad,
        },
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"listener.spec.port: expected an integer 1..65535, got "abc""#
    );
    // Inline children too, and references that do not resolve.
    let bad = json!({"name": "l3", "spec": {"protocol": "TCP", "port": 3000},
                     "rules": [{"action": {"route": {"destination": "nope"}}}]});
    let e = edit::apply(
        &c,
        Edit::Add {
            kind: ObjectKind::Listener,
            object: &bad,
        },
    )
    .unwrap_err();
    assert_eq!(
        invalid(e),
        [r#"listener.rules[0].action.route.destination: cluster "nope" is not defined"#]
    );
    let e = edit::apply(
        &c,
        Edit::Add {
            kind: ObjectKind::Route,
            object: &json!({"name": "r9", "destination": "c1", "retry": {"timeout": 0}}),
        },
    )
    .unwrap_err();
    assert_eq!(
        invalid(e),
        ["route.retry.timeout: expected an integer 1..3600000, got 0"]
    );
    let e = edit::apply(
        &c,
        Edit::Add {
            kind: ObjectKind::Cluster,
            object: &json!({"spec": {"protocol": "Echo"}}),
        },
    )
    .unwrap_err();
    assert_eq!(invalid(e), ["cluster.name: missing required field"]);
}

#[test]
fn adding_a_name_that_exists_is_refused() {
    let e = edit::apply(
        &base(),
        Edit::Add {
            kind: ObjectKind::Listener,
            object: &json!({"name": "l1", "spec": {"protocol": "TCP", "port": 3000}, "rules": "rl1"}),
        },
    )
    .unwrap_err();
    assert_eq!(
        e,
        EditError::Exists {
            kind: ObjectKind::Listener,
            name: "l1".into()
        }
    );
    // An inline child named like an existing object.
    let e = edit::apply(
        &base(),
        Edit::Add {
            kind: ObjectKind::Listener,
            object: &json!({"name": "l9", "spec": {"protocol": "TCP", "port": 3000},
                            "rules": [{"action": {"route": {"name": "r1", "destination": "c1"}}}]}),
        },
    )
    .unwrap_err();
    assert_eq!(
        e,
        EditError::Exists {
            kind: ObjectKind::Route,
            name: "r1".into()
        }
    );
    let e = edit::apply(
        &base(),
        Edit::Add {
            kind: ObjectKind::Endpoint,
            object: &json!({"spec": {"address": "x"}}),
        },
    )
    .unwrap_err();
    assert!(matches!(e, EditError::Unsupported(_)), "{e:?}");
}

#[test]
fn put_replaces_an_object_in_place() {
    let c = base();
    for body in [json!({"destination": "c2"}), json!({"name": "r1", "destination": "c2"})] {
        let n = edit::apply(
            &c,
            Edit::Update {
                kind: ObjectKind::Route,
                name: "r1",
                object: &body,
            },
        )
        .unwrap();
        assert_eq!(
            n.route("r1").unwrap().destination,
            l7mp_api::Destination::Cluster("c2".into())
        );
        assert_eq!(n.routes.len(), 2);
        assert_eq!(n.routes[0].name, "r1", "replaced in place");
    }
    let e = edit::apply(
        &c,
        Edit::Update {
            kind: ObjectKind::Route,
            name: "r1",
            object: &json!({"name": "r7", "destination": "c2"}),
        },
    )
    .unwrap_err();
    assert_eq!(
        e,
        EditError::NameMismatch {
            kind: ObjectKind::Route,
            path: "r1".into(),
            body: "r7".into()
        }
    );
    let e = edit::apply(
        &c,
        Edit::Update {
            kind: ObjectKind::Route,
            name: "r7",
            object: &json!({"destination": "c2"}),
        },
    )
    .unwrap_err();
    assert_eq!(
        e,
        EditError::NotFound {
            kind: ObjectKind::Route,
            name: "r7".into()
        }
    );
    let e = edit::apply(
        &c,
        Edit::Update {
            kind: ObjectKind::Route,
            name: "r1",
            object: &json!({"destination": "c9"}),
        },
    )
    .unwrap_err();
    assert_eq!(invalid(e), [r#"route.destination: cluster "c9" is not defined"#]);
}

#[test]
fn put_of_a_listener_replaces_or_keeps_its_generated_children() {
    let c = with_l2();
    // PUT back what GET returned: the generated rulelist is named, and kept.
    let got = dump::listener(&c, c.listener("l2").unwrap(), false);
    let mut body = got.clone();
    body["spec"]["port"] = json!(2001);
    let n = edit::apply(
        &c,
        Edit::Update {
            kind: ObjectKind::Listener,
            name: "l2",
            object: &body,
        },
    )
    .unwrap();
    assert_eq!(n.listener("l2").unwrap().rules, "l2-RuleList-0");
    assert_eq!(generated(&n), L2_GENERATED);
    // PUT with new inline rules: the old generated children go, the new ones take the same names.
    let body = json!({"spec": {"protocol": "TCP", "port": 2000},
                      "rules": [{"action": {"route": {"destination": "c1"}}}]});
    let n = edit::apply(
        &c,
        Edit::Update {
            kind: ObjectKind::Listener,
            name: "l2",
            object: &body,
        },
    )
    .unwrap();
    assert_eq!(n.listener("l2").unwrap().rules, "l2-RuleList-0");
    assert!(n.cluster("l2-RuleList-0-Rule-0-Route-0-Cluster-0").is_none());
    assert_eq!(
        n.route("l2-RuleList-0-Rule-0-Route-0").unwrap().destination,
        l7mp_api::Destination::Cluster("c1".into())
    );
    assert_eq!(generated(&n), L2_GENERATED[1..]);
}

#[test]
fn deleting_a_referenced_object_names_the_referrer() {
    let c = base();
    let e = edit::apply(
        &c,
        Edit::Delete {
            kind: ObjectKind::Cluster,
            name: "c1",
            recursive: true,
        },
    )
    .unwrap_err();
    assert_eq!(invalid(e), [r#"routes["r1"].destination: cluster "c1" is not defined"#]);
    let e = edit::apply(
        &c,
        Edit::Delete {
            kind: ObjectKind::Rule,
            name: "rb",
            recursive: false,
        },
    )
    .unwrap_err();
    assert_eq!(invalid(e), [r#"rulelists["rl1"].rules[1]: rule "rb" is not defined"#]);
    // Unreferenced: fine.
    let n = edit::apply(
        &c,
        Edit::Delete {
            kind: ObjectKind::Rule,
            name: "rc",
            recursive: false,
        },
    )
    .unwrap();
    assert!(n.rule("rc").is_none());
    let e = edit::apply(
        &c,
        Edit::Delete {
            kind: ObjectKind::Rule,
            name: "nope",
            recursive: false,
        },
    )
    .unwrap_err();
    assert_eq!(
        e,
        EditError::NotFound {
            kind: ObjectKind::Rule,
            name: "nope".into()
        }
    );
}

#[test]
fn a_recursive_delete_removes_the_generated_children_nothing_else_uses() {
    let c = with_l2();
    let del = |c: &Config, recursive| {
        edit::apply(
            c,
            Edit::Delete {
                kind: ObjectKind::Listener,
                name: "l2",
                recursive,
            },
        )
        .unwrap()
    };
    let n = del(&c, true);
    assert!(n.listener("l2").is_none());
    assert!(generated(&n).is_empty());
    assert_eq!(n, base());

    let n = del(&c, false);
    assert!(n.listener("l2").is_none());
    assert!(n.rulelist("l2-RuleList-0").is_some());
    assert_eq!(generated(&n), L2_GENERATED);
    // Adding l2 again does not clash with the leftovers.
    let again = edit::apply(
        &n,
        Edit::Add {
            kind: ObjectKind::Listener,
            object: &inline_listener(),
        },
    )
    .unwrap();
    assert_eq!(again.listener("l2").unwrap().rules, "l2-RuleList-0_1");

    // A generated rule also listed elsewhere stays (and so does what it refers to).
    let shared = edit::apply(
        &c,
        Edit::InsertRule {
            rulelist: "rl1",
            position: 2,
            rule: &json!("l2-RuleList-0-Rule-0"),
        },
    )
    .unwrap();
    let n = del(&shared, true);
    assert!(n.rulelist("l2-RuleList-0").is_none());
    assert!(n.rule("l2-RuleList-0-Rule-0").is_some());
    assert!(n.cluster("l2-RuleList-0-Rule-0-Route-0-Cluster-0").is_some());
    assert_eq!(generated(&n), [L2_GENERATED[0], L2_GENERATED[2], L2_GENERATED[3]]);
}

#[test]
fn insert_rules_by_position_and_name() {
    let c = base();
    let insert = |position, rule: &Value| {
        edit::apply(
            &c,
            Edit::InsertRule {
                rulelist: "rl1",
                position,
                rule,
            },
        )
    };
    let n = insert(0, &json!("rc")).unwrap();
    assert_eq!(n.rulelist("rl1").unwrap().rules, ["rc", "ra", "rb"]);
    let n = insert(2, &json!("rc")).unwrap();
    assert_eq!(n.rulelist("rl1").unwrap().rules, ["ra", "rb", "rc"]);
    assert_eq!(
        insert(3, &json!("rc")).unwrap_err(),
        EditError::Position {
            rulelist: "rl1".into(),
            position: 3,
            len: 2
        }
    );
    assert_eq!(
        insert(0, &json!("nope")).unwrap_err(),
        EditError::NotFound {
            kind: ObjectKind::Rule,
            name: "nope".into()
        }
    );
    let n = insert(1, &json!({"match": "*", "action": {"route": "r2"}})).unwrap();
    assert_eq!(n.rulelist("rl1").unwrap().rules, ["ra", "rl1-Rule-0", "rb"]);
    assert_eq!(generated(&n), [(ObjectKind::Rule, "rl1-Rule-0")]);
    let e = insert(1, &json!({"action": {"route": "r9"}})).unwrap_err();
    assert_eq!(invalid(e), [r#"rule.action.route: route "r9" is not defined"#]);
    assert_eq!(
        insert(1, &json!({"name": "ra", "action": {"route": "r2"}})).unwrap_err(),
        EditError::Exists {
            kind: ObjectKind::Rule,
            name: "ra".into()
        }
    );
    let e = edit::apply(
        &c,
        Edit::InsertRule {
            rulelist: "nope",
            position: 0,
            rule: &json!("ra"),
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            EditError::NotFound {
                kind: ObjectKind::RuleList,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn remove_rules_by_position_and_name() {
    let c = base();
    let remove = |which| edit::apply(&c, Edit::RemoveRule { rulelist: "rl1", which });
    assert_eq!(
        remove(RuleRef::Position(0)).unwrap().rulelist("rl1").unwrap().rules,
        ["rb"]
    );
    assert_eq!(
        remove(RuleRef::Name("rb")).unwrap().rulelist("rl1").unwrap().rules,
        ["ra"]
    );
    assert!(
        remove(RuleRef::Name("rb")).unwrap().rule("rb").is_some(),
        "the rule itself stays"
    );
    assert_eq!(
        remove(RuleRef::Position(2)).unwrap_err(),
        EditError::Position {
            rulelist: "rl1".into(),
            position: 2,
            len: 2
        }
    );
    assert_eq!(
        remove(RuleRef::Name("rc")).unwrap_err(),
        EditError::NotFound {
            kind: ObjectKind::Rule,
            name: "rc".into()
        }
    );
}

#[test]
fn add_find_and_delete_endpoints() {
    let c = base();
    let n = edit::apply(
        &c,
        Edit::AddEndpoint {
            cluster: "c1",
            endpoint: &json!({"spec": {"address": "10.0.0.2"}, "weight": 2}),
        },
    )
    .unwrap();
    let (cl, ep) = edit::find_endpoint(&n, "c1-EndPoint-0").unwrap();
    assert_eq!(
        (cl.name.as_str(), ep.address.as_str(), ep.weight),
        ("c1", "10.0.0.2", 2)
    );
    assert!(n.is_generated(ObjectKind::Endpoint, "c1-EndPoint-0"));

    let e = edit::apply(
        &c,
        Edit::AddEndpoint {
            cluster: "c1",
            endpoint: &json!({"spec": {}}),
        },
    )
    .unwrap_err();
    assert_eq!(invalid(e), ["endpoint.spec.address: missing required field"]);
    let e = edit::apply(
        &c,
        Edit::AddEndpoint {
            cluster: "c1",
            endpoint: &json!({"name": "ep1", "spec": {"address": "x"}}),
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            EditError::Exists {
                kind: ObjectKind::Endpoint,
                ..
            }
        ),
        "{e:?}"
    );
    let e = edit::apply(
        &c,
        Edit::AddEndpoint {
            cluster: "c2",
            endpoint: &json!({"spec": {"address": "x"}}),
        },
    )
    .unwrap_err();
    assert_eq!(
        invalid(e),
        [r#"clusters["c2"].endpoints: a cluster of protocol Echo takes no endpoints"#]
    );
    let e = edit::apply(
        &c,
        Edit::AddEndpoint {
            cluster: "c9",
            endpoint: &json!({"spec": {"address": "x"}}),
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            EditError::NotFound {
                kind: ObjectKind::Cluster,
                ..
            }
        ),
        "{e:?}"
    );

    let del = |c: &Config, name| {
        edit::apply(
            c,
            Edit::Delete {
                kind: ObjectKind::Endpoint,
                name,
                recursive: false,
            },
        )
    };
    let n2 = del(&n, "ep1").unwrap();
    assert!(edit::find_endpoint(&n2, "ep1").is_none());
    assert_eq!(n2.cluster("c1").unwrap().endpoints.len(), 1);
    assert_eq!(
        del(&n2, "ep1").unwrap_err(),
        EditError::NotFound {
            kind: ObjectKind::Endpoint,
            name: "ep1".into()
        }
    );
    // PUT an endpoint.
    let n3 = edit::apply(
        &n,
        Edit::Update {
            kind: ObjectKind::Endpoint,
            name: "ep1",
            object: &json!({"spec": {"address": "10.9.9.9"}, "weight": 5}),
        },
    )
    .unwrap();
    assert_eq!(edit::find_endpoint(&n3, "ep1").unwrap().1.address, "10.9.9.9");
}

#[test]
fn replace_the_whole_config() {
    let c = base();
    let e = edit::apply(
        &c,
        Edit::Replace(&json!({"listeners": [{"name": "x", "spec": {"protocol": "TCP", "port": 1}, "rules": "rl"}]})),
    )
    .unwrap_err();
    assert_eq!(invalid(e), [r#"listeners[0].rules: rulelist "rl" is not defined"#]);
    let doc = dump::config(&with_l2());
    let n = edit::apply(&c, Edit::Replace(&doc)).unwrap();
    assert_eq!(n, with_l2());
    // Names written explicitly are not generated ones.
    assert!(generated(&n).is_empty());
}

#[test]
fn a_generated_name_never_takes_an_explicit_one_written_later_in_the_document() {
    // The listener's inline rules are decoded before the top-level rulelists.
    let c = config_from_value(&json!({
        "clusters": [{"name": "e", "spec": {"protocol": "Echo"}}],
        "listeners": [{"name": "l", "spec": {"protocol": "TCP", "port": 1},
                       "rules": [{"action": {"route": {"destination": "e"}}}]}],
        "rulelists": [{"name": "l-RuleList-0", "rules": []}],
    }))
    .unwrap();
    assert_eq!(c.listener("l").unwrap().rules, "l-RuleList-0_1");
}

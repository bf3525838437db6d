//! Types shared by several kinds: selectors, status, rules' actions, retries.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::route::RouteSpec;
use crate::schema;

/// A label selector: a plain map of labels, `matchLabels`, or both (every label must match). Missing or empty:
/// every agent.
///
/// `matchExpressions` is part of the schema (the original operator's CRDs had it) so the API server keeps it,
/// but the control plane rejects it for now (`spec.selector.matchExpressions: not supported`), which shows in the
/// status instead of being dropped silently.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
    /// The plain-map form: every other key is a label.
    #[serde(flatten)]
    pub labels: BTreeMap<String, String>,
}

/// One `matchExpressions` item (`In`, `NotIn`, `Exists`, `DoesNotExist`), as in Kubernetes.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

impl JsonSchema for Selector {
    fn schema_name() -> Cow<'static, str> {
        "Selector".into()
    }

    // Labels sit next to `matchLabels` in the plain-map form. A structural schema may not have both `properties`
    // and `additionalProperties`, so the labels are kept by `x-kubernetes-preserve-unknown-fields`.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Agents by label: a map of labels, `matchLabels`, or both. Empty: every agent.",
            "type": "object",
            "properties": {
                "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                "matchExpressions": {
                    "description": "Not supported by the control plane yet (the resource is rejected).",
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["key", "operator"],
                        "properties": {
                            "key": {"type": "string"},
                            "operator": {"type": "string"},
                            "values": {"type": "array", "items": {"type": "string"}}
                        }
                    }
                }
            },
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

/// `status`, as the control plane writes it (`control/src/controller.rs`, `status_json`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    pub state: State,
    /// `<field path>: <why>` when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The store revision this status describes (0 while pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<AgentCounts>,
    /// Kubernetes conditions: `Accepted` (True/False, with the reason's field path in `message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}

/// A Kubernetes condition (`metav1.Condition`), as `kubectl wait --for=condition=Accepted` reads it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason (`Accepted`, `Invalid`).
    pub reason: String,
    /// What a person reads: the field path and why, when rejected.
    pub message: String,
    /// The `metadata.generation` this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Accepted,
    Rejected,
    /// Not translated yet at the current revision.
    Pending,
}

/// How many agents got the resource, and how many of them acknowledged or refused their configuration.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentCounts {
    pub placed: u64,
    pub acked: u64,
    pub nacked: u64,
}

/// A rule's `match` and `action` (an inline rule of a VirtualService).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct RuleBody {
    /// A JSON predicate (docs/rules.md); missing: every session.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_value")]
    pub matcher: Option<Value>,
    pub action: Action,
}

/// What a rule does: a route (inline or a Route reference), rewrites, `apply` another VirtualService's rules, or
/// `deny`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// An inline route (object) or a Route reference (string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_value")]
    pub route: Option<RouteOrRef>,
    /// A Route reference (`NAME`, `NAMESPACE/NAME`, or a path form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Vec<Rewrite>>,
    /// A VirtualService reference: continue the lookup in its rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<String>,
    /// Refuse the matching sessions: a reason, `{reason: STRING}` or `true` (excludes the fields above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_value")]
    pub deny: Option<Value>,
}

/// `action.route`: a reference or an inline route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum RouteOrRef {
    Ref(String),
    Inline(Box<RouteSpec>),
}

/// One rewrite: set the session metadata at `path` to `value` (`valueStr`: the original's string value).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rewrite {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_value")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_str: Option<String>,
}

/// A route's `retry`, as in the static configuration (durations in milliseconds).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct Retry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<RetryOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub num_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub connect_timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    Never,
    ConnectFailure,
    Disconnect,
    Always,
}

/// The pauses between retries (milliseconds; `multiplier` 1 keeps the pause fixed).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct Backoff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub initial: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub multiplier: Option<f64>,
}

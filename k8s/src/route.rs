//! `Route`: a reusable route (rules use it with `routeRef`); the same fields make an inline route in a rule.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ResourceStatus, Retry};
use crate::schema;

#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "l7mp.io",
    version = "v1",
    kind = "Route",
    namespaced,
    status = "ResourceStatus",
    derive = "PartialEq",
    category = "l7mp",
    doc = "A reusable route: destination Target (or a weighted split), ingress/egress chains, retry (docs/resources.md).",
    printcolumn(name = "Destination", type_ = "string", json_path = ".spec.destinationRef"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// A Target reference (string) or a weighted split (`[{target, weight}]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_value")]
    pub destination: Option<Destination>,
    /// A Target reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_ref: Option<String>,
    /// Target references, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// `destination`: one Target, or a weighted split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Destination {
    Target(String),
    Split(Vec<SplitBranch>),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SplitBranch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

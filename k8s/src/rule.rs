//! `Rule`: a rule added to a VirtualService's rules from outside it.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{Action, ResourceStatus};
use crate::schema;

#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "l7mp.io",
    version = "v1",
    kind = "Rule",
    namespaced,
    status = "ResourceStatus",
    derive = "PartialEq",
    category = "l7mp",
    doc = "A rule added to a VirtualService's rules from outside it (docs/resources.md).",
    printcolumn(name = "VirtualService", type_ = "string", json_path = ".spec.virtualService"),
    printcolumn(name = "Position", type_ = "integer", json_path = ".spec.position"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    /// The VirtualService (reference) whose rules get this one.
    pub virtual_service: String,
    /// Before the VirtualService's p-th inline rule; missing: after them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// A JSON predicate (docs/rules.md); missing: every session.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_value")]
    pub matcher: Option<Value>,
    pub action: Action,
}

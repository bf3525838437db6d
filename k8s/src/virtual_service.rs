//! `VirtualService`: a listener on the agents its selector picks, with its rules.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{ResourceStatus, RuleBody, Selector};
use crate::schema;

#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "l7mp.io",
    version = "v1",
    kind = "VirtualService",
    namespaced,
    status = "ResourceStatus",
    derive = "PartialEq",
    shortname = "vsvc",
    category = "l7mp",
    doc = "A listener on the agents the selector picks, with its rules (docs/resources.md).",
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Agents", type_ = "integer", json_path = ".status.agents.placed"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Required unless `grpc` is given (a gRPC-only service has no agent listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<Listener>,
    /// Also serve this service to proxyless gRPC clients (`true`, or `{name, timeout}`; docs/grpc.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_value")]
    pub grpc: Option<Value>,
    /// The original operator's field; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_owners: Option<bool>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Kept for compatibility; the agent's listener is named after the VirtualService.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The protocol spec, keyed (`{UDP: {port: 9001}}`) or flat (`{protocol: UDP, port: 9001}`). Required unless
    /// the VirtualService is only a gRPC service (`spec.grpc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::free_object")]
    pub spec: Option<serde_json::Map<String, Value>>,
    /// A list of rules, or (the original's form) a VirtualService reference as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_value")]
    pub rules: Option<RulesOrRef>,
    /// Share another VirtualService's rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_ref: Option<String>,
}

/// `listener.rules`: inline rules or a reference.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum RulesOrRef {
    Rules(Vec<RuleBody>),
    Ref(String),
}

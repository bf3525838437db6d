//! `Target`: a cluster, installed on the agents its selector picks (and on those that route to it).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{ResourceStatus, Selector};
use crate::schema;

// The cluster protocol is not a column: in the keyed form (`spec: {TCP: {...}}`) it is a key, which a printer
// column's JSONPath cannot print.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "l7mp.io",
    version = "v1",
    kind = "Target",
    namespaced,
    status = "ResourceStatus",
    derive = "PartialEq",
    shortname = "tr",
    category = "l7mp",
    doc = "A cluster: where sessions go (docs/resources.md). Exactly one of `cluster` and `linkedVirtualService`.",
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Agents", type_ = "integer", json_path = ".status.agents.placed"),
    printcolumn(
        name = "Linked",
        type_ = "string",
        json_path = ".spec.linkedVirtualService",
        priority = "1"
    ),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
    /// A VirtualService reference: its listener spec is the cluster spec, its agents the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_virtual_service: Option<String>,
    /// The original operator's field; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_owners: Option<bool>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct Cluster {
    /// The protocol spec, keyed (`{TCP: {port: 9002}}`) or flat (`{protocol: TCP, port: 9002}`).
    #[schemars(schema_with = "schema::free_object")]
    pub spec: serde_json::Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loadbalancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<Endpoint>>,
}

/// `loadbalancer`, as in the static configuration (docs/load-balancing.md).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct LoadBalancer {
    /// Trivial, HashRing, ConsistentHash, WeightedRandom, Random, RoundRobin or WeightedRoundRobin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// A JSON pointer into the session metadata (hashing policies), or `<RANDOM>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// first, random or fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_missing_key: Option<String>,
    /// An object (`{consecutive_failures, ejection_time, max_ejection_time}`) or a boolean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_value")]
    pub outlier_detection: Option<Value>,
}

/// A static endpoint (`{name?, spec: {address | filename}, weight?}`), `{selector}` (the matching agents), or
/// discovered workloads: `{pods: {selector, namespace?}, weight?}` or `{service: {name, namespace?}, weight?}`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<EndpointAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// The ready Pods the selector picks (their `status.podIP`), in `namespace` (default: the Target's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodsEndpoint>,
    /// The ready endpoints of a Service (its EndpointSlices) that serve the cluster's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceEndpoint>,
}

/// `pods`: a label selector over Pods and their namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct PodsEndpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Default: the Target's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `service`: a Service by name and namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct ServiceEndpoint {
    pub name: String,
    /// Default: the Target's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct EndpointAddress {
    /// IP address or DNS name (or a socket path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A UNIX socket path (the original's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

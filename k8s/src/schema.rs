//! Schema overrides for the fields whose shape the model leaves open.
//!
//! A `serde_json::Value` derives as an untyped `{}`, which a real API server rejects (a structural schema types
//! every node). These give such fields `x-kubernetes-preserve-unknown-fields: true`, with `type: object` where the
//! model always wants an object.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Any JSON value, kept as written (a string or an object, a JSON predicate, a rewrite's value).
pub fn any_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// An object whose fields are checked by the control plane, kept as written (a protocol spec in either form).
pub fn free_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

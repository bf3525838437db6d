//! l7mp's Kubernetes custom resources: `VirtualService`, `Target`, `Route` and `Rule` (group `l7mp.io`, version
//! `v1`), derived from Rust types with `kube`, and the generator that writes their CRDs to `manifests/crds/`.
//!
//! The types mirror the resource model of `l7mp_api::resource` (see `docs/resources.md`): typed where the model's
//! shape is fixed, free-form (`x-kubernetes-preserve-unknown-fields`) where it is not (protocol specs in the keyed
//! and the flat form, JSON predicates, rewrite values, and the fields that take either a reference string or an
//! object). The control plane still validates every object with `l7mp_api::resource::parse_resource`; the CRD
//! schema only has to let through everything that function accepts, so the API server never refuses a valid
//! object. See `docs/kubernetes.md`.

// kube's `printcolumn(name = .., type_ = ..)` repeats keys across columns; clippy reads them as duplicates.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod generate;
pub mod route;
pub mod rule;
pub mod schema;
pub mod structural;
pub mod target;
pub mod validate;
pub mod virtual_service;

pub use common::{AgentCounts, Condition, ResourceStatus, Selector, State};
pub use route::{Route, RouteSpec};
pub use rule::{Rule, RuleSpec};
pub use target::{Target, TargetSpec};
pub use virtual_service::{VirtualService, VirtualServiceSpec};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every l7mp resource.
pub const GROUP: &str = "l7mp.io";
/// The (only) version.
pub const VERSION: &str = "v1";

/// The four CRDs, in a fixed order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![VirtualService::crd(), Target::crd(), Route::crd(), Rule::crd()]
}

//! `l7mp-control`: the xDS control plane.
//!
//! - [`store`]: where the mesh's desired state lives (the `Store` trait; the embedded backend is the default).
//! - [`xds`]: the xDS server (ADS, state of the world and delta) that streams per-node resources to agents.

pub mod store;
pub mod xds;

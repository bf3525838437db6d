//! `l7mp-control`: the xDS control plane.
//!
//! - [`store`]: where the mesh's desired state lives (the `Store` trait; the embedded backend is the default).
//! - [`xds`]: the xDS server (ADS, state of the world and delta) that streams per-node resources to agents.
//! - [`controller`]: the control loop from stored objects and connected agents to per-agent snapshots and status.
//! - [`grpc`]: standard Envoy resources for proxyless gRPC clients (`xds:///NAME`), checked against what gRPC accepts.
//! - [`discovery`]: workload discovery (Kubernetes Pods and EndpointSlices) for Targets' `pods`/`service` endpoints.
//! - [`management`]: the Management API (gRPC) that `l7mpctl` uses.
//! - [`admin`]: `/live`, `/ready`, `/metrics`.
//! - [`auth`]: who may call the Management API and CSDS (bearer tokens, client certificates, roles).
//! - [`leader`] and [`status_writer`]: with the kubernetes store, one replica (the Lease holder) writes each
//!   object's status to its `/status` subresource.
//! - [`certs`]: `l7mpctl certs`, a development CA and certificates (rcgen).
//! - [`tls`]: mTLS on the gRPC port (reloading certificates, the node identity in client certificates).

pub mod admin;
pub mod auth;
pub mod certs;
pub mod controller;
pub mod discovery;
pub mod grpc;
pub mod leader;
pub mod management;
pub mod registry;
pub mod status_writer;
pub mod store;
pub mod tls;
pub mod xds;

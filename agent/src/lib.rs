//! `l7mp-agent`: the l7mp data plane.
//!
//! Listeners ([`protocol`]) accept peers and emit sessions ([`session`]); the [`router`] matches a session's
//! metadata against the listener's rules and picks a route; the session connects the route's clusters and runs a
//! [`pipeline`] of pumps between [`stream`]s. The [`engine`] holds the configuration [`snapshot`] in force and swaps
//! it atomically when a source (the static file or the REST API, [`admin`]) applies a new one.

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod engine;
pub mod lb;
pub mod logging;
pub mod metrics;
pub mod offload;
pub mod pipeline;
pub mod protocol;
pub mod router;
pub mod session;
pub mod snapshot;
pub mod splice;
pub mod stream;
pub mod sys;
pub mod xds;
pub mod xds_tls;

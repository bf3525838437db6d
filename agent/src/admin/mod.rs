//! The admin API: the original l7mp's REST API (`/api/v1`), served by axum, plus the admin listener's health,
//! metrics and configuration endpoints.
//!
//! One table of operations ([`api::operations`]) builds both the router and the OpenAPI document
//! (`/api/v1/openapi.json`), so the two cannot disagree. Every change goes through [`Engine::update`]: the edit is
//! made on the configuration in force by `l7mp_api::edit` (which validates it with the same loader as the static
//! file) and the result is put in force whole, or nothing changes.
//!
//! The API is reachable two ways: the built-in admin listener (`--admin ADDR`, see [`server`]), and the original's
//! way, an HTTP listener routed to an `L7mpController` cluster (see `protocol::controller`).

pub mod api;
pub mod openapi;
pub mod reply;
pub mod server;
pub mod sessions;

use crate::engine::Engine;
use std::sync::Arc;

/// Run-time control of logging, as the admin API needs it (implemented by the agent's logging setup).
pub trait LogControl: Send + Sync {
    /// The filter in force (e.g. `info` or `info,l7mp_agent::session=debug`).
    fn level(&self) -> String;
    /// Puts a new level or filter in force, or says why it is invalid and changes nothing.
    fn set_level(&self, level: &str) -> Result<(), String>;
}

/// What every admin route works on.
pub struct AdminState {
    pub engine: Arc<Engine>,
    pub log: Option<Arc<dyn LogControl>>,
}

impl AdminState {
    pub fn new(engine: Arc<Engine>, log: Option<Arc<dyn LogControl>>) -> Arc<AdminState> {
        Arc::new(AdminState { engine, log })
    }
}

/// The REST API router (`/api/v1/...`), with JSON errors for unknown routes and methods.
pub fn router(state: Arc<AdminState>) -> axum::Router {
    api::router(state)
}

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
pub mod auth;
pub mod openapi;
pub mod reply;
pub mod server;
pub mod sessions;

use crate::engine::Engine;
use crate::logging::LogHandle;
use std::sync::Arc;

/// What every admin route works on.
pub struct AdminState {
    pub engine: Arc<Engine>,
    /// The logger's filter (from the engine's options), changed by `POST /api/v1/admin`.
    pub log: Option<Arc<LogHandle>>,
    /// The bearer tokens the API requires (`--api-tokens`); `None`: open (loopback only, unless `--api-insecure`).
    pub auth: Option<Arc<auth::Auth>>,
}

impl AdminState {
    pub fn new(engine: Arc<Engine>) -> Arc<AdminState> {
        AdminState::with_auth(engine, None)
    }

    pub fn with_auth(engine: Arc<Engine>, auth: Option<Arc<auth::Auth>>) -> Arc<AdminState> {
        let log = engine.options().log.clone();
        Arc::new(AdminState { engine, log, auth })
    }
}

/// The REST API router (`/api/v1/...`), with JSON errors for unknown routes and methods, behind the bearer-token
/// check when tokens are configured ([`auth`]).
pub fn router(state: Arc<AdminState>) -> axum::Router {
    api::router(state)
}

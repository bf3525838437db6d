//! Who may call the admin API, and what they may do: bearer tokens from a file (each with a role) or, when the
//! admin listener speaks TLS with a client CA (`--admin-client-ca`), client certificates that carry a role.
//!
//! The tokens file (`--api-tokens FILE`) has one token per line, `TOKEN,NAME,ROLE` ([`l7mp_auth::tokens`]: the format
//! of Kubernetes' static token file, with the role in the third column; re-read when it changes). A client
//! certificate names its holder in the URI SAN `spiffe://l7mp/client/NAME` and its role in the subject's `OU`
//! (`l7mpctl certs client --name NAME --role ROLE`); one without a role may only read. A token, when sent, wins over
//! the certificate. Roles, each including the ones before it:
//!
//! - `reader`: every `GET` of the REST API and `/config`;
//! - `operator`: changes to the running configuration (listeners, clusters, rulelists, rules, routes, endpoints) and
//!   ending sessions;
//! - `admin`: replacing the whole configuration (`POST /api/v1/config`) and the process settings (`POST
//!   /api/v1/admin`), and any change that adds or alters a cluster that runs a command (`StdioFork`): that is code
//!   execution on the agent's host, more than changing traffic ([`commands_need_admin`]).
//!
//! `/live`, `/ready` and `/metrics` stay open (probes and scrapers, no secrets). A request without a valid token or
//! certificate is answered 401, one whose role is too low 403; both are logged with the caller's name (never the
//! token).

use super::reply::ApiError;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use l7mp_auth::{Caller, PeerIdentity, Role, Tokens, Via};
use std::sync::Arc;

/// The peer's client certificate on a TLS admin connection, put into each request's extensions by the server.
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// Who it names.
    pub identity: PeerIdentity,
    /// The role it carries (its subject's OU), if any.
    pub role: Option<Role>,
}

/// The address of a client whose request reached the API through an `L7mpController` cluster (an HTTP listener
/// routed to it), put into the request's extensions by that cluster.
#[derive(Debug, Clone, Copy)]
pub struct RemoteClient(pub std::net::IpAddr);

/// How admin API callers authenticate: tokens, client certificates, or both; or nobody (an open API).
#[derive(Debug, Default)]
pub struct Auth {
    tokens: Option<Arc<Tokens>>,
    certificates: bool,
    /// Open API only: serve clients beyond loopback through `L7mpController` listeners (`--api-insecure`).
    open_beyond_loopback: bool,
}

impl Auth {
    /// No authentication: every caller may do everything, but through an `L7mpController` listener only loopback
    /// clients, unless `beyond_loopback` (`--api-insecure`), as for `--admin`.
    pub fn open(beyond_loopback: bool) -> Self {
        Self {
            open_beyond_loopback: beyond_loopback,
            ..Self::default()
        }
    }

    /// Callers need a token from this file (or a client certificate, with [`Auth::with_certificates`]).
    pub fn with_tokens(tokens: Arc<Tokens>) -> Self {
        Self {
            tokens: Some(tokens),
            ..Self::default()
        }
    }

    /// Client certificates (verified by the TLS admin listener) authenticate too.
    pub fn with_certificates(mut self) -> Self {
        self.certificates = true;
        self
    }

    /// Whether any authentication is configured.
    pub fn enabled(&self) -> bool {
        self.tokens.is_some() || self.certificates
    }

    /// Who the request comes from, or the refusal: 401 with the reason, or 403 for a certificate that is not a
    /// client's.
    fn identify(&self, req: &Request) -> Result<Caller, (StatusCode, String)> {
        let unauthorized = |why: &str| (StatusCode::UNAUTHORIZED, why.to_owned());
        if let (Some(tokens), Some(value)) = (&self.tokens, req.headers().get(header::AUTHORIZATION)) {
            let value = value
                .to_str()
                .map_err(|_| unauthorized("the Authorization header is not text"))?;
            let given = l7mp_auth::tokens::bearer(value).map_err(unauthorized)?;
            let (name, role) = tokens
                .identify(given)
                .ok_or_else(|| unauthorized("the token is not valid"))?;
            return Ok(Caller {
                name,
                role,
                via: Via::Token,
            });
        }
        match req.extensions().get::<PeerCert>() {
            Some(PeerCert {
                identity: PeerIdentity::Client(name),
                role,
            }) if self.certificates => Ok(Caller {
                name: name.clone(),
                role: role.unwrap_or(Role::Reader),
                via: Via::Certificate,
            }),
            Some(PeerCert { identity, .. }) if self.certificates => Err((
                StatusCode::FORBIDDEN,
                format!(
                    "the client certificate of {identity} is not an API client's: it needs the URI SAN \
                     spiffe://l7mp/client/NAME and a role (l7mpctl certs client --name NAME --role ROLE)"
                ),
            )),
            _ if self.tokens.is_some() => Err(unauthorized(
                "no Authorization header (send `Authorization: Bearer TOKEN`)",
            )),
            _ => Err(unauthorized("no client certificate")),
        }
    }
}

/// The clusters of `next` that run a command (`StdioFork`) and are new or changed against `current`: a change that
/// has any needs the admin role.
pub fn new_commands(current: &l7mp_api::Config, next: &l7mp_api::Config) -> Vec<String> {
    next.clusters
        .iter()
        .filter(|c| matches!(c.spec, l7mp_api::ClusterSpec::StdioFork { .. }))
        .filter(|c| !current.clusters.iter().any(|o| o.name == c.name && o.spec == c.spec))
        .map(|c| c.name.clone())
        .collect()
}

/// `Some(reason)` when `caller` (`None`: the API is open) may not make a change from `current` to `next` because
/// it adds or alters clusters that run commands and the caller is not an admin.
pub fn commands_need_admin(
    current: &l7mp_api::Config,
    next: &l7mp_api::Config,
    caller: Option<&Caller>,
    what: &str,
) -> Option<String> {
    let caller = caller?;
    let commands = new_commands(current, next);
    if commands.is_empty() {
        return None;
    }
    let why = caller
        .require(
            Role::Admin,
            &format!("{what} (cluster {:?} runs a command: StdioFork)", commands[0]),
        )
        .err()?;
    tracing::warn!(caller = %caller.name, role = %caller.role, "admin API change refused (403): {why}");
    Some(why)
}

/// The role a request needs, or `None` for the open endpoints.
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    if matches!(path, "/live" | "/ready" | "/metrics") {
        return None;
    }
    if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
        return Some(Role::Reader);
    }
    let path = path.trim_end_matches('/');
    if path == "/api/v1/config" || path == "/api/v1/admin" {
        return Some(Role::Admin);
    }
    Some(Role::Operator)
}

/// The middleware: lets a request through when no authentication is configured, or when its caller's role suffices.
pub async fn check(auth: Option<Arc<Auth>>, req: Request, next: axum::middleware::Next) -> Response {
    let Some(auth) = auth else {
        return next.run(req).await;
    };
    if !auth.enabled() {
        // An open API: beyond loopback only when asked for (the `--admin` listener refuses such an address at start;
        // an `L7mpController` listener says who the client is).
        if let Some(RemoteClient(ip)) = req.extensions().get::<RemoteClient>()
            && !ip.is_loopback()
            && !auth.open_beyond_loopback
            && required_role(req.method(), req.uri().path()).is_some()
        {
            let why = format!(
                "the REST API has no authentication (no --api-tokens or --admin-client-ca), so it serves loopback \
                 clients only; {ip} is not one (start the agent with --api-tokens FILE, or --api-insecure to serve \
                 it to anyone)"
            );
            tracing::warn!(method = %req.method(), path = %req.uri().path(), client = %ip, "admin API request refused (403): open API, remote client");
            return ApiError::new(StatusCode::FORBIDDEN, why).into_response();
        }
        return next.run(req).await;
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let Some(needed) = required_role(&method, &path) else {
        return next.run(req).await;
    };
    match auth.identify(&req) {
        Err((status, why)) if status == StatusCode::UNAUTHORIZED => {
            tracing::warn!(%method, %path, "admin API request refused (401): {why}");
            let mut r =
                ApiError::new(StatusCode::UNAUTHORIZED, format!("authentication required: {why}")).into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"l7mp-agent\""),
            );
            r
        }
        Err((status, why)) => {
            tracing::warn!(%method, %path, "admin API request refused ({}): {why}", status.as_u16());
            ApiError::new(status, why).into_response()
        }
        Ok(caller) => match caller.require(needed, &format!("{method} {path}")) {
            Err(why) => {
                tracing::warn!(%method, %path, caller = %caller.name, role = %caller.role, "admin API request refused (403): needs {needed}");
                ApiError::new(StatusCode::FORBIDDEN, why).into_response()
            }
            Ok(()) => {
                tracing::debug!(%method, %path, caller = %caller, "admin API request authorized");
                // The handlers check finer rules against the caller (see [`commands_need_admin`]).
                let mut req = req;
                req.extensions_mut().insert(caller);
                next.run(req).await
            }
        },
    }
}

/// Wraps `router` with [`check`].
pub fn layer(router: axum::Router, auth: Option<Arc<Auth>>) -> axum::Router {
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: axum::middleware::Next| check(auth.clone(), req, next),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_method_and_path() {
        assert_eq!(required_role(&Method::GET, "/metrics"), None);
        assert_eq!(required_role(&Method::GET, "/live"), None);
        assert_eq!(required_role(&Method::GET, "/config"), Some(Role::Reader));
        assert_eq!(required_role(&Method::GET, "/api/v1/listeners"), Some(Role::Reader));
        assert_eq!(required_role(&Method::POST, "/api/v1/listeners"), Some(Role::Operator));
        assert_eq!(
            required_role(&Method::DELETE, "/api/v1/sessions/x"),
            Some(Role::Operator)
        );
        assert_eq!(required_role(&Method::POST, "/api/v1/config"), Some(Role::Admin));
        assert_eq!(required_role(&Method::POST, "/api/v1/admin/"), Some(Role::Admin));
    }
}

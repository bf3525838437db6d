//! Who may call the Management API and CSDS, and what they may do (the roles of [`l7mp_auth`]).
//!
//! A caller authenticates with a bearer token (`authorization: Bearer TOKEN` metadata, tokens from `--api-tokens
//! FILE`) or with its client certificate (mTLS: `spiffe://l7mp/client/NAME`, its role in the subject's `OU`; without
//! one it may only read). A token, when sent, wins over the certificate. An agent's certificate
//! (`spiffe://l7mp/node/ID`) may only stream its own configuration, never use these APIs. Without tokens and
//! without TLS the APIs are open: the control plane only allows that on loopback, or with `--insecure`.
//!
//! | role | may |
//! |---|---|
//! | `reader` | Get, List, Watch, Agents, Status, CSDS |
//! | `operator` | also Apply and Delete VirtualServices, Targets and Routes |
//! | `admin` | also Apply and Delete Rules (rules inserted into any VirtualService, the mesh-wide policy layer), and Apply objects that define a cluster running a command (`StdioFork`) |
//!
//! A refused call is `UNAUTHENTICATED` (no or an unknown token, no identity) or `PERMISSION_DENIED` (a role too low,
//! an agent's certificate), logged as a warning with the method and the caller's name, never the token; counted in
//! [`denied`].

use l7mp_auth::identity::PeerIdentity;
use l7mp_auth::tokens::bearer;
use l7mp_auth::{Caller, Role, Tokens, Via};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::{Request, Status};

/// How callers are authenticated: tokens (if configured) and client certificates (whenever the port speaks TLS).
#[derive(Debug, Clone, Default)]
pub struct Access {
    tokens: Option<Arc<Tokens>>,
}

static UNAUTHENTICATED: AtomicU64 = AtomicU64::new(0);
static PERMISSION_DENIED: AtomicU64 = AtomicU64::new(0);

/// Refused calls since the process started: (`UNAUTHENTICATED`, `PERMISSION_DENIED`).
pub fn denied() -> (u64, u64) {
    (
        UNAUTHENTICATED.load(Ordering::Relaxed),
        PERMISSION_DENIED.load(Ordering::Relaxed),
    )
}

fn unauthenticated(method: &str, why: &str) -> Status {
    UNAUTHENTICATED.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(method, "call refused (UNAUTHENTICATED): {why}");
    Status::unauthenticated(format!("{method}: authentication required: {why}"))
}

fn permission_denied(method: &str, caller: &str, why: &str) -> Status {
    PERMISSION_DENIED.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(method, caller, "call refused (PERMISSION_DENIED): {why}");
    Status::permission_denied(format!("{method}: {why}"))
}

impl Access {
    /// Open to any caller that is not an agent (no tokens; certificates, when present, still carry roles).
    pub fn open() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Callers need one of these tokens or a client certificate.
    pub fn with_tokens(tokens: Arc<Tokens>) -> Arc<Self> {
        Arc::new(Self { tokens: Some(tokens) })
    }

    /// Whether tokens are configured.
    pub fn has_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Who is calling `method` (for messages, e.g. `Apply`), or the refusal.
    pub fn authenticate<T>(&self, req: &Request<T>, method: &str) -> Result<Caller, Status> {
        if let (Some(tokens), Some(value)) = (&self.tokens, req.metadata().get("authorization")) {
            let value = value
                .to_str()
                .map_err(|_| unauthenticated(method, "the authorization metadata is not text"))?;
            let given = bearer(value).map_err(|why| unauthenticated(method, why))?;
            let (name, role) = tokens
                .identify(given)
                .ok_or_else(|| unauthenticated(method, "the token is not valid"))?;
            return Ok(Caller {
                name,
                role,
                via: Via::Token,
            });
        }
        let certs = req.peer_certs();
        match PeerIdentity::with_role(certs.as_deref().map(Vec::as_slice)) {
            Some((PeerIdentity::Client(name), role)) => Ok(Caller {
                name,
                // A client certificate without a role may only read.
                role: role.unwrap_or(Role::Reader),
                via: Via::Certificate,
            }),
            Some((PeerIdentity::Node(id), _)) => Err(permission_denied(
                method,
                &format!("node {id}"),
                &format!(
                    "the client certificate is node {id:?}'s: an agent's certificate cannot use the Management API \
                     or CSDS, only stream its own configuration (l7mpctl certs client makes a client certificate)"
                ),
            )),
            Some((other @ PeerIdentity::Other(_), _)) => Err(permission_denied(
                method,
                &other.to_string(),
                &format!(
                    "the client certificate of {other} names no client: it needs the URI SAN \
                     spiffe://l7mp/client/NAME and a role (l7mpctl certs client --name NAME --role ROLE)"
                ),
            )),
            None if self.tokens.is_some() => Err(unauthenticated(
                method,
                "no bearer token (send `authorization: Bearer TOKEN`; l7mpctl --token-file FILE or L7MP_TOKEN)",
            )),
            None => Ok(Caller::open()),
        }
    }

    /// Authenticates the caller of `method` and checks that its role is at least `needed`.
    pub fn check<T>(&self, req: &Request<T>, method: &str, needed: Role) -> Result<Caller, Status> {
        let caller = self.authenticate(req, method)?;
        Self::require(&caller, method, needed)?;
        Ok(caller)
    }

    /// Checks an authenticated caller's role (for a second, finer check, e.g. on the kinds of an Apply).
    pub fn require(caller: &Caller, method: &str, needed: Role) -> Result<(), Status> {
        caller
            .require(needed, method)
            .map_err(|why| permission_denied(method, &caller.name, &why))?;
        tracing::debug!(method, caller = %caller, "call authorized");
        Ok(())
    }

    /// A tonic interceptor that lets through callers with at least `needed` (for services without per-method
    /// checks, such as CSDS).
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn interceptor(
        self: Arc<Self>,
        method: &'static str,
        needed: Role,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |req: Request<()>| {
            self.check(&req, method, needed)?;
            Ok(req)
        }
    }
}

/// The role needed to write (apply or delete) an object of `kind` whose JSON is `value` (`None` for a delete):
/// Rules, and any object that defines a cluster running a command (`StdioFork`: code execution on every selected
/// agent's host), need `admin`; the rest `operator`.
pub fn write_role(kind: &str, value: Option<&serde_json::Value>) -> Role {
    if kind == "Rule" || value.is_some_and(runs_command) {
        Role::Admin
    } else {
        Role::Operator
    }
}

/// The spellings of the protocol that runs a command per session.
const COMMAND_PROTOCOLS: [&str; 2] = ["StdioFork", "STDIO-fork"];

/// Whether a JSON object defines, anywhere inside it, a `StdioFork` cluster (flat `protocol: StdioFork` or keyed
/// `{StdioFork: {...}}`). Errs on the side of admin: any such spelling anywhere counts.
pub fn runs_command(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Object(o) => o.iter().any(|(k, child)| {
            COMMAND_PROTOCOLS.contains(&k.as_str())
                || (k == "protocol" && child.as_str().is_some_and(|p| COMMAND_PROTOCOLS.contains(&p)))
                || runs_command(child)
        }),
        Value::Array(a) => a.iter().any(runs_command),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(dir: &std::path::Path) -> Arc<Tokens> {
        let p = dir.join("tokens");
        std::fs::write(
            &p,
            "reader-secret-0123456789,ro,reader\noperator-secret-0123456789,ci,operator\n",
        )
        .expect("write");
        Tokens::load(&p).expect("load")
    }

    fn with_token(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
        }
        r
    }

    #[test]
    fn tokens_roles_and_refusals() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = Access::with_tokens(tokens(dir.path()));
        let e = a.check(&with_token(None), "List", Role::Reader).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("no bearer token"), "{}", e.message());
        let e = a
            .check(&with_token(Some("nope-0123456789abcdef")), "List", Role::Reader)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(!e.message().contains("nope-0123456789abcdef"), "no secret in messages");
        let c = a
            .check(&with_token(Some("reader-secret-0123456789")), "List", Role::Reader)
            .expect("reader reads");
        assert_eq!((c.name.as_str(), c.via), ("ro", Via::Token));
        let e = a
            .check(&with_token(Some("reader-secret-0123456789")), "Apply", Role::Operator)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("needs the operator role; token \"ro\" has reader"),
            "{}",
            e.message()
        );
        let c = a
            .check(&with_token(Some("operator-secret-0123456789")), "Apply", Role::Operator)
            .expect("op");
        let e = Access::require(&c, "Apply", write_role("Rule", None)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(Access::require(&c, "Apply", write_role("Target", None)).is_ok());
        let fork = serde_json::json!({"spec": {"cluster": {"spec": {"protocol": "StdioFork", "command": ["sh"]}}}});
        let keyed = serde_json::json!({"spec": {"listener": {"rules": [{"action": {"route": {"destination": {"spec": {"StdioFork": {"command": "sh"}}}}}}]}}});
        assert_eq!(write_role("Target", Some(&fork)), Role::Admin);
        assert_eq!(write_role("VirtualService", Some(&keyed)), Role::Admin);
        assert_eq!(
            write_role("Target", Some(&serde_json::json!({"spec": {"protocol": "TCP"}}))),
            Role::Operator
        );
        // Open without tokens (loopback): any role.
        let c = Access::open()
            .check(&with_token(None), "Apply", Role::Admin)
            .expect("open");
        assert_eq!(c, Caller::open());
        let (u, p) = denied();
        assert!(u >= 2 && p >= 2);
    }
}

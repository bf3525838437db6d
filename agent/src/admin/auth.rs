//! Who may call the admin API, and what they may do: bearer tokens from a file, each with a role.
//!
//! The tokens file (`--api-tokens FILE`) has one token per line, `TOKEN,NAME,ROLE` (the format of Kubernetes'
//! static token file, with the role in the third column); `#` starts a comment, blank lines are skipped. Roles, each
//! including the ones before it:
//!
//! - `reader`: every `GET` of the REST API and `/config`;
//! - `operator`: changes to the running configuration (listeners, clusters, rulelists, rules, routes, endpoints) and
//!   ending sessions;
//! - `admin`: replacing the whole configuration (`POST /api/v1/config`) and the process settings (`POST
//!   /api/v1/admin`).
//!
//! `/live`, `/ready` and `/metrics` stay open (probes and scrapers, no secrets). A request without a valid token is
//! answered 401, one whose role is too low 403; both are logged with the token's name (never the token). The file is
//! read again when it changes (checked at most once a second); a file that no longer parses keeps the tokens in
//! force and says why. Tokens are compared in constant time.

use super::reply::ApiError;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reader,
    Operator,
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" | "read-only" | "readonly" => Some(Role::Reader),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Why a tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the API tokens file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("API tokens file {path}, line {line}: {reason}")]
    Line { path: PathBuf, line: usize, reason: String },
    #[error("API tokens file {path} has no token")]
    Empty { path: PathBuf },
}

#[derive(Debug, Clone)]
struct Token {
    secret: Vec<u8>,
    name: String,
    role: Role,
}

/// Parses a tokens file's text (see the module docs).
fn parse(path: &Path, text: &str) -> Result<Vec<Token>, TokensError> {
    let err = |line: usize, reason: String| TokensError::Line {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut tokens: Vec<Token> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [secret, name, role] = fields.as_slice() else {
            return Err(err(
                i + 1,
                format!("expected TOKEN,NAME,ROLE, found {} field(s)", fields.len()),
            ));
        };
        if secret.len() < 16 {
            return Err(err(
                i + 1,
                format!("the token of {name:?} is shorter than 16 characters"),
            ));
        }
        if name.is_empty() {
            return Err(err(i + 1, "the name is empty".into()));
        }
        let role = Role::parse(role).ok_or_else(|| {
            err(
                i + 1,
                format!("unknown role {role:?} (expected reader, operator or admin)"),
            )
        })?;
        if tokens.iter().any(|t| t.name == *name) {
            return Err(err(i + 1, format!("the name {name:?} appears twice")));
        }
        tokens.push(Token {
            secret: secret.as_bytes().to_vec(),
            name: (*name).to_owned(),
            role,
        });
    }
    if tokens.is_empty() {
        return Err(TokensError::Empty { path: path.to_owned() });
    }
    Ok(tokens)
}

/// The tokens in force, re-read from their file when it changes.
pub struct Auth {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    tokens: Arc<Vec<Token>>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// How often the file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(1);

impl Auth {
    /// Reads the tokens file; an unreadable or invalid file is an error (the agent does not start).
    pub fn load(path: &Path) -> Result<Arc<Auth>, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        let tokens = parse(path, &text)?;
        tracing::info!(file = %path.display(), tokens = tokens.len(), "admin API requires a bearer token");
        Ok(Arc::new(Auth {
            path: path.to_owned(),
            state: Mutex::new(State {
                tokens: Arc::new(tokens),
                modified: modified(path),
                checked: Instant::now(),
            }),
        }))
    }

    /// The tokens in force, after re-reading the file if it changed.
    fn tokens(&self) -> Arc<Vec<Token>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed() >= RECHECK {
            st.checked = Instant::now();
            let now = modified(&self.path);
            if now != st.modified {
                st.modified = now;
                let reread = std::fs::read_to_string(&self.path)
                    .map_err(|source| TokensError::Read {
                        path: self.path.clone(),
                        source,
                    })
                    .and_then(|text| parse(&self.path, &text));
                match reread {
                    Ok(tokens) => {
                        tracing::info!(file = %self.path.display(), tokens = tokens.len(), "API tokens reloaded");
                        st.tokens = Arc::new(tokens);
                    }
                    Err(e) => tracing::warn!("{e}; the tokens in force stay"),
                }
            }
        }
        st.tokens.clone()
    }

    /// The name and role of the request's bearer token, or the 401 answer.
    fn identify(&self, req: &Request) -> Result<(String, Role), &'static str> {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return Err("no Authorization header (send `Authorization: Bearer TOKEN`)");
        };
        let Some(given) = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
        else {
            return Err("the Authorization header is not `Bearer TOKEN`");
        };
        let tokens = self.tokens();
        // Compare against every token, in constant time per token, so timing says nothing about which one is close.
        let mut found = None;
        for t in tokens.iter() {
            if constant_time_eq(&t.secret, given.as_bytes()) {
                found = Some((t.name.clone(), t.role));
            }
        }
        found.ok_or("the token is not valid")
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// The middleware: lets a request through when no tokens are configured, or when its token's role suffices.
pub async fn check(auth: Option<Arc<Auth>>, req: Request, next: axum::middleware::Next) -> Response {
    let Some(auth) = auth else {
        return next.run(req).await;
    };
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let Some(needed) = required_role(&method, &path) else {
        return next.run(req).await;
    };
    match auth.identify(&req) {
        Err(why) => {
            tracing::warn!(%method, %path, "admin API request refused (401): {why}");
            let mut r =
                ApiError::new(StatusCode::UNAUTHORIZED, format!("authentication required: {why}")).into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"l7mp-agent\""),
            );
            r
        }
        Ok((name, role)) if role < needed => {
            tracing::warn!(%method, %path, token = %name, role = role.as_str(), "admin API request refused (403): needs {}", needed.as_str());
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{method} {path} needs the {} role; token {name:?} has {}",
                    needed.as_str(),
                    role.as_str()
                ),
            )
            .into_response()
        }
        Ok((name, role)) => {
            tracing::debug!(%method, %path, token = %name, role = role.as_str(), "admin API request authorized");
            next.run(req).await
        }
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
    fn the_file_format_and_its_errors() {
        let p = Path::new("tokens.csv");
        let ok = parse(
            p,
            "# comment\n\nreader-token-0123456789,ro,reader\n  op-token-0123456789abc , ci , operator # trailing\n",
        )
        .expect("valid");
        assert_eq!(ok.len(), 2);
        assert_eq!((ok[1].name.as_str(), ok[1].role), ("ci", Role::Operator));
        let e = |text: &str| parse(p, text).map(drop).expect_err("invalid").to_string();
        assert!(e("short,name,reader").contains("line 1") && e("short,name,reader").contains("shorter than 16"));
        assert!(e("0123456789abcdef0,a,root").contains("unknown role \"root\""));
        assert!(e("0123456789abcdef0,a").contains("TOKEN,NAME,ROLE"));
        assert!(e("0123456789abcdef0,a,admin\n0123456789abcdef1,a,admin").contains("twice"));
        assert!(e("# nothing\n").contains("no token"));
        // No error message repeats a token.
        assert!(!e("0123456789abcdef0,a,root").contains("0123456789abcdef0"));
    }

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
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Reader);
        assert!(
            constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"a", b"ab")
        );
    }
}

//! Who may call l7mp's admin APIs (the agent's REST API, the control plane's Management API) and what they may do.
//!
//! - [`Role`]: `reader` < `operator` < `admin`, each including the ones before it; what each role may do is decided
//!   by the API that checks it (the agent per route and method, the control plane per gRPC method and kind).
//! - [`tokens`]: bearer tokens from a file (`TOKEN,NAME,ROLE` per line), re-read when it changes, compared in
//!   constant time; a token is only ever logged by its name.
//! - [`identity`]: who a client certificate says its holder is (`spiffe://l7mp/node/ID` for agents,
//!   `spiffe://l7mp/client/NAME` for API clients) and, for clients, the role it carries (the subject's
//!   organizational unit, `OU=operator`).
//! - [`Caller`]: the outcome of authentication, which the APIs log and authorize.

pub mod identity;
pub mod tokens;

pub use identity::PeerIdentity;
pub use tokens::{Tokens, TokensError};

/// What a caller may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: configuration, status, agents.
    Reader,
    /// Day-to-day changes of the configuration.
    Operator,
    /// Everything, including what changes the whole configuration or its policies.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Reader, Role::Operator, Role::Admin];

    /// Parses `reader` (also `read-only`, `readonly`), `operator` or `admin`.
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reader" | "read-only" | "readonly" => Some(Role::Reader),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The role's name as written in files and certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::parse(s).ok_or_else(|| format!("unknown role {s:?} (expected reader, operator or admin)"))
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A bearer token from the tokens file.
    Token,
    /// A client certificate.
    Certificate,
    /// Nothing: the API is open (no tokens configured, plaintext on loopback or `--insecure`).
    Open,
}

/// An authenticated caller: a name for logs (a token's name, a certificate's client name; never a secret) and
/// its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's or certificate's name; `anonymous` when the API is open.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// How it authenticated.
    pub via: Via,
}

impl Caller {
    /// The caller of an open API (no authentication configured): may do everything.
    pub fn open() -> Self {
        Self {
            name: "anonymous".into(),
            role: Role::Admin,
            via: Via::Open,
        }
    }

    /// `Ok` when the caller's role is at least `needed`; else the reason, naming both roles and the caller.
    pub fn require(&self, needed: Role, what: &str) -> Result<(), String> {
        if self.role >= needed {
            return Ok(());
        }
        let who = match self.via {
            Via::Token => format!("token {:?}", self.name),
            Via::Certificate => format!("client certificate {:?}", self.name),
            Via::Open => format!("{:?}", self.name),
        };
        Err(format!("{what} needs the {needed} role; {who} has {}", self.role))
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.via {
            Via::Token => write!(f, "token {:?} ({})", self.name, self.role),
            Via::Certificate => write!(f, "certificate {:?} ({})", self.name, self.role),
            Via::Open => write!(f, "anonymous"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_parse_and_requirements() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Reader);
        assert_eq!(Role::parse(" Read-Only "), Some(Role::Reader));
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert!("root".parse::<Role>().unwrap_err().contains("\"root\""));
        let c = Caller {
            name: "ci".into(),
            role: Role::Reader,
            via: Via::Token,
        };
        assert!(c.require(Role::Reader, "Get").is_ok());
        let e = c.require(Role::Operator, "Apply").unwrap_err();
        assert_eq!(e, "Apply needs the operator role; token \"ci\" has reader");
        assert!(Caller::open().require(Role::Admin, "x").is_ok());
    }
}

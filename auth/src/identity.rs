//! Who a client certificate says its holder is.
//!
//! The identity is a URI subject alternative name in a SPIFFE-like form, with `l7mp` as the trust domain:
//!
//! | URI SAN | holder | may |
//! |---|---|---|
//! | `spiffe://l7mp/node/NODE_ID` | the agent (or gRPC client) whose xDS node id is `NODE_ID` | stream `NODE_ID`'s configuration (ADS), read CSDS |
//! | `spiffe://l7mp/client/NAME` | a client such as `l7mpctl` | use the Management API, read CSDS |
//!
//! A client certificate's role is its subject's organizational unit: `OU=reader`, `OU=operator` or `OU=admin`
//! ([`role_in`]); a client certificate without one may only read. `l7mpctl certs client --name NAME --role ROLE`
//! writes both.
//!
//! Characters of the id outside `A-Z a-z 0-9 - . _ ~` are percent-encoded in the URI (`%XX`, UTF-8), so any node id
//! fits. A certificate without such a SAN has no l7mp identity: the TLS handshake may succeed (its CA is trusted),
//! but ADS refuses it. `l7mpctl certs agent --node-id ID` and `l7mpctl certs client --name NAME` write them.

use crate::Role;
use rustls::pki_types::CertificateDer;

/// The trust domain of l7mp's identities.
pub const TRUST_DOMAIN: &str = "l7mp";

/// What a client certificate identifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// An agent: `spiffe://l7mp/node/NODE_ID`.
    Node(String),
    /// A client of the Management API: `spiffe://l7mp/client/NAME`.
    Client(String),
    /// A certificate without an l7mp identity; its subject, for messages.
    Other(String),
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node(id) => write!(f, "node {id:?}"),
            Self::Client(name) => write!(f, "client {name:?}"),
            Self::Other(subject) => write!(f, "{subject:?} (no spiffe://{TRUST_DOMAIN}/ identity)"),
        }
    }
}

/// The URI SAN of an agent's certificate.
pub fn node_uri(node_id: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/node/{}", encode(node_id))
}

/// The URI SAN of a client's certificate.
pub fn client_uri(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/client/{}", encode(name))
}

impl PeerIdentity {
    /// The identity in a DER certificate (the first l7mp URI SAN); `Other` with the subject if none.
    pub fn from_der(der: &[u8]) -> Self {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return Self::Other("an unparsable certificate".into());
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name
                    && let Some(id) = Self::from_uri(uri)
                {
                    return id;
                }
            }
        }
        Self::Other(cert.subject().to_string())
    }

    /// The identity of a peer from its certificate chain (leaf first); `None` without certificates (plaintext).
    pub fn from_chain(chain: Option<&[CertificateDer<'_>]>) -> Option<Self> {
        chain.and_then(|c| c.first()).map(|leaf| Self::from_der(leaf))
    }

    /// The identity and role of a peer's certificate chain (leaf first); `None` without certificates.
    pub fn with_role(chain: Option<&[CertificateDer<'_>]>) -> Option<(Self, Option<Role>)> {
        chain
            .and_then(|c| c.first())
            .map(|leaf| (Self::from_der(leaf), role_in(leaf)))
    }

    /// Parses `spiffe://l7mp/node/ID` or `spiffe://l7mp/client/NAME`.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri
            .strip_prefix("spiffe://")?
            .strip_prefix(TRUST_DOMAIN)?
            .strip_prefix('/')?;
        let (kind, id) = rest.split_once('/')?;
        let id = decode(id)?;
        if id.is_empty() {
            return None;
        }
        match kind {
            "node" => Some(Self::Node(id)),
            "client" => Some(Self::Client(id)),
            _ => None,
        }
    }

    /// Whether this identity may stream `node_id`'s configuration; the error says why not, naming both.
    pub fn check_node(&self, node_id: &str) -> Result<(), String> {
        match self {
            Self::Node(id) if id == node_id => Ok(()),
            Self::Node(id) => Err(format!(
                "the client certificate is for node {id:?}; it cannot ask for node {node_id:?}'s configuration"
            )),
            other => Err(format!(
                "the client certificate identifies {other}, not node {node_id:?}: an agent needs a certificate \
                 with the URI SAN {} (l7mpctl certs agent --node-id {node_id})",
                node_uri(node_id)
            )),
        }
    }
}

/// The role a DER certificate carries in its subject's organizational unit (the first `OU` that names a role).
pub fn role_in(der: &[u8]) -> Option<Role> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_organizational_unit()
        .filter_map(|ou| ou.as_str().ok())
        .find_map(Role::parse)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        for id in ["gw-1", "pod-0.default", "a b/c%d", "ünï"] {
            assert_eq!(
                PeerIdentity::from_uri(&node_uri(id)),
                Some(PeerIdentity::Node(id.into()))
            );
            assert_eq!(
                PeerIdentity::from_uri(&client_uri(id)),
                Some(PeerIdentity::Client(id.into()))
            );
        }
        assert_eq!(node_uri("a b"), "spiffe://l7mp/node/a%20b");
        for bad in [
            "spiffe://other/node/a",
            "spiffe://l7mp/node/",
            "spiffe://l7mp/admin/a",
            "spiffe://l7mp/node/%zz",
            "https://l7mp/node/a",
        ] {
            assert_eq!(PeerIdentity::from_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn node_check_names_both() {
        let a = PeerIdentity::Node("A".into());
        assert!(a.check_node("A").is_ok());
        let e = a.check_node("B").unwrap_err();
        assert!(e.contains("\"A\"") && e.contains("\"B\""), "{e}");
        let e = PeerIdentity::Client("ops".into()).check_node("B").unwrap_err();
        assert!(
            e.contains("client \"ops\"") && e.contains("spiffe://l7mp/node/B"),
            "{e}"
        );
    }
}

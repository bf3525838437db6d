//! The `TLS` session metadata of TLS and DTLS listeners:
//! `{sni, alpn, version, cipher, peer: {subject, sans, fingerprint_sha256}}`.

use serde_json::{Value, json};
use x509_parser::extensions::GeneralName;

/// `TLS` metadata from what a handshake negotiated. `peer` is the client's leaf certificate (DER), if it sent one.
pub fn session(sni: Option<&str>, alpn: Option<&[u8]>, version: &str, cipher: &str, peer: Option<&[u8]>) -> Value {
    json!({
        "sni": sni,
        "alpn": alpn.map(|a| String::from_utf8_lossy(a).into_owned()),
        "version": version,
        "cipher": cipher,
        "peer": peer.map(peer_certificate),
    })
}

/// `{subject, sans, fingerprint_sha256}` of a certificate. The subject is printed as `CN=client, O=example` (in the
/// certificate's order); SANs as `DNS:name`, `IP:addr`, `URI:uri`, `email:addr`. A certificate that does not parse
/// (it was verified by the TLS library, so this should not happen) has a null subject and no SANs.
pub fn peer_certificate(der: &[u8]) -> Value {
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, der);
    let fingerprint: String = fingerprint.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let (subject, sans) = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let sans: Vec<String> = match cert.subject_alternative_name() {
                Ok(Some(ext)) => ext.value.general_names.iter().filter_map(general_name).collect(),
                _ => Vec::new(),
            };
            (Some(cert.subject().to_string()), sans)
        }
        Err(_) => (None, Vec::new()),
    };
    json!({ "subject": subject, "sans": sans, "fingerprint_sha256": fingerprint })
}

fn general_name(n: &GeneralName<'_>) -> Option<String> {
    Some(match n {
        GeneralName::DNSName(s) => format!("DNS:{s}"),
        GeneralName::URI(s) => format!("URI:{s}"),
        GeneralName::RFC822Name(s) => format!("email:{s}"),
        GeneralName::IPAddress(b) => match b.len() {
            4 => format!("IP:{}", std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?)),
            16 => format!("IP:{}", std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?)),
            _ => return None,
        },
        _ => return None,
    })
}

/// `TLSv1.3`, `TLSv1.2`, as `openssl s_client` prints them.
pub fn version_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => format!("{other:?}"),
    }
}

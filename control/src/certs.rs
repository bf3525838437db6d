//! `l7mpctl certs`: a development CA and the certificates of the control plane, its agents and its clients, with
//! `rcgen` (ECDSA P-256 keys, SHA-256 signatures).
//!
//! | what | files in `--out DIR` | subject alternative names | extended key usage |
//! |---|---|---|---|
//! | CA | `ca.pem`, `ca.key` | none | (CA, signs certificates) |
//! | control plane | `server.pem`, `server.key` | the DNS names and IP addresses given | server auth |
//! | agent | `agent.pem`, `agent.key` | `spiffe://l7mp/node/NODE_ID` ([`crate::tls::identity`]) | client auth |
//! | client (`l7mpctl`) | `client.pem`, `client.key` | `spiffe://l7mp/client/NAME` | client auth |
//!
//! Keys are PKCS#8 PEM, written with mode 0600; certificates PEM, 0644. Existing files are not overwritten unless
//! asked (`force`). A certificate is valid from an hour ago (clock skew) for the days asked; every certificate has a
//! random 128-bit serial number.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::tls::identity;
use l7mp_auth::Role;

/// Why a certificate cannot be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A file of the CA, or one to write.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An argument (a name, a node id).
    #[error("{0}")]
    Invalid(String),
    /// rcgen refused.
    #[error("cannot make the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> CertsError {
    CertsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// A CA that signs: its certificate as rcgen needs it, and its key.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn serial() -> Result<SerialNumber, CertsError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CertsError::Invalid("no random numbers from the system".into()))?;
    b[0] &= 0x7f; // a positive INTEGER
    b[0] |= 0x01; // of full length
    Ok(SerialNumber::from_slice(&b))
}

fn params(common_name: &str, days: u32) -> Result<CertificateParams, CertsError> {
    if days == 0 {
        return Err(CertsError::Invalid("--days must be at least 1".into()));
    }
    let now = time::OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "l7mp");
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(i64::from(days));
    p.serial_number = Some(serial()?);
    Ok(p)
}

/// A new self-signed CA.
pub fn new_ca(common_name: &str, days: u32) -> Result<Issued, CertsError> {
    let key = KeyPair::generate()?;
    let mut p = params(common_name, days)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl Ca {
    /// Reads `DIR/ca.pem` and `DIR/ca.key` (as `l7mpctl certs ca` writes them).
    pub fn load(dir: &Path) -> Result<Self, CertsError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| file_err(&cert_path, e))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, e))?;
        Self::from_pem(&cert_pem, &cert_path, &key_pem, &key_path)
    }

    /// From PEM texts (the paths name them in errors).
    pub fn from_pem(cert_pem: &str, cert_path: &Path, key_pem: &str, key_path: &Path) -> Result<Self, CertsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| file_err(key_path, format!("not a PEM private key: {e}")))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| file_err(cert_path, format!("not a PEM certificate: {e}")))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| file_err(cert_path, format!("not an X.509 certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(file_err(
                cert_path,
                "not a CA certificate (no basicConstraints CA:TRUE)",
            ));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(file_err(
                key_path,
                format!("this key does not belong to the certificate {}", cert_path.display()),
            ));
        }
        // Rebuild the CA as rcgen needs it to sign: its subject and key identifier, with its own key.
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for attr in cert.subject().iter_attributes() {
            let (Some(oid), Ok(value)) = (attr.attr_type().iter(), attr.as_str()) else {
                continue;
            };
            dn.push(DnType::from_oid(&oid.collect::<Vec<u64>>()), value);
        }
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        for ext in cert.extensions() {
            if let x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) = ext.parsed_extension() {
                p.key_identifier_method = KeyIdMethod::PreSpecified(id.0.to_vec());
            }
        }
        let cert = p.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    fn sign(&self, mut p: CertificateParams, eku: ExtendedKeyUsagePurpose) -> Result<Issued, CertsError> {
        let key = KeyPair::generate()?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The control plane's certificate for these DNS names and IP addresses (the first is its common name).
    pub fn server(&self, names: &[String], days: u32) -> Result<Issued, CertsError> {
        let Some(first) = names.first() else {
            return Err(CertsError::Invalid(
                "--name needs at least one DNS name or IP address".into(),
            ));
        };
        let mut p = params(first, days)?;
        for n in names {
            let san = match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.as_str().try_into().map_err(|_| {
                    CertsError::Invalid(format!("--name {n:?} is neither a DNS name nor an IP address"))
                })?),
            };
            p.subject_alt_names.push(san);
        }
        self.sign(p, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// An agent's certificate: its node id as the URI SAN `spiffe://l7mp/node/NODE_ID`.
    pub fn agent(&self, node_id: &str, days: u32) -> Result<Issued, CertsError> {
        if node_id.is_empty() {
            return Err(CertsError::Invalid("--node-id must not be empty".into()));
        }
        let mut p = params(node_id, days)?;
        p.subject_alt_names.push(uri(&identity::node_uri(node_id))?);
        self.sign(p, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A client's certificate (`l7mpctl`): `spiffe://l7mp/client/NAME`, its role as the subject's `OU`.
    pub fn client(&self, name: &str, role: Role, days: u32) -> Result<Issued, CertsError> {
        if name.is_empty() {
            return Err(CertsError::Invalid("--name must not be empty".into()));
        }
        let mut p = params(name, days)?;
        p.distinguished_name.push(DnType::OrganizationalUnitName, role.as_str());
        p.subject_alt_names.push(uri(&identity::client_uri(name))?);
        self.sign(p, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn uri(s: &str) -> Result<SanType, CertsError> {
    Ok(SanType::URI(s.try_into().map_err(|_| {
        CertsError::Invalid(format!("{s:?} is not an IA5 string"))
    })?))
}

/// Writes `DIR/STEM.pem` (0644) and `DIR/STEM.key` (0600), creating DIR; refuses to overwrite unless `force`.
/// Returns the two paths.
pub fn write(dir: &Path, stem: &str, issued: &Issued, force: bool) -> Result<(PathBuf, PathBuf), CertsError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    if !force {
        for p in [&cert, &key] {
            if p.exists() {
                return Err(file_err(p, "exists already (--force replaces it)"));
            }
        }
    }
    write_file(&key, issued.key_pem.as_bytes(), 0o600)?;
    write_file(&cert, issued.cert_pem.as_bytes(), 0o644)?;
    Ok((cert, key))
}

/// Writes through a temporary file and a rename, so a reader (a control plane watching the file) never sees half.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CertsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::PeerIdentity;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn ca_signs_agents_with_their_node_id() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = new_ca("test CA", 1).expect("ca");
        write(dir.path(), "ca", &ca, false).expect("write");
        assert!(
            write(dir.path(), "ca", &ca, false).is_err(),
            "no overwrite without force"
        );
        let ca = Ca::load(dir.path()).expect("load");
        let agent = ca.agent("gw 1", 1).expect("agent");
        let der = CertificateDer::from_pem_slice(agent.cert_pem.as_bytes()).expect("pem");
        assert_eq!(PeerIdentity::from_der(&der), PeerIdentity::Node("gw 1".into()));
        assert_eq!(identity::role_in(&der), None, "an agent's certificate has no role");
        let client = ca.client("ops", Role::Operator, 1).expect("client");
        let der = CertificateDer::from_pem_slice(client.cert_pem.as_bytes()).expect("pem");
        assert_eq!(PeerIdentity::from_der(&der), PeerIdentity::Client("ops".into()));
        assert_eq!(identity::role_in(&der), Some(Role::Operator));
        assert!(ca.server(&[], 1).is_err());
        assert!(ca.server(&["localhost".into(), "127.0.0.1".into()], 1).is_ok());
        let key_mode = std::fs::metadata(dir.path().join("ca.key")).expect("key").permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key_mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_key_of_another_ca_is_refused() {
        let a = new_ca("a", 1).expect("a");
        let b = new_ca("b", 1).expect("b");
        let e = Ca::from_pem(&a.cert_pem, Path::new("ca.pem"), &b.key_pem, Path::new("ca.key")).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
    }
}

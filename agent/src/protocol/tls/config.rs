//! TLS contexts built from a `tls` block's PEM files, and rebuilt when the files change.
//!
//! A context checks its files' modification stamps at most once a second, when a handshake asks for it. A changed
//! set of files is loaded whole (chain, key, CAs) and swapped in; if it does not load (a half-written file, a key
//! that does not match the new certificate), the old context stays and a warning names the file and the reason. The
//! same stamps are not tried again, so a rotation that writes the certificate and then the key succeeds on the
//! write of the key.

use arc_swap::ArcSwap;
use l7mp_api::{ClientAuth, TlsSpec};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often a context looks at its files' stamps.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Why a `tls` block could not be loaded: the field (relative to the listener's or cluster's spec, e.g.
/// `spec.tls.cert`) and the reason, which names the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TlsError {
    pub field: String,
    pub reason: String,
}

impl TlsError {
    fn new(field: &str, reason: impl Into<String>) -> TlsError {
        TlsError {
            field: format!("spec.tls.{field}"),
            reason: reason.into(),
        }
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain in `path` (field `field`), leaf first.
pub fn read_certs(field: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::new(field, format!("cannot read {path:?}: {}", pem_error(&e))))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(field, format!("cannot parse {path:?}: {}", pem_error(&e))))?;
    if certs.is_empty() {
        return Err(TlsError::new(field, format!("no PEM certificate in {path:?}")));
    }
    Ok(certs)
}

/// The private key in `path` (field `key`).
pub fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    read_key_at("key", path)
}

/// The private key in `path`, errors naming `field`.
fn read_key_at(field: &str, path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::new(field, format!("no PEM private key in {path:?}")),
        e => TlsError::new(field, format!("cannot read {path:?}: {}", pem_error(&e))),
    })
}

/// The CA certificates in `path` (field `ca`) as a root store.
pub fn read_roots(path: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, c) in read_certs("ca", path)?.into_iter().enumerate() {
        roots
            .add(c)
            .map_err(|e| TlsError::new("ca", format!("certificate {i} in {path:?} is no usable CA: {e}")))?;
    }
    Ok(roots)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        other => format!("{other:?}"),
    }
}

/// The chain and key of a `tls` block, checked to belong together.
pub fn read_pair(cert: &str, key: &str) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = read_certs("cert", cert)?;
    let k = read_key(key)?;
    certified("", cert, key, certs.clone(), k.clone_key())?;
    Ok((certs, k))
}

/// A chain and its key as rustls signs with them; `prefix` is where the fields are (`sni[0].`).
fn certified(
    prefix: &str,
    cert: &str,
    key: &str,
    certs: Vec<CertificateDer<'static>>,
    k: PrivateKeyDer<'static>,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    rustls::sign::CertifiedKey::from_der(certs, k, &provider()).map_err(|e| {
        TlsError::new(
            &format!("{prefix}key"),
            format!("{key:?} is not the key of the certificate in {cert:?} ({e})"),
        )
    })
}

/// Picks a listener's certificate by the name the client asks for (SNI): an exact name, else a `*.` wildcard for
/// the name's first label, else the default certificate (`cert`), else none (the handshake fails).
#[derive(Debug)]
struct SniResolver {
    exact: std::collections::HashMap<String, Arc<rustls::sign::CertifiedKey>>,
    wildcard: std::collections::HashMap<String, Arc<rustls::sign::CertifiedKey>>,
    default: Option<Arc<rustls::sign::CertifiedKey>>,
}

impl SniResolver {
    fn load(spec: &TlsSpec) -> Result<SniResolver, TlsError> {
        let mut r = SniResolver {
            exact: Default::default(),
            wildcard: Default::default(),
            default: None,
        };
        if let (Some(cert), Some(key)) = (&spec.cert, &spec.key) {
            let (certs, k) = (read_certs("cert", cert)?, read_key(key)?);
            r.default = Some(Arc::new(certified("", cert, key, certs, k)?));
        }
        for (i, c) in spec.sni.iter().enumerate() {
            let prefix = format!("sni[{i}].");
            let certs = read_certs(&format!("{prefix}cert"), &c.cert)?;
            let k = read_key_at(&format!("{prefix}key"), &c.key)?;
            let ck = Arc::new(certified(&prefix, &c.cert, &c.key, certs, k)?);
            match c.server_name.strip_prefix("*.") {
                Some(suffix) => r.wildcard.insert(suffix.to_owned(), ck),
                None => r.exact.insert(c.server_name.clone(), ck),
            };
        }
        Ok(r)
    }

    fn pick(&self, name: Option<&str>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let found = name.and_then(|n| {
            let n = n.to_ascii_lowercase();
            self.exact
                .get(&n)
                .or_else(|| n.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)))
                .cloned()
        });
        found.or_else(|| self.default.clone())
    }
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = hello.server_name();
        let picked = self.pick(name);
        if picked.is_none() {
            tracing::warn!(
                server_name = name.unwrap_or("(none)"),
                "TLS handshake refused: no certificate for this server name (tls.sni) and no default certificate (tls.cert)"
            );
        }
        picked
    }
}

/// A listener's server context.
pub fn server_config(spec: &TlsSpec) -> Result<ServerConfig, TlsError> {
    if spec.cert.is_none() && spec.sni.is_empty() {
        return Err(TlsError::new(
            "cert",
            "missing (a listener needs a certificate and a key)",
        ));
    }
    let resolver = Arc::new(SniResolver::load(spec)?);
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("cert", e.to_string()))?;
    let builder = match (spec.client_auth, &spec.ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(TlsError::new(
                "ca",
                "missing (client_auth needs the CAs to verify against)",
            ));
        }
        (auth, Some(ca)) => {
            let roots = Arc::new(read_roots(ca)?);
            let mut v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider);
            if auth == ClientAuth::Optional {
                v = v.allow_unauthenticated();
            }
            let v = v.build().map_err(|e| TlsError::new("ca", format!("{ca:?}: {e}")))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let mut cfg = builder.with_cert_resolver(resolver);
    cfg.alpn_protocols = spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(cfg)
}

/// A cluster's client context: the CAs of `ca` (the system's roots without it), the client certificate if given.
pub fn client_config(spec: &TlsSpec) -> Result<ClientConfig, TlsError> {
    let roots = match &spec.ca {
        Some(ca) => read_roots(ca)?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsError::new(
                    "ca",
                    "missing, and the system has no CA certificates to use instead",
                ));
            }
            roots
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("ca", e.to_string()))?
        .with_root_certificates(roots);
    let mut cfg = match (&spec.cert, &spec.key) {
        (Some(cert), Some(key)) => {
            let (certs, key) = read_pair(cert, key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::new("cert", e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(cfg)
}

/// What a file looked like when it was last loaded: modification time, size and inode (a rename changes it).
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &str) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

struct Watch {
    checked: Instant,
    seen: Vec<Stamp>,
}

/// A context of type `T` built from a `tls` block, rebuilt when its files change.
pub struct Reloading<T> {
    /// Who owns it, for log lines: `listener "l1"`, `cluster "c1"`.
    owner: String,
    spec: TlsSpec,
    build: fn(&TlsSpec) -> Result<T, TlsError>,
    current: ArcSwap<T>,
    watch: Mutex<Watch>,
}

impl<T> Reloading<T> {
    /// Loads the files now; an error rejects the configuration.
    pub fn load(owner: String, spec: &TlsSpec, build: fn(&TlsSpec) -> Result<T, TlsError>) -> Result<Self, TlsError> {
        let seen = files(spec).map(stamp).collect();
        let first = build(spec)?;
        Ok(Reloading {
            owner,
            spec: spec.clone(),
            build,
            current: ArcSwap::from_pointee(first),
            watch: Mutex::new(Watch {
                checked: Instant::now(),
                seen,
            }),
        })
    }

    /// The context to use for a new handshake, reloaded first if a file changed (looked at once a second at most).
    pub fn get(&self) -> Arc<T> {
        self.check();
        self.current.load_full()
    }

    fn check(&self) {
        let Ok(mut w) = self.watch.try_lock() else {
            return;
        };
        if w.checked.elapsed() < RELOAD_CHECK {
            return;
        }
        w.checked = Instant::now();
        let now: Vec<Stamp> = files(&self.spec).map(stamp).collect();
        if now == w.seen {
            return;
        }
        w.seen = now;
        match (self.build)(&self.spec) {
            Ok(next) => {
                self.current.store(Arc::new(next));
                tracing::info!(owner = %self.owner, "TLS certificate files changed: reloaded");
            }
            Err(e) => tracing::warn!(
                owner = %self.owner,
                "TLS certificate files changed but do not load, keeping the previous ones: {e}"
            ),
        }
    }
}

fn files(spec: &TlsSpec) -> impl Iterator<Item = &str> {
    [&spec.cert, &spec.key, &spec.ca]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .chain(spec.sni.iter().flat_map(|c| [c.cert.as_str(), c.key.as_str()]))
}

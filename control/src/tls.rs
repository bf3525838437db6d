//! TLS with client certificates (mTLS) on the gRPC port: xDS, CSDS and the Management API.
//!
//! - [`ReloadingConfig`]: the rustls server configuration built from three PEM files (certificate chain, key, the CA
//!   that signs client certificates). It looks at the files' modification times and sizes at most once a second,
//!   when a connection arrives, and rebuilds the configuration when one changed; a new file that does not load
//!   (half written, a key that does not match the certificate) keeps the configuration in force and is logged once,
//!   naming the file. New connections get the new configuration; open ones keep theirs.
//! - [`incoming`]: accepts TCP connections and runs the TLS handshakes off the accept loop (a slow or failing peer
//!   holds back nobody); a failed handshake is logged with the peer's address and the reason, and counted
//!   ([`handshake_failures`]). The streams go to tonic's `serve_with_incoming`, which puts the peer's certificates
//!   in each request's extensions (`TlsConnectInfo`).
//! - [`identity`]: who a client certificate says its holder is (an agent's node id, or a named client such as
//!   `l7mpctl`), and the URI SANs that carry it.
//!
//! ring is the crypto provider (as for the etcd client); TLS 1.2 and 1.3.

pub use l7mp_auth::identity;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::Stream;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};

pub use l7mp_auth::PeerIdentity;

/// How often the files are looked at, at most.
const RECHECK: Duration = Duration::from_secs(1);
/// A TLS handshake that takes longer is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM files of the server side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (leaf first).
    pub cert: PathBuf,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificate(s) that sign client certificates (agents, `l7mpctl`).
    pub client_ca: PathBuf,
}

/// Why the TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds nothing usable.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("{what}: {reason}")]
    Config {
        /// Which files.
        what: String,
        /// rustls' reason.
        reason: String,
    },
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate (expected a PEM CERTIFICATE block)"));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_err(path, e))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        file_err(
            path,
            format!("no private key (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block): {e}"),
        )
    })
}

/// The crypto provider of every TLS configuration here.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store from a PEM file of CA certificates.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_err(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Builds the server configuration: the certificate and key, client certificates required and verified against
/// `client_ca`, ALPN `h2` (gRPC).
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let roots = read_roots(&files.client_ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| file_err(&files.client_ca, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            what: "TLS versions".into(),
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config {
            what: format!("{} with {}", files.cert.display(), files.key.display()),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What identifies a version of a file: its modification time and size (`None`: cannot be read).
type Stamp = Option<(SystemTime, u64)>;

fn stamps(files: &TlsFiles) -> [Stamp; 3] {
    [&files.cert, &files.key, &files.client_ca].map(|p| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    })
}

struct State {
    config: Arc<rustls::ServerConfig>,
    /// The stamps of the files last tried (loaded or refused).
    stamps: [Stamp; 3],
    checked: Instant,
}

/// The server configuration, rebuilt when its files change (see the module docs).
pub struct ReloadingConfig {
    files: TlsFiles,
    state: Mutex<State>,
    reloads: AtomicU64,
}

impl std::fmt::Debug for ReloadingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingConfig")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingConfig {
    /// Loads the files; an error here is fatal (the control plane does not start).
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let stamps = stamps(&files);
        let config = Arc::new(server_config(&files)?);
        Ok(Self {
            files,
            state: Mutex::new(State {
                config,
                stamps,
                checked: Instant::now(),
            }),
            reloads: AtomicU64::new(0),
        })
    }

    /// The files.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// How many times the configuration was rebuilt from changed files.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// The configuration for a new connection; looks at the files first if it has not for a second.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        let mut st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if st.checked.elapsed() >= RECHECK {
            st.checked = Instant::now();
            let now = stamps(&self.files);
            if now != st.stamps {
                st.stamps = now;
                match server_config(&self.files) {
                    Ok(c) => {
                        st.config = Arc::new(c);
                        self.reloads.fetch_add(1, Ordering::Relaxed);
                        info!(cert = %self.files.cert.display(), "TLS: certificates reloaded; new connections use them");
                    }
                    Err(e) => warn!("TLS: keeping the certificates in force: {e}"),
                }
            }
        }
        st.config.clone()
    }
}

static HANDSHAKE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// TLS handshakes that failed since the process started (no client certificate, an unknown CA, not TLS, ...).
pub fn handshake_failures() -> u64 {
    HANDSHAKE_FAILURES.load(Ordering::Relaxed)
}

/// The TLS connections accepted on `listener`, handshakes done, for tonic's `serve_with_incoming`. The accept loop
/// ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingConfig>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + Send + 'static {
    let (tx, mut rx) = mpsc::channel::<Result<TlsStream<TcpStream>, std::io::Error>>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!("TLS: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => handshake_failed(peer, &e.to_string()),
                    Err(_) => handshake_failed(peer, "timed out"),
                }
            });
        }
    });
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn handshake_failed(peer: SocketAddr, reason: &str) {
    HANDSHAKE_FAILURES.fetch_add(1, Ordering::Relaxed);
    warn!(%peer, "TLS handshake failed: {reason}");
}

/// Whether an address is loopback (where plaintext is allowed without `--insecure`).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{self, Ca};

    fn pki(dir: &Path) -> (TlsFiles, Ca) {
        let ca = certs::new_ca("test CA", 1).expect("ca");
        certs::write(dir, "ca", &ca, false).expect("write ca");
        let ca = Ca::load(dir).expect("load");
        let server = ca.server(&["127.0.0.1".into()], 1).expect("server");
        certs::write(dir, "server", &server, false).expect("write server");
        let files = TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: dir.join("ca.pem"),
        };
        (files, ca)
    }

    #[test]
    fn reloads_changed_files_and_keeps_the_old_config_on_a_broken_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let (files, ca) = pki(dir.path());
        let tls = ReloadingConfig::load(files.clone()).expect("load");
        let first = tls.current();
        assert!(
            Arc::ptr_eq(&first, &tls.current()),
            "unchanged files: the same configuration"
        );
        let server = ca.server(&["127.0.0.1".into()], 1).expect("server");
        certs::write(dir.path(), "server", &server, true).expect("rewrite");
        std::thread::sleep(RECHECK);
        let second = tls.current();
        assert!(
            !Arc::ptr_eq(&first, &second) && tls.reloads() == 1,
            "changed files are reloaded"
        );
        std::fs::write(&files.key, "garbage").expect("break");
        std::thread::sleep(RECHECK);
        assert!(
            Arc::ptr_eq(&second, &tls.current()),
            "a broken key keeps the configuration in force"
        );
        assert_eq!(tls.reloads(), 1);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut files, ca) = pki(dir.path());
        files.client_ca = dir.path().join("missing.pem");
        let e = server_config(&files).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        // A key of another certificate.
        let other = ca.server(&["127.0.0.1".into()], 1).expect("other");
        certs::write(dir.path(), "other", &other, false).expect("write");
        files.client_ca = dir.path().join("ca.pem");
        files.key = dir.path().join("other.key");
        let e = server_config(&files).unwrap_err().to_string();
        assert!(e.contains("server.pem with") && e.contains("other.key"), "{e}");
        assert!(is_loopback(&"127.0.0.1:1".parse().expect("addr")));
        assert!(!is_loopback(&"0.0.0.0:1".parse().expect("addr")));
    }
}

//! TLS to the control plane: `--xds https://...` with the CA that signed the control plane's certificate and this
//! agent's client certificate (mTLS). The files are read for every connection attempt, so a rotated certificate is
//! used from the next (re)connection on, without a restart. `http://` URLs stay plaintext.
//!
//! The control plane binds the node id to the certificate: an agent's certificate carries the URI SAN
//! `spiffe://l7mp/node/NODE_ID` (`l7mpctl certs agent --node-id NODE_ID`), and the control plane refuses a stream
//! whose node id is another one.

use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The `--xds-ca`, `--xds-cert` and `--xds-key` flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct XdsTlsArgs {
    /// The CA certificate (PEM) that signed the control plane's certificate; required for `https://` control-plane
    /// URLs.
    #[arg(long, env = "L7MP_XDS_CA", value_name = "FILE", help_heading = "Control plane")]
    pub xds_ca: Option<PathBuf>,
    /// This agent's client certificate (PEM), for a control plane that requires one (its URI SAN
    /// `spiffe://l7mp/node/NODE_ID` must name this agent's --node-id). Re-read at every (re)connection.
    #[arg(
        long,
        env = "L7MP_XDS_CERT",
        value_name = "FILE",
        requires = "xds_key",
        help_heading = "Control plane"
    )]
    pub xds_cert: Option<PathBuf>,
    /// The private key (PEM) of --xds-cert.
    #[arg(
        long,
        env = "L7MP_XDS_KEY",
        value_name = "FILE",
        requires = "xds_cert",
        help_heading = "Control plane"
    )]
    pub xds_key: Option<PathBuf>,
}

impl XdsTlsArgs {
    /// Checks the flags against the control-plane URLs before anything connects.
    pub fn check(&self, servers: &[String]) -> Result<(), String> {
        let https = servers.iter().any(|s| s.starts_with("https://"));
        if https && self.xds_ca.is_none() {
            return Err("an https:// control plane needs --xds-ca FILE (the CA that signed its certificate)".into());
        }
        if !https && (self.xds_ca.is_some() || self.xds_cert.is_some()) {
            return Err("--xds-ca/--xds-cert are given but no --xds URL is https://".into());
        }
        for p in [&self.xds_ca, &self.xds_cert, &self.xds_key].into_iter().flatten() {
            read(p)?;
        }
        Ok(())
    }

    /// What to add to a connection error: a TLS control plane closes a connection without a client certificate
    /// after the handshake, and the client only sees the connection close.
    pub fn hint(&self, url: &str) -> &'static str {
        if url.starts_with("https://") && self.xds_cert.is_none() {
            " (no client certificate was presented: a control plane with mTLS needs --xds-cert and --xds-key)"
        } else {
            ""
        }
    }

    /// `endpoint` for `url`, with TLS when the URL is `https://` (the files are read now).
    pub fn configure(&self, endpoint: Endpoint, url: &str) -> Result<Endpoint, String> {
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let Some(ca) = &self.xds_ca else {
            return Err("https:// needs --xds-ca".into());
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&self.xds_cert, &self.xds_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint.tls_config(tls).map_err(|e| error_chain(&e))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !b.starts_with(b"-----BEGIN") && !String::from_utf8_lossy(&b).contains("-----BEGIN") {
        return Err(format!("{}: not a PEM file", path.display()));
    }
    Ok(b)
}

/// A gRPC status as `code: message`, with the sources of a transport failure (e.g. the TLS alert).
pub fn status_text(s: &tonic::Status) -> String {
    let mut out = format!("{}: {}", s.code(), s.message());
    if let Some(source) = std::error::Error::source(s) {
        let more = error_chain(source);
        if !out.contains(&more) {
            out.push_str(": ");
            out.push_str(&more);
        }
    }
    out
}

/// An error and its sources, `: `-joined (tonic's transport errors hide the TLS reason in the sources).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

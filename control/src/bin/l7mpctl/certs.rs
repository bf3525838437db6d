//! `l7mpctl certs`: a development CA and certificates for mTLS between agents, clients and the control plane
//! (`l7mp_control::certs`), and `l7mpctl`'s own TLS flags.

use anyhow::Context;
use l7mp_control::certs::{self, Ca};
use std::path::{Path, PathBuf};

pub const CERTS_EXAMPLES: &str = "\
EXAMPLES (a development CA and certificates, then mTLS between everything)
  l7mpctl certs ca --out pki/ca
  l7mpctl certs server --ca pki/ca --name ctl.example.org,10.0.0.1,127.0.0.1 --out pki/server
  l7mpctl certs agent --ca pki/ca --node-id gw-1 --out pki/gw-1
  l7mpctl certs client --ca pki/ca --name alice --role admin --out pki/alice
  l7mpctl certs client --ca pki/ca --name ci --role operator --out pki/ci

  l7mp-control --listen 0.0.0.0:18000 --tls-client-ca pki/ca/ca.pem \\
      --tls-cert pki/server/server.pem --tls-key pki/server/server.key
  l7mp-agent --xds https://ctl.example.org:18000 --node-id gw-1 --xds-ca pki/ca/ca.pem \\
      --xds-cert pki/gw-1/agent.pem --xds-key pki/gw-1/agent.key
  l7mpctl --server https://ctl.example.org:18000 --ca pki/ca/ca.pem \\
      --cert pki/alice/client.pem --key pki/alice/client.key status

An agent's certificate carries its node id (URI SAN spiffe://l7mp/node/NODE_ID): it can only
stream that node's configuration. A client certificate carries its name (spiffe://l7mp/client/NAME)
and its role on the Management API (subject OU=reader|operator|admin; see docs/security.md). Keys are written with mode 0600; existing files are kept
unless --force. For production, use your own PKI (cert-manager, ...) with the same SANs.";

/// What `l7mpctl certs` makes.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCmd {
    /// A new self-signed CA: `OUT/ca.pem` and `OUT/ca.key` (keep the key private).
    Ca {
        /// The directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "l7mp development CA")]
        common_name: String,
        #[command(flatten)]
        common: Common,
    },
    /// The control plane's certificate (`OUT/server.pem`, `OUT/server.key`), signed by the CA in `--ca DIR`.
    Server {
        /// The directory of `ca.pem` and `ca.key`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The DNS names and IP addresses agents and clients use to reach the control plane, comma separated
        /// (`ctl.l7mp.svc,10.0.0.1,127.0.0.1`): the certificate is valid for exactly these.
        #[arg(long, value_name = "HOST[,IP...]", value_delimiter = ',', required = true)]
        name: Vec<String>,
        /// The directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// An agent's client certificate (`OUT/agent.pem`, `OUT/agent.key`) for one node id (give the agent the same
    /// `--node-id`).
    Agent {
        /// The directory of `ca.pem` and `ca.key`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The agent's node id; the certificate's URI SAN is `spiffe://l7mp/node/NODE_ID`.
        #[arg(long, value_name = "ID")]
        node_id: String,
        /// The directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// A client certificate for `l7mpctl` or another Management API client (`OUT/client.pem`, `OUT/client.key`).
    Client {
        /// The directory of `ca.pem` and `ca.key`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Who holds it (for logs); the URI SAN is `spiffe://l7mp/client/NAME`.
        #[arg(long, value_name = "NAME", default_value = "l7mpctl")]
        name: String,
        /// What the holder may do on the Management API: `reader` (get, list, watch, agents, status, CSDS),
        /// `operator` (also apply and delete VirtualServices, Targets and Routes) or `admin` (also Rules). Written
        /// as the subject's organizational unit (OU).
        #[arg(long, value_name = "ROLE")]
        role: l7mp_auth::Role,
        /// The directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Args)]
pub struct Common {
    /// How long the certificate is valid, in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

fn written(what: &str, (cert, key): (PathBuf, PathBuf)) {
    println!("{what}: {} (key {})", cert.display(), key.display());
}

fn load(ca: &Path) -> anyhow::Result<Ca> {
    Ca::load(ca).with_context(|| {
        format!(
            "--ca {}: expected ca.pem and ca.key (l7mpctl certs ca --out DIR)",
            ca.display()
        )
    })
}

pub fn run(cmd: CertsCmd) -> anyhow::Result<()> {
    match cmd {
        CertsCmd::Ca {
            out,
            common_name,
            common,
        } => {
            let ca = certs::new_ca(&common_name, common.days)?;
            written("CA", certs::write(&out, "ca", &ca, common.force)?);
        }
        CertsCmd::Server { ca, name, out, common } => {
            let issued = load(&ca)?.server(&name, common.days)?;
            written(
                &format!("server {}", name.join(",")),
                certs::write(&out, "server", &issued, common.force)?,
            );
        }
        CertsCmd::Agent {
            ca,
            node_id,
            out,
            common,
        } => {
            let issued = load(&ca)?.agent(&node_id, common.days)?;
            written(
                &format!("agent {node_id:?}"),
                certs::write(&out, "agent", &issued, common.force)?,
            );
        }
        CertsCmd::Client {
            ca,
            name,
            role,
            out,
            common,
        } => {
            let issued = load(&ca)?.client(&name, role, common.days)?;
            written(
                &format!("client {name:?} ({role})"),
                certs::write(&out, "client", &issued, common.force)?,
            );
        }
    }
    Ok(())
}

/// TLS to the control plane (`https://` servers). Given before the command (`l7mpctl --server https://... --ca
/// FILE status`); `l7mpctl certs server/agent/client --ca DIR` is the CA's directory instead.
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// The CA certificate (PEM) that signed the control plane's certificate (for an `https://` --server).
    #[arg(long = "ca", env = "L7MP_CA", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// The client certificate (PEM) to present (`l7mpctl certs client`).
    #[arg(long = "cert", env = "L7MP_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "key", env = "L7MP_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
}

/// Added to transport errors (see [`TlsArgs::hint`]); set once the flags are parsed.
pub static HINT: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

impl TlsArgs {
    /// What to add to a transport error: a control plane with mTLS closes a connection without a client certificate
    /// after the handshake, and the client only sees the connection close.
    pub fn hint(&self, server: &str) -> &'static str {
        if server.starts_with("https://") && self.cert.is_none() {
            " (no client certificate was presented: a control plane with mTLS needs --cert and --key)"
        } else {
            ""
        }
    }

    /// The channel endpoint for `server`, with TLS for `https://`.
    pub fn endpoint(&self, server: &str) -> anyhow::Result<tonic::transport::Endpoint> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let endpoint = Endpoint::from_shared(server.to_owned()).with_context(|| format!("--server {server:?}"))?;
        if !server.starts_with("https://") {
            if self.ca_file.is_some() || self.cert.is_some() {
                anyhow::bail!("--ca/--cert are for an https:// --server (got {server})");
            }
            return Ok(endpoint);
        }
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let Some(ca) = &self.ca_file else {
            anyhow::bail!("an https:// --server needs --ca FILE (or L7MP_CA): the CA that signed its certificate");
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => anyhow::bail!("--cert and --key go together"),
        }
        Ok(endpoint.tls_config(tls)?)
    }
}

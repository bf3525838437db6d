//! The `l7mp-control` binary: the store, the control loop, the xDS server and the Management API on one gRPC port,
//! and an optional admin HTTP listener (`/live`, `/ready`, `/metrics`).

use anyhow::Context;
use clap::Parser;
use l7mp_auth::Tokens;
use l7mp_control::auth::Access;
use l7mp_control::controller::{ControlPlane, Hooks};
use l7mp_control::leader::LeaseConfig;
use l7mp_control::management::ManagementService;
use l7mp_control::registry::{LocalRegistry, Registry};
use l7mp_control::status_writer::StatusWriter;
use l7mp_control::store::{KubernetesStore, Store, StoreUrl};
use l7mp_control::tls::{ReloadingConfig, TlsFiles};
use l7mp_control::xds::{XdsConfig, XdsServer};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

const EXAMPLE: &str = "\
EXAMPLE
  l7mp-control --store embedded:/var/lib/l7mp --admin 127.0.0.1:18001 &
  l7mp-agent --xds http://127.0.0.1:18000 --node-id gw-1 --labels app=gateway &
  l7mpctl apply -f examples/mesh/udp-to-tcp.yaml
  l7mpctl agents

In Kubernetes (the objects are custom resources; kubectl apply works too):
  l7mp-control --store kubernetes: --admin 0.0.0.0:18001
  l7mp-control --store 'kubernetes:?kubeconfig=/etc/l7mp/kubeconfig&namespace=l7mp-system'

One gRPC port (--listen) serves agents (xDS: ADS, delta and state of the world; CSDS) and clients (the Management
API that l7mpctl uses). The embedded store is a single file in the store directory; it survives restarts.

WITH mTLS (required outside loopback unless --insecure; see `l7mpctl certs --help`)
  l7mp-control --listen 0.0.0.0:18000 \\
      --tls-cert server.pem --tls-key server.key --tls-client-ca ca.pem
  l7mp-agent --xds https://ctl.example.org:18000 --node-id gw-1 \\
      --xds-ca ca.pem --xds-cert gw-1.pem --xds-key gw-1.key
An agent's certificate names its node id (URI SAN spiffe://l7mp/node/gw-1): it gets no other
node's configuration. A client certificate carries a role (reader, operator, admin).

WITH BEARER TOKENS (the Management API and CSDS; lines TOKEN,NAME,ROLE)
  l7mp-control --api-tokens /etc/l7mp/tokens.csv
  L7MP_TOKEN=... l7mpctl apply -f svc.yaml       # or l7mpctl --token-file FILE";

/// The l7mp control plane: stores VirtualServices, Targets, Routes and Rules and streams each agent its listeners,
/// clusters and rules over xDS.
#[derive(Debug, Parser)]
#[command(name = "l7mp-control", version, after_long_help = EXAMPLE, after_help = "Run with --help for an example.")]
struct Args {
    /// The gRPC address (xDS, CSDS and the Management API). Outside loopback it needs --tls-* (or --insecure).
    #[arg(long, env = "L7MP_LISTEN", default_value = "127.0.0.1:18000")]
    listen: SocketAddr,
    /// Where the desired state lives: `embedded:DIR` (a database file in DIR, created if missing; one control-plane
    /// process), `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (`etcds://...?ca=FILE&cert=FILE&key=FILE` for TLS),
    /// shared by every replica that names the same etcd and prefix, or `kubernetes:` (VirtualService, Target, Route
    /// and Rule custom resources; in-cluster config, else $KUBECONFIG or ~/.kube/config; options
    /// `kubernetes:?kubeconfig=PATH&context=C&namespace=NS`), where the replica holding the Lease `l7mp-control`
    /// writes each object's status.
    #[arg(long, env = "L7MP_STORE", default_value = "embedded:./l7mp-data")]
    store: String,
    /// Discover workloads for Targets' `pods` and `service` endpoints: `kubernetes` (in-cluster, or $KUBECONFIG /
    /// ~/.kube/config) or `kubernetes:KUBECONFIG`. Needs get/list/watch on pods and endpointslices.
    #[arg(long, env = "L7MP_DISCOVERY", value_name = "kubernetes[:KUBECONFIG]")]
    discovery: Option<l7mp_control::discovery::DiscoverySource>,
    /// Serve `/live`, `/ready` and `/metrics` (Prometheus) over HTTP on this address.
    #[arg(long, env = "L7MP_ADMIN", value_name = "ADDR:PORT")]
    admin: Option<SocketAddr>,
    /// Log level or tracing filter (e.g. `info`, `debug`, `info,l7mp_control::xds=debug`).
    #[arg(short = 'l', long, env = "L7MP_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Require a bearer token on the Management API and CSDS: a file of `TOKEN,NAME,ROLE` lines (roles reader,
    /// operator, admin; re-read when it changes). With mTLS, a client certificate's role (its OU) is an
    /// alternative. See docs/security.md.
    #[arg(long, env = "L7MP_API_TOKENS", value_name = "FILE")]
    api_tokens: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// mTLS on the gRPC port (see docs/control-plane.md, "Securing the control plane").
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "mTLS on the gRPC port")]
struct TlsArgs {
    /// The server's certificate chain (PEM). With --tls-key and --tls-client-ca, the gRPC port speaks TLS only and
    /// requires client certificates; the files are re-read when they change (new connections use them).
    #[arg(long, env = "L7MP_TLS_CERT", value_name = "FILE", requires_all = ["tls_key", "tls_client_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, env = "L7MP_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The CA certificate(s) (PEM) that sign agents' and clients' certificates. An agent's certificate names its
    /// node id (URI SAN spiffe://l7mp/node/NODE_ID) and streams only that node's configuration.
    #[arg(long, env = "L7MP_TLS_CLIENT_CA", value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,
    /// Serve plaintext gRPC on a non-loopback --listen address: anyone who reaches the port can then read every
    /// agent's configuration and change the mesh. Without TLS, plaintext is allowed on loopback only.
    #[arg(long, env = "L7MP_INSECURE", conflicts_with = "tls_cert")]
    insecure: bool,
}

impl TlsArgs {
    /// The TLS configuration, or `None` for plaintext (refused outside loopback without --insecure).
    fn load(&self, listen: SocketAddr) -> anyhow::Result<Option<Arc<ReloadingConfig>>> {
        let (Some(cert), Some(key), Some(client_ca)) = (&self.tls_cert, &self.tls_key, &self.tls_client_ca) else {
            if !self.insecure && !l7mp_control::tls::is_loopback(&listen) {
                anyhow::bail!(
                    "--listen {listen} is not a loopback address and no TLS is configured: give \
                     --tls-cert FILE --tls-key FILE --tls-client-ca FILE (l7mpctl certs makes a development CA and \
                     certificates), listen on 127.0.0.1, or pass --insecure to serve plaintext anyway"
                );
            }
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.clone(),
        };
        Ok(Some(Arc::new(ReloadingConfig::load(files).context("TLS")?)))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("l7mp-control: --log-level {:?}: {e}", args.log_level);
            return ExitCode::from(1);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("l7mp-control: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("l7mp-control: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = args.tls.load(args.listen)?;
    let access = match &args.api_tokens {
        Some(path) => Access::with_tokens(Tokens::load(path).context("--api-tokens")?),
        None => Access::open(),
    };
    let kubernetes = match l7mp_control::store::parse_store_url(&args.store) {
        Ok(StoreUrl::Kubernetes(url)) => Some(
            KubernetesStore::connect(&url)
                .await
                .with_context(|| format!("--store {}", args.store))?,
        ),
        _ => None,
    };
    let (store, registry): (Arc<dyn Store>, Arc<dyn Registry>) = match &kubernetes {
        Some(k) => (Arc::new(k.clone()), Arc::new(LocalRegistry::default())),
        None => l7mp_control::registry::open(&args.store)
            .await
            .with_context(|| format!("--store {}", args.store))?,
    };
    let cp = ControlPlane::with_registry(store, registry);
    cp.set_store_url(&args.store);
    // Kubernetes: the replica holding the Lease writes each object's status (kept alive until the process ends).
    let _status = kubernetes.map(|k| {
        let lease = LeaseConfig::new(k.home_namespace(), cp.replica());
        StatusWriter::start(cp.clone(), k, lease)
    });
    let xds = XdsServer::new(cp.cache().clone(), Arc::new(Hooks(cp.clone())), XdsConfig::default());
    cp.set_xds(xds.clone());
    // Workload discovery (a seam: it only calls `cp.set_workloads`). The first listing is awaited, bounded, so that
    // agents do not first get Targets without their pods.
    if let Some(l7mp_control::discovery::DiscoverySource::Kubernetes { kubeconfig }) = &args.discovery {
        let client = l7mp_control::discovery::kubernetes::client(kubeconfig.as_deref())
            .await
            .context("--discovery")?;
        let d = l7mp_control::discovery::kubernetes::start(client, cp.clone());
        if !d.wait_ready(std::time::Duration::from_secs(30)).await {
            tracing::warn!("discovery: Kubernetes workloads not listed after 30 s; going on without them for now");
        }
    }
    cp.recompute().await.context("cannot read the store")?;
    tokio::spawn(cp.clone().run());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    if let Some(addr) = args.admin {
        l7mp_control::admin::start(addr, cp.clone()).await?;
    }
    let tokens = access.has_tokens();
    let router = xds
        .router_with(access.clone())
        .add_service(ManagementService::with_access(cp.clone(), access));
    tracing::info!(listen = %args.listen, store = %args.store, tls = tls.is_some(), tokens, "l7mp-control running");
    match tls {
        Some(tls) => xds.serve_router_tls(router, listener, tls, shutdown()).await?,
        None => xds.serve_router(router, listener, shutdown()).await?,
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

//! `l7mp-fake-apiserver`: the fake Kubernetes API server as a process, for shell scripts and end-to-end tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use l7mp_kube_fake::{FakeApiServer, Options};

/// An in-memory fake Kubernetes API server for tests: plain HTTP on loopback, no authentication.
/// kubectl and kube-rs clients can use it: discovery, CRUD, patches, watches and CRDs.
/// Nothing is persisted; the server runs until killed.
///
/// Example:
///   l7mp-fake-apiserver --listen 127.0.0.1:0 --kubeconfig /tmp/fake.kubeconfig &
///   export KUBECONFIG=/tmp/fake.kubeconfig
///   kubectl apply -k manifests/crds && kubectl apply -f examples/mesh/udp-to-tcp.yaml
///   kubectl get vsvc
#[derive(Debug, Parser)]
#[command(name = "l7mp-fake-apiserver", version, verbatim_doc_comment)]
struct Cli {
    /// Address to listen on (port 0: any free port; the URL is printed on stdout).
    #[arg(long, env = "L7MP_FAKE_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig for this server here (context `l7mp-fake`, namespace `default`).
    #[arg(long, env = "L7MP_FAKE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Seconds between watch bookmarks (for watches that ask for them).
    #[arg(long, env = "L7MP_FAKE_BOOKMARK_INTERVAL", default_value_t = 1.0)]
    bookmark_interval: f64,
    /// How many events to remember; a watch from an older resourceVersion gets 410 Expired.
    #[arg(long, env = "L7MP_FAKE_HISTORY", default_value_t = 10_000)]
    history: usize,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let interval =
        Duration::try_from_secs_f64(cli.bookmark_interval).map_err(|e| anyhow::anyhow!("--bookmark-interval: {e}"))?;
    let options = Options {
        listen: cli.listen,
        bookmark_interval: interval,
        history_limit: cli.history,
        ..Options::default()
    };
    let server = FakeApiServer::start(options)?;
    if let Some(path) = &cli.kubeconfig {
        server
            .write_kubeconfig(path)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    println!("{}", server.url());
    // Serve until killed.
    loop {
        std::thread::park();
    }
}

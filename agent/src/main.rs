//! The `l7mp-agent` binary: read and validate the configuration, start the engine, run until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use l7mp_agent::engine::{Engine, EngineOptions};
use l7mp_agent::{cli, sys};
use l7mp_api::{Config, Format, parse_config};
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("l7mp-agent: {e:#}");
            return ExitCode::from(1);
        }
    };
    if args.check {
        println!(
            "{}: valid ({} listeners, {} clusters, {} rulelists, {} rules, {} routes)",
            args.config.display(),
            config.listeners.len(),
            config.clusters.len(),
            config.rulelists.len(),
            config.rules.len(),
            config.routes.len()
        );
        return ExitCode::SUCCESS;
    }
    let level = args
        .log_level
        .clone()
        .or(config.admin.log_level.clone())
        .unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(cli::log_filter(&level)).unwrap_or_else(|e| {
        eprintln!("l7mp-agent: invalid log level {level:?} ({e}); using info");
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    sys::raise_fd_limit();
    match run(args, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("l7mp-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load(args: &cli::Args) -> anyhow::Result<Config> {
    let path = args.config.display().to_string();
    let text =
        std::fs::read_to_string(&args.config).with_context(|| format!("cannot read configuration file {path}"))?;
    parse_config(&text, Format::from_path(&path)).with_context(|| format!("invalid configuration in {path}"))
}

fn run(args: cli::Args, config: Config) -> anyhow::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .context("cannot start the runtime")?;
    runtime.block_on(async {
        let engine = Engine::new(EngineOptions {
            half_close_timeout: Duration::from_secs_f64(args.half_close_timeout.clamp(0.01, 86_400.0)),
            metrics: !args.no_metrics,
        });
        engine
            .apply(config)
            .await
            .context("cannot put the configuration in force")?;
        // Handlers first: a SIGTERM right after "running" must stop the agent gracefully, not kill it.
        let signals = Signals::install()?;
        tracing::info!(config = %args.config.display(), threads, "l7mp-agent running");
        signals.wait().await;
        let drain = Duration::from_secs_f64(args.drain_timeout.clamp(0.0, 3600.0));
        tracing::info!(sessions = engine.session_count(), ?drain, "shutting down");
        engine.shutdown(drain).await;
        Ok(())
    })
}

/// SIGTERM and SIGINT, handled from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

//! The `l7mp-agent` binary: read and validate the configuration, start the engine, run until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use l7mp_agent::access_log::AccessLog;
use l7mp_agent::admin::{self, AdminState};
use l7mp_agent::engine::{Engine, EngineOptions};
use l7mp_agent::logging::{self, LogHandle, LogOptions, LogTarget};
use l7mp_agent::{cli, sys};
use l7mp_api::{Config, Format, parse_config};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
            args.config
                .as_deref()
                .unwrap_or(std::path::Path::new("(no file)"))
                .display(),
            config.listeners.len(),
            config.clusters.len(),
            config.rulelists.len(),
            config.rules.len(),
            config.routes.len()
        );
        return ExitCode::SUCCESS;
    }
    let (log, access_log) = match setup_logging(&args, &config) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("l7mp-agent: {e}");
            return ExitCode::from(1);
        }
    };
    sys::raise_fd_limit();
    let result = run(args, config, log, access_log.clone());
    // Every session has ended by now: write out the last access log lines.
    if let Some(a) = access_log {
        a.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("l7mp-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The admin API's authentication (tokens and/or client certificates) and its TLS context, from the flags.
type AdminSecurity = (
    Option<Arc<admin::auth::Auth>>,
    Option<Arc<l7mp_agent::protocol::tls::ServerTls>>,
);

fn admin_security(args: &cli::Args) -> anyhow::Result<AdminSecurity> {
    let mut auth = match &args.api_tokens {
        Some(path) => Some(admin::auth::Auth::with_tokens(l7mp_auth::Tokens::load(path)?)),
        None => None,
    };
    let (Some(cert), Some(key)) = (&args.admin_tls_cert, &args.admin_tls_key) else {
        return Ok((auth.map(Arc::new), None));
    };
    let text = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let client_auth = match (&args.admin_client_ca, auth.is_some()) {
        (None, _) => l7mp_api::ClientAuth::None,
        (Some(_), true) => l7mp_api::ClientAuth::Optional,
        (Some(_), false) => l7mp_api::ClientAuth::Required,
    };
    if args.admin_client_ca.is_some() {
        auth = Some(auth.unwrap_or_default().with_certificates());
    }
    let spec = l7mp_api::TlsSpec {
        cert: Some(text(cert)),
        key: Some(text(key)),
        ca: args.admin_client_ca.as_deref().map(text),
        client_auth,
        server_name: None,
        // HTTP/1.1 only: an HTTP/2 refusal (401/403) sent before the request body is read ends the stream with a
        // reset that clients such as curl report as a framing error instead of the answer.
        alpn: vec!["http/1.1".into()],
        sni: Vec::new(),
    };
    let tls = l7mp_agent::protocol::tls::server_tls("admin listener".into(), &spec)
        .map_err(|e| anyhow::anyhow!("--admin-tls-cert/--admin-tls-key/--admin-client-ca: {e}"))?;
    Ok((auth.map(Arc::new), Some(Arc::new(tls))))
}

fn load(args: &cli::Args) -> anyhow::Result<Config> {
    let Some(file) = &args.config else {
        return Ok(Config::default()); // --xds without a static file
    };
    let path = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read configuration file {path}"))?;
    parse_config(&text, Format::from_path(&path)).with_context(|| format!("invalid configuration in {path}"))
}

/// Installs the logger and opens the access log. Precedence: command line (or its environment variable), then the
/// configuration's `admin` section, then the defaults (info, stderr, no access log).
fn setup_logging(args: &cli::Args, config: &Config) -> anyhow::Result<(Arc<LogHandle>, Option<Arc<AccessLog>>)> {
    let level = args
        .log_level
        .clone()
        .or(config.admin.log_level.clone())
        .unwrap_or_else(|| "info".into());
    let target = args
        .log_file
        .as_deref()
        .or(config.admin.log_file.as_deref())
        .map(LogTarget::parse)
        .unwrap_or_default();
    let handle = logging::init(&LogOptions {
        level,
        format: args.log_format,
        target,
    })?;
    let access_log = match args.access_log.as_deref().or(config.admin.access_log_path.as_deref()) {
        Some(path) => {
            let log = AccessLog::open(path)?;
            tracing::info!(access_log = path, "access log enabled");
            Some(log)
        }
        None => None,
    };
    Ok((Arc::new(handle), access_log))
}

fn run(args: cli::Args, config: Config, log: Arc<LogHandle>, access_log: Option<Arc<AccessLog>>) -> anyhow::Result<()> {
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
            access_log,
            log: Some(log),
            metrics: !args.no_metrics,
        });
        let offload_mode = match args.offload.as_deref() {
            Some(m) => l7mp_api::OffloadMode::parse(m).unwrap_or_default(),
            None => config.admin.offload,
        };
        let offload_ifs = if args.offload_interfaces.is_empty() {
            config.admin.offload_ifs.clone()
        } else {
            args.offload_interfaces.clone()
        };
        let offload_tcp = args.offload_tcp || config.admin.offload_tcp;
        engine.set_offload(
            l7mp_agent::offload::start(offload_mode, &offload_ifs, offload_tcp).map_err(|e| anyhow::anyhow!(e))?,
        );
        let base = if args.config.is_some() {
            l7mp_api::dump::config(&config)
        } else {
            serde_json::Value::Null
        };
        engine
            .apply(config)
            .await
            .context("cannot put the configuration in force")?;
        let xds_stop = CancellationToken::new();
        if !args.xds.is_empty() {
            l7mp_agent::xds::check_servers(&args.xds).map_err(|e| anyhow::anyhow!("--xds: {e}"))?;
            args.xds_tls.check(&args.xds).map_err(|e| anyhow::anyhow!("--xds: {e}"))?;
            // Flags, else the downward API (POD_NAME, POD_NAMESPACE, POD_IP, /etc/podinfo/labels).
            let id = l7mp_agent::xds::identity(
                args.node_id.as_deref(),
                &args.labels,
                args.labels_file.as_deref(),
                args.address,
                |k| std::env::var(k).ok(),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            let node_id = match id.node_id {
                Some(id) => id,
                None => sys::hostname().context("cannot tell the host name; give --node-id")?,
            };
            let opts = l7mp_agent::xds::XdsOptions {
                servers: args.xds.clone(),
                node_id,
                labels: id.labels,
                address: id.address,
                base,
                tls: args.xds_tls.clone(),
            };
            tokio::spawn(l7mp_agent::xds::run(engine.clone(), opts, xds_stop.clone()));
        }
        let (auth, admin_tls) = admin_security(&args)?;
        // Without authentication the API is open: loopback clients only, unless --api-insecure.
        let auth = auth.or_else(|| Some(Arc::new(admin::auth::Auth::open(args.api_insecure))));
        if let Some(addr) = args.admin
            && !auth.as_ref().is_some_and(|a| a.enabled())
            && !addr.ip().is_loopback()
        {
            if !args.api_insecure {
                anyhow::bail!(
                    "the admin API would listen on {addr} without authentication: anyone who can reach it could \
                     reconfigure this agent. Give --api-tokens FILE (lines TOKEN,NAME,ROLE) or --admin-client-ca \
                     FILE (client certificates, with --admin-tls-cert/--admin-tls-key), listen on loopback, or pass \
                     --api-insecure"
                );
            }
            tracing::warn!(address = %addr, "the admin API listens beyond loopback without authentication (--api-insecure)");
        }
        let admin = AdminState::with_auth(engine.clone(), auth);
        engine.set_controller(l7mp_agent::admin::router(admin.clone()));
        let admin_stop = CancellationToken::new();
        if let Some(addr) = args.admin {
            admin::server::start(addr, admin, admin_tls, admin_stop.clone()).await?;
        }
        // Handlers first: a SIGTERM right after "running" must stop the agent gracefully, not kill it.
        let signals = Signals::install()?;
        let source = match (&args.config, args.xds.is_empty()) {
            (Some(f), true) => f.display().to_string(),
            (Some(f), false) => format!("{} + xDS {}", f.display(), args.xds.join(",")),
            (None, _) => format!("xDS {}", args.xds.join(",")),
        };
        tracing::info!(config = %source, threads, "l7mp-agent running");
        signals.wait().await;
        let drain = Duration::from_secs_f64(args.drain_timeout.clamp(0.0, 3600.0));
        tracing::info!(sessions = engine.session_count(), ?drain, "shutting down");
        admin_stop.cancel();
        xds_stop.cancel();
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

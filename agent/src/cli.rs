//! Command-line flags of `l7mp-agent`, compatible with the original `l7mp` (`-c`, `-l`, `-s`), each with an
//! `L7MP_*` environment variable.

pub use crate::logging::LogFormat;
use clap::Parser;
use std::path::PathBuf;

const EXAMPLE: &str = "\
EXAMPLE
  A UDP echo server on port 9001:

    $ cat > echo.yaml <<'YAML'
    listeners:
      - name: udp-echo
        spec: { protocol: UDP, port: 9001 }
        rules:
          - action:
              route:
                destination: echo
    clusters:
      - name: echo
        spec: { protocol: Echo }
    YAML
    $ l7mp-agent -c echo.yaml -l info
    $ socat - UDP:127.0.0.1:9001      # type a line, get it back

  The same with JSON logs in a file, debug messages from sessions only, and an access log on stdout:

    $ l7mp-agent -c echo.yaml --log-format json --log-file agent.log \
        -l info,l7mp_agent::session=debug --access-log -

  More configurations are in examples/; the format is documented in docs/configuration.md.

EXIT STATUS
  0 after a clean shutdown (SIGTERM/SIGINT), 1 when the configuration is invalid or cannot be put in force
  (the error names the field, e.g. `listeners[0].spec.port: expected an integer 1..65535, got \"abc\"`).";

/// The l7mp agent: a multiprotocol proxy that stitches streams across protocols.
///
/// Listeners accept peers and emit sessions; rules match session metadata and route each session through a chain
/// of clusters (UDP, TCP, UNIX sockets, transforms such as JSONEncap, Echo or Logger). The configuration file uses
/// the original l7mp's format (YAML or JSON).
#[derive(Debug, Parser)]
#[command(name = "l7mp-agent", version, after_long_help = EXAMPLE, after_help = "Run with --help for an example.")]
pub struct Args {
    /// Static configuration file (`.yaml`/`.yml` is YAML, anything else JSON). Required unless `--xds` is given;
    /// with `--xds` its objects stay in force under those the control plane sends.
    #[arg(
        short = 'c',
        long = "config",
        env = "L7MP_CONFIG",
        value_name = "FILE",
        help_heading = "Configuration",
        required_unless_present = "xds"
    )]
    pub config: Option<PathBuf>,

    /// Validate the configuration, print a summary and exit (0 when valid, 1 otherwise).
    #[arg(long, help_heading = "Configuration")]
    pub check: bool,

    /// Strict mode (accepted for compatibility: this agent always validates the whole configuration).
    #[arg(short = 's', long, env = "L7MP_STRICT", help_heading = "Configuration")]
    pub strict: bool,

    /// Hand flows that need no transformation (UDP to UDP, no chains, no reconnects; TCP to TCP with
    /// `--offload-tcp`) to the kernel (eBPF): `off`
    /// (every flow in user space), `auto` (use the kernel when it can be loaded; say why once and go on in user space
    /// when not: no root, no BPF, built without clang), `force` (refuse to start without it). Overrides
    /// `admin.offload`; the default is off. Needs IP forwarding on the interfaces where packets arrive.
    #[arg(
        long = "offload",
        env = "L7MP_OFFLOAD",
        value_name = "MODE",
        value_parser = ["off", "auto", "force"],
        help_heading = "Data plane"
    )]
    pub offload: Option<String>,

    /// The interfaces the kernel fast path attaches to, comma-separated (default: every interface that is up).
    /// Overrides `admin.offload_ifs`.
    #[arg(
        long = "offload-interfaces",
        env = "L7MP_OFFLOAD_INTERFACES",
        value_name = "IF,...",
        value_delimiter = ',',
        help_heading = "Data plane"
    )]
    pub offload_interfaces: Vec<String>,

    /// With offload on, also splice TCP sessions in the kernel (sockmap: what arrives on one of a session's sockets
    /// leaves through the other without reaching the agent). Off by default: on the kernels measured it cost more
    /// CPU in kernel workers than the agent's own path saves and carried bulk data slower; see docs/ebpf.md.
    /// Overrides `admin.offload_tcp`.
    #[arg(long = "offload-tcp", env = "L7MP_OFFLOAD_TCP", help_heading = "Data plane")]
    pub offload_tcp: bool,

    /// Log level: silly, verbose, info, notice, warn, error, silent (the original's names), trace, debug, or a list
    /// of `target=level` directives after a default level, such as `info,l7mp_agent::session=debug` (per-module
    /// levels). Overrides `admin.log_level`; the default is info.
    #[arg(
        short = 'l',
        long = "log-level",
        env = "L7MP_LOG_LEVEL",
        value_name = "LEVEL",
        help_heading = "Logging"
    )]
    pub log_level: Option<String>,

    /// Log line format: `text` (human-readable) or `json` (one object per line with timestamp, level, target and
    /// fields, for log collectors).
    #[arg(
        long = "log-format",
        env = "L7MP_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        help_heading = "Logging"
    )]
    pub log_format: LogFormat,

    /// Where the agent's log goes: `stderr`, `stdout`, or a file (created if missing, appended to). Overrides
    /// `admin.log_file`; the default is stderr.
    #[arg(
        long = "log-file",
        env = "L7MP_LOG_FILE",
        value_name = "PATH",
        help_heading = "Logging"
    )]
    pub log_file: Option<String>,

    /// Write one JSON line per session when it ends (peer, route, cluster, endpoint, status, duration, bytes and
    /// messages each way) to this file (appended to), or to stdout with `-`. Overrides `admin.access_log_path`. The
    /// line format is in docs/configuration.md (Logging).
    #[arg(
        long = "access-log",
        env = "L7MP_ACCESS_LOG",
        value_name = "PATH",
        help_heading = "Logging"
    )]
    pub access_log: Option<String>,

    /// Worker threads of the data plane (default: one per CPU core).
    #[arg(long, env = "L7MP_THREADS", value_name = "N", help_heading = "Runtime")]
    pub threads: Option<usize>,

    /// On SIGTERM/SIGINT, how long byte-stream sessions may keep running before they are ended (seconds).
    #[arg(
        long,
        env = "L7MP_DRAIN_TIMEOUT",
        value_name = "SECS",
        default_value_t = 5.0,
        help_heading = "Runtime"
    )]
    pub drain_timeout: f64,

    /// A byte-stream session one of whose directions has ended (half-close) ends after this many seconds without
    /// traffic. A peer that closed completely looks just like one that only stopped sending.
    #[arg(
        long,
        env = "L7MP_HALF_CLOSE_TIMEOUT",
        value_name = "SECS",
        default_value_t = 60.0,
        help_heading = "Runtime"
    )]
    pub half_close_timeout: f64,

    /// Serve the admin API on this address: the REST API (`/api/v1`, the original l7mp's, with an OpenAPI document
    /// at `/api/v1/openapi.json`), `/live`, `/ready`, `/metrics` (Prometheus) and `/config` (the configuration in
    /// force). Off by default. Without `--api-tokens` anyone who can reach it can reconfigure the agent: the agent
    /// then refuses a non-loopback address unless `--api-insecure` is given.
    #[arg(long, env = "L7MP_ADMIN", value_name = "ADDR:PORT", help_heading = "Admin API")]
    pub admin: Option<std::net::SocketAddr>,

    /// Require a bearer token on the admin API (`--admin`, and an HTTP listener routed to an `L7mpController`
    /// cluster): a file of `TOKEN,NAME,ROLE` lines (roles: `reader` = GETs, `operator` = also changes to listeners,
    /// clusters, rules, routes, endpoints and ending sessions, `admin` = also `POST /api/v1/config` and `/api/v1/admin`).
    /// `/live`, `/ready` and `/metrics` stay open. No token: 401; too low a role: 403. Re-read when it changes.
    #[arg(long, env = "L7MP_API_TOKENS", value_name = "FILE", help_heading = "Admin API")]
    pub api_tokens: Option<std::path::PathBuf>,

    /// Serve the admin listener over HTTPS with this certificate chain (PEM; with `--admin-tls-key`). Re-read when
    /// it changes.
    #[arg(
        long,
        env = "L7MP_ADMIN_TLS_CERT",
        value_name = "FILE",
        help_heading = "Admin API",
        requires = "admin_tls_key"
    )]
    pub admin_tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of `--admin-tls-cert`.
    #[arg(
        long,
        env = "L7MP_ADMIN_TLS_KEY",
        value_name = "FILE",
        help_heading = "Admin API",
        requires = "admin_tls_cert"
    )]
    pub admin_tls_key: Option<std::path::PathBuf>,

    /// Authenticate admin API callers by client certificate (mTLS; needs `--admin-tls-cert`): certificates must chain
    /// to these CAs and name the caller (URI SAN `spiffe://l7mp/client/NAME`) and its role (subject OU `reader`,
    /// `operator` or `admin`), as `l7mpctl certs client --name NAME --role ROLE` makes them. Without
    /// `--api-tokens` a certificate is required for the TLS handshake; with it, either one will do.
    #[arg(
        long,
        env = "L7MP_ADMIN_CLIENT_CA",
        value_name = "FILE",
        help_heading = "Admin API",
        requires = "admin_tls_cert"
    )]
    pub admin_client_ca: Option<std::path::PathBuf>,

    /// Serve the admin API without `--api-tokens` or `--admin-client-ca` beyond loopback: on a non-loopback `--admin`
    /// address, and to non-loopback clients of an HTTP listener routed to an `L7mpController` cluster (refused with
    /// 403 otherwise). Anyone who can reach it can then reconfigure the agent.
    #[arg(long, env = "L7MP_API_INSECURE", help_heading = "Admin API")]
    pub api_insecure: bool,

    /// Keep no Prometheus metrics (to measure their cost): Prometheus clusters answer 404, Metric clusters pass
    /// messages on without counting.
    #[arg(long, env = "L7MP_NO_METRICS", help_heading = "Runtime")]
    pub no_metrics: bool,

    /// Take the configuration from l7mp-control over xDS (delta ADS): one or more control-plane URLs, comma
    /// separated (`http://10.0.0.1:18000,http://10.0.0.2:18000`), tried in turn. Updates are validated like a file;
    /// what cannot be applied is NACKed and the last good configuration stays in force, as do live sessions when the
    /// control plane is away.
    #[arg(
        long,
        env = "L7MP_XDS",
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        help_heading = "Control plane"
    )]
    pub xds: Vec<String>,

    /// This agent's node id at the control plane (default: in a pod `POD_NAME.POD_NAMESPACE` from the downward
    /// API, else the host name).
    #[arg(long, env = "L7MP_NODE_ID", value_name = "ID", help_heading = "Control plane")]
    pub node_id: Option<String>,

    /// A file of labels in the downward API's format (`key="value"` per line), e.g. the pod's labels from a
    /// `downwardAPI` volume; `--labels` adds to and overrides them. Default: /etc/podinfo/labels if it exists.
    #[arg(long, env = "L7MP_LABELS_FILE", value_name = "FILE", help_heading = "Control plane")]
    pub labels_file: Option<std::path::PathBuf>,

    /// This agent's labels, which VirtualService and Target selectors match: `key=value,key2=value2`.
    #[arg(
        long,
        env = "L7MP_LABELS",
        value_name = "K=V,...",
        default_value = "",
        help_heading = "Control plane"
    )]
    pub labels: String,

    /// The address other agents reach this one at (used for Target endpoints that select agents). Default: the
    /// `POD_IP` environment variable (downward API `status.podIP`), if set.
    #[arg(long, env = "L7MP_ADDRESS", value_name = "IP", help_heading = "Control plane")]
    pub address: Option<std::net::IpAddr>,

    /// TLS to the control plane (`--xds-ca`, `--xds-cert`, `--xds-key`).
    #[command(flatten)]
    pub xds_tls: crate::xds_tls::XdsTlsArgs,
}

/// Maps one of the original's log level names (npmlog) to a tracing level; anything else is returned as is. The
/// agent parses levels with [`crate::logging::parse_filter`], which applies this to every directive.
pub fn log_filter(level: &str) -> String {
    crate::logging::translate(level).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_maps_levels() {
        Args::command().debug_assert();
        assert_eq!(log_filter("verbose"), "debug");
        assert_eq!(log_filter("l7mp_agent=debug"), "l7mp_agent=debug");
    }
}

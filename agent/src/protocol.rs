//! Protocols: the listener side (bind, accept, emit sessions) and the cluster side (open an upstream stage) of each
//! built-in protocol, one module per protocol. Adding a protocol means one module here, one arm in [`Bound`] and
//! [`connect`], a stream arm in `stream.rs`, a docs page and tests.

pub mod af_packet;
pub mod controller;
pub mod dtls;
pub mod http;
pub mod jsonsocket;
pub mod pipe;
pub mod process;
pub mod prometheus;
pub mod sctp;
pub mod sync;
pub mod tcp;
pub mod tls;
pub mod transform;
pub mod udp;
pub mod unix;
pub mod unix_dgram;
pub mod websocket;

use crate::engine::Engine;
use crate::lb;
use crate::snapshot::ClusterRt;
use crate::stream::{Reader, Writer};
use l7mp_api::{ClusterSpec, Listener, ListenerSpec};
use serde_json::Value;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use transform::Transform;

/// One stage of a session's pipeline: a real stream to a peer, or a transform applied in place.
pub enum Stage {
    Stream {
        reader: Reader,
        writer: Writer,
        endpoint: Option<String>,
    },
    Transform(Transform),
}

/// Why a cluster stage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Pick(#[from] lb::PickError),
    #[error("no value at {query} in the session metadata to pick a Sync group by")]
    EmptyLabel { query: String },
    #[error("JSONSocket handshake with {endpoint} ({address}) failed: {message}")]
    Handshake {
        endpoint: String,
        address: String,
        message: String,
    },
    #[error("TLS handshake with {endpoint} ({address}) failed: {message}")]
    Tls {
        endpoint: String,
        address: String,
        message: String,
    },
    #[error("cannot start {program:?}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("cannot resolve {address}: {source}")]
    Resolve { address: String, source: io::Error },
    #[error("cannot connect to {endpoint} ({address}): {source}")]
    Connect {
        endpoint: String,
        address: String,
        source: io::Error,
    },
    #[error("cluster protocol {protocol} is not available in this agent: {reason}")]
    Unavailable { protocol: &'static str, reason: String },
    #[error("connecting to {endpoint} ({address}) timed out after {timeout:?}")]
    Timeout {
        endpoint: String,
        address: String,
        timeout: Duration,
    },
}

impl ConnectError {
    /// Whether the failure says something about the endpoint (and counts for outlier detection).
    pub fn is_endpoint_failure(&self) -> bool {
        matches!(
            self,
            ConnectError::Connect { .. }
                | ConnectError::Timeout { .. }
                | ConnectError::Resolve { .. }
                | ConnectError::Handshake { .. }
                | ConnectError::Tls { .. }
        )
    }
}

/// Opens one stage of cluster `c` for a session, bounded by `timeout`. `exchange` is given for the destination of an
/// HTTP listener's session. `tried` lists the endpoints (indices) this session has tried already: they are avoided
/// while another endpoint is available, and the endpoint picked now is added. The result of the connect is reported
/// to the cluster's outlier detection.
pub async fn connect(
    c: &ClusterRt,
    metadata: &Value,
    timeout: Duration,
    exchange: Option<&Arc<http::Exchange>>,
    tried: &mut Vec<usize>,
) -> Result<Stage, ConnectError> {
    let spec = &c.cfg.spec;
    let transform = match spec {
        ClusterSpec::Echo => Some(Transform::Echo),
        ClusterSpec::Discard => Some(Transform::Discard),
        ClusterSpec::JsonEncap => Some(Transform::JsonEncap),
        ClusterSpec::JsonDecap => Some(Transform::JsonDecap),
        ClusterSpec::Logger { log_prefix, .. } => c.sink.clone().map(|sink| Transform::Logger {
            sink,
            prefix: log_prefix.as_deref().map(Arc::from),
        }),
        _ => None,
    };
    if let Some(t) = transform {
        return Ok(Stage::Transform(t));
    }
    match spec {
        ClusterSpec::Stdio => {
            return Ok(Stage::Stream {
                reader: Reader::Stdin(tokio::io::stdin()),
                writer: Writer::Stdout(tokio::io::stdout()),
                endpoint: None,
            });
        }
        ClusterSpec::StdioFork { command } => {
            let (reader, writer) = process::spawn(command).map_err(|e| ConnectError::Spawn {
                program: command.first().cloned().unwrap_or_default(),
                source: match e {
                    UpstreamError::Io(e) | UpstreamError::Resolve(e) => e,
                    UpstreamError::Handshake(m) => io::Error::other(m),
                },
            })?;
            return Ok(Stage::Stream {
                reader,
                writer,
                endpoint: None,
            });
        }
        ClusterSpec::Sync { query } => {
            let group = match query.get(metadata) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => {
                    return Err(ConnectError::EmptyLabel {
                        query: query.to_string(),
                    });
                }
                Some(other) => other.to_string(),
            };
            // Snapshot::build gives every Sync cluster its hub.
            let hub = c.sync.clone().ok_or_else(|| ConnectError::EmptyLabel {
                query: query.to_string(),
            })?;
            let (reader, writer) = hub.join(group);
            return Ok(Stage::Stream {
                reader,
                writer,
                endpoint: None,
            });
        }
        ClusterSpec::L7mpController | ClusterSpec::Prometheus | ClusterSpec::Metric => {
            return Err(ConnectError::Unavailable {
                protocol: spec.protocol(),
                reason: "a virtual cluster opened by the session (it needs the engine)".into(),
            });
        }
        _ => {}
    }
    let i = c.lb.pick(metadata, tried)?;
    tried.push(i);
    let ep = c
        .cfg
        .endpoints
        .get(i)
        .ok_or_else(|| lb::PickError::NoEndpoint(c.cfg.name.clone()))?;
    let result = connect_endpoint(c, ep, metadata, timeout, exchange).await;
    match &result {
        Ok(_) => c.lb.report(i, true),
        Err(e) if e.is_endpoint_failure() => c.lb.report(i, false),
        Err(_) => {}
    }
    result
}

/// Opens a stage to endpoint `ep` of network cluster `c`.
async fn connect_endpoint(
    c: &ClusterRt,
    ep: &l7mp_api::Endpoint,
    metadata: &Value,
    timeout: Duration,
    exchange: Option<&Arc<http::Exchange>>,
) -> Result<Stage, ConnectError> {
    let spec = &c.cfg.spec;
    // A JSONSocket cluster connects its transport, then runs the header handshake.
    let net = match spec {
        ClusterSpec::JsonSocket { transport, .. } => transport.as_ref(),
        other => other,
    };
    let address = match net {
        ClusterSpec::Udp { port, .. }
        | ClusterSpec::Tcp { port, .. }
        | ClusterSpec::WebSocket { port, .. }
        | ClusterSpec::Http { port, .. }
        | ClusterSpec::Sctp { port, .. }
        | ClusterSpec::Tls { port, .. }
        | ClusterSpec::Dtls { port, .. } => format_host_port(&ep.address, *port),
        _ => ep.address.clone(),
    };
    let attempt = async {
        match net {
            ClusterSpec::Udp { bind, .. } => udp::connect(&address, bind.as_ref()).await,
            ClusterSpec::Tcp { bind, .. } => tcp::connect(&address, bind.as_ref()).await,
            ClusterSpec::Tls { bind, tls: spec, .. } => match &c.tls {
                Some(ClusterTls::Tls(t)) => tls::connect(&address, &ep.address, bind.as_ref(), t, spec).await,
                _ => Err(no_context()),
            },
            ClusterSpec::Dtls { bind, tls: spec, .. } => match &c.tls {
                Some(ClusterTls::Dtls(t)) => dtls::connect(&address, &ep.address, bind.as_ref(), t, spec).await,
                _ => Err(no_context()),
            },
            ClusterSpec::UnixDgram => unix_dgram::connect(&address).await,
            ClusterSpec::WebSocket { tls: spec, .. } => {
                let tls = match (spec, &c.tls) {
                    (Some(spec), Some(ClusterTls::Tls(t))) => Some((t.as_ref(), spec.as_ref())),
                    (Some(_), _) => return Err(no_context()),
                    (None, _) => None,
                };
                websocket::connect(&address, metadata, tls).await
            }
            ClusterSpec::Http { .. } => match &c.http {
                Some(pool) => http::client::connect(pool, &address, metadata, exchange).await,
                None => Err(UpstreamError::Io(io::Error::other(
                    "HTTP cluster without a connection pool",
                ))),
            },
            ClusterSpec::Sctp { bind, .. } => sctp::connect(&address, bind.as_ref()).await,
            // Gives up a little before the overall timeout, to say why.
            ClusterSpec::Pipe => pipe::connect(&address, timeout * 9 / 10).await,
            ClusterSpec::AfPacket { ethertype } => af_packet::connect(&address, *ethertype),
            _ => unix::connect(&address).await,
        }
    };
    let (reader, writer) = match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(rw)) => rw,
        Ok(Err(UpstreamError::Resolve(source))) => {
            return Err(ConnectError::Resolve { address, source });
        }
        Ok(Err(UpstreamError::Handshake(message))) => {
            return Err(ConnectError::Tls {
                endpoint: ep.name.clone(),
                address,
                message,
            });
        }
        Ok(Err(UpstreamError::Io(source))) => {
            return Err(ConnectError::Connect {
                endpoint: ep.name.clone(),
                address,
                source,
            });
        }
        Err(_) => {
            return Err(ConnectError::Timeout {
                endpoint: ep.name.clone(),
                address,
                timeout,
            });
        }
    };
    let (reader, writer) = match spec {
        ClusterSpec::JsonSocket { header, .. } => {
            let (reader, writer) = jsonsocket::client_handshake(reader, writer, header, metadata, timeout)
                .await
                .map_err(|message| ConnectError::Handshake {
                    endpoint: ep.name.clone(),
                    address: address.clone(),
                    message,
                })?;
            (reader, writer)
        }
        _ => (reader, writer),
    };
    Ok(Stage::Stream {
        reader,
        writer,
        endpoint: Some(ep.name.clone()),
    })
}

/// `host:port`, bracketing IPv6 literals.
fn format_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A failure inside a protocol's connect.
pub enum UpstreamError {
    Resolve(io::Error),
    Io(io::Error),
    /// A TLS or DTLS handshake failed (the reason, e.g. the server's certificate is not trusted).
    Handshake(String),
}

fn no_context() -> UpstreamError {
    UpstreamError::Io(io::Error::other("TLS cluster without a TLS context"))
}

/// The TLS context of a listener, built (and its files checked) with the snapshot.
#[derive(Clone)]
pub enum ListenerTls {
    Tls(Arc<tls::ServerTls>),
    Dtls(Arc<dtls::DtlsServer>),
}

/// The TLS context of a cluster, built (and its files checked) with the snapshot.
pub enum ClusterTls {
    Tls(Arc<tls::ClientTls>),
    Dtls(Arc<dtls::DtlsClient>),
}

impl ListenerTls {
    /// The context a listener's `tls` block asks for, or why its files do not load.
    pub fn load(l: &Listener) -> Result<Option<ListenerTls>, tls::config::TlsError> {
        let owner = format!("listener {:?}", l.name);
        let dtls = match &l.spec {
            ListenerSpec::JsonSocket(t) => matches!(**t, ListenerSpec::Dtls(_)),
            other => matches!(other, ListenerSpec::Dtls(_)),
        };
        Ok(match l.spec.tls() {
            Some(spec) if dtls => Some(ListenerTls::Dtls(Arc::new(dtls::server(owner, spec)?))),
            Some(spec) => Some(ListenerTls::Tls(Arc::new(tls::server_tls(owner, spec)?))),
            None => None,
        })
    }
}

impl ClusterTls {
    /// The context a cluster's `tls` block asks for, or why its files do not load.
    pub fn load(c: &l7mp_api::Cluster) -> Result<Option<ClusterTls>, tls::config::TlsError> {
        let owner = format!("cluster {:?}", c.name);
        let dtls = match &c.spec {
            ClusterSpec::JsonSocket { transport, .. } => matches!(**transport, ClusterSpec::Dtls { .. }),
            other => matches!(other, ClusterSpec::Dtls { .. }),
        };
        Ok(match c.spec.tls() {
            Some(spec) if dtls => Some(ClusterTls::Dtls(Arc::new(dtls::client(owner, spec)?))),
            Some(spec) => Some(ClusterTls::Tls(Arc::new(tls::client_tls(owner, spec)?))),
            None => None,
        })
    }
}

/// Resolves `host:port` to its first address.
pub async fn resolve(address: &str) -> Result<std::net::SocketAddr, UpstreamError> {
    let mut addrs = tokio::net::lookup_host(address).await.map_err(UpstreamError::Resolve)?;
    addrs
        .next()
        .ok_or_else(|| UpstreamError::Resolve(io::Error::new(io::ErrorKind::NotFound, "no address found")))
}

/// A listener's bound sockets, ready to run.
pub enum Bound {
    Udp(udp::UdpBound),
    Tcp(tcp::TcpBound),
    Unix(unix::UnixBound),
    UnixDgram(unix_dgram::UnixDgramBound),
    WebSocket(websocket::WsBound),
    Http(http::server::HttpBound),
    Pipe(pipe::PipeBound),
    AfPacket(af_packet::AfPacketBound),
    Sctp(sctp::SctpBound),
    Tls(tls::TlsBound),
    Dtls(dtls::DtlsBound),
}

impl Bound {
    /// Binds the listener's sockets. Must run inside the runtime. `tls` is the listener's context from the snapshot
    /// (TLS, DTLS, `wss` and `https` listeners).
    pub fn bind(l: &Listener, tls: Option<ListenerTls>) -> io::Result<Bound> {
        Self::bind_spec(&l.spec, tls)
    }

    fn bind_spec(spec: &ListenerSpec, tls: Option<ListenerTls>) -> io::Result<Bound> {
        let missing = || io::Error::other("TLS listener without a TLS context");
        Ok(match spec {
            // The transport listener emits the sessions; the session runs the JSONSocket handshake first.
            ListenerSpec::JsonSocket(transport) => Self::bind_spec(transport, tls)?,
            ListenerSpec::Tls(s) => match tls {
                Some(ListenerTls::Tls(t)) => Bound::Tls(tls::TlsBound {
                    tcp: tcp::TcpBound::bind(s)?,
                    tls: t,
                }),
                _ => return Err(missing()),
            },
            ListenerSpec::Dtls(s) => match tls {
                Some(ListenerTls::Dtls(t)) => Bound::Dtls(dtls::DtlsBound::bind(s, t)?),
                _ => return Err(missing()),
            },
            ListenerSpec::Udp(s) => Bound::Udp(udp::UdpBound::bind(s)?),
            ListenerSpec::Tcp(s) => Bound::Tcp(tcp::TcpBound::bind(s)?),
            ListenerSpec::UnixDomainSocket(s) => Bound::Unix(unix::UnixBound::bind(s)?),
            ListenerSpec::UnixDgram(s) => Bound::UnixDgram(unix_dgram::UnixDgramBound::bind(s)?),
            ListenerSpec::WebSocket(s) | ListenerSpec::Http(s) => {
                let tls = match (&s.tls, tls) {
                    (None, _) => None,
                    (Some(_), Some(ListenerTls::Tls(t))) => Some(t),
                    (Some(_), _) => return Err(missing()),
                };
                let tcp = tcp::TcpBound::bind(s)?;
                match spec {
                    ListenerSpec::Http(_) => Bound::Http(http::server::HttpBound(tcp, tls)),
                    _ => Bound::WebSocket(websocket::WsBound(tcp, tls)),
                }
            }
            ListenerSpec::Pipe(s) => Bound::Pipe(pipe::PipeBound::bind(s)?),
            ListenerSpec::AfPacket(s) => Bound::AfPacket(af_packet::AfPacketBound::bind(s)?),
            ListenerSpec::Sctp(s) => Bound::Sctp(sctp::SctpBound::bind(s)?),
        })
    }

    /// Accepts peers and emits sessions until `cancel` fires.
    pub async fn run(self, engine: Arc<Engine>, listener: Arc<Listener>, cancel: CancellationToken) {
        match self {
            Bound::Udp(b) => b.run(engine, listener, cancel).await,
            Bound::Tcp(b) => b.run(engine, listener, cancel).await,
            Bound::Unix(b) => b.run(engine, listener, cancel).await,
            Bound::UnixDgram(b) => b.run(engine, listener, cancel).await,
            Bound::WebSocket(b) => b.run(engine, listener, cancel).await,
            Bound::Http(b) => b.run(engine, listener, cancel).await,
            Bound::Pipe(b) => b.run(engine, listener, cancel).await,
            Bound::AfPacket(b) => b.run(engine, listener, cancel).await,
            Bound::Sctp(b) => b.run(engine, listener, cancel).await,
            Bound::Tls(b) => b.run(engine, listener, cancel).await,
            Bound::Dtls(b) => b.run(engine, listener, cancel).await,
        }
    }
}

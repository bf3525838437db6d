//! The flat, validated configuration: every object has a name and refers to others by name.
//!
//! Inline objects of the original format (rules inside a listener, a route inside a rule, clusters inside a route,
//! endpoints without names) are lifted into these tables with the original's generated names by [`crate::load`].

use crate::pointer::Pointer;
use crate::predicate::Predicate;
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;

/// A whole configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub admin: Admin,
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    pub rulelists: Vec<RuleList>,
    pub rules: Vec<Rule>,
    pub routes: Vec<Route>,
}

/// Process-wide settings (`admin:`).
#[derive(Debug, Clone, Default)]
pub struct Admin {
    /// One of silly, verbose, info, notice, warn, error, silent.
    pub log_level: Option<String>,
    pub log_file: Option<String>,
    pub access_log_path: Option<String>,
    pub strict: bool,
}

/// Whether a stream keeps message boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Bytes without boundaries (TCP, UNIX stream, STDIO).
    ByteStream,
    /// One write is one message (UDP, WebSocket, ...).
    Datagram,
}

/// A listener: a protocol "plug" that accepts peers and emits sessions.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub spec: ListenerSpec,
    /// The name of the RuleList that routes this listener's sessions.
    pub rules: String,
    pub options: ListenerOptions,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerOptions {
    /// Keep ended sessions visible for this long (the original's `track`, seconds).
    pub track: Option<Duration>,
}

/// Protocol-specific listener settings.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenerSpec {
    Udp(UdpListenerSpec),
    Tcp(TcpListenerSpec),
    UnixDomainSocket(UnixListenerSpec),
    /// UNIX datagram socket (SOCK_DGRAM): a session per peer address.
    UnixDgram(UnixDgramListenerSpec),
    /// WebSocket server: a session per connection, one message per datagram.
    WebSocket(TcpListenerSpec),
    /// JSONSocket over a transport listener: each session starts with a JSON header handshake.
    JsonSocket(Box<ListenerSpec>),
    /// HTTP/1.1 and HTTP/2 (cleartext) server: a session per request; request body in, response body out.
    Http(TcpListenerSpec),
    /// A pair of named FIFOs: one session at a time, per writer of the request FIFO.
    Pipe(PipeListenerSpec),
    /// Raw Ethernet frames on an interface: a session per source MAC address.
    AfPacket(AfPacketListenerSpec),
    /// SCTP, one-to-one style: a session per association, message boundaries kept.
    Sctp(TcpListenerSpec),
}

impl ListenerSpec {
    pub fn protocol(&self) -> &'static str {
        match self {
            ListenerSpec::Udp(_) => "UDP",
            ListenerSpec::Tcp(_) => "TCP",
            ListenerSpec::UnixDomainSocket(_) => "UnixDomainSocket",
            ListenerSpec::UnixDgram(_) => "UnixDgram",
            ListenerSpec::WebSocket(_) => "WebSocket",
            ListenerSpec::JsonSocket(_) => "JSONSocket",
            ListenerSpec::Http(_) => "HTTP",
            ListenerSpec::Pipe(_) => "PIPE",
            ListenerSpec::AfPacket(_) => "AF_PACKET",
            ListenerSpec::Sctp(_) => "SCTP",
        }
    }
    pub fn stream_kind(&self) -> StreamKind {
        match self {
            ListenerSpec::Udp(_)
            | ListenerSpec::UnixDgram(_)
            | ListenerSpec::WebSocket(_)
            | ListenerSpec::AfPacket(_)
            | ListenerSpec::Sctp(_) => StreamKind::Datagram,
            ListenerSpec::Tcp(_)
            | ListenerSpec::UnixDomainSocket(_)
            | ListenerSpec::Pipe(_)
            | ListenerSpec::Http(_) => StreamKind::ByteStream,
            ListenerSpec::JsonSocket(transport) => transport.stream_kind(),
        }
    }
}

/// UDP session mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpMode {
    /// One session per remote address:port, each on its own connected socket.
    Server,
    /// Exactly one session, on a socket connected to `connect`.
    Singleton,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UdpListenerSpec {
    pub address: IpAddr,
    /// 0 binds an ephemeral port.
    pub port: u16,
    pub connect_address: Option<IpAddr>,
    pub connect_port: Option<u16>,
    pub mode: UdpMode,
    /// A session with no traffic in either direction for this long ends. `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// The default idle timeout of UDP sessions.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq)]
pub struct TcpListenerSpec {
    pub address: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UnixListenerSpec {
    pub filename: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UnixDgramListenerSpec {
    pub filename: String,
    /// A session with no traffic for this long ends. `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// The HTTP version an HTTP cluster speaks to its upstreams (cleartext).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.1: a pool of keep-alive connections per endpoint, one request at a time on each.
    Http1,
    /// HTTP/2 with prior knowledge (h2c): one multiplexed connection per endpoint.
    Http2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PipeListenerSpec {
    /// The request FIFO: peers write into it, the agent reads. The reply FIFO is [`pipe_reply_path`] of it.
    pub filename: String,
}

/// The reply FIFO paired with the request FIFO `path`: `<path>.reply`. The side that serves (a PIPE listener) reads
/// `path` and writes the reply FIFO; the side that asks (a PIPE cluster) does the opposite.
pub fn pipe_reply_path(path: &str) -> String {
    format!("{path}.reply")
}

#[derive(Debug, Clone, PartialEq)]
pub struct AfPacketListenerSpec {
    /// The network interface name.
    pub interface: String,
    /// Only frames of this EtherType; `None`: every frame (ETH_P_ALL).
    pub ethertype: Option<u16>,
    /// A source MAC's session with no traffic for this long ends. `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// The longest network interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_INTERFACE_NAME: usize = 15;

/// A cluster: the client side of a protocol (with endpoints) or a built-in transform.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub spec: ClusterSpec,
    pub endpoints: Vec<Endpoint>,
    pub loadbalancer: LoadBalancer,
    /// Stored and dumped, not interpreted.
    pub options: Option<Value>,
}

/// Local address a cluster's sockets bind to.
#[derive(Debug, Clone, PartialEq)]
pub struct Bind {
    pub address: Option<IpAddr>,
    pub port: u16,
}

/// Protocol-specific cluster settings.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterSpec {
    Udp {
        port: u16,
        bind: Option<Bind>,
    },
    Tcp {
        port: u16,
        bind: Option<Bind>,
    },
    UnixDomainSocket,
    /// UNIX datagram socket; the endpoint address is the server's socket path.
    UnixDgram,
    /// WebSocket client: a connection per session to `ws://<endpoint>:<port><path>`.
    WebSocket {
        port: u16,
    },
    /// HTTP client: a request per session to `http://<endpoint>:<port>`, over pooled keep-alive connections.
    Http {
        port: u16,
        version: HttpVersion,
    },
    /// JSONSocket client over a transport cluster: sends a JSON header and waits for a 2xx answer.
    JsonSocket {
        transport: Box<ClusterSpec>,
        header: Vec<HeaderItem>,
    },
    Echo,
    Discard,
    Logger {
        log_file: String,
        log_prefix: Option<String>,
    },
    Stdio,
    JsonEncap,
    JsonDecap,
    /// Runs a command per session; its stdin and stdout are the session's stream.
    StdioFork {
        /// argv; a single string is run with `/bin/sh -c`.
        command: Vec<String>,
    },
    /// Rendezvous: the sessions whose metadata has the same value at `query` hear each other's messages.
    Sync {
        query: Pointer,
    },
    /// Named FIFOs: the endpoint address is the request FIFO the agent writes, the replies come from
    /// `<address>.reply`.
    Pipe,
    /// Raw Ethernet frames: the endpoint address is an interface name; the stage sends the session's messages as
    /// whole frames and hears the incoming frames of `ethertype` (every EtherType if `None`).
    AfPacket {
        ethertype: Option<u16>,
    },
    /// SCTP, one-to-one style: an association per session to `<endpoint>:<port>`, message boundaries kept.
    Sctp {
        port: u16,
        bind: Option<Bind>,
    },
    /// The agent's REST API (`/api/v1`) as a cluster: an HTTP listener routed here serves the API, as in the
    /// original.
    L7mpController,
    /// The agent's metrics in the Prometheus text format: each request gets one scrape as its response.
    Prometheus,
    /// A pass-through that counts the session's bytes and messages into `session_byte_counter_total` and
    /// `session_packet_counter_total` (the original's names).
    Metric,
}

impl ClusterSpec {
    pub fn protocol(&self) -> &'static str {
        match self {
            ClusterSpec::Udp { .. } => "UDP",
            ClusterSpec::Tcp { .. } => "TCP",
            ClusterSpec::UnixDomainSocket => "UnixDomainSocket",
            ClusterSpec::UnixDgram => "UnixDgram",
            ClusterSpec::WebSocket { .. } => "WebSocket",
            ClusterSpec::JsonSocket { .. } => "JSONSocket",
            ClusterSpec::Http { .. } => "HTTP",
            ClusterSpec::Echo => "Echo",
            ClusterSpec::Discard => "Discard",
            ClusterSpec::Logger { .. } => "Logger",
            ClusterSpec::Stdio => "Stdio",
            ClusterSpec::JsonEncap => "JSONEncap",
            ClusterSpec::JsonDecap => "JSONDecap",
            ClusterSpec::StdioFork { .. } => "StdioFork",
            ClusterSpec::Sync { .. } => "Sync",
            ClusterSpec::Pipe => "PIPE",
            ClusterSpec::AfPacket { .. } => "AF_PACKET",
            ClusterSpec::Sctp { .. } => "SCTP",
            ClusterSpec::L7mpController => "L7mpController",
            ClusterSpec::Prometheus => "Prometheus",
            ClusterSpec::Metric => "Metric",
        }
    }

    /// Clusters with endpoints (network clients); the rest are virtual.
    pub fn takes_endpoints(&self) -> bool {
        matches!(
            self,
            ClusterSpec::Udp { .. }
                | ClusterSpec::Tcp { .. }
                | ClusterSpec::UnixDomainSocket
                | ClusterSpec::UnixDgram
                | ClusterSpec::WebSocket { .. }
                | ClusterSpec::JsonSocket { .. }
                | ClusterSpec::Http { .. }
                | ClusterSpec::Pipe
                | ClusterSpec::AfPacket { .. }
                | ClusterSpec::Sctp { .. }
        )
    }

    /// The stream kind of the cluster's upstream side; `None` for transforms, which keep whatever boundaries they
    /// are given.
    pub fn stream_kind(&self) -> Option<StreamKind> {
        match self {
            ClusterSpec::JsonSocket { transport, .. } => transport.stream_kind(),
            ClusterSpec::Udp { .. }
            | ClusterSpec::Sync { .. }
            | ClusterSpec::UnixDgram
            | ClusterSpec::WebSocket { .. }
            | ClusterSpec::AfPacket { .. }
            | ClusterSpec::Sctp { .. } => Some(StreamKind::Datagram),
            ClusterSpec::Tcp { .. }
            | ClusterSpec::UnixDomainSocket
            | ClusterSpec::Pipe
            | ClusterSpec::Stdio
            | ClusterSpec::StdioFork { .. }
            | ClusterSpec::L7mpController
            | ClusterSpec::Prometheus => Some(StreamKind::ByteStream),
            _ => None,
        }
    }
}

/// One item of a JSONSocket cluster's `header`.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderItem {
    /// `{path: <ptr>}`: the metadata value at the pointer, at the same place in the header.
    Copy(Pointer),
    /// `{path: {from, to}}`: the metadata value at `from`, at `to` in the header.
    Move { from: Pointer, to: Pointer },
    /// `{set: {key, value}}`: a constant.
    Set { key: Pointer, value: Value },
}

/// One upstream address of a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub name: String,
    /// IP address or DNS name; for UnixDomainSocket and UnixDgram the socket file path, for PIPE the request FIFO's
    /// path, for AF_PACKET an interface name.
    pub address: String,
    pub weight: u32,
}

/// How a cluster picks an endpoint, and when it stops picking one that fails (see docs/load-balancing.md).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadBalancer {
    pub policy: Policy,
    pub outlier_detection: OutlierDetection,
}

/// A load-balancing policy. Every policy skips endpoints of weight 0 and endpoints ejected by outlier detection
/// (unless every endpoint is ejected).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Policy {
    /// The first endpoint (the original's default).
    #[default]
    Trivial,
    /// Consistent hashing (`HashRing` or `ConsistentHash`): the metadata value at `key` picks the endpoint by
    /// weighted rendezvous hashing. Without a key (the original's `<RANDOM>`) every session is placed at random, by
    /// weight.
    HashRing {
        key: Option<Pointer>,
        on_missing_key: OnMissingKey,
    },
    /// A random endpoint, each with a chance proportional to its weight.
    WeightedRandom,
    /// Smooth weighted round robin: in every run of `sum of weights` sessions, each endpoint gets its weight's
    /// worth, interleaved.
    RoundRobin,
}

impl Policy {
    /// The policy's configuration name.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Trivial => "Trivial",
            Policy::HashRing { .. } => "ConsistentHash",
            Policy::WeightedRandom => "WeightedRandom",
            Policy::RoundRobin => "RoundRobin",
        }
    }
}

/// What a hashing policy does with a session whose metadata has no value at the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMissingKey {
    /// The first available endpoint, in the order written (deterministic).
    #[default]
    First,
    /// A random endpoint by weight (what the original always did).
    Random,
    /// The connect fails and the session is refused.
    Fail,
}

/// Passive outlier detection: an endpoint whose connects fail `consecutive_failures` times in a row is skipped for
/// `ejection_time`, doubled on each ejection that follows without a successful connect in between, up to
/// `max_ejection_time`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// 0 turns outlier detection off.
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    pub max_ejection_time: Duration,
}

impl OutlierDetection {
    pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 3;
    pub const DEFAULT_EJECTION_TIME: Duration = Duration::from_secs(10);
    pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

    /// Outlier detection turned off.
    pub fn disabled() -> Self {
        Self {
            consecutive_failures: 0,
            ..Self::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.consecutive_failures > 0
    }
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: Self::DEFAULT_CONSECUTIVE_FAILURES,
            ejection_time: Self::DEFAULT_EJECTION_TIME,
            max_ejection_time: Self::DEFAULT_MAX_EJECTION_TIME,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuleList {
    pub name: String,
    /// Rule names, evaluated in order; the first match wins.
    pub rules: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// `None` matches every session (the original's `'*'` or missing `match`).
    pub matcher: Option<Predicate>,
    /// The predicate as written, for dumps.
    pub match_source: Option<Value>,
    pub action: Action,
}

#[derive(Debug, Clone, Default)]
pub struct Action {
    pub rewrite: Vec<Rewrite>,
    pub route: Option<String>,
    /// Continue the lookup in this RuleList (the rule's rewrite and route are then ignored, as in the original).
    pub apply: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Rewrite {
    pub path: Pointer,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub destination: Destination,
    pub ingress: Vec<String>,
    pub egress: Vec<String>,
    pub retry: Retry,
}

/// Where a route sends its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Always this cluster.
    Cluster(String),
    /// A weighted split between clusters (a canary): each session goes to one of them, in proportion to the weights
    /// (smooth weighted round robin, so the shares are exact over every `sum of weights` sessions).
    Split(Vec<WeightedCluster>),
}

/// One branch of a [`Destination::Split`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

impl Destination {
    /// Every cluster a session of this route may be sent to (weight 0 included).
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        let (one, split) = match self {
            Destination::Cluster(c) => (Some(c.as_str()), &[][..]),
            Destination::Split(s) => (None, s.as_slice()),
        };
        one.into_iter().chain(split.iter().map(|w| w.cluster.as_str()))
    }
}

/// When a session's stages are (re)connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetryOn {
    #[default]
    Never,
    ConnectFailure,
    Disconnect,
    Always,
}

/// Retry policy; unlike the original, each field has its own default.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub retry_on: RetryOn,
    pub num_retries: u32,
    /// The original's single knob: the default of both `connect_timeout` and the back-off pause.
    pub timeout: Duration,
    /// How long one connect attempt may take.
    pub connect_timeout: Duration,
    /// The pauses between attempts.
    pub backoff: Backoff,
}

impl Default for Retry {
    fn default() -> Self {
        let t = Duration::from_millis(2000);
        Self {
            retry_on: RetryOn::Never,
            num_retries: 1,
            timeout: t,
            connect_timeout: t,
            backoff: Backoff::fixed(t),
        }
    }
}

impl Retry {
    /// Whether a stage that fails or closes mid-session is reconnected (`disconnect`, `always`).
    pub fn reconnects(&self) -> bool {
        matches!(self.retry_on, RetryOn::Disconnect | RetryOn::Always)
    }
}

/// Exponential back-off: the `n`-th pause (from 0) is `initial * multiplier^n`, at most `max`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
}

/// The cap on a back-off pause when a `backoff` sets none.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(30_000);

impl Backoff {
    /// The same pause every time (the original's behaviour, with `timeout`).
    pub fn fixed(pause: Duration) -> Backoff {
        Backoff {
            initial: pause,
            max: pause,
            multiplier: 1.0,
        }
    }

    /// The pause before attempt `n + 2` (`n` = 0 is the first pause).
    pub fn pause(&self, n: u32) -> Duration {
        let factor = self.multiplier.powi(n.min(1000) as i32);
        let ms = self.initial.as_secs_f64() * factor;
        if !ms.is_finite() || ms >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(ms)
        }
    }
}

impl Config {
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|x| x.name == name)
    }
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|x| x.name == name)
    }
    pub fn rulelist(&self, name: &str) -> Option<&RuleList> {
        self.rulelists.iter().find(|x| x.name == name)
    }
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|x| x.name == name)
    }
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|x| x.name == name)
    }
}

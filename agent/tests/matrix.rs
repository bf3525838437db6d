//! The cross-protocol matrix: every listener protocol routed to every cluster protocol and back, through one real
//! agent, with real clients and independent upstream echo servers written here.
//!
//! A cell `L → C` is one listener of protocol L whose only rule routes (by a route named after the cell) to the
//! shared cluster of protocol C; that cluster's endpoint is an echo server of this file. [`SESSIONS`] clients per
//! cell, one after the other, talk to the listener and must get back exactly what they sent:
//! - message by message (each message whole, once, in order) when L and C both keep message boundaries
//!   ([`Kind::Datagram`]; Echo keeps whatever boundaries the listener gives it);
//! - as the same concatenated bytes otherwise.
//!
//! A route that carries a datagram stream into a byte stream, in either direction, must log the boundary warning
//! exactly once however many sessions use it; every other route never. All cells run at the same time.
//!
//! Rows not here: AF_PACKET needs its own network namespaces (`af_packet_to_every_cluster_and_back` in
//! tests/af_packet.rs is its row), and SCTP needs a kernel with SCTP (tests/sctp.rs runs it where there is one).
//!
//! To add a row (a listener protocol): add a [`Transport`] variant (its `name`, `kind`, listener `spec` and client
//! `connect`) and list it in [`ROWS`], plain and/or as a JSONSocket transport. A client that is neither a datagram
//! socket, a byte stream nor a WebSocket adds a [`Tx`]/[`Rx`] arm. To add a column (a cluster protocol): add an
//! [`Up`] variant with its `name`, `kind`, an echo server in `start` and the cluster YAML in `cluster`, and list it
//! in [`COLUMNS`]. Nothing else changes: the config, the checks and the failure messages follow the tables.

#![allow(clippy::unwrap_used)]

mod common;
use common::{Agent, pattern, quiet_port};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Bytes;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixDatagram, UnixListener, UnixStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Clients per cell: the warning must still come once per route, not once per session.
const SESSIONS: usize = 2;
/// How long a client waits for each reply.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole matrix (every cell) must be done within this.
const MATRIX_TIMEOUT: Duration = Duration::from_secs(25);
/// How often the agent is started when a listener port was taken by another process meanwhile.
const START_ATTEMPTS: usize = 3;
/// What the agent logs for a route that feeds a datagram stream into a byte stream.
const WARNING: &str = "message boundaries are lost on this hop";

/// Whether a stream keeps message boundaries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Datagram,
    Bytes,
}

/// What a client connects to: a port on 127.0.0.1 or a socket file.
#[derive(Clone, Debug)]
enum Addr {
    Port(u16),
    Path(PathBuf),
}

impl Addr {
    fn port(&self) -> u16 {
        match self {
            Addr::Port(p) => *p,
            Addr::Path(p) => panic!("{} is a path, not a port", p.display()),
        }
    }
    fn path(&self) -> &Path {
        match self {
            Addr::Path(p) => p,
            Addr::Port(p) => panic!("{p} is a port, not a path"),
        }
    }
}

/// A protocol a client speaks to a listener: a listener protocol of its own, or a JSONSocket transport.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
    Unix,
    UnixDgram,
    WebSocket,
    /// A POST per session: the messages are the request body, the response body comes back.
    Http,
    /// A FIFO pair: the messages go into `<path>`, the replies come out of `<path>.reply`.
    Pipe,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Unix => "UnixDomainSocket",
            Transport::UnixDgram => "UnixDgram",
            Transport::WebSocket => "WebSocket",
            Transport::Http => "HTTP",
            Transport::Pipe => "PIPE",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Transport::Udp | Transport::UnixDgram | Transport::WebSocket => Kind::Datagram,
            Transport::Tcp | Transport::Unix | Transport::Http | Transport::Pipe => Kind::Bytes,
        }
    }

    /// A fresh address for a listener of this protocol.
    fn addr(self, dir: &Path, slug: &str) -> Addr {
        match self {
            Transport::Unix | Transport::UnixDgram => Addr::Path(dir.join(format!("{slug}.sock"))),
            Transport::Pipe => Addr::Path(dir.join(format!("{slug}.fifo"))),
            _ => Addr::Port(quiet_port()),
        }
    }

    /// The listener spec (YAML flow style).
    fn spec(self, a: &Addr) -> String {
        match self {
            Transport::Udp | Transport::Tcp | Transport::WebSocket | Transport::Http => {
                format!("{{protocol: {}, port: {}, address: 127.0.0.1}}", self.name(), a.port())
            }
            Transport::Unix | Transport::UnixDgram | Transport::Pipe => {
                format!("{{protocol: {}, filename: {:?}}}", self.name(), a.path())
            }
        }
    }

    /// A client connected to a listener at `a`; `me` is a path the client may bind (UnixDgram needs one).
    async fn connect(self, a: &Addr, me: &Path) -> io::Result<(Tx, Rx)> {
        Ok(match self {
            Transport::Udp => {
                let s = UdpSocket::bind("127.0.0.1:0").await?;
                big_buffers(&s);
                s.connect(("127.0.0.1", a.port())).await?;
                let s = Arc::new(s);
                (Tx::Udp(s.clone()), Rx::Udp(s))
            }
            Transport::UnixDgram => {
                let s = UnixDatagram::bind(me)?;
                big_buffers(&s);
                s.connect(a.path())?;
                let s = Arc::new(s);
                (Tx::UnixDgram(s.clone()), Rx::UnixDgram(s))
            }
            Transport::Tcp => {
                let s = TcpStream::connect(("127.0.0.1", a.port())).await?;
                s.set_nodelay(true)?;
                bytes_halves(Box::new(s))
            }
            Transport::Unix => bytes_halves(Box::new(UnixStream::connect(a.path()).await?)),
            Transport::WebSocket => {
                let url = format!("ws://127.0.0.1:{}/matrix", a.port());
                let (ws, _) = tokio_tungstenite::connect_async(url).await.map_err(io::Error::other)?;
                let (tx, rx) = ws.split();
                (Tx::Ws(tx), Rx::Ws(rx))
            }
            Transport::Http => http_post(a.port()).await?,
            Transport::Pipe => {
                use tokio::net::unix::pipe;
                // The reply FIFO first (a reader may open a FIFO at any time), then the request FIFO (the agent
                // holds its read end, so opening it to write does not block).
                let reply = pipe::OpenOptions::new().open_receiver(format!("{}.reply", a.path().display()))?;
                let request = pipe::OpenOptions::new().open_sender(a.path())?;
                (Tx::Pipe(request), Rx::Pipe(reply))
            }
        })
    }

    /// The client's end of its request must come before the answer (an HTTP request to a datagram destination is
    /// answered once its body is complete).
    fn ends_after_sending(self) -> bool {
        matches!(self, Transport::Http)
    }
}

/// A row: the listener protocol.
#[derive(Clone, Copy, Debug)]
enum Row {
    Plain(Transport),
    JsonSocket(Transport),
}

const ROWS: &[Row] = &[
    Row::Plain(Transport::Udp),
    Row::Plain(Transport::Tcp),
    Row::Plain(Transport::Unix),
    Row::Plain(Transport::UnixDgram),
    Row::Plain(Transport::WebSocket),
    Row::JsonSocket(Transport::Udp),
    Row::JsonSocket(Transport::Tcp),
    Row::JsonSocket(Transport::Unix),
    Row::JsonSocket(Transport::UnixDgram),
    Row::JsonSocket(Transport::WebSocket),
    Row::Plain(Transport::Http),
    Row::Plain(Transport::Pipe),
];

impl Row {
    fn transport(self) -> Transport {
        match self {
            Row::Plain(t) | Row::JsonSocket(t) => t,
        }
    }
    fn name(self) -> String {
        match self {
            Row::Plain(t) => t.name().to_owned(),
            Row::JsonSocket(t) => format!("JSONSocket/{}", t.name()),
        }
    }
    fn kind(self) -> Kind {
        self.transport().kind()
    }
    fn spec(self, a: &Addr) -> String {
        match self {
            Row::Plain(t) => t.spec(a),
            Row::JsonSocket(t) => format!("{{protocol: JSONSocket, transport: {}}}", t.spec(a)),
        }
    }
    /// A client that has done whatever the protocol needs before data may flow.
    async fn connect(self, a: &Addr, me: &Path, cell: &str) -> Result<(Tx, Rx), String> {
        let (mut tx, mut rx) = self
            .transport()
            .connect(a, me)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        if let Row::JsonSocket(_) = self {
            let header = json!({"JSONSocketVersion": 1, "cell": cell});
            tx.send(header.to_string().as_bytes())
                .await
                .map_err(|e| format!("cannot send the JSONSocket header: {e}"))?;
            let answer = recv_json(&mut rx)
                .await
                .map_err(|e| format!("JSONSocket answer: {e}"))?;
            if answer["JSONSocketStatus"] != 200 {
                return Err(format!("JSONSocket handshake refused: {answer}"));
            }
        }
        Ok((tx, rx))
    }
}

/// A column: the cluster protocol, with the echo server behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Up {
    Echo,
    Udp,
    Tcp,
    Unix,
    UnixDgram,
    WebSocket,
    JsonSocketUdp,
    /// An HTTP server that streams each request's body back as its response body.
    Http,
}

const COLUMNS: &[Up] = &[
    Up::Echo,
    Up::Udp,
    Up::Tcp,
    Up::Unix,
    Up::UnixDgram,
    Up::WebSocket,
    Up::JsonSocketUdp,
    Up::Http,
];

impl Up {
    fn name(self) -> &'static str {
        match self {
            Up::Echo => "Echo",
            Up::Udp => "UDP",
            Up::Tcp => "TCP",
            Up::Unix => "UnixDomainSocket",
            Up::UnixDgram => "UnixDgram",
            Up::WebSocket => "WebSocket",
            Up::JsonSocketUdp => "JSONSocket/UDP",
            Up::Http => "HTTP",
        }
    }

    /// The upstream stream kind; `None` for a transform, which keeps what it is given.
    fn kind(self) -> Option<Kind> {
        match self {
            Up::Echo => None,
            Up::Udp | Up::UnixDgram | Up::WebSocket | Up::JsonSocketUdp => Some(Kind::Datagram),
            Up::Tcp | Up::Unix | Up::Http => Some(Kind::Bytes),
        }
    }

    fn cluster_name(self) -> String {
        format!("c-{}", slug(self.name()))
    }

    /// Starts this column's upstream echo server; returns its address (`None`: no server).
    async fn start(self, dir: &Path) -> Option<Addr> {
        Some(match self {
            Up::Echo => return None,
            Up::Udp => Addr::Port(udp_echo().await),
            Up::Tcp => {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = l.local_addr().unwrap().port();
                tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        tokio::spawn(echo_bytes(s));
                    }
                });
                Addr::Port(port)
            }
            Up::Unix => {
                let path = dir.join("upstream-stream.sock");
                let l = UnixListener::bind(&path).unwrap();
                tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        tokio::spawn(echo_bytes(s));
                    }
                });
                Addr::Path(path)
            }
            Up::UnixDgram => {
                let path = dir.join("upstream-dgram.sock");
                unix_dgram_echo(&path);
                Addr::Path(path)
            }
            Up::WebSocket => Addr::Port(ws_echo().await),
            Up::JsonSocketUdp => Addr::Port(jsonsocket_udp_echo().await),
            Up::Http => Addr::Port(http_echo().await),
        })
    }

    /// The cluster's YAML (a list item).
    fn cluster(self, a: Option<&Addr>) -> String {
        let name = self.cluster_name();
        let spec = match (self, a) {
            (Up::Echo, _) => return format!("  - {{name: {name}, spec: {{protocol: Echo}}}}\n"),
            (Up::Udp | Up::Tcp | Up::WebSocket | Up::Http, Some(a)) => {
                format!("{{protocol: {}, port: {}}}", self.name(), a.port())
            }
            (Up::Unix | Up::UnixDgram, Some(_)) => format!("{{protocol: {}}}", self.name()),
            (Up::JsonSocketUdp, Some(a)) => format!(
                "{{protocol: JSONSocket, transport: {{protocol: UDP, port: {}}}, header: [{{set: {{key: /upstream, value: matrix}}}}]}}",
                a.port()
            ),
            (_, None) => unreachable!("{} has an upstream", self.name()),
        };
        let address = match a {
            Some(Addr::Path(p)) => format!("{p:?}"),
            _ => "127.0.0.1".to_owned(),
        };
        format!("  - {{name: {name}, spec: {spec}, endpoints: [{{spec: {{address: {address}}}}}]}}\n")
    }
}

/// A cell of the matrix.
struct Cell {
    row: Row,
    col: Up,
    /// `UnixDgram → WebSocket`, for failure messages.
    name: String,
    /// A file-name and YAML-name friendly form of `name`.
    slug: String,
    addr: Addr,
}

impl Cell {
    fn route(&self) -> String {
        format!("route-{}", self.slug)
    }
    /// Every message must come back whole and alone.
    fn keeps_boundaries(&self) -> bool {
        self.row.kind() == Kind::Datagram && self.col.kind().unwrap_or(self.row.kind()) == Kind::Datagram
    }
    /// The route joins a datagram stream and a byte stream: one direction loses boundaries.
    fn warns(&self) -> bool {
        self.col.kind().is_some_and(|k| k != self.row.kind())
    }
    fn listener_yaml(&self) -> String {
        format!(
            "  - name: l-{slug}\n    spec: {spec}\n    rules: [{{action: {{route: {{name: {route}, destination: {cluster}}}}}}}]\n",
            slug = self.slug,
            spec = self.row.spec(&self.addr),
            route = self.route(),
            cluster = self.col.cluster_name(),
        )
    }

    /// The messages a client sends in session `n`: datagram-sized ones for datagram listeners (a run of equal sizes
    /// the agent may batch, and the largest UDP payload), bulk data for byte-stream ones. Distinct per cell and
    /// session, so a reply from the wrong session cannot pass.
    fn messages(&self, index: usize, n: usize) -> Vec<Vec<u8>> {
        let sizes: &[usize] = match self.row.kind() {
            Kind::Datagram => &[1, 100, 1400, 1400, 1400, 700, 9000, 65507, 3],
            // An HTTP request to a datagram destination is one message: it must fit a UDP datagram.
            Kind::Bytes if self.row.transport().ends_after_sending() => &[5, 1400, 60_000, 7],
            Kind::Bytes => &[5, 1400, 100_000, 7],
        };
        let seed = (index * SESSIONS + n) as u64 * 100;
        sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| pattern(len, seed + i as u64))
            .collect()
    }

    /// Which message that was sent in this cell `got` is, for a failure message.
    fn identify(&self, index: usize, got: &[u8]) -> String {
        for n in 0..SESSIONS {
            if let Some(i) = self.messages(index, n).iter().position(|m| m == got) {
                return format!("message {i} of session {n}");
            }
        }
        "none sent in this cell".to_owned()
    }

    /// One client session: connect, send every message while reading the replies, check them.
    async fn session(&self, index: usize, n: usize, dir: &Path) -> Result<(), String> {
        let me = dir.join(format!("client-{}-{n}.sock", self.slug));
        let (mut tx, mut rx) = self.row.connect(&self.addr, &me, &self.name).await?;
        let msgs = self.messages(index, n);
        let ends_after_sending = self.row.transport().ends_after_sending();
        let send = async {
            for (i, m) in msgs.iter().enumerate() {
                tx.send(m).await.map_err(|e| format!("cannot send message {i}: {e}"))?;
            }
            if ends_after_sending {
                tx.end_request();
            }
            Ok::<_, String>(())
        };
        let check = async {
            if self.keeps_boundaries() {
                for (i, want) in msgs.iter().enumerate() {
                    let got = rx
                        .recv()
                        .await
                        .map_err(|e| format!("message {i} of {}: {e}", msgs.len()))?;
                    if &got != want {
                        return Err(format!(
                            "message {i} of {}: got {} bytes ({}), want {} bytes",
                            msgs.len(),
                            got.len(),
                            self.identify(index, &got),
                            want.len()
                        ));
                    }
                }
            } else {
                let want = msgs.concat();
                let mut got = Vec::with_capacity(want.len());
                while got.len() < want.len() {
                    let chunk = rx
                        .recv()
                        .await
                        .map_err(|e| format!("after {} of {} bytes: {e}", got.len(), want.len()))?;
                    got.extend_from_slice(&chunk);
                }
                if got != want {
                    let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(want.len());
                    return Err(format!(
                        "got {} bytes, want {}; first difference at byte {at}",
                        got.len(),
                        want.len()
                    ));
                }
            }
            Ok(())
        };
        tokio::try_join!(send, check)?;
        tx.close().await;
        // A FIFO pair serves one session at a time: see this session's reply FIFO closed before the next session
        // opens it (else the next client would join this session's writer and read its end).
        if let Rx::Pipe(_) = rx {
            let deadline = Instant::now() + RECV_TIMEOUT;
            while rx.recv().await.is_ok() {
                if Instant::now() > deadline {
                    return Err("the reply FIFO did not end after the session".to_owned());
                }
            }
        }
        Ok(())
    }
}

/// Every cell, row by row, each listener on a fresh address.
fn cells(dir: &Path) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &row in ROWS {
        for &col in COLUMNS {
            let slug = format!("{}-to-{}", slug(&row.name()), slug(col.name()));
            cells.push(Cell {
                row,
                col,
                name: format!("{} → {}", row.name(), col.name()),
                addr: row.transport().addr(dir, &format!("l-{slug}")),
                slug,
            });
        }
    }
    cells
}

fn slug(name: &str) -> String {
    name.to_ascii_lowercase()
        .replace("unixdomainsocket", "unix")
        .replace("jsonsocket/", "js-")
        .replace('/', "-")
}

#[test]
fn every_listener_to_every_cluster_and_back() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The upstream servers, one per column, and the agent with a listener and a route per cell.
    let mut clusters = String::from("clusters:\n");
    for &col in COLUMNS {
        let addr = rt.block_on(col.start(dir.path()));
        clusters.push_str(&col.cluster(addr.as_ref()));
    }
    // Listener ports are free when picked (and outside the range outgoing connections get theirs from), but another
    // process may still take one before the agent binds it: then the agent exits at start, and the matrix starts
    // again on fresh ports.
    let mut attempt = 0;
    let (cells, mut agent) = loop {
        attempt += 1;
        let cells = cells(dir.path());
        let mut config = String::from("listeners:\n");
        for c in &cells {
            config.push_str(&c.listener_yaml());
        }
        config.push_str(&clusters);
        match Agent::try_start(&config) {
            Ok(agent) => break (cells, agent),
            Err(log) if attempt < START_ATTEMPTS && log.contains("Address already in use") => {
                eprintln!("attempt {attempt}: a listener port was taken meanwhile; starting again on fresh ports");
            }
            Err(log) => panic!("{log}"),
        }
    };

    // Every cell at once, the sessions of a cell one after the other (two new UDP peers of one listener starting at
    // the same instant may see their first datagrams reordered, as UDP allows: tests/udp.rs covers that race).
    let cells = Arc::new(cells);
    let dir_path: Arc<Path> = Arc::from(dir.path());
    let outcome = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for index in 0..cells.len() {
            let (cells, dir) = (cells.clone(), dir_path.clone());
            set.spawn(async move {
                let c = &cells[index];
                let mut failures = Vec::new();
                for n in 0..SESSIONS {
                    if let Err(e) = c.session(index, n, &dir).await {
                        failures.push(format!("{} (session {n}): {e}", c.name));
                    }
                }
                failures
            });
        }
        tokio::time::timeout(MATRIX_TIMEOUT, async {
            let mut failures = Vec::new();
            while let Some(r) = set.join_next().await {
                failures.extend(r.unwrap());
            }
            failures
        })
        .await
    });
    let mut failures = match outcome {
        Ok(f) => f,
        Err(_) => vec![format!("the matrix did not finish within {MATRIX_TIMEOUT:?}")],
    };
    failures.sort();

    // The boundary warning: once per route that joins a datagram and a byte stream, never for the others. Every
    // warning is logged when a session is connected, before its data flows, so before the shutdown line.
    assert_eq!(agent.terminate().code(), Some(0), "the agent exits cleanly");
    agent.wait_log("shutting down");
    let mut warned: HashMap<String, usize> = HashMap::new();
    for line in agent.log_lines().iter().filter(|l| l.contains(WARNING)) {
        let line = strip_ansi(line);
        let route = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("route="))
            .unwrap_or("<none>");
        *warned.entry(route.to_owned()).or_default() += 1;
    }
    for c in cells.iter() {
        let n = warned.remove(&c.route()).unwrap_or(0);
        let want = usize::from(c.warns());
        if n != want {
            failures.push(format!(
                "{}: the boundary warning was logged {n} times, want {want}",
                c.name
            ));
        }
    }
    for (route, n) in warned {
        failures.push(format!(
            "boundary warning for an unexpected route {route:?} ({n} times)"
        ));
    }
    let session_failures = agent.count_log("session failed");
    if session_failures > 0 {
        failures.push(format!("{session_failures} sessions failed in the agent (see its log)"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} cells failed:\n  {}",
        failures.len(),
        cells.len(),
        failures.join("\n  ")
    );
    eprintln!(
        "{} cells ({} listener protocols × {} clusters, {SESSIONS} sessions each) in {:?}",
        cells.len(),
        ROWS.len(),
        COLUMNS.len(),
        started.elapsed()
    );
}

/// Removes terminal colour sequences (`ESC [ ... m`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---- clients ----

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

/// The sending half of a client.
enum Tx {
    Udp(Arc<UdpSocket>),
    UnixDgram(Arc<UnixDatagram>),
    Bytes(WriteHalf<Box<dyn ByteStream>>),
    Ws(SplitSink<Ws, Message>),
    /// The request body of an HTTP POST; `None` once ended.
    Http(Option<tokio::sync::mpsc::Sender<Bytes>>),
    Pipe(tokio::net::unix::pipe::Sender),
}

/// The receiving half of a client.
enum Rx {
    Udp(Arc<UdpSocket>),
    UnixDgram(Arc<UnixDatagram>),
    Bytes(ReadHalf<Box<dyn ByteStream>>),
    Ws(SplitStream<Ws>),
    /// The response of an HTTP POST: its head (status checked) until it arrived, then its body.
    Http(HttpResponse),
    Pipe(tokio::net::unix::pipe::Receiver),
}

/// An HTTP response as it arrives.
enum HttpResponse {
    Pending(tokio::task::JoinHandle<hyper::Result<hyper::Response<hyper::body::Incoming>>>),
    Body(hyper::body::Incoming),
}

/// A POST to `127.0.0.1:<port>` whose body is streamed from the returned [`Tx::Http`] (HTTP/1.1, chunked).
async fn http_post(port: u16) -> io::Result<(Tx, Rx)> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let body = http_body_util::StreamBody::new(
        tokio_stream_of(rx).map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b))),
    );
    let req = hyper::Request::post("/matrix")
        .header("host", "matrix.test")
        .body(body)
        .map_err(io::Error::other)?;
    let pending = tokio::spawn(sender.send_request(req));
    Ok((Tx::Http(Some(tx)), Rx::Http(HttpResponse::Pending(pending))))
}

/// A `Stream` of what an mpsc receiver yields.
fn tokio_stream_of(rx: tokio::sync::mpsc::Receiver<Bytes>) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
}

fn bytes_halves(s: Box<dyn ByteStream>) -> (Tx, Rx) {
    let (r, w) = tokio::io::split(s);
    (Tx::Bytes(w), Rx::Bytes(r))
}

impl Tx {
    /// One message (a datagram, a WebSocket binary message, or a write on a byte stream).
    async fn send(&mut self, m: &[u8]) -> io::Result<()> {
        match self {
            Tx::Udp(s) => s.send(m).await.map(drop),
            Tx::UnixDgram(s) => s.send(m).await.map(drop),
            Tx::Bytes(w) => w.write_all(m).await,
            Tx::Ws(w) => w.send(Message::binary(m.to_vec())).await.map_err(io::Error::other),
            Tx::Http(tx) => match tx {
                Some(tx) => tx
                    .send(Bytes::copy_from_slice(m))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the request body was dropped")),
                None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "the request body has ended")),
            },
            Tx::Pipe(w) => w.write_all(m).await,
        }
    }

    async fn close(self) {
        match self {
            Tx::Bytes(mut w) => {
                let _ = w.shutdown().await;
            }
            Tx::Ws(mut w) => {
                let _ = w.close().await;
            }
            Tx::Pipe(mut w) => {
                let _ = w.shutdown().await;
            }
            Tx::Udp(_) | Tx::UnixDgram(_) | Tx::Http(_) => {}
        }
    }

    /// Ends an HTTP request body (a no-op for the other clients).
    fn end_request(&mut self) {
        if let Tx::Http(tx) = self {
            tx.take();
        }
    }
}

impl Rx {
    /// One message, or what one read of a byte stream returns, within [`RECV_TIMEOUT`].
    async fn recv(&mut self) -> Result<Vec<u8>, String> {
        let read = async {
            // Larger than any datagram, so a merged or oversized one shows.
            let mut buf = vec![0u8; 1 << 17];
            let n = match self {
                Rx::Udp(s) => s.recv(&mut buf).await?,
                Rx::UnixDgram(s) => s.recv(&mut buf).await?,
                Rx::Bytes(r) => match r.read(&mut buf).await? {
                    0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended")),
                    n => n,
                },
                Rx::Pipe(r) => match r.read(&mut buf).await? {
                    0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the reply FIFO ended")),
                    n => n,
                },
                Rx::Http(resp) => {
                    if let HttpResponse::Pending(h) = resp {
                        let r = h.await.map_err(io::Error::other)?.map_err(io::Error::other)?;
                        if r.status() != 200 {
                            let status = r.status();
                            let body = http_body_util::BodyExt::collect(r.into_body())
                                .await
                                .map(|b| b.to_bytes());
                            return Err(io::Error::other(format!("HTTP {status}: {body:?}")));
                        }
                        *resp = HttpResponse::Body(r.into_body());
                    }
                    let HttpResponse::Body(body) = resp else { unreachable!() };
                    loop {
                        match http_body_util::BodyExt::frame(body).await {
                            None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the response ended")),
                            Some(Err(e)) => return Err(io::Error::other(e)),
                            Some(Ok(f)) => {
                                if let Ok(d) = f.into_data()
                                    && !d.is_empty()
                                {
                                    return Ok(d.to_vec());
                                }
                            }
                        }
                    }
                }
                Rx::Ws(r) => loop {
                    match r.next().await {
                        Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
                        Some(Ok(Message::Text(t))) => return Ok(t.as_bytes().to_vec()),
                        Some(Ok(Message::Close(_))) | None => {
                            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the WebSocket closed"));
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(io::Error::other(e)),
                    }
                },
            };
            buf.truncate(n);
            Ok(buf)
        };
        match tokio::time::timeout(RECV_TIMEOUT, read).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("nothing arrived within {RECV_TIMEOUT:?}")),
        }
    }
}

/// A JSON value that may arrive in pieces on a byte stream.
async fn recv_json(rx: &mut Rx) -> Result<Value, String> {
    let mut got = Vec::new();
    loop {
        got.extend_from_slice(&rx.recv().await?);
        if let Ok(v) = serde_json::from_slice(&got) {
            return Ok(v);
        }
        if got.len() > 4096 {
            return Err(format!("not JSON: {}", String::from_utf8_lossy(&got)));
        }
    }
}

/// Receive and send buffers large enough for a cell's burst (the kernel caps them at its maximum).
fn big_buffers(s: &impl std::os::fd::AsFd) {
    let s = socket2::SockRef::from(s);
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
}

// ---- upstream echo servers ----

/// Echoes a byte stream until the peer half-closes, then closes.
async fn echo_bytes(s: impl AsyncRead + AsyncWrite + Unpin) {
    let (mut r, mut w) = tokio::io::split(s);
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

async fn udp_echo() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    big_buffers(&s);
    let port = s.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok((n, peer)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], peer).await;
        }
    });
    port
}

/// A UNIX datagram echo server on its own thread (std's `send_to_addr` answers the agent's abstract addresses).
fn unix_dgram_echo(path: &Path) {
    let s = std::os::unix::net::UnixDatagram::bind(path).unwrap();
    big_buffers(&s);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 17];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to_addr(&buf[..n], &from);
        }
    });
}

/// A WebSocket echo server: each text or binary message back as it came.
async fn ws_echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_binary() || m.is_text()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// An HTTP/1.1 server whose response body is the request body, streamed back as it arrives.
async fn http_echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(req.into_body()))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    port
}

/// A JSONSocket server over UDP: a session's first datagram must be the agent's header (with the cluster's
/// `upstream: matrix` item), answered 200; every later datagram is echoed.
async fn jsonsocket_udp_echo() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    big_buffers(&s);
    let port = s.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut peers = HashSet::new();
        let mut buf = vec![0u8; 1 << 16];
        while let Ok((n, peer)) = s.recv_from(&mut buf).await {
            // A header from a known address is a new session on a reused port: a cell's data is never JSON.
            let header: Value = serde_json::from_slice(&buf[..n]).unwrap_or(Value::Null);
            if peers.contains(&peer) && header.get("JSONSocketVersion").is_none() {
                let _ = s.send_to(&buf[..n], peer).await;
                continue;
            }
            let ok = header["JSONSocketVersion"] == 1 && header["upstream"] == "matrix";
            let (status, message) = if ok { (200, "OK") } else { (400, "Bad Request") };
            let answer = json!({"JSONSocketVersion": 1, "JSONSocketStatus": status, "JSONSocketMessage": message});
            if ok {
                peers.insert(peer);
            }
            let _ = s.send_to(answer.to_string().as_bytes(), peer).await;
        }
    });
    port
}

//! Route retry policies end to end: connect retries for a late backend, `never` closing at once, reconnecting the
//! destination after a mid-session backend restart (`disconnect`), per-attempt `connect_timeout`, back-off pauses.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// An agent with a TCP listener on `port` routing to a TCP cluster on 127.0.0.1:`backend` with `retry`.
fn agent(port: u16, backend: u16, retry: &str) -> Agent {
    Agent::start(&format!(
        r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: up, retry: {retry} }} }} }}]
clusters:
  - name: up
    spec: {{ protocol: TCP, port: {backend} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    ))
}

/// A TCP backend on a fixed port that answers every read with `tag` + the bytes read, and records when it accepted
/// each connection. `kill` closes the listener and every connection, like a backend process that exits.
struct Backend {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<Mutex<Vec<Instant>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Backend {
    fn start(port: u16, tag: &'static [u8], close_at_once: bool) -> Backend {
        let l = TcpListener::bind(("127.0.0.1", port)).expect("backend bind");
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (stop2, conns2, accepted2) = (stop.clone(), conns.clone(), accepted.clone());
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::Acquire) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        accepted2.lock().unwrap().push(Instant::now());
                        if close_at_once {
                            continue;
                        }
                        s.set_nonblocking(false).unwrap();
                        conns2.lock().unwrap().push(s.try_clone().unwrap());
                        thread::spawn(move || {
                            let mut buf = [0u8; 4096];
                            while let Ok(n @ 1..) = s.read(&mut buf) {
                                let mut out = tag.to_vec();
                                out.extend_from_slice(&buf[..n]);
                                if s.write_all(&out).is_err() {
                                    break;
                                }
                            }
                            // The clone kept for `kill` would keep the connection open.
                            let _ = s.shutdown(std::net::Shutdown::Both);
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(2)),
                    Err(_) => break,
                }
            }
        });
        Backend {
            stop,
            conns,
            accepted,
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads exactly `n` bytes (the client has a read timeout).
fn read_n(c: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    c.read_exact(&mut buf).unwrap();
    buf
}

/// Whether the agent closed (or reset) the client's connection within `within`.
fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    c.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn a_late_backend_gets_through_with_always_and_connect_failure() {
    for retry_on in ["always", "connect-failure"] {
        let (port, late) = (free_port(), free_port());
        let _agent = agent(
            port,
            late,
            &format!("{{ retry_on: {retry_on}, num_retries: 20, timeout: 100 }}"),
        );
        let c = tcp_client(port);
        thread::sleep(Duration::from_millis(300));
        let _backend = Backend::start(late, b"", false);
        assert_eq!(round_trip(c, b"finally".to_vec()), b"finally", "{retry_on}");
    }
}

#[test]
fn never_closes_the_client_at_once_when_the_backend_is_down() {
    let (port, down) = (free_port(), free_port());
    let _agent = agent(port, down, "{ retry_on: never, timeout: 2000 }");
    let t = Instant::now();
    let mut c = tcp_client(port);
    assert!(
        closed_within(&mut c, Duration::from_secs(2)),
        "the client was not closed"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "closed after {:?}",
        t.elapsed()
    );
}

/// A client keeps its connection to the agent while the backend is killed and restarted on the same port.
fn backend_restart(retry: &str) -> (Agent, TcpStream, Backend, u16) {
    let (port, bport) = (free_port(), free_port());
    let agent = agent(port, bport, retry);
    let mut first = Backend::start(bport, b"A:", false);
    let mut c = tcp_client(port);
    c.write_all(b"one").unwrap();
    assert_eq!(read_n(&mut c, 5), b"A:one");
    first.kill();
    (agent, c, first, bport)
}

#[test]
fn disconnect_reconnects_the_destination_after_a_backend_restart() {
    let (agent, mut c, first, port) = backend_restart("{ retry_on: disconnect, num_retries: 30, timeout: 100 }");
    drop(first);
    // The agent saw the close and retries while the backend is down. What the client sends meanwhile waits in the
    // agent's socket buffer and goes to the new backend.
    agent.wait_log("closed while data still flows to it; reconnecting");
    c.write_all(b"two").unwrap();
    thread::sleep(Duration::from_millis(250));
    let _second = Backend::start(port, b"B:", false);
    assert_eq!(read_n(&mut c, 5), b"B:two");
    agent.wait_log("reconnected");
    c.write_all(b"three").unwrap();
    assert_eq!(read_n(&mut c, 7), b"B:three");
}

#[test]
fn never_closes_the_client_when_the_backend_goes_away_mid_session() {
    let (_agent, mut c, _first, _) = backend_restart("{ retry_on: never }");
    assert!(
        closed_within(&mut c, Duration::from_secs(2)),
        "the client was not closed"
    );
}

#[test]
fn connect_timeout_bounds_each_attempt() {
    // A listener whose accept queue is full (backlog 0: one connection fits) and that never accepts: Linux drops
    // further SYNs, so a connect neither succeeds nor fails until it times out.
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    l.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    l.listen(0).unwrap();
    let bport = l.local_addr().unwrap().as_socket().unwrap().port();
    let _filler: Vec<TcpStream> = (0..2)
        .filter_map(|_| TcpStream::connect_timeout(&([127, 0, 0, 1], bport).into(), Duration::from_millis(200)).ok())
        .collect();
    let port = free_port();
    let agent = agent(
        port,
        bport,
        "{ retry_on: connect-failure, num_retries: 1, timeout: 5000, connect_timeout: 300, backoff: { initial: 50, multiplier: 1 } }",
    );
    let t = Instant::now();
    let mut c = tcp_client(port);
    assert!(
        closed_within(&mut c, Duration::from_secs(4)),
        "the client was not closed"
    );
    let took = t.elapsed();
    // Two attempts of 300 ms and a 50 ms pause; `timeout` (5 s) would take far longer.
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(2500),
        "took {took:?}"
    );
    agent.wait_log("after 2 attempt(s): connecting to");
    agent.wait_log("timed out after 300ms");
}

#[test]
fn backoff_pauses_grow_as_configured() {
    // A backend that accepts and closes at once: each reconnect of the flapping destination continues the episode,
    // so the pauses between the accepts follow the back-off: 0, 100, 200, 400, 400 ms.
    let (port, bport) = (free_port(), free_port());
    let backend = Backend::start(bport, b"", true);
    let _agent = agent(
        port,
        bport,
        "{ retry_on: disconnect, num_retries: 5, backoff: { initial: 100, max: 400, multiplier: 2 } }",
    );
    let mut c = tcp_client(port);
    assert!(
        closed_within(&mut c, Duration::from_secs(4)),
        "the client was not closed"
    );
    let at = backend.accepted.lock().unwrap().clone();
    assert_eq!(at.len(), 6, "one connect and 5 reconnects");
    let gaps: Vec<u128> = at.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    eprintln!("gaps between the backend accepts (ms): {gaps:?}");
    let want = [0u128, 100, 200, 400, 400];
    for (g, w) in gaps.iter().zip(want) {
        assert!(*g + 10 >= w && *g < w + 400, "gaps {gaps:?}, wanted about {want:?}");
    }
}

#[test]
fn disconnect_reconnects_a_chain_stage_after_a_restart() {
    // source → ingress TCP service → Echo (the destination loops back) → source: the service is the only network
    // stage, and it is the one restarted.
    let (port, sport) = (free_port(), free_port());
    let agent = Agent::start(&format!(
        r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules:
      - action:
          route:
            destination: {{ spec: {{ protocol: Echo }} }}
            ingress: [svc]
            retry: {{ retry_on: always, num_retries: 30, timeout: 100 }}
clusters:
  - name: svc
    spec: {{ protocol: TCP, port: {sport} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    ));
    let mut first = Backend::start(sport, b"A:", false);
    let mut c = tcp_client(port);
    c.write_all(b"one").unwrap();
    assert_eq!(read_n(&mut c, 5), b"A:one");
    first.kill();
    agent.wait_log("ingress stage 0 (cluster \"svc\") closed while data still flows to it; reconnecting");
    let _second = Backend::start(sport, b"B:", false);
    agent.wait_log("reconnected");
    c.write_all(b"two").unwrap();
    assert_eq!(read_n(&mut c, 5), b"B:two");
}

#[test]
fn a_normal_end_is_not_a_disconnect() {
    // The client half-closes, the backend answers and closes: under `always` the session ends as usual, with no
    // reconnect.
    let (port, upstream) = (free_port(), tcp_echo_server());
    let agent = agent(port, upstream, "{ retry_on: always, num_retries: 3, timeout: 100 }");
    let data = pattern(200_000, 5);
    assert_eq!(round_trip(tcp_client(port), data.clone()), data);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(agent.count_log("reconnecting"), 0, "{:?}", agent.log_lines());
}

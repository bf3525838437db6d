//! The eBPF fast path end to end: a client, the agent and a UDP server in three network namespaces on one segment.
//! With `--offload force`, the session's datagrams reach the server rewritten (from the agent's address) and the
//! answers reach the client, while after the first packets the agent's sockets read nothing: the session listing
//! shows the flow in the kernel, with the kernel's counters making up (almost) all of the session's traffic. Ending
//! the session takes the flow out of the kernel (the next datagram makes a new session). With `--offload off` the
//! same exchange goes through user space.
//!
//! Needs root and a kernel that loads BPF programs; without them (or without clang at build time) it skips, unless
//! `L7MP_REQUIRE_EBPF=1` (CI). A second test runs the agent as an unprivileged user: `auto` falls back to user space
//! saying why, `force` refuses to start.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::Value;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

const CL: usize = 0;
const AG: usize = 1;
const SV: usize = 2;
const ADMIN: u16 = 18_950;

fn required() -> bool {
    std::env::var("L7MP_REQUIRE_EBPF").as_deref() == Ok("1")
}

/// A UDP server answering `from=<source address>:<datagram>`.
fn server(ns: &Netns, port: u16) {
    let sock = ns.enter(move || UdpSocket::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let answer = [format!("from={}:", peer.ip()).as_bytes(), &buf[..n]].concat();
            let _ = sock.send_to(&answer, peer);
        }
    });
}

/// `GET`/`DELETE` on the agent's admin API, from inside its namespace.
fn api(lan: &Lan, method: &'static str, path: String) -> (u16, Value) {
    lan.ns(AG).enter(move || api::call(ADMIN, method, &path, None))
}

fn sessions(lan: &Lan) -> Vec<Value> {
    let (code, body) = api(lan, "GET", "/api/v1/sessions".into());
    assert_eq!(code, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

fn start_agent(lan: &Lan, offload: &str) -> Result<Agent, String> {
    start_udp_agent(offload, "0.0.0.0", &lan.addr(SV), lan)
}

/// The agent with a UDP listener on `listen`:9000 routed to the server at `server`:7000.
fn start_udp_agent(offload: &str, listen: &str, server: &str, lan: &Lan) -> Result<Agent, String> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "
listeners:
  - name: udp-in
    spec: {{ protocol: UDP, port: 9000, address: '{listen}' }}
    rules:
      - action: {{ route: {{ destination: to-server }} }}
clusters:
  - name: to-server
    spec: {{ protocol: UDP, port: 7000 }}
    endpoints: [ {{ spec: {{ address: '{server}' }} }} ]
"
        ),
    )
    .unwrap();
    let admin = format!("127.0.0.1:{ADMIN}");
    let mut agent = Agent::spawn_prefixed(
        &["ip", "netns", "exec", &lan.ns(AG).name],
        &cfg,
        dir,
        &["--offload", offload, "--offload-interfaces", "eth1", "--admin", &admin],
    );
    agent.wait_running_or_exit()?;
    Ok(agent)
}

/// Sends `n` datagrams, 2 ms apart, each waiting for its answer; returns the answers.
fn exchange(c: &UdpSocket, n: usize, tag: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    for i in 0..n {
        let _ = c.send(format!("{tag}{i}").as_bytes());
        if let Ok(k) = c.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..k]).into_owned());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    got
}

fn client(lan: &Lan) -> UdpSocket {
    let to = format!("{}:9000", lan.addr(AG));
    lan.ns(CL).enter(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s
    })
}

fn counts(v: &Value) -> (u64, u64) {
    (
        v["from_source"]["messages"].as_u64().unwrap_or(0),
        v["to_source"]["messages"].as_u64().unwrap_or(0),
    )
}

#[test]
fn udp_flows_go_through_the_kernel_and_leave_it_with_their_session() {
    let lan = match Lan::create("l7o", 79, &["cl", "ag", "sv"]) {
        Ok(l) => l,
        Err(e) if skip_netns() => {
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("cannot create the test network: {e} (run as root, or set L7MP_SKIP_NETNS=1)"),
    };
    // The program routes what it rewrites: the agent's namespace forwards.
    for v in ["ipv4", "ipv6"] {
        for f in ["all", "eth1"] {
            let set = format!("echo 1 > /proc/sys/net/{v}/conf/{f}/forwarding");
            ip(&["netns", "exec", &lan.ns(AG).name, "sh", "-c", &set]).unwrap();
        }
    }
    server(lan.ns(SV), 7000);
    let agent = match start_agent(&lan, "force") {
        Ok(a) => a,
        Err(log) if !required() && log.contains("eBPF offload cannot start") => {
            eprintln!("skipping: the kernel fast path cannot start here:\n{log}");
            return;
        }
        Err(log) => panic!("the agent did not start with --offload force:\n{log}"),
    };
    let c = client(&lan);
    let got = exchange(&c, 300, "k");
    let want = format!("from={}:", lan.addr(AG));
    assert!(got.len() >= 295, "only {} of 300 answers", got.len());
    assert!(
        got.iter().all(|g| g.starts_with(&want)),
        "the server saw another source: {got:?}"
    );
    // The listing: one session, in the kernel, the kernel's counters making up almost all of its traffic.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (name, total, kernel) = loop {
        let list = sessions(&lan);
        assert_eq!(list.len(), 1, "{list:?}");
        let s = &list[0];
        let total = counts(&s["traffic"]);
        let kernel = counts(&s["offload"]["kernel"]);
        if s["offload"]["state"] == "kernel" && total.0 >= got.len() as u64 {
            break (s["name"].as_str().unwrap().to_string(), total, kernel);
        }
        assert!(
            Instant::now() < deadline,
            "the session never showed its offloaded traffic: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let user = (total.0 - kernel.0, total.1 - kernel.1);
    eprintln!("session traffic {total:?} messages (up, down), of which the kernel carried {kernel:?}");
    assert!(
        kernel.0 >= 250 && kernel.1 >= 250,
        "the kernel carried too little: {kernel:?} of {total:?}"
    );
    assert!(
        user.0 <= 50 && user.1 <= 50,
        "user space carried {user:?} of {total:?} messages after the flow was offloaded"
    );

    // The metrics count the flow and what the kernel carried.
    let (code, _, text) = lan.ns(AG).enter(|| api::http(ADMIN, "GET", "/metrics", None, ""));
    assert_eq!(code, 200);
    let metric = |line: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in /metrics:\n{text}"))
    };
    assert_eq!(metric("l7mp_offload_flows{state=\"kernel\"}"), 1);
    assert!(metric("l7mp_offload_packets_total{direction=\"rx\"}") >= kernel.0);
    assert!(metric("l7mp_offload_packets_total{direction=\"tx\"}") >= kernel.1);

    // Ending the session takes the flow out of the kernel: the next datagrams make a new session.
    let (code, body) = api(&lan, "DELETE", format!("/api/v1/sessions/{}", name.replace(':', "%3A")));
    assert_eq!(code, 200, "{body}");
    let got = exchange(&c, 20, "after");
    assert!(got.len() >= 18 && got.iter().all(|g| g.starts_with(&want)), "{got:?}");
    let list = sessions(&lan);
    assert!(
        list.iter()
            .any(|s| s["name"] != name.as_str() && s["status"] != "DESTROYED"),
        "no new session after the old one ended: {list:?}"
    );
    drop(agent);
    // The agent is gone and so are its programs and flows: the same client's datagrams reach nothing.
    let _ = c.send(b"after the agent exited");
    let mut buf = [0u8; 256];
    let stale = c
        .recv(&mut buf)
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    assert!(stale.is_err(), "a flow outlived the agent: {stale:?}");

    // Off: the same exchange through user space.
    let agent = start_agent(&lan, "off").unwrap();
    let c = client(&lan);
    let got = exchange(&c, 50, "u");
    assert!(got.len() >= 48 && got.iter().all(|g| g.starts_with(&want)), "{got:?}");
    let list = sessions(&lan);
    assert!(list.iter().all(|s| s["offload"].is_null()), "{list:?}");
    let total = counts(&list[0]["traffic"]);
    assert!(total.0 >= 48, "{total:?}");
    drop(agent);
}

#[test]
fn udp_flows_over_ipv6_go_through_the_kernel() {
    let lan = match Lan::create("l7s", 77, &["cl", "ag", "sv"]) {
        Ok(l) => l,
        Err(e) if skip_netns() => {
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("cannot create the test network: {e} (run as root, or set L7MP_SKIP_NETNS=1)"),
    };
    lan.add_ipv6().unwrap();
    ip(&[
        "netns",
        "exec",
        &lan.ns(AG).name,
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
    ])
    .unwrap();
    let sock = lan.ns(SV).enter(|| UdpSocket::bind("[::]:7000").unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let answer = [format!("from={}:", peer.ip()).as_bytes(), &buf[..n]].concat();
            let _ = sock.send_to(&answer, peer);
        }
    });
    let agent = match start_udp_agent("force", "::", &lan.addr6(SV), &lan) {
        Ok(a) => a,
        Err(log) if !required() && log.contains("eBPF offload cannot start") => {
            eprintln!("skipping: the kernel fast path cannot start here:\n{log}");
            return;
        }
        Err(log) => panic!("the agent did not start with --offload force:\n{log}"),
    };
    let to = format!("[{}]:9000", lan.addr6(AG));
    let c = lan.ns(CL).enter(move || {
        let s = UdpSocket::bind("[::]:0").unwrap();
        s.connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s
    });
    let got = exchange(&c, 200, "v6-");
    let want = format!("from={}:", lan.addr6(AG));
    assert!(got.len() >= 195, "only {} of 200 answers", got.len());
    assert!(
        got.iter().all(|g| g.starts_with(&want)),
        "the server saw another source: {got:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let list = sessions(&lan);
        let s = &list[0];
        let kernel = counts(&s["offload"]["kernel"]);
        if s["offload"]["state"] == "kernel" && counts(&s["traffic"]).0 >= got.len() as u64 {
            assert!(
                kernel.0 >= 150 && kernel.1 >= 150,
                "the kernel carried too little over IPv6: {s}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the IPv6 session never showed offloaded traffic: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(agent);
}

/// Without the privileges to load BPF programs: `auto` says why once and carries flows in user space; `force` refuses
/// to start, saying why. (The agent binary is copied where an unprivileged user can run it.)
#[test]
fn without_privileges_auto_falls_back_and_force_refuses() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root to run the agent as another user");
        return;
    }
    let dir = tempfile::Builder::new().prefix("l7mp-unpriv").tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("l7mp-agent");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "listeners:\n  - name: udp-in\n    spec: { protocol: UDP, port: 18961 }\n    rules: [ { action: { route: { destination: echo } } } ]\nclusters:\n  - name: echo\n    spec: { protocol: Echo }\n",
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = |mode: &str| {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
            .arg(&bin)
            .arg("-c")
            .arg(&cfg)
            .args(["--offload", mode]);
        c
    };
    let agent = Agent::start_command(run("auto"), "l7mp-agent running");
    let warning = agent.wait_log("eBPF offload is off:");
    assert!(
        warning.contains("not permitted") || warning.contains("clang"),
        "the warning does not say why: {warning}"
    );
    drop(agent);
    let out = run("force").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "force started without privileges: {err}");
    assert!(
        err.contains("admin.offload is force") && (err.contains("not permitted") || err.contains("clang")),
        "{err}"
    );
}

/// A TCP echo server: echoes what it reads, and closes its side after echoing everything once the client closed its.
fn tcp_echo_server(ns: &Netns, port: u16) {
    let listener = ns.enter(move || std::net::TcpListener::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = conn.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// The agent with a TCP listener on 9100 routed to the echo server; `extra` e.g. `--offload-tcp`.
fn start_tcp_agent(lan: &Lan, offload: &str, extra: &[&str]) -> Result<Agent, String> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: 9100 }}
    rules:
      - action: {{ route: {{ destination: to-server }} }}
clusters:
  - name: to-server
    spec: {{ protocol: TCP, port: 7100 }}
    endpoints: [ {{ spec: {{ address: {} }} }} ]
",
            lan.addr(SV)
        ),
    )
    .unwrap();
    let admin = format!("127.0.0.1:{ADMIN}");
    let mut agent = Agent::spawn_prefixed(
        &["ip", "netns", "exec", &lan.ns(AG).name],
        &cfg,
        dir,
        &[
            &["--offload", offload, "--offload-interfaces", "eth1", "--admin", &admin],
            extra,
        ]
        .concat(),
    );
    agent.wait_running_or_exit()?;
    Ok(agent)
}

const BULK: usize = 8 << 20;

/// 200 request/answer round trips of 32 bytes, then `BULK` bytes echoed back while they are sent, then the client
/// closes its side: every byte must come back, in order, and then end of stream. Returns the stream for more.
fn tcp_exchange(lan: &Lan, agent: &Agent) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let to = format!("{}:9100", lan.addr(AG));
    let mut c = lan.ns(CL).enter(move || std::net::TcpStream::connect(to).unwrap());
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.set_nodelay(true).unwrap();
    for i in 0..200u32 {
        let msg = format!("{i:031}\n");
        c.write_all(msg.as_bytes()).unwrap();
        let mut back = [0u8; 32];
        c.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("round trip {i}: {e}"));
        assert_eq!(&back, msg.as_bytes(), "round trip {i}");
    }
    let data: Vec<u8> = (0..BULK).map(|i| (i % 251) as u8).collect();
    let mut w = c.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
    let mut back = vec![0u8; BULK];
    c.read_exact(&mut back).expect("the bulk data echoed back");
    writer.join().unwrap();
    assert!(
        back == data,
        "the echoed bulk data differs from what was sent: {:#?}",
        agent.log_lines()
    );
    c
}

/// Sends `BULK` more bytes and closes its side right after them, while their echo still flows: every byte must come
/// back and then end of stream. (The agent reads the FIN on one socket while the kernel may still be handing the
/// last bytes to the other: passing the FIN on too early would cut them off.)
fn tcp_close(c: std::net::TcpStream, agent: &Agent) {
    use std::io::{Read, Write};
    let data: Vec<u8> = (0..BULK).map(|i| (i % 241) as u8).collect();
    let mut w = c.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(BULK);
    (&c).read_to_end(&mut back).expect("the echo, then end of stream");
    writer.join().unwrap();
    assert_eq!(
        back.len(),
        BULK,
        "bytes echoed before end of stream: {:#?}",
        agent.log_lines()
    );
    assert!(
        back == data,
        "the echoed bytes differ from what was sent: {:#?}",
        agent.log_lines()
    );
}

fn bytes(v: &Value) -> (u64, u64) {
    (
        v["from_source"]["bytes"].as_u64().unwrap_or(0),
        v["to_source"]["bytes"].as_u64().unwrap_or(0),
    )
}

#[test]
fn tcp_sessions_are_spliced_in_the_kernel_and_end_cleanly() {
    let lan = match Lan::create("l7t", 78, &["cl", "ag", "sv"]) {
        Ok(l) => l,
        Err(e) if skip_netns() => {
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("cannot create the test network: {e} (run as root, or set L7MP_SKIP_NETNS=1)"),
    };
    tcp_echo_server(lan.ns(SV), 7100);
    let agent = match start_tcp_agent(&lan, "force", &["--offload-tcp"]) {
        Ok(a) => a,
        Err(log) if !required() && log.contains("eBPF offload cannot start") => {
            eprintln!("skipping: the kernel fast path cannot start here:\n{log}");
            return;
        }
        Err(log) => panic!("the agent did not start with --offload force:\n{log}"),
    };
    let total = (200 * 32 + BULK) as u64;
    let c = tcp_exchange(&lan, &agent);
    // The listing: the session is spliced and the kernel carried every byte, both ways; user space none.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let list = sessions(&lan);
        assert_eq!(list.len(), 1, "{list:?}");
        let s = &list[0];
        let (traffic, kernel) = (bytes(&s["traffic"]), bytes(&s["offload"]["kernel"]));
        if s["offload"]["state"] == "kernel" && traffic == (total, total) {
            assert_eq!(s["offload"]["program"], "tcp_splice", "{s}");
            assert_eq!(kernel, traffic, "user space carried bytes of a spliced session: {s}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session never showed {total} bytes each way carried by the kernel: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, text) = lan.ns(AG).enter(|| api::http(ADMIN, "GET", "/metrics", None, ""));
    assert_eq!(code, 200);
    assert!(
        text.lines().any(|l| l == "l7mp_offload_flows{state=\"kernel\"} 1"),
        "no spliced flow in the metrics:\n{text}"
    );
    assert!(
        text.lines()
            .filter(|l| l.starts_with("l7mp_offload_bytes_total{"))
            .all(|l| l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()) >= Some(total)),
        "the kernel byte counters miss bytes:\n{text}"
    );
    // End of stream passes through in both directions after the last byte; the session ends and leaves the kernel,
    // its counters complete.
    tcp_close(c, &agent);
    let metrics = || lan.ns(AG).enter(|| api::http(ADMIN, "GET", "/metrics", None, "").2);
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = metrics();
        if text
            .lines()
            .any(|l| l == "l7mp_listener_active_sessions{listener=\"tcp-in\"} 0")
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the session did not end: {:?}",
            sessions(&lan)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let total = total + BULK as u64;
    for dir in ["rx", "tx"] {
        let line = format!("l7mp_listener_bytes_total{{direction=\"{dir}\",listener=\"tcp-in\"}} {total}");
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(
        text.lines().any(|l| l == "l7mp_offload_flows{state=\"kernel\"} 0"),
        "the ended session's splice is still counted:\n{text}"
    );
    // A second session is spliced as well and ends as cleanly.
    tcp_close(tcp_exchange(&lan, &agent), &agent);
    drop(agent);

    // Without --offload-tcp (the default), and with offload off: the same exchanges through user space.
    for (mode, label) in [("force", "offload on without --offload-tcp"), ("off", "offload off")] {
        let agent = start_tcp_agent(&lan, mode, &[]).unwrap();
        let c = tcp_exchange(&lan, &agent);
        let list = sessions(&lan);
        assert!(list.iter().all(|s| s["offload"].is_null()), "{label}: {list:?}");
        tcp_close(c, &agent);
        drop(agent);
    }
}

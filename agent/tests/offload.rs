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
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "
listeners:
  - name: udp-in
    spec: {{ protocol: UDP, port: 9000 }}
    rules:
      - action: {{ route: {{ destination: to-server }} }}
clusters:
  - name: to-server
    spec: {{ protocol: UDP, port: 7000 }}
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

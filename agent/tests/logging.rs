//! The agent's log (text or JSON, to stderr or a file) and its access log, with the real binary and real sockets.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The access log's lines, parsed.
fn access_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}")))
        .collect()
}

/// Polls `path` until it contains `needle`.
fn wait_file(path: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never got {needle:?}:\n{text}",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn json_log_lines_and_one_access_line_per_session_with_exact_counts() {
    let (udp_port, tcp_port) = (free_port(), free_port());
    let backend = tcp_echo_server();
    let yaml = format!(
        "listeners:
  - name: udp-in
    spec: {{ protocol: UDP, port: {udp_port}, address: 127.0.0.1 }}
    rules: [ {{ action: {{ route: {{ destination: echo }} }} }} ]
  - name: tcp-in
    spec: {{ protocol: TCP, port: {tcp_port}, address: 127.0.0.1 }}
    rules: [ {{ action: {{ route: {{ destination: backend }} }} }} ]
clusters:
  - name: echo
    spec: {{ protocol: Echo }}
  - name: backend
    spec: {{ protocol: TCP, port: {backend} }}
    endpoints: [ {{ name: be0, spec: {{ address: 127.0.0.1 }} }} ]
"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let access = dir.path().join("access.log");
    let access_arg = access.display().to_string();
    let mut agent = Agent::start_with(&yaml, &["--log-format", "json", "--access-log", &access_arg]);

    // UDP: three datagrams, echoed.
    let udp = udp_client(udp_port);
    let mut udp_sent = 0;
    for len in [10, 200, 1000] {
        let msg = pattern(len, len as u64);
        udp.send(&msg).expect("send");
        assert_eq!(recv(&udp), msg);
        udp_sent += len;
    }
    // TCP: two sessions through the backend, each ends when both sides are done.
    let mut tcp_peers = Vec::new();
    for (len, seed) in [(100_000, 1), (5000, 2)] {
        let c = tcp_client(tcp_port);
        tcp_peers.push((c.local_addr().expect("addr").to_string(), len));
        let data = pattern(len, seed);
        assert_eq!(round_trip(c, data.clone()), data);
    }
    let deadline = Instant::now() + TIMEOUT;
    while access_lines(&access).len() < 2 {
        assert!(Instant::now() < deadline, "TCP sessions were not logged");
        thread::sleep(Duration::from_millis(20));
    }
    // The UDP session ends at shutdown; its line is written before the agent exits.
    assert!(agent.terminate().success());

    let lines = access_lines(&access);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let keys = [
        "time",
        "session",
        "listener",
        "protocol",
        "peer",
        "route",
        "cluster",
        "endpoint",
        "status",
        "reason",
        "duration",
        "up_bytes",
        "up_msgs",
        "down_bytes",
        "down_msgs",
    ];
    for l in &lines {
        let got: Vec<&str> = l.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(got, keys, "{l}");
        let time = l["time"].as_str().expect("time");
        assert!(
            time.ends_with('Z') && time.len() == 24 && time.as_bytes()[10] == b'T',
            "{time}"
        );
        assert!(l["duration"].as_f64().is_some_and(|d| d >= 0.0), "{l}");
        assert_eq!(l["status"], "ended", "{l}");
    }
    let udp_line = lines.iter().find(|l| l["listener"] == "udp-in").expect("UDP line");
    assert_eq!(udp_line["protocol"], "UDP");
    assert_eq!(udp_line["peer"], udp.local_addr().expect("addr").to_string());
    assert_eq!(udp_line["cluster"], "echo");
    assert_eq!(udp_line["endpoint"], Value::Null);
    assert_eq!(udp_line["reason"], "cancelled");
    assert_eq!(udp_line["up_bytes"], udp_sent);
    assert_eq!(udp_line["down_bytes"], udp_sent);
    assert_eq!(udp_line["up_msgs"], 3);
    assert_eq!(udp_line["down_msgs"], 3);
    for (peer, len) in &tcp_peers {
        let l = lines
            .iter()
            .find(|l| l["peer"] == peer.as_str())
            .unwrap_or_else(|| panic!("no line for {peer}: {lines:#?}"));
        assert_eq!(l["listener"], "tcp-in");
        assert_eq!(l["protocol"], "TCP");
        assert_eq!(l["cluster"], "backend");
        assert_eq!(l["endpoint"], "be0");
        assert_eq!(l["reason"], "finished");
        assert_eq!(l["up_bytes"], *len);
        assert_eq!(l["down_bytes"], *len);
        assert!(l["route"].as_str().is_some_and(|r| r.starts_with("tcp-in-")), "{l}");
    }

    // Every line on stderr is a JSON object with a level, a target and fields.
    let log = agent.log_lines();
    assert!(!log.is_empty());
    for line in &log {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["target"].is_string() && v["fields"].is_object(),
            "{line}"
        );
        assert!(v["timestamp"].is_string(), "{line}");
    }
    let started = log
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == "listener started" && v["fields"]["listener"] == "tcp-in")
        .expect("a 'listener started' line for tcp-in");
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["target"], "l7mp_agent::engine");
    assert_eq!(started["fields"]["protocol"], "TCP");
}

/// Runs the agent with `args` and a configuration; returns the child once `log` says it runs.
fn spawn(cfg: &std::path::Path, args: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .arg("-c")
        .arg(cfg)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn l7mp-agent")
}

fn terminate(child: &mut std::process::Child) -> (Option<i32>, String, String) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not exit after SIGTERM");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (status.code(), out, err)
}

#[test]
fn log_file_flag_overrides_admin_log_file_and_admin_access_log_path_is_used() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let from_config = dir.path().join("from-config.log");
    let from_flag = dir.path().join("from-flag.log");
    let access = dir.path().join("access.log");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "admin: {{ log_level: info, log_file: {}, access_log_path: {} }}
listeners:
  - name: udp-in
    spec: {{ protocol: UDP, port: {port}, address: 127.0.0.1 }}
    rules: [ {{ action: {{ route: {{ destination: echo }} }} }} ]
clusters:
  - name: echo
    spec: {{ protocol: Echo }}
",
            from_config.display(),
            access.display()
        ),
    )
    .expect("write config");
    // An existing log file is appended to, not truncated.
    std::fs::write(&from_flag, "earlier line\n").expect("write");
    let flag = from_flag.display().to_string();
    let mut child = spawn(&cfg, &["--log-file", &flag]);
    wait_file(&from_flag, "l7mp-agent running");
    let c = udp_client(port);
    c.send(b"hello").expect("send");
    assert_eq!(recv(&c), b"hello");
    let (code, out, err) = terminate(&mut child);
    assert_eq!(code, Some(0), "stderr: {err}");
    let text = std::fs::read_to_string(&from_flag).expect("read log");
    assert!(text.starts_with("earlier line\n"), "{text}");
    assert!(
        text.contains("listener started") && text.contains("shutting down"),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no colours in a file: {text}");
    assert!(!from_config.exists(), "--log-file overrides admin.log_file");
    assert!(err.is_empty() && out.is_empty(), "stdout: {out}\nstderr: {err}");
    let lines = access_lines(&access);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["up_bytes"], 5);
    assert_eq!(lines[0]["down_msgs"], 1);
}

#[test]
fn admin_log_file_is_used_and_stdout_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.yaml");
    let log = dir.path().join("agent.log");
    std::fs::write(&cfg, format!("admin: {{ log_file: {} }}\n", log.display())).expect("write");
    let mut child = spawn(&cfg, &[]);
    wait_file(&log, "l7mp-agent running");
    let (code, _, err) = terminate(&mut child);
    assert_eq!(code, Some(0));
    assert!(err.is_empty(), "{err}");

    let mut child = spawn(&cfg, &["--log-file", "stdout", "--log-format", "json"]);
    let mut out = child.stdout.take().expect("stdout");
    let mut first = String::new();
    let mut byte = [0u8; 1];
    while !first.ends_with('\n') && out.read(&mut byte).expect("read") == 1 {
        first.push(byte[0] as char);
    }
    child.stdout = Some(out);
    let v: Value = serde_json::from_str(first.trim()).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert!(v["level"].is_string(), "{first}");
    let (code, _, _) = terminate(&mut child);
    assert_eq!(code, Some(0));
}

#[test]
fn bad_log_settings_exit_1_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "").expect("write");
    let cases: [(&[&str], &str); 4] = [
        (
            &["--log-file", "/nonexistent-dir/agent.log"],
            "l7mp-agent: cannot open log file /nonexistent-dir/agent.log: No such file or directory",
        ),
        (
            &["--access-log", "/nonexistent-dir/access.log"],
            "l7mp-agent: cannot open access log /nonexistent-dir/access.log: No such file or directory",
        ),
        (
            &["--log-level", "info,l7mp_agent=loud"],
            "l7mp-agent: invalid log level \"info,l7mp_agent=loud\": \"l7mp_agent=loud\"",
        ),
        (&["--log-format", "xml"], "invalid value 'xml'"),
    ];
    for (args, want) in cases {
        let out = Command::new(BIN)
            .arg("-c")
            .arg(&cfg)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        if !args.contains(&"--log-format") {
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        }
    }
}

#[test]
fn help_documents_the_logging_flags() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--log-format",
        "L7MP_LOG_FORMAT",
        "--log-file",
        "L7MP_LOG_FILE",
        "--access-log",
        "L7MP_ACCESS_LOG",
        "admin.access_log_path",
        "l7mp_agent::session=debug",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}

#[test]
fn a_session_that_cannot_connect_is_logged_as_failed_with_the_reason() {
    let port = free_port();
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let yaml = format!(
        "listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules: [ {{ action: {{ route: {{ destination: down, retry: {{ retry_on: never }} }} }} }} ]
clusters:
  - name: down
    spec: {{ protocol: TCP, port: {closed} }}
    endpoints: [ {{ name: nobody, spec: {{ address: 127.0.0.1 }} }} ]
"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let access = dir.path().join("access.log");
    let access_arg = access.display().to_string();
    let mut agent = Agent::start_with(&yaml, &["--access-log", &access_arg]);
    let mut c = tcp_client(port);
    let peer = c.local_addr().expect("addr").to_string();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    agent.wait_log("session failed");
    assert!(agent.terminate().success());
    let lines = access_lines(&access);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["peer"], peer.as_str());
    assert_eq!(l["status"], "failed");
    assert_eq!(l["cluster"], "down");
    assert_eq!(l["endpoint"], Value::Null);
    let reason = l["reason"].as_str().expect("reason");
    assert!(reason.starts_with("cannot connect cluster \"down\""), "{reason}");
    assert_eq!(l["up_bytes"], 0);
}

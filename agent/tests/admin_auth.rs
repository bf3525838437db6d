//! The admin API with bearer tokens (`--api-tokens`): no token or a wrong one is 401, a role too low is 403, each
//! role can do what it should, the same holds through an HTTP listener routed to an `L7mpController` cluster, the
//! probes and metrics stay open, the file is re-read when it changes, and no token ever appears in the agent's log.
//! Without tokens, a non-loopback admin address is refused unless `--api-insecure`. Over HTTPS with
//! `--admin-client-ca`, client certificates (from `l7mpctl certs client --role`) authenticate callers, checked with
//! curl: no certificate or one of another CA fails the handshake, each certificate's role is enforced, and with
//! tokens too a token alone works and wins over a certificate.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const READER: &str = "rd-2f7c1e9a8b3d4c5e6f70";
const OPERATOR: &str = "op-9a8b7c6d5e4f3a2b1c0d";
const ADMIN: &str = "ad-0f1e2d3c4b5a69788796";
const LATER: &str = "la-55aa55aa55aa55aa55aa";

/// One request with an optional bearer token; returns the status and body.
fn req(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        r.push_str("Content-Type: application/json\r\n");
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(r.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

fn listener_body(name: &str, port: u16) -> String {
    format!(
        r#"{{"listener": {{"name": "{name}", "spec": {{"protocol": "UDP", "port": {port}}}, "rules": [{{"action": {{"route": {{"destination": "echo"}}}}}}]}}}}"#
    )
}

#[test]
fn tokens_and_roles_guard_the_admin_api() {
    let (admin, http) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        format!("# token,name,role\n{READER},dashboard,reader\n{OPERATOR},ci,operator\n{ADMIN},root,admin\n"),
    )
    .unwrap();
    let agent = Agent::start_with(
        &format!(
            r#"
listeners:
  - name: api
    spec: {{ protocol: HTTP, port: {http}, address: 127.0.0.1 }}
    rules: [ {{ action: {{ route: {{ destination: ctl }} }} }} ]
clusters:
  - name: ctl
    spec: {{ protocol: L7mpController }}
  - name: echo
    spec: {{ protocol: Echo }}
"#
        ),
        &[
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--api-tokens",
            tokens.to_str().unwrap(),
        ],
    );

    // A cluster that runs a command is code execution on this host: admin only.
    let fork =
        r#"{"cluster": {"name": "shell", "spec": {"protocol": "StdioFork", "command": ["cat", "/etc/passwd"]}}}"#;
    let (code, body) = req(admin, "POST", "/api/v1/clusters", Some(OPERATOR), fork);
    assert!(
        code == 403 && body.contains("StdioFork") && body.contains("needs the admin role"),
        "{code} {body}"
    );
    assert_eq!(
        req(admin, "GET", "/api/v1/clusters/shell", Some(READER), "").0,
        404,
        "not created"
    );
    assert_eq!(req(admin, "POST", "/api/v1/clusters", Some(ADMIN), fork).0, 200);

    // Probes and metrics are open; everything else needs a token.
    for open in ["/live", "/ready", "/metrics"] {
        assert_eq!(req(admin, "GET", open, None, "").0, 200, "{open}");
    }
    let (code, body) = req(admin, "GET", "/api/v1/listeners", None, "");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("authentication required"), "{body}");
    assert_eq!(req(admin, "GET", "/config", None, "").0, 401);
    assert_eq!(
        req(admin, "GET", "/api/v1/listeners", Some("not-a-valid-token-at-all"), "").0,
        401
    );

    // reader: reads, cannot change.
    assert_eq!(req(admin, "GET", "/api/v1/listeners", Some(READER), "").0, 200);
    assert_eq!(req(admin, "GET", "/config", Some(READER), "").0, 200);
    let (code, body) = req(
        admin,
        "POST",
        "/api/v1/listeners",
        Some(READER),
        &listener_body("r", free_port()),
    );
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("needs the operator role") && body.contains("dashboard"),
        "{body}"
    );

    // operator: changes listeners, cannot replace the whole configuration or the process settings.
    let (code, body) = req(
        admin,
        "POST",
        "/api/v1/listeners",
        Some(OPERATOR),
        &listener_body("o", free_port()),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = req(
        admin,
        "POST",
        "/api/v1/admin",
        Some(OPERATOR),
        r#"{"admin": {"log_level": "info"}}"#,
    );
    assert_eq!(code, 403, "{body}");
    // admin: may.
    let (code, body) = req(
        admin,
        "POST",
        "/api/v1/admin",
        Some(ADMIN),
        r#"{"admin": {"log_level": "info"}}"#,
    );
    assert_eq!(code, 200, "{body}");

    // The same rules through the original's way in, an HTTP listener routed to the controller.
    assert_eq!(req(http, "GET", "/api/v1/listeners", None, "").0, 401);
    assert_eq!(req(http, "GET", "/api/v1/listeners", Some(READER), "").0, 200);
    assert_eq!(req(http, "DELETE", "/api/v1/listeners/o", Some(READER), "").0, 403);
    assert_eq!(req(http, "DELETE", "/api/v1/listeners/o", Some(OPERATOR), "").0, 200);

    // A changed file takes effect without a restart; a broken one keeps the tokens in force.
    std::fs::write(&tokens, format!("{LATER},later,reader\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while req(admin, "GET", "/api/v1/listeners", Some(LATER), "").0 != 200 {
        assert!(Instant::now() < deadline, "the new token never worked");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        req(admin, "GET", "/api/v1/listeners", Some(READER), "").0,
        401,
        "a removed token still works"
    );
    std::fs::write(&tokens, "this is not a tokens file\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.count_log("the tokens in force stay") == 0 {
        assert_eq!(req(admin, "GET", "/api/v1/listeners", Some(LATER), "").0, 200);
        assert!(Instant::now() < deadline, "the broken file was not noticed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(req(admin, "GET", "/api/v1/listeners", Some(LATER), "").0, 200);

    // Refusals are logged with the token's name and the reason, and no token is ever logged.
    agent.wait_log("admin API request refused (403)");
    agent.wait_log("caller=dashboard");
    let log = agent.log_lines().join("\n");
    for secret in [READER, OPERATOR, ADMIN, LATER, "not-a-valid-token-at-all"] {
        assert!(!log.contains(secret), "the log shows a token:\n{log}");
    }
}

#[test]
fn without_tokens_a_non_loopback_admin_address_needs_api_insecure() {
    let port = free_port();
    let yaml = "clusters: [ { name: echo, spec: { protocol: Echo } } ]\n";
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&cfg)
        .args(["--admin", &format!("0.0.0.0:{port}")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started without authentication on 0.0.0.0: {err}"
    );
    assert!(
        err.contains("without authentication") && err.contains("--api-tokens"),
        "{err}"
    );
    let agent = Agent::start_with(yaml, &["--admin", &format!("0.0.0.0:{port}"), "--api-insecure"]);
    agent.wait_log("without authentication (--api-insecure)");
    assert_eq!(req(port, "GET", "/api/v1/listeners", None, "").0, 200);
}

/// `curl` (an independent HTTPS client) against the admin listener: (HTTP status, body); status 0 when the TLS
/// handshake failed (curl's error in the body).
fn curl(
    port: u16,
    pki: &std::path::Path,
    who: Option<&str>,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-X", method, "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(pki.join("ca/ca.pem"));
    if let Some(who) = who {
        cmd.arg("--cert")
            .arg(pki.join(format!("{who}/client.pem")))
            .arg("--key")
            .arg(pki.join(format!("{who}/client.key")));
    }
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if method == "POST" {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data",
            &listener_body("from-curl", free_port()),
        ]);
    }
    let out = cmd
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or(0);
    (code, format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
}

fn certs(args: &[&str]) {
    let out = std::process::Command::new(sibling_binary("l7mpctl"))
        .arg("certs")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "l7mpctl certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn client_certificates_with_roles_guard_an_https_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let p = |rel: &str| dir.path().join(rel).display().to_string();
    certs(&["ca", "--out", &p("ca")]);
    certs(&["ca", "--out", &p("other-ca")]);
    certs(&[
        "server",
        "--ca",
        &p("ca"),
        "--name",
        "localhost,127.0.0.1",
        "--out",
        &p("server"),
    ]);
    certs(&[
        "client",
        "--ca",
        &p("ca"),
        "--name",
        "dashboard",
        "--role",
        "reader",
        "--out",
        &p("reader"),
    ]);
    certs(&[
        "client",
        "--ca",
        &p("ca"),
        "--name",
        "deployer",
        "--role",
        "operator",
        "--out",
        &p("operator"),
    ]);
    certs(&[
        "client",
        "--ca",
        &p("other-ca"),
        "--name",
        "mallory",
        "--role",
        "admin",
        "--out",
        &p("stranger"),
    ]);
    let yaml = "clusters: [ { name: echo, spec: { protocol: Echo } } ]\n";
    let tls = [
        "--admin-tls-cert",
        &p("server/server.pem"),
        "--admin-tls-key",
        &p("server/server.key"),
        "--admin-client-ca",
        &p("ca/ca.pem"),
    ];

    // Certificates only (no tokens): the handshake requires one, even on a non-loopback address.
    let admin = free_port();
    let addr = format!("0.0.0.0:{admin}");
    let mut args = vec!["--admin", &addr as &str];
    args.extend_from_slice(&tls);
    let agent = Agent::start_with(yaml, &args);
    agent.wait_log("admin listener started");
    let (code, out) = curl(admin, dir.path(), None, "GET", "/api/v1/clusters", None);
    assert_eq!(code, 0, "no client certificate: the handshake fails: {out}");
    let (code, out) = curl(admin, dir.path(), Some("stranger"), "GET", "/api/v1/clusters", None);
    assert_eq!(code, 0, "a certificate of another CA: the handshake fails: {out}");
    let (code, out) = curl(admin, dir.path(), Some("reader"), "GET", "/api/v1/clusters", None);
    assert!(code == 200 && out.contains("echo"), "{code} {out}");
    let (code, out) = curl(admin, dir.path(), Some("reader"), "POST", "/api/v1/listeners", None);
    assert!(
        code == 403 && out.contains("needs the operator role; client certificate") && out.contains("dashboard"),
        "{code} {out}"
    );
    let (code, out) = curl(admin, dir.path(), Some("operator"), "POST", "/api/v1/listeners", None);
    assert_eq!(code, 200, "{out}");
    let (code, out) = curl(
        admin,
        dir.path(),
        Some("operator"),
        "GET",
        "/api/v1/listeners/from-curl",
        None,
    );
    assert_eq!(code, 200, "the operator's listener is there: {out}");
    assert!(
        agent.wait_log("admin API request refused (403)").contains("dashboard"),
        "the refusal names the certificate"
    );
    drop(agent);

    // Tokens and certificates: a certificate is optional in the handshake, a token alone works, a reader's
    // certificate with an operator's token acts as the operator.
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, format!("{OPERATOR},ci,operator\n")).unwrap();
    let admin = free_port();
    let addr = format!("127.0.0.1:{admin}");
    let mut args = vec!["--admin", &addr as &str, "--api-tokens", tokens.to_str().unwrap()];
    args.extend_from_slice(&tls);
    let agent = Agent::start_with(yaml, &args);
    agent.wait_log("admin listener started");
    let (code, out) = curl(admin, dir.path(), None, "GET", "/api/v1/clusters", None);
    assert_eq!(code, 401, "neither certificate nor token: {out}");
    let (code, out) = curl(admin, dir.path(), None, "GET", "/api/v1/clusters", Some(OPERATOR));
    assert_eq!(code, 200, "a token alone: {out}");
    let (code, out) = curl(
        admin,
        dir.path(),
        Some("reader"),
        "POST",
        "/api/v1/listeners",
        Some(OPERATOR),
    );
    assert_eq!(code, 200, "the token wins over the reader's certificate: {out}");
    assert!(
        agent.log_lines().iter().all(|l| !l.contains(OPERATOR)),
        "no token in the log"
    );
}

/// `curl` from inside network namespace `ns`: (HTTP status, body).
fn curl_in(ns: &str, url: &str) -> (u16, String) {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn an_open_api_behind_an_l7mpcontroller_listener_serves_loopback_clients_only() {
    let lan = match Lan::create("l7a", 75, &["ag", "cl"]) {
        Ok(l) => l,
        Err(e) if skip_netns() => {
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("cannot create the test network: {e} (run as root, or set L7MP_SKIP_NETNS=1)"),
    };
    let port = free_port();
    let yaml = format!(
        "listeners:
  - name: api
    spec: {{ protocol: HTTP, port: {port} }}
    rules: [ {{ action: {{ route: {{ destination: ctl }} }} }} ]
clusters:
  - name: ctl
    spec: {{ protocol: L7mpController }}
"
    );
    let (ag, cl) = (lan.ns(0).name.clone(), lan.ns(1).name.clone());
    let url = format!("http://{}:{port}/api/v1/listeners", lan.addr(0));
    let local = format!("http://127.0.0.1:{port}/api/v1/listeners");
    {
        let agent = Agent::start_in_netns(&ag, &yaml);
        let (code, body) = curl_in(&cl, &url);
        assert!(
            code == 403 && body.contains("serves loopback clients only") && body.contains("--api-tokens"),
            "a remote client of an open API: {code} {body}"
        );
        let (code, body) = curl_in(&ag, &local);
        assert_eq!(code, 200, "a loopback client: {body}");
        agent.wait_log("open API, remote client");
    }
    // --api-insecure opens it to everyone, as for --admin.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let _agent = Agent::start_prefixed(&["ip", "netns", "exec", &ag], &cfg, dir, &["--api-insecure"]);
    let (code, body) = curl_in(&cl, &url);
    assert_eq!(code, 200, "--api-insecure: {body}");
}

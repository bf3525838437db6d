//! Who may use the Management API and CSDS, with the real `l7mp-control` and `l7mpctl` binaries: bearer tokens from
//! `--api-tokens` (no token → UNAUTHENTICATED, a reader's writes → PERMISSION_DENIED, operators write VirtualServices
//! but not Rules, admins write Rules, a changed tokens file takes effect without a restart) and client certificates
//! carrying roles under mTLS (an agent's certificate is refused; a token wins over the certificate). Every refusal is
//! logged and counted in `/metrics`, and no token ever appears in a log line or an answer.

mod common;

use common::plane::{Plane, free_port};
use std::path::Path;
use std::time::{Duration, Instant};

const READER: &str = "reader-secret-7f3a9c21d4e8";
const OPERATOR: &str = "operator-secret-b2c4d6e8f0a1";
const ADMIN: &str = "admin-secret-91e7c3a5b8d2";
const ROTATED: &str = "rotated-reader-secret-4d5e6f708192";
const WRONG: &str = "not-a-token-0000000000000000";

const SERVICE: &str = "\
apiVersion: l7mp.io/v1
kind: Target
metadata: {name: backend}
spec:
  cluster:
    spec: {protocol: TCP, port: 9002}
    endpoints: [{spec: {address: 127.0.0.1}}]
---
apiVersion: l7mp.io/v1
kind: VirtualService
metadata: {name: gateway}
spec:
  listener:
    spec: {protocol: UDP, port: 9001}
    rules: [{action: {route: {destinationRef: backend}}}]
";

const RULE: &str = "\
apiVersion: l7mp.io/v1
kind: Rule
metadata: {name: block-lab}
spec:
  virtualService: default/gateway
  position: 0
  match: {op: test, path: /IP/src_addr, value: 10.9.9.9}
  action: {deny: lab network}
";

fn write_tokens(path: &Path, reader: &str) {
    std::fs::write(
        path,
        format!("# test tokens\n{reader},ro,reader\n{OPERATOR},ci,operator\n{ADMIN},root,admin\n"),
    )
    .expect("tokens file");
}

fn token_file(dir: &Path, name: &str, token: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{token}\n")).expect("token file");
    p.display().to_string()
}

/// `/metrics` of the control plane's admin listener.
fn metrics(admin: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).expect("admin");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("metrics");
    out
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{text}"))
}

/// CSDS `FetchClientStatus` with an optional bearer token.
fn csds(url: &str, token: Option<&str>) -> Result<(), (tonic::Code, String)> {
    use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
    use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut client = ClientStatusDiscoveryServiceClient::new(channel);
        let mut req = tonic::Request::new(ClientStatusRequest::default());
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
        }
        client
            .fetch_client_status(req)
            .await
            .map(drop)
            .map_err(|s| (s.code(), s.message().to_owned()))
    })
}

/// The text without ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
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

fn assert_no_secret(what: &str, text: &str) {
    for secret in [READER, OPERATOR, ADMIN, ROTATED, WRONG] {
        assert!(!text.contains(secret), "a token appears in {what}:\n{text}");
    }
}

#[test]
fn tokens_and_roles_on_the_management_api() {
    let dir = tempfile::tempdir().expect("tmp");
    let tokens = dir.path().join("tokens.csv");
    write_tokens(&tokens, READER);
    let (reader, operator, admin) = (
        token_file(dir.path(), "reader", READER),
        token_file(dir.path(), "operator", OPERATOR),
        token_file(dir.path(), "admin", ADMIN),
    );
    let admin_port = free_port();
    let admin_addr = format!("127.0.0.1:{admin_port}");
    let plane = Plane::start_with(
        &["--api-tokens", &tokens.display().to_string(), "--admin", &admin_addr],
        &["--token-file", &admin],
    );
    let mut answers = String::new();
    let mut as_ = |args: &[&str], stdin: Option<&str>| {
        let (code, out) = plane.ctl_as(args, stdin);
        answers.push_str(&out);
        (code, out)
    };

    // No token, a wrong token: UNAUTHENTICATED, saying what to send.
    let (code, out) = as_(&["get", "vsvc"], None);
    assert!(
        code != 0 && out.contains("authentication required") && out.contains("no bearer token"),
        "{out}"
    );
    let (code, out) = as_(&["--token", WRONG, "status"], None);
    assert!(code != 0 && out.contains("the token is not valid"), "{out}");

    // A reader reads, and cannot write: nothing is stored.
    let (code, out) = as_(&["--token-file", &reader, "get", "vsvc"], None);
    assert_eq!(code, 0, "{out}");
    let (code, out) = as_(&["--token-file", &reader, "apply", "-f", "-"], Some(SERVICE));
    assert!(
        code != 0 && out.contains("needs the operator role; token \"ro\" has reader"),
        "{out}"
    );
    let (code, out) = as_(&["--token-file", &reader, "get", "target", "backend"], None);
    assert!(
        code != 0 && out.contains("not found"),
        "a refused apply stored nothing: {out}"
    );

    // An operator writes VirtualServices and Targets, not Rules (neither apply nor delete).
    let (code, out) = as_(&["--token-file", &operator, "apply", "-f", "-"], Some(SERVICE));
    assert_eq!(code, 0, "{out}");
    let (code, out) = as_(&["--token-file", &operator, "apply", "-f", "-"], Some(RULE));
    assert!(
        code != 0 && out.contains("needs the admin role; token \"ci\" has operator"),
        "{out}"
    );
    // A cluster that runs a command is code execution on the agents: admin only.
    let fork = "apiVersion: l7mp.io/v1\nkind: Target\nmetadata: {name: shell}\nspec:\n  cluster:\n    spec: {protocol: StdioFork, command: [cat, /etc/passwd]}\n";
    let (code, out) = as_(&["--token-file", &operator, "apply", "-f", "-"], Some(fork));
    assert!(
        code != 0 && out.contains("StdioFork") && out.contains("needs the admin role"),
        "{out}"
    );
    let (code, out) = as_(&["--token-file", &admin, "apply", "-f", "-"], Some(fork));
    assert_eq!(code, 0, "{out}");
    // The admin does; the operator cannot delete it again.
    let (code, out) = as_(&["--token-file", &admin, "apply", "-f", "-"], Some(RULE));
    assert_eq!(code, 0, "{out}");
    let (code, out) = as_(&["--token-file", &operator, "delete", "rule", "block-lab"], None);
    assert!(code != 0 && out.contains("needs the admin role"), "{out}");
    let (code, out) = as_(&["--token-file", &operator, "delete", "vsvc", "gateway"], None);
    assert_eq!(code, 0, "{out}");
    // Tokens from the environment work the same.
    let (code, out) = as_(&["--token", OPERATOR, "get", "target", "backend", "-o", "json"], None);
    assert!(code == 0 && out.contains("\"backend\""), "{out}");

    // CSDS needs a reader too.
    let url = plane.url();
    let (code, msg) = csds(&url, None).expect_err("CSDS without a token");
    assert_eq!(code, tonic::Code::Unauthenticated, "{msg}");
    csds(&url, Some(READER)).expect("CSDS with a reader token");

    // The tokens file changes: the old reader token stops working, the new one works, no restart.
    std::thread::sleep(Duration::from_millis(1100));
    write_tokens(&dir.path().join("tokens.csv"), ROTATED);
    let rotated = token_file(dir.path(), "rotated", ROTATED);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (old, _) = as_(&["--token-file", &reader, "get", "vsvc"], None);
        let (new, out) = as_(&["--token-file", &rotated, "get", "vsvc"], None);
        if old != 0 && new == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated tokens file was not picked up: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Refusals are logged (with the caller's name) and counted.
    let log = plain(&plane.log());
    assert!(log.contains("call refused (UNAUTHENTICATED)"), "{log}");
    assert!(
        log.contains("call refused (PERMISSION_DENIED)") && log.contains("caller=\"ci\""),
        "{log}"
    );
    assert!(log.contains("API tokens reloaded"), "{log}");
    let m = metrics(admin_port);
    assert!(
        metric(&m, "l7mp_control_api_refused_total{code=\"UNAUTHENTICATED\"}") >= 3,
        "{m}"
    );
    assert!(
        metric(&m, "l7mp_control_api_refused_total{code=\"PERMISSION_DENIED\"}") >= 3,
        "{m}"
    );

    // No token anywhere in what was logged or answered.
    assert_no_secret("the control plane's log", &log);
    assert_no_secret("l7mpctl's answers", &answers);
}

/// `l7mpctl certs ...` in `dir`; panics unless it succeeds.
fn certs(plane_less: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_l7mpctl"))
        .arg("certs")
        .args(plane_less)
        .output()
        .expect("l7mpctl certs");
    assert!(
        out.status.success(),
        "l7mpctl certs {plane_less:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn client_certificates_carry_roles_under_mtls() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = |rel: &str| dir.path().join(rel).display().to_string();
    certs(&["ca", "--out", &p("ca")]);
    certs(&[
        "server",
        "--ca",
        &p("ca"),
        "--name",
        "localhost,127.0.0.1",
        "--out",
        &p("server"),
    ]);
    certs(&["agent", "--ca", &p("ca"), "--node-id", "gw-1", "--out", &p("gw-1")]);
    for role in ["reader", "operator", "admin"] {
        certs(&[
            "client",
            "--ca",
            &p("ca"),
            "--name",
            &format!("{role}-user"),
            "--role",
            role,
            "--out",
            &p(role),
        ]);
    }
    // `--role` is required: no certificate gets a role by accident.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_l7mpctl"))
        .args(["certs", "client", "--ca", &p("ca"), "--name", "x", "--out", &p("x")])
        .output()
        .expect("l7mpctl");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--role"),
        "{out:?}"
    );
    let tokens = dir.path().join("tokens.csv");
    write_tokens(&tokens, READER);
    let with = |who: &str| -> Vec<String> {
        let (cert, key) = if who == "gw-1" {
            (p("gw-1/agent.pem"), p("gw-1/agent.key"))
        } else {
            (p(&format!("{who}/client.pem")), p(&format!("{who}/client.key")))
        };
        [
            "--ca".into(),
            p("ca/ca.pem"),
            "--cert".into(),
            cert,
            "--key".into(),
            key,
        ]
        .to_vec()
    };
    let admin_args = with("admin");
    let plane = Plane::start_with(
        &[
            "--tls-cert",
            &p("server/server.pem"),
            "--tls-key",
            &p("server/server.key"),
            "--tls-client-ca",
            &p("ca/ca.pem"),
            "--api-tokens",
            &tokens.display().to_string(),
        ],
        &admin_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let run = |who: &str, extra: &[&str], stdin: Option<&str>| {
        let mut args = with(who);
        args.extend(extra.iter().map(|s| s.to_string()));
        plane.ctl_as(&args.iter().map(String::as_str).collect::<Vec<_>>(), stdin)
    };

    let (code, out) = run("reader", &["get", "vsvc"], None);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run("reader", &["apply", "-f", "-"], Some(SERVICE));
    assert!(
        code != 0 && out.contains("needs the operator role; client certificate \"reader-user\" has reader"),
        "{out}"
    );
    let (code, out) = run("operator", &["apply", "-f", "-"], Some(SERVICE));
    assert_eq!(code, 0, "{out}");
    let (code, out) = run("operator", &["apply", "-f", "-"], Some(RULE));
    assert!(code != 0 && out.contains("needs the admin role"), "{out}");
    let (code, out) = run("admin", &["apply", "-f", "-"], Some(RULE));
    assert_eq!(code, 0, "{out}");
    // A token sent over the connection wins over the certificate's role.
    let (code, out) = run("reader", &["--token", OPERATOR, "delete", "vsvc", "gateway"], None);
    assert_eq!(code, 0, "the operator token applies, not the reader certificate: {out}");
    // An agent's certificate never uses the Management API.
    let (code, out) = run("gw-1", &["get", "vsvc"], None);
    assert!(
        code != 0 && out.contains("an agent's certificate cannot use the Management API"),
        "{out}"
    );
    let log = plain(&plane.log());
    assert!(
        log.contains("call refused (PERMISSION_DENIED)") && log.contains("reader-user"),
        "{log}"
    );
    assert_no_secret("the control plane's log", &log);
}

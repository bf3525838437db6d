//! mTLS between agents, `l7mpctl` and `l7mp-control`, end to end with the real binaries on loopback: certificates
//! from `l7mpctl certs`; an agent with its certificate gets its configuration and carries traffic; no client
//! certificate, a certificate of another CA, and node A's certificate asking for node B are refused (both sides'
//! logs say why, and B gets nothing); an agent's certificate cannot use the Management API; the server certificate
//! rotated on disk is served to new connections without a restart (a broken file keeps the old one), and an agent's
//! rewritten certificate is used at its next connection; `openssl s_client` shows the client-certificate
//! requirement; a non-loopback plaintext port is refused without `--insecure`.
//!
//! Needs `l7mp-control` and `l7mpctl` built next to the agent (`cargo build --workspace`).

#![allow(clippy::unwrap_used)]

mod common;

use common::{Agent, free_port, recv, sibling_binary, udp_client};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs `l7mpctl` and returns (success, stdout + stderr).
fn l7mpctl(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(sibling_binary("l7mpctl"))
        .args(args)
        .env_remove("L7MP_SERVER")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("l7mpctl");
    if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
        i.write_all(text.as_bytes()).expect("stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("l7mpctl output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A PKI made with `l7mpctl certs`: a CA, the control plane's certificate for 127.0.0.1, agents gw-1 and gw-2, a
/// client, and an agent gw-1 of another CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tmp");
        let p = |s: &str| dir.path().join(s).display().to_string();
        let run = |args: &[&str]| {
            let (ok, out) = l7mpctl(args, None);
            assert!(ok, "l7mpctl {args:?}: {out}");
        };
        run(&["certs", "ca", "--out", &p("ca")]);
        run(&[
            "certs",
            "server",
            "--ca",
            &p("ca"),
            "--name",
            "localhost,127.0.0.1",
            "--out",
            &p("server"),
        ]);
        run(&[
            "certs",
            "agent",
            "--ca",
            &p("ca"),
            "--node-id",
            "gw-1",
            "--out",
            &p("gw-1"),
        ]);
        run(&[
            "certs",
            "agent",
            "--ca",
            &p("ca"),
            "--node-id",
            "gw-2",
            "--out",
            &p("gw-2"),
        ]);
        run(&[
            "certs",
            "client",
            "--ca",
            &p("ca"),
            "--name",
            "test",
            "--role",
            "operator",
            "--out",
            &p("client"),
        ]);
        run(&["certs", "ca", "--out", &p("other-ca")]);
        run(&[
            "certs",
            "agent",
            "--ca",
            &p("other-ca"),
            "--node-id",
            "gw-1",
            "--out",
            &p("other-gw-1"),
        ]);
        Pki { dir }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    /// `l7mpctl` with the client certificate.
    fn ctl(&self, port: u16, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let server = format!("https://127.0.0.1:{port}");
        let (ca, cert, key) = (
            self.path("ca/ca.pem"),
            self.path("client/client.pem"),
            self.path("client/client.key"),
        );
        let mut all = vec!["--server", &server, "--ca", &ca, "--cert", &cert, "--key", &key];
        all.extend_from_slice(args);
        l7mpctl(&all, stdin)
    }
}

/// The control plane with mTLS on `port` and its admin listener on a free port;
/// returns it, its store directory (kept while it runs) and the admin port.
fn control(pki: &Pki, port: u16) -> (Agent, tempfile::TempDir, u16) {
    let listen = format!("127.0.0.1:{port}");
    let admin_port = free_port();
    let admin = format!("127.0.0.1:{admin_port}");
    let dir = tempfile::tempdir().expect("tmp");
    let store = format!("embedded:{}", dir.path().join("store").display());
    let (cert, key, ca) = (
        pki.path("server/server.pem"),
        pki.path("server/server.key"),
        pki.path("ca/ca.pem"),
    );
    let ctl = Agent::start_program(
        &[],
        "l7mp-control",
        &[
            "--listen",
            &listen,
            "--store",
            &store,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
            "--admin",
            &admin,
        ],
        "l7mp-control running",
    );
    (ctl, dir, admin_port)
}

/// The value of a metric line of the control plane's `/metrics`.
fn metric(admin_port: u16, name: &str) -> f64 {
    let (status, _, body) = common::api::http(admin_port, "GET", "/metrics", None, "");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

/// An agent of `node` at the control plane on `port`, with the certificate in `cert_dir` (`None`: none).
fn agent(pki: &Pki, port: u16, node: &str, cert_dir: Option<&str>) -> Agent {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("empty.yaml");
    std::fs::write(&cfg, "listeners: []\n").expect("config");
    let url = format!("https://127.0.0.1:{port}");
    let ca = pki.path("ca/ca.pem");
    let mut args = vec![
        "--xds".to_owned(),
        url,
        "--node-id".into(),
        node.into(),
        "--xds-ca".into(),
        ca,
    ];
    if let Some(d) = cert_dir {
        args.extend([
            "--xds-cert".into(),
            pki.path(&format!("{d}/agent.pem")),
            "--xds-key".into(),
            pki.path(&format!("{d}/agent.key")),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start_file(&cfg, dir, &args)
}

fn echo_yaml(port: u16) -> String {
    format!(
        "apiVersion: l7mp.io/v1\nkind: Target\nmetadata: {{name: echo}}\nspec:\n  cluster:\n    spec: {{protocol: Echo}}\n\
         ---\napiVersion: l7mp.io/v1\nkind: VirtualService\nmetadata: {{name: udp-echo}}\nspec:\n  listener:\n    \
         spec: {{protocol: UDP, port: {port}}}\n    rules:\n      - action: {{route: {{destinationRef: echo}}}}\n"
    )
}

/// Waits until `f` holds, up to `secs`.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn agents_need_a_certificate_of_their_own_node() {
    let pki = Pki::new();
    let port = free_port();
    let (ctl, _store, admin) = control(&pki, port);
    let echo_port = free_port();
    assert_eq!(metric(admin, "l7mp_control_tls_handshake_failures_total"), 0.0);
    let (ok, out) = pki.ctl(port, &["apply", "-f", "-"], Some(&echo_yaml(echo_port)));
    assert!(ok && out.contains("Accepted"), "apply over mTLS: {out}");

    // A valid certificate: the configuration arrives and traffic flows.
    let gw1 = agent(&pki, port, "gw-1", Some("gw-1"));
    gw1.wait_log("xDS: connected");
    gw1.wait_log("listener started");
    let c = udp_client(echo_port);
    c.send(b"over mtls").expect("send");
    assert_eq!(recv(&c), b"over mtls");
    let (ok, agents) = pki.ctl(port, &["agents"], None);
    assert!(ok && agents.contains("gw-1"), "{agents}");

    // No client certificate: the handshake fails; the control plane says why, the agent says what it lacks.
    let bare = agent(&pki, port, "gw-2", None);
    let line = bare.wait_log("xDS: cannot connect");
    assert!(line.contains("no client certificate was presented"), "{line}");
    ctl.wait_log("TLS handshake failed: peer sent no certificates");
    assert!(metric(admin, "l7mp_control_tls_handshake_failures_total") >= 1.0);

    // A certificate of another CA (for the right node id; made by the same tool, so the CA's name is the same):
    // refused in the handshake.
    let other = agent(&pki, port, "gw-1", Some("other-gw-1"));
    other.wait_log("xDS: cannot connect");
    ctl.wait_log("TLS handshake failed: invalid peer certificate: BadSignature");

    // gw-1's certificate asking for gw-2: PERMISSION_DENIED naming both, and nothing sent.
    let liar = agent(&pki, port, "gw-2", Some("gw-1"));
    let line = liar.wait_log("xDS: the stream failed");
    assert!(
        line.contains("does not have permission") && line.contains(r#"node "gw-1""#) && line.contains(r#"node "gw-2""#),
        "{line}"
    );
    let refused = ctl.wait_log("xDS stream refused");
    assert!(
        refused.contains(r#"node "gw-1""#) && refused.contains("gw-2"),
        "{refused}"
    );
    std::thread::sleep(Duration::from_millis(500));
    for a in [&bare, &other, &liar] {
        assert_eq!(a.count_log("configuration applied"), 0, "{:?}", a.log_lines());
        assert_eq!(a.count_log("listener started"), 0);
    }
    let (_, agents) = pki.ctl(port, &["agents"], None);
    assert!(!agents.contains("gw-2"), "gw-2 was never registered:\n{agents}");

    // The valid agent still carries traffic; l7mpctl without a client certificate is refused with a hint.
    c.send(b"still").expect("send");
    assert_eq!(recv(&c), b"still");
    let server = format!("https://127.0.0.1:{port}");
    let (ok, out) = l7mpctl(&["--server", &server, "--ca", &pki.path("ca/ca.pem"), "status"], None);
    assert!(!ok && out.contains("no client certificate was presented"), "{out}");
    let (ok, out) = l7mpctl(&["--server", &server, "status"], None);
    assert!(!ok && out.contains("needs --ca"), "{out}");
    // An agent's certificate streams its own configuration but cannot change the mesh.
    let (ca, cert, key) = (
        pki.path("ca/ca.pem"),
        pki.path("gw-1/agent.pem"),
        pki.path("gw-1/agent.key"),
    );
    let as_agent = [
        "--server", &server, "--ca", &ca, "--cert", &cert, "--key", &key, "delete", "vsvc", "udp-echo",
    ];
    let (ok, out) = l7mpctl(&as_agent, None);
    assert!(
        !ok && out.contains("an agent's certificate cannot use the Management API"),
        "{out}"
    );
    ctl.wait_log("call refused (PERMISSION_DENIED): the client certificate is node \"gw-1\"'s");
    // Nor read other nodes' configurations through CSDS; a client certificate can.
    assert_eq!(csds(&pki, port, "gw-1"), Err(tonic::Code::PermissionDenied));
    assert_eq!(csds(&pki, port, "client"), Ok(1), "CSDS lists gw-1 to a client");
    c.send(b"not deleted").expect("send");
    assert_eq!(recv(&c), b"not deleted");
}

/// Asks CSDS for every node over mTLS with the certificate in `dir` (`agent.*` or `client.*`); the number of nodes.
fn csds(pki: &Pki, port: u16, dir: &str) -> Result<usize, tonic::Code> {
    use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
    use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let stem = if dir == "client" { "client" } else { "agent" };
    let read = |p: String| std::fs::read(p).expect("pem");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(pki.path("ca/ca.pem"))))
        .identity(Identity::from_pem(
            read(pki.path(&format!("{dir}/{stem}.pem"))),
            read(pki.path(&format!("{dir}/{stem}.key"))),
        ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .expect("url")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect");
        let mut client = ClientStatusDiscoveryServiceClient::new(channel);
        client
            .fetch_client_status(ClientStatusRequest::default())
            .await
            .map(|r| r.into_inner().config.len())
            .map_err(|s| s.code())
    })
}

/// The leaf certificate the control plane serves to a new connection (a rustls client with the client certificate).
fn served_cert(pki: &Pki, port: u16) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.path("ca/ca.pem")).expect("ca"))
        .expect("root");
    let chain = vec![CertificateDer::from_pem_file(pki.path("client/client.pem")).expect("cert")];
    let key = PrivateKeyDer::from_pem_file(pki.path("client/client.key")).expect("key");
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("conn");
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).expect("handshake");
    }
    conn.peer_certificates().expect("peer certs")[0].to_vec()
}

fn pem_der(path: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path).expect("pem").to_vec()
}

/// `openssl x509 -serial` of a PEM certificate, if openssl is installed.
fn serial(pem: &str) -> Option<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in", pem])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn server_certificate_rotation_needs_no_restart() {
    let pki = Pki::new();
    let port = free_port();
    let (ctl, _store, _admin) = control(&pki, port);
    let server_pem = pki.path("server/server.pem");
    let first = pem_der(&server_pem);
    assert_eq!(served_cert(&pki, port), first);
    let gw1 = agent(&pki, port, "gw-1", Some("gw-1"));
    gw1.wait_log("xDS: connected");

    // A new certificate from the same CA (new key, new serial), written over the old files.
    let old_serial = serial(&server_pem);
    let (ok, out) = l7mpctl(
        &[
            "certs",
            "server",
            "--ca",
            &pki.path("ca"),
            "--name",
            "127.0.0.1",
            "--out",
            &pki.path("server"),
            "--force",
        ],
        None,
    );
    assert!(ok, "{out}");
    let second = pem_der(&server_pem);
    assert_ne!(first, second);
    if let (Some(a), Some(b)) = (old_serial, serial(&server_pem)) {
        assert_ne!(a, b, "a new serial");
        println!("serial {a} -> {b}");
    }
    eventually(5, "the new certificate is served", || served_cert(&pki, port) == second);
    ctl.wait_log("TLS: certificates reloaded");

    // A broken file keeps the certificate in force and says which file.
    // (The files are looked at when a connection arrives, at most once a second.)
    std::fs::write(&server_pem, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(served_cert(&pki, port), second);
    let line = ctl.wait_log("TLS: keeping the certificates in force");
    assert!(line.contains("server.pem"), "{line}");
    // Agents still connect (the open stream was never touched; a new agent gets the current certificate).
    let gw2 = agent(&pki, port, "gw-2", Some("gw-2"));
    gw2.wait_log("xDS: connected");
    assert_eq!(gw1.count_log("xDS: cannot connect"), 0);

    // The agent side: an agent whose files hold another CA's certificate is refused; once a good certificate is
    // written over them, its next attempt connects, without a restart.
    let gw3 = agent(&pki, port, "gw-1", Some("other-gw-1"));
    gw3.wait_log("xDS: cannot connect");
    let (ok, out) = l7mpctl(
        &[
            "certs",
            "agent",
            "--ca",
            &pki.path("ca"),
            "--node-id",
            "gw-1",
            "--out",
            &pki.path("other-gw-1"),
            "--force",
        ],
        None,
    );
    assert!(ok, "{out}");
    eventually(15, "the agent connects with its new certificate", || {
        gw3.count_log("xDS: connected") > 0
    });
}

#[test]
fn openssl_sees_the_client_certificate_requirement() {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var("L7MP_REQUIRE_CLIENTS").as_deref() != Ok("1"),
            "openssl is missing and L7MP_REQUIRE_CLIENTS=1"
        );
        println!("SKIP: openssl is not installed");
        return;
    }
    let pki = Pki::new();
    let port = free_port();
    let (ctl, _store, _admin) = control(&pki, port);
    let s_client = |extra: &[&str]| {
        let connect = format!("127.0.0.1:{port}");
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &connect,
                "-CAfile",
                &pki.path("ca/ca.pem"),
                "-tls1_2",
            ])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let without = s_client(&[]);
    assert!(without.contains("Acceptable client certificate CA names"), "{without}");
    assert!(
        without.contains("O=l7mp, CN=l7mp development CA") || without.contains("O = l7mp"),
        "{without}"
    );
    assert!(without.contains("alert"), "the server aborts the handshake:\n{without}");
    ctl.wait_log("TLS handshake failed: peer sent no certificates");
    let (cert, key) = (pki.path("client/client.pem"), pki.path("client/client.key"));
    let with = s_client(&["-cert", &cert, "-key", &key]);
    assert!(with.contains("Verify return code: 0 (ok)"), "{with}");
    assert!(!with.contains("alert"), "{with}");
}

#[test]
fn plaintext_outside_loopback_needs_insecure() {
    let out = Command::new(sibling_binary("l7mp-control"))
        .args(["--listen", "0.0.0.0:0", "--store", "embedded:/nonexistent/never-opened"])
        .output()
        .expect("l7mp-control");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not a loopback address") && err.contains("--tls-cert") && err.contains("--insecure"),
        "{err}"
    );
}

//! End-to-end TLS tests through the real agent with independent clients and servers (`openssl s_client`, Python's
//! `ssl`): TLS listener → TCP, TCP → TLS cluster, mTLS, refusals with their reasons (wrong CA, expired certificate,
//! wrong server name, missing client certificate), certificate rotation on disk, routing on `TLS` metadata.

#![allow(clippy::unwrap_used)]

mod common;
use common::tls::*;
use common::*;

fn python() -> Option<String> {
    python_with("ssl")
}

/// A TLS listener on `port` (with `tls` as its YAML flow-mapping body) whose sessions go to `dest` (a cluster spec
/// with endpoints, YAML flow).
fn tls_listener(port: u16, tls: &str, rules: &str) -> String {
    format!(
        "listeners:\n  - name: tls\n    spec: {{protocol: TLS, port: {port}, address: 127.0.0.1, tls: {{{tls}}}}}\n    rules: {rules}\n"
    )
}

fn to_echo_server(echo: u16) -> String {
    format!(
        "[{{action: {{route: {{destination: {{spec: {{protocol: TCP, port: {echo}}}, endpoints: [{{spec: {{address: 127.0.0.1}}}}]}}}}}}}}]"
    )
}

#[test]
fn tls_listener_to_tcp_serves_openssl_and_python_clients() {
    let Some(py) = python() else { return };
    let Some(_) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let port = free_port();
    let echo = tcp_echo_server();
    let tls = format!("cert: {}, key: {}", pki.path("server.pem"), pki.path("server.key"));
    let _agent = Agent::start(&tls_listener(port, &tls, &to_echo_server(echo)));

    let (ok, out) = s_client_verify(port, &pki.path("ca.pem"), Some("localhost"));
    assert!(ok, "openssl s_client: {out}");
    assert!(out.contains("Verification: OK"), "{out}");
    assert!(out.contains("CN = localhost") || out.contains("CN=localhost"), "{out}");

    let r = py_client(&py, port, &pki.path("ca.pem"), "localhost", None, "hello through TLS");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["echo"], "hello through TLS");
    assert_eq!(r["version"], "TLSv1.3");
}

#[test]
fn tls_refusals_say_why() {
    let Some(_) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let echo = tcp_echo_server();
    let port = free_port();
    let tls = format!("cert: {}, key: {}", pki.path("server.pem"), pki.path("server.key"));
    let agent = Agent::start(&tls_listener(port, &tls, &to_echo_server(echo)));

    // A client that trusts another CA.
    let (ok, out) = s_client_verify(port, &pki.path("other-ca.pem"), Some("localhost"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("unable to get local issuer certificate") || out.contains("unable to verify"),
        "{out}"
    );
    agent.wait_log("TLS handshake failed");

    // A client that expects another name.
    let (ok, out) = s_client_verify(port, &pki.path("ca.pem"), Some("wrong.example"));
    assert!(!ok, "{out}");
    assert!(out.contains("hostname mismatch"), "{out}");

    // An agent whose certificate has expired.
    let port2 = free_port();
    let tls = format!("cert: {}, key: {}", pki.path("expired.pem"), pki.path("expired.key"));
    let _expired = Agent::start(&tls_listener(port2, &tls, &to_echo_server(echo)));
    let (ok, out) = s_client_verify(port2, &pki.path("ca.pem"), Some("localhost"));
    assert!(!ok, "{out}");
    assert!(out.contains("certificate has expired"), "{out}");
}

#[test]
fn mtls_required_refuses_clients_without_a_certificate_and_routes_on_the_peer() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let echo = tcp_echo_server();
    let port = free_port();
    // alice's sessions go to Echo; everyone else's to a TCP echo server behind a JSONEncap (so the reply shows the
    // session's metadata).
    let rules = format!(
        "[{{match: {{op: test, path: /TLS/peer/subject, value: CN=alice}}, action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}, \
          {{action: {{route: {{destination: {{spec: {{protocol: TCP, port: {echo}}}, endpoints: [{{spec: {{address: 127.0.0.1}}}}]}}, ingress: [{{spec: {{protocol: JSONEncap}}}}]}}}}}}]"
    );
    let tls = format!(
        "cert: {}, key: {}, ca: {}, client_auth: required",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem")
    );
    let agent = Agent::start(&tls_listener(port, &tls, &rules));

    let none = py_client(&py, port, &pki.path("ca.pem"), "localhost", None, "anyone?");
    assert_eq!(none["ok"], false, "{none}");
    let err = none["error"].as_str().unwrap();
    assert!(
        err.contains("CERTIFICATE_REQUIRED") || err.contains("certificate required"),
        "{err}"
    );
    assert!(agent.wait_log("TLS handshake failed").contains("no certificates"));

    // A client certificate from another CA.
    pki.save("mallory", &pki.other_ca.issue("mallory", &["mallory.example"], false));
    let foreign = py_client(
        &py,
        port,
        &pki.path("ca.pem"),
        "localhost",
        Some((&pki.path("mallory.pem"), &pki.path("mallory.key"))),
        "me?",
    );
    assert_eq!(foreign["ok"], false, "{foreign}");
    agent.wait_log("UnknownIssuer");

    let alice = py_client(
        &py,
        port,
        &pki.path("ca.pem"),
        "localhost",
        Some((&pki.path("alice.pem"), &pki.path("alice.key"))),
        "alice here",
    );
    assert_eq!(alice["ok"], true, "{alice}");
    assert_eq!(alice["echo"], "alice here", "alice's session goes to Echo");

    let bob = py_client(
        &py,
        port,
        &pki.path("ca.pem"),
        "localhost",
        Some((&pki.path("bob.pem"), &pki.path("bob.key"))),
        "b",
    );
    assert_eq!(bob["ok"], true, "{bob}");
    // The echo server returns the envelope (the client reads at least as many bytes as it sent).
    let echo = bob["echo"].as_str().unwrap();
    assert!(echo.starts_with('{'), "bob's session is wrapped in JSONEncap: {echo}");
}

#[test]
fn tls_metadata_is_in_the_session() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let port = free_port();
    let tls = format!(
        "cert: {}, key: {}, ca: {}, client_auth: optional, alpn: [echo/1]",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem")
    );
    let rules =
        "[{action: {route: {destination: {spec: {protocol: Echo}}, ingress: [{spec: {protocol: JSONEncap}}]}}}]";
    let _agent = Agent::start(&tls_listener(port, &tls, rules));
    // The envelope is about 700 bytes: ask for that many back (the client reads until it has as many as it sent).
    let r = py_client(
        &py,
        port,
        &pki.path("ca.pem"),
        "localhost",
        Some((&pki.path("alice.pem"), &pki.path("alice.key"))),
        &"x".repeat(600),
    );
    assert_eq!(r["ok"], true, "{r}");
    let echo = r["echo"].as_str().unwrap();
    let env: serde_json::Value = serde_json::from_str(echo).unwrap_or_else(|e| panic!("{e}: {echo}"));
    let t = &env["metadata"]["TLS"];
    assert_eq!(t["sni"], "localhost", "{t}");
    assert_eq!(t["version"], "TLSv1.3", "{t}");
    assert!(t["cipher"].as_str().unwrap().starts_with("TLS13_"), "{t}");
    assert_eq!(t["peer"]["subject"], "CN=alice", "{t}");
    assert_eq!(t["peer"]["sans"], serde_json::json!(["DNS:alice.example"]), "{t}");
    assert_eq!(t["peer"]["fingerprint_sha256"].as_str().unwrap().len(), 64, "{t}");
}

#[test]
fn tcp_to_tls_cluster_verifies_the_upstream() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let good = PyServer::start(
        &py,
        &pki.path("server.pem"),
        &pki.path("server.key"),
        Some(&pki.path("ca.pem")),
    );
    let foreign = PyServer::start(&py, &pki.path("foreign.pem"), &pki.path("foreign.key"), None);
    let expired = PyServer::start(&py, &pki.path("expired.pem"), &pki.path("expired.key"), None);
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let client = format!(
        "ca: {}, cert: {}, key: {}",
        pki.path("ca.pem"),
        pki.path("alice.pem"),
        pki.path("alice.key")
    );
    let listener = |name: &str, port: u16, up: u16, tls: &str| {
        format!(
            "  - name: {name}\n    spec: {{protocol: TCP, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: TLS, port: {up}, tls: {{{tls}}}}}, endpoints: [{{spec: {{address: {host}}}}}]}}}}}}}}]\n",
            host = if name == "byip" { "127.0.0.1" } else { "localhost" }
        )
    };
    let yaml = format!(
        "listeners:\n{}{}{}{}",
        listener("good", ports[0], good.port, &client),
        listener("foreign", ports[1], foreign.port, &client),
        listener("expired", ports[2], expired.port, &client),
        listener(
            "wrongname",
            ports[3],
            good.port,
            &format!("{client}, server_name: wrong.example")
        ),
    );
    let agent = Agent::start(&yaml);
    let data = pattern(300_000, 7);
    assert_eq!(
        round_trip(tcp_client(ports[0]), data.clone()),
        data,
        "TCP → TLS → echo and back"
    );

    for (i, why) in [
        (1, "UnknownIssuer"),
        (2, "certificate expired"),
        (3, "not valid for name"),
    ] {
        let got = round_trip(tcp_client(ports[i]), b"x".to_vec());
        assert!(got.is_empty(), "no upstream, no echo");
        let line = agent.wait_log(why);
        assert!(line.contains("TLS handshake with"), "{line}");
    }
}

#[test]
fn certificate_rotation_on_disk_takes_effect_without_restart() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.save("live", &pki.ca.issue("localhost", &["localhost"], false));
    let port = free_port();
    let tls = format!("cert: {}, key: {}", pki.path("live.pem"), pki.path("live.key"));
    let agent = Agent::start(&tls_listener(
        port,
        &tls,
        "[{action: {route: {destination: {spec: {protocol: Echo}}}}}]",
    ));
    let ca = pki.path("ca.pem");
    let first = py_client(&py, port, &ca, "localhost", None, "1");
    assert_eq!(first["ok"], true, "{first}");

    // A new certificate and key: new connections get it once the agent has looked (about once a second).
    let next = pki.ca.issue("localhost", &["localhost"], false);
    pki.save("live", &next);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let second = loop {
        let r = py_client(&py, port, &ca, "localhost", None, "2");
        assert_eq!(r["ok"], true, "{r}");
        if r["fingerprint"] != first["fingerprint"] || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_ne!(
        second["fingerprint"], first["fingerprint"],
        "the new certificate is served"
    );
    agent.wait_log("reloaded");

    // A broken certificate file: the previous certificate stays, and the log says which file and why.
    pki.write(
        "live.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while agent.count_log("do not load") == 0 && std::time::Instant::now() < deadline {
        let r = py_client(&py, port, &ca, "localhost", None, "3");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(
            r["fingerprint"], second["fingerprint"],
            "the previous certificate stays"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let line = agent.wait_log("do not load");
    assert!(line.contains("live.pem"), "{line}");
}

#[test]
fn bad_tls_files_reject_the_configuration_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let port = free_port();
    let cases = [
        (
            format!(
                "cert: {}/missing.pem, key: {}",
                dir.path().display(),
                pki.path("server.key")
            ),
            "spec.tls.cert",
            "cannot read",
        ),
        (
            format!("cert: {}, key: {}", pki.path("server.pem"), pki.path("alice.key")),
            "spec.tls.key",
            "is not the key of",
        ),
        (
            format!("cert: {}, key: {}", pki.path("ca.pem"), pki.path("ca.pem")),
            "spec.tls.key",
            "no PEM private key",
        ),
        (
            format!(
                "cert: {}, key: {}, client_auth: required",
                pki.path("server.pem"),
                pki.path("server.key")
            ),
            "spec.tls.ca",
            "missing required field",
        ),
        (
            format!(
                "sni: [{{server_name: a.example, cert: {}, key: {}}}]",
                pki.path("server.pem"),
                pki.path("alice.key")
            ),
            "spec.tls.sni[0].key",
            "is not the key of",
        ),
    ];
    for (tls, field, why) in cases {
        let rules = "[{action: {route: {destination: {spec: {protocol: Echo}}}}}]";
        let (code, err) = run_to_exit(&tls_listener(port, &tls, rules), "bad-tls.yaml");
        assert_ne!(code, Some(0), "{err}");
        assert!(err.contains(field) && err.contains(why), "{field} / {why}: {err}");
    }
    // DTLS listeners have one certificate: `sni` is refused, naming it.
    let dtls = format!(
        "listeners:\n  - name: d\n    spec: {{protocol: DTLS, port: {port}, address: 127.0.0.1, tls: {{sni: [{{server_name: a.example, cert: {}, key: {}}}]}}}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]\n",
        pki.path("server.pem"),
        pki.path("server.key")
    );
    let (code, err) = run_to_exit(&dtls, "bad-dtls.yaml");
    assert!(
        code != Some(0) && err.contains("spec.tls.sni") && err.contains("not supported on DTLS"),
        "{err}"
    );
}

/// `https` and `wss` with independent clients (Python `httpx` over HTTP/1.1 and HTTP/2, `websockets`), directly and
/// through a plain listener → TLS cluster → TLS listener chain in the same agent.
#[test]
fn https_and_wss_listeners_and_clusters() {
    let Some(py) = python_with("httpx, h2, websockets") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (https, http, wss, ws) = (free_port(), free_port(), free_port(), free_port());
    let (cert, key, ca) = (pki.path("server.pem"), pki.path("server.key"), pki.path("ca.pem"));
    let encap_echo =
        "[{action: {route: {destination: {spec: {protocol: Echo}}, ingress: [{spec: {protocol: JSONEncap}}]}}}]";
    let yaml = format!(
        "listeners:
  - name: https
    spec: {{protocol: HTTP, port: {https}, address: 127.0.0.1, tls: {{cert: {cert}, key: {key}, alpn: [h2, http/1.1]}}}}
    rules: {encap_echo}
  - name: http
    spec: {{protocol: HTTP, port: {http}, address: 127.0.0.1}}
    rules: [{{action: {{route: {{destination: {{spec: {{protocol: HTTP, port: {https}, tls: {{ca: {ca}}}}}, endpoints: [{{spec: {{address: localhost}}}}]}}}}}}}}]
  - name: wss
    spec: {{protocol: WebSocket, port: {wss}, address: 127.0.0.1, tls: {{cert: {cert}, key: {key}}}}}
    rules: {encap_echo}
  - name: ws
    spec: {{protocol: WebSocket, port: {ws}, address: 127.0.0.1}}
    rules: [{{action: {{route: {{destination: {{spec: {{protocol: WebSocket, port: {wss}, tls: {{ca: {ca}}}}}, endpoints: [{{spec: {{address: localhost}}}}]}}}}}}}}]
"
    );
    let _agent = Agent::start(&yaml);
    let script = r#"
import json, ssl, sys, httpx
from websockets.sync.client import connect
https, http, wss, ws, ca = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
out = {}
for h2 in (False, True):
    with httpx.Client(verify=ssl.create_default_context(cafile=ca), http2=h2, timeout=5) as c:
        r = c.post("https://localhost:%d/x" % https, content=b"hello https")
        out["https-h2" if h2 else "https"] = [r.http_version, r.status_code, json.loads(r.content)["metadata"]]
with httpx.Client(timeout=5) as c:
    r = c.post("http://127.0.0.1:%d/x" % http, content=b"hello http")
    out["http-to-https"] = [r.http_version, r.status_code, json.loads(r.content)["metadata"]]
with connect("wss://localhost:%d/w" % wss, ssl=ssl.create_default_context(cafile=ca)) as c:
    c.send(b"hello wss")
    out["wss"] = json.loads(c.recv(timeout=5))["metadata"]
with connect("ws://127.0.0.1:%d/w" % ws) as c:
    c.send(b"hello ws")
    out["ws-to-wss"] = json.loads(c.recv(timeout=5))["metadata"]
print(json.dumps(out))
"#;
    let out = std::process::Command::new(&py)
        .args([
            "-c",
            script,
            &https.to_string(),
            &http.to_string(),
            &wss.to_string(),
            &ws.to_string(),
            &ca,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["https"][0], "HTTP/1.1", "{r}");
    assert_eq!(r["https-h2"][0], "HTTP/2", "{r}");
    for k in ["https", "https-h2", "http-to-https"] {
        assert_eq!(r[k][1], 200, "{k}: {r}");
        let m = &r[k][2];
        assert_eq!(m["HTTP"]["url"]["protocol"], "https:", "{k}: {m}");
        assert_eq!(m["TLS"]["sni"], "localhost", "{k}: {m}");
        assert_eq!(m["TLS"]["version"], "TLSv1.3", "{k}: {m}");
    }
    for k in ["wss", "ws-to-wss"] {
        assert_eq!(r[k]["TLS"]["sni"], "localhost", "{k}: {r}");
        assert_eq!(r[k]["listener"], "wss", "{k}: {r}");
    }
}

#[test]
fn certificates_are_chosen_by_sni_with_a_default_and_wildcards() {
    let Some(_) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.path("ca.pem");
    pki.save("api", &pki.ca.issue("api.example.org", &["api.example.org"], false));
    pki.save("wild", &pki.ca.issue("wildcard", &["*.apps.example.org"], false));
    let (port, strict) = (free_port(), free_port());
    let echo = tcp_echo_server();
    let sni = format!(
        "sni: [{{server_name: API.example.org, cert: {}, key: {}}}, {{server_name: '*.apps.example.org', cert: {}, key: {}}}]",
        pki.path("api.pem"),
        pki.path("api.key"),
        pki.path("wild.pem"),
        pki.path("wild.key")
    );
    let with_default = format!(
        "cert: {}, key: {}, {sni}",
        pki.path("server.pem"),
        pki.path("server.key")
    );
    let agent = Agent::start(&format!(
        "{}{}",
        tls_listener(port, &with_default, &to_echo_server(echo)),
        tls_listener(strict, &sni, &to_echo_server(echo))
            .replacen("listeners:\n", "", 1)
            .replace("name: tls", "name: strict")
    ));
    // Which certificate a client asking for `name` gets (its subject line), and whether the handshake worked.
    let ask = |port: u16, name: Option<&str>| s_client_verify(port, &ca, name);
    let subject = |out: &str| {
        out.lines()
            .find(|l| l.contains("Peer certificate:"))
            .unwrap_or_default()
            .to_owned()
    };
    let (ok, out) = ask(port, Some("api.example.org"));
    assert!(ok && subject(&out).contains("api.example.org"), "exact name: {out}");
    let (ok, out) = ask(port, Some("shop.apps.example.org"));
    assert!(ok && subject(&out).contains("wildcard"), "the wildcard: {out}");
    let (ok, out) = ask(port, Some("localhost"));
    assert!(
        ok && subject(&out).contains("localhost"),
        "an unlisted name gets the default: {out}"
    );
    let (ok, out) = ask(port, None);
    assert!(
        ok && subject(&out).contains("localhost"),
        "no SNI gets the default: {out}"
    );
    // A wildcard covers one label only: a.b.apps.example.org gets the default, which is not valid for it.
    let (ok, out) = ask(port, Some("a.b.apps.example.org"));
    assert!(!ok, "one label only: {out}");

    // Without a default certificate, an unknown name is refused, and the agent says why.
    let (ok, out) = ask(strict, Some("api.example.org"));
    assert!(ok && subject(&out).contains("api.example.org"), "{out}");
    let (ok, out) = ask(strict, Some("unknown.example.net"));
    assert!(!ok, "no certificate for an unknown name: {out}");
    agent.wait_log("no certificate for this server name");

    // Traffic flows over a certificate chosen by SNI (Python verifies it against the name it asked for).
    if let Some(py) = python() {
        let r = py_client(
            &py,
            port,
            &pki.path("ca.pem"),
            "x.apps.example.org",
            None,
            "hello by name",
        );
        assert_eq!(r["echo"], "hello by name", "{r}");
    }
}

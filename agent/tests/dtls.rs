//! End-to-end DTLS tests through the real agent: `openssl s_client -dtls1_2` (Debian's) against a DTLS listener
//! (cookie exchange, verification, echo), UDP → DTLS cluster → DTLS listener bridging with message boundaries kept,
//! refusals (wrong CA, missing client certificate) with their reasons, and handshakes that recover from lost flights
//! (a relay drops a ClientHello and part of the server's flight).

#![allow(clippy::unwrap_used)]

mod common;
use common::tls::*;
use common::*;
use std::time::Duration;

/// `openssl s_client -dtls1_2` that sends `line`, waits `secs` for the answer and quits; returns (success, output).
fn dtls_s_client(port: u16, args: &str, line: &str) -> (bool, String) {
    let cmd =
        format!("(printf '{line}\\n'; sleep 1.5) | openssl s_client -dtls1_2 -connect 127.0.0.1:{port} -msg {args}");
    let c = std::process::Command::new("sh")
        .args(["-c", &cmd])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(c, Duration::from_secs(10))
}

#[test]
fn dtls_listener_serves_openssl_s_client_after_a_cookie_exchange() {
    let Some(_) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let port = free_port();
    let echo = udp_server(|d, _| d.to_vec());
    let _agent = Agent::start(&format!(
        "listeners:\n  - name: d\n    spec: {{protocol: DTLS, port: {port}, address: 127.0.0.1, tls: {{cert: {}, key: {}}}}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: UDP, port: {echo}}}, endpoints: [{{spec: {{address: 127.0.0.1}}}}]}}}}}}}}]\n",
        pki.path("server.pem"),
        pki.path("server.key")
    ));
    let (_, out) = dtls_s_client(
        port,
        &format!(
            "-CAfile {} -servername localhost -verify_hostname localhost -verify_return_error",
            pki.path("ca.pem")
        ),
        "hello over dtls",
    );
    // `-msg` dumps each record; OpenSSL 3.0 does not name DTLS messages, so look for the handshake type: the
    // server's first record is a HelloVerifyRequest (type 3) with the cookie, not a ServerHello (type 2).
    let first_reply = out
        .split("<<< ")
        .nth(1)
        .and_then(|r| r.split("<<< ").next())
        .unwrap_or_default();
    let hvr =
        out.split("<<< ").skip(1).take(2).any(|r| {
            r.contains("content_type=22") && r.lines().nth(1).is_some_and(|l| l.trim_start().starts_with("03 "))
        });
    assert!(hvr, "the listener asks for a cookie first ({first_reply}): {out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("DTLSv1.2"), "{out}");
    // The line went to the UDP echo server through the agent and came back.
    assert!(out.matches("hello over dtls").count() >= 1, "{out}");
    assert!(out.lines().any(|l| l.trim() == "hello over dtls"), "echoed: {out}");

    let (ok, out) = dtls_s_client(
        port,
        &format!("-CAfile {} -verify_return_error", pki.path("other-ca.pem")),
        "x",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("unable to get local issuer certificate"), "{out}");
}

#[test]
fn udp_to_dtls_cluster_keeps_message_boundaries_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (udp, dtls, bad, mtls, nocert) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let to = |port: u16, tls: &str| {
        format!(
            "[{{action: {{route: {{destination: {{spec: {{protocol: DTLS, port: {port}, tls: {{{tls}}}}}, endpoints: [{{spec: {{address: 127.0.0.1}}}}]}}}}}}}}]"
        )
    };
    let ca = pki.path("ca.pem");
    let alice = format!(
        "ca: {ca}, cert: {}, key: {}",
        pki.path("alice.pem"),
        pki.path("alice.key")
    );
    let yaml = format!(
        "listeners:
  - name: dtls
    spec: {{protocol: DTLS, port: {dtls}, address: 127.0.0.1, tls: {{cert: {s}, key: {k}, ca: {ca}, client_auth: optional}}}}
    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}, ingress: [{{spec: {{protocol: JSONEncap}}}}]}}}}}}]
  - name: udp
    spec: {{protocol: UDP, port: {udp}, address: 127.0.0.1}}
    rules: {to_good}
  - name: wrongca
    spec: {{protocol: UDP, port: {bad}, address: 127.0.0.1}}
    rules: {to_bad}
  - name: mtls
    spec: {{protocol: DTLS, port: {mtls}, address: 127.0.0.1, tls: {{cert: {s}, key: {k}, ca: {ca}, client_auth: required}}}}
    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]
  - name: nocert
    spec: {{protocol: UDP, port: {nocert}, address: 127.0.0.1}}
    rules: {to_mtls}
",
        s = pki.path("server.pem"),
        k = pki.path("server.key"),
        to_good = to(dtls, &alice),
        to_bad = to(dtls, &format!("ca: {}", pki.path("other-ca.pem"))),
        to_mtls = to(mtls, &format!("ca: {ca}")),
    );
    let agent = Agent::start(&yaml);

    // Each datagram comes back as one JSONEncap envelope: boundaries kept both ways, the DTLS metadata in it.
    let c = udp_client(udp);
    for (i, len) in [1usize, 100, 1400, 5000, 10000].into_iter().enumerate() {
        let msg = pattern(len, i as u64);
        c.send(&msg).unwrap();
        let env: serde_json::Value = serde_json::from_slice(&recv(&c)).unwrap();
        assert_eq!(
            env["payload"].as_str().unwrap().len(),
            len.div_ceil(3) * 4,
            "one message, whole"
        );
        let t = &env["metadata"]["TLS"];
        assert_eq!(t["version"], "DTLSv1.2", "{t}");
        assert_eq!(t["peer"]["subject"], "CN=alice", "{t}");
    }

    let c = udp_client(bad);
    c.send(b"anyone?").unwrap();
    // The listener sends its CA along (OpenSSL completes the chain from its `ca`), so the refusal names that CA.
    let line = agent.wait_log("TLS handshake with wrongca");
    assert!(
        line.contains("self-signed certificate in certificate chain")
            || line.contains("unable to get local issuer certificate"),
        "{line}"
    );

    let c = udp_client(nocert);
    c.send(b"anyone?").unwrap();
    let line = agent.wait_log("peer did not return a certificate");
    assert!(
        line.contains("DTLS handshake failed") && line.contains("mtls"),
        "{line}"
    );
    c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(
        c.recv(&mut [0u8; 100]).is_err(),
        "nothing comes back without a client certificate"
    );
}

/// A UDP relay on `listen` to `server` that drops the datagrams whose ordinal (from 1, per direction) is listed; it
/// counts what it forwarded and dropped. Runs until the process ends (the test's threads die with it).
fn lossy_relay(
    listen: u16,
    server: u16,
    drop_up: &'static [usize],
    drop_down: &'static [usize],
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let front = std::net::UdpSocket::bind(("127.0.0.1", listen)).unwrap();
    let back = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    back.connect(("127.0.0.1", server)).unwrap();
    let dropped = std::sync::Arc::new(AtomicUsize::new(0));
    let client: std::sync::Arc<std::sync::Mutex<Option<std::net::SocketAddr>>> = Default::default();
    let (f2, b2, c2, d2) = (
        front.try_clone().unwrap(),
        back.try_clone().unwrap(),
        client.clone(),
        dropped.clone(),
    );
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while let Ok((len, from)) = f2.recv_from(&mut buf) {
            *c2.lock().unwrap() = Some(from);
            n += 1;
            if drop_up.contains(&n) {
                d2.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let _ = b2.send(&buf[..len]);
        }
    });
    let d3 = dropped.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while let Ok(len) = back.recv(&mut buf) {
            n += 1;
            if drop_down.contains(&n) {
                d3.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            if let Some(c) = *client.lock().unwrap() {
                let _ = front.send_to(&buf[..len], c);
            }
        }
    });
    dropped
}

#[test]
fn lost_handshake_flights_are_retransmitted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (udp, relay, dtls) = (free_port(), free_port(), free_port());
    // Up: the first ClientHello is lost. Down: the HelloVerifyRequest arrives (1st), the first datagram of the
    // server's flight is lost (2nd). Each needs a retransmission by the side whose flight it was or by its peer.
    let dropped = lossy_relay(relay, dtls, &[1], &[2]);
    let yaml = format!(
        "listeners:
  - name: dtls
    spec: {{protocol: DTLS, port: {dtls}, address: 127.0.0.1, tls: {{cert: {s}, key: {k}}}}}
    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]
  - name: udp
    spec: {{protocol: UDP, port: {udp}, address: 127.0.0.1}}
    rules: [{{action: {{route: {{destination: {{spec: {{protocol: DTLS, port: {relay}, tls: {{ca: {ca}, server_name: localhost}}}}, endpoints: [{{spec: {{address: 127.0.0.1}}}}]}}, retry: {{connect_timeout: 20000}}}}}}}}]
",
        s = pki.path("server.pem"),
        k = pki.path("server.key"),
        ca = pki.path("ca.pem"),
    );
    let _agent = Agent::start(&yaml);
    let c = udp_client(udp);
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = std::time::Instant::now();
    c.send(b"through a lossy path").unwrap();
    let mut buf = [0u8; 2048];
    let n = c
        .recv(&mut buf)
        .expect("the handshake recovered from the lost flights and the echo came back");
    assert_eq!(&buf[..n], b"through a lossy path");
    assert_eq!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "both losses happened"
    );
    // Two retransmission timeouts of about a second each, not the 10 s handshake timeout.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

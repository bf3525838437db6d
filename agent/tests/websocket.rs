//! End-to-end WebSocket tests through the real agent: listener and cluster, text and binary messages, boundaries,
//! HTTP metadata for rules, path and subprotocol passed upstream, the close handshake.

#![allow(clippy::unwrap_used, clippy::result_large_err)]

mod common;
use common::*;
use std::net::TcpStream;
use std::sync::mpsc;
use tungstenite::handshake::server::{Request, Response};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

/// Connects (retrying while the agent starts) with a URL or a prepared request.
fn ws_client(req: impl tungstenite::client::IntoClientRequest + Clone) -> WebSocket<MaybeTlsStream<TcpStream>> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match tungstenite::connect(req.clone()) {
            Ok((ws, _)) => {
                if let MaybeTlsStream::Plain(s) = ws.get_ref() {
                    s.set_read_timeout(Some(TIMEOUT)).unwrap();
                }
                return ws;
            }
            Err(e) if std::time::Instant::now() > deadline => panic!("cannot connect: {e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// A WebSocket echo server; reports each request's path and subprotocol header. Returns its port.
fn ws_echo_server(seen: mpsc::Sender<(String, Option<String>)>) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let cb = |req: &Request, mut resp: Response| {
                    let proto = req
                        .headers()
                        .get("sec-websocket-protocol")
                        .map(|v| v.to_str().unwrap().to_owned());
                    if let Some(p) = &proto {
                        resp.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
                    }
                    let _ = seen.send((req.uri().to_string(), proto));
                    Ok(resp)
                };
                let Ok(mut ws) = tungstenite::accept_hdr(s, cb) else {
                    return;
                };
                while let Ok(m) = ws.read() {
                    if (m.is_text() || m.is_binary()) && ws.send(m).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn websocket_listener_to_echo_keeps_messages_and_frame_types() {
    let port = free_port();
    let _agent = Agent::start(&format!(
        "listeners:\n  - name: ws\n    spec: {{protocol: WebSocket, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]\n"
    ));
    let mut ws = ws_client(format!("ws://127.0.0.1:{port}/echo"));
    for i in 0..20 {
        ws.send(Message::text(format!("text message {i}"))).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(format!("text message {i}")));
    }
    let blobs: Vec<Vec<u8>> = (0..20).map(|i| pattern(1 + i * 3000, i as u64)).collect();
    for b in &blobs {
        ws.send(Message::binary(b.clone())).unwrap();
    }
    for b in &blobs {
        assert_eq!(
            ws.read().unwrap(),
            Message::binary(b.clone()),
            "binary, whole, in order"
        );
    }
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
            Ok(_) => continue,
            Err(e) => panic!("close handshake: {e}"),
        }
    }
}

#[test]
fn rules_match_websocket_http_metadata() {
    let port = free_port();
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: ws
    spec: {{ protocol: WebSocket, port: {port}, address: 127.0.0.1 }}
    rules:
      - match: {{ op: starts, path: /HTTP/url/path, value: /admin }}
        action: {{ route: {{ destination: {{ spec: {{ protocol: Echo }} }}, ingress: [ {{ spec: {{ protocol: JSONEncap }} }} ] }} }}
      - action: {{ route: {{ destination: {{ spec: {{ protocol: Echo }} }} }} }}
"#
    ));
    let mut plain = ws_client(format!("ws://127.0.0.1:{port}/chat"));
    plain.send(Message::binary(b"hi".to_vec())).unwrap();
    assert_eq!(plain.read().unwrap(), Message::binary(b"hi".to_vec()));
    let mut admin = ws_client(format!("ws://127.0.0.1:{port}/admin/panel?x=1"));
    admin.send(Message::binary(b"hi".to_vec())).unwrap();
    let env: serde_json::Value = serde_json::from_slice(&admin.read().unwrap().into_data()).unwrap();
    let http = &env["metadata"]["HTTP"];
    assert_eq!(http["method"], "GET");
    assert_eq!(http["url"]["path"], "/admin/panel");
    assert_eq!(http["url"]["query"], "x=1");
    assert_eq!(http["headers"]["host"], format!("127.0.0.1:{port}"));
    assert_eq!(env["metadata"]["TCP"]["dst_port"], port);
}

#[test]
fn udp_to_websocket_cluster_and_back() {
    let (tx, rx) = mpsc::channel();
    let upstream = ws_echo_server(tx);
    let port = free_port();
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: udp-in
    spec: {{ protocol: UDP, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: ws-up }} }} }}]
clusters:
  - name: ws-up
    spec: {{ protocol: WebSocket, port: {upstream} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    ));
    let c = udp_client(port);
    let msgs: Vec<Vec<u8>> = (0..30).map(|i| pattern(1 + i * 400, i as u64)).collect();
    for m in &msgs {
        c.send(m).unwrap();
    }
    for m in &msgs {
        assert_eq!(
            &recv(&c),
            m,
            "datagram -> WebSocket message -> datagram, whole and in order"
        );
    }
    assert_eq!(rx.recv().unwrap().0, "/", "a non-HTTP source asks for /");
}

#[test]
fn a_websocket_message_too_large_for_udp_is_dropped_and_the_session_goes_on() {
    let upstream = udp_server(|m, _| m.to_vec());
    let port = free_port();
    let agent = Agent::start(&format!(
        r#"
listeners:
  - name: ws-in
    spec: {{ protocol: WebSocket, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: udp-up }} }} }}]
clusters:
  - name: udp-up
    spec: {{ protocol: UDP, port: {upstream} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    ));
    let mut ws = ws_client(format!("ws://127.0.0.1:{port}/"));
    ws.send(Message::binary(pattern(100_000, 1))).unwrap();
    ws.send(Message::binary(pattern(65507, 2))).unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Message::binary(pattern(65507, 2)),
        "the largest UDP payload passes, the larger message before it was dropped"
    );
    agent.wait_log("message too large for a datagram");
    assert_eq!(agent.count_log("session failed"), 0);
}

#[test]
fn websocket_to_websocket_passes_path_and_subprotocol() {
    let (tx, rx) = mpsc::channel();
    let upstream = ws_echo_server(tx);
    let port = free_port();
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: ws-in
    spec: {{ protocol: WebSocket, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: ws-up }} }} }}]
clusters:
  - name: ws-up
    spec: {{ protocol: WebSocket, port: {upstream} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    ));
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{port}/room/7?user=a")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat.v1".parse().unwrap());
    let mut ws = ws_client(req);
    ws.send(Message::text("hello through two hops")).unwrap();
    let (path, proto) = rx.recv().unwrap();
    assert_eq!(
        path, "/room/7?user=a",
        "the path and query reach the upstream (no '//path')"
    );
    assert_eq!(
        proto.as_deref(),
        Some("chat.v1"),
        "the subprotocol reaches the upstream"
    );
    let back = ws.read().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "hello through two hops");
}

#[test]
fn independent_python_websockets_client_through_the_agent() {
    let Some(py) = python_with("websockets") else { return };
    let port = free_port();
    let _agent = Agent::start(&format!(
        "listeners:\n  - name: ws\n    spec: {{protocol: WebSocket, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]\n"
    ));
    let out = std::process::Command::new(py)
        .arg(repo_root().join("e2e/clients/ws_client.py"))
        .arg(format!("ws://127.0.0.1:{port}/python"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim() == "ok",
        "python client: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

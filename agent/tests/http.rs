//! End-to-end HTTP tests through the real agent: the HTTP listener (HTTP/1.1 keep-alive and cleartext HTTP/2), the
//! HTTP cluster as a reverse proxy (status, headers and bodies kept, keep-alive pool, HTTP/2 upstreams), JSON error
//! responses, rules on HTTP metadata, and HTTP sessions routed to byte-stream and datagram clusters.
//!
//! Clients are raw TCP sockets (byte-exact HTTP/1.1) and the independent Python `httpx` client
//! (`e2e/clients/http_client.py`, HTTP/1.1 and HTTP/2). Upstreams are hyper servers run by the test.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A hyper upstream (HTTP/1.1 and HTTP/2) that reports what it saw in response headers and echoes the body.
struct Upstream {
    port: u16,
    /// TCP connections accepted so far.
    conns: Arc<AtomicUsize>,
}

async fn upstream_handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let status = parts
        .headers
        .get("x-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .unwrap_or(200);
    let host = parts
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let mut b = Response::builder()
        .status(status)
        .header("x-upstream-method", parts.method.as_str())
        .header(
            "x-upstream-path",
            parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        )
        .header("x-upstream-version", format!("{:?}", parts.version))
        .header("x-upstream-host", host)
        .header("set-cookie", "a=1")
        .header("set-cookie", "b=2");
    for (k, v) in &parts.headers {
        if k.as_str().starts_with("x-") || k == "content-length" || k == "transfer-encoding" {
            b = b.header(format!("x-saw-{k}"), v.clone());
        }
    }
    let out = if parts.uri.path() == "/big" {
        Bytes::from(pattern(1 << 20, 7))
    } else {
        let mut v = b"upstream:".to_vec();
        v.extend_from_slice(&body);
        Bytes::from(v)
    };
    Ok(b.body(Full::new(out)).unwrap())
}

fn upstream() -> Upstream {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let c2 = conns.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let (s, _) = l.accept().await.unwrap();
                c2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), hyper::service::service_fn(upstream_handle))
                        .await;
                });
            }
        });
    });
    Upstream { port, conns }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `req` (raw bytes) on `r`'s stream and reads one response (content-length, chunked, or none for HEAD).
fn exchange(r: &mut BufReader<TcpStream>, req: &[u8], head_only: bool) -> Resp {
    r.get_mut().write_all(req).unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if head_only {
        return resp;
    }
    if let Some(n) = resp.header("content-length") {
        let mut body = vec![0; n.parse().unwrap()];
        r.read_exact(&mut body).unwrap();
        resp.body = body;
    } else if resp.header("transfer-encoding") == Some("chunked") {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut resp.body).unwrap();
    }
    resp
}

fn client(port: u16) -> BufReader<TcpStream> {
    let s = tcp_client(port);
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    BufReader::new(s)
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: test.local\r\n{extra}\r\n").into_bytes()
}

fn post(path: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nhost: test.local\r\ncontent-length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

/// An agent with one HTTP listener whose rules are given as YAML list items (indented for `rules:`).
fn agent(port: u16, rules: &str, clusters: &str) -> Agent {
    let a = Agent::start(&format!(
        "listeners:\n  - name: web\n    spec: {{protocol: HTTP, port: {port}, address: 127.0.0.1}}\n    rules:\n{rules}\nclusters:\n{clusters}\n"
    ));
    a.wait_log("listener started");
    a
}

fn http_cluster(name: &str, port: u16, version: &str) -> String {
    format!(
        "  - name: {name}\n    spec: {{protocol: HTTP, port: {port}, version: \"{version}\"}}\n    endpoints: [{{spec: {{address: 127.0.0.1}}}}]\n"
    )
}

#[test]
fn reverse_proxy_keeps_status_headers_bodies_and_reuses_upstream_connections() {
    let up = upstream();
    let port = free_port();
    let _a = agent(
        port,
        "      - action: {route: {destination: up}}",
        &http_cluster("up", up.port, "1.1"),
    );
    let mut c = client(port);
    // A GET: status, repeated headers, the client's Host and path kept; no body framing invented upstream.
    let r = exchange(&mut c, &get("/a/b?x=1", "x-test: one\r\n"), false);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "upstream:");
    assert_eq!(r.header("x-upstream-method"), Some("GET"));
    assert_eq!(r.header("x-upstream-path"), Some("/a/b?x=1"));
    assert_eq!(r.header("x-upstream-host"), Some("test.local"));
    assert_eq!(r.header("x-saw-x-test"), Some("one"));
    assert_eq!(r.header("x-saw-x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        r.header("x-saw-transfer-encoding"),
        None,
        "a GET must not get a chunked body upstream"
    );
    assert_eq!(r.all("set-cookie"), vec!["a=1", "b=2"]);
    // A POST with a body and a non-2xx status, on the same client connection (keep-alive).
    let r = exchange(&mut c, &post("/submit", b"hello body", "x-status: 201\r\n"), false);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.text(), "upstream:hello body");
    assert_eq!(
        r.header("x-saw-content-length"),
        Some("10"),
        "the request length is kept: {r:?}"
    );
    assert_eq!(r.header("content-length"), Some("19"));
    // A 1 MiB response streams through whole.
    let r = exchange(&mut c, &get("/big", ""), false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, pattern(1 << 20, 7));
    // A 404 from the upstream is the upstream's, not the agent's.
    let r = exchange(&mut c, &get("/x", "x-status: 404\r\n"), false);
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "upstream:");
    // HEAD: the upstream's head, no body.
    let r = exchange(&mut c, b"HEAD /h HTTP/1.1\r\nhost: test.local\r\n\r\n", true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream-method"), Some("HEAD"));
    // Sequential requests reuse one pooled upstream connection.
    for i in 0..20 {
        let r = exchange(&mut c, &post("/n", format!("{i}").as_bytes(), ""), false);
        assert_eq!(r.text(), format!("upstream:{i}"));
    }
    assert_eq!(
        up.conns.load(Ordering::SeqCst),
        1,
        "the keep-alive pool should reuse one connection"
    );
}

#[test]
fn errors_are_json_with_the_right_status() {
    let port = free_port();
    let dead = free_port();
    let _a = agent(
        port,
        "      - match: {op: starts, path: /HTTP/url/path, value: /dead}\n        action: {route: {destination: dead}}\n      - match: {op: test, path: /HTTP/method, value: PUT}\n        action: {route: {destination: dead}}",
        &http_cluster("dead", dead, "1.1"),
    );
    let mut c = client(port);
    let r = exchange(&mut c, &get("/nowhere", ""), false);
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["status"], 404);
    assert_eq!(j["message"], "Not Found");
    assert!(j["content"].as_str().unwrap().contains("no rule in rulelist"), "{j}");
    let r = exchange(&mut client(port), &get("/dead", ""), false);
    assert_eq!(r.status, 502, "{r:?}");
    let j = r.json();
    assert_eq!(j["message"], "Bad Gateway");
    assert!(j["content"].as_str().unwrap().contains("Connection refused"), "{j}");
}

#[test]
fn rules_match_http_metadata_and_rewrites_reach_the_upstream() {
    let up = upstream();
    let port = free_port();
    let _a = agent(
        port,
        "      - match: {op: test, path: /HTTP/headers/x-tenant, value: blue}\n        action:\n          rewrite: [{path: /HTTP/headers/x-routed, value: blue-pool}, {path: /HTTP/url/url, value: /rewritten}]\n          route: {destination: up}\n      - action: {route: {destination: {spec: {protocol: Echo}}}}",
        &http_cluster("up", up.port, "1.1"),
    );
    let r = exchange(&mut client(port), &get("/orig", "x-tenant: blue\r\n"), false);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-saw-x-routed"), Some("blue-pool"));
    assert_eq!(r.header("x-upstream-path"), Some("/rewritten"));
    // Another tenant goes to Echo: the request body comes back as a 200 body.
    let r = exchange(
        &mut client(port),
        &post("/orig", b"echo me", "x-tenant: red\r\n"),
        false,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "echo me");
    assert_eq!(up.conns.load(Ordering::SeqCst), 1);
}

#[test]
fn http_to_tcp_streams_and_http_to_udp_is_request_response() {
    let tcp = tcp_echo_server();
    let udp = udp_server(|m, _| {
        let mut v = b"udp:".to_vec();
        v.extend_from_slice(m);
        v
    });
    let port = free_port();
    let _a = agent(
        port,
        &format!(
            "      - match: {{op: starts, path: /HTTP/url/path, value: /tcp}}\n        action: {{route: {{destination: {{name: t, spec: {{protocol: TCP, port: {tcp}}}, endpoints: [{{spec: {{address: 127.0.0.1}}}}]}}}}}}\n      - action: {{route: {{destination: {{name: u, spec: {{protocol: UDP, port: {udp}}}, endpoints: [{{spec: {{address: 127.0.0.1}}}}]}}}}}}"
        ),
        "",
    );
    // TCP: the request body goes upstream, the upstream's bytes (until it closes) are the 200 body.
    let body = pattern(300_000, 3);
    let r = exchange(&mut client(port), &post("/tcp", &body, ""), false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);
    // UDP: the body is one datagram, the first datagram back is the body.
    let r = exchange(&mut client(port), &post("/udp", b"ping 1", ""), false);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "udp:ping 1");
    assert_eq!(r.header("content-length"), Some("10"));
}

/// Runs `e2e/clients/http_client.py` on `requests` and returns its responses.
fn httpx(py: &str, http2: bool, requests: serde_json::Value) -> Vec<serde_json::Value> {
    let mut cmd = std::process::Command::new(py);
    cmd.arg(repo_root().join("e2e/clients/http_client.py"));
    if http2 {
        cmd.arg("--http2");
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(requests.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "http_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

fn headers_of(r: &serde_json::Value) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for kv in r["headers"].as_array().unwrap() {
        m.entry(kv[0].as_str().unwrap().to_owned())
            .or_default()
            .push(kv[1].as_str().unwrap().to_owned());
    }
    m
}

#[test]
fn independent_httpx_client_over_http1_and_http2_to_http1_and_http2_upstreams() {
    let Some(py) = python_with("httpx, h2") else { return };
    let up = upstream();
    let port = free_port();
    let _a = agent(
        port,
        "      - match: {op: starts, path: /HTTP/url/path, value: /h2up}\n        action: {route: {destination: up2}}\n      - action: {route: {destination: up1}}",
        &format!(
            "{}{}",
            http_cluster("up1", up.port, "1.1"),
            http_cluster("up2", up.port, "2")
        ),
    );
    for http2 in [false, true] {
        let base = format!("http://127.0.0.1:{port}");
        let reqs = serde_json::json!([
            {"method": "GET", "url": format!("{base}/one?q=1"), "headers": {"x-test": "a"}},
            {"method": "POST", "url": format!("{base}/two"), "body": "payload-two", "headers": {"x-status": "202"}},
            {"method": "POST", "url": format!("{base}/h2up/three"), "body": "payload-three"},
        ]);
        let out = httpx(&py, http2, reqs);
        let want_version = if http2 { "HTTP/2" } else { "HTTP/1.1" };
        for r in &out {
            assert_eq!(r["version"], want_version, "{r}");
        }
        let h = headers_of(&out[0]);
        assert_eq!(out[0]["status"], 200, "{}", out[0]);
        assert_eq!(out[0]["body"], "upstream:");
        assert_eq!(h["x-upstream-path"], vec!["/one?q=1"]);
        assert_eq!(h["x-saw-x-test"], vec!["a"]);
        assert_eq!(h["set-cookie"], vec!["a=1", "b=2"]);
        assert_eq!(out[1]["status"], 202);
        assert_eq!(out[1]["body"], "upstream:payload-two");
        let h = headers_of(&out[2]);
        assert_eq!(out[2]["body"], "upstream:payload-three");
        assert_eq!(
            h["x-upstream-version"],
            vec!["HTTP/2.0"],
            "the up2 cluster speaks HTTP/2 upstream"
        );
        assert_eq!(h["x-upstream-host"], vec![format!("127.0.0.1:{port}")]);
    }
}

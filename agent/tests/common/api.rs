//! A small client of the admin API for tests: raw HTTP/1.1 requests (byte-exact, no client library between the test
//! and the agent) and assertions on the `{status, message, content}` bodies.

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One HTTP/1.1 request (`Connection: close`); returns the status, the content type and the body.
pub fn http(port: u16, method: &str, path: &str, ctype: Option<&str>, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(ct) = ctype {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type").then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, ctype, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A JSON API call: status and parsed body.
pub fn call(port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, ctype, text) = match &body {
        Some(b) => http(port, method, path, Some("application/json"), &b.to_string()),
        None => http(port, method, path, None, ""),
    };
    assert!(
        ctype.starts_with("application/json"),
        "{method} {path}: content type {ctype:?}: {text}"
    );
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}"));
    (status, v)
}

/// Starts an agent on `yaml` with the admin listener on a free loopback port; returns it and the port.
pub fn start_with_admin(yaml: &str) -> (super::Agent, u16) {
    let admin = super::quiet_port();
    let agent = super::Agent::start_with(yaml, &["--admin", &format!("127.0.0.1:{admin}")]);
    agent.wait_log("admin listener started");
    (agent, admin)
}

/// Asserts an error body: the status, and that `content` mentions `needle`.
pub fn assert_error(port: u16, method: &str, path: &str, body: Option<Value>, status: u16, needle: &str) {
    let (s, v) = call(port, method, path, body);
    assert_eq!(s, status, "{method} {path}: {v}");
    assert_eq!(v["status"], status, "{v}");
    let content = v["content"].as_str().unwrap_or_default();
    assert!(
        content.contains(needle),
        "{method} {path}: {content:?} lacks {needle:?}"
    );
}

pub fn assert_ok(port: u16, method: &str, path: &str, body: Option<Value>) {
    let (s, v) = call(port, method, path, body);
    assert_eq!(
        (s, &v),
        (200, &json!({"status": 200, "message": "OK"})),
        "{method} {path}"
    );
}

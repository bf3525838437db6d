//! The `l7mp-fake-apiserver` binary prints its URL, writes the kubeconfig, and serves until killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

#[test]
fn binary_prints_its_url_and_serves() {
    let dir = std::env::temp_dir().join(format!("l7mp-kube-fake-bin-{}", std::process::id()));
    let kubeconfig = dir.join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_l7mp-fake-apiserver"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("a line");
    let url = line.trim().to_owned();
    let addr = url.strip_prefix("http://").expect("an http URL").to_owned();
    let config = std::fs::read_to_string(&kubeconfig).expect("kubeconfig written");
    assert!(config.contains(&format!("server: {url}")), "{config}");

    let mut conn = TcpStream::connect(&addr).expect("connects");
    write!(
        conn,
        "GET /api/v1/namespaces/default HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"kind\":\"Namespace\""), "{response}");

    child.kill().expect("killed");
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

//! Pieces of the mesh tests (control plane, agents and backends in network namespaces): `l7mpctl` in a namespace,
//! UDP echo backends that tag their answers, clients, and a steady session that counts what came back.

#![allow(clippy::unwrap_used)]

use super::{Lan, Netns, sibling_binary};
use std::net::UdpSocket;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Runs `l7mpctl --server SERVER ARGS` in namespace `i` of `lan`; returns (success, stdout + stderr).
pub fn l7mpctl_in(lan: &Lan, i: usize, server: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lan.ns(i).name])
        .arg(sibling_binary("l7mpctl"))
        .args(["--server", server])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A UDP server in namespace `ns` on `port` answering `<tag>:<datagram>`.
pub fn backend(ns: &Netns, port: u16, tag: &'static str) {
    let sock = ns.enter(move || UdpSocket::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&[tag.as_bytes(), b":", &buf[..n]].concat(), peer);
        }
    });
}

/// A UDP client socket in namespace `ns`, connected to `to`.
pub fn client(ns: &Netns, to: String) -> UdpSocket {
    ns.enter(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s
    })
}

/// Sends until an answer comes (the configuration may still be on its way); `None` after `within`.
pub fn ask(s: &UdpSocket, msg: &[u8], within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let _ = s.send(msg);
        if let Ok(n) = s.recv(&mut buf) {
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    None
}

/// A client that keeps one session busy: a datagram every 10 ms, counting answers by their tag.
pub struct Steady {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Steady {
    pub fn start(s: UdpSocket) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let thread = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let n = sent2.fetch_add(1, Ordering::Relaxed);
                let _ = s.send(format!("steady{n}").as_bytes());
                if let Ok(k) = s.recv(&mut buf) {
                    got.push(String::from_utf8_lossy(&buf[..k]).into_owned());
                }
            }
            s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            while let Ok(k) = s.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..k]).into_owned());
            }
            got
        });
        Steady { stop, sent, thread }
    }

    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let got = self.thread.join().unwrap();
        (self.sent.load(Ordering::Relaxed), got)
    }
}

/// A Target (UDP backend at `backend_addr:port`), a Route to it with retries, and a VirtualService on UDP port
/// 9000 of the agents labelled `app=gw` that uses the Route.
pub fn mesh_yaml(backend_addr: &str, port: u16) -> String {
    format!(
        "
apiVersion: l7mp.io/v1
kind: Target
metadata: {{ name: echo }}
spec:
  selector: {{ matchLabels: {{ app: gw }} }}
  cluster:
    spec: {{ UDP: {{ port: {port} }} }}
    endpoints: [ {{ spec: {{ address: {backend_addr} }} }} ]
---
apiVersion: l7mp.io/v1
kind: Route
metadata: {{ name: to-echo }}
spec:
  destinationRef: echo
  retry: {{ retry_on: always, num_retries: 3 }}
---
apiVersion: l7mp.io/v1
kind: VirtualService
metadata: {{ name: gw }}
spec:
  selector: {{ matchLabels: {{ app: gw }} }}
  listener:
    spec: {{ UDP: {{ port: 9000 }} }}
    rules:
      - action: {{ routeRef: to-echo }}
"
    )
}

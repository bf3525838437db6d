//! The configurations under `examples/` load and carry traffic as their comments promise.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::Value;

fn start_example(name: &str) -> Agent {
    let dir = tempfile::tempdir().expect("dir");
    Agent::start_file(&repo_root().join("examples").join(name), dir, &[])
}

#[test]
fn example_udp_echo() {
    let _agent = start_example("udp-echo.yaml");
    let c = udp_client(9001);
    for m in [&b"one"[..], b"two two", &[0u8; 1200]] {
        c.send(m).expect("send");
        assert_eq!(recv(&c), m);
    }
}

#[test]
fn example_tcp_to_unix() {
    let mut agent = start_example("tcp-to-unix.yaml");
    let data = pattern(200_000, 5);
    assert_eq!(round_trip(tcp_client(9010), data.clone()), data);
    assert_eq!(agent.terminate().code(), Some(0));
    assert!(
        !std::path::Path::new("/tmp/l7mp-example.sock").exists(),
        "socket file removed"
    );
}

#[test]
fn example_udp_jsonencap_round_trip() {
    let _agent = start_example("udp-jsonencap.yaml");
    let c = udp_client(9020);
    let msgs: Vec<Vec<u8>> = (0..20).map(|i| pattern(10 + i * 50, i as u64)).collect();
    for m in &msgs {
        c.send(m).expect("send");
    }
    for m in &msgs {
        assert_eq!(&recv(&c), m, "decapsulated reply, boundaries kept");
    }
}

#[test]
fn jsonencap_puts_metadata_and_base64_payload_on_the_wire() {
    // The same route shape as the example, with the test as the upstream so the wire format is checked.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(tx);
    let upstream = udp_server(move |m, _| {
        tx.lock().unwrap().send(m.to_vec()).expect("record");
        br#"{"metadata":{},"payload":"cmVwbHk="}"#.to_vec()
    });
    let port = free_port();
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: udp-in
    spec: {{ protocol: UDP, port: {port}, address: 127.0.0.1 }}
    rules:
      - action:
          route:
            destination: {{ spec: {{ protocol: UDP, port: {upstream} }}, endpoints: [ {{ spec: {{ address: 127.0.0.1 }} }} ] }}
            ingress: [ {{ spec: {{ protocol: JSONEncap }} }} ]
            egress: [ {{ spec: {{ protocol: JSONDecap }} }} ]
"#
    ));
    let c = udp_client(port);
    c.send(b"hello").expect("send");
    assert_eq!(recv(&c), b"reply");
    let wire: Value = serde_json::from_slice(&rx.recv().expect("upstream got it")).expect("JSON on the wire");
    assert_eq!(wire["payload"], "aGVsbG8=");
    assert_eq!(wire["metadata"]["IP"]["src_addr"], "127.0.0.1");
    assert_eq!(wire["metadata"]["UDP"]["dst_port"], port);
    assert_eq!(
        wire["metadata"]["UDP"]["src_port"],
        c.local_addr().expect("addr").port()
    );
    assert!(
        wire["metadata"]["name"]
            .as_str()
            .expect("name")
            .starts_with("UDP:127.0.0.1:")
    );
}

/// Reads one HTTP/1.1 message head (up to the blank line) from `r`.
fn read_head(r: &mut impl std::io::BufRead) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            return head;
        }
        head.push_str(&line);
    }
}

#[test]
fn example_http_proxy() {
    use std::io::{BufReader, Read, Write};
    // The upstream on 9041: answers each request with the x-proxied-by header it got.
    let l = std::net::TcpListener::bind("127.0.0.1:9041").unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let head = read_head(&mut r);
                    if head.is_empty() {
                        return;
                    }
                    let via = head
                        .lines()
                        .find_map(|l| l.strip_prefix("x-proxied-by: "))
                        .unwrap_or("none")
                        .to_owned();
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{via}", via.len());
                    w.write_all(resp.as_bytes()).unwrap();
                }
            });
        }
    });
    let _agent = start_example("http-proxy.yaml");
    let s = tcp_client(9040);
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    w.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let head = read_head(&mut r);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = [0u8; 4];
    r.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"l7mp", "the rewrite reached the upstream");
    w.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .unwrap();
    let head = read_head(&mut r);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Echo's response is streamed (chunked): 5 bytes in one chunk, then the last chunk.
    let mut rest = Vec::new();
    while !rest.ends_with(b"0\r\n\r\n") {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).unwrap();
        rest.push(b[0]);
    }
    assert_eq!(rest, b"5\r\nhello\r\n0\r\n\r\n");
}

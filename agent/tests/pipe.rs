//! End-to-end tests of PIPE (named FIFOs): the listener, the cluster, and the two against each other.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

fn reply_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.reply", path.display()))
}

/// Runs `f` on its own thread (opening a FIFO blocks until the other side opens it) and fails the test if it does
/// not finish in time.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(TIMEOUT * 2)
        .unwrap_or_else(|_| panic!("{what} did not finish in time"))
}

/// Reads the whole reply FIFO on a thread (it blocks in open until the agent opens the FIFO for writing).
fn read_reply(path: PathBuf) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut out = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut out).unwrap();
        let _ = tx.send(out);
    });
    rx
}

fn echo_listener(fifo: &Path) -> String {
    format!(
        "listeners:\n  - name: p\n    spec: {{protocol: PIPE, filename: {fifo:?}}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]\n"
    )
}

#[test]
fn pipe_listener_echoes_byte_for_byte_one_session_per_writer() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("echo.fifo");
    let reply = reply_of(&fifo);
    let mut agent = Agent::start(&echo_listener(&fifo));
    assert!(fifo.exists() && reply.exists(), "both FIFOs created at start");

    // A large transfer, the reply read while the request is written.
    let data = pattern(300_000, 1);
    let got = read_reply(reply.clone());
    let (f, d) = (fifo.clone(), data.clone());
    bounded("writing the request", move || {
        OpenOptions::new().write(true).open(&f).unwrap().write_all(&d).unwrap()
    });
    let got = got.recv_timeout(TIMEOUT * 2).expect("reply");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echo is byte for byte");

    // The next writer gets a new session. This one closes the request FIFO before it opens the reply FIFO, as
    // `echo hi > fifo; cat fifo.reply` does: the reply waits for it.
    let small = b"second writer\n".to_vec();
    let (f, d) = (fifo.clone(), small.clone());
    bounded("writing the second request", move || {
        OpenOptions::new().write(true).open(&f).unwrap().write_all(&d).unwrap()
    });
    let got = read_reply(reply.clone())
        .recv_timeout(TIMEOUT * 2)
        .expect("second reply");
    assert_eq!(got, small);
    assert_eq!(agent.count_log("session failed"), 0, "{:?}", agent.log_lines());

    assert_eq!(agent.terminate().code(), Some(0));
    assert!(
        !fifo.exists() && !reply.exists(),
        "FIFOs the agent created are removed on exit"
    );
}

#[test]
fn pipe_listener_keeps_fifos_it_did_not_create_and_refuses_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("mine.fifo");
    mkfifo(&fifo);
    let mut agent = Agent::start(&echo_listener(&fifo));
    assert_eq!(agent.terminate().code(), Some(0));
    assert!(fifo.exists(), "a FIFO that was there before is left alone");
    assert!(!reply_of(&fifo).exists(), "the reply FIFO the agent created is removed");

    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let (code, stderr) = run_to_exit(&echo_listener(&file), "plain.yaml");
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!(
            "listeners \"p\": cannot listen on FIFO {file:?}: {} exists and is not a FIFO",
            file.display()
        )),
        "{stderr}"
    );
}

/// A FIFO server: reads requests from `fifo`, answers each chunk upper-cased on `<fifo>.reply`, once per
/// conversation.
fn upper_server(fifo: PathBuf) {
    let reply = reply_of(&fifo);
    mkfifo(&fifo);
    mkfifo(&reply);
    thread::spawn(move || {
        loop {
            let mut req = File::open(&fifo).unwrap();
            let mut rep = OpenOptions::new().write(true).open(&reply).unwrap();
            let mut buf = vec![0u8; 65536];
            loop {
                match req.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if rep.write_all(&buf[..n].to_ascii_uppercase()).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
}

#[test]
fn tcp_to_pipe_cluster_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("upper.fifo");
    upper_server(fifo.clone());
    let port = free_port();
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: up }} }} }}]
clusters:
  - name: up
    spec: {{ protocol: PIPE }}
    endpoints: [{{ spec: {{ address: {fifo:?} }} }}]
"#
    ));
    let data: Vec<u8> = pattern(200_000, 7)
        .iter()
        .map(|b| b"abcdefgh"[(*b % 8) as usize])
        .collect();
    let got = round_trip(tcp_client(port), data.clone());
    assert_eq!(got, data.to_ascii_uppercase(), "byte for byte through the FIFO pair");
    // A second conversation on the same FIFO pair.
    let got = round_trip(tcp_client(port), b"again".to_vec());
    assert_eq!(got, b"AGAIN");
}

#[test]
fn pipe_cluster_into_pipe_listener_of_the_same_agent() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("loop.fifo");
    let port = free_port();
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: to-fifo }} }} }}]
  - name: fifo-in
    spec: {{ protocol: PIPE, filename: {fifo:?} }}
    rules: [{{ action: {{ route: {{ destination: {{ spec: {{ protocol: Echo }} }} }} }} }}]
clusters:
  - name: to-fifo
    spec: {{ protocol: PIPE }}
    endpoints: [{{ spec: {{ filename: {fifo:?} }} }}]
"#
    ));
    for i in 0..3u64 {
        let data = pattern(100_000 + i as usize * 1000, 10 + i);
        assert_eq!(round_trip(tcp_client(port), data.clone()), data, "conversation {i}");
    }
}

#[test]
fn pipe_cluster_without_a_server_fails_the_session_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("nobody.fifo");
    mkfifo(&fifo);
    mkfifo(&reply_of(&fifo));
    let port = free_port();
    let agent = Agent::start(&format!(
        r#"
listeners:
  - name: tcp-in
    spec: {{ protocol: TCP, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: up, retry: {{ timeout: 300 }} }} }} }}]
clusters:
  - name: up
    spec: {{ protocol: PIPE }}
    endpoints: [{{ spec: {{ address: {fifo:?} }} }}]
"#
    ));
    let _c = tcp_client(port);
    let line = agent.wait_log("session failed");
    assert!(line.contains("nobody has the FIFO open for reading"), "{line}");
}

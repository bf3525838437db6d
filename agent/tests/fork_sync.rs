//! End-to-end tests of the StdioFork and Sync clusters through the real agent.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::io::Read;
use std::time::{Duration, Instant};

#[test]
fn stdio_fork_pipes_each_session_through_its_own_process() {
    let port = free_port();
    let _agent = Agent::start(&format!(
        "listeners:\n  - name: t\n    spec: {{protocol: TCP, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: StdioFork, command: [tr, a-z, A-Z]}}}}}}}}}}]\n"
    ));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let data = format!("session {i}: hello, forked world\n").repeat(1000);
                let got = round_trip(tcp_client(port), data.clone().into_bytes());
                assert_eq!(String::from_utf8(got).unwrap(), data.to_uppercase());
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn stdio_fork_logs_a_failing_exit_status() {
    let port = free_port();
    let agent = Agent::start(&format!(
        "listeners:\n  - name: t\n    spec: {{protocol: TCP, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: StdioFork, command: 'echo bye; exit 3'}}}}}}}}}}]\n"
    ));
    let got = round_trip(tcp_client(port), Vec::new());
    assert_eq!(got, b"bye\n");
    agent.wait_log("exit status: 3");
}

#[test]
fn stdio_fork_process_is_killed_when_the_session_ends() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let _agent = Agent::start_with(
        &format!(
            "listeners:\n  - name: t\n    spec: {{protocol: TCP, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: StdioFork, command: 'echo $$ > {}; exec sleep 600'}}}}}}}}}}]\n",
            pidfile.display()
        ),
        &["--half-close-timeout", "0.3"],
    );
    let mut c = tcp_client(port);
    let deadline = Instant::now() + TIMEOUT;
    let pid = loop {
        if let Ok(s) = std::fs::read_to_string(&pidfile)
            && let Ok(pid) = s.trim().parse::<u32>()
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process runs during the session"
    );
    // The client goes away: the session ends and the process must go too.
    c.shutdown(std::net::Shutdown::Both).unwrap();
    let mut buf = [0u8; 1];
    let _ = c.read(&mut buf);
    drop(c);
    let deadline = Instant::now() + TIMEOUT;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} still running after its session ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Running and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
        .unwrap_or(false)
}

#[test]
fn unknown_program_fails_the_session_with_a_clear_error() {
    let port = free_port();
    let mut agent = Agent::start(&format!(
        "listeners:\n  - name: t\n    spec: {{protocol: TCP, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: StdioFork, command: [/nonexistent/prog]}}}}}}}}}}]\n"
    ));
    let mut c = tcp_client(port);
    let mut buf = [0u8; 8];
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0, "the connection is closed");
    agent.wait_log("cannot start \"/nonexistent/prog\"");
    assert!(agent.is_running());
}

#[test]
fn example_udp_rendezvous_lets_two_clients_talk() {
    let dir = tempfile::tempdir().unwrap();
    let _agent = Agent::start_file(&repo_root().join("examples/udp-rendezvous.yaml"), dir, &[]);
    let a = udp_client(9031);
    let b = udp_client(9032);
    // Each side sends once to open its session (nobody else is in the group yet for the first one).
    a.send(b"a joins").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    b.send(b"hello from b").unwrap();
    assert_eq!(recv(&a), b"hello from b");
    for i in 0..10 {
        a.send(format!("a says {i}").as_bytes()).unwrap();
    }
    for i in 0..10 {
        assert_eq!(
            recv(&b),
            format!("a says {i}").as_bytes(),
            "datagrams arrive whole and in order"
        );
    }
    // Nobody hears their own datagrams.
    a.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 64];
    assert!(a.recv(&mut buf).is_err());
}

#[test]
fn sync_session_without_the_label_is_refused() {
    let port = free_port();
    let agent = Agent::start(&format!(
        "listeners:\n  - name: u\n    spec: {{protocol: UDP, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Sync, query: /labels/room}}}}}}}}}}]\n"
    ));
    udp_client(port).send(b"x").unwrap();
    agent.wait_log("no value at /labels/room in the session metadata");
}

//! End-to-end tests of SCTP. On a kernel without SCTP the agent must say so clearly (always tested); where the
//! kernel has SCTP, real round trips check that message boundaries are kept (skipped, with a note, elsewhere).

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

const UNSUPPORTED: &str = "SCTP is not supported by this kernel";

fn sctp_socket() -> std::io::Result<Socket> {
    Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::from(libc::IPPROTO_SCTP)))
}

/// Whether `socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)` works here.
fn kernel_has_sctp() -> bool {
    sctp_socket().is_ok()
}

fn echo_listener(port: u16) -> String {
    format!(
        "listeners:\n  - name: s\n    spec: {{protocol: SCTP, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]\n"
    )
}

#[test]
fn sctp_listener_without_kernel_support_fails_the_config_with_the_reason() {
    let port = free_port();
    if kernel_has_sctp() {
        // The listener binds; the round trip test below covers it.
        let mut agent = Agent::start(&echo_listener(port));
        assert_eq!(agent.terminate().code(), Some(0));
        return;
    }
    let (code, stderr) = run_to_exit(&echo_listener(port), "sctp.yaml");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "listeners \"s\": cannot listen on SCTP 127.0.0.1:{port}: {UNSUPPORTED}"
        )),
        "{stderr}"
    );
}

fn udp_to_sctp(udp_port: u16, sctp_port: u16) -> String {
    format!(
        r#"
listeners:
  - name: udp-in
    spec: {{ protocol: UDP, port: {udp_port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: up }} }} }}]
clusters:
  - name: up
    spec: {{ protocol: SCTP, port: {sctp_port} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    )
}

#[test]
fn sctp_cluster_without_kernel_support_warns_and_fails_sessions_with_the_reason() {
    if kernel_has_sctp() {
        eprintln!("skipped: this kernel has SCTP (see sctp_round_trips_keep_message_boundaries)");
        return;
    }
    let port = free_port();
    let agent = Agent::start(&udp_to_sctp(port, 9));
    let warning = agent.wait_log(UNSUPPORTED);
    assert!(warning.contains("WARN") && warning.contains("up"), "{warning}");
    let c = udp_client(port);
    c.send(b"hello").unwrap();
    let line = agent.wait_log("session failed");
    assert!(
        line.contains(&format!(
            "cannot connect cluster \"up\" after 1 attempt(s): cannot connect to up-EndPoint-0 (127.0.0.1:9): {UNSUPPORTED}"
        )),
        "{line}"
    );
}

/// Receives one whole SCTP message (joining pieces until MSG_EOR); `None` at end of stream.
fn recv_msg(s: &Socket) -> Option<Vec<u8>> {
    let mut msg = Vec::new();
    let mut buf = vec![0u8; 1 << 17];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one iovec over a live buffer.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut hdr, 0) };
        assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
        if n == 0 {
            return None;
        }
        if hdr.msg_flags & 0x8000 != 0 {
            continue; // MSG_NOTIFICATION
        }
        msg.extend_from_slice(&buf[..n as usize]);
        if hdr.msg_flags & libc::MSG_EOR != 0 {
            return Some(msg);
        }
    }
}

fn connect(port: u16) -> Socket {
    let s = sctp_socket().unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match s.connect(&addr.into()) {
            Ok(()) => return s,
            Err(e) if std::time::Instant::now() > deadline => panic!("SCTP connect: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn sctp_round_trips_keep_message_boundaries() {
    if !kernel_has_sctp() {
        eprintln!("skipped: this kernel has no SCTP ({UNSUPPORTED}); the real round trips run where it has");
        return;
    }
    // SCTP listener → Echo: each message comes back as one message.
    let port = free_port();
    let _agent = Agent::start(&echo_listener(port));
    let c = connect(port);
    let sizes = [1usize, 100, 1500, 9000, 60_000];
    for (i, len) in sizes.iter().enumerate() {
        c.send(&pattern(*len, i as u64)).unwrap();
    }
    for (i, len) in sizes.iter().enumerate() {
        assert_eq!(
            recv_msg(&c).expect("echo"),
            pattern(*len, i as u64),
            "message {i} whole"
        );
    }

    // UDP → SCTP cluster → an SCTP echo server: datagrams stay datagrams.
    let server = sctp_socket().unwrap();
    server.set_reuse_address(true).unwrap();
    server.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    server.listen(16).unwrap();
    let sctp_port = server.local_addr().unwrap().as_socket().unwrap().port();
    std::thread::spawn(move || {
        while let Ok((s, _)) = server.accept() {
            std::thread::spawn(move || {
                while let Some(m) = recv_msg(&s) {
                    if s.send(&m).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let udp_port = free_port();
    let _agent2 = Agent::start(&udp_to_sctp(udp_port, sctp_port));
    let u = udp_client(udp_port);
    let msgs: Vec<Vec<u8>> = (0..20).map(|i| pattern(1 + i * 997, i as u64)).collect();
    for m in &msgs {
        u.send(m).unwrap();
    }
    for m in &msgs {
        assert_eq!(&recv(&u), m, "datagram through SCTP whole and in order");
    }
}

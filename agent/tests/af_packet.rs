//! End-to-end tests of AF_PACKET (raw Ethernet frames). Each test makes two network namespaces joined by a veth
//! pair, runs the agent in one and talks raw Ethernet from the other. Needs root (`ip netns`); without it the tests
//! fail with the reason, unless `L7MP_SKIP_NETNS=1`.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A local experimental EtherType (IEEE 802 "local experimental 1").
const ETHERTYPE: u16 = 0x88b5;
const OTHER_ETHERTYPE: u16 = 0x88b6;
const AGENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const STRANGER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];

/// Two namespaces, `agent` with interface `pkt0` and `peer` with `pkt1`, joined by a veth pair. Dropping it
/// deletes both namespaces and the pair.
struct Segment {
    agent: Netns,
    peer: Netns,
}

/// The segment, or `None` when namespaces cannot be made and `L7MP_SKIP_NETNS=1` allows skipping.
fn segment() -> Option<Segment> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let tag = format!("l7mp-pkt-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let made = (|| {
        let agent = Netns::create(&format!("{tag}a"))?;
        let peer = Netns::create(&format!("{tag}b"))?;
        let (a, b) = (agent.name.clone(), peer.name.clone());
        ip(&[
            "-n", &a, "link", "add", "pkt0", "type", "veth", "peer", "name", "pkt1", "netns", &b,
        ])?;
        ip(&["-n", &a, "link", "set", "pkt0", "address", "02:00:00:00:00:0a", "up"])?;
        ip(&["-n", &b, "link", "set", "pkt1", "address", "02:00:00:00:00:0b", "up"])?;
        Ok::<_, String>(Segment { agent, peer })
    })();
    match made {
        Ok(s) => Some(s),
        Err(e) if skip_netns() => {
            eprintln!("skipped: cannot make network namespaces ({e}) and L7MP_SKIP_NETNS=1");
            None
        }
        Err(e) => {
            panic!("AF_PACKET tests need network namespaces (run as root, or set L7MP_SKIP_NETNS=1 to skip): {e}")
        }
    }
}

/// A raw packet socket on `ifname` (in the calling thread's namespace) hearing incoming frames of `ethertype`.
fn packet_socket(ifname: &str, ethertype: u16) -> OwnedFd {
    let proto = ethertype.to_be();
    // SAFETY: plain socket syscalls on a descriptor we own; the sockaddr_ll is fully initialised.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            23, /* PACKET_IGNORE_OUTGOING */
            (&one as *const libc::c_int).cast(),
            4,
        );
        let name = std::ffi::CString::new(ifname).unwrap();
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        assert!(addr.sll_ifindex > 0, "no interface {ifname}");
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        fd
    }
}

fn send_frame(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: a live buffer on a bound packet socket.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(n, frame.len() as isize, "send: {}", std::io::Error::last_os_error());
}

/// The next frame within `wait`, or `None`.
fn recv_frame(fd: &OwnedFd, wait: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd; then a receive into a live buffer.
        unsafe {
            if libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) <= 0 {
                continue;
            }
            let n = libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT);
            if n >= 0 {
                buf.truncate(n as usize);
                return Some(buf);
            }
        }
    }
}

fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend(dst);
    f.extend(src);
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

#[test]
fn af_packet_listener_echoes_frames_per_source_mac_and_filters_by_ethertype() {
    let Some(seg) = segment() else { return };
    let agent = Agent::start_in_netns(
        &seg.agent.name,
        r#"
listeners:
  - name: raw
    spec: { protocol: AF_PACKET, interface: pkt0, ethertype: 0x88b5 }
    rules:
      - match: { op: and, apply: [
          { op: test, path: /AF_PACKET/src_mac, value: "02:00:00:00:00:0b" },
          { op: test, path: /AF_PACKET/ethertype, value: "0x88b5" },
          { op: test, path: /AF_PACKET/interface, value: pkt0 } ] }
        action: { route: { destination: { spec: { protocol: Echo } } } }
"#,
    );
    let (peer, other) = seg
        .peer
        .enter(|| (packet_socket("pkt1", ETHERTYPE), packet_socket("pkt1", OTHER_ETHERTYPE)));
    // Sizes from the minimum Ethernet payload to a full 1500-byte MTU.
    for (i, len) in [46usize, 1, 100, 777, 1500].into_iter().enumerate() {
        let f = frame(AGENT_MAC, PEER_MAC, ETHERTYPE, &pattern(len, i as u64));
        send_frame(&peer, &f);
        let back = recv_frame(&peer, TIMEOUT).unwrap_or_else(|| panic!("frame {i} ({len} bytes) not echoed"));
        assert_eq!(back, f, "frame {i} comes back byte for byte");
    }
    // Another EtherType never reaches the listener.
    send_frame(&other, &frame(AGENT_MAC, PEER_MAC, OTHER_ETHERTYPE, b"filtered"));
    assert_eq!(
        recv_frame(&other, Duration::from_millis(300)),
        None,
        "other EtherType filtered"
    );
    // Another source MAC is another session; the rule (on the metadata) does not match it.
    send_frame(&peer, &frame(AGENT_MAC, STRANGER_MAC, ETHERTYPE, b"stranger"));
    let line = agent.wait_log("session failed");
    assert!(line.contains("AF_PACKET:pkt0:02:00:00:00:00:0c"), "{line}");
    assert_eq!(
        recv_frame(&peer, Duration::from_millis(200)),
        None,
        "the stranger's frame is not echoed"
    );
    assert_eq!(agent.count_log("session failed"), 1, "{:?}", agent.log_lines());
}

#[test]
fn udp_to_af_packet_cluster_and_back() {
    let Some(seg) = segment() else { return };
    let port = free_port();
    let _agent = Agent::start_in_netns(
        &seg.agent.name,
        &format!(
            r#"
listeners:
  - name: tunnel
    spec: {{ protocol: UDP, port: {port}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: wire }} }} }}]
clusters:
  - name: wire
    spec: {{ protocol: AF_PACKET, ethertype: "0x88B5" }}
    endpoints: [{{ spec: {{ address: pkt0 }} }}]
"#
        ),
    );
    // The UDP client lives in the agent's namespace (its loopback).
    let client = seg.agent.enter(move || udp_client(port));
    let (peer, other) = seg
        .peer
        .enter(|| (packet_socket("pkt1", ETHERTYPE), packet_socket("pkt1", OTHER_ETHERTYPE)));
    for i in 0..5u64 {
        // A whole frame in a datagram goes out on the wire as is...
        let out = frame(PEER_MAC, AGENT_MAC, ETHERTYPE, &pattern(60 + i as usize * 300, i));
        client.send(&out).unwrap();
        let got = recv_frame(&peer, TIMEOUT).unwrap_or_else(|| panic!("frame {i} did not reach the wire"));
        assert_eq!(got, out, "frame {i} on the wire byte for byte");
        // ...and a frame from the wire comes back as a datagram.
        let back = frame(AGENT_MAC, PEER_MAC, ETHERTYPE, &pattern(90 + i as usize * 200, 100 + i));
        send_frame(&peer, &back);
        assert_eq!(recv(&client), back, "reply frame {i} byte for byte");
    }
    // Frames of another EtherType are not heard by the cluster.
    send_frame(
        &other,
        &frame(AGENT_MAC, PEER_MAC, OTHER_ETHERTYPE, b"not for the cluster"),
    );
    let marker = frame(AGENT_MAC, PEER_MAC, ETHERTYPE, b"marker");
    send_frame(&peer, &marker);
    assert_eq!(
        recv(&client),
        marker,
        "the next datagram is the marker, not the filtered frame"
    );
}

#[test]
fn af_packet_unknown_interface_is_a_clear_error() {
    let (code, stderr) = run_to_exit(
        "listeners:\n  - {name: raw, spec: {protocol: AF_PACKET, interface: nosuch0}, rules: [{action: {route: {destination: {spec: {protocol: Echo}}}}}]}\n",
        "nosuch.yaml",
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(
            "listeners \"raw\": cannot listen on AF_PACKET interface \"nosuch0\": no network interface named \"nosuch0\""
        ),
        "{stderr}"
    );
}

/// A WebSocket echo server (tungstenite, blocking) on `l`.
fn ws_echo(l: std::net::TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(s) else { return };
                while let Ok(m) = ws.read() {
                    if (m.is_binary() || m.is_text()) && ws.send(m).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// The AF_PACKET row of the cross-protocol matrix (tests/matrix.rs has the others; this one needs the namespaces):
/// AF_PACKET listeners routed to Echo, UDP, TCP, UNIX stream, UnixDgram, WebSocket and JSONSocket/UDP clusters
/// whose echo servers live in the agent's namespace, and back to the wire, frame for frame. Frames go one at a time,
/// so a byte-stream hop gives each one back in one read; the boundary warning comes once per byte-stream route.
#[test]
fn af_packet_to_every_cluster_and_back() {
    let Some(seg) = segment() else { return };
    let dir = tempfile::tempdir().unwrap();
    let unix_path = dir.path().join("echo-stream.sock");
    let dgram_path = dir.path().join("echo-dgram.sock");
    let (udp, tcp, ws, js) = {
        let (unix_path, dgram_path) = (unix_path.clone(), dgram_path.clone());
        seg.agent.enter(move || {
            let udp = udp_server(|m, _| m.to_vec());
            let tcp = tcp_echo_server();
            let ws_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let ws = ws_l.local_addr().unwrap().port();
            ws_echo(ws_l);
            // JSONSocket over UDP: answer the header, echo the rest.
            let js = udp_server(|m, _| match serde_json::from_slice::<serde_json::Value>(m) {
                Ok(h) if h.get("JSONSocketVersion").is_some() => {
                    br#"{"JSONSocketVersion":1,"JSONSocketStatus":200,"JSONSocketMessage":"OK"}"#.to_vec()
                }
                _ => m.to_vec(),
            });
            let ul = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();
            std::thread::spawn(move || {
                for c in ul.incoming().map_while(Result::ok) {
                    std::thread::spawn(move || echo_stream(c));
                }
            });
            let ud = std::os::unix::net::UnixDatagram::bind(&dgram_path).unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 70000];
                while let Ok((n, from)) = ud.recv_from(&mut buf) {
                    let _ = ud.send_to_addr(&buf[..n], &from);
                }
            });
            (udp, tcp, ws, js)
        })
    };
    let address = |a: &str| format!("\n    endpoints: [{{spec: {{address: {a:?}}}}}]");
    let columns: Vec<(&str, String, bool)> = vec![
        ("echo", "{protocol: Echo}".into(), false),
        (
            "udp",
            format!("{{protocol: UDP, port: {udp}}}{}", address("127.0.0.1")),
            false,
        ),
        (
            "tcp",
            format!("{{protocol: TCP, port: {tcp}}}{}", address("127.0.0.1")),
            true,
        ),
        (
            "unix",
            format!(
                "{{protocol: UnixDomainSocket}}{}",
                address(&unix_path.to_string_lossy())
            ),
            true,
        ),
        (
            "unixdgram",
            format!("{{protocol: UnixDgram}}{}", address(&dgram_path.to_string_lossy())),
            false,
        ),
        (
            "websocket",
            format!("{{protocol: WebSocket, port: {ws}}}{}", address("127.0.0.1")),
            false,
        ),
        (
            "jsonsocket-udp",
            format!(
                "{{protocol: JSONSocket, transport: {{protocol: UDP, port: {js}}}}}{}",
                address("127.0.0.1")
            ),
            false,
        ),
    ];
    let mut config = String::from("listeners:\n");
    let mut clusters = String::from("clusters:\n");
    for (i, (name, spec, _)) in columns.iter().enumerate() {
        let ethertype = ETHERTYPE + 0x10 + i as u16;
        config.push_str(&format!(
            "  - name: raw-{name}\n    spec: {{protocol: AF_PACKET, interface: pkt0, ethertype: {ethertype}}}\n    rules: [{{action: {{route: {{name: route-{name}, destination: c-{name}}}}}}}]\n"
        ));
        clusters.push_str(&format!("  - name: c-{name}\n    spec: {spec}\n"));
    }
    config.push_str(&clusters);
    let mut agent = Agent::start_in_netns(&seg.agent.name, &config);
    for (i, (name, _, _)) in columns.iter().enumerate() {
        let ethertype = ETHERTYPE + 0x10 + i as u16;
        let peer = seg.peer.enter(move || packet_socket("pkt1", ethertype));
        for (k, len) in [46usize, 1, 333, 1500].into_iter().enumerate() {
            let f = frame(AGENT_MAC, PEER_MAC, ethertype, &pattern(len, (i * 10 + k) as u64));
            send_frame(&peer, &f);
            let back = recv_frame(&peer, TIMEOUT)
                .unwrap_or_else(|| panic!("AF_PACKET → {name}: frame {k} ({len} bytes) did not come back"));
            assert_eq!(back, f, "AF_PACKET → {name}: frame {k} byte for byte");
        }
    }
    assert_eq!(agent.terminate().code(), Some(0));
    for (name, _, byte_stream) in &columns {
        let warnings = agent
            .log_lines()
            .iter()
            .filter(|l| l.contains("message boundaries are lost") && l.contains(&format!("route-{name}")))
            .count();
        assert_eq!(
            warnings,
            usize::from(*byte_stream),
            "AF_PACKET → {name}: boundary warnings"
        );
    }
    assert_eq!(agent.count_log("session failed"), 0, "{:?}", agent.log_lines());
}

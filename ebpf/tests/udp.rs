//! UDP offload against the real kernel: rewrite + redirect across veth namespaces, rewrite + pass on loopback.

mod common;

use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use common::{Netns, load_in, skip, tag, veth};
use l7mp_ebpf::{Kernel, UdpFlow};

const TIMEOUT: Duration = Duration::from_secs(3);

fn bind(ns: &Netns, addr: &str) -> UdpSocket {
    let addr: SocketAddr = addr.parse().expect("test address");
    let sock = ns.run(move || UdpSocket::bind(addr)).expect("enter ns").expect("bind");
    sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    sock
}

fn addr(s: &UdpSocket) -> SocketAddr {
    s.local_addr().expect("local addr")
}

fn assert_silent(sock: &UdpSocket, what: &str) {
    sock.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("{what} received something while the flow was offloaded: {other:?}"),
    }
    sock.set_nonblocking(false).expect("blocking");
}

struct Sockets {
    client: UdpSocket,
    listener: UdpSocket,
    local: UdpSocket,
    server: UdpSocket,
}

/// The exchange every topology must pass: N datagrams each way through the kernel, counters, then removal.
fn exchange(kernel: &Kernel, s: &Sockets) {
    let flow = UdpFlow {
        client: addr(&s.client),
        listener: addr(&s.listener),
        local: addr(&s.local),
        server: addr(&s.server),
    };
    let handle = kernel.add_udp_flow(&flow).expect("add flow");
    assert!(matches!(
        kernel.add_udp_flow(&flow),
        Err(l7mp_ebpf::OffloadError::FlowExists { .. })
    ));

    const N: u64 = 20;
    let mut buf = [0u8; 2048];
    let mut sent_up = 0u64;
    let mut sent_down = 0u64;
    for i in 0..N {
        let payload = format!("ping {i} {}", "x".repeat(i as usize * 7));
        s.client
            .send_to(payload.as_bytes(), flow.listener)
            .expect("client send");
        sent_up += payload.len() as u64;
        let (n, from) = s
            .server
            .recv_from(&mut buf)
            .expect("server must receive the rewritten datagram");
        assert_eq!(from, flow.local, "server sees the proxy's local address as the source");
        assert_eq!(&buf[..n], payload.as_bytes(), "payload intact");

        let answer = format!("pong {i} {}", "y".repeat(i as usize * 3));
        s.server.send_to(answer.as_bytes(), flow.local).expect("server send");
        sent_down += answer.len() as u64;
        let (n, from) = s
            .client
            .recv_from(&mut buf)
            .expect("client must receive the rewritten answer");
        assert_eq!(from, flow.listener, "client sees the listener as the source");
        assert_eq!(&buf[..n], answer.as_bytes(), "answer intact");
    }
    assert_silent(&s.listener, "the listener socket");
    assert_silent(&s.local, "the local socket");

    let stats = kernel.udp_stats(&handle).expect("stats");
    assert_eq!(stats.client_to_server.packets, N);
    assert_eq!(stats.client_to_server.bytes, sent_up);
    assert_eq!(stats.server_to_client.packets, N);
    assert_eq!(stats.server_to_client.bytes, sent_down);
    assert!(
        stats
            .client_to_server
            .idle()
            .is_some_and(|d| d < Duration::from_secs(60))
    );

    kernel.remove_udp_flow(&handle);
    assert!(kernel.udp_stats(&handle).is_err(), "stats of a removed flow");
    s.client.send_to(b"after", flow.listener).expect("client send");
    let (n, from) = s
        .listener
        .recv_from(&mut buf)
        .expect("after removal the listener receives again");
    assert_eq!((&buf[..n], from), (&b"after"[..], flow.client));
    // The same flow can be installed again.
    let again = kernel.add_udp_flow(&flow).expect("re-add");
    kernel.remove_udp_flow(&again);
}

/// client ns —veth— middle ns (sockets + program) —veth— server ns.
fn three_namespaces(v6: bool) {
    if skip(if v6 { "udp_veth_ipv6" } else { "udp_veth_ipv4" }) {
        return;
    }
    let (c, m, s) = (
        Netns::new("c").expect("ns"),
        Netns::new("m").expect("ns"),
        Netns::new("s").expect("ns"),
    );
    let t = tag();
    let (c0, m0, m1, s0) = (format!("c{t}"), format!("mc{t}"), format!("ms{t}"), format!("s{t}"));
    veth(&c, &c0, &m, &m0).expect("veth c-m");
    veth(&m, &m1, &s, &s0).expect("veth m-s");
    let (ca, ma, mb, sb, plen) = if v6 {
        ("fd00:71::1", "fd00:71::2", "fd00:72::1", "fd00:72::2", "64")
    } else {
        ("10.71.0.1", "10.71.0.2", "10.72.0.1", "10.72.0.2", "24")
    };
    let with_len = |a: &str| format!("{a}/{plen}");
    let add = |ns: &Netns, a: &str, dev: &str| {
        let cidr = with_len(a);
        let mut args = vec!["addr", "add", cidr.as_str(), "dev", dev];
        if v6 {
            args.push("nodad");
        }
        ns.exec(&args).expect("addr");
    };
    // Complete checksums on the wire from both ends, so that the receivers verify what the program patched.
    let off = |ns: &Netns, dev: &str| {
        let dev = dev.to_owned();
        ns.run(move || common::tx_checksum_off(&dev))
            .expect("enter ns")
            .expect("tx checksum off");
    };
    off(&c, &c0);
    off(&s, &s0);
    add(&c, ca, &c0);
    add(&m, ma, &m0);
    add(&m, mb, &m1);
    add(&s, sb, &s0);
    let sock = |ns: &Netns, a: &str| bind(ns, &if v6 { format!("[{a}]:0") } else { format!("{a}:0") });
    let sockets = Sockets {
        client: sock(&c, ca),
        listener: sock(&m, ma),
        local: sock(&m, mb),
        server: sock(&s, sb),
    };

    // Empty list: every interface that is up in the middle namespace (lo and both veths).
    let kernel = load_in(&m, Vec::new()).expect("load in the middle namespace");
    assert_eq!(
        kernel.interfaces().len(),
        3,
        "lo + two veths: {:?}",
        kernel.interfaces()
    );

    // Forwarding is off in a new namespace: the FIB lookup fails, and the program must leave the packet to the
    // listener socket untouched (and count the fallback) rather than lose it.
    let flow = UdpFlow {
        client: addr(&sockets.client),
        listener: addr(&sockets.listener),
        local: addr(&sockets.local),
        server: addr(&sockets.server),
    };
    let handle = kernel.add_udp_flow(&flow).expect("add flow");
    sockets.client.send_to(b"fallback", flow.listener).expect("send");
    let mut buf = [0u8; 64];
    let (n, from) = sockets
        .listener
        .recv_from(&mut buf)
        .expect("listener receives the fallback packet");
    assert_eq!((&buf[..n], from), (&b"fallback"[..], flow.client));
    assert_eq!(kernel.udp_events().expect("events").fallback, 1);
    assert_eq!(kernel.udp_stats(&handle).expect("stats").client_to_server.packets, 0);
    kernel.remove_udp_flow(&handle);

    // With forwarding enabled on the middle namespace's ingress interfaces, the kernel carries the flow.
    let family = if v6 { "ipv6" } else { "ipv4" };
    for dev in [&m0, &m1] {
        let key = format!("net.{family}.conf.{dev}.forwarding=1");
        let ok = std::process::Command::new("ip")
            .args(["netns", "exec", &m.name, "sysctl", "-qw", &key])
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "sysctl {key}");
    }
    exchange(&kernel, &sockets);
    let events = kernel.udp_events().expect("events");
    assert_eq!(events.redirected, 2 * 20, "{events:?}");
    assert_eq!(events.errors, 0, "{events:?}");

    if !v6 {
        // IPv4 allows "no checksum" (0). The program must leave it 0: patching it would make the server drop the
        // datagram as corrupt.
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and an int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                sockets.client.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_NO_CHECK");
        let handle = kernel.add_udp_flow(&flow).expect("add flow");
        sockets.client.send_to(b"no checksum", flow.listener).expect("send");
        let (n, from) = sockets
            .server
            .recv_from(&mut buf)
            .expect("server receives the zero-checksum datagram");
        assert_eq!((&buf[..n], from), (&b"no checksum"[..], flow.local));
        kernel.remove_udp_flow(&handle);
    }
}

#[test]
fn udp_veth_ipv4() {
    three_namespaces(false);
}

#[test]
fn udp_veth_ipv6() {
    three_namespaces(true);
}

/// All four sockets on loopback of one namespace: the program rewrites and passes the packet up the stack.
fn loopback(v6: bool) {
    if skip(if v6 { "udp_loopback_ipv6" } else { "udp_loopback_ipv4" }) {
        return;
    }
    let ns = Netns::new("lo").expect("ns");
    let a = if v6 { "[::1]:0" } else { "127.0.0.1:0" };
    let sockets = Sockets {
        client: bind(&ns, a),
        listener: bind(&ns, a),
        local: bind(&ns, a),
        server: bind(&ns, a),
    };
    let kernel = load_in(&ns, vec!["lo".to_owned()]).expect("load");
    exchange(&kernel, &sockets);
    let events = kernel.udp_events().expect("events");
    assert_eq!(
        (events.local, events.redirected, events.errors),
        (2 * 20, 0, 0),
        "{events:?}"
    );
}

#[test]
fn udp_loopback_ipv4() {
    loopback(false);
}

#[test]
fn udp_loopback_ipv6() {
    loopback(true);
}

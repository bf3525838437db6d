//! 64-byte UDP packet rate through a middle network namespace: plain kernel forwarding ("direct"), a trivial
//! user-space forwarder, and the `udp_nat` offload. Needs root; creates and deletes its own namespaces.
//!
//! `cargo run --release -p l7mp-ebpf --example udp_rate [-- SECONDS]` (default 2 s per mode, at most 10).
//! The sender blasts for the window; the server counts what arrives. Ratios are relative to the user-space forwarder.

use std::{
    error::Error,
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use l7mp_ebpf::{Kernel, UdpFlow};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// 14 (Ethernet) + 20 (IPv4) + 8 (UDP) + 22 = a 64-byte frame.
const PAYLOAD: usize = 22;

fn ip(args: &[&str]) -> Res<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Res<thread::JoinHandle<T>> {
    let file = File::open(format!("/run/netns/{ns}"))?;
    Ok(thread::spawn(move || {
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns");
        f()
    }))
}

fn run_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Res<T> {
    in_ns(ns, f)?.join().map_err(|_| "namespace thread panicked".into())
}

fn bind(ns: &str, addr: &str) -> Res<UdpSocket> {
    let addr: SocketAddr = addr.parse()?;
    Ok(run_ns(ns, move || UdpSocket::bind(addr))??)
}

/// Sends for `window` from `client` to `to`, counts at `server`; returns received packets per second and sent pps.
fn measure(c: &str, client: &UdpSocket, to: SocketAddr, server: &UdpSocket, window: Duration) -> Res<(f64, f64)> {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    server.set_read_timeout(Some(Duration::from_millis(200)))?;
    let rx = {
        let (server, received, stop) = (server.try_clone()?, received.clone(), stop.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if server.recv_from(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let sender = client.try_clone()?;
    let tx = in_ns(c, move || {
        let payload = [0x5au8; PAYLOAD];
        let (start, mut sent) = (Instant::now(), 0u64);
        while start.elapsed() < window {
            for _ in 0..64 {
                if sender.send_to(&payload, to).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    })?;
    let sent = tx.join().map_err(|_| "sender panicked")?;
    thread::sleep(Duration::from_millis(300)); // drain
    stop.store(true, Ordering::Relaxed);
    rx.join().map_err(|_| "receiver panicked")?;
    let secs = window.as_secs_f64();
    Ok((received.load(Ordering::Relaxed) as f64 / secs, sent as f64 / secs))
}

fn main() -> Res<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2)
        .clamp(1, 10);
    let window = Duration::from_secs(secs);
    let tag = std::process::id();
    let (c, m, s) = (format!("l7r{tag}c"), format!("l7r{tag}m"), format!("l7r{tag}s"));
    let mut guards = Vec::new();
    for ns in [&c, &m, &s] {
        ip(&["netns", "add", ns])?;
        guards.push(Ns(ns.clone()));
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "link", "add", "rc0", "netns", &c, "type", "veth", "peer", "name", "rm0", "netns", &m,
    ])?;
    ip(&[
        "link", "add", "rm1", "netns", &m, "type", "veth", "peer", "name", "rs0", "netns", &s,
    ])?;
    for (ns, dev, addr) in [
        (&c, "rc0", "10.81.0.1/24"),
        (&m, "rm0", "10.81.0.2/24"),
        (&m, "rm1", "10.82.0.1/24"),
        (&s, "rs0", "10.82.0.2/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    ip(&["-n", &c, "route", "add", "default", "via", "10.81.0.2"])?;
    ip(&["-n", &s, "route", "add", "default", "via", "10.82.0.1"])?;
    let fwd = Command::new("ip")
        .args(["netns", "exec", &m, "sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"])
        .status()?;
    if !fwd.success() {
        return Err("enabling forwarding in the middle namespace failed".into());
    }

    let client = bind(&c, "10.81.0.1:0")?;
    let server = bind(&s, "10.82.0.2:0")?;
    let listener = bind(&m, "10.81.0.2:0")?;
    let local = bind(&m, "10.82.0.1:0")?;
    let addr = |s: &UdpSocket| s.local_addr();
    let flow = UdpFlow {
        client: addr(&client)?,
        listener: addr(&listener)?,
        local: addr(&local)?,
        server: addr(&server)?,
    };

    let (direct, direct_sent) = measure(&c, &client, flow.server, &server, window)?;

    let stop = Arc::new(AtomicBool::new(false));
    let fwd = {
        let (listener, local, stop) = (listener.try_clone()?, local.try_clone()?, stop.clone());
        listener.set_read_timeout(Some(Duration::from_millis(200)))?;
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, _)) = listener.recv_from(&mut buf) {
                    let _ = local.send_to(&buf[..n], flow.server);
                }
            }
        })
    };
    let (user, user_sent) = measure(&c, &client, flow.listener, &server, window)?;
    stop.store(true, Ordering::Relaxed);
    fwd.join().map_err(|_| "forwarder panicked")?;

    let kernel = run_ns(&m, move || {
        Kernel::load(&["rm0".to_owned(), "rm1".to_owned()]).map_err(|e| e.to_string())
    })??;
    let handle = kernel.add_udp_flow(&flow)?;
    let (offload, offload_sent) = measure(&c, &client, flow.listener, &server, window)?;
    let stats = kernel.udp_stats(&handle)?;
    kernel.remove_udp_flow(&handle);

    println!("64-byte UDP frames, {secs} s per mode, veth client ns -> middle ns -> server ns");
    println!(
        "{:<22} {:>12} {:>12} {:>8} {:>10}",
        "mode", "sent pps", "recv pps", "loss %", "vs user"
    );
    for (name, rx, tx) in [
        ("kernel forwarding", direct, direct_sent),
        ("user-space forwarder", user, user_sent),
        ("udp_nat offload", offload, offload_sent),
    ] {
        let loss = if tx > 0.0 {
            100.0 * (1.0 - rx / tx).max(0.0)
        } else {
            0.0
        };
        let ratio = if user > 0.0 { rx / user } else { 0.0 };
        println!("{name:<22} {tx:>12.0} {rx:>12.0} {loss:>8.1} {ratio:>9.2}x");
    }
    println!(
        "offload counters: {} packets, {} bytes client->server",
        stats.client_to_server.packets, stats.client_to_server.bytes
    );
    Ok(())
}

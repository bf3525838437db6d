//! Helpers for the kernel tests: throw-away network namespaces, running code inside them, and the skip rule.

#![allow(dead_code)]

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use l7mp_ebpf::{Kernel, OffloadError};

/// Whether the tests must not skip (CI sets `L7MP_REQUIRE_EBPF=1`).
pub fn required() -> bool {
    std::env::var("L7MP_REQUIRE_EBPF").is_ok_and(|v| v == "1")
}

/// Returns true (after printing a skip line) when BPF cannot be used here and that is allowed.
pub fn skip(test: &str) -> bool {
    let probe = Netns::new("probe").and_then(|ns| {
        ns.run(|| Kernel::load(&["lo".to_owned()]).map(drop).map_err(|e| e.to_string()))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    });
    match probe {
        Ok(()) => false,
        Err(e) if !required() => {
            // Straight to stderr, past the test harness's output capture, so the skip is visible.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIP {test}: eBPF offload unavailable here ({e}); set L7MP_REQUIRE_EBPF=1 to fail instead"
            );
            true
        }
        Err(e) => panic!("{test}: L7MP_REQUIRE_EBPF=1 but eBPF offload is unavailable: {e}"),
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short unique tag (pid + sequence) for names; interface names must stay under 16 bytes.
pub fn tag() -> String {
    format!(
        "{}x{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace, deleted (with its interfaces) on drop, also when a test panics.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Result<Netns, String> {
        let name = format!("l7mp-ebpf-{}-{role}", tag());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> args…`
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a thread that has entered this namespace; sockets and attachments made there belong to it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            // SAFETY: a valid namespace fd; setns affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| "namespace thread panicked".to_owned())?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A veth pair with one end in each namespace, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<(), String> {
    ip(&[
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    a.exec(&["link", "set", a_if, "up"])?;
    b.exec(&["link", "set", b_if, "up"])
}

/// Turns off transmit checksum offload on an interface of the calling thread's namespace (`ethtool -K dev tx off`
/// without ethtool), so that packets leave with complete checksums and the receiver verifies them: on veth a
/// CHECKSUM_PARTIAL packet is never verified, and a checksum bug would go unnoticed.
pub fn tx_checksum_off(dev: &str) -> std::io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    let bytes = dev.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other("interface name too long"));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a live ethtool_value.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Loads the offload in `ns` (on every interface that is up there).
pub fn load_in(ns: &Netns, interfaces: Vec<String>) -> Result<Kernel, OffloadError> {
    ns.run(move || Kernel::load(&interfaces))
        .map_err(OffloadError::Object)?
}

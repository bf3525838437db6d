//! Test harness: runs the real `l7mp-agent` binary on a configuration and gives tests real sockets to talk to it.
#![allow(dead_code)]

pub mod api;
pub mod mesh;
pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_l7mp-agent");
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Agent::wait_log`] waits for a line: generous, because it returns as soon as the line is there and CI
/// machines are loaded (a reconnect or handshake failure can take seconds to be logged there).
pub const LOG_TIMEOUT: Duration = Duration::from_secs(20);

/// A running agent; killed when dropped.
pub struct Agent {
    child: Child,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    /// Set when the agent's stderr reached end of file: every line it wrote is in `log`.
    log_closed: Arc<AtomicBool>,
    pub dir: tempfile::TempDir,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
}

impl Agent {
    /// Starts the agent on `yaml` (with `-l info`) and waits until it says it is running.
    pub fn start(yaml: &str) -> Agent {
        Self::start_with(yaml, &[])
    }

    pub fn start_with(yaml: &str, extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, yaml).expect("write config");
        Self::start_file(&cfg, dir, extra)
    }

    pub fn start_file(cfg: &Path, dir: tempfile::TempDir, extra: &[&str]) -> Agent {
        let agent = Self::spawn(&[], cfg, dir, extra);
        agent.wait_log("l7mp-agent running");
        agent
    }

    /// Starts the agent inside the network namespace `netns` (`ip netns exec <netns> l7mp-agent ...`; `ip` execs
    /// the agent, so the child is the agent itself).
    pub fn start_in_netns(netns: &str, yaml: &str) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, yaml).expect("write config");
        Self::start_prefixed(&["ip", "netns", "exec", netns], &cfg, dir, &[])
    }

    /// Starts the agent with `prefix` (a command that runs its arguments, e.g. `ip netns exec ns`) before it.
    pub fn start_prefixed(prefix: &[&str], cfg: &Path, dir: tempfile::TempDir, extra: &[&str]) -> Agent {
        let agent = Self::spawn(prefix, cfg, dir, extra);
        agent.wait_log("l7mp-agent running");
        agent
    }

    /// Starts the agent on `yaml` like [`Agent::start`], but when it exits before it runs, returns its log instead
    /// of panicking, so a test can retry (e.g. when another process took one of its ports in the meantime).
    pub fn try_start(yaml: &str) -> Result<Agent, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, yaml).expect("write config");
        let mut agent = Self::spawn(&[], &cfg, dir, &[]);
        agent.wait_running_or_exit()?;
        Ok(agent)
    }

    /// Spawns the agent like [`Agent::start_prefixed`] without waiting for it to run (see
    /// [`Agent::wait_running_or_exit`]).
    pub fn spawn_prefixed(prefix: &[&str], cfg: &Path, dir: tempfile::TempDir, extra: &[&str]) -> Agent {
        Self::spawn(prefix, cfg, dir, extra)
    }

    /// Waits until the agent runs (`Ok`) or exits first (`Err` with its log).
    pub fn wait_running_or_exit(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if self.count_log("l7mp-agent running") > 0 {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().expect("wait") {
                while !self.log_closed.load(Ordering::Acquire) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(5));
                }
                return Err(format!(
                    "the agent exited ({status}) before it ran; log:\n{}",
                    self.log_lines().join("\n")
                ));
            }
            assert!(
                Instant::now() < deadline,
                "the agent neither ran nor exited within {TIMEOUT:?}; log:\n{}",
                self.log_lines().join("\n")
            );
            let (m, cv) = &*self.log;
            let lines = m.lock().unwrap();
            drop(cv.wait_timeout(lines, Duration::from_millis(20)).unwrap());
        }
    }

    /// Starts another program of the workspace (`l7mp-control`, built next to the agent), after `prefix`, and
    /// waits for a log line with `ready`. Its log is captured like the agent's.
    pub fn start_program(prefix: &[&str], program: &str, args: &[&str], ready: &str) -> Agent {
        let path = sibling_binary(program);
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        cmd.args(args);
        let agent = Self::spawn_cmd(cmd, tempfile::tempdir().expect("tempdir"));
        agent.wait_log(ready);
        agent
    }

    /// Starts any command (say `ip netns exec NS etcd ...`) with its stderr as the log, and waits until `ready`
    /// appears in it.
    pub fn start_command(cmd: Command, ready: &str) -> Agent {
        let agent = Self::spawn_cmd(cmd, tempfile::tempdir().expect("tempdir"));
        agent.wait_log(ready);
        agent
    }

    /// Spawns the agent (after `prefix`, a command that runs its arguments) without waiting for it.
    fn spawn(prefix: &[&str], cfg: &Path, dir: tempfile::TempDir, extra: &[&str]) -> Agent {
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("-c")
            .arg(cfg)
            .args(["--threads", "2", "--drain-timeout", "1"])
            .args(if extra.contains(&"--log-level") {
                &[][..]
            } else {
                &["-l", "info"][..]
            })
            .args(extra);
        Self::spawn_cmd(cmd, dir)
    }

    /// Spawns `cmd` with its stderr captured as the log.
    fn spawn_cmd(mut cmd: Command, dir: tempfile::TempDir) -> Agent {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = child.stderr.take().expect("stderr");
        let log2 = log.clone();
        let log_closed = Arc::new(AtomicBool::new(false));
        let closed2 = log_closed.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let (m, cv) = &*log2;
                m.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                cv.notify_all();
            }
            closed2.store(true, Ordering::Release);
        });
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        Agent {
            child,
            log,
            log_closed,
            dir,
            stdin,
            stdout,
        }
    }

    /// Waits until a log line contains `needle`; panics with the whole log after the timeout.
    pub fn wait_log(&self, needle: &str) -> String {
        let (m, cv) = &*self.log;
        let deadline = Instant::now() + LOG_TIMEOUT;
        let mut lines = m.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let log = lines.join("\n");
                // Unlocked before the panic, so the lock is not poisoned for Drop's log dump.
                drop(lines);
                panic!("no log line with {needle:?}; log:\n{log}");
            }
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log_lines().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "agent did not exit after SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the agent process still runs (without needing `&mut`).
    pub fn is_running_now(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.child.id())).exists()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- agent log ----\n{}\n---- end of agent log ----",
                self.log_lines().join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the agent to completion on `yaml` (e.g. a broken config) and returns (exit code, stderr).
pub fn run_to_exit(yaml: &str, name: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join(name);
    std::fs::write(&cfg, yaml).expect("write config");
    run_file_to_exit(&cfg)
}

pub fn run_file_to_exit(cfg: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            let mut err = String::new();
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read");
            return (st.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("agent did not exit on {}", cfg.display());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A port free for both TCP and UDP on 127.0.0.1, never handed out twice in this process (tests run in parallel
/// threads; a tiny race with other processes is accepted).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let t = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = t.local_addr().expect("addr").port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// Like [`free_port`], but below the kernel's ephemeral port range, where no process's outgoing connection is ever
/// given a port: the port stays free until the agent binds it, however busy the machine. For tests that need many
/// listener ports at once (each one picked early is a chance for another process to take it meanwhile).
pub fn quiet_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10000u16, low.max(10001));
    // Start at a point that differs between processes, so that concurrent test runs try different ports.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut x = u64::from(std::process::id()) << 32 | u64::from(nanos);
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = from + (x % u64::from(to - from)) as u16;
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            given.push(port);
            return port;
        }
    }
    free_port()
}

/// A UDP client connected to the agent.
pub fn udp_client(port: u16) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
    s.connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s
}

pub fn recv(s: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 70000];
    let n = s.recv(&mut buf).unwrap_or_else(|e| panic!("no datagram arrived: {e}"));
    buf.truncate(n);
    buf
}

/// A UDP server on 127.0.0.1 that answers every datagram with `f(datagram)`; returns its port.
pub fn udp_server(f: impl Fn(&[u8], std::net::SocketAddr) -> Vec<u8> + Send + 'static) -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // Room for a burst from many sessions at once (the kernel caps it at net.core.rmem_max).
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
    let port = s.local_addr().expect("addr").port();
    thread::spawn(move || {
        let mut buf = vec![0u8; 70000];
        while let Ok((n, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&f(&buf[..n], peer), peer);
        }
    });
    port
}

/// A TCP echo server on 127.0.0.1 (echoes until the client half-closes, then closes); returns its port.
pub fn tcp_echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            thread::spawn(move || echo_stream(c));
        }
    });
    port
}

pub fn echo_stream<S: Read + Write>(mut c: S) {
    let mut buf = vec![0u8; 65536];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

pub fn tcp_client(port: u16) -> TcpStream {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
                return s;
            }
            Err(e) if Instant::now() > deadline => {
                panic!("cannot connect to 127.0.0.1:{port}: {e}")
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` on one thread while reading the reply on this one (so large transfers cannot deadlock), then
/// half-closes and reads to EOF. Returns what came back.
pub fn round_trip<S>(stream: S, data: Vec<u8>) -> Vec<u8>
where
    S: Read + Write + Send + 'static + TryCloneShutdown,
{
    let mut writer = stream.try_clone_stream();
    let t = thread::spawn(move || {
        writer.write_all(&data).expect("write");
        writer.shutdown_write();
    });
    let mut out = Vec::new();
    let mut r = stream;
    r.read_to_end(&mut out).expect("read to end");
    t.join().expect("writer");
    out
}

pub trait TryCloneShutdown: Sized {
    fn try_clone_stream(&self) -> Self;
    fn shutdown_write(&self);
}

impl TryCloneShutdown for TcpStream {
    fn try_clone_stream(&self) -> Self {
        self.try_clone().expect("clone")
    }
    fn shutdown_write(&self) {
        self.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
}

impl TryCloneShutdown for std::os::unix::net::UnixStream {
    fn try_clone_stream(&self) -> Self {
        self.try_clone().expect("clone")
    }
    fn shutdown_write(&self) {
        self.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
}

/// A network namespace made for a test (`ip netns add`), deleted when dropped (with every interface in it), so
/// it goes away even when the test fails.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace `name` with its loopback up. `Err` says why (e.g. not root).
    pub fn create(name: &str) -> Result<Netns, String> {
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.to_owned() };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens live in the namespace (and stay
    /// there when used from other threads).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
            // SAFETY: setns on an open namespace file; it changes only this thread's network namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in the namespace panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("cannot delete network namespace {}: {e}", self.name);
        }
    }
}

/// A binary of another workspace package, in the same target directory as the agent (`cargo test --workspace`
/// and `cargo build --workspace` build it).
pub fn sibling_binary(name: &str) -> PathBuf {
    let path = Path::new(BIN).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace --all-targets)",
        path.display()
    );
    path
}

/// Namespaces on one Ethernet segment: a bridge in a hub namespace and a veth into each member, which gets
/// `10.<net>.0.<i+1>/24` (in the order given). Everything is deleted when dropped.
pub struct Lan {
    pub members: Vec<Netns>,
    _hub: Netns,
    net: u8,
}

impl Lan {
    /// `tag` prefixes every namespace name (keep it short: interface names are at most 15 bytes).
    pub fn create(tag: &str, net: u8, names: &[&str]) -> Result<Lan, String> {
        let hub = Netns::create(&format!("{tag}hub"))?;
        ip(&["-n", &hub.name, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub.name, "link", "set", "br0", "up"])?;
        let mut members = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let ns = Netns::create(&format!("{tag}{n}"))?;
            let (inner, outer) = (format!("eth{i}"), format!("{tag}p{i}"));
            ip(&[
                "-n", &hub.name, "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns.name,
            ])?;
            ip(&["-n", &hub.name, "link", "set", &outer, "master", "br0"])?;
            ip(&["-n", &hub.name, "link", "set", &outer, "up"])?;
            let addr = format!("10.{net}.0.{}/24", i + 1);
            ip(&["-n", &ns.name, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &ns.name, "link", "set", &inner, "up"])?;
            members.push(ns);
        }
        Ok(Lan {
            members,
            _hub: hub,
            net,
        })
    }

    /// Gives every member an IPv6 address too, `fd00:<net>::<i+1>/64` (no duplicate address detection, so it is
    /// usable at once).
    pub fn add_ipv6(&self) -> Result<(), String> {
        for (i, ns) in self.members.iter().enumerate() {
            let addr = format!("{}/64", self.addr6(i));
            ip(&[
                "-n",
                &ns.name,
                "-6",
                "addr",
                "add",
                &addr,
                "dev",
                &format!("eth{i}"),
                "nodad",
            ])?;
        }
        Ok(())
    }

    /// The IPv6 address of member `i` (after [`Lan::add_ipv6`]).
    pub fn addr6(&self, i: usize) -> String {
        format!("fd00:{}::{}", self.net, i + 1)
    }

    /// The address of member `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("10.{}.0.{}", self.net, i + 1)
    }

    /// The namespace of member `i`.
    pub fn ns(&self, i: usize) -> &Netns {
        &self.members[i]
    }
}

/// Runs `ip <args>`; `Err` carries its stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether tests that need network namespaces may be skipped (`L7MP_SKIP_NETNS=1`); otherwise a namespace that
/// cannot be created fails the test.
pub fn skip_netns() -> bool {
    std::env::var("L7MP_SKIP_NETNS").is_ok_and(|v| v == "1")
}

/// The repository root (for examples/).
pub fn repo_root() -> PathBuf {
    manifest_dir().parent().expect("root").to_path_buf()
}

/// The interpreter with the independent clients (`e2e/clients/requirements.txt`), or `None` (test skipped) where
/// they are not installed, unless `L7MP_REQUIRE_CLIENTS` is set (CI), where that is a failure.
pub fn python_with(module: &str) -> Option<String> {
    let py = std::env::var("L7MP_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    assert!(
        std::env::var_os("L7MP_REQUIRE_CLIENTS").is_none(),
        "{py} cannot import {module}: install e2e/clients/requirements.txt (bash .ci/run does)"
    );
    eprintln!("{py} has no {module} module; skipping (bash .ci/run installs it)");
    None
}

/// The agent crate's directory: the one `cargo test` runs in (set at run time), so a test binary reused from the
/// shared build cache of another checkout still reads this checkout's files; the build-time value otherwise.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

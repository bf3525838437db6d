//! A throwaway etcd server for tests: `/usr/bin/etcd` (or `$L7MP_ETCD`) on two free loopback ports,
//! its data in a temporary directory (under /dev/shm when it exists, so fsync is cheap).
//!
//! [`EtcdServer::start`] returns `None` (after printing a skip line) when etcd is not installed,
//! unless `L7MP_REQUIRE_ETCD=1`, when it panics: CI sets it so that the etcd tests cannot skip.
//!
//! etcd runs under a small `sh` that kills it when the test process's end closes its stdin, so a
//! server in a `static` (or a test that aborts) does not outlive the test binary. [`Drop`] kills
//! it by PID and removes the directory.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A file in the data directory that tells the `sh` around etcd to keep the directory.
const KEEP_MARKER: &str = "keep";

/// How long etcd may take to report healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The TLS files of a server that authenticates its clients (see [`TlsFiles::generate`]).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with the
    /// `openssl` command line in `dir`.
    pub fn generate(dir: &Path) -> TlsFiles {
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run openssl");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=l7mp test CA",
                ],
            ]
            .concat(),
        );
        for (name, usage, san) in [
            ("server", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
            ("client", "clientAuth", ""),
        ] {
            let (key, csr, pem, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            std::fs::write(
                dir.join(&ext),
                format!("{san}extendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
            )
            .expect("write ext");
            openssl(
                &[
                    &["req"][..],
                    &ec,
                    &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN=l7mp test {name}")],
                ]
                .concat(),
            );
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// A running etcd (see the module documentation).
pub struct EtcdServer {
    binary: PathBuf,
    dir: Option<tempfile::TempDir>,
    client_port: u16,
    peer_port: u16,
    /// The port of `/health` over plain HTTP (the client port unless TLS is on).
    health_port: u16,
    tls: Option<TlsFiles>,
    /// The `sh` that owns etcd, and etcd's PID.
    running: Option<(Child, u32)>,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// The etcd binary: `$L7MP_ETCD`, else `/usr/bin/etcd`, else `etcd` on PATH.
fn find_etcd() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("L7MP_ETCD") {
        return Some(PathBuf::from(path));
    }
    let default = PathBuf::from("/usr/bin/etcd");
    if default.exists() {
        return Some(default);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("etcd"))
        .find(|path| path.exists())
}

impl EtcdServer {
    /// Starts a plain-HTTP etcd and waits until it is healthy; `None` if etcd is not installed.
    pub fn start() -> Option<EtcdServer> {
        EtcdServer::start_with(None)
    }

    /// Starts an etcd that serves clients over TLS and requires client certificates.
    pub fn start_tls(tls: TlsFiles) -> Option<EtcdServer> {
        EtcdServer::start_with(Some(tls))
    }

    fn start_with(tls: Option<TlsFiles>) -> Option<EtcdServer> {
        let Some(binary) = find_etcd() else {
            if std::env::var("L7MP_REQUIRE_ETCD").is_ok_and(|v| v == "1") {
                panic!("etcd is not installed (apt-get install etcd-server) and L7MP_REQUIRE_ETCD=1");
            }
            eprintln!(
                "SKIP: etcd is not installed (apt-get install etcd-server); set L7MP_REQUIRE_ETCD=1 to fail instead"
            );
            return None;
        };
        let shm = Path::new("/dev/shm");
        let mut builder = tempfile::Builder::new();
        builder.prefix("l7mp-etcd-");
        let dir = if shm.is_dir() {
            builder.tempdir_in(shm)
        } else {
            builder.tempdir()
        }
        .expect("etcd temp dir");
        let client_port = free_port();
        let peer_port = free_port();
        let health_port = if tls.is_some() { free_port() } else { client_port };
        let mut server = EtcdServer {
            binary,
            dir: Some(dir),
            client_port,
            peer_port,
            health_port,
            tls,
            running: None,
        };
        server.spawn();
        Some(server)
    }

    fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the data directory lives as long as the server")
            .path()
    }

    /// `etcd://127.0.0.1:PORT` (`etcds://` with TLS, without the file options).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// [`url`](Self::url) with a key prefix.
    pub fn url_with_prefix(&self, prefix: &str) -> String {
        format!("{}{prefix}", self.url())
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    fn spawn(&mut self) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut args: Vec<String> = [
            "--name",
            "l7mp-test",
            "--data-dir",
            &self.dir().join("data").display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("l7mp-test={peer}"),
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(tls) = &self.tls {
            for (flag, path) in [
                ("--cert-file", &tls.server_cert),
                ("--key-file", &tls.server_key),
                ("--trusted-ca-file", &tls.ca),
            ] {
                args.push(flag.to_string());
                args.push(path.display().to_string());
            }
            args.push("--client-cert-auth".to_string());
            args.push("--listen-metrics-urls".to_string());
            args.push(format!("http://127.0.0.1:{}", self.health_port));
        }
        // sh prints etcd's PID, then waits for its stdin to close (`stop`, or this process ending
        // without running `Drop`), kills etcd and, unless `stop` asked to keep it, removes the directory.
        let _ = std::fs::remove_file(self.dir().join(KEEP_MARKER));
        let script = r#"dir="$1"; shift; "$@" >>"$dir/etcd.log" 2>&1 & echo $!; cat >/dev/null; kill -9 $! 2>/dev/null; wait $!; [ -e "$dir/keep" ] || rm -rf "$dir""#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(self.dir())
            .arg(&self.binary)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // etcd logs to the file; sh would only report the job it killed.
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh for etcd");
        let mut line = String::new();
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).expect("read etcd's PID") == 1 && byte[0] != b'\n' {
            line.push(char::from(byte[0]));
        }
        let pid: u32 = line.trim().parse().expect("etcd's PID from sh");
        self.running = Some((child, pid));
        self.wait_healthy(pid);
    }

    fn wait_healthy(&self, pid: u32) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if health(self.health_port) {
                return;
            }
            let alive = alive(pid);
            if !alive || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir().join("etcd.log")).unwrap_or_default();
                panic!(
                    "etcd on port {} {} ; its log:\n{log}",
                    self.client_port,
                    if alive {
                        "did not become healthy in time"
                    } else {
                        "exited"
                    }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills etcd (SIGKILL: an outage, not a clean shutdown) and waits for it to be gone.
    pub fn stop(&mut self) {
        // Keep the data for `restart`.
        let _ = std::fs::write(self.dir().join(KEEP_MARKER), b"");
        self.kill();
    }

    fn kill(&mut self) {
        if let Some((mut child, pid)) = self.running.take() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            drop(child.stdin.take());
            let _ = child.wait();
            // The ports are free once etcd is gone (dead or a zombie).
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts etcd again on the same ports with the same data, and waits until it is healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

/// Whether a process runs (a zombie does not: it holds no ports).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
}

/// `GET /health` over plain HTTP: whether etcd says `"health":"true"`.
fn health(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains(r#""health":"true""#)
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        // TempDir removes the directory.
        drop(self.dir.take());
    }
}

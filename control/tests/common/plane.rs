//! A real `l7mp-control` process on a free loopback port with an embedded store in a temporary directory, `l7mpctl`
//! against it, and the Python interpreter of the independent clients (`L7MP_PYTHON`, the venv `.ci/run` makes).

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python with the clients' packages, or `None` (the test prints SKIP) when it lacks `modules` and
/// `L7MP_REQUIRE_CLIENTS` is not set; with it set, a missing package fails the test.
pub fn python_with(modules: &[&str]) -> Option<String> {
    let py = std::env::var("L7MP_PYTHON").unwrap_or_else(|_| "python3".into());
    let import = format!("import {}", modules.join(", "));
    let ok = Command::new(&py)
        .args(["-c", &import])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    assert!(
        std::env::var_os("L7MP_REQUIRE_CLIENTS").is_none(),
        "{py} cannot `{import}`: install e2e/clients/requirements.txt (bash .ci/run does)"
    );
    eprintln!("SKIP: {py} cannot `{import}` (bash .ci/run installs e2e/clients/requirements.txt)");
    None
}

/// The repository root.
pub fn repo() -> PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("..")
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `l7mp-control`; killed (and its log printed if the test panicked) on drop.
pub struct Plane {
    pub port: u16,
    child: Child,
    log: PathBuf,
    /// Arguments `ctl` gives `l7mpctl` before the command (credentials).
    ctl_args: Vec<String>,
    scheme: &'static str,
    _dir: tempfile::TempDir,
}

impl Plane {
    pub fn start() -> Plane {
        Self::start_with(&[], &[])
    }

    /// With more `l7mp-control` arguments, and the `l7mpctl` arguments (credentials) that `ctl` uses; an `--tls-cert`
    /// among `args` makes the URL `https://`.
    pub fn start_with(args: &[&str], ctl_args: &[&str]) -> Plane {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = dir.path().join("control.log");
        let child = Command::new(env!("CARGO_BIN_EXE_l7mp-control"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--store",
                &format!("embedded:{}", dir.path().join("store").display()),
                "--log-level",
                "info,l7mp_control::xds=debug",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start l7mp-control");
        let plane = Plane {
            port,
            child,
            log,
            ctl_args: ctl_args.iter().map(|s| s.to_string()).collect(),
            scheme: if args.contains(&"--tls-cert") { "https" } else { "http" },
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while plane.ctl(&["status"]).0 != 0 {
            assert!(
                Instant::now() < deadline,
                "l7mp-control did not get ready:\n{}",
                plane.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        plane
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `l7mpctl ARGS` (with `stdin` as standard input) with the plane's credentials: (exit code, stdout +
    /// stderr).
    pub fn ctl_with(&self, args: &[&str], stdin: Option<&str>) -> (i32, String) {
        let mut all: Vec<&str> = self.ctl_args.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        self.ctl_as(&all, stdin)
    }

    /// Runs `l7mpctl ARGS` with only the given credentials (none of the plane's).
    pub fn ctl_as(&self, args: &[&str], stdin: Option<&str>) -> (i32, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_l7mpctl"))
            .arg("--server")
            .arg(self.url())
            .env_remove("L7MP_TOKEN")
            .env_remove("L7MP_TOKEN_FILE")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("l7mpctl");
        if let Some(text) = stdin
            && let Some(mut i) = child.stdin.take()
        {
            i.write_all(text.as_bytes()).expect("stdin");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("l7mpctl output");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    pub fn ctl(&self, args: &[&str]) -> (i32, String) {
        self.ctl_with(args, None)
    }

    /// `l7mpctl apply -f -` of YAML; panics unless it succeeds.
    pub fn apply(&self, yaml: &str) -> String {
        let (code, out) = self.ctl_with(&["apply", "-f", "-"], Some(yaml));
        assert_eq!(code, 0, "l7mpctl apply failed: {out}\n{yaml}");
        out
    }

    /// `l7mpctl get KIND NAME -o json` as JSON.
    pub fn get(&self, kind: &str, name: &str) -> serde_json::Value {
        let (code, out) = self.ctl(&["get", kind, name, "-o", "json"]);
        assert_eq!(code, 0, "l7mpctl get {kind} {name}: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// The gRPC bootstrap file for a client with this node id: the one docs/grpc.md shows, with this control
    /// plane's port and the node id put in (so the guide's file is the one tested).
    pub fn bootstrap(&self, dir: &Path, node_id: &str) -> PathBuf {
        let guide = std::fs::read_to_string(repo().join("docs/grpc.md")).expect("docs/grpc.md");
        let block = guide
            .split("```json\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("a ```json block in docs/grpc.md");
        assert!(
            block.contains("127.0.0.1:18000") && block.contains("echo-client-1"),
            "{block}"
        );
        let text = block
            .replace("127.0.0.1:18000", &format!("127.0.0.1:{}", self.port))
            .replace("echo-client-1", node_id);
        serde_json::from_str::<serde_json::Value>(&text).expect("the guide's bootstrap is JSON");
        let path = dir.join(format!("bootstrap-{node_id}.json"));
        std::fs::write(&path, text).expect("bootstrap");
        path
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- l7mp-control log ---\n{}", self.log());
        }
    }
}

//! Certificates for the TLS and DTLS tests (made with rcgen), and the independent clients and servers: `openssl
//! s_client`/`s_server` (Debian's) and Python's `ssl`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// A CA that signs test certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub pem: String,
}

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A leaf for `names` (DNS names or IP addresses) with subject `CN=<cn>`, valid now (or expired long ago).
    pub fn issue(&self, cn: &str, names: &[&str], expired: bool) -> Issued {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Every certificate the tests use, written into `dir`.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
    pub other_ca: Ca,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let pki = Pki {
            dir: dir.to_path_buf(),
            ca: Ca::new("l7mp test CA"),
            other_ca: Ca::new("another CA"),
        };
        pki.write("ca.pem", &pki.ca.pem);
        pki.write("other-ca.pem", &pki.other_ca.pem);
        pki.save("server", &pki.ca.issue("localhost", &["localhost", "127.0.0.1"], false));
        pki.save(
            "server2",
            &pki.ca.issue("localhost", &["localhost", "127.0.0.1"], false),
        );
        pki.save("expired", &pki.ca.issue("localhost", &["localhost", "127.0.0.1"], true));
        pki.save(
            "foreign",
            &pki.other_ca.issue("localhost", &["localhost", "127.0.0.1"], false),
        );
        pki.save("alice", &pki.ca.issue("alice", &["alice.example"], false));
        pki.save("bob", &pki.ca.issue("bob", &["bob.example"], false));
        pki
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).unwrap();
    }

    /// Writes `<name>.pem` and `<name>.key`.
    pub fn save(&self, name: &str, i: &Issued) {
        self.write(&format!("{name}.pem"), &i.cert);
        self.write(&format!("{name}.key"), &i.key);
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// `openssl`, or `None` (test skipped) where it is missing, unless `L7MP_REQUIRE_CLIENTS` is set (CI).
pub fn openssl() -> Option<&'static str> {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some("openssl");
    }
    assert!(
        std::env::var_os("L7MP_REQUIRE_CLIENTS").is_none(),
        "the openssl command is missing (apt-get install openssl)"
    );
    eprintln!("no openssl command; skipping");
    None
}

/// Runs `openssl s_client` with `args` (after `-connect 127.0.0.1:<port>`), `input` on its stdin; returns (exit
/// success, stdout + stderr).
pub fn s_client(port: u16, args: &[&str], input: &[u8]) -> (bool, String) {
    let mut c = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    c.stdin.take().unwrap().write_all(input).unwrap();
    let out = wait_output(c, Duration::from_secs(10));
    (out.0, out.1)
}

/// `openssl s_client -brief` that verifies the server's chain against `ca` (failing the handshake otherwise), sends
/// `name` as SNI (`None`: no SNI) and checks that the certificate is valid for it; returns (success, output).
pub fn s_client_verify(port: u16, ca: &str, name: Option<&str>) -> (bool, String) {
    let mut args = vec!["-CAfile", ca, "-verify_return_error", "-brief"];
    match name {
        Some(n) => args.extend_from_slice(&["-servername", n, "-verify_hostname", n]),
        None => args.push("-noservername"),
    }
    s_client(port, &args, b"")
}

/// Waits for a child with a deadline (killed after it), returning (success, stdout + stderr).
pub fn wait_output(mut c: Child, limit: Duration) -> (bool, String) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(_st) = c.try_wait().unwrap() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = c.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = c.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A TLS client in Python's `ssl`: connects to 127.0.0.1:`port` verifying against `ca` as `sni`, optionally with a
/// client certificate, sends `data` and reads back as many bytes (or until the end). Returns its JSON report:
/// `{ok, fingerprint, echo, version}` or `{ok: false, error}`.
pub const PY_CLIENT: &str = r#"
import hashlib, json, socket, ssl, sys
port, ca, sni, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
data = sys.argv[6].encode()
ctx = ssl.create_default_context(cafile=ca)
if cert:
    ctx.load_cert_chain(cert, key)
try:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=sni) as t:
            fp = hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()
            t.sendall(data)
            got = b""
            while len(got) < len(data):
                chunk = t.recv(65536)
                if not chunk:
                    break
                got += chunk
            print(json.dumps({"ok": True, "fingerprint": fp, "echo": got.decode("latin1"), "version": t.version()}))
except Exception as e:
    print(json.dumps({"ok": False, "error": type(e).__name__ + ": " + str(e)}))
"#;

pub fn py_client(
    py: &str,
    port: u16,
    ca: &str,
    sni: &str,
    client: Option<(&str, &str)>,
    data: &str,
) -> serde_json::Value {
    let (cert, key) = client.unwrap_or(("", ""));
    let out = Command::new(py)
        .args(["-c", PY_CLIENT, &port.to_string(), ca, sni, cert, key, data])
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "python client printed no report ({e}): {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A TLS echo server in Python's `ssl` on 127.0.0.1 (with `ca`: clients must present a certificate from it). Prints
/// its port, then `ERR <reason>` for each failed handshake.
pub const PY_SERVER: &str = r#"
import socket, ssl, sys, threading
cert, key, ca = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
if ca:
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(64)
print(ls.getsockname()[1], flush=True)
def serve(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
        while True:
            d = t.recv(65536)
            if not d:
                break
            t.sendall(d)
        t.close()
    except Exception as e:
        print("ERR", e, flush=True)
        c.close()
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A running Python TLS echo server; killed when dropped.
pub struct PyServer {
    child: Child,
    pub port: u16,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl PyServer {
    pub fn start(py: &str, cert: &str, key: &str, ca: Option<&str>) -> PyServer {
        let mut child = Command::new(py)
            .args(["-c", PY_SERVER, cert, key, ca.unwrap_or("")])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python server");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let port = first
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("python server: {first:?}"));
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        PyServer { child, port, lines }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

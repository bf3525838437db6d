//! Scripted xDS protocol checks from an independent implementation: `e2e/clients/xds_protocol.py` (PyPI
//! `xds-protos` stubs, grpcio) drives state-of-the-world and delta ADS streams and CSDS against a real
//! `l7mp-control` serving gRPC services: subscribe/unsubscribe, ACK/NACK (no resend of a NACKed version, CSDS
//! NACKED then ACKED), stale nonces (ignored in SotW; in delta they still subscribe), absent names, wildcard, and
//! reconnecting with `initial_resource_versions`.
//!
//! Needs `grpcio` and `xds-protos` in `L7MP_PYTHON` (skipped with a note otherwise, except under
//! `L7MP_REQUIRE_CLIENTS`).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::plane::{Plane, python_with, repo};

/// The whole script takes about 8 s; it is killed after this.
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn xds_protos_script_passes_every_check() {
    let Some(py) = python_with(&["grpc", "envoy.service.discovery.v3.ads_pb2_grpc"]) else {
        return;
    };
    let started = Instant::now();
    let plane = Plane::start();
    let mut child = Command::new(&py)
        .arg(repo().join("e2e/clients/xds_protocol.py"))
        .args(["--server", &format!("127.0.0.1:{}", plane.port)])
        .args(["--l7mpctl", env!("CARGO_BIN_EXE_l7mpctl")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the protocol checks failed (or ran past {LIMIT:?})"
    );
    let passed: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("PASS "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        passed,
        [
            "sotw_subscribe_unsubscribe",
            "sotw_ack_nack",
            "sotw_stale_nonce",
            "sotw_reconnect",
            "delta_subscribe_unsubscribe",
            "delta_wildcard",
            "delta_ack_nack_stale",
            "delta_reconnect_initial_versions",
        ]
    );
    // The server saw the two NACKs the script sent, and logged them.
    let log = plane.log();
    assert_eq!(log.matches("xDS NACK").count(), 2, "{log}");
    eprintln!("xds_protos_script_passes_every_check: {:?}", started.elapsed());
}

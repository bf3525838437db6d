//! The OpenAPI document against the running agent, checked by an independent tool: `schemathesis` (PyPI, installed
//! by `.ci/run` from `e2e/clients/requirements.txt`) generates requests for every operation of
//! `/api/v1/openapi.json` and asserts that no answer is a server error (5xx) and that every answer matches the
//! document (status codes, content types, body schemas).
//!
//! It has a test binary of its own: the generated requests add and remove listeners, which must not meet other
//! tests' ports.

#![allow(clippy::unwrap_used)]

mod common;
use common::api::*;
use common::*;

#[test]
fn schemathesis_finds_no_server_errors_and_no_schema_violations() {
    let Some(py) = python_with("schemathesis") else {
        return;
    };
    let (udp, up) = (quiet_port(), tcp_echo_server());
    let yaml = format!(
        "
listeners:
  - name: udp
    spec: {{ protocol: UDP, port: {udp} }}
    rules:
      - name: r0
        action: {{ route: {{ name: main, destination: echo, ingress: [ echo ] }} }}
    options: {{ track: 30 }}
clusters:
  - name: echo
    spec: {{ protocol: Echo }}
  - name: up
    spec: {{ protocol: TCP, port: {up} }}
    endpoints: [ {{ name: up-1, spec: {{ address: 127.0.0.1 }} }} ]
"
    );
    let (mut agent, p) = start_with_admin(&yaml);
    // A live session, so that the session routes have something to show.
    let client = udp_client(udp);
    client.send(b"hello").unwrap();
    assert_eq!(recv(&client), b"hello");
    let examples = std::env::var("L7MP_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "15".into());
    let dir = tempfile::tempdir().unwrap();
    // First the reads, while the configuration and the session are all there; then everything (the changes soon
    // replace or empty the configuration).
    for only_reads in [true, false] {
        let mut cmd = std::process::Command::new(&py);
        cmd.current_dir(dir.path())
            .args(["-m", "schemathesis.cli", "run"])
            .arg(format!("http://127.0.0.1:{p}/api/v1/openapi.json"))
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--phases",
                "coverage,fuzzing",
                "--max-examples",
                &examples,
                "--seed",
                "7",
                "--workers",
                "1",
                "--request-timeout",
                "10",
                "--no-color",
                "--generation-database",
                "none",
            ])
            .env("SCHEMATHESIS_TELEMETRY", "false");
        if only_reads {
            cmd.args(["--include-method", "GET"]);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis found problems (reads only: {only_reads}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("passed"), "{text}");
    }
    assert!(agent.is_running(), "the agent died under schemathesis");
    // It still answers.
    assert_eq!(call(p, "GET", "/live", None).0, 200);
}

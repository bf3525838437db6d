//! Bad input: every configuration in `tests/broken/` makes the agent exit 1 with an error naming the field (the
//! file's first line says `# expect: <text>`), and none panics. Also: listeners that cannot bind, `--check`,
//! `--help`.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::path::PathBuf;

#[test]
fn every_broken_config_exits_1_naming_the_field() {
    let dir = manifest_dir().join("tests/broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus has at least 20 broken configs");
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks an '# expect: ' first line", f.display()))
            .to_owned();
        let (code, stderr) = run_file_to_exit(f);
        if code != Some(1) || !stderr.contains(&expect) || stderr.contains("panicked") {
            failures.push(format!(
                "{}: exit {code:?}, wanted {expect:?}, stderr:\n{stderr}",
                f.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn all_errors_of_a_config_are_reported_together() {
    let (code, stderr) = run_to_exit(
        "listeners:\n  - {name: a, spec: {protocol: TCP, port: 0}, rules: x}\nclusters:\n  - {name: c, spec: {protocol: UDP, port: nope}}\n",
        "many.yaml",
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("listeners[0].spec.port: expected an integer 1..65535, got 0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("clusters[0].spec.port: expected an integer 1..65535, got \"nope\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("listeners[0].rules: rulelist \"x\" is not defined"),
        "{stderr}"
    );
}

#[test]
fn a_port_in_use_exits_1_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (code, stderr) = run_to_exit(
        &format!(
            "listeners:\n  - {{name: busy, spec: {{protocol: TCP, port: {port}, address: 127.0.0.1}}, rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]}}\n"
        ),
        "busy.yaml",
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("listeners \"busy\": cannot listen on TCP 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let (code, stderr) = run_file_to_exit(std::path::Path::new("/nonexistent/l7mp.yaml"));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("cannot read configuration file /nonexistent/l7mp.yaml"),
        "{stderr}"
    );
}

#[test]
fn check_flag_validates_without_running() {
    let out = std::process::Command::new(BIN)
        .args(["--check", "-c"])
        .arg(repo_root().join("examples/udp-jsonencap.yaml"))
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (2 listeners"));
}

#[test]
fn help_teaches_with_an_example() {
    let out = std::process::Command::new(BIN).arg("--help").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "--config",
        "--log-level",
        "--threads",
        "EXAMPLE",
        "protocol: Echo",
        "L7MP_CONFIG",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}

#[test]
fn a_udp_port_in_use_exits_1_even_though_listeners_share_addresses_internally() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (code, stderr) = run_to_exit(
        &format!(
            "listeners:\n  - {{name: busy, spec: {{protocol: UDP, port: {port}, address: 127.0.0.1}}, rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]}}\n"
        ),
        "busy-udp.yaml",
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("listeners \"busy\": cannot listen on UDP 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[test]
fn two_agents_cannot_share_a_udp_port() {
    let port = free_port();
    let cfg = format!(
        "listeners:\n  - {{name: first, spec: {{protocol: UDP, port: {port}, address: 127.0.0.1}}, rules: [{{action: {{route: {{destination: {{spec: {{protocol: Echo}}}}}}}}}}]}}\n"
    );
    let _first = Agent::start(&cfg);
    let (code, stderr) = run_to_exit(&cfg, "second.yaml");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("Address already in use") || stderr.contains("in use"),
        "{stderr}"
    );
}

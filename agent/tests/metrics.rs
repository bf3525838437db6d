//! Prometheus metrics end to end: a real agent with an HTTP listener routed to a `Prometheus` cluster, scraped over
//! HTTP while UDP, TCP and `Metric` traffic runs; exact counter values live and after the sessions ended; the
//! Grafana dashboard's metric names all present in a scrape; `--no-metrics`; config rejects counted by
//! `Engine::apply` (in process).

#![allow(clippy::unwrap_used)]

mod common;
use common::api::http;
use common::*;
use std::collections::BTreeSet;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `GET /metrics` from the agent's metrics listener: (status, content type, body).
fn http_get(port: u16) -> (u16, String, String) {
    http(port, "GET", "/metrics", None, "")
}

fn scrape(port: u16) -> String {
    let (status, ctype, body) = http_get(port);
    assert_eq!(status, 200, "{body}");
    assert_eq!(ctype, "text/plain; version=0.0.4");
    body
}

/// The value of the series written exactly as `series` (name and labels in the exposition's order).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Scrapes until `series` has value `want` (the agent updates some values right after answering the client).
fn wait_value(port: u16, series: &str, want: f64) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let t = scrape(port);
        if value(&t, series) == Some(want) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never became {want}; last scrape:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const N: usize = 50;

#[test]
fn counters_are_exact_live_and_after_the_session_ended() {
    let (web, udp_in, udp_m, tcp_bad) = (free_port(), free_port(), free_port(), free_port());
    let dead = quiet_port(); // nothing listens there
    let echo = udp_server(|m, _| m.to_vec());
    let agent = Agent::start(&format!(
        r#"
listeners:
  - name: web
    spec: {{ protocol: HTTP, port: {web}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: prom }} }} }}]
  - name: udp-in
    spec: {{ protocol: UDP, port: {udp_in}, address: 127.0.0.1, idle_timeout: 0.4 }}
    rules: [{{ action: {{ route: {{ destination: up }} }} }}]
  - name: udp-m
    spec: {{ protocol: UDP, port: {udp_m}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: meter }} }} }}]
  - name: tcp-bad
    spec: {{ protocol: TCP, port: {tcp_bad}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: dead, retry: {{ retry_on: connect-failure, num_retries: 1, timeout: 200 }} }} }} }}]
clusters:
  - name: prom
    spec: {{ protocol: Prometheus }}
  - name: meter
    spec: {{ protocol: Metric }}
  - name: up
    spec: {{ protocol: UDP, port: {echo} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
  - name: dead
    spec: {{ protocol: TCP, port: {dead} }}
    endpoints: [{{ spec: {{ address: 127.0.0.1 }} }}]
"#
    ));
    agent.wait_log("listener started");

    // N datagrams of known sizes through udp-in, each echoed by the upstream.
    let c = udp_client(udp_in);
    let sizes: Vec<usize> = (0..N).map(|i| 1 + (i * 37) % 1200).collect();
    let total: usize = sizes.iter().sum();
    for (i, n) in sizes.iter().enumerate() {
        let m = pattern(*n, i as u64);
        c.send(&m).unwrap();
        assert_eq!(recv(&c), m);
    }
    let (n, total) = (N as f64, total as f64);
    let live = wait_value(
        web,
        r#"l7mp_listener_packets_total{direction="tx",listener="udp-in"}"#,
        n,
    );
    assert_eq!(
        value(
            &live,
            r#"l7mp_listener_packets_total{direction="rx",listener="udp-in"}"#
        ),
        Some(n)
    );
    assert_eq!(
        value(&live, r#"l7mp_listener_bytes_total{direction="rx",listener="udp-in"}"#),
        Some(total)
    );
    assert_eq!(
        value(&live, r#"l7mp_listener_bytes_total{direction="tx",listener="udp-in"}"#),
        Some(total)
    );
    assert_eq!(
        value(&live, r#"l7mp_cluster_bytes_total{cluster="up",direction="tx"}"#),
        Some(total)
    );
    assert_eq!(
        value(&live, r#"l7mp_cluster_packets_total{cluster="up",direction="rx"}"#),
        Some(n)
    );
    assert_eq!(
        value(&live, r#"l7mp_listener_active_sessions{listener="udp-in"}"#),
        Some(1.0)
    );
    assert_eq!(value(&live, r#"l7mp_cluster_active_sessions{cluster="up"}"#), Some(1.0));
    assert_eq!(
        value(
            &live,
            r#"listener_requests_total{listenerName="udp-in",protocol="UDP"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&live, r#"cluster_requests_total{clusterName="up",protocol="UDP"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&live, r#"l7mp_cluster_connect_duration_seconds_count{cluster="up"}"#),
        Some(1.0)
    );

    // The idle timeout ends the session: the counts move to the totals, nothing is lost or doubled.
    let ended = wait_value(web, r#"l7mp_listener_active_sessions{listener="udp-in"}"#, 0.0);
    assert_eq!(
        value(
            &ended,
            r#"l7mp_listener_packets_total{direction="rx",listener="udp-in"}"#
        ),
        Some(n)
    );
    assert_eq!(
        value(&ended, r#"l7mp_listener_bytes_total{direction="rx",listener="udp-in"}"#),
        Some(total)
    );
    assert_eq!(
        value(&ended, r#"l7mp_cluster_bytes_total{cluster="up",direction="tx"}"#),
        Some(total)
    );
    assert_eq!(
        value(&ended, r#"l7mp_cluster_active_sessions{cluster="up"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(&ended, r#"l7mp_session_duration_seconds_count{listener="udp-in"}"#),
        Some(1.0)
    );

    // A second session adds to the same counters.
    let c2 = udp_client(udp_in);
    c2.send(b"again").unwrap();
    assert_eq!(recv(&c2), b"again");
    let t = wait_value(
        web,
        r#"listener_requests_total{listenerName="udp-in",protocol="UDP"}"#,
        2.0,
    );
    assert_eq!(
        value(&t, r#"l7mp_listener_packets_total{direction="rx",listener="udp-in"}"#),
        Some(n + 1.0)
    );
    assert_eq!(
        value(&t, r#"l7mp_listener_bytes_total{direction="rx",listener="udp-in"}"#),
        Some(total + 5.0)
    );
    assert_eq!(
        value(&t, r#"cluster_requests_total{clusterName="up",protocol="UDP"}"#),
        Some(2.0)
    );

    // A connect failure (after one retry) is a session error.
    let mut bad = TcpStream::connect(("127.0.0.1", tcp_bad)).unwrap();
    bad.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = bad.read_to_end(&mut Vec::new());
    let t = wait_value(
        web,
        r#"l7mp_session_errors_total{listener="tcp-bad",reason="connect_failed"}"#,
        1.0,
    );
    assert_eq!(
        value(&t, r#"l7mp_retries_total{cluster="dead",kind="connect"}"#),
        Some(1.0)
    );

    // The Metric cluster counts a live session's messages under the original's names.
    let m = udp_client(udp_m);
    for i in 0..N {
        m.send(format!("{i:03}").as_bytes()).unwrap();
        assert_eq!(recv(&m), format!("{i:03}").as_bytes());
    }
    let t = scrape(web);
    let series = |name: &str| -> Option<f64> {
        t.lines()
            .filter(|l| l.starts_with(&format!("{name}{{clusterName=\"meter\",sessionName=")))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    };
    assert_eq!(series("session_packet_counter_total"), Some(n), "{t}");
    assert_eq!(series("session_byte_counter_total"), Some(3.0 * n), "{t}");

    // Every metric a dashboard panel queries is in the scrape.
    dashboard_metrics_exist(&t);

    // The scrapes are sessions of the web listener too.
    assert!(value(&t, r#"listener_requests_total{listenerName="web",protocol="HTTP"}"#).is_some_and(|v| v >= 5.0));
    assert!(t.contains("l7mp_build_info{version="));
}

/// PromQL functions, aggregations and keywords that are followed by `(` or `)` but are no metric names.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "rate",
    "irate",
    "increase",
    "delta",
    "histogram_quantile",
    "time",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "topk",
    "bottomk",
    "abs",
    "clamp_min",
    "clamp_max",
    "label_replace",
    "vector",
    "scalar",
    "and",
    "or",
    "unless",
    "offset",
];

/// The metric names in a PromQL expression: identifiers followed by `{`, `[` or `)`, after removing strings and
/// grouping clauses (`by (a, b)`), minus PromQL's own words.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Drop quoted strings.
    let mut s = String::new();
    let mut quoted = false;
    for ch in expr.chars() {
        if ch == '"' {
            quoted = !quoted;
        } else if !quoted {
            s.push(ch);
        }
    }
    // Drop grouping clauses: `by (...)`, `without (...)`, `on (...)`, ...
    for kw in ["by", "without", "on", "ignoring", "group_left", "group_right"] {
        while let Some(at) = find_word(&s, kw) {
            let rest = &s[at + kw.len()..];
            let trimmed = rest.trim_start();
            if !trimmed.starts_with('(') {
                break;
            }
            let open = at + kw.len() + (rest.len() - trimmed.len());
            let Some(close) = s[open..].find(')') else { break };
            s.replace_range(at..open + close + 1, " ");
        }
    }
    let b = s.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &s[start..i];
            let prev = s[..start].chars().next_back();
            let next = s[i..].trim_start().chars().next();
            if prev != Some('$')
                && matches!(next, Some('{' | '[' | ')'))
                && !PROMQL_WORDS.contains(&word)
                && !word.starts_with("__")
            {
                names.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

fn find_word(s: &str, w: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = s[from..].find(w) {
        let at = from + p;
        let before = at.checked_sub(1).map(|i| b[i]);
        let after = b.get(at + w.len()).copied();
        let ident = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
        if !ident(before) && !ident(after) {
            return Some(at);
        }
        from = at + w.len();
    }
    None
}

fn dashboard_metrics_exist(scrape: &str) {
    let path = manifest_dir().join("../manifests/grafana/l7mp-agent.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    let mut stack = vec![&dash["panels"]];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Array(a) => stack.extend(a),
            serde_json::Value::Object(o) => {
                if let Some(serde_json::Value::String(e)) = o.get("expr") {
                    exprs.push(e.clone());
                }
                stack.extend(o.values());
            }
            _ => {}
        }
    }
    assert!(exprs.len() >= 20, "only {} panel exprs", exprs.len());
    // The names in the scrape (`# TYPE` lines give every family, also histograms by their base name).
    let families: BTreeSet<&str> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let histograms: BTreeSet<&str> = scrape
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split(' ');
            let name = w.next()?;
            (w.next()? == "histogram").then_some(name)
        })
        .collect();
    let mut checked = 0;
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "no metric name found in {e:?}");
        for name in names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|b| histograms.contains(b)))
                .unwrap_or(&name);
            assert!(
                families.contains(base),
                "{name} (panel expr {e:?}) is not in the scrape:\n{scrape}"
            );
            let has_sample = scrape.lines().any(|l| !l.starts_with('#') && l.starts_with(&name));
            assert!(has_sample, "{name} has no sample in the scrape");
            checked += 1;
        }
    }
    assert!(checked >= 20);
}

#[test]
fn metric_names_parse_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (cluster, le) (rate(l7mp_cluster_connect_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["l7mp_cluster_connect_duration_seconds_bucket"]
    );
    let names = metric_names(r#"time() - max(l7mp_config_last_reload_success_timestamp_seconds)"#);
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["l7mp_config_last_reload_success_timestamp_seconds"]
    );
}

#[test]
fn no_metrics_makes_the_prometheus_cluster_answer_404() {
    let web = free_port();
    let _agent = Agent::start_with(
        &format!(
            "listeners:\n  - name: web\n    spec: {{protocol: HTTP, port: {web}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: prom}}}}}}]\nclusters:\n  - name: prom\n    spec: {{protocol: Prometheus}}\n"
        ),
        &["--no-metrics"],
    );
    let (status, _, body) = http_get(web);
    assert_eq!(status, 404);
    assert_eq!(body, "metrics are disabled in this agent (--no-metrics)\n");
}

#[test]
fn prometheus_from_a_tcp_source_writes_one_exposition_and_ends() {
    let port = free_port();
    let _agent = Agent::start(&format!(
        "listeners:\n  - name: raw\n    spec: {{protocol: TCP, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: prom}}}}}}]\nclusters:\n  - name: prom\n    spec: {{protocol: Prometheus}}\n"
    ));
    let mut s = tcp_client(port);
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.contains("# TYPE listener_requests_total counter"), "{text}");
    assert_eq!(
        value(&text, r#"listener_requests_total{listenerName="raw",protocol="TCP"}"#),
        Some(1.0)
    );
}

#[test]
fn apply_counts_applied_and_rejected_configurations() {
    use l7mp_agent::engine::{Engine, EngineOptions};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = Engine::new(EngineOptions::default());
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap().port();
        let cfg = |port: u16| {
            l7mp_api::parse_config(
                &format!(
                    "listeners:\n  - name: l\n    spec: {{protocol: UDP, port: {port}, address: 127.0.0.1}}\n    rules: [{{action: {{route: {{destination: e}}}}}}]\nclusters:\n  - name: e\n    spec: {{protocol: Echo}}\n"
                ),
                l7mp_api::Format::Yaml,
            )
            .unwrap()
        };
        assert!(engine.apply(cfg(taken)).await.is_err());
        let m = engine.metrics().unwrap();
        let t = m.render();
        assert_eq!(value(&t, r#"l7mp_config_reloads_total{result="rejected"}"#), Some(1.0));
        assert_eq!(value(&t, r#"l7mp_config_reloads_total{result="applied"}"#), Some(0.0));
        assert!(value(&t, "l7mp_config_last_reload_success_timestamp_seconds") == Some(0.0));
        engine.apply(cfg(free_port())).await.unwrap();
        let t = m.render();
        assert_eq!(value(&t, r#"l7mp_config_reloads_total{result="applied"}"#), Some(1.0));
        assert!(value(&t, "l7mp_config_last_reload_success_timestamp_seconds").is_some_and(|v| v > 1.0e9));
        engine.shutdown(Duration::from_millis(10)).await;
        let off = Engine::new(EngineOptions {
            metrics: false,
            ..EngineOptions::default()
        });
        assert!(off.metrics().is_none());
    });
}

#[test]
fn datagrams_the_listener_drops_are_counted_by_reason() {
    let (web, port, allowed) = (free_port(), free_port(), free_port());
    let _agent = Agent::start(&format!(
        r#"
listeners:
  - name: web
    spec: {{ protocol: HTTP, port: {web}, address: 127.0.0.1 }}
    rules: [{{ action: {{ route: {{ destination: prom }} }} }}]
  - name: half
    spec: {{ protocol: UDP, port: {port}, address: 127.0.0.1, connect: {{ port: {allowed} }} }}
    rules: [{{ action: {{ route: {{ destination: prom }} }} }}]
clusters:
  - name: prom
    spec: {{ protocol: Prometheus }}
"#
    ));
    let other = udp_client(port);
    for _ in 0..3 {
        other.send(b"not you").unwrap();
    }
    let t = wait_value(web, r#"l7mp_dropped_total{reason="peer_rejected"}"#, 3.0);
    assert_eq!(value(&t, r#"l7mp_dropped_total{reason="queue_full"}"#), Some(0.0));
    assert_eq!(
        value(&t, r#"listener_requests_total{listenerName="half",protocol="UDP"}"#),
        None
    );
}

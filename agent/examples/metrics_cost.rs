//! What the metrics cost per session and per scrape, measured in process (no sockets):
//! `cargo run --release -p l7mp-agent --example metrics_cost`.
//!
//! Per session: `session_started` + `routed` + `stage_connected` + the end (drop), i.e. everything a session does
//! for the metrics. Per scrape: `render` with 0, 1,000 and 10,000 live sessions spread over 10 listeners and 10
//! clusters.

use l7mp_agent::metrics::Metrics;
use l7mp_agent::pipeline::Stats;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let m = Arc::new(Metrics::new().expect("metrics"));
    let listeners: Vec<String> = (0..10).map(|i| format!("listener-{i}")).collect();
    let clusters: Vec<String> = (0..10).map(|i| format!("cluster-{i}")).collect();
    let n = 200_000;
    let t = Instant::now();
    for i in 0..n {
        let stats = Arc::new(Stats::default());
        let s = m.session_started(&format!("s{i}"), &listeners[i % 10], "UDP", stats);
        s.routed(&clusters[i % 10]);
        m.stage_connected(&clusters[i % 10], "UDP", Duration::from_micros(50), true);
        drop(s);
    }
    let per = t.elapsed().as_nanos() as f64 / n as f64;
    println!("per session (start, route, connect, end): {per:.0} ns");
    for live in [0usize, 1_000, 10_000] {
        let guards: Vec<_> = (0..live)
            .map(|i| {
                let s = m.session_started(
                    &format!("live{i}"),
                    &listeners[i % 10],
                    "UDP",
                    Arc::new(Stats::default()),
                );
                s.routed(&clusters[i % 10]);
                s
            })
            .collect();
        let rounds = 50;
        let t = Instant::now();
        let mut len = 0;
        for _ in 0..rounds {
            len = m.render().len();
        }
        let per = t.elapsed().as_secs_f64() * 1e6 / rounds as f64;
        println!("scrape with {live} live sessions: {per:.0} µs ({len} bytes)");
        drop(guards);
    }
}

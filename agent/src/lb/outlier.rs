//! Passive outlier detection: the connect results of real sessions decide which endpoints are picked.
//!
//! An endpoint whose connects fail `consecutive_failures` times in a row is *ejected*: skipped for `ejection_time`
//! while other endpoints are available. When the cool-down is over it returns on probation: a successful connect
//! makes it healthy again, a failure ejects it at once for twice as long as the last time (up to
//! `max_ejection_time`). Ejections and returns are logged at info. The state lives in the cluster's runtime and
//! starts afresh with each configuration.

use l7mp_api::{Endpoint, OutlierDetection};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The health of a cluster's endpoints.
pub struct Health {
    cluster: String,
    cfg: OutlierDetection,
    names: Vec<String>,
    state: Mutex<Vec<EndpointState>>,
}

#[derive(Debug, Clone, Default)]
struct EndpointState {
    /// Connect failures in a row since the last success or ejection.
    failures: u32,
    /// Ejections since the last successful connect (0: healthy; otherwise ejected or on probation).
    ejections: u32,
    /// Ejected until then.
    until: Option<Instant>,
}

impl Health {
    pub fn new(cluster: &str, cfg: OutlierDetection, endpoints: &[Endpoint]) -> Health {
        Health {
            cluster: cluster.to_owned(),
            cfg,
            names: endpoints.iter().map(|e| e.name.clone()).collect(),
            state: Mutex::new(vec![EndpointState::default(); endpoints.len()]),
        }
    }

    /// Per endpoint, whether it may be picked at `now` (not ejected). An endpoint whose cool-down is over returns.
    pub fn available(&self, now: Instant) -> Vec<bool> {
        if !self.cfg.enabled() {
            return vec![true; self.names.len()];
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .iter_mut()
            .enumerate()
            .map(|(i, s)| match s.until {
                Some(t) if t <= now => {
                    s.until = None;
                    tracing::info!(
                        cluster = %self.cluster,
                        endpoint = %self.names[i],
                        "endpoint returns after its cool-down (on probation: one more connect failure ejects it again)"
                    );
                    true
                }
                Some(_) => false,
                None => true,
            })
            .collect()
    }

    /// Records the result of a connect to endpoint `i`.
    pub fn record(&self, i: usize, ok: bool, now: Instant) {
        if !self.cfg.enabled() {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = state.get_mut(i) else { return };
        let name = &self.names[i];
        if ok {
            if s.ejections > 0 {
                tracing::info!(cluster = %self.cluster, endpoint = %name, "endpoint connects again: healthy");
            }
            *s = EndpointState::default();
            return;
        }
        if s.until.is_some() {
            // Tried while ejected (every endpoint was): the cool-down stands.
            return;
        }
        s.failures += 1;
        let on_probation = s.ejections > 0;
        if s.failures < self.cfg.consecutive_failures && !on_probation {
            return;
        }
        s.ejections += 1;
        let time = self.ejection_time(s.ejections);
        s.until = Some(now + time);
        if on_probation {
            tracing::info!(
                cluster = %self.cluster,
                endpoint = %name,
                "endpoint ejected for {:?}: its connect failed again after its cool-down",
                time
            );
        } else {
            tracing::info!(
                cluster = %self.cluster,
                endpoint = %name,
                "endpoint ejected for {:?} after {} connect failures in a row",
                time,
                s.failures
            );
        }
        s.failures = 0;
    }

    /// Whether endpoint `i` is ejected at `now`.
    pub fn is_ejected(&self, i: usize, now: Instant) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.get(i).and_then(|s| s.until).is_some_and(|t| t > now)
    }

    /// The `n`-th ejection in a row lasts `ejection_time * 2^(n-1)`, at most `max_ejection_time`.
    fn ejection_time(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(20);
        self.cfg
            .ejection_time
            .saturating_mul(factor)
            .min(self.cfg.max_ejection_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(cfg: OutlierDetection) -> Health {
        let eps: Vec<Endpoint> = (0..2)
            .map(|i| Endpoint {
                name: format!("ep{i}"),
                address: format!("10.0.0.{i}"),
                weight: 1,
            })
            .collect();
        Health::new("c", cfg, &eps)
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn ejects_after_n_failures_in_a_row_and_doubles_on_repeat() {
        let h = health(OutlierDetection::default());
        let t = Instant::now();
        h.record(0, false, t);
        h.record(0, false, t);
        h.record(0, true, t); // a success resets the count
        h.record(0, false, t);
        h.record(0, false, t);
        assert_eq!(h.available(t), [true, true]);
        h.record(0, false, t);
        assert_eq!(h.available(t), [false, true]);
        assert!(h.is_ejected(0, t + 9 * S));
        // Back after 10 s, on probation: one failure ejects it for 20 s.
        let t1 = t + 10 * S;
        assert_eq!(h.available(t1), [true, true]);
        h.record(0, false, t1);
        assert!(h.is_ejected(0, t1 + 19 * S));
        assert!(!h.is_ejected(0, t1 + 20 * S));
        // Then 40 s, 80 s, ... capped at 300 s.
        let mut now = t1 + 20 * S;
        for want in [40, 80, 160, 300, 300] {
            assert!(h.available(now)[0]);
            h.record(0, false, now);
            assert!(h.is_ejected(0, now + (want - 1) * S), "{want}");
            assert!(!h.is_ejected(0, now + want * S), "{want}");
            now += want * S;
        }
        // A success makes it healthy: three failures again before the next ejection, for 10 s.
        h.available(now);
        h.record(0, true, now);
        h.record(0, false, now);
        h.record(0, false, now);
        assert!(!h.is_ejected(0, now));
        h.record(0, false, now);
        assert!(h.is_ejected(0, now + 9 * S) && !h.is_ejected(0, now + 10 * S));
    }

    #[test]
    fn disabled_never_ejects() {
        let h = health(OutlierDetection::disabled());
        let t = Instant::now();
        for _ in 0..10 {
            h.record(1, false, t);
        }
        assert_eq!(h.available(t), [true, true]);
    }
}

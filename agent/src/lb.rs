//! Endpoint selection: a cluster's load-balancing policy plus passive outlier detection ([`outlier`]).
//!
//! Every policy chooses among the *candidates*: endpoints of weight > 0 that outlier detection has not ejected and
//! that this session has not tried yet. If that leaves none, the endpoints not tried yet (ejected or not), and if
//! that leaves none, every endpoint of weight > 0: when all are ejected they are tried anyway.
//!
//! - `Trivial`: the first candidate.
//! - `HashRing`/`ConsistentHash`: weighted rendezvous hashing of the metadata value at the key. The same key always
//!   lands on the same endpoint (while it is a candidate), and adding an endpoint moves only about 1/n of the keys.
//!   The hash is FNV-1a with a 64-bit finaliser over the endpoint's *address* (not its possibly generated name):
//!   stable across runs, machines and renames. A session without a value at the key goes where `on_missing_key`
//!   says; a policy without a key places every session at random by weight (the original's `<RANDOM>`).
//! - `WeightedRandom`: each candidate with a chance proportional to its weight (splitmix64, lock-free).
//! - `RoundRobin`: smooth weighted round robin ([`SmoothWrr`], as nginx does it): weights 3 and 1 give `A A B A`.

pub mod outlier;

use l7mp_api::{Cluster, Endpoint, LoadBalancer, OnMissingKey, Policy};
use outlier::Health;
use serde_json::Value;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Why no endpoint was picked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("cluster {0:?} has no endpoint")]
    NoEndpoint(String),
    #[error("cluster {cluster:?}: no value at {key} in the session metadata to hash (on_missing_key: fail)")]
    MissingKey { cluster: String, key: String },
}

/// A cluster's endpoint picker, built once per configuration.
pub struct Balancer {
    cluster: String,
    policy: Policy,
    weights: Vec<u32>,
    /// Per endpoint: the hash of its address, for rendezvous hashing.
    seeds: Vec<u64>,
    rng: Rng,
    rr: SmoothWrr,
    health: Health,
}

impl Balancer {
    /// The balancer of cluster `c`, its random choices seeded from the clock.
    pub fn new(c: &Cluster) -> Balancer {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::with_seed(
            &c.name,
            &c.loadbalancer,
            &c.endpoints,
            clock ^ (u64::from(std::process::id()) << 32),
        )
    }

    /// A balancer whose random choices are reproducible (tests).
    pub fn with_seed(cluster: &str, lb: &LoadBalancer, endpoints: &[Endpoint], seed: u64) -> Balancer {
        let mut seeds = Vec::with_capacity(endpoints.len());
        for (i, e) in endpoints.iter().enumerate() {
            // The k-th repeat of an address hashes as `address#k`, so that duplicates do not collapse into one.
            let k = endpoints[..i].iter().filter(|o| o.address == e.address).count();
            let mut h = fnv1a(FNV_OFFSET, e.address.as_bytes());
            if k > 0 {
                h = fnv1a(h, format!("#{k}").as_bytes());
            }
            seeds.push(mix(h));
        }
        Balancer {
            cluster: cluster.to_owned(),
            policy: lb.policy.clone(),
            weights: endpoints.iter().map(|e| e.weight).collect(),
            seeds,
            rng: Rng::new(seed),
            rr: SmoothWrr::new(endpoints.len()),
            health: Health::new(cluster, lb.outlier_detection.clone(), endpoints),
        }
    }

    /// Picks the index of an endpoint for a session, avoiding the endpoints in `tried` while others are available.
    pub fn pick(&self, metadata: &Value, tried: &[usize]) -> Result<usize, PickError> {
        self.pick_at(metadata, tried, Instant::now())
    }

    pub fn pick_at(&self, metadata: &Value, tried: &[usize], now: Instant) -> Result<usize, PickError> {
        let available = self.health.available(now);
        let usable = |i: usize| self.weights[i] > 0;
        let fresh = |i: usize| usable(i) && !tried.contains(&i);
        let all = 0..self.weights.len();
        let mut candidates: Vec<usize> = all.clone().filter(|&i| fresh(i) && available[i]).collect();
        if candidates.is_empty() {
            candidates = all.clone().filter(|&i| fresh(i)).collect();
        }
        if candidates.is_empty() {
            candidates = all.filter(|&i| usable(i)).collect();
        }
        let Some(&first) = candidates.first() else {
            return Err(PickError::NoEndpoint(self.cluster.clone()));
        };
        Ok(match &self.policy {
            Policy::Trivial => first,
            Policy::WeightedRandom | Policy::HashRing { key: None, .. } => self.random(&candidates),
            Policy::RoundRobin => self.rr.next(&self.weights, &candidates).unwrap_or(first),
            Policy::HashRing {
                key: Some(key),
                on_missing_key,
            } => match key.get(metadata) {
                Some(Value::Null) | None => match on_missing_key {
                    OnMissingKey::First => first,
                    OnMissingKey::Random => self.random(&candidates),
                    OnMissingKey::Fail => {
                        return Err(PickError::MissingKey {
                            cluster: self.cluster.clone(),
                            key: key.to_string(),
                        });
                    }
                },
                Some(Value::String(s)) => self.rendezvous(s.as_bytes(), &candidates),
                Some(other) => self.rendezvous(other.to_string().as_bytes(), &candidates),
            },
        })
    }

    /// Whether an endpoint of weight > 0, not ejected, is left that is not in `tried`.
    pub fn has_untried(&self, tried: &[usize]) -> bool {
        let available = self.health.available(Instant::now());
        (0..self.weights.len()).any(|i| self.weights[i] > 0 && available[i] && !tried.contains(&i))
    }

    /// Tells outlier detection how a connect to endpoint `i` went.
    pub fn report(&self, i: usize, ok: bool) {
        self.health.record(i, ok, Instant::now());
    }

    fn random(&self, candidates: &[usize]) -> usize {
        let total: u64 = candidates.iter().map(|&i| u64::from(self.weights[i])).sum();
        // Multiply-shift maps the 64 random bits onto 0..total without the bias of `%`.
        let mut x = ((u128::from(self.rng.next()) * u128::from(total)) >> 64) as u64;
        for &i in candidates {
            let w = u64::from(self.weights[i]);
            if x < w {
                return i;
            }
            x -= w;
        }
        candidates[candidates.len() - 1]
    }

    fn rendezvous(&self, key: &[u8], candidates: &[usize]) -> usize {
        let k = mix(fnv1a(FNV_OFFSET, key));
        let mut best = (f64::NEG_INFINITY, candidates[0]);
        for &i in candidates {
            let s = score(mix(k ^ self.seeds[i]), self.weights[i]);
            if s > best.0 {
                best = (s, i);
            }
        }
        best.1
    }
}

/// Smooth weighted round robin: each turn every eligible item gains its weight, the richest is chosen and pays the
/// total. Over any `sum of weights` turns each item is chosen exactly `weight` times, spread out evenly.
pub struct SmoothWrr {
    current: Mutex<Vec<i64>>,
}

impl SmoothWrr {
    pub fn new(n: usize) -> SmoothWrr {
        SmoothWrr {
            current: Mutex::new(vec![0; n]),
        }
    }

    /// The next of `eligible` (indices into `weights`), or `None` if none has a weight.
    pub fn next(&self, weights: &[u32], eligible: &[usize]) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for &i in eligible {
            let w = i64::from(*weights.get(i)?);
            if w == 0 {
                continue;
            }
            let c = current.get_mut(i)?;
            *c += w;
            let c = *c;
            total += w;
            if best.is_none_or(|b| c > current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(b)
    }
}

/// splitmix64 over an atomic counter: lock-free, and reproducible from its seed.
struct Rng(AtomicU64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed))
    }

    fn next(&self) -> u64 {
        const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
        mix(self.0.fetch_add(GAMMA, Ordering::Relaxed).wrapping_add(GAMMA))
    }
}

/// The weighted rendezvous score of a hash: `-w / ln(u)` with `u` in (0, 1].
fn score(h: u64, weight: u32) -> f64 {
    let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln().min(-f64::MIN_POSITIVE)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use l7mp_api::{OutlierDetection, Pointer};
    use serde_json::json;
    use std::time::Duration;

    fn eps(weights: &[u32]) -> Vec<Endpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Endpoint {
                name: format!("ep{i}"),
                address: format!("10.0.0.{i}"),
                weight,
            })
            .collect()
    }

    fn balancer(policy: Policy, weights: &[u32]) -> Balancer {
        let lb = LoadBalancer {
            policy,
            outlier_detection: OutlierDetection::default(),
        };
        Balancer::with_seed("c", &lb, &eps(weights), 42)
    }

    fn hashing(on_missing_key: OnMissingKey) -> Policy {
        Policy::HashRing {
            key: Some(Pointer::parse("/IP/src_addr").expect("ptr")),
            on_missing_key,
        }
    }

    fn src(i: usize) -> Value {
        json!({"IP": {"src_addr": format!("192.0.2.{i}")}})
    }

    /// How many of `n` picks each endpoint gets.
    fn shares(b: &Balancer, n: usize, meta: impl Fn(usize) -> Value) -> Vec<usize> {
        let mut counts = vec![0; b.weights.len()];
        for i in 0..n {
            counts[b.pick(&meta(i), &[]).expect("pick")] += 1;
        }
        counts
    }

    #[test]
    fn hash_is_sticky_and_moves_few_keys() {
        let four = balancer(hashing(OnMissingKey::First), &[1; 4]);
        let five = balancer(hashing(OnMissingKey::First), &[1; 5]);
        let mut moved = 0;
        for i in 0..1000 {
            let a = four.pick(&src(i), &[]).expect("ep");
            assert_eq!(a, four.pick(&src(i), &[]).expect("ep"), "same key, same endpoint");
            let b = five.pick(&src(i), &[]).expect("ep");
            if b != a {
                assert_eq!(b, 4, "a key only ever moves to the new endpoint");
                moved += 1;
            }
        }
        // Ideal is 1/5 of the keys.
        assert!((150..=250).contains(&moved), "moved {moved}");
    }

    #[test]
    fn hash_honours_weights_and_survives_renames() {
        let b = balancer(hashing(OnMissingKey::First), &[1, 3]);
        let counts = shares(&b, 4000, src_big);
        // Expected 1000 / 3000.
        assert!((900..=1100).contains(&counts[0]), "{counts:?}");
        // The hash is of the address: another name, the same placement.
        let mut renamed = eps(&[1, 3]);
        renamed[0].name = "other".into();
        let lb = LoadBalancer {
            policy: hashing(OnMissingKey::First),
            ..LoadBalancer::default()
        };
        let r = Balancer::with_seed("c", &lb, &renamed, 7);
        for i in 0..200 {
            assert_eq!(r.pick(&src_big(i), &[]), b.pick(&src_big(i), &[]));
        }
    }

    fn src_big(i: usize) -> Value {
        json!({"IP": {"src_addr": format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)}})
    }

    #[test]
    fn a_missing_key_goes_where_on_missing_key_says() {
        let none = json!({"IP": {}});
        let first = balancer(hashing(OnMissingKey::First), &[0, 1, 1]);
        assert_eq!(
            shares(&first, 100, |_| none.clone()),
            [0, 100, 0],
            "deterministic: the first usable"
        );
        let null = json!({"IP": {"src_addr": null}});
        assert_eq!(first.pick(&null, &[]), Ok(1), "null counts as missing");
        let random = balancer(hashing(OnMissingKey::Random), &[1, 1, 1]);
        assert!(shares(&random, 300, |_| none.clone()).iter().all(|&n| n > 60));
        let fail = balancer(hashing(OnMissingKey::Fail), &[1, 1]);
        assert_eq!(
            fail.pick(&none, &[]),
            Err(PickError::MissingKey {
                cluster: "c".into(),
                key: "/IP/src_addr".into()
            })
        );
        // Numbers hash too (as their JSON text).
        assert!(fail.pick(&json!({"IP": {"src_addr": 7}}), &[]).is_ok());
    }

    #[test]
    fn weighted_random_shares_follow_the_weights() {
        let b = balancer(Policy::WeightedRandom, &[1, 2, 7]);
        let counts = shares(&b, 10_000, |_| Value::Null);
        // Expected 1000 / 2000 / 7000; 3 standard deviations are about 90 / 120 / 140.
        for (got, want) in counts.iter().zip([1000, 2000, 7000]) {
            assert!(got.abs_diff(want) < 200, "{counts:?}");
        }
        // Reproducible from the seed.
        let again = balancer(Policy::WeightedRandom, &[1, 2, 7]);
        assert_eq!(shares(&again, 10_000, |_| Value::Null), counts);
    }

    #[test]
    fn round_robin_is_smooth_and_exact() {
        let b = balancer(Policy::RoundRobin, &[1, 1, 1]);
        let order: Vec<usize> = (0..7).map(|_| b.pick(&Value::Null, &[]).expect("pick")).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0]);
        let w = balancer(Policy::RoundRobin, &[3, 1, 0]);
        let order: Vec<usize> = (0..8).map(|_| w.pick(&Value::Null, &[]).expect("pick")).collect();
        assert_eq!(order, [0, 0, 1, 0, 0, 0, 1, 0]);
        let big = balancer(Policy::RoundRobin, &[90, 10]);
        assert_eq!(shares(&big, 2000, |_| Value::Null), [1800, 200]);
    }

    #[test]
    fn trivial_takes_the_first_usable() {
        assert_eq!(balancer(Policy::Trivial, &[1, 1, 1]).pick(&Value::Null, &[]), Ok(0));
        assert_eq!(balancer(Policy::Trivial, &[0, 1]).pick(&Value::Null, &[]), Ok(1));
        assert_eq!(
            balancer(Policy::Trivial, &[]).pick(&Value::Null, &[]),
            Err(PickError::NoEndpoint("c".into()))
        );
    }

    #[test]
    fn a_retry_avoids_the_endpoints_tried_while_others_are_left() {
        for policy in [
            Policy::Trivial,
            Policy::RoundRobin,
            Policy::WeightedRandom,
            hashing(OnMissingKey::First),
        ] {
            let b = balancer(policy.clone(), &[1, 1, 1]);
            for i in 0..50 {
                let m = src(i);
                let a = b.pick(&m, &[]).expect("pick");
                let c = b.pick(&m, &[a]).expect("pick");
                assert_ne!(a, c, "{policy:?}");
                let d = b.pick(&m, &[a, c]).expect("pick");
                assert!(d != a && d != c, "{policy:?}");
                // Everything tried: try again rather than fail.
                assert!(b.pick(&m, &[0, 1, 2]).is_ok());
            }
        }
    }

    #[test]
    fn ejected_endpoints_are_skipped_until_their_cool_down_ends() {
        let b = balancer(Policy::RoundRobin, &[1, 1]);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.health.record(0, false, t0);
        }
        for _ in 0..10 {
            assert_eq!(b.pick_at(&Value::Null, &[], t0 + Duration::from_secs(1)), Ok(1));
        }
        // Back after 10 s.
        let later = t0 + Duration::from_secs(11);
        let picks: Vec<usize> = (0..4)
            .map(|_| b.pick_at(&Value::Null, &[], later).expect("pick"))
            .collect();
        assert!(picks.contains(&0), "{picks:?}");
        // Every endpoint ejected: tried anyway.
        for _ in 0..3 {
            b.health.record(1, false, later);
        }
        b.health.record(0, false, later);
        assert!(b.pick_at(&Value::Null, &[], later).is_ok());
    }
}

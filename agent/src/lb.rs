//! Endpoint selection for a cluster's load-balancing policy.
//!
//! `Trivial` picks the first endpoint. `HashRing`/`ConsistentHash` use weighted rendezvous hashing of the metadata
//! value at the policy's key: the same key always lands on the same endpoint, and adding an endpoint moves only about
//! 1/n of the keys. With no key configured, or none present in a session's metadata, the session name is hashed
//! (spreading sessions, as the original's random fallback did). The hash is FNV-1a with a 64-bit finaliser: stable
//! across runs and machines.

use l7mp_api::{Endpoint, LoadBalancer};
use serde_json::Value;

/// Picks an endpoint for a session, or `None` when the cluster has none.
pub fn pick<'a>(lb: &LoadBalancer, endpoints: &'a [Endpoint], metadata: &Value, session: &str) -> Option<&'a Endpoint> {
    match lb {
        LoadBalancer::Trivial => endpoints.first(),
        LoadBalancer::HashRing { key } => {
            let key_bytes = match key.as_ref().and_then(|k| k.get(metadata)) {
                Some(Value::String(s)) => s.as_bytes().to_vec(),
                Some(other) => other.to_string().into_bytes(),
                None => session.as_bytes().to_vec(),
            };
            endpoints
                .iter()
                .filter(|e| e.weight > 0)
                .map(|e| (score(&key_bytes, e), e))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, e)| e)
        }
    }
}

fn score(key: &[u8], e: &Endpoint) -> f64 {
    let h = mix(fnv1a(fnv1a(0xcbf2_9ce4_8422_2325, key), e.name.as_bytes()));
    // u in (0, 1]; -w / ln(u) is the weighted rendezvous score.
    let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    -(e.weight as f64) / u.ln().min(-f64::MIN_POSITIVE)
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use l7mp_api::Pointer;
    use serde_json::json;

    fn eps(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint {
                name: format!("ep{i}"),
                address: format!("10.0.0.{i}"),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn hash_is_sticky_and_moves_few_keys() {
        let lb = LoadBalancer::HashRing {
            key: Some(Pointer::parse("/IP/src_addr").expect("ptr")),
        };
        let four = eps(4);
        let five = eps(5);
        let mut moved = 0;
        for i in 0..1000 {
            let m = json!({"IP": {"src_addr": format!("192.0.2.{i}")}});
            let a = pick(&lb, &four, &m, "s").expect("ep");
            assert_eq!(a, pick(&lb, &four, &m, "other").expect("ep"), "same key, same endpoint");
            if pick(&lb, &five, &m, "s").expect("ep") != a {
                moved += 1;
            }
        }
        // Ideal is 1/5 of the keys.
        assert!((120..=280).contains(&moved), "moved {moved}");
    }

    #[test]
    fn trivial_takes_the_first() {
        assert_eq!(
            pick(&LoadBalancer::Trivial, &eps(3), &Value::Null, "s").map(|e| e.name.as_str()),
            Some("ep0")
        );
        assert!(pick(&LoadBalancer::Trivial, &[], &Value::Null, "s").is_none());
    }
}

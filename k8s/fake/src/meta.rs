//! Object metadata helpers: timestamps, UIDs, `generateName` suffixes, and the name rules the server enforces.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A random 64-bit number (not cryptographic; for UIDs and generated names).
fn random() -> u64 {
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A version 4 UUID string, as the server puts in `metadata.uid`.
pub fn new_uid() -> String {
    let (a, b) = (random(), random());
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Five characters from the alphabet the server uses for `generateName` (no vowels, no look-alikes).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = random();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// The current time in the server's format: RFC 3339, whole seconds, UTC (`2025-01-02T03:04:05Z`).
pub fn now() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .map(|t| t.to_string())
        .unwrap_or_else(|_| now.to_string())
}

/// Age of a timestamp the way kubectl columns show it (`5s`, `3m2s`, `4h`, `2d3h`), or `<unknown>`.
pub fn human_age(timestamp: &str) -> String {
    let Ok(t) = timestamp.parse::<jiff::Timestamp>() else {
        return "<unknown>".to_owned();
    };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{m}m{}s", s % 60),
        s if s < 3 * 3600 => format!("{m}m"),
        s if s < 8 * 3600 => format!("{h}h{}m", (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{h}h"),
        s if s < 8 * 86400 => format!("{d}d{}h", (s % 86400) / 3600),
        _ => format!("{d}d"),
    }
}

/// Which rule a type's names follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 (most kinds).
    Subdomain,
    /// DNS-1123 label: lowercase alphanumerics and `-`, at most 63 (namespaces).
    Label,
    /// DNS-1035 label: a DNS-1123 label starting with a letter (services).
    Dns1035,
}

/// The problem with `name` under `rule`, worded like the server's validation message.
pub fn check_name(name: &str, rule: NameRule) -> Option<String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| alnum(c) || c == '-')
            && l.starts_with(alnum)
            && l.ends_with(alnum)
    };
    match rule {
        NameRule::Subdomain if name.len() > 253 || !name.split('.').all(label_ok) => Some(format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        )),
        NameRule::Label if !label_ok(name) => Some(format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        )),
        NameRule::Dns1035 if !label_ok(name) || !name.starts_with(|c: char| c.is_ascii_lowercase()) => Some(format!(
            "Invalid value: {name:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_and_suffixes_look_right() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(new_uid(), new_uid());
        let s = name_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn timestamps_have_whole_seconds() {
        let t = now();
        assert!(t.ends_with('Z') && !t.contains('.'), "{t}");
        assert!(human_age(&t).ends_with('s'));
        assert_eq!(human_age("not a time"), "<unknown>");
    }

    #[test]
    fn name_rules() {
        assert!(check_name("a.b-c", NameRule::Subdomain).is_none());
        assert!(check_name("A", NameRule::Subdomain).is_some());
        assert!(check_name("a.b", NameRule::Label).is_some());
        assert!(check_name("1abc", NameRule::Dns1035).is_some());
        assert!(check_name("abc-1", NameRule::Dns1035).is_none());
        assert!(check_name("-a", NameRule::Label).is_some());
    }
}

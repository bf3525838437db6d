//! JSON pointers (RFC 6901) into session metadata, as rules and rewrites use them.
//!
//! The original l7mp accepted pointers with or without the leading `/` (`labels/x` = `/labels/x`) and did not decode
//! escapes; we accept both forms and decode `~1` (`/`) and `~0` (`~`) properly.

use serde_json::{Map, Value};
use std::fmt;

/// Objects up to this many members are searched by comparing keys rather than by hash.
const SCAN_MAX: usize = 16;

/// A parsed JSON pointer: the list of reference tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Pointer {
    tokens: Vec<String>,
}

impl Pointer {
    /// Parses `"/a/b~1c"` (or `"a/b~1c"`). The empty string is the whole document.
    pub fn parse(s: &str) -> Result<Self, String> {
        let body = s.strip_prefix('/').unwrap_or(s);
        if body.is_empty() {
            return Ok(Self::default());
        }
        let mut tokens = Vec::new();
        for raw in body.split('/') {
            let mut tok = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => tok.push('~'),
                        Some('1') => tok.push('/'),
                        _ => {
                            return Err(format!(
                                "invalid escape in JSON pointer {s:?}: '~' must be followed by 0 or 1"
                            ));
                        }
                    }
                } else {
                    tok.push(c);
                }
            }
            tokens.push(tok);
        }
        Ok(Self { tokens })
    }

    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    pub fn is_root(&self) -> bool {
        self.tokens.is_empty()
    }

    /// This pointer followed by `other` (re-rooting in second-order predicates).
    pub fn join(&self, other: &Pointer) -> Pointer {
        let mut tokens = self.tokens.clone();
        tokens.extend(other.tokens.iter().cloned());
        Pointer { tokens }
    }

    /// The value this pointer refers to in `doc`, if any.
    pub fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        let mut cur = doc;
        for t in &self.tokens {
            cur = match cur {
                // Session metadata objects are small; comparing a few short keys beats hashing the token.
                Value::Object(m) if m.len() <= SCAN_MAX => m.iter().find(|(k, _)| *k == t)?.1,
                Value::Object(m) => m.get(t)?,
                Value::Array(a) => a.get(t.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Sets the value at this pointer, creating missing intermediate objects (an all-digit token indexes an array
    /// where one already stands, extending it with nulls). A scalar in the way is replaced by an object.
    pub fn set(&self, doc: &mut Value, value: Value) {
        let Some((last, init)) = self.tokens.split_last() else {
            *doc = value;
            return;
        };
        let mut cur = doc;
        for t in init {
            cur = child_mut(cur, t);
        }
        match cur {
            Value::Array(a) if last.parse::<usize>().is_ok() => {
                let i = last.parse::<usize>().unwrap_or(0);
                if a.len() <= i {
                    a.resize(i + 1, Value::Null);
                }
                a[i] = value;
            }
            other => {
                if !other.is_object() {
                    *other = Value::Object(Map::new());
                }
                if let Value::Object(m) = other {
                    m.insert(last.clone(), value);
                }
            }
        }
    }
}

fn child_mut<'a>(cur: &'a mut Value, t: &str) -> &'a mut Value {
    let index = t.parse::<usize>().ok().filter(|_| cur.is_array());
    if let Some(i) = index {
        let Value::Array(a) = cur else {
            unreachable!("checked is_array above")
        };
        if a.len() <= i {
            a.resize(i + 1, Value::Null);
        }
        if a[i].is_null() {
            a[i] = Value::Object(Map::new());
        }
        return &mut a[i];
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    let Value::Object(m) = cur else {
        unreachable!("made an object above")
    };
    let e = m.entry(t.to_owned()).or_insert_with(|| Value::Object(Map::new()));
    if !(e.is_object() || e.is_array()) {
        *e = Value::Object(Map::new());
    }
    e
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tokens {
            write!(f, "/{}", t.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn get_with_and_without_leading_slash() {
        let doc = json!({"HTTP": {"url": {"path": "/admin"}}, "a": [1, {"b": 2}]});
        assert_eq!(
            Pointer::parse("/HTTP/url/path").unwrap().get(&doc),
            Some(&json!("/admin"))
        );
        assert_eq!(
            Pointer::parse("HTTP/url/path").unwrap().get(&doc),
            Some(&json!("/admin"))
        );
        assert_eq!(Pointer::parse("/a/1/b").unwrap().get(&doc), Some(&json!(2)));
        assert_eq!(Pointer::parse("/a/7").unwrap().get(&doc), None);
        assert_eq!(Pointer::parse("").unwrap().get(&doc), Some(&doc));
    }

    #[test]
    fn small_and_large_objects_alike() {
        let mut big = Map::new();
        for i in 0..(2 * SCAN_MAX) {
            big.insert(format!("k{i}"), json!(i));
        }
        let doc = json!({"small": {"a": 1, "b": 2}, "big": big});
        assert_eq!(Pointer::parse("/small/b").unwrap().get(&doc), Some(&json!(2)));
        assert_eq!(Pointer::parse("/small/c").unwrap().get(&doc), None);
        assert_eq!(Pointer::parse("/big/k20").unwrap().get(&doc), Some(&json!(20)));
        assert_eq!(Pointer::parse("/big/k99").unwrap().get(&doc), None);
    }

    #[test]
    fn escapes_are_decoded() {
        let doc = json!({"a/b": 1, "m~n": 2});
        assert_eq!(Pointer::parse("/a~1b").unwrap().get(&doc), Some(&json!(1)));
        assert_eq!(Pointer::parse("/m~0n").unwrap().get(&doc), Some(&json!(2)));
        assert!(Pointer::parse("/bad~2").is_err());
        assert_eq!(Pointer::parse("/a~1b").unwrap().to_string(), "/a~1b");
    }

    #[test]
    fn set_creates_intermediate_objects() {
        let mut doc = json!({"IP": {"src_addr": "1.2.3.4"}});
        Pointer::parse("labels/session_id").unwrap().set(&mut doc, json!(1));
        assert_eq!(doc["labels"]["session_id"], json!(1));
        Pointer::parse("/IP/src_addr").unwrap().set(&mut doc, json!("x"));
        assert_eq!(doc["IP"]["src_addr"], json!("x"));
        let mut arr = json!({"a": [0]});
        Pointer::parse("/a/2").unwrap().set(&mut arr, json!(5));
        assert_eq!(arr, json!({"a": [0, null, 5]}));
    }
}

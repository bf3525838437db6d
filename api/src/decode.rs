//! Reading typed values out of a parsed document while collecting field-path errors.
//!
//! Decoding never stops at the first problem: every error is recorded in a [`Decoder`] and the caller rejects the
//! document whole if any was found.

use crate::error::FieldError;
use crate::path::FieldPath;
use serde_json::{Map, Value};
use std::net::IpAddr;

/// Collects errors while a document is decoded.
#[derive(Debug, Default)]
pub struct Decoder {
    errors: Vec<FieldError>,
}

/// An object being decoded: its map and where it is.
#[derive(Clone, Copy)]
pub struct Obj<'a> {
    pub map: &'a Map<String, Value>,
    pub path: &'a FieldPath,
}

impl<'a> Obj<'a> {
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    pub fn at(&self, key: &str) -> FieldPath {
        self.path.key(key)
    }
}

/// A short, quoted description of a value for error messages: `"abc"`, `3.5`, `an object`.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut s = s.clone();
            if s.chars().count() > 40 {
                s = s.chars().take(40).collect::<String>() + "...";
            }
            format!("{s:?}")
        }
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn error(&mut self, path: &FieldPath, reason: impl Into<String>) {
        self.errors.push(FieldError::new(path, reason));
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    pub fn into_errors(self) -> Vec<FieldError> {
        self.errors
    }

    /// `v` as an object whose keys must all be in `allowed`.
    pub fn object<'a>(&mut self, v: &'a Value, path: &'a FieldPath, allowed: &[&str]) -> Option<Obj<'a>> {
        let Value::Object(map) = v else {
            self.error(path, format!("expected an object, got {}", describe(v)));
            return None;
        };
        for k in map.keys() {
            if !allowed.contains(&k.as_str()) {
                self.error(
                    &path.key(k),
                    format!("unknown field (expected one of: {})", allowed.join(", ")),
                );
            }
        }
        Some(Obj { map, path })
    }

    /// A required field.
    pub fn required<'a>(&mut self, o: Obj<'a>, key: &str) -> Option<&'a Value> {
        let v = o.get(key);
        if v.is_none() {
            self.error(&o.at(key), "missing required field");
        }
        v
    }

    pub fn string(&mut self, v: &Value, path: &FieldPath) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.error(path, format!("expected a string, got {}", describe(other)));
                None
            }
        }
    }

    /// An object name: a non-empty string without white space (the original's `/^\S+?$/`).
    pub fn name(&mut self, v: &Value, path: &FieldPath) -> Option<String> {
        let s = self.string(v, path)?;
        if s.is_empty() || s.chars().any(char::is_whitespace) {
            self.error(path, format!("expected a name without white space, got {s:?}"));
            return None;
        }
        Some(s)
    }

    pub fn bool(&mut self, v: &Value, path: &FieldPath) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                self.error(path, format!("expected true or false, got {}", describe(other)));
                None
            }
        }
    }

    /// An integer in `lo..=hi`; strings are not converted.
    pub fn int_in(&mut self, v: &Value, path: &FieldPath, lo: i64, hi: i64) -> Option<i64> {
        match v.as_i64() {
            Some(n) if (lo..=hi).contains(&n) => Some(n),
            _ => {
                self.error(path, format!("expected an integer {lo}..{hi}, got {}", describe(v)));
                None
            }
        }
    }

    /// A TCP/UDP port, 1..65535.
    pub fn port(&mut self, v: &Value, path: &FieldPath) -> Option<u16> {
        self.int_in(v, path, 1, 65535).map(|n| n as u16)
    }

    /// A port where 0 means "any" (bind addresses).
    pub fn port_or_any(&mut self, v: &Value, path: &FieldPath) -> Option<u16> {
        self.int_in(v, path, 0, 65535).map(|n| n as u16)
    }

    /// A non-negative number of seconds (integer or fraction).
    pub fn seconds(&mut self, v: &Value, path: &FieldPath) -> Option<f64> {
        match v.as_f64() {
            Some(s) if s >= 0.0 && s.is_finite() && s < 1e9 => Some(s),
            _ => {
                self.error(path, format!("expected a number of seconds >= 0, got {}", describe(v)));
                None
            }
        }
    }

    /// An IPv4 or IPv6 address literal.
    pub fn ip(&mut self, v: &Value, path: &FieldPath) -> Option<IpAddr> {
        let s = self.string(v, path)?;
        match s.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.error(path, format!("expected an IPv4 or IPv6 address, got {s:?}"));
                None
            }
        }
    }

    /// An array; each element is handed to `f` with its path.
    pub fn array<'a, T>(
        &mut self,
        v: &'a Value,
        path: &FieldPath,
        mut f: impl FnMut(&mut Self, &'a Value, &FieldPath) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Value::Array(items) = v else {
            self.error(path, format!("expected an array, got {}", describe(v)));
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match f(self, item, &path.index(i)) {
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn port_error_names_path_and_value() {
        let mut d = Decoder::new();
        let p = FieldPath::root().key("listeners").index(2).key("spec").key("port");
        assert_eq!(d.port(&json!("abc"), &p), None);
        assert_eq!(d.port(&json!(0), &p), None);
        assert_eq!(d.port(&json!(8080), &p), Some(8080));
        let errs = d.into_errors();
        assert_eq!(
            errs[0].to_string(),
            "listeners[2].spec.port: expected an integer 1..65535, got \"abc\""
        );
        assert_eq!(
            errs[1].to_string(),
            "listeners[2].spec.port: expected an integer 1..65535, got 0"
        );
    }

    #[test]
    fn unknown_keys_are_reported() {
        let mut d = Decoder::new();
        let v = json!({"name": "a", "prot": "UDP"});
        let p = FieldPath::root().key("x");
        assert!(d.object(&v, &p, &["name", "protocol"]).is_some());
        let errs = d.into_errors();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().starts_with("x.prot: unknown field"));
    }
}

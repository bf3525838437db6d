//! Label selectors (`a=b,c!=d,e in (f,g),h notin (i),j,!k,l>1`) and field selectors (`metadata.name=x`), parsed
//! from the query string and matched against stored objects, with the real server's grammar.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

/// A parsed `labelSelector`: every requirement must hold. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabelSelector {
    reqs: Vec<(String, Op)>,
}

/// Splits at commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

pub(crate) fn valid_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    });
    name_ok && prefix_ok
}

pub(crate) fn valid_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

impl LabelSelector {
    /// Parses the selector syntax; the error is the message the server sends with 400 BadRequest.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for part in split_top(s) {
            let part = part.trim();
            let bad = || format!("unable to parse requirement: {part:?}");
            let (key, op) = if let Some(k) = part.strip_prefix('!') {
                (k.trim().to_owned(), Op::DoesNotExist)
            } else if let Some((k, rest)) = split_word(part, " notin ") {
                (k, Op::NotIn(set(&rest).ok_or_else(bad)?))
            } else if let Some((k, rest)) = split_word(part, " in ") {
                (k, Op::In(set(&rest).ok_or_else(bad)?))
            } else if let Some((k, v)) = part.split_once("!=") {
                (k.trim().to_owned(), Op::NotIn(vec![v.trim().to_owned()]))
            } else if let Some((k, v)) = part.split_once("==") {
                (k.trim().to_owned(), Op::In(vec![v.trim().to_owned()]))
            } else if let Some((k, v)) = part.split_once('=') {
                (k.trim().to_owned(), Op::In(vec![v.trim().to_owned()]))
            } else if let Some((k, v)) = part.split_once('>') {
                (k.trim().to_owned(), Op::Gt(v.trim().parse().map_err(|_| bad())?))
            } else if let Some((k, v)) = part.split_once('<') {
                (k.trim().to_owned(), Op::Lt(v.trim().parse().map_err(|_| bad())?))
            } else {
                (part.to_owned(), Op::Exists)
            };
            if !valid_key(&key) {
                return Err(format!(
                    "unable to parse requirement: invalid label key {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                ));
            }
            if let Op::In(vs) | Op::NotIn(vs) = &op
                && let Some(v) = vs.iter().find(|v| !valid_value(v))
            {
                return Err(format!(
                    "unable to parse requirement: invalid label value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                ));
            }
            reqs.push((key, op));
        }
        Ok(LabelSelector { reqs })
    }

    /// Whether an object (its `metadata.labels`) satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.reqs.iter().all(|(k, op)| {
            let v = labels.get(k).and_then(Value::as_str);
            match op {
                Op::In(vs) => v.is_some_and(|v| vs.iter().any(|x| x == v)),
                Op::NotIn(vs) => v.is_none_or(|v| vs.iter().all(|x| x != v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
                Op::Gt(n) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
                Op::Lt(n) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
            }
        })
    }
}

/// `key in (a,b)` split at the operator word, which may be surrounded by any whitespace.
fn split_word(part: &str, word: &str) -> Option<(String, String)> {
    let normalized: String = part.split_whitespace().collect::<Vec<_>>().join(" ");
    let normalized = normalized.replace(" (", "(").replace('(', " (");
    let (k, rest) = normalized.split_once(word)?;
    Some((k.trim().to_owned(), rest.trim().to_owned()))
}

fn set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

/// A parsed `fieldSelector`: `field=value`, `field==value` or `field!=value`, comma-separated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses and checks each field against those the type supports (`metadata.name`, `metadata.namespace`, and
    /// `extra`), answering like the server: `"spec.foo" is not a known field selector: only "metadata.name", ...`.
    pub fn parse(s: &str, extra: &[&str]) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{part}'; can't understand '{part}'"));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace") && !extra.contains(&field) {
                let mut known = vec!["\"metadata.name\"".to_owned(), "\"metadata.namespace\"".to_owned()];
                known.extend(extra.iter().map(|f| format!("{f:?}")));
                return Err(format!(
                    "field label not supported: {field} (\"{field}\" is not a known field selector: only {})",
                    known.join(", ")
                ));
            }
            reqs.push((field.to_owned(), eq, value.trim().to_owned()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.reqs.iter().all(|(field, eq, want)| {
            let mut v = object;
            for seg in field.split('.') {
                v = &v[seg];
            }
            let have = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "n1", "namespace": "ns", "labels": labels}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_selector_operators() {
        let o = obj(json!({"app": "web", "tier": "front", "n": "5", "l7mp.io/role": "gw"}));
        let yes = [
            "app=web",
            "app==web",
            "app!=db",
            "app in (web, db)",
            "app notin (db)",
            "app",
            "!missing",
            "n>3",
            "n<6",
            "app=web,tier=front",
            "l7mp.io/role=gw",
            "app in (web),tier in (front,back)",
            "",
            "missing!=x",
            "missing notin (x)",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).expect(s).matches(&o), "{s} should match");
        }
        let no = [
            "app=db",
            "app!=web",
            "app in (db)",
            "app notin (web,x)",
            "missing",
            "!app",
            "n>5",
            "n<5",
            "app=web,tier=back",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).expect(s).matches(&o), "{s} should not match");
        }
    }

    #[test]
    fn bad_label_selectors_are_rejected() {
        for s in ["app in web", "a b", "app=bad value!", "-x=1", "n>x"] {
            assert!(LabelSelector::parse(s).is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        assert!(FieldSelector::parse("metadata.name=n1", &[]).expect("ok").matches(&o));
        assert!(!FieldSelector::parse("metadata.name!=n1", &[]).expect("ok").matches(&o));
        assert!(
            FieldSelector::parse("metadata.namespace==ns,metadata.name=n1", &[])
                .expect("ok")
                .matches(&o)
        );
        assert!(
            FieldSelector::parse("status.phase=Running", &["status.phase"])
                .expect("ok")
                .matches(&o)
        );
        let e = FieldSelector::parse("spec.foo=x", &[]).expect_err("unknown field");
        assert!(e.contains("\"spec.foo\" is not a known field selector"), "{e}");
    }
}

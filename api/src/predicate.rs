//! JSONPredicate (draft-snell-json-test-07), the rule match language, compiled once and evaluated against session
//! metadata.
//!
//! Unlike the original l7mp, a predicate is validated when it is loaded: an unknown operator, a missing `path` or a
//! `value` of the wrong type is an error that names the field, not a predicate that is silently false; so are an
//! empty `and`/`or`/`not` (json-predicate answered true) and an `apply` or `value` on an operator that takes none.
//! Second-order operators (`and`, `or`, `not`) may carry a `path` that re-roots their sub-predicates; it is folded
//! into the sub-predicates' pointers at load time. Regular expressions are compiled once.

use crate::decode::{Decoder, describe};
use crate::path::FieldPath;
use crate::pointer::Pointer;
use regex::Regex;
use serde_json::Value;

/// The JSON types the `type` operator tests for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    Array,
    Null,
    String,
    Number,
    Boolean,
    Object,
    Undefined,
    Date,
    Time,
    DateTime,
    Lang,
    LangRange,
    Iri,
    AbsoluteIri,
}

/// A compiled predicate.
#[derive(Debug, Clone)]
pub enum Predicate {
    Test {
        path: Pointer,
        value: Value,
        ignore_case: bool,
    },
    Contains {
        path: Pointer,
        value: Value,
        ignore_case: bool,
    },
    Defined {
        path: Pointer,
    },
    Undefined {
        path: Pointer,
    },
    Starts {
        path: Pointer,
        value: String,
        ignore_case: bool,
    },
    Ends {
        path: Pointer,
        value: String,
        ignore_case: bool,
    },
    Less {
        path: Pointer,
        value: f64,
    },
    More {
        path: Pointer,
        value: f64,
    },
    In {
        path: Pointer,
        values: Vec<Value>,
        ignore_case: bool,
    },
    /// The array at `path` has an element equal to `value` (json-predicate's extension: the inverse of `in`).
    Contained {
        path: Pointer,
        value: Value,
        ignore_case: bool,
    },
    Intersects {
        path: Pointer,
        values: Vec<Value>,
        ignore_case: bool,
    },
    Matches {
        path: Pointer,
        /// Built case-insensitive when `ignore_case` (kept for translations to other regex engines).
        regex: Regex,
        ignore_case: bool,
    },
    Type {
        path: Pointer,
        ty: JsonType,
    },
    And(Vec<Predicate>),
    Or(Vec<Predicate>),
    Not(Vec<Predicate>),
}

/// Every operator name, for error messages.
pub const OPERATORS: &[&str] = &[
    "test",
    "contains",
    "defined",
    "undefined",
    "starts",
    "ends",
    "less",
    "more",
    "in",
    "contained",
    "intersects",
    "matches",
    "type",
    "and",
    "or",
    "not",
];

const FIELDS: &[&str] = &["op", "path", "value", "ignore_case", "apply"];

impl Predicate {
    /// Compiles a predicate object, recording errors in `d`.
    pub fn decode(d: &mut Decoder, v: &Value, path: &FieldPath) -> Option<Predicate> {
        Self::decode_rooted(d, v, path, &Pointer::default())
    }

    fn decode_rooted(d: &mut Decoder, v: &Value, path: &FieldPath, root: &Pointer) -> Option<Predicate> {
        let o = d.object(v, path, FIELDS)?;
        let op_v = d.required(o, "op")?;
        let op = d.string(op_v, &o.at("op"))?;
        if !OPERATORS.contains(&op.as_str()) {
            let msg = format!("unknown operator {op:?} (expected one of: {})", OPERATORS.join(", "));
            d.error(&o.at("op"), msg);
            return None;
        }
        let ignore_case = match o.get("ignore_case") {
            Some(b) => d.bool(b, &o.at("ignore_case"))?,
            None => false,
        };
        // `path`, parsed and re-rooted; required for first-order operators.
        let pointer = match o.get("path") {
            Some(p) => {
                let s = d.string(p, &o.at("path"))?;
                match Pointer::parse(&s) {
                    Ok(ptr) => Some(root.join(&ptr)),
                    Err(e) => {
                        d.error(&o.at("path"), e);
                        return None;
                    }
                }
            }
            None => None,
        };
        if let "and" | "or" | "not" = op.as_str() {
            let sub_root = pointer.unwrap_or_else(|| root.clone());
            let apply_path = o.at("apply");
            if o.map.contains_key("value") {
                d.error(
                    &o.at("value"),
                    format!("operator {op:?} takes no value (its predicates go in apply)"),
                );
                return None;
            }
            let Some(apply_v) = o.get("apply") else {
                d.error(
                    &apply_path,
                    format!("missing required field (operator {op:?} needs an array of predicates)"),
                );
                return None;
            };
            if apply_v.as_array().is_some_and(Vec::is_empty) {
                // json-predicate answers true for an empty and/or/not; an empty list is almost surely a mistake, and
                // a rule without `match` already matches every session.
                d.error(
                    &apply_path,
                    format!("operator {op:?} needs at least one predicate (omit match to match every session)"),
                );
                return None;
            }
            let subs = d.array(apply_v, &apply_path, |d, v, p| Self::decode_rooted(d, v, p, &sub_root))?;
            return Some(match op.as_str() {
                "and" => Predicate::And(subs),
                "or" => Predicate::Or(subs),
                _ => Predicate::Not(subs),
            });
        }
        if o.map.contains_key("apply") {
            d.error(
                &o.at("apply"),
                format!("operator {op:?} takes no apply (only and, or and not do)"),
            );
            return None;
        }
        let Some(path) = pointer else {
            d.error(
                &o.at("path"),
                format!("missing required field (operator {op:?} needs a path)"),
            );
            return None;
        };
        if let "defined" | "undefined" = op.as_str() {
            return Some(if op == "defined" {
                Predicate::Defined { path }
            } else {
                Predicate::Undefined { path }
            });
        }
        let vpath = o.at("value");
        let Some(value) = o.map.get("value") else {
            d.error(
                &vpath,
                format!("missing required field (operator {op:?} needs a value)"),
            );
            return None;
        };
        let expect = |d: &mut Decoder, what: &str| d.error(&vpath, format!("expected {what}, got {}", describe(value)));
        Some(match op.as_str() {
            "test" => Predicate::Test {
                path,
                value: value.clone(),
                ignore_case,
            },
            "contains" => Predicate::Contains {
                path,
                value: value.clone(),
                ignore_case,
            },
            "contained" => Predicate::Contained {
                path,
                value: value.clone(),
                ignore_case,
            },
            "starts" | "ends" | "matches" | "type" => {
                let Some(text) = value.as_str().map(str::to_owned) else {
                    expect(d, "a string");
                    return None;
                };
                match op.as_str() {
                    "starts" => Predicate::Starts {
                        path,
                        value: text,
                        ignore_case,
                    },
                    "ends" => Predicate::Ends {
                        path,
                        value: text,
                        ignore_case,
                    },
                    "matches" => match regex::RegexBuilder::new(&text).case_insensitive(ignore_case).build() {
                        Ok(regex) => Predicate::Matches {
                            path,
                            regex,
                            ignore_case,
                        },
                        Err(e) => {
                            d.error(&vpath, format!("invalid regular expression {text:?}: {e}"));
                            return None;
                        }
                    },
                    _ => Predicate::Type {
                        path,
                        ty: json_type(d, &text, &vpath)?,
                    },
                }
            }
            "less" | "more" => {
                let Some(n) = value.as_f64() else {
                    expect(d, "a number");
                    return None;
                };
                if op == "less" {
                    Predicate::Less { path, value: n }
                } else {
                    Predicate::More { path, value: n }
                }
            }
            _ => {
                let Value::Array(values) = value else {
                    expect(d, "an array");
                    return None;
                };
                let values = values.clone();
                match op.as_str() {
                    "in" => Predicate::In {
                        path,
                        values,
                        ignore_case,
                    },
                    _ => Predicate::Intersects {
                        path,
                        values,
                        ignore_case,
                    },
                }
            }
        })
    }

    /// Evaluates the predicate against `doc` (the session metadata).
    pub fn eval(&self, doc: &Value) -> bool {
        match self {
            Predicate::Test {
                path,
                value,
                ignore_case,
            } => path.get(doc).is_some_and(|v| eq(v, value, *ignore_case)),
            Predicate::Contains {
                path,
                value,
                ignore_case,
            } => match path.get(doc) {
                Some(Value::String(s)) => match value {
                    Value::String(needle) if *ignore_case => s.to_lowercase().contains(&needle.to_lowercase()),
                    Value::String(needle) => s.contains(needle.as_str()),
                    _ => false,
                },
                Some(Value::Array(a)) => a.iter().any(|x| eq(x, value, *ignore_case)),
                _ => false,
            },
            Predicate::Defined { path } => path.get(doc).is_some(),
            Predicate::Undefined { path } => path.get(doc).is_none(),
            Predicate::Starts {
                path,
                value,
                ignore_case,
            } => str_at(doc, path).is_some_and(|s| {
                if *ignore_case {
                    affix_ci(s, value, true)
                } else {
                    s.starts_with(value.as_str())
                }
            }),
            Predicate::Ends {
                path,
                value,
                ignore_case,
            } => str_at(doc, path).is_some_and(|s| {
                if *ignore_case {
                    affix_ci(s, value, false)
                } else {
                    s.ends_with(value.as_str())
                }
            }),
            Predicate::Less { path, value } => path.get(doc).and_then(Value::as_f64).is_some_and(|n| n < *value),
            Predicate::More { path, value } => path.get(doc).and_then(Value::as_f64).is_some_and(|n| n > *value),
            Predicate::In {
                path,
                values,
                ignore_case,
            } => path
                .get(doc)
                .is_some_and(|v| values.iter().any(|x| eq(v, x, *ignore_case))),
            Predicate::Contained {
                path,
                value,
                ignore_case,
            } => match path.get(doc) {
                Some(Value::Array(a)) => a.iter().any(|x| eq(x, value, *ignore_case)),
                _ => false,
            },
            Predicate::Intersects {
                path,
                values,
                ignore_case,
            } => match path.get(doc) {
                Some(Value::Array(a)) => a.iter().any(|v| values.iter().any(|x| eq(v, x, *ignore_case))),
                _ => false,
            },
            Predicate::Matches { path, regex, .. } => str_at(doc, path).is_some_and(|s| regex.is_match(s)),
            Predicate::Type { path, ty } => type_matches(path.get(doc), *ty),
            Predicate::And(subs) => subs.iter().all(|p| p.eval(doc)),
            // Empty `and`/`or`/`not` are rejected at load, so no empty-list convention is needed here.
            Predicate::Or(subs) => subs.iter().any(|p| p.eval(doc)),
            Predicate::Not(subs) => !subs.iter().any(|p| p.eval(doc)),
        }
    }
}

fn json_type(d: &mut Decoder, name: &str, path: &FieldPath) -> Option<JsonType> {
    const TYPES: &[(&str, JsonType)] = &[
        ("array", JsonType::Array),
        ("null", JsonType::Null),
        ("string", JsonType::String),
        ("number", JsonType::Number),
        ("boolean", JsonType::Boolean),
        ("object", JsonType::Object),
        ("undefined", JsonType::Undefined),
        ("date", JsonType::Date),
        ("time", JsonType::Time),
        ("date-time", JsonType::DateTime),
        ("lang", JsonType::Lang),
        ("lang-range", JsonType::LangRange),
        ("iri", JsonType::Iri),
        ("absolute-iri", JsonType::AbsoluteIri),
    ];
    match TYPES.iter().find(|(n, _)| *n == name) {
        Some((_, t)) => Some(*t),
        None => {
            let names: Vec<&str> = TYPES.iter().map(|(n, _)| *n).collect();
            d.error(
                path,
                format!("unknown type {name:?} (expected one of: {})", names.join(", ")),
            );
            None
        }
    }
}

fn str_at<'a>(doc: &'a Value, path: &Pointer) -> Option<&'a str> {
    path.get(doc).and_then(Value::as_str)
}

/// Deep equality as JSON (and JavaScript) sees it: numbers compare by value (`1` equals `1.0`), and with
/// `ignore_case` strings compare case-insensitively at every depth.
fn eq(a: &Value, b: &Value, ignore_case: bool) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) if ignore_case => lower_eq(x, y),
        (Value::Number(x), Value::Number(y)) => num_eq(x, y),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| eq(p, q, ignore_case)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| eq(v, w, ignore_case)))
        }
        _ => a == b,
    }
}

/// Case-insensitive `starts_with` (`prefix`) or `ends_with`; allocates only for non-ASCII text.
fn affix_ci(s: &str, affix: &str, prefix: bool) -> bool {
    if s.is_ascii() && affix.is_ascii() {
        let (s, a) = (s.as_bytes(), affix.as_bytes());
        let Some(rest) = s.len().checked_sub(a.len()) else {
            return false;
        };
        let part = if prefix { &s[..a.len()] } else { &s[rest..] };
        return part.eq_ignore_ascii_case(a);
    }
    let (s, a) = (s.to_lowercase(), affix.to_lowercase());
    if prefix { s.starts_with(&a) } else { s.ends_with(&a) }
}

/// Case-insensitive string equality without allocating.
fn lower_eq(x: &str, y: &str) -> bool {
    if x.is_ascii() && y.is_ascii() {
        return x.eq_ignore_ascii_case(y);
    }
    x.chars()
        .flat_map(char::to_lowercase)
        .eq(y.chars().flat_map(char::to_lowercase))
}

/// serde_json keeps integers and floats apart (`1 != 1.0`); JSON and the original do not.
fn num_eq(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    if let (Some(p), Some(q)) = (x.as_i64(), y.as_i64()) {
        return p == q;
    }
    if let (Some(p), Some(q)) = (x.as_u64(), y.as_u64()) {
        return p == q;
    }
    x.as_f64() == y.as_f64()
}

fn type_matches(v: Option<&Value>, ty: JsonType) -> bool {
    use std::sync::LazyLock;
    static DATE: LazyLock<Regex> = LazyLock::new(|| re(r"^\d{4}-\d{2}-\d{2}$"));
    // RFC 3339 full-time: the offset is part of it (a bare `10:10:10` is a partial-time).
    static TIME: LazyLock<Regex> = LazyLock::new(|| re(r"^\d{2}:\d{2}:\d{2}(\.\d+)?([zZ]|[+-]\d{2}:\d{2})$"));
    static DATE_TIME: LazyLock<Regex> =
        LazyLock::new(|| re(r"^\d{4}-\d{2}-\d{2}[tT ]\d{2}:\d{2}:\d{2}(\.\d+)?([zZ]|[+-]\d{2}:\d{2})$"));
    static LANG: LazyLock<Regex> = LazyLock::new(|| re(r"^[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*$"));
    static LANG_RANGE: LazyLock<Regex> = LazyLock::new(|| re(r"^(\*|[a-zA-Z]{1,8})(-(\*|[a-zA-Z0-9]{1,8}))*$"));
    static IRI: LazyLock<Regex> = LazyLock::new(|| re(r"^[^\s]*$"));
    static ABS_IRI: LazyLock<Regex> = LazyLock::new(|| re(r"^[a-zA-Z][a-zA-Z0-9+.-]*:[^\s]*$"));
    let s = v.and_then(Value::as_str);
    match ty {
        JsonType::Undefined => v.is_none(),
        JsonType::Array => matches!(v, Some(Value::Array(_))),
        JsonType::Null => matches!(v, Some(Value::Null)),
        JsonType::String => matches!(v, Some(Value::String(_))),
        JsonType::Number => matches!(v, Some(Value::Number(_))),
        JsonType::Boolean => matches!(v, Some(Value::Bool(_))),
        JsonType::Object => matches!(v, Some(Value::Object(_))),
        JsonType::Date => s.is_some_and(|s| DATE.is_match(s)),
        JsonType::Time => s.is_some_and(|s| TIME.is_match(s)),
        JsonType::DateTime => s.is_some_and(|s| DATE_TIME.is_match(s)),
        JsonType::Lang => s.is_some_and(|s| LANG.is_match(s)),
        JsonType::LangRange => s.is_some_and(|s| LANG_RANGE.is_match(s)),
        JsonType::Iri => s.is_some_and(|s| IRI.is_match(s)),
        JsonType::AbsoluteIri => s.is_some_and(|s| ABS_IRI.is_match(s)),
    }
}

fn re(s: &str) -> Regex {
    // The patterns above are constants; a failure here is a programming error caught by the unit tests.
    Regex::new(s).unwrap_or_else(|e| panic!("built-in pattern {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(v: Value) -> Predicate {
        let mut d = Decoder::new();
        let p = Predicate::decode(&mut d, &v, &FieldPath::root().key("match"));
        assert!(!d.has_errors(), "{:?}", d.into_errors());
        p.expect("compiles")
    }

    fn errors(v: Value) -> Vec<String> {
        let mut d = Decoder::new();
        let p = Predicate::decode(&mut d, &v, &FieldPath::root().key("match"));
        assert!(p.is_none());
        d.into_errors().iter().map(|e| e.to_string()).collect()
    }

    fn meta() -> Value {
        json!({
            "HTTP": {"url": {"path": "/admin/users"}, "method": "GET", "headers": {"X-Id": "AbC"}},
            "IP": {"src_addr": "10.0.0.1", "src_port": 4242},
            "labels": {"tags": ["a", "b"], "n": 7}
        })
    }

    #[test]
    fn first_order_operators() {
        let m = meta();
        let cases = [
            (json!({"op": "test", "path": "/HTTP/method", "value": "GET"}), true),
            (json!({"op": "test", "path": "/HTTP/method", "value": "get"}), false),
            (
                json!({"op": "test", "path": "/HTTP/method", "value": "get", "ignore_case": true}),
                true,
            ),
            (
                json!({"op": "starts", "path": "/HTTP/url/path", "value": "/admin"}),
                true,
            ),
            (
                json!({"op": "starts", "path": "/HTTP/url/path", "value": "/user"}),
                false,
            ),
            (json!({"op": "ends", "path": "/HTTP/url/path", "value": "users"}), true),
            (
                json!({"op": "contains", "path": "/HTTP/url/path", "value": "min/u"}),
                true,
            ),
            (json!({"op": "contains", "path": "/labels/tags", "value": "b"}), true),
            (json!({"op": "defined", "path": "/IP/src_port"}), true),
            (json!({"op": "undefined", "path": "/IP/dst_port"}), true),
            (json!({"op": "less", "path": "/labels/n", "value": 8}), true),
            (json!({"op": "more", "path": "/labels/n", "value": 8}), false),
            (
                json!({"op": "in", "path": "/HTTP/method", "value": ["PUT", "GET"]}),
                true,
            ),
            (json!({"op": "contained", "path": "/labels/tags", "value": "a"}), true),
            (
                json!({"op": "intersects", "path": "/labels/tags", "value": ["x", "b"]}),
                true,
            ),
            (
                json!({"op": "matches", "path": "/HTTP/headers/X-Id", "value": "^abc$", "ignore_case": true}),
                true,
            ),
            (json!({"op": "type", "path": "/labels/tags", "value": "array"}), true),
            (json!({"op": "type", "path": "/nope", "value": "undefined"}), true),
        ];
        for (p, want) in cases {
            assert_eq!(compile(p.clone()).eval(&m), want, "{p}");
        }
    }

    #[test]
    fn second_order_operators_and_rerooting() {
        let m = meta();
        let and = json!({"op": "and", "apply": [
            {"op": "test", "path": "/HTTP/method", "value": "GET"},
            {"op": "starts", "path": "/HTTP/url/path", "value": "/admin"}]});
        assert!(compile(and).eval(&m));
        let or = json!({"op": "or", "apply": [
            {"op": "test", "path": "/HTTP/method", "value": "PUT"},
            {"op": "defined", "path": "/labels"}]});
        assert!(compile(or).eval(&m));
        let not = json!({"op": "not", "apply": [{"op": "test", "path": "/HTTP/method", "value": "PUT"}]});
        assert!(compile(not).eval(&m));
        let rerooted = json!({"op": "and", "path": "/HTTP/url", "apply": [
            {"op": "starts", "path": "/path", "value": "/admin"}]});
        assert!(compile(rerooted).eval(&m));
    }

    #[test]
    fn bad_predicates_name_the_field() {
        assert_eq!(
            errors(json!({"op": "nope", "path": "/a"}))[0],
            format!(
                "match.op: unknown operator \"nope\" (expected one of: {})",
                OPERATORS.join(", ")
            )
        );
        assert!(errors(json!({"op": "test", "value": 1}))[0].starts_with("match.path: missing required field"));
        assert!(
            errors(json!({"op": "less", "path": "/a", "value": "x"}))[0].starts_with("match.value: expected a number")
        );
        assert!(
            errors(json!({"op": "and", "apply": [{"op": "bad"}]}))[0]
                .starts_with("match.apply[0].op: unknown operator")
        );
        assert!(
            errors(json!({"op": "matches", "path": "/a", "value": "("}))[0].starts_with("match.value: invalid regular")
        );
        assert!(errors(json!({"path": "/a"}))[0].starts_with("match.op: missing required field"));
    }
}

//! JSONPredicate, case by case.
//!
//! The rows port two suites of the original:
//! - `json-predicate` 0.9.5 (`test/test.js`), the npm package the original l7mp evaluates `match` with: every `it`,
//!   one row per assertion, over the same fixture document ([`in0`]). A JavaScript `RegExp` literal becomes the
//!   equivalent string (a `/.../i` flag becomes `(?i)`), and the fixture's `dateObj` (a JavaScript `Date`, not JSON)
//!   is left out.
//! - l7mp's `test/13-rule.test.js`: each `context` compiles a rule and applies it to a matching and a non-matching
//!   session; here one row each, against the session metadata.
//!
//! then add rows of our own for JSON-pointer escapes, re-rooting in `and`/`or`/`not`, numbers, non-ASCII
//! `ignore_case`, and the places where we deliberately differ from json-predicate (each says so in a comment).
//!
//! Where json-predicate silently evaluates a malformed predicate to false (or, for an empty `and`/`or`/`not`, to
//! true), we reject it when the configuration is loaded: those rows are in [`REJECTED`], with the field the error
//! must name.
//!
//! The tables are `#[rustfmt::skip]` so that each case stays on one line.

#![allow(clippy::unwrap_used)]

use l7mp_api::decode::Decoder;
use l7mp_api::{FieldPath, Format, Predicate, parse_config};
use serde_json::{Value, json};
use std::collections::HashSet;

/// Compiles a predicate found at `match`, or returns its errors as displayed.
fn compile(pred: &Value) -> Result<Predicate, Vec<String>> {
    let mut d = Decoder::new();
    let p = Predicate::decode(&mut d, pred, &FieldPath::root().key("match"));
    if d.has_errors() {
        return Err(d.into_errors().iter().map(ToString::to_string).collect());
    }
    p.ok_or_else(Vec::new)
}

/// json-predicate's test fixture (`in0`), without `dateObj`.
fn in0() -> Value {
    json!({
        "num1": 1,
        "null1": null,
        "stringA": "A",
        "stringABC": "ABC",
        "stringAbC_123": "AbC_123",
        "arrayA": ["a", "b", "c"],
        "arrayB": ["a", {"foo": "b"}, 3],
        "arrayC": ["a", {"foo": {"bar": "b"}}, 3],
        "arrayN": ["a", {"foo": {"num1": 1}}, 3],
        "objA": {
            "num2": 2,
            "null2": null,
            "boolT": true,
            "boolF": false,
            "dateTime": "2010-10-10T10:10:10Z",
            "dateTimeOffset": "2010-10-10T10:10:10+05:30",
            "date": "2010-10-10",
            "timeZ": "10:10:10Z",
            "timeOffset": "10:10:10+05:30",
            "lang": "en-US",
            "langRange": "CH-*",
            "langRange2": "*",
            "langRange3": "CH-de",
            "iri": "https://github.com/MalcolmDwyer/json-predicate#test",
            "absoluteIri": "https://github.com/MalcolmDwyer/json-predicate",
            "stringX": "X",
            "stringXYZ": "XYZ",
            "stringXyZ_789": "XyZ_789",
            "objB": {
                "num3": 3,
                "null3": null,
                "stringM": "M",
                "stringMNO": "MNO",
                "stringMnO_456": "MnO_456"
            }
        },
        "objX": {
            "num1": 1,
            "stringAbc": "Abc",
            "objY": {"num2": 2}
        }
    })
}

/// The `a: {b, c: {d}}` document of l7mp's and/or/not rule tests.
fn abcd(d: i64) -> Value {
    json!({"a": {"b": "foo", "c": {"d": d}}})
}

struct Case {
    name: &'static str,
    pred: Value,
    doc: Value,
    want: bool,
}

fn c(name: &'static str, pred: Value, doc: Value, want: bool) -> Case {
    Case { name, pred, doc, want }
}

/// A first-order predicate `{op, path, value}` on the json-predicate fixture.
fn jp(name: &'static str, op: &str, path: &str, value: Value, want: bool) -> Case {
    c(name, json!({"op": op, "path": path, "value": value}), in0(), want)
}

/// The same with `ignore_case: true`.
fn jp_ic(name: &'static str, op: &str, path: &str, value: Value, want: bool) -> Case {
    c(
        name,
        json!({"op": op, "path": path, "value": value, "ignore_case": true}),
        in0(),
        want,
    )
}

/// A `type` predicate on the json-predicate fixture.
fn ty(name: &'static str, path: &str, ty: &str, want: bool) -> Case {
    jp(name, "type", path, json!(ty), want)
}

/// `{op, path}` (defined/undefined) on the fixture.
fn def(name: &'static str, op: &str, path: &str, want: bool) -> Case {
    c(name, json!({"op": op, "path": path}), in0(), want)
}

/// Two or three `defined` predicates under a second-order `op`, optionally re-rooted at `root`.
fn defined_under(name: &'static str, op: &str, root: Option<&str>, paths: &[&str], want: bool) -> Case {
    let apply: Vec<Value> = paths.iter().map(|p| json!({"op": "defined", "path": p})).collect();
    let mut pred = json!({"op": op, "apply": apply});
    if let Some(r) = root {
        pred["path"] = json!(r);
    }
    c(name, pred, in0(), want)
}

const MISSING: &str = "/objZZZ/objZZZZZZZZ";

#[rustfmt::skip]
fn json_predicate_cases() -> Vec<Case> {
    vec![
        // --- top level
        jp("jp: in at a path into an undefined part of the data", "in", MISSING, json!(["does not matter"]), false),
        // --- contains
        jp("jp contains: contained string (shallow path)", "contains", "/stringABC", json!("AB"), true),
        jp("jp contains: non-contained string (shallow path)", "contains", "/stringABC", json!("XY"), false),
        jp("jp contains: contained string (deep path)", "contains", "/objA/objB/stringMNO", json!("MN"), true),
        jp("jp contains: non-contained string (deep path)", "contains", "/objA/stringXYZ", json!("AB"), false),
        jp("jp contains: mismatching case", "contains", "/objA/stringXYZ", json!("xy"), false),
        jp_ic("jp contains: honors ignore_case", "contains", "/objA/stringXYZ", json!("xy"), true),
        jp("jp contains: undefined value", "contains", MISSING, json!("does not matter"), false),
        jp_ic("jp contains: undefined value (ignore_case)", "contains", MISSING, json!("does not matter"), false),
        // --- matches
        jp("jp matches: non-string target (number)", "matches", "/num1", json!("[\\w\\s]*"), false),
        jp("jp matches: non-string target (null)", "matches", "/null1", json!("[\\w\\s]*"), false),
        jp("jp matches: non-string target (object)", "matches", "/objA", json!("[\\w\\s]*"), false),
        jp("jp matches: non-string target (array)", "matches", "/arrayA", json!("[\\w\\s]*"), false),
        jp("jp matches: string that becomes a RegExp", "matches", "/stringABC", json!("[A-Z]*"), true),
        jp_ic("jp matches: different case with ignore_case", "matches", "/stringABC", json!("aBc"), true),
        jp("jp matches: different case without ignore_case", "matches", "/stringABC", json!("aBc"), false),
        jp("jp matches: RegExp /[A-Z]+/", "matches", "/stringABC", json!("[A-Z]+"), true),
        jp("jp matches: RegExp /[a-z]+/, case mismatch", "matches", "/stringABC", json!("[a-z]+"), false),
        // json-predicate passes a RegExp object with the /i flag; in JSON that is the inline flag (?i).
        jp("jp matches: RegExp /[a-z]+/i", "matches", "/stringABC", json!("(?i)[a-z]+"), true),
        jp_ic("jp matches: RegExp /[a-z]+/ with ignore_case", "matches", "/stringABC", json!("[a-z]+"), true),
        jp("jp matches: undefined value", "matches", MISSING, json!("[whatever]"), false),
        jp_ic("jp matches: undefined value (ignore_case)", "matches", MISSING, json!("[whatever]"), false),
        // --- in
        jp("jp in: string in array", "in", "/stringABC", json!(["foo", "ABC", "bar"]), true),
        jp("jp in: string differing in case", "in", "/stringABC", json!(["foo", "aBc", "bar"]), false),
        jp_ic("jp in: string differing in case, ignore_case", "in", "/stringABC", json!(["foo", "aBc", "bar"]), true),
        jp("jp in: shallow object", "in", "/objX/objY", json!(["foo", {"num2": 2}, "bar"]), true),
        jp("jp in: deep object", "in", "/objX", json!(["foo", {"num1": 1, "stringAbc": "Abc", "objY": {"num2": 2}}, "bar"]), true),
        jp("jp in: number", "in", "/objA/num2", json!([{"foo": "foo"}, 2, "bar"]), true),
        jp_ic("jp in: string inside object, ignore_case", "in", "/objX", json!(["foo", {"num1": 1, "stringAbc": "aBc", "objY": {"num2": 2}}, "bar"]), true),
        jp("jp in: string inside object differing in case", "in", "/objX", json!(["foo", {"num1": 1, "stringAbc": "aBc", "objY": {"num2": 2}}, "bar"]), false),
        jp("jp in: undefined value", "in", MISSING, json!(["does not matter"]), false),
        jp_ic("jp in: undefined value (ignore_case)", "in", MISSING, json!(["does not matter"]), false),
        // --- test
        jp("jp test: matching string", "test", "/stringABC", json!("ABC"), true),
        jp("jp test: string differing in case", "test", "/stringABC", json!("aBc"), false),
        jp_ic("jp test: string differing in case, ignore_case", "test", "/stringABC", json!("aBc"), true),
        jp("jp test: shallow object", "test", "/objX/objY", json!({"num2": 2}), true),
        jp("jp test: deep object", "test", "/objX", json!({"num1": 1, "stringAbc": "Abc", "objY": {"num2": 2}}), true),
        jp("jp test: number", "test", "/objA/num2", json!(2), true),
        jp("jp test: array", "test", "/arrayA", json!(["a", "b", "c"]), true),
        jp("jp test: superset array", "test", "/arrayA", json!(["a", "b", "c", "d"]), false),
        jp("jp test: subset array", "test", "/arrayA", json!(["a", "b"]), false),
        jp("jp test: string disguised as array", "test", "/arrayA", json!("abcd"), false),
        jp("jp test: array disguised as string", "test", "/stringABC", json!(["A", "B", "C"]), false),
        jp_ic("jp test: string inside object, ignore_case", "test", "/objX", json!({"num1": 1, "stringAbc": "aBc", "objY": {"num2": 2}}), true),
        jp("jp test: string inside object differing in case", "test", "/objX", json!({"num1": 1, "stringAbc": "aBc", "objY": {"num2": 2}}), false),
        jp("jp test: undefined value", "test", MISSING, json!("does not matter"), false),
        jp_ic("jp test: undefined value (ignore_case)", "test", MISSING, json!("does not matter"), false),
        // --- ends
        jp("jp ends: end string (shallow path)", "ends", "/stringABC", json!("BC"), true),
        jp("jp ends: non-ending string (shallow path)", "ends", "/stringABC", json!("AB"), false),
        jp("jp ends: end string (deep path)", "ends", "/objA/objB/stringMNO", json!("NO"), true),
        jp("jp ends: non-ending string (deep path)", "ends", "/objA/stringXYZ", json!("XY"), false),
        jp("jp ends: mismatching case", "ends", "/objA/stringXYZ", json!("yz"), false),
        jp_ic("jp ends: honors ignore_case", "ends", "/objA/stringXYZ", json!("yz"), true),
        jp("jp ends: undefined value", "ends", MISSING, json!("does not matter"), false),
        jp_ic("jp ends: undefined value (ignore_case)", "ends", MISSING, json!("does not matter"), false),
        // --- starts
        jp("jp starts: starting string (shallow path)", "starts", "/stringABC", json!("AB"), true),
        jp("jp starts: non-starting string (shallow path)", "starts", "/stringABC", json!("BC"), false),
        jp("jp starts: start string (deep path)", "starts", "/objA/objB/stringMNO", json!("MN"), true),
        jp("jp starts: non-starting string (deep path)", "starts", "/objA/stringXYZ", json!("YZ"), false),
        jp("jp starts: mismatching case", "starts", "/objA/stringXYZ", json!("xy"), false),
        jp_ic("jp starts: honors ignore_case", "starts", "/objA/stringXYZ", json!("xy"), true),
        jp("jp starts: undefined value", "starts", MISSING, json!("does not matter"), false),
        jp_ic("jp starts: undefined value (ignore_case)", "starts", MISSING, json!("does not matter"), false),
        // --- defined
        def("jp defined: existing key (shallow)", "defined", "/num1", true),
        def("jp defined: existing key with null value (shallow)", "defined", "/null1", true),
        def("jp defined: non-existent key (shallow)", "defined", "/not_a_key", false),
        def("jp defined: existing key (deep)", "defined", "/objA/objB/num3", true),
        def("jp defined: existing key with null value (deep)", "defined", "/objA/objB/null3", true),
        def("jp defined: non-existent key (deep)", "defined", "/objA/objB/not_a_key", false),
        // --- undefined
        def("jp undefined: non-existent key (shallow)", "undefined", "/not_a_key", true),
        def("jp undefined: non-existent key (deep)", "undefined", "/objA/not_a_key", true),
        def("jp undefined: existing key (shallow)", "undefined", "/num1", false),
        def("jp undefined: existing key with null value (shallow)", "undefined", "/null1", false),
        def("jp undefined: existing key (deep)", "undefined", "/objA/objB/num3", false),
        def("jp undefined: existing key with null value (deep)", "undefined", "/objA/objB/null3", false),
        // --- less (its non-numeric comparisons are in REJECTED)
        jp("jp less: greater predicate value", "less", "/objA/objB/num3", json!(4), true),
        jp("jp less: lesser predicate value", "less", "/objA/objB/num3", json!(2), false),
        jp("jp less: equal value", "less", "/objA/objB/num3", json!(3), false),
        jp("jp less: undefined value", "less", MISSING, json!(3), false),
        jp_ic("jp less: undefined value (ignore_case)", "less", MISSING, json!(3), false),
        // --- more
        jp("jp more: greater predicate value", "more", "/objA/objB/num3", json!(4), false),
        jp("jp more: lesser predicate value", "more", "/objA/objB/num3", json!(2), true),
        jp("jp more: equal value", "more", "/objA/objB/num3", json!(3), false),
        jp("jp more: undefined value", "more", MISSING, json!(3), false),
        jp_ic("jp more: undefined value (ignore_case)", "more", MISSING, json!(3), false),
        // --- type
        ty("jp type: number is number", "/objA/num2", "number", true),
        ty("jp type: string is not number", "/objA/stringXYZ", "number", false),
        ty("jp type: string is string", "/objA/stringXYZ", "string", true),
        ty("jp type: number is not string", "/objA/num2", "string", false),
        ty("jp type: true is boolean", "/objA/boolT", "boolean", true),
        ty("jp type: false is boolean", "/objA/boolF", "boolean", true),
        ty("jp type: number is not boolean", "/objA/num2", "boolean", false),
        ty("jp type: object is object", "/objA/objB", "object", true),
        ty("jp type: number is not object", "/objA/num2", "object", false),
        ty("jp type: array is array", "/arrayA", "array", true),
        ty("jp type: number is not array", "/objA/num2", "array", false),
        ty("jp type: null is null", "/objA/null2", "null", true),
        ty("jp type: number is not null", "/objA/num2", "null", false),
        ty("jp type: missing is undefined", "/objA/not_a_thing", "undefined", true),
        ty("jp type: number is not undefined", "/objA/num2", "undefined", false),
        ty("jp type: date is date", "/objA/date", "date", true),
        ty("jp type: date-time is not date", "/objA/dateTime", "date", false),
        ty("jp type: time (Z) is time", "/objA/timeZ", "time", true),
        ty("jp type: time (offset) is time", "/objA/timeOffset", "time", true),
        ty("jp type: date-time is not time", "/objA/dateTime", "time", false),
        ty("jp type: date-time (Z) is date-time", "/objA/dateTime", "date-time", true),
        ty("jp type: date-time (offset) is date-time", "/objA/dateTimeOffset", "date-time", true),
        ty("jp type: date is not date-time", "/objA/date", "date-time", false),
        ty("jp type: lang is lang", "/objA/lang", "lang", true),
        ty("jp type: number is not lang", "/objA/num2", "lang", false),
        ty("jp type: CH-* is lang-range", "/objA/langRange", "lang-range", true),
        ty("jp type: * is lang-range", "/objA/langRange2", "lang-range", true),
        ty("jp type: CH-de is lang-range", "/objA/langRange3", "lang-range", true),
        ty("jp type: number is not lang-range", "/objA/num2", "lang-range", false),
        ty("jp type: iri is iri", "/objA/iri", "iri", true),
        ty("jp type: number is not iri", "/objA/num2", "iri", false),
        ty("jp type: absolute iri is absolute-iri", "/objA/absoluteIri", "absolute-iri", true),
        ty("jp type: number is not absolute-iri", "/objA/num2", "absolute-iri", false),
        // (json-predicate's "undefined value" rows for type use an unknown type name: see REJECTED.)
        // --- contained: json-predicate's extension, "the array at path has an element equal to value"
        jp("jp contained: path is not an array", "contained", "/num1", json!(1), false),
        jp("jp contained: array contains the value", "contained", "/arrayA", json!("a"), true),
        jp("jp contained: string differing in case", "contained", "/arrayA", json!("A"), false),
        jp_ic("jp contained: string differing in case, ignore_case", "contained", "/arrayA", json!("A"), true),
        jp("jp contained: matching shallow object", "contained", "/arrayB", json!({"foo": "b"}), true),
        jp("jp contained: mismatched shallow object", "contained", "/arrayB", json!({"foo": "c"}), false),
        jp("jp contained: matching deep object", "contained", "/arrayC", json!({"foo": {"bar": "b"}}), true),
        jp("jp contained: mismatched deep object", "contained", "/arrayC", json!({"foo": {"bar": "c"}}), false),
        jp("jp contained: shallow object differing in case", "contained", "/arrayB", json!({"foo": "B"}), false),
        jp_ic("jp contained: shallow object, ignore_case", "contained", "/arrayB", json!({"foo": "B"}), true),
        jp("jp contained: deep object differing in case", "contained", "/arrayC", json!({"foo": {"bar": "B"}}), false),
        jp_ic("jp contained: deep object, ignore_case", "contained", "/arrayC", json!({"foo": {"bar": "B"}}), true),
        jp("jp contained: numeric value", "contained", "/arrayN", json!(3), true),
        jp("jp contained: deep object with a number", "contained", "/arrayN", json!({"foo": {"num1": 1}}), true),
        jp("jp contained: undefined value", "contained", MISSING, json!("does not matter"), false),
        jp_ic("jp contained: undefined value (ignore_case)", "contained", MISSING, json!("does not matter"), false),
        // --- intersects
        jp("jp intersects: path is not an array", "intersects", "/num1", json!([1]), false),
        jp("jp intersects: single-value array", "intersects", "/arrayA", json!(["a"]), true),
        jp("jp intersects: string differing in case", "intersects", "/arrayA", json!(["A"]), false),
        jp_ic("jp intersects: string differing in case, ignore_case", "intersects", "/arrayA", json!(["A"]), true),
        jp("jp intersects: one match", "intersects", "/arrayA", json!(["a", "zzzzzz"]), true),
        jp("jp intersects: all match", "intersects", "/arrayA", json!(["a", "b", "c"]), true),
        jp("jp intersects: all match plus extras", "intersects", "/arrayA", json!(["a", "b", "c", "zzzzzz"]), true),
        jp("jp intersects: matching shallow object", "intersects", "/arrayB", json!([{"foo": "b"}, "zzzzzz"]), true),
        jp("jp intersects: mismatched shallow object", "intersects", "/arrayB", json!(["zzzzzz", {"foo": "c"}]), false),
        jp("jp intersects: matching deep object", "intersects", "/arrayC", json!(["zzzzzz", {"foo": {"bar": "b"}}]), true),
        jp("jp intersects: mismatched deep object", "intersects", "/arrayC", json!(["zzzzzz", {"foo": {"bar": "c"}}]), false),
        jp("jp intersects: shallow object differing in case", "intersects", "/arrayB", json!([{"foo": "B"}, "zzzzzz"]), false),
        jp_ic("jp intersects: shallow object, ignore_case", "intersects", "/arrayB", json!([{"foo": "B"}, "zzzzzz"]), true),
        jp("jp intersects: deep object differing in case", "intersects", "/arrayC", json!([{"foo": {"bar": "B"}}, "zzzzzz"]), false),
        jp_ic("jp intersects: deep object, ignore_case", "intersects", "/arrayC", json!(["zzzzzz", {"foo": {"bar": "B"}}]), true),
        jp("jp intersects: numeric value", "intersects", "/arrayN", json!(["zzzzzz", 3]), true),
        jp("jp intersects: deep object with a number", "intersects", "/arrayN", json!(["zzzzzz", {"foo": {"num1": 1}}]), true),
        jp("jp intersects: undefined value", "intersects", MISSING, json!(["does not matter"]), false),
        jp_ic("jp intersects: undefined value (ignore_case)", "intersects", MISSING, json!(["does not matter"]), false),
        // --- and (the empty `apply` row is in REJECTED)
        defined_under("jp and: shallow paths", "and", None, &["/stringA", "/stringABC"], true),
        defined_under("jp and: deep paths", "and", None, &["/objA/stringX", "/objA/stringXYZ"], true),
        defined_under("jp and: (t,t) with a compound path", "and", Some("/objA"), &["/stringX", "/stringXYZ"], true),
        defined_under("jp and: (t,t,t)", "and", Some("/objA"), &["/stringX", "/stringXYZ", "/null2"], true),
        defined_under("jp and: (t,f)", "and", Some("/objA"), &["/stringX", "/not_real"], false),
        // --- or
        defined_under("jp or: shallow paths", "or", None, &["/not_real_thing", "/stringABC"], true),
        defined_under("jp or: deep paths", "or", None, &["/objA/not_real_thing", "/objA/stringXYZ"], true),
        defined_under("jp or: (f,t) with a compound path", "or", Some("/objA"), &["/not_real_thing", "/stringXYZ"], true),
        defined_under("jp or: (t,f,t)", "or", Some("/objA"), &["/stringX", "/not_real_thing", "/null2"], true),
        defined_under("jp or: (f,f)", "or", Some("/objA"), &["/not_real_1", "/not_real_2"], false),
        // --- not (a NOR)
        defined_under("jp not: (f,f) shallow paths", "not", None, &["/not_real_1", "/not_real_2"], true),
        defined_under("jp not: (f,f) deep paths", "not", None, &["/objA/not_real_1", "/objA/not_real_2"], true),
        defined_under("jp not: (f,t) with a compound path", "not", Some("/objA"), &["/not_real_thing", "/stringXYZ"], false),
        defined_under("jp not: (t,f,t)", "not", Some("/objA"), &["/stringX", "/not_real_thing", "/null2"], false),
        defined_under("jp not: (f,f) with a compound path", "not", Some("/objA"), &["/not_real_1", "/not_real_2"], true),
    ]
}

#[rustfmt::skip]
fn l7mp_rule_cases() -> Vec<Case> {
    let nested = json!({"op": "or", "apply": [
        {"op": "not", "apply": [
            {"op": "undefined", "path": "/a/b/e"},
            {"op": "starts", "path": "/a/b/c", "value": "f"}]},
        {"op": "or", "apply": [
            {"op": "defined", "path": "/a/b/f"},
            {"op": "type", "path": "/a/b/d", "value": "number"}]}]});
    let and = json!({"op": "and", "apply": [
        {"op": "defined", "path": "/a/b"},
        {"op": "less", "path": "/a/c/d", "value": 15}]});
    let not = json!({"op": "not", "apply": [
        {"op": "defined", "path": "/a/b/e"},
        {"op": "less", "path": "/a/c/d", "value": 5}]});
    let or = json!({"op": "or", "apply": [
        {"op": "defined", "path": "/a/b/e"},
        {"op": "less", "path": "/a/c/d", "value": 5}]});
    let contains = json!({"op": "contains", "path": "/name", "value": "test"});
    let contains_ic = json!({"op": "contains", "path": "/name", "value": "TEST", "ignore_case": true});
    let defined = json!({"op": "defined", "path": "/name"});
    let ends = json!({"op": "ends", "path": "/name", "value": "test"});
    let ends_ic = json!({"op": "ends", "path": "/name", "value": "test", "ignore_case": true});
    let in_ = json!({"op": "in", "path": "/name", "value": ["test", 10]});
    let less = json!({"op": "less", "path": "/name", "value": 15});
    let matches = json!({"op": "matches", "path": "/name", "value": "[a-z]"});
    let matches_ic = json!({"op": "matches", "path": "/name", "value": "[a-z]", "ignore_case": true});
    let more = json!({"op": "more", "path": "/name", "value": 5});
    let starts = json!({"op": "starts", "path": "/name", "value": "test"});
    let starts_ic = json!({"op": "starts", "path": "/name", "value": "test", "ignore_case": true});
    let test = json!({"op": "test", "path": "/name", "value": "test"});
    let type_ = json!({"op": "type", "path": "/name", "value": "string"});
    let undefined = json!({"op": "undefined", "path": "/name"});
    vec![
        c("l7mp Contains: true", contains.clone(), json!({"name": "test"}), true),
        c("l7mp Contains: false", contains, json!({"name": "not"}), false),
        c("l7mp Contains-IgnoreCase: true", contains_ic.clone(), json!({"name": "test"}), true),
        c("l7mp Contains-IgnoreCase: false", contains_ic, json!({"name": "NOT"}), false),
        c("l7mp Defined: true (null value)", defined.clone(), json!({"name": null}), true),
        c("l7mp Defined: false", defined, json!({"names": null}), false),
        c("l7mp Ends: true", ends.clone(), json!({"name": "This is a test"}), true),
        c("l7mp Ends: false", ends, json!({"names": "test a is This"}), false),
        c("l7mp Ends-IgnoreCase: true", ends_ic.clone(), json!({"name": "This is a TEST"}), true),
        c("l7mp Ends-IgnoreCase: false", ends_ic, json!({"names": "TEST A IS THIS"}), false),
        c("l7mp In: true", in_.clone(), json!({"name": 10}), true),
        c("l7mp In: false", in_, json!({"names": 11}), false),
        c("l7mp Less: true", less.clone(), json!({"name": 10}), true),
        c("l7mp Less: false", less, json!({"names": 15}), false),
        c("l7mp Matches: true", matches.clone(), json!({"name": "test"}), true),
        c("l7mp Matches: false", matches, json!({"names": "TEST"}), false),
        c("l7mp Matches-IgnoreCase: true", matches_ic.clone(), json!({"name": "TEST"}), true),
        c("l7mp Matches-IgnoreCase: false", matches_ic, json!({"names": "test "}), false),
        c("l7mp More: true", more.clone(), json!({"name": 10}), true),
        c("l7mp More: false", more, json!({"names": 0}), false),
        c("l7mp Starts: true", starts.clone(), json!({"name": "test "}), true),
        c("l7mp Starts: false", starts, json!({"names": "This a test"}), false),
        c("l7mp Starts-IgnoreCase: true", starts_ic.clone(), json!({"name": "TEST is it"}), true),
        c("l7mp Starts-IgnoreCase: false", starts_ic, json!({"names": "THIS IS A TEST"}), false),
        c("l7mp Test: true", test.clone(), json!({"name": "test"}), true),
        c("l7mp Test: false", test, json!({"names": "This a test"}), false),
        c("l7mp Type: true", type_.clone(), json!({"name": "test"}), true),
        c("l7mp Type: false", type_, json!({"names": true}), false),
        c("l7mp Undefined: true", undefined.clone(), json!({"not_name": null}), true),
        c("l7mp Undefined: false (null value)", undefined, json!({"name": null}), false),
        c("l7mp And: true", and.clone(), abcd(10), true),
        c("l7mp And: false", and, abcd(15), false),
        c("l7mp Not: true", not.clone(), abcd(10), true),
        c("l7mp Not: false", not, abcd(4), false),
        c("l7mp Or: true", or.clone(), abcd(4), true),
        c("l7mp Or: false", or, abcd(5), false),
        c("l7mp Nested-Second-Order: true", nested.clone(), json!({"a": {"b": {"d": 10}}}), true),
        c("l7mp Nested-Second-Order: false", nested, json!({"a": {"b": {"c": "f"}}}), false),
    ]
}

#[rustfmt::skip]
fn our_cases() -> Vec<Case> {
    let esc = json!({"a/b": 1, "m~n": 2, "~1": 3, "a": {"b": 4}, "": {"": 5}});
    let http = json!({
        "HTTP": {"method": "GET", "url": {"path": "/api/v1/users", "query": "id=7"},
                 "headers": {"content-type": "application/json", "x-user": "Alice"}},
        "IP": {"src_addr": "10.0.0.1"}, "TCP": {"src_port": 40000},
        "labels": {"tags": ["blue", "green"]}
    });
    let uni = json!({"s": "ÄRGER", "k": "Straße"});
    vec![
        // --- JSON pointer escapes (RFC 6901; json-predicate did not decode them)
        c("escape: ~1 is /", json!({"op": "test", "path": "/a~1b", "value": 1}), esc.clone(), true),
        c("escape: ~0 is ~", json!({"op": "test", "path": "/m~0n", "value": 2}), esc.clone(), true),
        c("escape: ~01 is ~1, not /", json!({"op": "test", "path": "/~01", "value": 3}), esc.clone(), true),
        c("escape: unescaped / still splits", json!({"op": "test", "path": "/a/b", "value": 4}), esc.clone(), true),
        c("escape: empty token is the key \"\"", json!({"op": "test", "path": "//", "value": 5}), esc.clone(), true),
        c("escape: in a re-rooted sub-predicate", json!({"op": "and", "path": "/a~1b", "apply": [{"op": "type", "path": "", "value": "number"}]}), esc.clone(), true),
        c("escape: defined with ~0", json!({"op": "defined", "path": "/m~0n"}), esc.clone(), true),
        c("escape: ~1 is not a path separator", json!({"op": "undefined", "path": "/a~1b/c"}), esc, true),
        // --- paths
        // json-predicate drops the first segment of a path unconditionally, so "stringABC" would look at the whole
        // document; we read a path without the leading / as if it had one.
        c("path: without the leading slash", json!({"op": "test", "path": "stringABC", "value": "ABC"}), in0(), true),
        c("path: array index", json!({"op": "test", "path": "/arrayA/1", "value": "b"}), in0(), true),
        c("path: object inside an array", json!({"op": "test", "path": "/arrayB/1/foo", "value": "b"}), in0(), true),
        c("path: index past the end", json!({"op": "undefined", "path": "/arrayA/3"}), in0(), true),
        c("path: '-' is no index", json!({"op": "undefined", "path": "/arrayA/-"}), in0(), true),
        c("path: index into a string", json!({"op": "undefined", "path": "/stringABC/0"}), in0(), true),
        // json-predicate stops walking at a null and answers the null itself, so this was "defined" there.
        c("path: through a null", json!({"op": "defined", "path": "/null1/x"}), in0(), false),
        c("path: \"\" is the whole document", json!({"op": "type", "path": "", "value": "object"}), in0(), true),
        // RFC 6901 reads "/" as the member named ""; pointer.rs strips the leading / first, so "/" is the root too.
        c("path: \"/\" is the whole document too", json!({"op": "type", "path": "/", "value": "object"}), in0(), true),
        // --- re-rooting in second-order operators
        c(
            "reroot: and at /objA/objB",
            json!({"op": "and", "path": "/objA/objB", "apply": [
                {"op": "test", "path": "/num3", "value": 3},
                {"op": "starts", "path": "/stringMNO", "value": "MN"}]}),
            in0(),
            true,
        ),
        c(
            "reroot: nested roots add up",
            json!({"op": "and", "path": "/objA", "apply": [
                {"op": "or", "path": "/objB", "apply": [{"op": "test", "path": "/num3", "value": 3}]}]}),
            in0(),
            true,
        ),
        c(
            "reroot: nested roots add up (false)",
            json!({"op": "and", "path": "/objA", "apply": [
                {"op": "or", "path": "/objB", "apply": [{"op": "defined", "path": "/num2"}]}]}),
            in0(),
            false,
        ),
        c(
            "reroot: an inner predicate without path uses the outer root",
            json!({"op": "and", "path": "/objX", "apply": [
                {"op": "not", "apply": [{"op": "test", "path": "/num1", "value": 2}]}]}),
            in0(),
            true,
        ),
        c("reroot: not", json!({"op": "not", "path": "/objX", "apply": [{"op": "test", "path": "/num1", "value": 1}]}), in0(), false),
        c("reroot: into an array", json!({"op": "and", "path": "/arrayB", "apply": [{"op": "test", "path": "/1/foo", "value": "b"}]}), in0(), true),
        c("reroot: at a missing member, undefined holds", json!({"op": "and", "path": "/nope", "apply": [{"op": "undefined", "path": "/x"}]}), in0(), true),
        c("reroot: at a missing member, defined fails", json!({"op": "or", "path": "/nope", "apply": [{"op": "defined", "path": "/x"}]}), in0(), false),
        c(
            "reroot: does not leak to siblings",
            json!({"op": "and", "apply": [
                {"op": "or", "path": "/objX", "apply": [{"op": "defined", "path": "/objY"}]},
                {"op": "defined", "path": "/objA"}]}),
            in0(),
            true,
        ),
        // --- numbers: JSON has one number type; serde_json's 1 and 1.0 are equal here, as in JavaScript
        jp("number: 1.0 equals 1", "test", "/num1", json!(1.0), true),
        jp("number: 2.5 is not 2", "test", "/objA/num2", json!(2.5), false),
        jp("number: in with a float", "in", "/num1", json!([1.0]), true),
        jp("number: contained with a float", "contained", "/arrayN", json!(3.0), true),
        jp("number: intersects with a float", "intersects", "/arrayN", json!([3.0]), true),
        jp("number: deep equality with a float", "test", "/objX/objY", json!({"num2": 2.0}), true),
        jp("number: less with a fraction", "less", "/objA/objB/num3", json!(3.5), true),
        jp("number: more with a fraction", "more", "/objA/objB/num3", json!(2.99), true),
        jp("number: negative", "more", "/num1", json!(-1), true),
        c("number: a numeric string is no number", json!({"op": "less", "path": "/s", "value": 10}), json!({"s": "5"}), false),
        c("number: -0 equals 0", json!({"op": "test", "path": "/z", "value": -0.0}), json!({"z": 0}), true),
        // --- test on other JSON values
        jp("test: null", "test", "/null1", Value::Null, true),
        jp("test: null is not missing", "test", "/not_a_key", Value::Null, false),
        jp("test: boolean", "test", "/objA/boolT", json!(true), true),
        jp("test: boolean mismatch", "test", "/objA/boolF", json!(true), false),
        jp("test: objects compare regardless of key order", "test", "/objX", json!({"objY": {"num2": 2}, "stringAbc": "Abc", "num1": 1}), true),
        jp("in: null among the values", "in", "/null1", json!(["x", null]), true),
        jp("in: empty array", "in", "/num1", json!([]), false),
        jp("intersects: empty array", "intersects", "/arrayA", json!([]), false),
        // --- ignore_case beyond ASCII
        c("ignore_case: test, non-ASCII", json!({"op": "test", "path": "/s", "value": "ärger", "ignore_case": true}), uni.clone(), true),
        c("ignore_case: starts, non-ASCII", json!({"op": "starts", "path": "/s", "value": "är", "ignore_case": true}), uni.clone(), true),
        // Lower-casing as JavaScript's toLowerCase does, not Unicode case folding: ß is not ss.
        c("ignore_case: no case folding", json!({"op": "ends", "path": "/k", "value": "SSE", "ignore_case": true}), uni.clone(), false),
        c("ignore_case: ends, mixed", json!({"op": "ends", "path": "/s", "value": "GER", "ignore_case": true}), uni.clone(), true),
        c("ignore_case: contains, non-ASCII", json!({"op": "contains", "path": "/s", "value": "rg", "ignore_case": true}), uni.clone(), true),
        c("ignore_case: without it, case matters", json!({"op": "test", "path": "/s", "value": "ärger"}), uni, false),
        jp_ic("ignore_case: starts longer than the value", "starts", "/stringA", json!("ab"), false),
        jp_ic("ignore_case: ends longer than the value", "ends", "/stringA", json!("ba"), false),
        jp_ic("ignore_case: in", "in", "/objA/stringXyZ_789", json!(["xyz_789"]), true),
        jp_ic("ignore_case: has no effect on numbers", "test", "/num1", json!(1), true),
        // --- where json-predicate's string tests were wrong
        // json-predicate's `ends` compared indexOf (the FIRST occurrence) with length - value.length.
        c("ends: repeated suffix", json!({"op": "ends", "path": "/s", "value": "ab"}), json!({"s": "abab"}), true),
        // ... and so answered true when the value was one character longer than the string.
        c("ends: value longer than the string", json!({"op": "ends", "path": "/s", "value": "abc"}), json!({"s": "ab"}), false),
        c("ends: empty value", json!({"op": "ends", "path": "/s", "value": ""}), json!({"s": "ab"}), true),
        c("starts: empty value", json!({"op": "starts", "path": "/s", "value": ""}), json!({"s": "ab"}), true),
        c("contains: empty value", json!({"op": "contains", "path": "/s", "value": ""}), json!({"s": "ab"}), true),
        // json-predicate used Array.indexOf for starts on an array; starts is about strings.
        jp("starts: not on arrays", "starts", "/arrayA", json!("a"), false),
        jp("ends: not on numbers", "ends", "/num1", json!("1"), false),
        // --- contains on arrays: deep equality (json-predicate's indexOf never found an object)
        jp("contains: array element", "contains", "/arrayA", json!("b"), true),
        jp("contains: array object element", "contains", "/arrayB", json!({"foo": "b"}), true),
        jp("contains: array missing element", "contains", "/arrayA", json!("d"), false),
        jp_ic("contains: array element, ignore_case", "contains", "/arrayA", json!("B"), true),
        // json-predicate threw a TypeError here (a number has no indexOf).
        jp("contains: on a number", "contains", "/num1", json!(1), false),
        // json-predicate's String.indexOf converted the number to "123" and found it.
        jp("contains: non-string value on a string", "contains", "/stringAbC_123", json!(123), false),
        jp("contained: an array value is one element", "contained", "/arrayA", json!(["a"]), false),
        c("contained: an array element that is an array", json!({"op": "contained", "path": "/t", "value": ["a"]}), json!({"t": [["a"], "b"]}), true),
        // --- type: JSON types, not JavaScript's typeof (where null and arrays are "object")
        ty("type: null is not object", "/null1", "object", false),
        ty("type: array is not object", "/arrayA", "object", false),
        ty("type: number is not array", "/num1", "array", false),
        ty("type: null is defined", "/null1", "undefined", false),
        ty("type: string is not null", "/stringA", "null", false),
        // RFC 3339 full-time needs an offset (json-predicate agreed; this agent once accepted a bare time).
        c("type: time without offset", json!({"op": "type", "path": "/t", "value": "time"}), json!({"t": "10:10:10"}), false),
        c("type: time with a fraction", json!({"op": "type", "path": "/t", "value": "time"}), json!({"t": "10:10:10.123456z"}), true),
        c("type: date-time in lower case", json!({"op": "type", "path": "/t", "value": "date-time"}), json!({"t": "2010-10-10t10:10:10z"}), true),
        c("type: date-time without offset", json!({"op": "type", "path": "/t", "value": "date-time"}), json!({"t": "2010-10-10T10:10:10"}), false),
        c("type: date with time is no date", json!({"op": "type", "path": "/t", "value": "date"}), json!({"t": "2010-10-10T10:10:10Z"}), false),
        c("type: lang, primary tag only", json!({"op": "type", "path": "/t", "value": "lang"}), json!({"t": "de"}), true),
        c("type: lang, digits", json!({"op": "type", "path": "/t", "value": "lang"}), json!({"t": "123"}), false),
        c("type: lang-range, junk", json!({"op": "type", "path": "/t", "value": "lang-range"}), json!({"t": "en_US"}), false),
        c("type: iri, relative reference", json!({"op": "type", "path": "/t", "value": "iri"}), json!({"t": "/a/b?c"}), true),
        c("type: iri, white space", json!({"op": "type", "path": "/t", "value": "iri"}), json!({"t": "a b"}), false),
        c("type: absolute-iri, relative", json!({"op": "type", "path": "/t", "value": "absolute-iri"}), json!({"t": "/a/b"}), false),
        c("type: absolute-iri, urn", json!({"op": "type", "path": "/t", "value": "absolute-iri"}), json!({"t": "urn:isbn:0451450523"}), true),
        // --- matches: Rust regular expressions, unanchored like RegExp.test
        jp("matches: unanchored", "matches", "/stringABC", json!("B"), true),
        jp("matches: anchored", "matches", "/stringABC", json!("^B"), false),
        jp("matches: the whole string", "matches", "/stringAbC_123", json!("^[A-Za-z]+_\\d+$"), true),
        // --- session metadata as listeners emit it
        c("meta: starts on the URL path", json!({"op": "starts", "path": "/HTTP/url/path", "value": "/api/"}), http.clone(), true),
        c("meta: test on a header", json!({"op": "test", "path": "/HTTP/headers/content-type", "value": "application/json"}), http.clone(), true),
        c("meta: header value, ignore_case", json!({"op": "test", "path": "/HTTP/headers/x-user", "value": "alice", "ignore_case": true}), http.clone(), true),
        c("meta: in on the method", json!({"op": "in", "path": "/HTTP/method", "value": ["PUT", "POST"]}), http.clone(), false),
        c(
            "meta: port range",
            json!({"op": "and", "path": "/TCP", "apply": [
            {"op": "more", "path": "/src_port", "value": 32767},
            {"op": "less", "path": "/src_port", "value": 65536}]}),
            http.clone(),
            true,
        ),
        c("meta: matches a query", json!({"op": "matches", "path": "/HTTP/url/query", "value": "(^|&)id=\\d+"}), http.clone(), true),
        c("meta: labels intersect", json!({"op": "intersects", "path": "/labels/tags", "value": ["red", "green"]}), http.clone(), true),
        c("meta: label contained", json!({"op": "contained", "path": "/labels/tags", "value": "blue"}), http.clone(), true),
        c("meta: no WebSocket header", json!({"op": "undefined", "path": "/HTTP/headers/upgrade"}), http, true),
    ]
}

fn all_cases() -> Vec<Case> {
    let mut v = json_predicate_cases();
    v.extend(l7mp_rule_cases());
    v.extend(our_cases());
    v
}

#[test]
fn every_case_evaluates_as_expected() {
    let cases = all_cases();
    let mut names = HashSet::new();
    let mut failures = Vec::new();
    for case in &cases {
        assert!(names.insert(case.name), "duplicate case name {:?}", case.name);
        match compile(&case.pred) {
            Ok(p) if p.eval(&case.doc) == case.want => {}
            Ok(_) => failures.push(format!("{}: expected {} for {}", case.name, case.want, case.pred)),
            Err(e) => failures.push(format!("{}: does not compile: {e:?}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Predicates json-predicate evaluated (to false, or true for an empty and/or/not) that we reject at load, with the
/// field the first error must name and a piece of its reason.
#[rustfmt::skip]
const REJECTED: &[(&str, &str, &str, &str)] = &[
    // (name, predicate, field, reason)
    ("jp: invalid predicate", r#"{"foo": "bar"}"#, "match.foo", "unknown field"),
    ("jp: invalid predicate has no op", r#"{"foo": "bar"}"#, "match.op", "missing required field"),
    ("jp: empty predicate", r#"{}"#, "match.op", "missing required field"),
    ("jp: unknown operation", r#"{"op": "not_an_op", "path": "/num1", "value": 1}"#, "match.op", "unknown operator \"not_an_op\""),
    ("jp matches: invalid regex", r#"{"op": "matches", "path": "/stringABC", "value": "\\"}"#, "match.value", "invalid regular expression"),
    ("jp matches: number value", r#"{"op": "matches", "path": "/stringABC", "value": 1}"#, "match.value", "expected a string, got 1"),
    ("jp matches: object value", r#"{"op": "matches", "path": "/stringABC", "value": {"a": 1}}"#, "match.value", "expected a string, got an object"),
    ("jp matches: array value", r#"{"op": "matches", "path": "/stringABC", "value": ["a", "b", "c"]}"#, "match.value", "expected a string, got an array"),
    ("jp in: value is not an array", r#"{"op": "in", "path": "/stringA", "value": "ABC"}"#, "match.value", "expected an array, got \"ABC\""),
    ("jp less: string value", r#"{"op": "less", "path": "/stringABC", "value": "XYZ"}"#, "match.value", "expected a number, got \"XYZ\""),
    ("jp less: string value, reversed", r#"{"op": "less", "path": "/objA/stringXYZ", "value": "ABC"}"#, "match.value", "expected a number"),
    ("jp less: array value", r#"{"op": "less", "path": "/objA/stringXYZ", "value": ["a", "b"]}"#, "match.value", "expected a number, got an array"),
    ("jp less: object value", r#"{"op": "less", "path": "/objA/stringXYZ", "value": {"a": "foo", "b": "bar"}}"#, "match.value", "expected a number, got an object"),
    ("jp more: string value", r#"{"op": "more", "path": "/stringABC", "value": "XYZ"}"#, "match.value", "expected a number, got \"XYZ\""),
    ("jp more: string value, reversed", r#"{"op": "more", "path": "/objA/stringXYZ", "value": "ABC"}"#, "match.value", "expected a number"),
    ("jp more: array value", r#"{"op": "more", "path": "/objA/stringXYZ", "value": ["a", "b"]}"#, "match.value", "expected a number, got an array"),
    ("jp more: object value", r#"{"op": "more", "path": "/objA/stringXYZ", "value": {"a": "foo", "b": "bar"}}"#, "match.value", "expected a number, got an object"),
    ("jp type: unknown type name", r#"{"op": "type", "path": "/objZZZ/objZZZZZZZZ", "value": "does not matter"}"#, "match.value", "unknown type \"does not matter\""),
    ("jp type: unknown type name (ignore_case)", r#"{"op": "type", "path": "/objZZZ", "value": "does not matter", "ignore_case": true}"#, "match.value", "unknown type"),
    ("jp and: empty apply", r#"{"op": "and", "path": "/objA", "apply": []}"#, "match.apply", "needs at least one predicate"),
    ("jp or: empty apply", r#"{"op": "or", "path": "/objA", "apply": []}"#, "match.apply", "needs at least one predicate"),
    ("jp not: empty apply", r#"{"op": "not", "path": "/objA", "apply": []}"#, "match.apply", "needs at least one predicate"),
    // --- more malformed predicates
    ("not an object", r#"5"#, "match", "expected an object, got 5"),
    ("an array", r#"[{"op": "defined", "path": "/a"}]"#, "match", "expected an object, got an array"),
    ("op is not a string", r#"{"op": 1, "path": "/a"}"#, "match.op", "expected a string, got 1"),
    ("op in the wrong case", r#"{"op": "TEST", "path": "/a", "value": 1}"#, "match.op", "unknown operator \"TEST\""),
    ("missing path: test", r#"{"op": "test", "value": 1}"#, "match.path", "missing required field (operator \"test\" needs a path)"),
    ("missing path: defined", r#"{"op": "defined"}"#, "match.path", "needs a path"),
    ("missing path: undefined", r#"{"op": "undefined"}"#, "match.path", "needs a path"),
    ("null path", r#"{"op": "starts", "path": null, "value": "a"}"#, "match.path", "needs a path"),
    ("path is not a string", r#"{"op": "defined", "path": ["a"]}"#, "match.path", "expected a string, got an array"),
    ("bad escape in path", r#"{"op": "defined", "path": "/a~2b"}"#, "match.path", "invalid escape"),
    ("dangling ~ in path", r#"{"op": "defined", "path": "/a~"}"#, "match.path", "invalid escape"),
    ("bad escape in a re-rooting path", r#"{"op": "and", "path": "/~", "apply": [{"op": "defined", "path": "/a"}]}"#, "match.path", "invalid escape"),
    ("missing value: test", r#"{"op": "test", "path": "/a"}"#, "match.value", "missing required field (operator \"test\" needs a value)"),
    ("missing value: contains", r#"{"op": "contains", "path": "/a"}"#, "match.value", "needs a value"),
    ("missing value: starts", r#"{"op": "starts", "path": "/a"}"#, "match.value", "needs a value"),
    ("missing value: ends", r#"{"op": "ends", "path": "/a"}"#, "match.value", "needs a value"),
    ("missing value: less", r#"{"op": "less", "path": "/a"}"#, "match.value", "needs a value"),
    ("missing value: more", r#"{"op": "more", "path": "/a"}"#, "match.value", "needs a value"),
    ("missing value: in", r#"{"op": "in", "path": "/a"}"#, "match.value", "needs a value"),
    ("missing value: matches", r#"{"op": "matches", "path": "/a"}"#, "match.value", "needs a value"),
    ("missing value: type", r#"{"op": "type", "path": "/a"}"#, "match.value", "needs a value"),
    ("missing value: contained", r#"{"op": "contained", "path": "/a"}"#, "match.value", "needs a value"),
    ("missing value: intersects", r#"{"op": "intersects", "path": "/a"}"#, "match.value", "needs a value"),
    ("starts: number value", r#"{"op": "starts", "path": "/a", "value": 1}"#, "match.value", "expected a string, got 1"),
    ("ends: array value", r#"{"op": "ends", "path": "/a", "value": ["x"]}"#, "match.value", "expected a string, got an array"),
    ("type: number value", r#"{"op": "type", "path": "/a", "value": 3}"#, "match.value", "expected a string, got 3"),
    ("type: JavaScript-only type", r#"{"op": "type", "path": "/a", "value": "function"}"#, "match.value", "unknown type \"function\""),
    ("less: null value", r#"{"op": "less", "path": "/a", "value": null}"#, "match.value", "expected a number, got null"),
    ("more: numeric string", r#"{"op": "more", "path": "/a", "value": "5"}"#, "match.value", "expected a number, got \"5\""),
    ("intersects: value is not an array", r#"{"op": "intersects", "path": "/a", "value": "x"}"#, "match.value", "expected an array, got \"x\""),
    ("matches: unbalanced group", r#"{"op": "matches", "path": "/a", "value": "("}"#, "match.value", "invalid regular expression \"(\""),
    ("matches: look-ahead (JavaScript only)", r#"{"op": "matches", "path": "/a", "value": "a(?=b)"}"#, "match.value", "invalid regular expression"),
    ("ignore_case is not a boolean", r#"{"op": "test", "path": "/a", "value": 1, "ignore_case": "yes"}"#, "match.ignore_case", "expected true or false, got \"yes\""),
    ("unknown field", r#"{"op": "test", "path": "/a", "value": 1, "ignorecase": true}"#, "match.ignorecase", "unknown field"),
    ("apply on a first-order op", r#"{"op": "test", "path": "/a", "value": 1, "apply": [{"op": "defined", "path": "/b"}]}"#, "match.apply", "takes no apply"),
    ("value on a second-order op", r#"{"op": "and", "value": 1, "apply": [{"op": "defined", "path": "/b"}]}"#, "match.value", "takes no value"),
    ("and: missing apply", r#"{"op": "and"}"#, "match.apply", "missing required field (operator \"and\" needs an array of predicates)"),
    ("or: missing apply", r#"{"op": "or", "path": "/a"}"#, "match.apply", "needs an array of predicates"),
    ("not: missing apply", r#"{"op": "not"}"#, "match.apply", "needs an array of predicates"),
    ("and: apply is an object", r#"{"op": "and", "apply": {"op": "defined", "path": "/a"}}"#, "match.apply", "expected an array, got an object"),
    ("or: apply element is a string", r#"{"op": "or", "apply": ["*"]}"#, "match.apply[0]", "expected an object, got \"*\""),
    ("and: bad sub-predicate", r#"{"op": "and", "apply": [{"op": "defined", "path": "/a"}, {"op": "bad"}]}"#, "match.apply[1].op", "unknown operator \"bad\""),
    ("nested: bad value two levels down", r#"{"op": "or", "apply": [{"op": "not", "apply": [{"op": "less", "path": "/a", "value": "x"}]}]}"#, "match.apply[0].apply[0].value", "expected a number"),
    ("nested: empty inner and", r#"{"op": "or", "apply": [{"op": "defined", "path": "/a"}, {"op": "and", "apply": []}]}"#, "match.apply[1].apply", "needs at least one predicate"),
];

#[test]
fn malformed_predicates_are_rejected_naming_the_field() {
    let mut failures = Vec::new();
    for (name, pred, field, reason) in REJECTED {
        let v: Value = serde_json::from_str(pred).unwrap();
        let want = format!("{field}: ");
        match compile(&v) {
            Ok(_) => failures.push(format!("{name}: compiled")),
            Err(errs) if errs.iter().any(|e| e.starts_with(&want) && e.contains(reason)) => {}
            Err(errs) => failures.push(format!("{name}: no error at {field} saying {reason:?}: {errs:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_bad_predicate_rejects_the_configuration_with_its_full_path() {
    let yaml = r#"
clusters: [{name: echo, spec: {protocol: Echo}}]
rulelists:
  - name: main
    rules:
      - match: {op: starts, path: /HTTP/url/path, value: /api}
        action: {route: {destination: echo}}
      - match: {op: and, apply: [{op: test, path: /a, value: 1}, {op: less, path: /b, value: ten}]}
        action: {route: {destination: echo}}
rules:
  - name: r
    match: {op: matches, path: /a, value: "[", ignore_case: true}
    action: {route: {destination: echo}}
"#;
    let err = parse_config(yaml, Format::Yaml).unwrap_err();
    let msgs: Vec<String> = err.field_errors().iter().map(ToString::to_string).collect();
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("rulelists[0].rules[1].match.apply[1].value: expected a number, got \"ten\"")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("rules[0].match.value: invalid regular expression \"[\"")),
        "{msgs:?}"
    );
}

#[test]
fn a_string_match_is_a_wildcard() {
    let yaml = r#"
clusters: [{name: echo, spec: {protocol: Echo}}]
rules: [{name: r, match: "*", action: {route: {destination: echo}}}]
"#;
    let cfg = parse_config(yaml, Format::Yaml).unwrap();
    assert!(cfg.rule("r").unwrap().matcher.is_none());
}

#[test]
fn the_suite_is_at_least_as_large_as_the_originals() {
    // json-predicate's test.js has 145 `it`s; l7mp's 13-rule.test.js 237 (of which 38 evaluate a predicate).
    let n = all_cases().len() + REJECTED.len();
    assert!(n >= 240, "only {n} cases");
}

//! Rule lookup: walk a listener's RuleList, apply the first matching rule's rewrites to the session metadata and
//! return its route, following `apply` jumps into other RuleLists.

use crate::snapshot::{RouteRt, Snapshot};
use serde_json::Value;
use std::sync::Arc;

/// How deep `apply` jumps may nest before the lookup gives up (a loop in the configuration).
pub const MAX_APPLY_DEPTH: usize = 16;

/// Why a session could not be routed. Names arise here when the configuration changed under a session, since a
/// static configuration with dangling names is rejected at load.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("no rule in rulelist {0:?} matches the session")]
    NoMatch(String),
    #[error("rulelist {0:?} is not defined")]
    UnknownRuleList(String),
    #[error("rule {0:?} is not defined")]
    UnknownRule(String),
    #[error("route {0:?} is not defined")]
    UnknownRoute(String),
    #[error("rule {0:?} has neither route nor apply")]
    NoAction(String),
    #[error("apply jumps nest deeper than {MAX_APPLY_DEPTH} starting at rulelist {0:?} (a loop?)")]
    TooDeep(String),
}

/// Finds the route for a session whose listener uses `rulelist`, rewriting `metadata` on the way.
pub fn lookup(snap: &Snapshot, rulelist: &str, metadata: &mut Value) -> Result<Arc<RouteRt>, RouteError> {
    let mut list_name = rulelist;
    for _ in 0..MAX_APPLY_DEPTH {
        let list = snap
            .rulelists
            .get(list_name)
            .ok_or_else(|| RouteError::UnknownRuleList(list_name.to_owned()))?;
        let mut matched = None;
        for rule_name in &list.rules {
            let rule = snap
                .rules
                .get(rule_name)
                .ok_or_else(|| RouteError::UnknownRule(rule_name.clone()))?;
            if rule.matcher.as_ref().is_none_or(|p| p.eval(metadata)) {
                matched = Some(rule);
                break;
            }
        }
        let rule = matched.ok_or_else(|| RouteError::NoMatch(list_name.to_owned()))?;
        if let Some(next) = &rule.action.apply {
            list_name = next;
            continue;
        }
        for rw in &rule.action.rewrite {
            rw.path.set(metadata, rw.value.clone());
        }
        let route = rule
            .action
            .route
            .as_ref()
            .ok_or_else(|| RouteError::NoAction(rule.name.clone()))?;
        return snap
            .routes
            .get(route)
            .cloned()
            .ok_or_else(|| RouteError::UnknownRoute(route.clone()));
    }
    Err(RouteError::TooDeep(rulelist.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use l7mp_api::{Format, parse_config};
    use serde_json::json;

    fn snap(yaml: &str) -> Snapshot {
        Snapshot::build(parse_config(yaml, Format::Yaml).expect("valid")).expect("builds")
    }

    const CFG: &str = r#"
clusters: [{name: echo, spec: {protocol: Echo}}, {name: discard, spec: {protocol: Discard}}]
rulelists:
  - name: main
    rules:
      - match: {op: starts, path: /labels/user, value: admin}
        action: {route: {name: to-echo, destination: echo}}
      - match: {op: test, path: /IP/src_addr, value: 10.0.0.1}
        action: {apply: tagging}
  - name: tagging
    rules:
      - action:
          rewrite: [{path: labels/tagged, value: true}]
          route: {name: to-discard, destination: discard}
  - name: loop
    rules: [{name: jump, action: {apply: loop}}]
"#;

    #[test]
    fn first_match_wins_and_apply_jumps_with_rewrites() {
        let s = snap(CFG);
        let mut m = json!({"labels": {"user": "admin-1"}});
        assert_eq!(lookup(&s, "main", &mut m).expect("route").cfg.name, "to-echo");
        let mut m = json!({"IP": {"src_addr": "10.0.0.1"}});
        assert_eq!(lookup(&s, "main", &mut m).expect("route").cfg.name, "to-discard");
        assert_eq!(m["labels"]["tagged"], json!(true));
        let mut m = json!({"IP": {"src_addr": "10.0.0.2"}});
        assert_eq!(
            lookup(&s, "main", &mut m).err(),
            Some(RouteError::NoMatch("main".into()))
        );
        assert_eq!(
            lookup(&s, "loop", &mut json!({})).err(),
            Some(RouteError::TooDeep("loop".into()))
        );
    }
}

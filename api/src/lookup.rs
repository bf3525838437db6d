//! Rule lookup: walk a RuleList, apply the first matching rule's rewrites to the session metadata and name its
//! route, following `apply` jumps into other RuleLists.
//!
//! This is the pure part of routing a session; where the rulelists and rules live (a [`Config`], the agent's
//! name maps) is behind the [`Rules`] trait, and turning the route name into a route is the caller's.

use crate::model::{Config, Rule, RuleList};
use serde_json::Value;

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

/// Rulelists and rules by name.
pub trait Rules {
    fn rulelist(&self, name: &str) -> Option<&RuleList>;
    fn rule(&self, name: &str) -> Option<&Rule>;
}

impl Rules for Config {
    fn rulelist(&self, name: &str) -> Option<&RuleList> {
        Config::rulelist(self, name)
    }
    fn rule(&self, name: &str) -> Option<&Rule> {
        Config::rule(self, name)
    }
}

/// Finds the route for a session whose listener uses `rulelist`: the first matching rule wins, an `apply` continues
/// in another RuleList (its rule's rewrite and route are ignored, as in the original), and the final rule's
/// rewrites are applied to `metadata` in order. Returns the route's name.
pub fn lookup<'a, R: Rules + ?Sized>(
    rules: &'a R,
    rulelist: &str,
    metadata: &mut Value,
) -> Result<&'a str, RouteError> {
    let mut list_name = rulelist;
    for _ in 0..MAX_APPLY_DEPTH {
        let list = rules
            .rulelist(list_name)
            .ok_or_else(|| RouteError::UnknownRuleList(list_name.to_owned()))?;
        let mut matched = None;
        for rule_name in &list.rules {
            let rule = rules
                .rule(rule_name)
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
        return rule
            .action
            .route
            .as_deref()
            .ok_or_else(|| RouteError::NoAction(rule.name.clone()));
    }
    Err(RouteError::TooDeep(rulelist.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, parse_config};
    use serde_json::json;

    const CFG: &str = r#"
clusters: [{name: echo, spec: {protocol: Echo}}, {name: discard, spec: {protocol: Discard}}]
rulelists:
  - name: main
    rules:
      - match: {op: starts, path: /labels/user, value: admin}
        action: {route: {name: to-echo, destination: echo}}
      - match: {op: test, path: /IP/src_addr, value: 10.0.0.1}
        action: {apply: tagging, rewrite: [{path: /labels/ignored, value: 1}]}
  - name: tagging
    rules:
      - action:
          rewrite: [{path: labels/tagged, value: true}, {path: /labels/tagged, value: 2}]
          route: {name: to-discard, destination: discard}
"#;

    #[test]
    fn first_match_wins_apply_jumps_and_rewrites_apply_in_order() {
        let c = parse_config(CFG, Format::Yaml).expect("valid");
        let mut m = json!({"labels": {"user": "admin-1"}, "IP": {"src_addr": "10.0.0.1"}});
        assert_eq!(lookup(&c, "main", &mut m), Ok("to-echo"));
        let mut m = json!({"IP": {"src_addr": "10.0.0.1"}});
        assert_eq!(lookup(&c, "main", &mut m), Ok("to-discard"));
        assert_eq!(
            m["labels"],
            json!({"tagged": 2}),
            "the jumping rule's rewrite is ignored"
        );
        let mut m = json!({"IP": {"src_addr": "10.0.0.2"}});
        assert_eq!(lookup(&c, "main", &mut m), Err(RouteError::NoMatch("main".into())));
        assert_eq!(
            lookup(&c, "nope", &mut json!({})),
            Err(RouteError::UnknownRuleList("nope".into()))
        );
    }

    #[test]
    fn the_depth_limit_stays_as_a_safety_net() {
        // Load rejects apply loops, so build one by hand.
        let mut c = parse_config(CFG, Format::Yaml).expect("valid");
        c.rules.push(Rule {
            name: "jump".into(),
            matcher: None,
            match_source: None,
            action: crate::Action {
                apply: Some("loop".into()),
                ..Default::default()
            },
        });
        c.rulelists.push(RuleList {
            name: "loop".into(),
            rules: vec!["jump".into()],
        });
        assert_eq!(
            lookup(&c, "loop", &mut json!({})),
            Err(RouteError::TooDeep("loop".into()))
        );
    }
}

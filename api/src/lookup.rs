//! Rule lookup: walk a RuleList, apply the first matching rule's rewrites to the session metadata and name its
//! route, following `apply` jumps into other RuleLists.
//!
//! This is the pure part of routing a session; turning the route name into a route is the caller's. Two ways in:
//!
//! - [`RuleTable`]: the RuleLists with their rules resolved once (rules as `Arc<Rule>` in order, `apply` targets as
//!   the index of the target list), so a lookup hashes no name except the starting RuleList's. The agent's snapshot
//!   holds one; this is the path that routes sessions.
//! - [`lookup`] over the [`Rules`] trait: resolves every rule and rulelist name as it goes (e.g. over a [`Config`]).
//!   Same semantics, slower; kept as the reference and for callers without a table.
//!
//! A static configuration whose `apply` jumps form a loop is rejected at load; the depth limit
//! [`MAX_APPLY_DEPTH`] stays as a safety net for tables built from configurations that were not loaded.

use crate::model::{Config, Rule, RuleList};
use serde_json::Value;
use std::collections::HashMap;
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
    /// A rule with `deny` matched: the session is refused on purpose.
    #[error("denied by rule {rule:?}: {reason}")]
    Denied { rule: String, reason: String },
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
        if let Some(reason) = &rule.action.deny {
            return Err(RouteError::Denied {
                rule: rule.name.clone(),
                reason: reason.clone(),
            });
        }
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

/// One rule of a [`ResolvedList`]: the rule, and where its `apply` jumps to.
#[derive(Debug, Clone)]
pub struct ResolvedRule {
    pub rule: Arc<Rule>,
    /// The index in the [`RuleTable`] of the RuleList this rule's `apply` continues in.
    pub apply: Option<usize>,
    /// The index in the configuration's `routes` of this rule's route.
    pub route: Option<usize>,
}

/// A RuleList with its rules resolved, in order.
#[derive(Debug, Clone)]
pub struct ResolvedList {
    pub name: String,
    pub rules: Vec<ResolvedRule>,
}

/// Every RuleList of a configuration with its rule and `apply` names resolved: what a session's lookup walks.
#[derive(Debug, Clone, Default)]
pub struct RuleTable {
    lists: Vec<ResolvedList>,
    by_name: HashMap<String, usize>,
}

impl RuleTable {
    /// Resolves every name of `cfg`'s rulelists (rules, `apply` targets, and routes as indices into `cfg.routes`). A name that does not resolve is an error (a loaded configuration
    /// has none).
    pub fn new(cfg: &Config) -> Result<RuleTable, RouteError> {
        let by_name: HashMap<String, usize> = cfg
            .rulelists
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.clone(), i))
            .collect();
        let rules: HashMap<&str, Arc<Rule>> = cfg
            .rules
            .iter()
            .map(|r| (r.name.as_str(), Arc::new(r.clone())))
            .collect();
        let routes: HashMap<&str, usize> = cfg
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str(), i))
            .collect();
        let mut lists = Vec::with_capacity(cfg.rulelists.len());
        for l in &cfg.rulelists {
            let mut resolved = Vec::with_capacity(l.rules.len());
            for name in &l.rules {
                let rule = rules
                    .get(name.as_str())
                    .cloned()
                    .ok_or_else(|| RouteError::UnknownRule(name.clone()))?;
                let apply = match &rule.action.apply {
                    Some(target) => Some(
                        *by_name
                            .get(target)
                            .ok_or_else(|| RouteError::UnknownRuleList(target.clone()))?,
                    ),
                    None => None,
                };
                let route = match &rule.action.route {
                    Some(r) => Some(
                        *routes
                            .get(r.as_str())
                            .ok_or_else(|| RouteError::UnknownRoute(r.clone()))?,
                    ),
                    None => None,
                };
                resolved.push(ResolvedRule { rule, apply, route });
            }
            lists.push(ResolvedList {
                name: l.name.clone(),
                rules: resolved,
            });
        }
        Ok(RuleTable { lists, by_name })
    }

    /// The index of a RuleList, to start lookups at without hashing its name each time.
    pub fn index(&self, rulelist: &str) -> Option<usize> {
        self.by_name.get(rulelist).copied()
    }

    /// A RuleList by index.
    pub fn list(&self, index: usize) -> Option<&ResolvedList> {
        self.lists.get(index)
    }

    /// [`lookup`] through the resolved table: the same semantics, one name lookup (the starting RuleList's).
    pub fn lookup(&self, rulelist: &str, metadata: &mut Value) -> Result<&str, RouteError> {
        let r = self.lookup_rule(rulelist, metadata)?;
        // lookup_rule returns only rules with a route.
        Ok(r.rule.action.route.as_deref().unwrap_or_default())
    }

    /// Like [`RuleTable::lookup`], but returns the chosen rule, whose `route` is the index of its route in the
    /// configuration's `routes` (so the caller needs no name lookup either). The rule has a route.
    pub fn lookup_rule(&self, rulelist: &str, metadata: &mut Value) -> Result<&ResolvedRule, RouteError> {
        let start = self
            .index(rulelist)
            .ok_or_else(|| RouteError::UnknownRuleList(rulelist.to_owned()))?;
        self.lookup_at(start, metadata)
    }

    /// [`RuleTable::lookup_rule`] starting at the RuleList with index `start`.
    pub fn lookup_at(&self, start: usize, metadata: &mut Value) -> Result<&ResolvedRule, RouteError> {
        let mut at = start;
        for _ in 0..MAX_APPLY_DEPTH {
            let list = self
                .lists
                .get(at)
                .ok_or_else(|| RouteError::UnknownRuleList(format!("#{at}")))?;
            let r = list
                .rules
                .iter()
                .find(|r| r.rule.matcher.as_ref().is_none_or(|p| p.eval(metadata)))
                .ok_or_else(|| RouteError::NoMatch(list.name.clone()))?;
            if let Some(reason) = &r.rule.action.deny {
                return Err(RouteError::Denied {
                    rule: r.rule.name.clone(),
                    reason: reason.clone(),
                });
            }
            if let Some(next) = r.apply {
                at = next;
                continue;
            }
            for rw in &r.rule.action.rewrite {
                rw.path.set(metadata, rw.value.clone());
            }
            return match r.rule.action.route {
                Some(_) => Ok(r),
                None => Err(RouteError::NoAction(r.rule.name.clone())),
            };
        }
        let name = self.lists.get(start).map_or("", |l| l.name.as_str());
        Err(RouteError::TooDeep(name.to_owned()))
    }
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

    /// A configuration with an `apply` loop, which load rejects: built by hand, to reach the depth limit.
    fn with_loop() -> Config {
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
        c
    }

    #[test]
    fn first_match_wins_apply_jumps_and_rewrites_apply_in_order() {
        let c = parse_config(CFG, Format::Yaml).expect("valid");
        let t = RuleTable::new(&c).expect("resolves");
        let mut m = json!({"labels": {"user": "admin-1"}, "IP": {"src_addr": "10.0.0.1"}});
        assert_eq!(lookup(&c, "main", &mut m), Ok("to-echo"));
        assert_eq!(t.lookup("main", &mut m), Ok("to-echo"));
        for by_table in [false, true] {
            let mut m = json!({"IP": {"src_addr": "10.0.0.1"}});
            let got = if by_table {
                t.lookup("main", &mut m)
            } else {
                lookup(&c, "main", &mut m)
            };
            assert_eq!(got, Ok("to-discard"));
            assert_eq!(
                m["labels"],
                json!({"tagged": 2}),
                "the jumping rule's rewrite is ignored"
            );
        }
        let mut m = json!({"IP": {"src_addr": "10.0.0.2"}});
        assert_eq!(lookup(&c, "main", &mut m), Err(RouteError::NoMatch("main".into())));
        assert_eq!(t.lookup("main", &mut m), Err(RouteError::NoMatch("main".into())));
        assert_eq!(
            lookup(&c, "nope", &mut json!({})),
            Err(RouteError::UnknownRuleList("nope".into()))
        );
        assert_eq!(
            t.lookup("nope", &mut json!({})),
            Err(RouteError::UnknownRuleList("nope".into()))
        );
    }

    #[test]
    fn the_depth_limit_stays_as_a_safety_net() {
        let c = with_loop();
        assert_eq!(
            lookup(&c, "loop", &mut json!({})),
            Err(RouteError::TooDeep("loop".into()))
        );
        let t = RuleTable::new(&c).expect("resolves");
        assert_eq!(
            t.lookup("loop", &mut json!({})),
            Err(RouteError::TooDeep("loop".into()))
        );
    }

    #[test]
    fn the_table_resolves_rules_in_order_and_apply_targets() {
        let c = parse_config(CFG, Format::Yaml).expect("valid");
        let t = RuleTable::new(&c).expect("resolves");
        let main = t.list(t.index("main").expect("main")).expect("list");
        assert_eq!(main.rules.len(), 2);
        assert_eq!(main.rules[0].apply, None);
        assert_eq!(main.rules[1].apply, t.index("tagging"));
        assert_eq!(main.rules[1].route, None);
        let to_echo = c.routes.iter().position(|r| r.name == "to-echo");
        assert_eq!(main.rules[0].route, to_echo);
        let mut m = json!({"labels": {"user": "admin"}});
        assert_eq!(t.lookup_rule("main", &mut m).expect("matches").route, to_echo);
        let mut dangling = c.clone();
        dangling.rulelists[0].rules.push("ghost".into());
        assert_eq!(
            RuleTable::new(&dangling).err(),
            Some(RouteError::UnknownRule("ghost".into()))
        );
        let mut no_route = c.clone();
        no_route.routes.clear();
        assert_eq!(
            RuleTable::new(&no_route).err(),
            Some(RouteError::UnknownRoute("to-echo".into()))
        );
    }
}

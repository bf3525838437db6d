//! Rule lookup for a session: [`l7mp_api::lookup::RuleTable`] (rules, `apply` targets and routes pre-resolved per
//! RuleList in the snapshot), then the route by its index.

use crate::snapshot::{RouteRt, Snapshot};
use serde_json::Value;
use std::sync::Arc;

pub use l7mp_api::lookup::{MAX_APPLY_DEPTH, RouteError};

/// Finds the route for a session whose listener uses `rulelist`, rewriting `metadata` on the way.
pub fn lookup(snap: &Snapshot, rulelist: &str, metadata: &mut Value) -> Result<Arc<RouteRt>, RouteError> {
    let rule = snap.rule_table.lookup_rule(rulelist, metadata)?;
    rule.route
        .and_then(|i| snap.route_list.get(i))
        .cloned()
        .ok_or_else(|| RouteError::UnknownRoute(rule.rule.action.route.clone().unwrap_or_default()))
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
            lookup(&s, "nope", &mut json!({})).err(),
            Some(RouteError::UnknownRuleList("nope".into()))
        );
    }
}

//! Workloads discovered in Kubernetes (Pods and EndpointSlices) as the translator sees them, and the choice of
//! *ready* addresses for a Target's `pods` and `service` endpoints (see docs/resources.md, "Workload endpoints").
//!
//! Plain data: the control plane's discovery (`control/src/discovery/`) fills a [`Workloads`] from its reflectors;
//! this crate does no I/O and knows nothing of the Kubernetes client types.

use crate::resource::{Selector, selector_matches};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// What workload discovery knows at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workloads {
    /// Whether workload discovery runs at all. Without it a Target with `pods` or `service` endpoints is rejected
    /// (instead of silently getting no endpoints).
    pub enabled: bool,
    pub pods: Vec<Pod>,
    pub slices: Vec<EndpointSlice>,
}

/// A Pod, reduced to what endpoint selection needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `status.podIP`.
    pub ip: Option<IpAddr>,
    /// `status.conditions[type=Ready].status == "True"` and not being deleted.
    pub ready: bool,
}

/// An EndpointSlice (`discovery.k8s.io/v1`) of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service: String,
    /// `ports[].port` (the ports the endpoints serve: the Service's target ports). Empty: no ports defined.
    pub ports: Vec<u16>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SliceEndpoint {
    /// The IP addresses (FQDN slices are not read).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (unset is read as ready, as the API documents).
    pub ready: bool,
}

impl Workloads {
    /// Discovery runs, nothing discovered yet.
    pub fn enabled() -> Self {
        Workloads {
            enabled: true,
            ..Default::default()
        }
    }

    /// The IPs of the ready Pods in `namespace` whose labels the selector matches (sorted, unique).
    pub fn pod_addresses(&self, selector: &Selector, namespace: &str) -> BTreeSet<IpAddr> {
        self.pods
            .iter()
            .filter(|p| p.ready && p.namespace == namespace && selector_matches(selector, &p.labels))
            .filter_map(|p| p.ip)
            .collect()
    }

    /// The addresses of the ready endpoints of Service `namespace/name`, from the EndpointSlices that serve `port`
    /// (a slice without ports counts; `port: None` takes every slice). Sorted, unique.
    pub fn service_addresses(&self, name: &str, namespace: &str, port: Option<u16>) -> BTreeSet<IpAddr> {
        self.slices
            .iter()
            .filter(|s| s.namespace == namespace && s.service == name)
            .filter(|s| match port {
                Some(p) => s.ports.is_empty() || s.ports.contains(&p),
                None => true,
            })
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.ready)
            .flat_map(|e| e.addresses.iter().copied())
            .collect()
    }
}

/// Why `key` cannot be a Kubernetes label key (`[prefix/]name`), or `None` if it can.
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && let Some(why) = dns_subdomain_problem(p)
    {
        return Some(format!("the prefix {p:?} {why}"));
    }
    if name.is_empty() {
        return Some("the name part must not be empty".into());
    }
    label_name_problem(name).map(|why| format!("the name part {why}"))
}

/// Why `value` cannot be a Kubernetes label value (empty, or up to 63 alphanumerics, `-`, `_`, `.`, beginning and
/// ending alphanumeric), or `None` if it can.
pub fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    label_name_problem(value)
}

fn label_name_problem(s: &str) -> Option<String> {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if s.len() > 63 {
        return Some(format!("is {} characters long (at most 63)", s.len()));
    }
    if !s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.')) {
        return Some("may hold only letters, digits, '-', '_' and '.'".into());
    }
    if !s.starts_with(alnum) || !s.ends_with(alnum) {
        return Some("must begin and end with a letter or digit".into());
    }
    None
}

/// Why `s` cannot be a DNS-1123 label (a namespace or Service name: up to 63 lower-case letters, digits and `-`,
/// beginning and ending alphanumeric), or `None` if it can.
pub fn dns_label_problem(s: &str) -> Option<String> {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.len() > 63 {
        return Some(format!("is {} characters long (at most 63)", s.len()));
    }
    if !s.chars().all(|c| ok(c) || c == '-') || !s.starts_with(ok) || !s.ends_with(ok) {
        return Some(
            "must be a DNS label: lower-case letters, digits and '-', beginning and ending with a letter or digit"
                .into(),
        );
    }
    None
}

fn dns_subdomain_problem(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some(format!("is {} characters long (at most 253)", s.len()));
    }
    s.split('.').find_map(dns_label_problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn pod(ns: &str, name: &str, app: &str, ip_: Option<&str>, ready: bool) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ip: ip_.map(ip),
            ready,
        }
    }

    fn sel(app: &str) -> Selector {
        Selector {
            match_labels: [("app".to_string(), app.to_string())].into(),
        }
    }

    #[test]
    fn pods_ready_only_in_their_namespace() {
        let w = Workloads {
            enabled: true,
            pods: vec![
                pod("a", "p1", "echo", Some("10.0.0.1"), true),
                pod("a", "p2", "echo", Some("10.0.0.2"), false), // not ready
                pod("a", "p3", "echo", None, true),              // no IP yet
                pod("b", "p4", "echo", Some("10.0.0.4"), true),  // other namespace
                pod("a", "p5", "other", Some("10.0.0.5"), true), // other labels
                pod("a", "p6", "echo", Some("10.0.0.1"), true),  // same IP twice: one address
            ],
            slices: vec![],
        };
        assert_eq!(w.pod_addresses(&sel("echo"), "a"), [ip("10.0.0.1")].into());
        assert_eq!(w.pod_addresses(&sel("echo"), "b"), [ip("10.0.0.4")].into());
        assert!(w.pod_addresses(&sel("echo"), "c").is_empty());
        // A selector with two labels needs both.
        let mut two = sel("echo");
        two.match_labels.insert("zone".into(), "x".into());
        assert!(w.pod_addresses(&two, "a").is_empty());
    }

    #[test]
    fn service_endpoints_ready_and_by_port() {
        let ep = |a: &[&str], ready| SliceEndpoint {
            addresses: a.iter().map(|s| ip(s)).collect(),
            ready,
        };
        let slice = |name: &str, svc: &str, ports: Vec<u16>, endpoints| EndpointSlice {
            namespace: "a".into(),
            name: name.into(),
            service: svc.into(),
            ports,
            endpoints,
        };
        let w = Workloads {
            enabled: true,
            pods: vec![],
            slices: vec![
                slice(
                    "s1",
                    "echo",
                    vec![7000],
                    vec![ep(&["10.1.0.1"], true), ep(&["10.1.0.2"], false)],
                ),
                slice("s2", "echo", vec![7000], vec![ep(&["fd00::3"], true)]),
                slice("s3", "echo", vec![8000], vec![ep(&["10.1.0.4"], true)]),
                slice("s4", "other", vec![7000], vec![ep(&["10.1.0.5"], true)]),
                slice("s5", "echo", vec![], vec![ep(&["10.1.0.6"], true)]),
            ],
        };
        assert_eq!(
            w.service_addresses("echo", "a", Some(7000)),
            [ip("10.1.0.1"), ip("10.1.0.6"), ip("fd00::3")].into()
        );
        assert_eq!(
            w.service_addresses("echo", "a", Some(8000)),
            [ip("10.1.0.4"), ip("10.1.0.6")].into()
        );
        assert_eq!(w.service_addresses("echo", "a", None).len(), 4);
        assert!(w.service_addresses("echo", "b", Some(7000)).is_empty());
    }

    #[test]
    fn label_syntax() {
        assert_eq!(label_key_problem("app"), None);
        assert_eq!(label_key_problem("app.kubernetes.io/name"), None);
        assert!(label_key_problem("a b").is_some());
        assert!(label_key_problem("Bad_Prefix/x").is_some());
        assert!(label_key_problem("x/").is_some());
        assert_eq!(label_value_problem(""), None);
        assert_eq!(label_value_problem("v1.2_x-y"), None);
        assert!(label_value_problem("-x").is_some());
        assert!(label_value_problem(&"x".repeat(64)).is_some());
        assert_eq!(dns_label_problem("media-1"), None);
        assert!(dns_label_problem("Media").is_some());
        assert!(dns_label_problem("").is_some());
    }
}

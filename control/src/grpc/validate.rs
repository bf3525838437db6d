//! What a gRPC xDS client accepts, checked on the Envoy messages before they are sent.
//!
//! gRPC NACKs a response with one resource it cannot use, and keeps its old state (or fails the RPCs with
//! `UNAVAILABLE` and the NACK's text, on the first fetch). The rules here are those of gRPC's xDS resource parsers
//! (C-core, the one `grpcio` wraps; Java and Go follow the same gRFCs A27, A28, A31, A42, A44), written down as
//! checks on our own output so that a resource gRPC would refuse is never sent: the object it came from is
//! rejected instead, with the Envoy field and the reason. `control/tests/grpc_xds.rs` shows grpcio refusing what
//! these checks refuse.
//!
//! Errors are `<Envoy field path>: <reason>`, e.g.
//! `virtual_hosts[0].routes[1].route.weighted_clusters: the sum of the weights (5000000000) exceeds 4294967295`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{ConfigSource, address, config_source, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RouteConfiguration, header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, string_matcher};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use prost::{Message, Name};

/// gRPC's ceiling for a ring size (8M entries).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// The largest protobuf Duration (10 000 years).
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

fn ads_or_self(c: Option<&ConfigSource>, path: &str) -> Result<(), String> {
    match c.and_then(|c| c.config_source_specifier.as_ref()) {
        Some(config_source::ConfigSourceSpecifier::Ads(_) | config_source::ConfigSourceSpecifier::Self_(_)) => Ok(()),
        Some(_) => Err(format!(
            "{path}: gRPC fetches resources over ADS only (`ads` or `self`)"
        )),
        None => Err(format!("{path}: missing (gRPC needs `ads` or `self`)")),
    }
}

fn duration(d: Option<&PbDuration>, path: &str) -> Result<(), String> {
    let Some(d) = d else { return Ok(()) };
    if !(0..=MAX_DURATION_SECONDS).contains(&d.seconds) {
        return Err(format!("{path}.seconds: must be in 0..={MAX_DURATION_SECONDS}"));
    }
    if !(0..=999_999_999).contains(&d.nanos) {
        return Err(format!("{path}.nanos: must be in 0..=999999999"));
    }
    Ok(())
}

fn positive(d: Option<&PbDuration>) -> bool {
    d.is_some_and(|d| d.seconds > 0 || d.nanos > 0)
}

/// gRPC compiles regular expressions with RE2; Rust's `regex` has the same guarantees (no backreferences, no
/// look-around), so what it refuses RE2 refuses too.
fn re(m: &RegexMatcher, path: &str) -> Result<(), String> {
    regex::Regex::new(&m.regex)
        .map(|_| ())
        .map_err(|e| format!("{path}.regex: invalid regular expression {:?}: {e}", m.regex))
}

/// A Listener for gRPC clients: an `api_listener` holding an HttpConnectionManager with RDS over ADS (or an inline
/// RouteConfiguration) and HTTP filters that end with the router.
pub fn listener(l: &Listener) -> Result<(), String> {
    let any = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .ok_or("api_listener: missing (gRPC clients only use API listeners)")?;
    if any.type_url != HttpConnectionManager::type_url() {
        return Err(format!(
            "api_listener.api_listener: {} is not an HttpConnectionManager",
            any.type_url
        ));
    }
    let hcm = HttpConnectionManager::decode(any.value.as_slice())
        .map_err(|e| format!("api_listener.api_listener: cannot decode: {e}"))?;
    let p = "api_listener.api_listener";
    match &hcm.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
            ads_or_self(rds.config_source.as_ref(), &format!("{p}.rds.config_source"))?;
            if rds.route_config_name.is_empty() {
                return Err(format!("{p}.rds.route_config_name: must not be empty"));
            }
        }
        Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
            route_configuration(rc).map_err(|e| format!("{p}.route_config.{e}"))?;
        }
        _ => return Err(format!("{p}: gRPC needs `rds` or `route_config`")),
    }
    if hcm.http_filters.is_empty() {
        return Err(format!(
            "{p}.http_filters: gRPC needs at least one HTTP filter (the router, last)"
        ));
    }
    let mut names = BTreeSet::new();
    let last = hcm.http_filters.len() - 1;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let fp = format!("{p}.http_filters[{i}]");
        if f.name.is_empty() {
            return Err(format!("{fp}.name: must not be empty"));
        }
        if !names.insert(f.name.as_str()) {
            return Err(format!("{fp}.name: {:?} appears twice", f.name));
        }
        let router =
            matches!(&f.config_type, Some(http_filter::ConfigType::TypedConfig(a)) if a.type_url == Router::type_url());
        if router != (i == last) {
            return Err(format!(
                "{fp}: the router filter must be the last HTTP filter, and only the last"
            ));
        }
        if !router && !f.is_optional {
            // The only filter l7mp emits is the router; anything else may be unknown to the client.
            return Err(format!("{fp}: a filter gRPC may not know must be `is_optional`"));
        }
    }
    Ok(())
}

fn header(h: &HeaderMatcher, path: &str) -> Result<(), String> {
    use header_matcher::HeaderMatchSpecifier as S;
    if h.name.is_empty() {
        return Err(format!("{path}.name: must not be empty"));
    }
    match &h.header_match_specifier {
        None => Err(format!("{path}: no match specifier")),
        #[allow(deprecated)]
        Some(S::SafeRegexMatch(r)) => re(r, &format!("{path}.safe_regex_match")),
        Some(S::RangeMatch(r)) if r.start > r.end => Err(format!("{path}.range_match: start is above end")),
        Some(S::StringMatch(sm)) => match &sm.match_pattern {
            None => Err(format!("{path}.string_match: no pattern")),
            Some(string_matcher::MatchPattern::SafeRegex(r)) => re(r, &format!("{path}.string_match.safe_regex")),
            Some(string_matcher::MatchPattern::Custom(_)) => {
                Err(format!("{path}.string_match.custom: not supported by gRPC"))
            }
            Some(_) => Ok(()),
        },
        Some(_) => Ok(()),
    }
}

/// A RouteConfiguration as gRPC reads it.
pub fn route_configuration(rc: &RouteConfiguration) -> Result<(), String> {
    if rc.virtual_hosts.is_empty() {
        return Err("virtual_hosts: gRPC needs at least one virtual host".into());
    }
    for (v, vh) in rc.virtual_hosts.iter().enumerate() {
        let vp = format!("virtual_hosts[{v}]");
        if vh.domains.is_empty() {
            return Err(format!("{vp}.domains: must not be empty"));
        }
        for (d, dom) in vh.domains.iter().enumerate() {
            let stars = dom.matches('*').count();
            let ok = !dom.is_empty()
                && (stars == 0 || (stars == 1 && (dom == "*" || dom.starts_with('*') || dom.ends_with('*'))));
            if !ok {
                return Err(format!("{vp}.domains[{d}]: invalid domain pattern {dom:?}"));
            }
        }
        for (r, rt) in vh.routes.iter().enumerate() {
            let rp = format!("{vp}.routes[{r}]");
            let m = rt.r#match.as_ref().ok_or(format!("{rp}.match: missing"))?;
            match &m.path_specifier {
                Some(route_match::PathSpecifier::SafeRegex(x)) => re(x, &format!("{rp}.match.safe_regex"))?,
                Some(
                    route_match::PathSpecifier::Prefix(_)
                    | route_match::PathSpecifier::Path(_)
                    | route_match::PathSpecifier::PathSeparatedPrefix(_),
                ) => {}
                _ => return Err(format!("{rp}.match: gRPC needs a prefix, path or safe_regex")),
            }
            for (h, hm) in m.headers.iter().enumerate() {
                header(hm, &format!("{rp}.match.headers[{h}]"))?;
            }
            let Some(route::Action::Route(a)) = &rt.action else {
                return Err(format!("{rp}: l7mp sends only `route` actions"));
            };
            let ap = format!("{rp}.route");
            match &a.cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(c)) if c.is_empty() => {
                    return Err(format!("{ap}.cluster: must not be empty"));
                }
                Some(route_action::ClusterSpecifier::Cluster(_)) => {}
                Some(route_action::ClusterSpecifier::WeightedClusters(wc)) => {
                    let wp = format!("{ap}.weighted_clusters");
                    if wc.clusters.is_empty() {
                        return Err(format!("{wp}.clusters: must not be empty"));
                    }
                    let mut sum: u64 = 0;
                    for (i, c) in wc.clusters.iter().enumerate() {
                        if c.name.is_empty() {
                            return Err(format!("{wp}.clusters[{i}].name: must not be empty"));
                        }
                        sum += u64::from(c.weight.as_ref().map_or(0, |w| w.value));
                    }
                    if sum == 0 {
                        return Err(format!("{wp}: the weights add up to 0 (no cluster could be picked)"));
                    }
                    if sum > u64::from(u32::MAX) {
                        return Err(format!(
                            "{wp}: the sum of the weights ({sum}) exceeds {} (gRPC adds them up in 32 bits)",
                            u32::MAX
                        ));
                    }
                }
                _ => return Err(format!("{ap}: gRPC needs `cluster` or `weighted_clusters`")),
            }
            if let Some(rp2) = &a.retry_policy {
                let pp = format!("{ap}.retry_policy");
                if rp2.num_retries.as_ref().is_some_and(|n| n.value == 0) {
                    return Err(format!("{pp}.num_retries: must be above 0"));
                }
                if let Some(b) = &rp2.retry_back_off {
                    duration(b.base_interval.as_ref(), &format!("{pp}.retry_back_off.base_interval"))?;
                    duration(b.max_interval.as_ref(), &format!("{pp}.retry_back_off.max_interval"))?;
                    if !positive(b.base_interval.as_ref()) {
                        return Err(format!("{pp}.retry_back_off.base_interval: must be above 0"));
                    }
                    let as_nanos = |d: &PbDuration| i128::from(d.seconds) * 1_000_000_000 + i128::from(d.nanos);
                    if let (Some(base), Some(max)) = (&b.base_interval, &b.max_interval)
                        && as_nanos(max) < as_nanos(base)
                    {
                        return Err(format!(
                            "{pp}.retry_back_off.max_interval: must not be below base_interval"
                        ));
                    }
                }
            }
            if let Some(m) = &a.max_stream_duration {
                let mp = format!("{ap}.max_stream_duration");
                duration(m.max_stream_duration.as_ref(), &format!("{mp}.max_stream_duration"))?;
                duration(
                    m.grpc_timeout_header_max.as_ref(),
                    &format!("{mp}.grpc_timeout_header_max"),
                )?;
            }
            for (h, hp) in a.hash_policy.iter().enumerate() {
                use route_action::hash_policy::PolicySpecifier as P;
                if let Some(P::Header(hd)) = &hp.policy_specifier {
                    if hd.header_name.is_empty() {
                        return Err(format!("{ap}.hash_policy[{h}].header.header_name: must not be empty"));
                    }
                    if let Some(rw) = &hd.regex_rewrite
                        && let Some(p) = &rw.pattern
                    {
                        re(p, &format!("{ap}.hash_policy[{h}].header.regex_rewrite.pattern"))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// A Cluster as gRPC reads it: EDS over ADS, round robin or ring hash.
pub fn cluster(c: &Cluster) -> Result<(), String> {
    match &c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) if *t == cluster::DiscoveryType::Eds as i32 => {}
        _ => return Err("type: l7mp's gRPC clusters are EDS clusters".into()),
    }
    let eds = c.eds_cluster_config.as_ref().ok_or("eds_cluster_config: missing")?;
    ads_or_self(eds.eds_config.as_ref(), "eds_cluster_config.eds_config")?;
    let policy =
        cluster::LbPolicy::try_from(c.lb_policy).map_err(|_| format!("lb_policy: unknown value {}", c.lb_policy))?;
    match policy {
        cluster::LbPolicy::RoundRobin | cluster::LbPolicy::LeastRequest => {}
        cluster::LbPolicy::RingHash => {
            if let Some(cluster::LbConfig::RingHashLbConfig(rh)) = &c.lb_config {
                if rh.hash_function != cluster::ring_hash_lb_config::HashFunction::XxHash as i32 {
                    return Err("ring_hash_lb_config.hash_function: gRPC supports XX_HASH only".into());
                }
                let min = rh.minimum_ring_size.as_ref().map_or(1024, |v| v.value);
                let max = rh.maximum_ring_size.as_ref().map_or(MAX_RING_SIZE, |v| v.value);
                if max > MAX_RING_SIZE || min > max || min == 0 {
                    return Err(format!(
                        "ring_hash_lb_config: need 0 < minimum_ring_size ({min}) <= maximum_ring_size ({max}) <= \
                         {MAX_RING_SIZE}"
                    ));
                }
            }
        }
        other => return Err(format!("lb_policy: {} is not supported by gRPC", other.as_str_name())),
    }
    Ok(())
}

/// A ClusterLoadAssignment as gRPC reads it.
pub fn load_assignment(cla: &ClusterLoadAssignment) -> Result<(), String> {
    let mut priorities = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    let mut per_priority: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    for (l, loc) in cla.endpoints.iter().enumerate() {
        let lp = format!("endpoints[{l}]");
        if loc.locality.is_none() {
            return Err(format!("{lp}.locality: missing (gRPC needs one)"));
        }
        let lw = loc.load_balancing_weight.as_ref().map_or(0, |w| w.value);
        if lw == 0 {
            return Err(format!(
                "{lp}.load_balancing_weight: must be above 0 (gRPC ignores a locality without weight)"
            ));
        }
        priorities.insert(loc.priority);
        *per_priority.entry(loc.priority).or_default() += u64::from(lw);
        let mut sum: u64 = 0;
        for (e, ep) in loc.lb_endpoints.iter().enumerate() {
            let epath = format!("{lp}.lb_endpoints[{e}]");
            let w = ep.load_balancing_weight.as_ref().map_or(1, |w| w.value);
            if w == 0 {
                return Err(format!("{epath}.load_balancing_weight: must be above 0"));
            }
            sum += u64::from(w);
            let Some(lb_endpoint::HostIdentifier::Endpoint(end)) = &ep.host_identifier else {
                return Err(format!("{epath}.endpoint: missing"));
            };
            let Some(address::Address::SocketAddress(sa)) = end.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err(format!("{epath}.endpoint.address.socket_address: missing"));
            };
            let ip: IpAddr = sa.address.parse().map_err(|_| {
                format!(
                    "{epath}.endpoint.address.socket_address.address: {:?} is not an IP address",
                    sa.address
                )
            })?;
            let port = match sa.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) if (1..=65535).contains(&p) => p,
                _ => {
                    return Err(format!(
                        "{epath}.endpoint.address.socket_address.port_value: must be in 1..=65535"
                    ));
                }
            };
            if !addresses.insert((ip, port)) {
                return Err(format!(
                    "{epath}.endpoint.address: {}:{port} appears twice (gRPC refuses duplicate endpoint addresses)",
                    sa.address
                ));
            }
        }
        if sum > u64::from(u32::MAX) {
            return Err(format!(
                "{lp}.lb_endpoints: the sum of the endpoint weights ({sum}) exceeds {}",
                u32::MAX
            ));
        }
    }
    for (p, sum) in per_priority {
        if sum > u64::from(u32::MAX) {
            return Err(format!(
                "endpoints: the sum of the locality weights of priority {p} ({sum}) exceeds {}",
                u32::MAX
            ));
        }
    }
    if priorities.iter().enumerate().any(|(i, p)| *p as usize != i) {
        return Err("endpoints[].priority: priorities must be 0, 1, ... without gaps".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::envoy;
    use super::*;
    use l7mp_api::resource::ResourceKind;
    use l7mp_api::resource::ResourceRef;
    use l7mp_api::resource::grpc::*;

    fn svc(split: Vec<(String, u32)>) -> GrpcService {
        GrpcService {
            name: "echo".into(),
            source: ResourceRef::new(ResourceKind::VirtualService, "default", "echo"),
            routes: vec![GrpcRoute {
                name: "r".into(),
                matcher: RouteMatch::default(),
                destination: GrpcDestination::Split(split),
                retry: None,
                hash: vec![],
            }],
            timeout: None,
        }
    }

    #[test]
    fn generated_resources_pass() {
        assert_eq!(listener(&envoy::listener("echo", "default/echo")), Ok(()));
        let rc = envoy::route_configuration("default/echo", &svc(vec![("a".into(), 80), ("b".into(), 20)]));
        assert_eq!(route_configuration(&rc), Ok(()));
        let c = GrpcCluster {
            name: "default/a".into(),
            source: ResourceRef::new(ResourceKind::Target, "default", "a"),
            lb: GrpcLb::RoundRobin,
            port: 5000,
            endpoints: vec![GrpcEndpoint {
                name: "default/a/0".into(),
                address: "127.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1])),
                weight: 3,
            }],
        };
        assert_eq!(cluster(&envoy::cluster(&c)), Ok(()));
        assert_eq!(load_assignment(&envoy::load_assignment(&c)), Ok(()));
        let rh = GrpcCluster {
            lb: GrpcLb::RingHash,
            ..c.clone()
        };
        assert_eq!(cluster(&envoy::cluster(&rh)), Ok(()));
        assert_eq!(load_assignment(&envoy::load_assignment(&rh)), Ok(()));
    }

    #[test]
    fn refuses_what_grpc_refuses() {
        let rc = envoy::route_configuration(
            "x",
            &svc(vec![("a".into(), 4_000_000_000), ("b".into(), 1_000_000_000)]),
        );
        let e = route_configuration(&rc).unwrap_err();
        assert!(
            e.starts_with("virtual_hosts[0].routes[0].route.weighted_clusters: the sum"),
            "{e}"
        );
        let rc = envoy::route_configuration("x", &svc(vec![("a".into(), 0)]));
        assert!(route_configuration(&rc).unwrap_err().contains("add up to 0"));
        let mut l = envoy::listener("echo", "x");
        l.api_listener = None;
        assert!(listener(&l).unwrap_err().starts_with("api_listener"));
    }
}

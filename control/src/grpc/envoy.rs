//! The gRPC services of the translation as Envoy v3 messages (pure: no validation, no I/O).
//!
//! | l7mp | Envoy |
//! |---|---|
//! | gRPC service `NAME` (a VirtualService with `spec.grpc`) | Listener `NAME`: `api_listener` = HttpConnectionManager, RDS over ADS, the router filter (last and only) |
//! | its rules | RouteConfiguration `namespace/vsvc`: one virtual host (`*`), one route per rule, in order |
//! | `match` | `RouteMatch` (`prefix`/`path`/`safe_regex`, `case_sensitive`) and `HeaderMatcher`s (`string_match`, `present_match`, `invert_match`) |
//! | destination / split | `cluster` / `weighted_clusters` |
//! | `retry` | `retry_policy` (gRPC status codes, `num_retries`, back-off) |
//! | `spec.grpc.timeout` | `max_stream_duration.max_stream_duration` |
//! | Target | Cluster `namespace/name`: EDS over ADS, `ROUND_ROBIN` or `RING_HASH` (+ route `hash_policy`) |
//! | endpoints | ClusterLoadAssignment `namespace/name` |
//!
//! gRPC's round robin ignores endpoint weights inside a locality but weighs localities, so a round-robin cluster puts
//! each endpoint in a locality of its own whose weight is the endpoint's; a ring-hash cluster puts them all in one
//! locality with endpoint weights (which ring hash honours).

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
    header_matcher, retry_policy, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use l7mp_api::resource::grpc::{
    GrpcCluster, GrpcDestination, GrpcLb, GrpcRetry, GrpcRoute, GrpcService, HashOn, HeaderValue, PathMatch,
};

/// The name of the router filter in the HttpConnectionManager.
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// The region of every locality l7mp makes.
pub const REGION: &str = "l7mp";

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

pub fn duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The Listener clients dial (`xds:///NAME`): an API listener whose HttpConnectionManager fetches the
/// RouteConfiguration `route_config` over ADS and ends with the router filter.
pub fn listener(name: &str, route_config: &str) -> Listener {
    let hcm = HttpConnectionManager {
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: ROUTER_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(hcm)),
        }),
        ..Default::default()
    }
}

fn string_matcher(pattern: string_matcher::MatchPattern, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn regex(re: &str) -> RegexMatcher {
    RegexMatcher {
        regex: re.to_owned(),
        ..Default::default()
    }
}

fn header(h: &l7mp_api::resource::grpc::HeaderMatch) -> HeaderMatcher {
    use header_matcher::HeaderMatchSpecifier as S;
    use string_matcher::MatchPattern as P;
    let spec = match &h.value {
        HeaderValue::Present => S::PresentMatch(true),
        HeaderValue::Exact { value, ignore_case } => {
            S::StringMatch(string_matcher(P::Exact(value.clone()), *ignore_case))
        }
        HeaderValue::Prefix { value, ignore_case } => {
            S::StringMatch(string_matcher(P::Prefix(value.clone()), *ignore_case))
        }
        HeaderValue::Suffix { value, ignore_case } => {
            S::StringMatch(string_matcher(P::Suffix(value.clone()), *ignore_case))
        }
        HeaderValue::Contains { value, ignore_case } => {
            S::StringMatch(string_matcher(P::Contains(value.clone()), *ignore_case))
        }
        HeaderValue::Regex(re) => S::StringMatch(string_matcher(P::SafeRegex(regex(re)), false)),
    };
    HeaderMatcher {
        name: h.name.clone(),
        invert_match: h.invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn retry_policy(r: &GrpcRetry) -> RetryPolicy {
    RetryPolicy {
        retry_on: r.retry_on.join(","),
        num_retries: Some(UInt32Value { value: r.num_retries }),
        retry_back_off: Some(retry_policy::RetryBackOff {
            base_interval: Some(duration(r.base_interval)),
            max_interval: Some(duration(r.max_interval)),
        }),
        ..Default::default()
    }
}

fn hash_policy(h: &HashOn) -> route_action::HashPolicy {
    use route_action::hash_policy::{self, PolicySpecifier};
    route_action::HashPolicy {
        policy_specifier: Some(match h {
            HashOn::Header(name) => PolicySpecifier::Header(hash_policy::Header {
                header_name: name.clone(),
                ..Default::default()
            }),
            // gRPC's stand-in for the client's address: one hash per channel.
            HashOn::Channel => PolicySpecifier::FilterState(hash_policy::FilterState {
                key: "io.grpc.channel_id".into(),
            }),
        }),
        ..Default::default()
    }
}

fn route(r: &GrpcRoute, timeout: Option<Duration>) -> Route {
    let path = match &r.matcher.path {
        PathMatch::Prefix(p) => route_match::PathSpecifier::Prefix(p.clone()),
        PathMatch::Exact(p) => route_match::PathSpecifier::Path(p.clone()),
        PathMatch::Regex(re) => route_match::PathSpecifier::SafeRegex(regex(re)),
    };
    let cluster_specifier = match &r.destination {
        GrpcDestination::Cluster(c) => route_action::ClusterSpecifier::Cluster(c.clone()),
        GrpcDestination::Split(s) => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: s
                .iter()
                .map(|(c, w)| weighted_cluster::ClusterWeight {
                    name: c.clone(),
                    weight: Some(UInt32Value { value: *w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    Route {
        name: r.name.clone(),
        r#match: Some(RouteMatch {
            path_specifier: Some(path),
            case_sensitive: (!r.matcher.case_sensitive)
                .then_some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            headers: r.matcher.headers.iter().map(header).collect(),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(cluster_specifier),
            retry_policy: r.retry.as_ref().map(retry_policy),
            hash_policy: r.hash.iter().map(hash_policy).collect(),
            max_stream_duration: timeout.map(|t| route_action::MaxStreamDuration {
                max_stream_duration: Some(duration(t)),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The RouteConfiguration of a service: one virtual host for every authority, the routes in lookup order.
pub fn route_configuration(name: &str, svc: &GrpcService) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: svc.name.clone(),
            domains: vec!["*".into()],
            routes: svc.routes.iter().map(|r| route(r, svc.timeout)).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The Cluster of a Target: endpoints over EDS (ADS), its load-balancing policy.
pub fn cluster(c: &GrpcCluster) -> Cluster {
    let (lb_policy, lb_config) = match c.lb {
        GrpcLb::RoundRobin => (cluster::LbPolicy::RoundRobin, None),
        GrpcLb::RingHash => (
            cluster::LbPolicy::RingHash,
            Some(cluster::LbConfig::RingHashLbConfig(cluster::RingHashLbConfig {
                hash_function: cluster::ring_hash_lb_config::HashFunction::XxHash as i32,
                ..Default::default()
            })),
        ),
    };
    Cluster {
        name: c.name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        lb_policy: lb_policy as i32,
        lb_config,
        ..Default::default()
    }
}

fn lb_endpoint(address: std::net::IpAddr, port: u16, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: address.to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        health_status: HealthStatus::Healthy as i32,
        load_balancing_weight: Some(UInt32Value { value: weight }),
        ..Default::default()
    }
}

/// The endpoints of a Target (see the module documentation for the localities).
pub fn load_assignment(c: &GrpcCluster) -> ClusterLoadAssignment {
    let locality = |sub_zone: &str| Locality {
        region: REGION.into(),
        zone: c.name.clone(),
        sub_zone: sub_zone.to_owned(),
    };
    let endpoints = match c.lb {
        GrpcLb::RoundRobin => c
            .endpoints
            .iter()
            .map(|e| LocalityLbEndpoints {
                locality: Some(locality(&e.name)),
                lb_endpoints: vec![lb_endpoint(e.address, c.port, 1)],
                load_balancing_weight: Some(UInt32Value { value: e.weight }),
                ..Default::default()
            })
            .collect(),
        GrpcLb::RingHash if c.endpoints.is_empty() => Vec::new(),
        GrpcLb::RingHash => vec![LocalityLbEndpoints {
            locality: Some(locality("")),
            lb_endpoints: c
                .endpoints
                .iter()
                .map(|e| lb_endpoint(e.address, c.port, e.weight))
                .collect(),
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        }],
    };
    ClusterLoadAssignment {
        cluster_name: c.name.clone(),
        endpoints,
        ..Default::default()
    }
}

//! End to end against an independent xDS client: Python `grpcio` resolves `xds:///svc` through this
//! server (SotW ADS: Listener → inline RouteConfiguration → EDS Cluster → ClusterLoadAssignment) and
//! calls a Python backend. Skipped (passes with a note) when the Python (`L7MP_PYTHON`) has no `grpc`, except in CI (`L7MP_REQUIRE_CLIENTS`).

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, Locality, SocketAddress, address, config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;
use l7mp_control::xds::{Cache, NoHooks, Snapshot, XdsConfig, XdsResource, XdsServer};
use tokio::io::{AsyncBufReadExt, BufReader};

const SCRIPT: &str = r#"
import json, os, sys, tempfile
from concurrent import futures
xds_port = sys.argv[1]
boot = {"xds_servers": [{"server_uri": "127.0.0.1:" + xds_port, "channel_creds": [{"type": "insecure"}],
        "server_features": ["xds_v3"]}], "node": {"id": "grpc-client", "cluster": "c1", "locality": {"zone": "z1"}}}
f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
json.dump(boot, f); f.close()
os.environ["GRPC_XDS_BOOTSTRAP"] = f.name
import grpc

def say(req, ctx):
    return b"hello " + req

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
ch = grpc.insecure_channel("xds:///svc")
call = ch.unary_unary("/test.Echo/Say")
try:
    print("OK", call(b"xds", timeout=20, wait_for_ready=True).decode(), flush=True)
    sys.stdin.readline()
except grpc.RpcError as e:
    print("ERR", e.code(), e.details(), flush=True)
    sys.exit(1)
"#;

fn envoy_snapshot(backend_port: u32) -> Snapshot {
    let hcm = HttpConnectionManager {
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: "route".into(),
                virtual_hosts: vec![VirtualHost {
                    name: "vh".into(),
                    domains: vec!["*".into()],
                    routes: vec![Route {
                        r#match: Some(RouteMatch {
                            path_specifier: Some(route_match::PathSpecifier::Prefix("".into())),
                            ..Default::default()
                        }),
                        action: Some(route::Action::Route(RouteAction {
                            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("cl".into())),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters: vec![HttpFilter {
            name: "router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    let listener = Listener {
        name: "svc".into(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(hcm)),
        }),
        ..Default::default()
    };
    let cluster = Cluster {
        name: "cl".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        ..Default::default()
    };
    let cla = ClusterLoadAssignment {
        cluster_name: "cl".into(),
        endpoints: vec![LocalityLbEndpoints {
            locality: Some(Locality {
                region: "r1".into(),
                zone: "z1".into(),
                sub_zone: String::new(),
            }),
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "127.0.0.1".into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(backend_port)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        }],
        ..Default::default()
    };
    Snapshot::new()
        .with(XdsResource::from_message("svc", &listener).with_version("1"))
        .with(XdsResource::from_message("cl", &cluster).with_version("1"))
        .with(XdsResource::from_message("cl", &cla).with_version("1"))
}

#[tokio::test]
async fn grpcio_resolves_xds_target() {
    let py = std::env::var("L7MP_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_grpc = std::process::Command::new(&py)
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_grpc {
        assert!(
            std::env::var_os("L7MP_REQUIRE_CLIENTS").is_none(),
            "{py} cannot import grpc: install e2e/clients/requirements.txt (bash .ci/run does)"
        );
        eprintln!("{py} has no grpcio: skipped (bash .ci/run installs it)");
        return;
    }
    let cache = Arc::new(Cache::new());
    let server = XdsServer::new(cache.clone(), Arc::new(NoHooks), XdsConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let s = server.clone();
    let task = tokio::spawn(async move {
        s.serve(listener, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });

    let mut child = tokio::process::Command::new(&py)
        .args(["-c", SCRIPT, &port.to_string()])
        .stdout(Stdio::piped())
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let backend: u32 = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    cache.set_snapshot("grpc-client", envoy_snapshot(backend));
    let answer = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    assert_eq!(answer, "OK hello xds");

    // While the client is still connected: every type it walked is ACKed at the version sent, no NACK.
    let mut agent = server.agent("grpc-client").unwrap();
    for _ in 0..100 {
        if agent.types.len() == 3 && agent.types.values().all(|t| t.acked_version == t.sent_version) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        agent = server.agent("grpc-client").unwrap();
    }
    assert_eq!(agent.node.locality, Some((String::new(), "z1".into(), String::new())));
    assert!(agent.last_nack.is_none(), "{:?}", agent.last_nack);
    let mut types: Vec<&str> = agent.types.keys().map(String::as_str).collect();
    types.sort();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "type.googleapis.com/envoy.config.listener.v3.Listener",
        ]
    );
    for t in agent.types.values() {
        assert_eq!(t.acked_version, t.sent_version);
        assert!(t.nacked.is_none());
    }
    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

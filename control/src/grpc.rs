//! Proxyless gRPC: the standard Envoy v3 resources (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment) of
//! the VirtualServices marked `spec.grpc`, for gRPC libraries that dial `xds:///NAME`.
//!
//! The translator (`l7mp_api::resource::grpc`) says what each service is in plain terms; [`envoy`] writes that as
//! Envoy messages and [`validate`] checks them against what gRPC clients accept. A service whose resources would be
//! refused is not sent: its VirtualService gets the reason (`spec.grpc: ...`) in its status, and clients keep what
//! they had. The resources are the same for every client, so the control loop builds them once per computation and
//! every xDS client's snapshot shares them. See docs/grpc.md.

pub mod envoy;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use l7mp_api::resource::ResourceRef;
use l7mp_api::resource::grpc::GrpcTranslation;
use prost::Name;

use crate::xds::XdsResource;

/// The four Envoy type URLs, in make-before-break order (clusters and their endpoints before the listeners and
/// routes that use them).
pub fn type_urls() -> [String; 4] {
    [
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
        Listener::type_url(),
        RouteConfiguration::type_url(),
    ]
}

/// The Envoy resources of the gRPC services, and why some services were left out.
#[derive(Debug, Default)]
pub struct GrpcResources {
    /// By VirtualService, everything its clients need: its Listener and RouteConfiguration, and the Clusters and
    /// ClusterLoadAssignments of the Targets it routes to (a Target several services use is in each bundle).
    pub services: BTreeMap<ResourceRef, Vec<XdsResource>>,
    /// By VirtualService: `spec.grpc: the Envoy ... would be refused by gRPC clients: <field>: <why>`.
    pub errors: BTreeMap<ResourceRef, String>,
}

/// Builds and checks the resources of every service.
pub fn resources(t: &GrpcTranslation) -> GrpcResources {
    let mut out = GrpcResources::default();
    let mut clusters: BTreeMap<&str, Result<(Cluster, ClusterLoadAssignment), String>> = BTreeMap::new();
    for (name, c) in &t.clusters {
        let cl = envoy::cluster(c);
        let cla = envoy::load_assignment(c);
        let checked = validate::cluster(&cl)
            .map_err(|e| format!("the Envoy Cluster {name:?} would be refused by gRPC clients: {e}"))
            .and_then(|()| {
                validate::load_assignment(&cla).map_err(|e| {
                    format!("the Envoy ClusterLoadAssignment {name:?} would be refused by gRPC clients: {e}")
                })
            });
        clusters.insert(name.as_str(), checked.map(|()| (cl, cla)));
    }
    for (name, svc) in &t.services {
        let rc_name = svc.source.fqn();
        let l = envoy::listener(name, &rc_name);
        let rc = envoy::route_configuration(&rc_name, svc);
        let wanted: BTreeSet<&str> = svc.routes.iter().flat_map(|r| r.destination.clusters()).collect();
        let checked = validate::listener(&l)
            .map_err(|e| format!("the Envoy Listener {name:?} would be refused by gRPC clients: {e}"))
            .and_then(|()| {
                validate::route_configuration(&rc).map_err(|e| {
                    format!("the Envoy RouteConfiguration {rc_name:?} would be refused by gRPC clients: {e}")
                })
            })
            .and_then(|()| {
                wanted.iter().try_for_each(|c| match clusters.get(c) {
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(e.clone()),
                    None => Err(format!("the cluster {c:?} was not translated")),
                })
            });
        match checked {
            Ok(()) => {
                let mut bundle = vec![
                    XdsResource::from_message(name.clone(), &l),
                    XdsResource::from_message(rc_name, &rc),
                ];
                for c in wanted {
                    if let Some(Ok((cl, cla))) = clusters.get(c) {
                        bundle.push(XdsResource::from_message(c, cl));
                        bundle.push(XdsResource::from_message(c, cla));
                    }
                }
                out.services.insert(svc.source.clone(), bundle);
            }
            Err(e) => {
                tracing::warn!(service = %name, "gRPC service left out: {e}");
                out.errors.insert(svc.source.clone(), format!("spec.grpc: {e}"));
            }
        }
    }
    out
}

//! Workload discovery from Kubernetes: reflectors over every Pod and every EndpointSlice (`discovery.k8s.io/v1`),
//! reduced to [`Workloads`] and handed to the control loop whenever they change.
//!
//! RBAC: `get`, `list`, `watch` on `pods` (core) and `endpointslices` (`discovery.k8s.io`), cluster-wide.
//!
//! A watch that falls too far behind gets `410 Gone` and relists. The reflector's store keeps the old objects until
//! the relist is complete (`Init` … `InitApply` … `InitDone` swap a buffer in at once), and the loop is only told
//! after `InitDone`, so a relist never makes endpoints disappear for a moment.

use super::{Discovery, DiscoveryError, State};
use crate::controller::ControlPlane;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use l7mp_api::workload::{self, Workloads};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::Notify;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A client from a kubeconfig file, or (`None`) from the environment: in-cluster service account, else
/// `$KUBECONFIG` or `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, DiscoveryError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| DiscoveryError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| DiscoveryError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| DiscoveryError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| DiscoveryError::Config(e.to_string()))
}

/// Starts following Pods and EndpointSlices and feeding `cp`. The tasks run until the process ends; failed calls
/// are retried with the watcher's default back-off (and counted).
pub fn start(client: Client, cp: Arc<ControlPlane>) -> Discovery {
    let (handle, ready_tx) = Discovery::new();
    cp.set_discovery(handle.clone());
    let changed = Arc::new(Notify::new());
    // Only the fields selection reads are kept (no spec, no managed fields): a cluster's pods can be many.
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|p: &mut Pod| {
            p.spec = None;
            p.metadata.managed_fields = None;
            p.metadata.annotations = None;
        })
        .reflect(pod_writer);
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let slice_events = watcher(Api::<EndpointSlice>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(|s: &mut EndpointSlice| s.metadata.managed_fields = None)
        .reflect(slice_writer);
    tokio::spawn(follow("pods", pod_events, changed.clone(), handle.state.clone()));
    tokio::spawn(follow(
        "endpointslices",
        slice_events,
        changed.clone(),
        handle.state.clone(),
    ));
    let state = handle.state.clone();
    tokio::spawn(async move {
        if pods.wait_until_ready().await.is_err() || slices.wait_until_ready().await.is_err() {
            return;
        }
        loop {
            let w = workloads(&pods, &slices);
            let (np, ns) = (w.pods.len(), w.slices.len());
            if cp.set_workloads(w) {
                tracing::debug!(pods = np, endpointslices = ns, "discovery: workloads changed");
            }
            if !state.ready.swap(true, Ordering::Relaxed) {
                tracing::info!(pods = np, endpointslices = ns, "discovery: Kubernetes workloads listed");
                ready_tx.send_replace(true);
            }
            changed.notified().await;
        }
    });
    handle
}

/// Drives one reflector; every change that completes a state (not the objects of a relist in progress) wakes the
/// publisher.
async fn follow<K>(
    what: &'static str,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    changed: Arc<Notify>,
    state: Arc<State>,
) {
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => changed.notify_one(),
            Ok(watcher::Event::Init) => tracing::debug!("discovery: listing {what}"),
            Ok(watcher::Event::InitApply(_)) => {}
            Err(e) => {
                state.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "discovery: watching {what}: {e} (retrying; the control plane needs get, list and watch on \
                     pods and discovery.k8s.io endpointslices)"
                );
            }
        }
    }
}

/// The reflectors' current objects as [`Workloads`], sorted so that equal states compare equal.
fn workloads(pods: &Store<Pod>, slices: &Store<EndpointSlice>) -> Workloads {
    let mut w = Workloads {
        enabled: true,
        pods: pods.state().iter().filter_map(|p| pod(p)).collect(),
        slices: slices.state().iter().filter_map(|s| slice(s)).collect(),
    };
    w.pods.sort();
    w.slices.sort();
    w
}

/// A Pod as selection sees it: ready when its `Ready` condition is `True` and it is not being deleted; its address
/// is `status.podIP`.
pub fn pod(p: &Pod) -> Option<workload::Pod> {
    let status = p.status.as_ref();
    let ready = p.metadata.deletion_timestamp.is_none()
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    Some(workload::Pod {
        namespace: p.metadata.namespace.clone()?,
        name: p.metadata.name.clone()?,
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ip: status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()),
        ready,
    })
}

/// An EndpointSlice of a Service (one without the `kubernetes.io/service-name` label, or of FQDN addresses, is
/// skipped). An endpoint whose `conditions.ready` is unset counts as ready, as the API says consumers should.
pub fn slice(s: &EndpointSlice) -> Option<workload::EndpointSlice> {
    if s.address_type != "IPv4" && s.address_type != "IPv6" {
        return None;
    }
    let service = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    Some(workload::EndpointSlice {
        namespace: s.metadata.namespace.clone()?,
        name: s.metadata.name.clone()?,
        service,
        ports: s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok()))
            .collect(),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| workload::SliceEndpoint {
                addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("valid object")
    }

    #[test]
    fn pods_are_ready_by_their_condition() {
        let p = |status: serde_json::Value, deleting: bool| -> Pod {
            let mut meta = json!({"name": "p", "namespace": "ns", "labels": {"app": "echo"}});
            if deleting {
                meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            from(json!({"metadata": meta, "status": status}))
        };
        let ready = json!({"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]});
        let got = pod(&p(ready.clone(), false)).expect("pod");
        assert!(got.ready);
        assert_eq!(got.ip, Some("10.0.0.1".parse().expect("ip")));
        assert_eq!(got.labels.get("app").map(String::as_str), Some("echo"));
        assert!(
            !pod(&p(ready, true)).expect("pod").ready,
            "a pod being deleted is not ready"
        );
        let not = json!({"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "False"},
                                                           {"type": "PodScheduled", "status": "True"}]});
        assert!(!pod(&p(not, false)).expect("pod").ready);
        let pending = pod(&p(json!({"phase": "Pending"}), false)).expect("pod");
        assert!(!pending.ready && pending.ip.is_none());
    }

    #[test]
    fn slices_by_service_with_ready_endpoints() {
        let s: EndpointSlice = from(json!({
            "metadata": {"name": "echo-abc", "namespace": "ns", "labels": {SERVICE_NAME_LABEL: "echo"}},
            "addressType": "IPv4",
            "ports": [{"name": "rtp", "port": 7000, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "terminating": true}},
                {"addresses": ["10.0.0.3"]}
            ]
        }));
        let got = slice(&s).expect("slice");
        assert_eq!(got.service, "echo");
        assert_eq!(got.ports, vec![7000]);
        let ready: Vec<bool> = got.endpoints.iter().map(|e| e.ready).collect();
        assert_eq!(ready, vec![true, false, true]);
        let mut fqdn = s.clone();
        fqdn.address_type = "FQDN".into();
        assert!(slice(&fqdn).is_none());
        let mut orphan = s;
        orphan.metadata.labels = None;
        assert!(slice(&orphan).is_none());
    }
}

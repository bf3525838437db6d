//! Workload discovery: where a Target's `pods` and `service` endpoints get their addresses.
//!
//! A discovery source runs beside the control loop, whatever the store is, and hands the loop a
//! [`Workloads`](l7mp_api::workload::Workloads) whenever the set of ready workloads changes
//! ([`ControlPlane::set_workloads`](crate::controller::ControlPlane::set_workloads)); the loop recomputes, and since
//! unchanged xDS resources keep their versions, only the agents that hold an affected cluster get a new ClusterLoad.
//! The one source so far is Kubernetes ([`kubernetes`]: reflectors over Pods and EndpointSlices).

pub mod kubernetes;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Where workloads are discovered (`--discovery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySource {
    /// `kubernetes`: in-cluster configuration, or `$KUBECONFIG`/`~/.kube/config` (`kube::Config::infer`);
    /// `kubernetes:PATH`: that kubeconfig file.
    Kubernetes { kubeconfig: Option<PathBuf> },
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("unknown discovery source {0:?} (expected `kubernetes` or `kubernetes:KUBECONFIG`)")]
    UnknownSource(String),
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
}

impl FromStr for DiscoverySource {
    type Err = DiscoveryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "kubernetes" => Ok(DiscoverySource::Kubernetes { kubeconfig: None }),
            Some(("kubernetes", path)) if !path.is_empty() => Ok(DiscoverySource::Kubernetes {
                kubeconfig: Some(PathBuf::from(path)),
            }),
            _ => Err(DiscoveryError::UnknownSource(s.to_owned())),
        }
    }
}

/// A running discovery source: its readiness (the first complete listing was handed to the loop) and how often
/// it failed (each failed list or watch; it retries with back-off).
#[derive(Debug, Clone)]
pub struct Discovery {
    state: Arc<State>,
    ready: watch::Receiver<bool>,
}

#[derive(Debug, Default)]
struct State {
    failures: AtomicU64,
    ready: AtomicBool,
}

impl Discovery {
    fn new() -> (Self, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        (
            Discovery {
                state: Arc::new(State::default()),
                ready: rx,
            },
            tx,
        )
    }

    /// Whether the first complete listing reached the control loop.
    pub fn ready(&self) -> bool {
        self.state.ready.load(Ordering::Relaxed)
    }

    /// How many list or watch calls failed so far.
    pub fn failures(&self) -> u64 {
        self.state.failures.load(Ordering::Relaxed)
    }

    /// Waits until [`Self::ready`] (or `timeout` passed); returns whether it is.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.ready.clone();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r)).await.is_ok()
    }
}

//! The seam for kernel fast paths.
//!
//! When a session's route has no ingress or egress chain and does not reconnect, its data needs no transformation,
//! and the engine offers the flow to an [`Offload`] before starting the user-space pumps. An offload that accepts
//! returns an [`OffloadedFlow`]; the session keeps it for as long as it runs and the kernel carries the packets
//! meanwhile (dropping it takes the flow out of the kernel). The pumps still run and see whatever the kernel passes
//! up, and the session's end is still decided here: the kernel's per-flow counters are added to the session's
//! traffic counters, so the idle timeout, the session listing and the metrics see the offloaded traffic.
//!
//! - [`NoOffload`] declines everything (`admin.offload: off`, the default).
//! - [`kernel::KernelOffload`]: UDP ↔ UDP flows through the `l7mp-ebpf` tc program, TCP ↔ TCP sessions through its
//!   sockmap splice (`admin.offload: auto|force`).

pub mod kernel;

use crate::pipeline::{Stages, Stats};
use l7mp_api::OffloadMode;
use serde_json::Value;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

/// What a kernel fast path carries, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadCounters {
    /// Flows offered, waiting for their first datagram to pass through user space.
    pub flows_pending: u64,
    /// Flows in the kernel now.
    pub flows_kernel: u64,
    /// Messages and bytes the kernel carried from sessions' sources (uplink), and back to them (downlink), over the
    /// agent's life.
    pub up_msgs: u64,
    pub up_bytes: u64,
    pub down_msgs: u64,
    pub down_bytes: u64,
}

/// A kernel fast path for flows that need no transformation.
pub trait Offload: Send + Sync {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// What it carries (zero for [`NoOffload`]).
    fn counters(&self) -> OffloadCounters {
        OffloadCounters::default()
    }
    /// Offers a direct flow (source ↔ destination, no chains), before the session's pumps first run. `Some`: the
    /// kernel carries it (or will, after the session's first packets) for as long as the returned flow is kept; its
    /// counters are added to `stats`.
    fn offer(&self, session: &str, stages: &Stages, stats: &Arc<Stats>) -> Option<Arc<dyn OffloadedFlow>>;
}

/// A flow the kernel carries (see [`Offload::offer`]). Dropping the last reference takes it out of the kernel.
pub trait OffloadedFlow: Send + Sync {
    /// For the session listing: `{"state": "pending"|"kernel"|"failed", "kernel": {counters}}`.
    fn describe(&self) -> Value;
    /// Bytes the kernel took from the other side towards the socket `to` that are not in `to`'s send queue yet
    /// (a TCP splice hands them over from a kernel work queue). A pump that read end of stream waits for 0 before
    /// it shuts `to` down, so the FIN goes after the last byte. 0 for flows without such a queue.
    fn unsent(&self, _to: BorrowedFd<'_>) -> u64 {
        0
    }
}

/// Waits until `flow` has nothing left on its way into `to` (see [`OffloadedFlow::unsent`]), polling with a
/// growing pause (0.5 ms up to 20 ms): the kernel hands the bytes over within microseconds unless `to`'s peer stops
/// reading, and then the session's half-close timeout decides.
pub async fn flushed(flow: &dyn OffloadedFlow, to: BorrowedFd<'_>) {
    let mut pause = Duration::from_micros(500);
    while flow.unsent(to) > 0 {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Carries every flow in user space.
pub struct NoOffload;

impl Offload for NoOffload {
    fn name(&self) -> &'static str {
        "none"
    }
    fn offer(&self, _session: &str, _stages: &Stages, _stats: &Arc<Stats>) -> Option<Arc<dyn OffloadedFlow>> {
        None
    }
}

/// The offload `mode` asks for, on `interfaces` (empty: every interface that is up), splicing TCP sessions too when
/// `tcp`. `off` gives [`NoOffload`];
/// `auto` the kernel fast path if it can be loaded, else [`NoOffload`] after one warning that says why; `force` the
/// kernel fast path or the error (the agent does not start).
pub fn start(mode: OffloadMode, interfaces: &[String], tcp: bool) -> Result<Arc<dyn Offload>, String> {
    match mode {
        OffloadMode::Off => Ok(Arc::new(NoOffload)),
        OffloadMode::Auto => match kernel::KernelOffload::start(interfaces, tcp) {
            Ok(k) => Ok(k),
            Err(e) => {
                tracing::warn!("eBPF offload is off: {e}; every flow is carried in user space");
                Ok(Arc::new(NoOffload))
            }
        },
        OffloadMode::Force => kernel::KernelOffload::start(interfaces, tcp)
            .map(|k| k as Arc<dyn Offload>)
            .map_err(|e| format!("admin.offload is force, but the eBPF offload cannot start: {e}")),
    }
}

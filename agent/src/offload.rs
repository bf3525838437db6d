//! The seam for kernel fast paths.
//!
//! When a session's route has no ingress or egress chain, its data needs no transformation, and the engine offers the
//! flow to an [`Offload`] before starting the user-space pumps. An offload that accepts (a later eBPF tc/sockmap
//! program) makes the kernel carry the packets; the pumps still run and see whatever the kernel passes up, and the
//! session's end is still decided here. The default, [`NoOffload`], declines everything.

use crate::pipeline::Stages;

/// A kernel fast path for flows that need no transformation.
pub trait Offload: Send + Sync {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Offers a direct flow (source ↔ destination, no chains). Returns whether the kernel now carries it.
    fn offer(&self, session: &str, stages: &Stages) -> bool;
}

/// Carries every flow in user space.
pub struct NoOffload;

impl Offload for NoOffload {
    fn name(&self) -> &'static str {
        "none"
    }
    fn offer(&self, _session: &str, _stages: &Stages) -> bool {
        false
    }
}

//! Kernel fast paths for l7mp flows that need no transformation.
//!
//! [`Kernel`] loads two BPF programs compiled from `bpf/` by `build.rs`:
//! - `udp_nat` (tc ingress, [`udp`]): rewrites the 4-tuple of packets of an offloaded [`UdpFlow`] and sends them to
//!   the server (or back to the client) without waking the proxy;
//! - `tcp_splice` (`sk_skb/stream_verdict` on a SOCKHASH, [`tcp`]): splices two established TCP sockets.
//!
//! Without root (or CAP_BPF+CAP_NET_ADMIN), or when the crate was built without clang, [`Kernel::load`] returns an
//! [`OffloadError`] that says so, and the caller carries flows in user space. See `docs/ebpf.md`.

mod error;
mod iface;
mod kernel;
pub mod tcp;
pub mod udp;

pub use error::OffloadError;
pub use kernel::Kernel;
pub use tcp::{SpliceHandle, SpliceStats};
pub use udp::{DirectionStats, FlowHandle, FlowStats, UdpEvents, UdpFlow};

/// Whether this build carries the BPF programs (clang was found at build time).
pub const fn built_with_programs() -> bool {
    cfg!(l7mp_ebpf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<crate::Kernel>();
    }
}

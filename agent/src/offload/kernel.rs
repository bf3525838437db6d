//! Flows carried by the kernel through `l7mp-ebpf`: UDP ↔ UDP sessions by its tc program (client → listener
//! becomes agent → server, and back, without waking the agent), TCP ↔ TCP sessions by its sockmap splice (what
//! arrives on one of the session's sockets leaves through the other).
//!
//! A UDP flow is offered when the session starts and installed once its first datagram went through user space (so
//! the first packets keep their order and the session exists in the listing). A TCP session (`admin.offload_tcp`) is spliced at once,
//! before its pumps first run: nothing is in flight in user space then, and what already waits in the sockets'
//! receive queues goes first. A poller thread adds the kernel's per-flow counters to the session's traffic counters
//! every [`POLL`]: the idle timeout, the session listing and the metrics see the offloaded traffic. The session's
//! sockets stay open, so UDP ports stay reserved and TCP end of stream still reaches the pumps, which pass it on
//! once the kernel has handed over everything it carried ([`OffloadedFlow::unsent`]). When the session ends (idle,
//! deleted, its listener removed, both directions closed) its [`Flow`] is dropped and the entries leave the kernel.
//! Dropping the [`KernelOffload`] detaches the programs.

use super::{Offload, OffloadCounters, OffloadedFlow};
use crate::pipeline::{Stages, Stats};
use crate::protocol::Stage;
use crate::stream::{Reader, Writer};
use l7mp_ebpf::{FlowHandle, Kernel, SpliceHandle, UdpFlow};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often installs happen and kernel counters are collected.
pub const POLL: Duration = Duration::from_millis(100);

/// The kernel fast path, loaded and attached.
pub struct KernelOffload {
    kernel: Arc<Kernel>,
    /// The flows offered and not yet dropped.
    flows: Mutex<Vec<Weak<Flow>>>,
    /// What the kernel carried, every flow together, over the agent's life.
    totals: Arc<Totals>,
    /// Whether TCP sessions are spliced (`admin.offload_tcp`).
    tcp: bool,
}

/// Messages and bytes each way, summed over flows.
#[derive(Default)]
struct Totals {
    up_msgs: AtomicU64,
    up_bytes: AtomicU64,
    down_msgs: AtomicU64,
    down_bytes: AtomicU64,
}

impl KernelOffload {
    /// Loads and attaches the programs on `interfaces` (empty: every interface that is up) and starts the poller.
    pub fn start(interfaces: &[String], tcp: bool) -> Result<Arc<KernelOffload>, String> {
        let kernel = Kernel::load(interfaces).map_err(|e| e.to_string())?;
        let what = if tcp { "UDP flows and TCP sessions" } else { "UDP flows" };
        tracing::info!(interfaces = ?kernel.interfaces(), "eBPF offload on: {what} without transformation go through the kernel");
        warn_without_forwarding(kernel.interfaces());
        let k = Arc::new(KernelOffload {
            kernel: Arc::new(kernel),
            flows: Mutex::new(Vec::new()),
            totals: Arc::new(Totals::default()),
            tcp,
        });
        let weak = Arc::downgrade(&k);
        std::thread::Builder::new()
            .name("l7mp-offload".into())
            .spawn(move || {
                while let Some(k) = weak.upgrade() {
                    k.poll();
                    drop(k);
                    std::thread::sleep(POLL);
                }
            })
            .map_err(|e| format!("cannot start the offload poller: {e}"))?;
        Ok(k)
    }

    fn poll(&self) {
        let live: Vec<Arc<Flow>> = {
            let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
            flows.retain(|f| f.strong_count() > 0);
            flows.iter().filter_map(Weak::upgrade).collect()
        };
        for f in live {
            f.tick(&self.kernel);
        }
    }
}

/// Packets that arrive on an interface without IP forwarding cannot be routed by the program: they stay in user space.
fn warn_without_forwarding(interfaces: &[String]) {
    for i in interfaces.iter().filter(|i| i.as_str() != "lo") {
        let off: Vec<&str> = ["ipv4", "ipv6"]
            .into_iter()
            .filter(|v| {
                !std::fs::read_to_string(format!("/proc/sys/net/{v}/conf/{i}/forwarding"))
                    .is_ok_and(|s| s.trim() == "1")
            })
            .collect();
        if !off.is_empty() {
            let sysctl: Vec<String> = off.iter().map(|v| format!("net.{v}.conf.{i}.forwarding=1")).collect();
            tracing::warn!(
                interface = %i,
                "{} forwarding is off on {i}: those flows arriving there stay in user space (sysctl -w {})",
                off.join(" and "),
                sysctl.join(" ")
            );
        }
    }
}

impl Offload for KernelOffload {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn counters(&self) -> OffloadCounters {
        let flows: Vec<Arc<Flow>> = self
            .flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let (mut pending, mut kernel) = (0, 0);
        for f in &flows {
            match &*f.state.lock().unwrap_or_else(|e| e.into_inner()) {
                State::Pending(_) => pending += 1,
                State::Udp { .. } | State::Tcp { .. } => kernel += 1,
                State::Failed(_) => {}
            }
        }
        let t = &self.totals;
        OffloadCounters {
            flows_pending: pending,
            flows_kernel: kernel,
            up_msgs: t.up_msgs.load(Relaxed),
            up_bytes: t.up_bytes.load(Relaxed),
            down_msgs: t.down_msgs.load(Relaxed),
            down_bytes: t.down_bytes.load(Relaxed),
        }
    }

    fn offer(&self, session: &str, stages: &Stages, stats: &Arc<Stats>) -> Option<Arc<dyn OffloadedFlow>> {
        let state = if let Some((a, b)) = tcp_sockets(stages) {
            if !self.tcp {
                return None;
            }
            match self.kernel.splice_tcp(a, b) {
                Ok(handle) => State::Tcp {
                    handle,
                    added: [(0, 0); 2],
                },
                Err(e) => {
                    tracing::info!(session, "not offloaded: {e}");
                    return None;
                }
            }
        } else {
            let spec = udp_flow(stages)?;
            if let Err(e) = spec.validate() {
                tracing::debug!(session, "not offloaded: {e}");
                return None;
            }
            State::Pending(spec)
        };
        let flow = Arc::new(Flow {
            kernel: self.kernel.clone(),
            totals: self.totals.clone(),
            session: session.to_owned(),
            stats: stats.clone(),
            state: Mutex::new(state),
        });
        self.flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&flow));
        Some(flow)
    }
}

/// The two TCP sockets of a session whose source and destination are both plain TCP streams: (source, destination).
fn tcp_sockets(stages: &Stages) -> Option<(BorrowedFd<'_>, BorrowedFd<'_>)> {
    let (Reader::Tcp(a), Writer::Tcp(_)) = &stages.source else {
        return None;
    };
    let Stage::Stream {
        reader: Reader::Tcp(b),
        writer: Writer::Tcp(_),
        ..
    } = &stages.destination
    else {
        return None;
    };
    Some((a.as_ref().as_fd(), b.as_ref().as_fd()))
}

/// The UDP flow of a session whose source and destination are both connected UDP sockets.
fn udp_flow(stages: &Stages) -> Option<UdpFlow> {
    let addrs = |r: &Reader| -> Option<(SocketAddr, SocketAddr)> {
        match r {
            Reader::Udp(u) => Some((u.socket.local_addr().ok()?, u.socket.peer_addr().ok()?)),
            _ => None,
        }
    };
    let (listener, client) = addrs(&stages.source.0)?;
    let Stage::Stream { reader, .. } = &stages.destination else {
        return None;
    };
    let (local, server) = addrs(reader)?;
    Some(UdpFlow {
        client,
        listener,
        local,
        server,
    })
}

enum State {
    /// A UDP flow waiting for the session's first datagram to pass through user space.
    Pending(UdpFlow),
    /// A UDP flow in the kernel; the counters (messages, bytes per direction) already added to the session.
    Udp { handle: FlowHandle, added: [(u64, u64); 2] },
    /// A TCP splice (`a` is the source's socket, `b` the destination's); counters as above (segments, bytes).
    Tcp {
        handle: SpliceHandle,
        added: [(u64, u64); 2],
    },
    /// The kernel refused it; user space carries it.
    Failed(String),
}

/// One offered flow; dropping it takes it out of the kernel.
pub struct Flow {
    kernel: Arc<Kernel>,
    totals: Arc<Totals>,
    session: String,
    stats: Arc<Stats>,
    state: Mutex<State>,
}

impl Flow {
    /// Installs a pending UDP flow once its first datagram went through user space; adds what the kernel carried
    /// since the last tick to the session's counters.
    fn tick(&self, kernel: &Kernel) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.collect(kernel, &mut st);
    }

    fn collect(&self, kernel: &Kernel, st: &mut State) {
        let (now, added) = match st {
            State::Pending(spec) if self.stats.up_msgs.load(Relaxed) > 0 => {
                let spec = *spec;
                *st = match kernel.add_udp_flow(&spec) {
                    Ok(handle) => {
                        tracing::debug!(session = %self.session, flow = ?spec, "offloaded to the kernel");
                        State::Udp {
                            handle,
                            added: [(0, 0); 2],
                        }
                    }
                    Err(e) => {
                        tracing::info!(session = %self.session, "not offloaded: {e}");
                        State::Failed(e.to_string())
                    }
                };
                return;
            }
            State::Udp { handle, added } => {
                let Ok(s) = kernel.udp_stats(handle) else { return };
                let up = (s.client_to_server.packets, s.client_to_server.bytes);
                let down = (s.server_to_client.packets, s.server_to_client.bytes);
                ([up, down], added)
            }
            State::Tcp { handle, added } => {
                let Ok(s) = kernel.tcp_stats(handle) else { return };
                let up = (s.a_to_b_segments, s.a_to_b_bytes);
                let down = (s.b_to_a_segments, s.b_to_a_bytes);
                ([up, down], added)
            }
            _ => return,
        };
        let d = [
            now[0].0.saturating_sub(added[0].0),
            now[0].1.saturating_sub(added[0].1),
            now[1].0.saturating_sub(added[1].0),
            now[1].1.saturating_sub(added[1].1),
        ];
        let pairs = [
            (&self.stats.up_msgs, &self.totals.up_msgs),
            (&self.stats.up_bytes, &self.totals.up_bytes),
            (&self.stats.down_msgs, &self.totals.down_msgs),
            (&self.stats.down_bytes, &self.totals.down_bytes),
        ];
        for ((session, total), n) in pairs.into_iter().zip(d) {
            session.fetch_add(n, Relaxed);
            total.fetch_add(n, Relaxed);
        }
        *added = now;
    }
}

impl OffloadedFlow for Flow {
    fn describe(&self) -> Value {
        match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            State::Pending(_) => json!({"state": "pending"}),
            State::Failed(why) => json!({"state": "failed", "reason": why}),
            st @ (State::Udp { added, .. } | State::Tcp { added, .. }) => json!({
                "state": "kernel",
                "program": if matches!(st, State::Tcp { .. }) { "tcp_splice" } else { "udp_nat" },
                "kernel": {
                    "from_source": {"messages": added[0].0, "bytes": added[0].1},
                    "to_source": {"messages": added[1].0, "bytes": added[1].1},
                },
            }),
        }
    }

    fn unsent(&self, to: BorrowedFd<'_>) -> u64 {
        match &*self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            // An error means the socket or the splice is gone: nothing more will arrive through it.
            State::Tcp { handle, .. } => self.kernel.tcp_unsent(handle, to).unwrap_or(0),
            _ => 0,
        }
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        // The last counts first, so that the ended session's traffic is complete.
        let mut st = std::mem::replace(
            self.state.get_mut().unwrap_or_else(|e| e.into_inner()),
            State::Failed(String::new()),
        );
        if !matches!(st, State::Pending(_)) {
            self.collect(&self.kernel, &mut st);
        }
        match &st {
            State::Udp { handle, .. } => self.kernel.remove_udp_flow(handle),
            State::Tcp { handle, .. } => self.kernel.unsplice_tcp(handle),
            _ => return,
        }
        tracing::debug!(session = %self.session, "flow taken out of the kernel");
    }
}

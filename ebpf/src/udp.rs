//! UDP flows: the `udp_flows` map of `bpf/udp_nat.c` and the types the agent uses to fill and read it.
//!
//! A [`UdpFlow`] is one proxied UDP session: client → listener (our socket facing the client) and local (our socket
//! facing the server) → server. Offloading it installs two exact-match entries, one per direction, whose values are
//! the rewritten 4-tuple plus counters the program keeps.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use crate::error::OffloadError;

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// One proxied UDP session. Packets client→listener become local→server; packets server→local become
/// listener→client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpFlow {
    /// The client's address as the proxy sees it (source of client packets).
    pub client: SocketAddr,
    /// The proxy's socket the client sends to.
    pub listener: SocketAddr,
    /// The proxy's socket that talks to the server.
    pub local: SocketAddr,
    /// The server (upstream endpoint).
    pub server: SocketAddr,
}

impl UdpFlow {
    /// Checks that the flow can be expressed as exact-match entries: one address family, no wildcard addresses, no
    /// port 0.
    pub fn validate(&self) -> Result<(), OffloadError> {
        let all = [
            ("client", self.client),
            ("listener", self.listener),
            ("local", self.local),
            ("server", self.server),
        ];
        if !all.iter().all(|(_, a)| a.is_ipv4() == self.client.is_ipv4()) {
            return Err(OffloadError::MixedFamilies { flow: Box::new(*self) });
        }
        for (role, addr) in all {
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(OffloadError::NotConcrete { role, addr });
            }
        }
        Ok(())
    }

    /// The (key, value) entries for both directions: client→listener ⇒ local→server and server→local ⇒
    /// listener→client.
    pub(crate) fn entries(&self) -> [(FlowKey, FlowValue); 2] {
        [
            (
                FlowKey::new(self.client, self.listener),
                FlowValue::new(self.local, self.server),
            ),
            (
                FlowKey::new(self.server, self.local),
                FlowValue::new(self.listener, self.client),
            ),
        ]
    }
}

/// An installed flow; pass it back to remove it or read its counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowHandle {
    pub(crate) flow: UdpFlow,
}

impl FlowHandle {
    /// The flow this handle installed.
    pub fn flow(&self) -> &UdpFlow {
        &self.flow
    }
}

/// Counters of one direction of a flow, as kept by the program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Packets rewritten.
    pub packets: u64,
    /// UDP payload bytes rewritten (without IP/UDP headers).
    pub bytes: u64,
    /// `CLOCK_MONOTONIC` nanoseconds of the last packet (0 if none).
    pub last_seen_ns: u64,
}

impl DirectionStats {
    /// How long ago the last packet went through, or `None` if none did.
    pub fn idle(&self) -> Option<Duration> {
        if self.last_seen_ns == 0 {
            return None;
        }
        Some(Duration::from_nanos(monotonic_ns().saturating_sub(self.last_seen_ns)))
    }
}

/// Counters of both directions of a flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Client → server (entry client→listener).
    pub client_to_server: DirectionStats,
    /// Server → client (entry server→local).
    pub server_to_client: DirectionStats,
}

/// How the UDP program handled matched packets since it was loaded (all flows, all interfaces).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpEvents {
    /// Rewritten and sent out of another interface (`bpf_redirect_neigh`).
    pub redirected: u64,
    /// Rewritten and passed up the stack: the new destination is local (loopback or one of our addresses).
    pub local: u64,
    /// Matched but not routable by the FIB lookup (typically forwarding is disabled on the ingress interface):
    /// left untouched, so the proxy's socket received it and user space carried it.
    pub fallback: u64,
    /// A helper failed after the packet was partly rewritten: dropped.
    pub errors: u64,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// `struct flow_key` of `udp_nat.c` (40 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowKey {
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16, // network byte order
    dport: u16,
    family: u8,
    pad: [u8; 3],
}

/// `struct flow_value` of `udp_nat.c` (64 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowValue {
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    family: u8,
    pad: [u8; 3],
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    pub(crate) last_seen_ns: u64,
}

// SAFETY: plain repr(C) structs of integers with explicit padding fields; every bit pattern is valid.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowValue {}

fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, AF_INET)
        }
        IpAddr::V6(v6) => (v6.octets(), AF_INET6),
    }
}

impl FlowKey {
    pub(crate) fn new(src: SocketAddr, dst: SocketAddr) -> Self {
        let (saddr, family) = addr_bytes(src.ip());
        let (daddr, _) = addr_bytes(dst.ip());
        FlowKey {
            saddr,
            daddr,
            sport: src.port().to_be(),
            dport: dst.port().to_be(),
            family,
            pad: [0; 3],
        }
    }
}

impl FlowValue {
    pub(crate) fn new(src: SocketAddr, dst: SocketAddr) -> Self {
        let (saddr, family) = addr_bytes(src.ip());
        let (daddr, _) = addr_bytes(dst.ip());
        FlowValue {
            saddr,
            daddr,
            sport: src.port().to_be(),
            dport: dst.port().to_be(),
            family,
            pad: [0; 3],
            packets: 0,
            bytes: 0,
            last_seen_ns: 0,
        }
    }

    pub(crate) fn stats(&self) -> DirectionStats {
        DirectionStats {
            packets: self.packets,
            bytes: self.bytes,
            last_seen_ns: self.last_seen_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowValue>(), 64);
    }

    #[test]
    fn entries_cover_both_directions() {
        let flow = UdpFlow {
            client: sa("10.0.0.1:1000"),
            listener: sa("10.0.0.2:2000"),
            local: sa("10.0.1.2:3000"),
            server: sa("10.0.1.1:4000"),
        };
        let [(k1, v1), (k2, v2)] = flow.entries();
        assert_eq!(k1, FlowKey::new(flow.client, flow.listener));
        assert_eq!(v1, FlowValue::new(flow.local, flow.server));
        assert_eq!(k2, FlowKey::new(flow.server, flow.local));
        assert_eq!(v2, FlowValue::new(flow.listener, flow.client));
        assert_eq!(k1.sport, 1000u16.to_be());
        assert_eq!(&k1.saddr[..4], &[10, 0, 0, 1]);
        assert_eq!(&k1.saddr[4..], &[0; 12]);
        assert_eq!(k1.family, AF_INET);
    }

    #[test]
    fn validation_rejects_mixed_families_and_wildcards() {
        let mut flow = UdpFlow {
            client: sa("[fd00::1]:1000"),
            listener: sa("[fd00::2]:2000"),
            local: sa("[fd00:1::2]:3000"),
            server: sa("[fd00:1::1]:4000"),
        };
        assert!(flow.validate().is_ok());
        flow.server = sa("10.0.0.1:4000");
        assert!(matches!(flow.validate(), Err(OffloadError::MixedFamilies { .. })));
        flow.server = sa("[::]:4000");
        assert!(matches!(
            flow.validate(),
            Err(OffloadError::NotConcrete { role: "server", .. })
        ));
        flow.server = sa("[fd00:1::1]:0");
        assert!(matches!(
            flow.validate(),
            Err(OffloadError::NotConcrete { role: "server", .. })
        ));
    }
}

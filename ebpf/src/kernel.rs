//! [`Kernel`]: owns the loaded programs, their attachments and maps; dropping it detaches and removes everything.

use std::{
    os::fd::BorrowedFd,
    sync::{Mutex, MutexGuard},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, SockHash},
    programs::{SchedClassifier, SkSkb, TcAttachType, tc},
};

use crate::{
    error::{self, OffloadError},
    iface,
    tcp::{self, Peer, SpliceHandle, SpliceStats},
    udp::{FlowHandle, FlowKey, FlowStats, FlowValue, UdpEvents, UdpFlow},
};

#[cfg(l7mp_ebpf)]
static UDP_OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/udp_nat.o")));
#[cfg(not(l7mp_ebpf))]
static UDP_OBJECT: Option<&[u8]> = None;
#[cfg(l7mp_ebpf)]
static TCP_OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp_splice.o")));
#[cfg(not(l7mp_ebpf))]
static TCP_OBJECT: Option<&[u8]> = None;

const UDP_PROGRAM: &str = "udp_nat";
const TCP_PROGRAM: &str = "tcp_splice";
const BPF_NOEXIST: u64 = 1;

/// The maps user space writes, taken out of the loaded objects.
struct Maps {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    events: PerCpuArray<MapData, u64>,
    socks: SockHash<MapData, u64>,
    peers: HashMap<MapData, u64, Peer>,
}

/// The loaded offload programs of one network namespace.
///
/// Attachments use the interface indexes of the network namespace of the thread that calls [`Kernel::load`]; the
/// map operations work from any thread.
pub struct Kernel {
    maps: Mutex<Maps>,
    interfaces: Vec<String>,
    // Dropped after `maps` (field order): dropping the objects unloads the programs and detaches their links.
    udp: Ebpf,
    tcp: Ebpf,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("interfaces", &self.interfaces)
            .finish_non_exhaustive()
    }
}

impl Kernel {
    /// Loads and attaches the UDP program on these interfaces (names; empty = every interface that is up, loopback
    /// included) of the current network namespace, and loads the TCP splice program.
    pub fn load(interfaces: &[String]) -> Result<Kernel, OffloadError> {
        let (Some(udp_object), Some(tcp_object)) = (UDP_OBJECT, TCP_OBJECT) else {
            return Err(OffloadError::NotBuilt);
        };
        let interfaces = if interfaces.is_empty() {
            iface::up_interfaces().map_err(|e| OffloadError::Attach {
                interface: "(all)".into(),
                reason: format!("cannot list interfaces: {e}"),
            })?
        } else {
            interfaces.to_vec()
        };
        if let Some(missing) = interfaces.iter().find(|name| !iface::exists(name)) {
            return Err(OffloadError::NoSuchInterface(missing.clone()));
        }

        let mut udp = EbpfLoader::new()
            .load(udp_object)
            .map_err(|e| error::from_ebpf(UDP_PROGRAM, e))?;
        let mut tcp = EbpfLoader::new()
            .load(tcp_object)
            .map_err(|e| error::from_ebpf(TCP_PROGRAM, e))?;

        let classifier: &mut SchedClassifier = udp
            .program_mut(UDP_PROGRAM)
            .ok_or_else(|| OffloadError::Object(format!("no program {UDP_PROGRAM}")))?
            .try_into()
            .map_err(|e| OffloadError::Object(format!("{UDP_PROGRAM}: {e}")))?;
        classifier.load().map_err(|e| error::from_load(UDP_PROGRAM, e))?;
        for name in &interfaces {
            attach(classifier, name)?;
        }

        let socks: SockHash<MapData, u64> = take_map(&mut tcp, "splice_socks")?;
        let peers: HashMap<MapData, u64, Peer> = take_map(&mut tcp, "splice_peers")?;
        let verdict: &mut SkSkb = tcp
            .program_mut(TCP_PROGRAM)
            .ok_or_else(|| OffloadError::Object(format!("no program {TCP_PROGRAM}")))?
            .try_into()
            .map_err(|e| OffloadError::Object(format!("{TCP_PROGRAM}: {e}")))?;
        verdict.load().map_err(|e| error::from_load(TCP_PROGRAM, e))?;
        verdict.attach(socks.fd()).map_err(|e| OffloadError::Refused {
            program: TCP_PROGRAM,
            log: format!("attaching to splice_socks: {}", error::chain(&e)),
        })?;

        let flows: HashMap<MapData, FlowKey, FlowValue> = take_map(&mut udp, "udp_flows")?;
        let events: PerCpuArray<MapData, u64> = take_map(&mut udp, "udp_nat_events")?;
        Ok(Kernel {
            maps: Mutex::new(Maps {
                flows,
                events,
                socks,
                peers,
            }),
            interfaces,
            udp,
            tcp,
        })
    }

    /// The interfaces the UDP program is attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        // A panic while holding the lock cannot leave the maps half-written in a way that matters more than the
        // kernel's own state, so a poisoned lock is used as is.
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs both directions of a UDP flow. Fails if either direction's packets are already offloaded.
    pub fn add_udp_flow(&self, flow: &UdpFlow) -> Result<FlowHandle, OffloadError> {
        flow.validate()?;
        let [(fk, fv), (rk, rv)] = flow.entries();
        let mut maps = self.maps();
        let exists =
            |e: &aya::maps::MapError| error::io_error(e).and_then(|io| io.raw_os_error()) == Some(libc::EEXIST);
        maps.flows.insert(fk, fv, BPF_NOEXIST).map_err(|e| {
            if exists(&e) {
                OffloadError::FlowExists {
                    from: flow.client,
                    to: flow.listener,
                }
            } else {
                error::from_map(format!("installing UDP flow {} -> {}", flow.client, flow.listener), e)
            }
        })?;
        if let Err(e) = maps.flows.insert(rk, rv, BPF_NOEXIST) {
            let _ = maps.flows.remove(&fk);
            return Err(if exists(&e) {
                OffloadError::FlowExists {
                    from: flow.server,
                    to: flow.local,
                }
            } else {
                error::from_map(format!("installing UDP flow {} -> {}", flow.server, flow.local), e)
            });
        }
        Ok(FlowHandle { flow: *flow })
    }

    /// Removes both directions of a flow; packets go to the sockets again. Removing twice is harmless.
    pub fn remove_udp_flow(&self, flow: &FlowHandle) {
        let mut maps = self.maps();
        for (key, _) in flow.flow.entries() {
            let _ = maps.flows.remove(&key);
        }
    }

    /// The counters of both directions of a flow.
    pub fn udp_stats(&self, flow: &FlowHandle) -> Result<FlowStats, OffloadError> {
        let maps = self.maps();
        let [(fk, _), (rk, _)] = flow.flow.entries();
        let get = |key: &FlowKey, from, to| {
            maps.flows.get(key, 0).map(|v| v.stats()).map_err(|e| match e {
                aya::maps::MapError::KeyNotFound => OffloadError::NotFound(format!("UDP flow {from} -> {to}")),
                e => error::from_map(format!("reading UDP flow {from} -> {to}"), e),
            })
        };
        Ok(FlowStats {
            client_to_server: get(&fk, flow.flow.client, flow.flow.listener)?,
            server_to_client: get(&rk, flow.flow.server, flow.flow.local)?,
        })
    }

    /// Program-wide counters of the UDP program (summed over CPUs): how matched packets were handled.
    pub fn udp_events(&self) -> Result<UdpEvents, OffloadError> {
        let maps = self.maps();
        let sum = |index: u32| {
            maps.events
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().fold(0u64, |acc, n| acc.saturating_add(*n)))
                .map_err(|e| error::from_map("reading udp_nat_events".into(), e))
        };
        Ok(UdpEvents {
            redirected: sum(0)?,
            local: sum(1)?,
            fallback: sum(2)?,
            errors: sum(3)?,
        })
    }

    /// Splices two established TCP sockets: data arriving on `a` leaves through `b` and vice versa, without the
    /// caller reading it. The caller keeps owning both sockets (and sees EOF on them); it must unsplice before
    /// closing them.
    pub fn splice_tcp(&self, a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> Result<SpliceHandle, OffloadError> {
        for fd in [a, b] {
            if !tcp::is_tcp(fd) {
                return Err(OffloadError::NotSpliceable("not a TCP socket".into()));
            }
            if !tcp::is_established(fd) {
                return Err(OffloadError::NotSpliceable(
                    "the TCP socket is not established (listening, connecting or closed sockets cannot be spliced)"
                        .into(),
                ));
            }
        }
        let cookie = |fd| {
            tcp::socket_cookie(fd).map_err(|e| OffloadError::NotSpliceable(format!("reading the socket cookie: {e}")))
        };
        let (ca, cb) = (cookie(a)?, cookie(b)?);
        let queued =
            |fd| tcp::queued_total(fd).map_err(|e| OffloadError::NotSpliceable(format!("reading the send queue: {e}")));
        let (base_a, base_b) = (queued(a)?, queued(b)?);
        if ca == cb {
            return Err(OffloadError::NotSpliceable(
                "a socket cannot be spliced with itself".into(),
            ));
        }
        let mut maps = self.maps();
        let what = |e: aya::maps::MapError| {
            let errno = error::io_error(&e).and_then(|io| io.raw_os_error());
            match errno {
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => OffloadError::NotSpliceable(
                    "the socket is not an established TCP socket (listening, closed or connecting sockets cannot be \
                     spliced)"
                        .into(),
                ),
                Some(libc::EEXIST) => OffloadError::NotSpliceable("the socket is already spliced".into()),
                _ => error::from_map("adding a socket to splice_socks".into(), e),
            }
        };
        maps.peers
            .insert(
                ca,
                Peer {
                    peer_cookie: cb,
                    ..Peer::default()
                },
                BPF_NOEXIST,
            )
            .map_err(what)?;
        let undo = |maps: &mut Maps| {
            let _ = maps.socks.remove(&ca);
            let _ = maps.socks.remove(&cb);
            let _ = maps.peers.remove(&ca);
            let _ = maps.peers.remove(&cb);
        };
        let result = maps
            .peers
            .insert(
                cb,
                Peer {
                    peer_cookie: ca,
                    ..Peer::default()
                },
                BPF_NOEXIST,
            )
            .and_then(|()| maps.socks.insert(ca, a, BPF_NOEXIST))
            .and_then(|()| maps.socks.insert(cb, b, BPF_NOEXIST));
        if let Err(e) = result {
            undo(&mut maps);
            return Err(what(e));
        }
        drop(maps);
        // What arrived before the sockets entered the map goes first, in order, before anything newer.
        for fd in [a, b] {
            if let Err(e) = tcp::run_receive_queue(fd) {
                self.unsplice_tcp(&SpliceHandle {
                    a: ca,
                    b: cb,
                    base_a,
                    base_b,
                });
                return Err(OffloadError::NotSpliceable(format!(
                    "cannot run the receive queue through the splice (SO_RCVLOWAT): {e}"
                )));
            }
        }
        Ok(SpliceHandle {
            a: ca,
            b: cb,
            base_a,
            base_b,
        })
    }

    /// Ends a splice: both sockets leave the map and their data goes to the caller again. Harmless to repeat.
    pub fn unsplice_tcp(&self, s: &SpliceHandle) {
        let mut maps = self.maps();
        for cookie in [s.a, s.b] {
            let _ = maps.socks.remove(&cookie);
            let _ = maps.peers.remove(&cookie);
        }
    }

    /// Bytes the splice redirected towards `to` (one of its two sockets) that are not yet in `to`'s send queue: the
    /// kernel moves them there from a work queue, after the verdict. Shutting `to` down (or closing it) before this is
    /// 0 would cut them off, so the owner waits for 0 after reading EOF on the other socket. It assumes the owner
    /// writes nothing to a spliced socket itself (there is nothing to write: the middle sockets read no data).
    pub fn tcp_unsent(&self, s: &SpliceHandle, to: BorrowedFd<'_>) -> Result<u64, OffloadError> {
        let cookie = tcp::socket_cookie(to).map_err(|e| OffloadError::NotFound(format!("the socket's cookie: {e}")))?;
        let (from, base) = if cookie == s.a {
            (s.b, s.base_a)
        } else if cookie == s.b {
            (s.a, s.base_b)
        } else {
            return Err(OffloadError::NotFound(format!(
                "TCP socket with cookie {cookie} in this splice"
            )));
        };
        let redirected = self
            .maps()
            .peers
            .get(&from, 0)
            .map_err(|e| match e {
                aya::maps::MapError::KeyNotFound => OffloadError::NotFound(format!("TCP socket with cookie {from}")),
                e => error::from_map("reading splice_peers".into(), e),
            })?
            .bytes;
        let queued = tcp::queued_total(to).map_err(|e| OffloadError::NotFound(format!("the send queue: {e}")))?;
        Ok(redirected.saturating_sub(queued.saturating_sub(base)))
    }

    /// Bytes carried by a splice, per direction.
    pub fn tcp_stats(&self, s: &SpliceHandle) -> Result<SpliceStats, OffloadError> {
        let maps = self.maps();
        let get = |cookie: u64| {
            maps.peers.get(&cookie, 0).map_err(|e| match e {
                aya::maps::MapError::KeyNotFound => OffloadError::NotFound(format!("TCP socket with cookie {cookie}")),
                e => error::from_map("reading splice_peers".into(), e),
            })
        };
        let (a, b) = (get(s.a)?, get(s.b)?);
        Ok(SpliceStats {
            a_to_b_bytes: a.bytes,
            b_to_a_bytes: b.bytes,
            a_to_b_segments: a.segments,
            b_to_a_segments: b.segments,
            dropped: a.dropped.saturating_add(b.dropped),
        })
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        // Take the sockets out of the SOCKHASH first so that spliced sockets get their own callbacks back, then
        // unload the programs (which detaches the tc links; a TCX link goes away with its fd).
        {
            let mut maps = self.maps();
            let keys: Vec<u64> = maps.socks.keys().filter_map(Result::ok).collect();
            for key in keys {
                let _ = maps.socks.remove(&key);
            }
        }
        for (ebpf, name) in [(&mut self.tcp, TCP_PROGRAM), (&mut self.udp, UDP_PROGRAM)] {
            if let Some(program) = ebpf.program_mut(name) {
                let _ = match program {
                    aya::programs::Program::SchedClassifier(p) => p.unload(),
                    aya::programs::Program::SkSkb(p) => p.unload(),
                    _ => Ok(()),
                };
            }
        }
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, OffloadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| OffloadError::Object(format!("no map {name}")))?;
    T::try_from(map).map_err(|e| OffloadError::Object(format!("map {name}: {e}")))
}

/// Attaches the classifier to `name`'s ingress: TCX on kernels that have it (a link, nothing left behind), else a
/// netlink filter on a clsact qdisc (added when missing and left in place, as tc does).
fn attach(classifier: &mut SchedClassifier, name: &str) -> Result<(), OffloadError> {
    let first = match classifier.attach(name, TcAttachType::Ingress) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let tcx = aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    if !tcx {
        match tc::qdisc_add_clsact(name) {
            Ok(()) | Err(tc::TcError::AlreadyAttached) => {}
            Err(e) => {
                return Err(OffloadError::Attach {
                    interface: name.into(),
                    reason: format!("adding the clsact qdisc: {}", error::chain(&e)),
                });
            }
        }
        if classifier.attach(name, TcAttachType::Ingress).is_ok() {
            return Ok(());
        }
    }
    if error::is_permission(&first) {
        return Err(OffloadError::NotPermitted(format!(
            "attaching to {name}: {}",
            error::chain(&first)
        )));
    }
    Err(OffloadError::Attach {
        interface: name.into(),
        reason: error::chain(&first),
    })
}

//! Errors of the offload, worded so that the person running the agent knows what to do about them.

use std::{io, net::SocketAddr};

/// Why the kernel cannot (or will not) carry a flow.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    /// The crate was compiled without the BPF objects.
    #[error("built without eBPF programs: clang was not found at build time (apt-get install clang llvm libbpf-dev)")]
    NotBuilt,
    /// The process lacks the privileges to create maps or load programs.
    #[error("not permitted to load BPF programs (run as root or with CAP_BPF+CAP_NET_ADMIN): {0}")]
    NotPermitted(String),
    /// The verifier (or the loader) rejected a program.
    #[error("the kernel refused program {program}: {log}")]
    Refused {
        /// Name of the program (`udp_nat`, `tcp_splice`).
        program: &'static str,
        /// The error and the last lines of the verifier log.
        log: String,
    },
    /// An interface named for attachment is not present in the current network namespace.
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    /// Attaching the tc program to an interface failed.
    #[error("cannot attach the UDP program to interface {interface}: {reason}")]
    Attach {
        /// Interface name.
        interface: String,
        /// What the kernel said.
        reason: String,
    },
    /// The BPF object does not contain what this crate expects (a build problem, not a runtime one).
    #[error("the eBPF object is malformed: {0}")]
    Object(String),
    /// A UDP flow mixes IPv4 and IPv6 addresses.
    #[error(
        "mixed address families in UDP flow (client {}, listener {}, local {}, server {}): all four must be IPv4 or \
         all IPv6",
        flow.client,
        flow.listener,
        flow.local,
        flow.server
    )]
    MixedFamilies {
        /// The offending flow.
        flow: Box<crate::UdpFlow>,
    },
    /// A UDP flow names a wildcard address or port 0, which no packet carries.
    #[error(
        "UDP flow {role} address {addr} is not concrete: use the exact address and port packets carry (not 0.0.0.0, :: or port 0)"
    )]
    NotConcrete {
        /// Which of the four addresses.
        role: &'static str,
        /// The address.
        addr: SocketAddr,
    },
    /// The same packets would already be rewritten by another flow.
    #[error("a UDP flow from {from} to {to} is already offloaded")]
    FlowExists {
        /// Source of the packets that already match.
        from: SocketAddr,
        /// Destination of the packets that already match.
        to: SocketAddr,
    },
    /// The flow (or splice) is not installed (any more).
    #[error("{0} is not offloaded")]
    NotFound(String),
    /// A socket handed to `splice_tcp` cannot go into a sockmap.
    #[error("cannot splice: {0}")]
    NotSpliceable(String),
    /// A map operation failed for another reason.
    #[error("{what}: {source}")]
    Map {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Finds the innermost `io::Error` in an error chain.
pub(crate) fn io_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut found = None;
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            found = Some(io);
        }
        cur = e.source();
    }
    found
}

/// Whether an error chain ends in EPERM/EACCES.
pub(crate) fn is_permission(err: &(dyn std::error::Error + 'static)) -> bool {
    io_error(err).is_some_and(|io| matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)))
}

/// The last `lines` non-empty lines of a verifier log (the part that says what went wrong).
pub(crate) fn log_tail(log: &str, lines: usize) -> String {
    let kept: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = kept.len().saturating_sub(lines);
    kept[start..].join("\n")
}

/// Classifies an error from loading a program: privileges, verifier rejection, or something else.
pub(crate) fn from_load(program: &'static str, err: aya::programs::ProgramError) -> OffloadError {
    use aya::programs::ProgramError;
    match &err {
        ProgramError::LoadError { io_error, verifier_log } => {
            if io_error.raw_os_error() == Some(libc::EPERM) {
                return OffloadError::NotPermitted(format!("loading {program}: {io_error}"));
            }
            let log = log_tail(&verifier_log.to_string(), 12);
            OffloadError::Refused {
                program,
                log: format!("{io_error}\n{log}"),
            }
        }
        _ if is_permission(&err) => OffloadError::NotPermitted(format!("loading {program}: {err}")),
        _ => OffloadError::Refused {
            program,
            log: chain(&err),
        },
    }
}

/// Classifies an error from parsing the object and creating its maps.
pub(crate) fn from_ebpf(object: &'static str, err: aya::EbpfError) -> OffloadError {
    if is_permission(&err) {
        return OffloadError::NotPermitted(format!("creating the maps of {object}: {}", chain(&err)));
    }
    if let aya::EbpfError::ProgramError(p) = err {
        return from_load(object, p);
    }
    OffloadError::Refused {
        program: object,
        log: chain(&err),
    }
}

/// Classifies a map operation error.
pub(crate) fn from_map(what: String, err: aya::maps::MapError) -> OffloadError {
    let source = io_error(&err)
        .map(|io| io::Error::from_raw_os_error(io.raw_os_error().unwrap_or(libc::EIO)))
        .unwrap_or_else(|| io::Error::other(err.to_string()));
    OffloadError::Map { what, source }
}

/// "a: b: c" for an error and its sources.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_last_lines() {
        assert_eq!(log_tail("a\n\nb\nc\n", 2), "b\nc");
        assert_eq!(log_tail("", 3), "");
    }

    #[test]
    fn permission_is_found_in_the_chain() {
        let err = aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_create",
            io_error: io::Error::from_raw_os_error(libc::EPERM),
        });
        assert!(is_permission(&err));
        let err = io::Error::from_raw_os_error(libc::ENOENT);
        assert!(!is_permission(&err));
    }

    #[test]
    fn messages_say_what_to_do() {
        assert!(OffloadError::NotBuilt.to_string().contains("apt-get install clang"));
        assert_eq!(
            OffloadError::NoSuchInterface("eth9".into()).to_string(),
            "interface eth9 does not exist"
        );
    }
}

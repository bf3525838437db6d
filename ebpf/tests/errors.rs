//! Error paths: they must say what is wrong, not panic.

mod common;

use common::{Netns, load_in, skip};
use l7mp_ebpf::{Kernel, OffloadError, UdpFlow};

#[test]
fn missing_interface_is_named() {
    if !l7mp_ebpf::built_with_programs() {
        let err = Kernel::load(&[]).expect_err("built without the programs");
        assert!(matches!(err, OffloadError::NotBuilt), "{err}");
        assert!(err.to_string().contains("clang"), "the error does not say why: {err}");
        return;
    }
    let err = Kernel::load(&["l7mp-nope9".to_owned()]).expect_err("no such interface");
    assert_eq!(err.to_string(), "interface l7mp-nope9 does not exist");
}

#[test]
fn mixed_families_and_bad_sockets_are_rejected() {
    if skip("mixed_families_and_bad_sockets_are_rejected") {
        return;
    }
    let ns = Netns::new("err").expect("ns");
    let kernel = load_in(&ns, vec!["lo".to_owned()]).expect("load");
    let flow = UdpFlow {
        client: "10.0.0.1:1000".parse().expect("addr"),
        listener: "10.0.0.2:2000".parse().expect("addr"),
        local: "[fd00::2]:3000".parse().expect("addr"),
        server: "[fd00::1]:4000".parse().expect("addr"),
    };
    let err = kernel.add_udp_flow(&flow).expect_err("mixed families");
    assert!(matches!(err, OffloadError::MixedFamilies { .. }));
    assert!(err.to_string().contains("all four must be IPv4 or all IPv6"), "{err}");

    // A UDP socket and a listening TCP socket cannot be spliced.
    use std::os::fd::AsFd;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listener2 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    assert!(matches!(
        kernel.splice_tcp(udp.as_fd(), listener.as_fd()),
        Err(OffloadError::NotSpliceable(_))
    ));
    let err = kernel
        .splice_tcp(listener.as_fd(), listener2.as_fd())
        .expect_err("listening sockets");
    assert!(matches!(err, OffloadError::NotSpliceable(_)), "{err}");
    assert!(matches!(
        kernel.splice_tcp(listener.as_fd(), listener.as_fd()),
        Err(OffloadError::NotSpliceable(_))
    ));
}

//! TCP splice against the real kernel: two established pairs on loopback, the middle sockets spliced.

mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsFd,
    time::Duration,
};

use common::{Netns, load_in, skip};

const TIMEOUT: Duration = Duration::from_secs(3);

/// An established pair (outer, middle) on loopback.
fn pair() -> std::io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let outer = TcpStream::connect(listener.local_addr()?)?;
    let (middle, _) = listener.accept()?;
    for s in [&outer, &middle] {
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_nodelay(true)?;
    }
    Ok((outer, middle))
}

fn read_exact_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)
        .expect("the spliced bytes must arrive at the other outer end");
    buf
}

fn assert_nothing(s: &mut TcpStream, what: &str) {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("{what} saw data that the splice should have carried: {other:?}"),
    }
    s.set_nonblocking(false).expect("blocking");
}

#[test]
fn tcp_splice_carries_both_directions_and_leaves_eof() {
    if skip("tcp_splice_carries_both_directions_and_leaves_eof") {
        return;
    }
    let ns = Netns::new("tcp").expect("ns");
    let ((mut client, mut m1), (mut server, mut m2)) = ns
        .run(|| (pair(), pair()))
        .map(|(a, b)| (a.expect("pair 1"), b.expect("pair 2")))
        .expect("enter ns");
    let kernel = load_in(&ns, vec!["lo".to_owned()]).expect("load");
    let splice = kernel.splice_tcp(m1.as_fd(), m2.as_fd()).expect("splice");
    assert!(kernel.splice_tcp(m1.as_fd(), m2.as_fd()).is_err(), "splicing twice");

    let up: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&up).expect("client write");
    assert_eq!(read_exact_n(&mut server, up.len()), up, "client → server bytes intact");
    let down = b"answer from the server".repeat(50);
    server.write_all(&down).expect("server write");
    assert_eq!(
        read_exact_n(&mut client, down.len()),
        down,
        "server → client bytes intact"
    );
    assert_nothing(&mut m1, "the middle socket of the client pair");
    assert_nothing(&mut m2, "the middle socket of the server pair");

    let stats = kernel.tcp_stats(&splice).expect("stats");
    assert_eq!(stats.a_to_b_bytes, up.len() as u64, "{stats:?}");
    assert_eq!(stats.b_to_a_bytes, down.len() as u64, "{stats:?}");
    assert!(stats.a_to_b_segments >= 1 && stats.b_to_a_segments >= 1, "{stats:?}");
    assert_eq!(stats.dropped, 0);

    // EOF is not data: the middle socket's owner still sees it and decides.
    client.shutdown(Shutdown::Write).expect("shutdown");
    let mut buf = [0u8; 16];
    assert_eq!(m1.read(&mut buf).expect("EOF reaches the middle socket"), 0);

    // After unsplicing, data goes to the middle socket again.
    kernel.unsplice_tcp(&splice);
    assert!(kernel.tcp_stats(&splice).is_err(), "stats of an undone splice");
    server.write_all(b"direct").expect("server write");
    let mut got = [0u8; 6];
    m2.read_exact(&mut got)
        .expect("the middle socket reads again after unsplice");
    assert_eq!(&got, b"direct");
}

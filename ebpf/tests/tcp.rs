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

/// Reads the spliced middle socket until EOF: it must read no data. (A blocking read on a spliced socket also
/// returns EAGAIN when woken by data the program redirected.)
fn read_eof(m: &mut TcpStream) {
    let mut buf = [0u8; 16];
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match m.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => panic!("the middle socket read {n} bytes the splice should have carried"),
            Err(e) if e.kind() == ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {}
            Err(e) => panic!("no EOF on the middle socket: {e}"),
        }
    }
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

#[test]
fn bytes_queued_before_the_splice_go_first_without_waiting_for_more() {
    if skip("bytes_queued_before_the_splice_go_first_without_waiting_for_more") {
        return;
    }
    let ns = Netns::new("tcpq").expect("ns");
    let ((mut client, m1), (mut server, m2)) = ns
        .run(|| (pair(), pair()))
        .map(|(a, b)| (a.expect("pair 1"), b.expect("pair 2")))
        .expect("enter ns");
    let kernel = load_in(&ns, vec!["lo".to_owned()]).expect("load");
    // In the middle socket's receive queue before the splice; nothing arrives after it.
    client.write_all(b"sent before the splice|").expect("client write");
    std::thread::sleep(Duration::from_millis(50));
    let splice = kernel.splice_tcp(m1.as_fd(), m2.as_fd()).expect("splice");
    let first = read_exact_n(&mut server, 23);
    assert_eq!(
        &first, b"sent before the splice|",
        "queued bytes carried by the splice itself"
    );
    client.write_all(b"after").expect("client write");
    assert_eq!(read_exact_n(&mut server, 5), b"after", "and newer bytes after them");
    assert_eq!(kernel.tcp_stats(&splice).expect("stats").a_to_b_bytes, 28);
}

#[test]
fn shutting_down_once_nothing_is_unsent_loses_no_byte() {
    if skip("shutting_down_once_nothing_is_unsent_loses_no_byte") {
        return;
    }
    let ns = Netns::new("tcpu").expect("ns");
    let ((mut client, mut m1), (mut server, m2)) = ns
        .run(|| (pair(), pair()))
        .map(|(a, b)| (a.expect("pair 1"), b.expect("pair 2")))
        .expect("enter ns");
    let kernel = load_in(&ns, vec!["lo".to_owned()]).expect("load");
    let splice = kernel.splice_tcp(m1.as_fd(), m2.as_fd()).expect("splice");
    assert_eq!(kernel.tcp_unsent(&splice, m2.as_fd()).expect("unsent"), 0);
    const N: usize = 4_000_000;
    let writer = std::thread::spawn(move || {
        client.write_all(&vec![7u8; N]).expect("client write");
        client.shutdown(Shutdown::Write).expect("client shutdown");
        client
    });
    let reader = std::thread::spawn(move || {
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match server.read(&mut buf) {
                Ok(0) => break total,
                Ok(n) => total += n,
                Err(e) => panic!("server read after {total} bytes: {e}"),
            }
        }
    });
    // The middle socket sees EOF once the client's FIN arrived, while redirected bytes may still be on their way.
    read_eof(&mut m1);
    let _client = writer.join().expect("writer");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while kernel.tcp_unsent(&splice, m2.as_fd()).expect("unsent") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "redirected bytes never reached the send queue"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    m2.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(reader.join().expect("reader"), N, "every byte before the FIN");
    assert_eq!(kernel.tcp_stats(&splice).expect("stats").a_to_b_bytes, N as u64);
    let other = TcpStream::connect(m1.local_addr().expect("addr"));
    if let Ok(other) = other {
        assert!(
            kernel.tcp_unsent(&splice, other.as_fd()).is_err(),
            "a socket outside the splice"
        );
    }
}

#[test]
fn a_lone_fin_does_not_break_the_splice_of_the_other_direction() {
    if skip("a_lone_fin_does_not_break_the_splice_of_the_other_direction") {
        return;
    }
    let ns = Netns::new("tcpf").expect("ns");
    let ((mut client, mut m1), (mut server, m2)) = ns
        .run(|| (pair(), pair()))
        .map(|(a, b)| (a.expect("pair 1"), b.expect("pair 2")))
        .expect("enter ns");
    let kernel = load_in(&ns, vec!["lo".to_owned()]).expect("load");
    let splice = kernel.splice_tcp(m1.as_fd(), m2.as_fd()).expect("splice");
    client.write_all(b"request").expect("client write");
    assert_eq!(read_exact_n(&mut server, 7), b"request");
    // The FIN alone, in a segment without data.
    client.shutdown(Shutdown::Write).expect("shutdown");
    read_eof(&mut m1);
    std::thread::sleep(Duration::from_millis(50));
    // The half-closed connection still carries the answer, and the other middle socket has no error.
    let answer = b"answer after the client's FIN".repeat(1000);
    server.write_all(&answer).expect("server write");
    assert_eq!(read_exact_n(&mut client, answer.len()), answer);
    let error = m2.take_error().expect("SO_ERROR");
    assert!(error.is_none(), "the splice broke the server-side socket: {error:?}");
    assert_eq!(kernel.tcp_unsent(&splice, m2.as_fd()).expect("unsent"), 0);
    m2.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).expect("EOF at the server");
    assert!(rest.is_empty());
}

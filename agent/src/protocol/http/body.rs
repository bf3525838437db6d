//! The body the agent hands hyper in both directions (listener responses, cluster requests): either a channel of
//! chunks fed by a session's pump, or, when an HTTP listener's session goes to an HTTP cluster unchanged, the peer's
//! own body relayed as it is (no copy through the session, trailers and flow control kept). A channel body carries
//! an exact length when one is known, and ends with an error, not a silent truncation, when the feeding side goes
//! away without finishing.

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

/// Chunks in flight between a pump and hyper.
const DEPTH: usize = 16;

/// A body hyper reads from.
pub enum ProxyBody {
    Chan(ChanBody),
    Relay(Relay),
}

/// A peer's body passed on as it is; reports its end (`true`: complete; dropped or failed: `false`).
pub struct Relay {
    inner: Incoming,
    done: Option<oneshot::Sender<u64>>,
    /// Runs once the whole body was read (e.g. to give the upstream connection back to its pool before the client
    /// has the last bytes and sends its next request).
    on_end: Option<Box<dyn FnOnce() + Send>>,
    bytes: u64,
}

impl Relay {
    fn ended(&mut self) {
        if let Some(f) = self.on_end.take() {
            f();
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(self.bytes);
        }
    }
}

/// Resolves with the relayed byte count once a relayed body was read to its end; an error if it was abandoned.
pub type RelayDone = oneshot::Receiver<u64>;

impl ProxyBody {
    /// Relays `inner` as it is.
    pub fn relay(inner: Incoming) -> (ProxyBody, RelayDone) {
        Self::relay_then(inner, None)
    }

    /// Relays `inner` as it is and runs `on_end` once it was read whole.
    pub fn relay_then(inner: Incoming, on_end: Option<Box<dyn FnOnce() + Send>>) -> (ProxyBody, RelayDone) {
        let (tx, rx) = oneshot::channel();
        (
            ProxyBody::Relay(Relay {
                inner,
                done: Some(tx),
                on_end,
                bytes: 0,
            }),
            rx,
        )
    }

    pub fn full(b: Bytes) -> ProxyBody {
        ProxyBody::Chan(ChanBody::full(b))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Chan(ChanBody::empty())
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ProxyBody::Chan(c) => Pin::new(c).poll_frame(cx),
            ProxyBody::Relay(r) => {
                let polled = Pin::new(&mut r.inner).poll_frame(cx);
                match polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(d) = frame.data_ref() {
                            r.bytes += d.len() as u64;
                        }
                        if r.inner.is_end_stream() {
                            r.ended();
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(None) => {
                        r.ended();
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        r.done = None;
                        r.on_end = None;
                        Poll::Ready(Some(Err(io::Error::other(e))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Chan(c) => c.is_end_stream(),
            ProxyBody::Relay(r) => r.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Chan(c) => c.size_hint(),
            ProxyBody::Relay(r) => r.inner.size_hint(),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended, so its end may not have been seen yet.
        if self.inner.is_end_stream() {
            self.ended();
        }
    }
}

/// A body fed by a session's pump.
pub struct ChanBody {
    first: Option<Bytes>,
    rx: Option<mpsc::Receiver<Bytes>>,
    done: Arc<AtomicBool>,
    len: Option<u64>,
}

/// The feeding end of a [`ChanBody`].
pub struct BodyTx {
    tx: Option<mpsc::Sender<Bytes>>,
    done: Arc<AtomicBool>,
}

/// A body fed through the returned sender; `len` is its exact length when known.
pub fn channel(len: Option<u64>) -> (BodyTx, ProxyBody) {
    let (tx, rx) = mpsc::channel(DEPTH);
    let done = Arc::new(AtomicBool::new(false));
    (
        BodyTx {
            tx: Some(tx),
            done: done.clone(),
        },
        ProxyBody::Chan(ChanBody {
            first: None,
            rx: Some(rx),
            done,
            len,
        }),
    )
}

impl ChanBody {
    /// A complete body of known bytes.
    pub fn full(b: Bytes) -> ChanBody {
        ChanBody {
            len: Some(b.len() as u64),
            first: (!b.is_empty()).then_some(b),
            rx: None,
            done: Arc::new(AtomicBool::new(true)),
        }
    }

    pub fn empty() -> ChanBody {
        ChanBody::full(Bytes::new())
    }
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        let Some(rx) = &mut self.rx else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(None) => {
                self.rx = None;
                if self.done.load(Ordering::Acquire) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the session ended before the body was complete",
                    ))))
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && (self.rx.is_none() || self.len == Some(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl BodyTx {
    /// Queues one chunk; fails once hyper stopped reading (the peer went away).
    pub async fn send(&mut self, b: Bytes) -> io::Result<()> {
        let Some(tx) = &self.tx else {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "HTTP body already finished"));
        };
        if b.is_empty() {
            return Ok(());
        }
        tx.send(b)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the HTTP peer stopped reading the body"))
    }

    /// Ends the body normally. Dropping a sender without finishing aborts the body instead.
    pub fn finish(&mut self) {
        self.done.store(true, Ordering::Release);
        self.tx = None;
    }
}

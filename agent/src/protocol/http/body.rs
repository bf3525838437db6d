//! The body the agent hands hyper in both directions (listener responses, cluster requests): a channel of chunks fed
//! by a session's pump. It carries an exact length when one is known, and it ends with an error, not a silent
//! truncation, when the feeding side goes away without finishing.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Chunks in flight between a pump and hyper.
const DEPTH: usize = 16;

/// A body hyper reads from.
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
pub fn channel(len: Option<u64>) -> (BodyTx, ChanBody) {
    let (tx, rx) = mpsc::channel(DEPTH);
    let done = Arc::new(AtomicBool::new(false));
    (
        BodyTx {
            tx: Some(tx),
            done: done.clone(),
        },
        ChanBody {
            first: None,
            rx: Some(rx),
            done,
            len,
        },
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

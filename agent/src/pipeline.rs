//! A session's data path: the pumps that move batches between its stages, and the rules for when it is over.
//!
//! The uplink runs `source → ingress[0] → … → destination`, the downlink `destination → egress[0] → … → source`
//! (the original's "demux": a chain stage is used in one direction only). Transform stages are applied inside the
//! pump that carries the data; a pump runs between two real streams. A transform used as the destination loops the
//! uplink into the downlink through an in-process channel.
//!
//! End of stream travels like TCP half-close: a pump that reads EOF shuts its writer down and stops. When the writer
//! cannot carry EOF (a datagram socket), or a pump fails, or the session is idle for too long or cancelled, the whole
//! session ends and every stream is closed.
//!
//! With a route that reconnects (`retry_on: disconnect`/`always`), a stream stage (the destination or a chain stage)
//! that fails, or reaches end of stream while the pump into it still runs, stops the pumps instead
//! ([`EndReason::StageLost`]); the session puts a new stage into the two pumps that touch it ([`replace_stage`]) and
//! runs them again.
//! The pumps only borrow their streams while they run, so stopping them loses at most the batch each had in flight.

use crate::offload::{self, OffloadedFlow};
use crate::protocol::Stage;
use crate::protocol::transform::Transform;
use crate::splice::{Pipe, Sock};
use crate::stream::{Batch, CHANNEL_DEPTH, Reader, Writer};
use crate::sys::BATCH;
use bytes::BytesMut;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use l7mp_api::StreamKind;
use serde_json::Value;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Per-direction message and byte counters of a session, as seen at its source.
#[derive(Debug, Default)]
pub struct Stats {
    pub up_msgs: AtomicU64,
    pub up_bytes: AtomicU64,
    pub down_msgs: AtomicU64,
    pub down_bytes: AtomicU64,
}

impl Stats {
    fn activity(&self) -> u64 {
        self.up_msgs.load(Relaxed) + self.down_msgs.load(Relaxed)
    }
}

/// A byte-stream read at least this large means bulk data: switch the pump to splice(2).
const SPLICE_AFTER: usize = 32 * 1024;

#[derive(Debug, Clone, Copy)]
enum Count {
    None,
    /// Count what this pump reads, as uplink traffic.
    UpIn,
    /// Count what this pump writes, as downlink traffic.
    DownOut,
}

/// Moves batches from one stream to the next, through transforms.
pub struct Pump {
    from: Reader,
    via: Vec<Transform>,
    to: Writer,
    metadata: Arc<Value>,
    stats: Arc<Stats>,
    count: Count,
    /// Cut read messages to at most this many bytes: a byte stream feeding a writer with a datagram size limit.
    cut: Option<usize>,
    /// The stage (a stream other than the source) this pump reads, if any.
    out_of: Option<StageRef>,
    /// The stage (a stream other than the source) this pump writes, if any.
    into: Option<StageRef>,
    /// The reader reached end of stream and the writer was shut down: the pump does not run again.
    done: bool,
    /// The batch being written, kept here so that a pump stopped midway (to reconnect the destination) resumes
    /// where it was instead of losing or cutting it.
    batch: Batch,
    /// `batch` is being written (a stopped run left it half written), not being read.
    writing: bool,
    arena: BytesMut,
    /// The splice buffer once the pump carries bulk data (what it holds is written out first when the pump resumes).
    pipe: Option<Pipe>,
    /// The kernel flow that also writes into `to` (a TCP splice): end of stream waits until it has handed over
    /// everything it carried.
    kernel: Option<Arc<dyn OffloadedFlow>>,
}

/// One end of a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Read,
    Write,
}

/// A stream stage of a session other than its source: the destination, or the cluster at this index of the route's
/// ingress or egress chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageRef {
    Destination,
    Ingress(usize),
    Egress(usize),
}

/// How a pump stopped.
pub enum PumpEnd {
    /// The reader reached end of stream. The writer stays in the pump, open, so the session can pass the EOF on (or,
    /// when the session is over anyway, just close it: a close sends the FIN too, one syscall fewer).
    Eof,
    Failed(io::Error, Side),
}

impl Pump {
    /// Runs the pump until its reader ends or a stream fails. Dropping the future midway loses nothing: the batch
    /// being written (or the splice pipe) stays in the pump and goes out first when it runs again.
    async fn run(&mut self) -> PumpEnd {
        let end = if self.pipe.is_some() {
            self.run_spliced().await
        } else {
            self.run_copying().await
        };
        if let (PumpEnd::Eof, Some(k), Some(to)) = (&end, &self.kernel, Sock::of_writer(&self.to)) {
            offload::flushed(k.as_ref(), to.as_fd()).await;
        }
        end
    }

    /// Socket to socket with nothing to transform: splice(2), no copy through user space.
    async fn run_spliced(&mut self) -> PumpEnd {
        loop {
            let (Some(from), Some(to), Some(pipe)) = (
                Sock::of_reader(&self.from),
                Sock::of_writer(&self.to),
                self.pipe.as_mut(),
            ) else {
                return PumpEnd::Failed(io::Error::other("splice pump lost its sockets"), Side::Read);
            };
            // What the last fill (or a stopped run) left in the pipe.
            if let Err(e) = pipe.drain(to).await {
                return PumpEnd::Failed(e, Side::Write);
            }
            let n = match pipe.fill(from).await {
                Ok(0) => return PumpEnd::Eof,
                Ok(n) => n as u64,
                Err(e) => return PumpEnd::Failed(e, Side::Read),
            };
            match self.count {
                Count::UpIn => {
                    self.stats.up_msgs.fetch_add(1, Relaxed);
                    self.stats.up_bytes.fetch_add(n, Relaxed);
                }
                Count::DownOut => {
                    self.stats.down_msgs.fetch_add(1, Relaxed);
                    self.stats.down_bytes.fetch_add(n, Relaxed);
                }
                Count::None => {}
            }
        }
    }

    /// Reads batches, transforms them and writes them on. A pump between two stream sockets with nothing to
    /// transform switches to splice(2) once a read shows bulk data (a full chunk); short exchanges (a request, a
    /// reply) never pay for the pipe.
    async fn run_copying(&mut self) -> PumpEnd {
        let spliceable =
            self.via.is_empty() && Sock::of_reader(&self.from).is_some() && Sock::of_writer(&self.to).is_some();
        // A batch a stopped run did not finish writing goes first; one it was reading is dropped (readers fill a
        // batch at once, so that is nothing).
        if self.writing {
            if let Err(e) = self.to.write(&mut self.batch).await {
                return PumpEnd::Failed(e, Side::Write);
            }
            self.writing = false;
        }
        self.batch.clear();
        loop {
            let batch = &mut self.batch;
            match self.from.read(&mut self.arena, batch).await {
                Ok(true) => {}
                Ok(false) => return PumpEnd::Eof,
                Err(e) => return PumpEnd::Failed(e, Side::Read),
            }
            if let Count::UpIn = self.count {
                self.stats.up_msgs.fetch_add(batch.len() as u64, Relaxed);
                self.stats
                    .up_bytes
                    .fetch_add(batch.iter().map(|m| m.len() as u64).sum(), Relaxed);
            }
            if let Some(max) = self.cut {
                cut(batch, max);
            }
            for t in &self.via {
                t.apply(batch, &self.metadata);
            }
            if batch.is_empty() {
                continue;
            }
            if let Count::DownOut = self.count {
                self.stats.down_msgs.fetch_add(batch.len() as u64, Relaxed);
                self.stats
                    .down_bytes
                    .fetch_add(batch.iter().map(|m| m.len() as u64).sum(), Relaxed);
            }
            let bulk = spliceable && batch.first().is_some_and(|m| m.len() >= SPLICE_AFTER);
            self.writing = true;
            if let Err(e) = self.to.write(batch).await {
                return PumpEnd::Failed(e, Side::Write);
            }
            self.writing = false;
            batch.clear();
            if bulk && let Ok(pipe) = Pipe::new() {
                self.pipe = Some(pipe);
                return self.run_spliced().await;
            }
        }
    }
}

/// Cuts every message longer than `max` into pieces of at most `max` bytes (no copy). A byte stream's chunks are
/// arbitrary (a read may return 64 KiB or more), while a datagram must fit the socket's limit, e.g. a UDP payload.
fn cut(batch: &mut Batch, max: usize) {
    if batch.iter().all(|m| m.len() <= max) {
        return;
    }
    let mut pieces = Vec::with_capacity(batch.len() + 2);
    for mut m in batch.drain(..) {
        while m.len() > max {
            pieces.push(m.split_to(max));
        }
        pieces.push(m);
    }
    *batch = pieces;
}

/// The stages of a connected session, in route order.
pub struct Stages {
    pub source: (Reader, Writer),
    pub ingress: Vec<Stage>,
    pub destination: Stage,
    pub egress: Vec<Stage>,
}

/// Lays out the pumps of a session. `boundary_loss` is called for every pump that feeds a datagram stream into a
/// byte stream (message boundaries are lost there).
pub fn assemble(stages: Stages, metadata: Arc<Value>, stats: Arc<Stats>, boundary_loss: impl FnMut()) -> Vec<Pump> {
    let mut a = Assembler {
        pumps: Vec::new(),
        metadata,
        stats,
        boundary_loss,
    };
    let (src_r, src_w) = stages.source;
    // Uplink: source → ingress… → destination.
    let up = a.through(Lane::new(src_r, Count::UpIn), stages.ingress, StageRef::Ingress);
    let down = match stages.destination {
        Stage::Stream { reader, writer, .. } => {
            a.pump(up, writer, Some(StageRef::Destination));
            Lane {
                stage: Some(StageRef::Destination),
                ..Lane::new(reader, Count::None)
            }
        }
        Stage::Transform(t) => {
            // The destination loops the uplink back into the downlink through a channel.
            let kind = up.kind;
            let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
            let mut up = up;
            up.via.push(t);
            a.pump(up, Writer::Chan(Some(tx)), None);
            Lane {
                kind,
                ..Lane::new(Reader::Chan(rx), Count::None)
            }
        }
    };
    // Downlink: destination → egress… → source.
    let mut down = a.through(down, stages.egress, StageRef::Egress);
    down.count = Count::DownOut;
    a.pump(down, src_w, None);
    a.pumps
}

/// Tells the pumps that write into a stream socket that `flow` (a kernel splice) writes into it too: their end of
/// stream then waits for the kernel's bytes ([`offload::flushed`]) before the FIN goes out.
pub fn attach_offload(pumps: &mut [Pump], flow: &Arc<dyn OffloadedFlow>) {
    for p in pumps.iter_mut().filter(|p| Sock::of_writer(&p.to).is_some()) {
        p.kernel = Some(flow.clone());
    }
}

/// Puts a reopened stage in place of the one that was lost: its writer into the pump that fed the old one, its
/// reader into the pump that read it. Returns `false` (and closes the new stage) when the pumps have no such stream
/// stage or the new stage is not a stream.
pub fn replace_stage(pumps: &mut [Pump], which: StageRef, stage: Stage) -> bool {
    let Stage::Stream { reader, writer, .. } = stage else {
        return false;
    };
    let up = pumps.iter().position(|p| p.into == Some(which));
    let down = pumps.iter().position(|p| p.out_of == Some(which));
    let (Some(up), Some(down)) = (up, down) else {
        return false;
    };
    if let Some(p) = pumps.get_mut(up) {
        p.to = writer;
        p.done = false;
        // What was on its way to the lost stage is dropped (a new upstream should not get half a message).
        p.batch.clear();
        p.writing = false;
        p.pipe = None;
    }
    if let Some(p) = pumps.get_mut(down) {
        p.from = reader;
        p.done = false;
    }
    true
}

/// Data on its way to the next real stream: where it is read, the transforms it still has to pass, and the kind of
/// stream it came from (an in-process channel keeps the kind of what feeds it).
struct Lane {
    reader: Reader,
    /// The stage the reader belongs to (`None`: the source, or an in-process channel).
    stage: Option<StageRef>,
    kind: StreamKind,
    via: Vec<Transform>,
    count: Count,
}

impl Lane {
    fn new(reader: Reader, count: Count) -> Lane {
        Lane {
            kind: reader.kind(),
            reader,
            stage: None,
            via: Vec::new(),
            count,
        }
    }
}

struct Assembler<F> {
    pumps: Vec<Pump>,
    metadata: Arc<Value>,
    stats: Arc<Stats>,
    boundary_loss: F,
}

impl<F: FnMut()> Assembler<F> {
    /// Ends `lane` in a pump into `to`, the writer of stage `into` (`None`: the source, or a channel).
    fn pump(&mut self, lane: Lane, to: Writer, into: Option<StageRef>) {
        if lane.kind == StreamKind::Datagram && to.kind() == StreamKind::ByteStream {
            (self.boundary_loss)();
        }
        // Datagrams keep their size (one too large for the writer is dropped there); a byte stream is cut to fit.
        let cut = match lane.kind {
            StreamKind::ByteStream => to.max_message(),
            StreamKind::Datagram => None,
        };
        self.pumps.push(Pump {
            from: lane.reader,
            via: lane.via,
            to,
            metadata: self.metadata.clone(),
            stats: self.stats.clone(),
            count: lane.count,
            cut,
            out_of: lane.stage,
            into,
            done: false,
            batch: Vec::with_capacity(BATCH),
            writing: false,
            arena: BytesMut::new(),
            pipe: None,
            kernel: None,
        });
    }

    /// Passes `lane` through a chain: transforms join the lane, each stream stage ends it in a pump and starts a
    /// new lane at its reader.
    fn through(&mut self, mut lane: Lane, chain: Vec<Stage>, at: fn(usize) -> StageRef) -> Lane {
        for (i, stage) in chain.into_iter().enumerate() {
            match stage {
                Stage::Transform(t) => lane.via.push(t),
                Stage::Stream { reader, writer, .. } => {
                    self.pump(lane, writer, Some(at(i)));
                    lane = Lane {
                        stage: Some(at(i)),
                        ..Lane::new(reader, Count::None)
                    };
                }
            }
        }
        lane
    }
}

/// Why a session's data path stopped.
#[derive(Debug)]
pub enum EndReason {
    /// Both directions reached end of stream, or one did and the other side cannot be told.
    Finished,
    Idle(Duration),
    Cancelled,
    Failed(io::Error),
    /// A stream stage failed (`Some`) or closed (`None`) while the data towards it still flows, and the caller asked
    /// to reconnect it: the pumps are stopped but every stream is still open.
    StageLost(StageRef, Option<io::Error>),
}

/// When a session with no traffic ends.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// No traffic in either direction for this long (UDP sessions).
    pub idle: Option<Duration>,
    /// Once one direction has ended (half-close), no traffic for this long: a peer that closed completely cannot be
    /// told apart from one that only stopped sending, and this keeps such sessions from lingering for ever.
    pub half_closed: Duration,
}

async fn drive(p: &mut Pump) -> (&mut Pump, PumpEnd) {
    let end = p.run().await;
    (p, end)
}

/// Runs the pumps until the session is over. The streams stay open in `pumps` (the caller closes them by dropping
/// the pumps). A stage for which `reconnect` says yes that fails, or reaches end of stream while the pump into it
/// still runs, stops the pumps with [`EndReason::StageLost`] instead of ending the session: the caller may put a new
/// stage in place ([`replace_stage`]) and run the pumps again.
pub async fn run(
    pumps: &mut [Pump],
    stats: &Stats,
    timeouts: Timeouts,
    cancel: &CancellationToken,
    reconnect: &(dyn Fn(StageRef) -> bool + Sync),
) -> EndReason {
    // Stages whose input ended (the pump into them reached end of stream): their own end of stream is a normal one.
    // (Only reconnectable ones are listed: nothing is allocated for a session that never reconnects.)
    let mut input_ended: Vec<StageRef> = pumps
        .iter()
        .filter(|p| p.done)
        .filter_map(|p| p.into)
        .filter(|s| reconnect(*s))
        .collect();
    let half_closed = pumps.iter().any(|p| p.done);
    // The pumps run inside the session's task (no task per pump): only the pump that was woken is polled.
    let mut set: FuturesUnordered<_> = pumps
        .iter_mut()
        .filter(|p| !p.done)
        .map(|p| Box::pin(drive(p)))
        .collect();
    let ticker_for = |d: Duration| tokio::time::interval((d / 4).max(Duration::from_millis(10)));
    let mut limit = timeouts.idle;
    if half_closed && limit.is_none_or(|l| timeouts.half_closed < l) {
        limit = Some(timeouts.half_closed);
    }
    let mut ticker = limit.map(ticker_for);
    let mut seen = stats.activity();
    let mut last_change = Instant::now();
    loop {
        let tick = async {
            match &mut ticker {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break EndReason::Cancelled,
            _ = tick => {
                let now = stats.activity();
                if now != seen {
                    seen = now;
                    last_change = Instant::now();
                } else if let Some(limit) = limit && last_change.elapsed() >= limit {
                    break EndReason::Idle(limit);
                }
            }
            r = set.next() => match r {
                None => break EndReason::Finished,
                Some((pump, PumpEnd::Eof)) => {
                    if let Some(s) = pump.out_of && !input_ended.contains(&s) && reconnect(s) {
                        // The stage closed while data towards it still flows: a disconnect.
                        break EndReason::StageLost(s, None);
                    }
                    if let Some(s) = pump.into
                        && reconnect(s)
                    {
                        input_ended.push(s);
                    }
                    if set.is_empty() {
                        if pump.to.needs_graceful_close() {
                            pump.to.shutdown().await;
                        }
                        break EndReason::Finished;
                    }
                    if !pump.to.shutdown().await {
                        break EndReason::Finished;
                    }
                    // The writer stays open in the pump until the session ends (closing it would close the socket).
                    pump.done = true;
                    let half = timeouts.half_closed;
                    if limit.is_none_or(|l| half < l) {
                        limit = Some(half);
                        ticker = Some(ticker_for(half));
                        last_change = Instant::now();
                    }
                }
                Some((pump, PumpEnd::Failed(e, side))) => {
                    let stage = match side {
                        Side::Read => pump.out_of,
                        Side::Write => pump.into,
                    };
                    if let Some(s) = stage && !input_ended.contains(&s) && reconnect(s) {
                        break EndReason::StageLost(s, Some(e));
                    }
                    break EndReason::Failed(e);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn cut_splits_only_what_is_too_long_and_keeps_the_bytes() {
        let long = Bytes::from((0..=255u8).cycle().take(25).collect::<Vec<u8>>());
        let mut batch = vec![Bytes::from_static(b"short"), long.clone(), Bytes::from_static(b"tail")];
        cut(&mut batch, 10);
        let lens: Vec<usize> = batch.iter().map(Bytes::len).collect();
        assert_eq!(lens, [5, 10, 10, 5, 4]);
        assert_eq!(batch[1..4].concat(), long.to_vec());
        let mut fits = vec![Bytes::from_static(b"0123456789")];
        cut(&mut fits, 10);
        assert_eq!(fits, [Bytes::from_static(b"0123456789")]);
    }
}

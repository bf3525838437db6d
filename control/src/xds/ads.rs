//! The ADS gRPC endpoint (`envoy.service.discovery.v3.AggregatedDiscoveryService`, both methods), routed by hand
//! rather than through envoy-types' generated server, for what an idle agent stream costs:
//!
//! - a codec with small buffers ([`CODEC_BUFFER`], grown on demand) instead of tonic's 8 KiB per direction;
//! - no task and no channel per stream: the response body *is* the stream's driver. Each time hyper polls it,
//!   it processes the requests that arrived and the node's latest snapshot through the stream's
//!   [`StreamState`] and yields the responses that are due. When the client goes away, hyper drops the body
//!   and with it the stream's state (the disconnect bookkeeping runs in a guard's `Drop`).
//!
//! The protocol logic stays in [`super::server`]; this module only moves messages.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::{Stream, StreamExt, stream};
use tokio::sync::watch;
use tokio::time::Sleep;
use tonic::codec::{BufferSettings, Codec};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstDecoder, ProstEncoder};
use tracing::{debug, info, warn};

use super::NodeInfo;
use super::cache::SnapshotRef;
use super::server::{Inner, Mode, NormRequest, Outgoing, StreamPermit, StreamState};
use crate::tls::PeerIdentity;

/// Initial codec buffer per direction and stream, bytes; a larger message grows it. Discovery requests (ACKs)
/// are a few hundred bytes; tonic's default of 8 KiB per direction would be most of an idle stream's memory.
pub const CODEC_BUFFER: usize = 1024;

/// Encoded responses are handed to HTTP/2 in chunks of about this size.
const YIELD_THRESHOLD: usize = 32 * 1024;

const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";

/// A stream of responses, as tonic sends it.
type OutStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The ADS gRPC service (what [`super::XdsServer::ads_service`] returns; add it to a tonic router).
#[derive(Clone)]
pub struct AdsService {
    inner: Arc<Inner>,
}

impl AdsService {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        match req.uri().path().strip_prefix("/").and_then(|p| p.strip_prefix(SERVICE)) {
            Some("/StreamAggregatedResources") => Box::pin(serve::<SotwWire, B>(inner, req)),
            Some("/DeltaAggregatedResources") => Box::pin(serve::<DeltaWire, B>(inner, req)),
            _ => Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(Status::GRPC_STATUS, (tonic::Code::Unimplemented as i32).into());
                headers.insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
                Ok(response)
            }),
        }
    }
}

async fn serve<W: Wire, B>(
    inner: Arc<Inner>,
    req: http::Request<B>,
) -> Result<http::Response<tonic::body::Body>, std::convert::Infallible>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let max = Some(inner.config.max_message_size);
    let mut grpc = Grpc::new(SmallCodec::<W::Resp, W::Req>(PhantomData)).apply_max_message_size_config(max, max);
    Ok(grpc.streaming(Method::<W>(inner, PhantomData), req).await)
}

/// prost encoding with [`CODEC_BUFFER`]-sized buffers.
struct SmallCodec<E, D>(PhantomData<fn() -> (E, D)>);

impl<E, D> Codec for SmallCodec<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProstEncoder<E>;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(CODEC_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(CODEC_BUFFER, YIELD_THRESHOLD))
    }
}

/// One of the two ADS methods.
struct Method<W>(Arc<Inner>, PhantomData<fn() -> W>);

impl<W: Wire> StreamingService<W::Req> for Method<W> {
    type Response = W::Resp;
    type ResponseStream = OutStream<W::Resp>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<W::Req>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let permit = inner.admit()?;
            let stream_id = inner.next_stream.fetch_add(1, Ordering::SeqCst);
            // Over mTLS, the client certificate's identity (checked against the node id of the first request).
            let peer = PeerIdentity::from_chain(request.peer_certs().as_deref().map(Vec::as_slice));
            let start = Phase::<W>::Start(Box::new(Starting {
                inner,
                inbound: request.into_inner(),
                stream_id,
                permit,
                peer,
            }));
            let responses = stream::unfold(start, Phase::step).flat_map(stream::iter);
            Ok(Response::new(Box::pin(responses) as OutStream<W::Resp>))
        })
    }
}

/// The two message sets of ADS.
pub(super) trait Wire: Send + 'static {
    type Req: prost::Message + Default + Send + 'static;
    type Resp: prost::Message + Send + 'static;
    const MODE: Mode;
    fn node(r: &Self::Req) -> Option<&Node>;
    fn norm(r: &Self::Req) -> NormRequest;
    fn resp(o: Outgoing) -> Option<Self::Resp>;
}

pub(super) struct SotwWire;

impl Wire for SotwWire {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    const MODE: Mode = Mode::Sotw;
    fn node(r: &DiscoveryRequest) -> Option<&Node> {
        r.node.as_ref()
    }
    fn norm(r: &DiscoveryRequest) -> NormRequest {
        r.into()
    }
    fn resp(o: Outgoing) -> Option<DiscoveryResponse> {
        match o {
            Outgoing::Sotw(r) => Some(r),
            Outgoing::Delta(_) => None,
        }
    }
}

pub(super) struct DeltaWire;

impl Wire for DeltaWire {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    const MODE: Mode = Mode::Delta;
    fn node(r: &DeltaDiscoveryRequest) -> Option<&Node> {
        r.node.as_ref()
    }
    fn norm(r: &DeltaDiscoveryRequest) -> NormRequest {
        r.into()
    }
    fn resp(o: Outgoing) -> Option<DeltaDiscoveryResponse> {
        match o {
            Outgoing::Delta(r) => Some(r),
            Outgoing::Sotw(_) => None,
        }
    }
}

/// Where a stream is: waiting for its first request, running, or over.
enum Phase<W: Wire> {
    Start(Box<Starting<W>>),
    Run(Box<Running<W>>),
    Done,
}

/// A stream that has not sent its first request yet.
struct Starting<W: Wire> {
    inner: Arc<Inner>,
    inbound: Streaming<W::Req>,
    stream_id: u64,
    permit: StreamPermit,
    /// The client certificate's identity (`None`: plaintext).
    peer: Option<PeerIdentity>,
}

/// A batch of responses to send (an `Err` ends the stream after it).
type Batch<W> = Vec<Result<<W as Wire>::Resp, Status>>;

impl<W: Wire> Phase<W> {
    /// Runs the stream until it has responses to send (`Some`) or is over (`None`).
    async fn step(self) -> Option<(Batch<W>, Phase<W>)> {
        match self {
            Phase::Start(s) => match Running::open(*s).await {
                Ok(running) => running.next().await,
                Err(Some(status)) => Some((vec![Err(status)], Phase::Done)),
                Err(None) => None,
            },
            Phase::Run(running) => running.next().await,
            Phase::Done => None,
        }
    }
}

/// A running stream: the protocol state and what wakes it.
struct Running<W: Wire> {
    inner: Arc<Inner>,
    inbound: Streaming<W::Req>,
    st: StreamState,
    node_id: String,
    stream_id: u64,
    snap_rx: watch::Receiver<SnapshotRef>,
    shutdown_rx: watch::Receiver<bool>,
    /// Until it fires, a stream whose node has no snapshot yet waits for one instead of answering from an empty
    /// snapshot. `None` once it fired.
    wait: Option<Pin<Box<Sleep>>>,
    had_snapshot: bool,
    /// Drop order: the guard reports the disconnect, then the permit frees the stream slot.
    _conn: ConnGuard,
    _permit: StreamPermit,
}

impl<W: Wire> Running<W> {
    /// Waits for the first request (it must name the node) and registers the stream. `Err(Some(status))`: end the
    /// stream with that status; `Err(None)`: it is over already (client gone, server shutting down).
    async fn open(start: Starting<W>) -> Result<Box<Running<W>>, Option<Status>> {
        let Starting {
            inner,
            mut inbound,
            stream_id,
            permit,
            peer,
        } = start;
        let mut shutdown_rx = inner.shutdown.subscribe();
        let first = tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(r)) => r,
                _ => return Err(None),
            },
            () = tokio::time::sleep(inner.config.first_request_timeout) => {
                return Err(Some(Status::deadline_exceeded("no xDS request in time")));
            }
            _ = shutdown_rx.changed() => return Err(None),
        };
        let Some(info) = W::node(&first)
            .filter(|n| !n.id.is_empty())
            .map(|n| NodeInfo::from_node(n, stream_id))
        else {
            return Err(Some(Status::invalid_argument(
                "the first xDS request must carry node.id",
            )));
        };
        // The node identity is bound to the client certificate: a node cannot ask for another node's configuration.
        if let Some(Err(reason)) = peer.as_ref().map(|p| p.check_node(&info.id)) {
            warn!(node = %info.id, stream = stream_id, "xDS stream refused: {reason}");
            return Err(Some(Status::permission_denied(reason)));
        }
        let node_id = info.id.clone();
        info!(node = %node_id, stream = stream_id, mode = ?W::MODE, "xDS stream open");
        inner.status.connect(&info);
        // Disconnect bookkeeping runs however the stream ends (also if a hook panics).
        let conn = ConnGuard {
            inner: inner.clone(),
            node_id: node_id.clone(),
            stream_id,
        };
        inner.hooks.connected(&info);
        let mut st = StreamState::new(
            W::MODE,
            &node_id,
            stream_id,
            inner.config.type_order.clone(),
            inner.status.clone(),
        );
        st.handle(W::norm(&first));
        Ok(Box::new(Running {
            snap_rx: inner.cache.watch(&node_id),
            wait: Some(Box::pin(tokio::time::sleep(inner.config.snapshot_wait))),
            inner,
            inbound,
            st,
            node_id,
            stream_id,
            shutdown_rx,
            had_snapshot: false,
            _conn: conn,
            _permit: permit,
        }))
    }

    /// Processes requests and snapshot changes until there is something to send or the stream is over.
    async fn next(mut self: Box<Self>) -> Option<(Batch<W>, Phase<W>)> {
        loop {
            if *self.shutdown_rx.borrow() {
                return None;
            }
            let current = self.snap_rx.borrow_and_update().clone();
            self.had_snapshot |= current.is_some();
            let snap = match current {
                Some(s) => Some(s),
                None if self.wait.is_none() || self.had_snapshot => Some(self.inner.empty.clone()),
                None => None,
            };
            if let Some(snap) = snap {
                let batch: Batch<W> = self
                    .st
                    .schedule(&snap)
                    .into_iter()
                    .filter_map(W::resp)
                    .map(Ok)
                    .collect();
                if !batch.is_empty() {
                    return Some((batch, Phase::Run(self)));
                }
            }
            let this = &mut *self;
            tokio::select! {
                msg = this.inbound.message() => match msg {
                    Ok(Some(req)) => this.st.handle(W::norm(&req)),
                    Ok(None) => return None,
                    Err(e) => {
                        debug!(node = %this.node_id, stream = this.stream_id, error = %e, "xDS stream error");
                        return None;
                    }
                },
                r = this.snap_rx.changed() => {
                    if r.is_err() {
                        // The cache dropped the node's channel: treat as removal.
                        this.had_snapshot = true;
                        this.snap_rx = this.inner.cache.watch(&this.node_id);
                    }
                }
                () = async { if let Some(w) = this.wait.as_mut() { w.await } }, if this.wait.is_some() => {
                    this.wait = None;
                    if this.snap_rx.borrow().is_none() {
                        debug!(node = %this.node_id, "no snapshot yet, answering from an empty one");
                    }
                }
                _ = this.shutdown_rx.changed() => return None,
            }
        }
    }
}

/// Reports the disconnect when a stream ends, however it ends.
struct ConnGuard {
    inner: Arc<Inner>,
    node_id: String,
    stream_id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        info!(node = %self.node_id, stream = self.stream_id, "xDS stream closed");
        if self.inner.status.disconnect(&self.node_id) {
            self.inner.hooks.disconnected(&self.node_id);
        }
    }
}

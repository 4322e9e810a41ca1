//! The frontend's side of sasl-auth's `Exchange` stream.
//!
//! A unary gRPC call is an HTTP/2 stream of its own: request headers,
//! response headers and trailers to encode and parse, a task on each side,
//! and tonic's Buffer hop on ours. On the auth path that was most of what
//! sasl-auth spent per step (BENCHMARKS.md). Here every Start and Step is
//! one message on one of a few long-lived streams ("lanes"), answered by
//! call number; the AUTH span's context rides in the message.
//!
//! Balancing stays per request: the frontend keeps [`LANES`] streams to
//! each replica the discovery of `authrelay_proto::channel` knows (the
//! same resolved, probed set the balanced channel uses) and sends each
//! call to the less busy of two replicas (p2c on calls in flight), then
//! round-robin over that replica's lanes. A lane whose stream ends or
//! breaks is replaced on its next call; a replica whose stream cannot be
//! opened is passed over for a second. A request a cleanly ended stream
//! left unanswered was never run (sasl-auth answers all it read before it
//! ends: proto/sasl.proto) and is sent again, so a sasl-auth that shuts
//! down costs no client an AUTH.
//!
//! A sasl-auth older than the stream answers UNIMPLEMENTED: then calls go
//! unary for [`UNARY_FOR`] before the stream is tried again, so a rolling
//! upgrade in either order keeps working.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authrelay_proto::channel::Replica;
use authrelay_proto::sasl::v1 as spb;
use authrelay_proto::sasl::v1::exchange_request::Request as Call;
use authrelay_proto::sasl::v1::sasl_auth_client::SaslAuthClient;
use authrelay_telemetry::grpc::{Traced, status_name, traced};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use tracing::Instrument;

/// What sasl-auth's `Exchange` answers with, named so that an in-process
/// sasl-auth can be held as a `dyn SaslAuth`.
pub type ExchangeAnswers = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<spb::ExchangeResponse, Status>> + Send + 'static>,
>;

/// Streams kept open to each replica: more than one, so that no single
/// stream's flow-control window is what a burst waits on.
pub const LANES: usize = 2;
/// How long calls go unary after sasl-auth did not know the stream.
pub const UNARY_FOR: Duration = Duration::from_secs(60);
/// How long a replica whose stream could not be opened is passed over.
const PASS_OVER: Duration = Duration::from_secs(1);
/// Requests queued for one lane before callers wait.
const QUEUED: usize = 1024;

enum Answer {
    Done(spb::StepResponse),
    /// The stream ended cleanly first: the request was never run.
    NotRun,
    Broken(Status),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>;

/// One open stream.
struct Lane {
    tx: mpsc::Sender<spb::ExchangeRequest>,
    pending: Pending,
    next_call: AtomicU64,
    /// Cleared by the lane's reader when the stream ends, before it
    /// answers what is pending.
    open: Arc<AtomicBool>,
}

/// One replica and its lanes.
struct Node {
    id: u64,
    client: SaslAuthClient<Traced>,
    lanes: Vec<tokio::sync::Mutex<Option<Arc<Lane>>>>,
    next_lane: AtomicUsize,
    in_flight: AtomicUsize,
    passed_over_until: Mutex<Option<Instant>>,
}

impl Node {
    fn new(r: &Replica) -> Node {
        Node {
            id: r.id,
            client: SaslAuthClient::new(traced(r.channel.clone())),
            lanes: (0..LANES).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next_lane: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            passed_over_until: Mutex::new(None),
        }
    }

    fn passed_over(&self) -> bool {
        matches!(*lock(&self.passed_over_until), Some(t) if Instant::now() < t)
    }
}

/// Counts a call in flight on a node for as long as it lives.
struct InFlight(Arc<Node>);

impl InFlight {
    fn new(node: Arc<Node>) -> Self {
        node.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(node)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Opened {
    Lane(Arc<Lane>),
    Unimplemented,
}

/// sasl-auth's Start and Step over [`LANES`] streams per replica.
pub struct ExchangeClient {
    /// Unary calls over the balanced channel, for a sasl-auth without the
    /// stream.
    unary: SaslAuthClient<Traced>,
    replicas: Mutex<watch::Receiver<Arc<Vec<Replica>>>>,
    nodes: Mutex<Arc<Vec<Arc<Node>>>>,
    timeout: Duration,
    unary_until: Mutex<Option<Instant>>,
}

impl ExchangeClient {
    /// `unary` for a sasl-auth that predates the stream; `replicas` as
    /// `authrelay_proto::channel::replica_set` follows them; `timeout`
    /// bounds each call, as the channel's does a unary call.
    pub fn new(
        unary: SaslAuthClient<Traced>,
        replicas: watch::Receiver<Arc<Vec<Replica>>>,
        timeout: Duration,
    ) -> Self {
        let nodes = replicas
            .borrow()
            .iter()
            .map(|r| Arc::new(Node::new(r)))
            .collect();
        ExchangeClient {
            unary,
            replicas: Mutex::new(replicas),
            nodes: Mutex::new(Arc::new(nodes)),
            timeout,
            unary_until: Mutex::new(None),
        }
    }

    pub async fn start(&self, r: spb::StartRequest) -> Result<spb::StepResponse, Status> {
        self.call(Call::Start(r)).await
    }

    pub async fn step(&self, r: spb::StepRequest) -> Result<spb::StepResponse, Status> {
        self.call(Call::Step(r)).await
    }

    async fn call(&self, request: Call) -> Result<spb::StepResponse, Status> {
        let unary = matches!(*lock(&self.unary_until), Some(t) if Instant::now() < t);
        if unary {
            return self.unary(request).await;
        }
        let op = match &request {
            Call::Start(_) => "sasl-auth/Start",
            Call::Step(_) => "sasl-auth/Step",
        };
        let started = Instant::now();
        let result = match self.streamed(request).await {
            Ok(r) => r,
            Err(request) => return self.unary(request).await,
        };
        let status = match &result {
            Ok(_) => "OK",
            Err(s) => status_name(s.code()),
        };
        authrelay_telemetry::metrics::rpc(op, status, started.elapsed());
        result
    }

    /// The replicas now, following the discovery's changes: a replica that
    /// stays keeps its lanes.
    fn nodes(&self) -> Arc<Vec<Arc<Node>>> {
        let mut rx = lock(&self.replicas);
        if !rx.has_changed().unwrap_or(false) {
            return lock(&self.nodes).clone();
        }
        let now = rx.borrow_and_update().clone();
        let mut nodes = lock(&self.nodes);
        let fresh: Vec<Arc<Node>> = now
            .iter()
            .map(|r| {
                nodes
                    .iter()
                    .find(|n| n.id == r.id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Node::new(r)))
            })
            .collect();
        *nodes = Arc::new(fresh);
        nodes.clone()
    }

    /// The less busy of two replicas (p2c), leaving out one that could
    /// not be reached a moment ago unless nothing else is left.
    fn pick(&self) -> Option<Arc<Node>> {
        let nodes = self.nodes();
        let usable: Vec<&Arc<Node>> = nodes.iter().filter(|n| !n.passed_over()).collect();
        let from: Vec<&Arc<Node>> = if usable.is_empty() {
            nodes.iter().collect()
        } else {
            usable
        };
        match from.len() {
            0 => None,
            1 => Some(from[0].clone()),
            n => {
                use rand::Rng;
                let mut rng = rand::thread_rng();
                let a = rng.gen_range(0..n);
                let b = (a + rng.gen_range(1..n)) % n;
                let (x, y) = (from[a], from[b]);
                let busy = |n: &Node| n.in_flight.load(Ordering::Relaxed);
                Some(if busy(y) < busy(x) { y } else { x }.clone())
            }
        }
    }

    /// The answer over a lane; `Err(request)` when sasl-auth does not
    /// know the stream (the caller goes unary).
    async fn streamed(&self, request: Call) -> Result<Result<spb::StepResponse, Status>, Call> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let traceparent = authrelay_telemetry::traceparent();
        let mut last = Status::unavailable("sasl-auth: no replica known");
        // More than one try: for a replica that cannot be reached, and for
        // a request a lane never ran (its stream ended before reading it).
        // Either way that replica is going or gone: the next try passes it
        // over, so its other lanes (ending too) are not tried in turn.
        let pass_over =
            |node: &Node| *lock(&node.passed_over_until) = Some(Instant::now() + PASS_OVER);
        for _ in 0..4 {
            let Some(node) = self.pick() else { break };
            let _counted = InFlight::new(node.clone());
            let lane = match self.lane(&node, deadline).await {
                Ok(Opened::Lane(l)) => l,
                Ok(Opened::Unimplemented) => return Err(request),
                Err(s) if s.code() == Code::DeadlineExceeded => return Ok(Err(s)),
                Err(s) => {
                    pass_over(&node);
                    last = s;
                    continue;
                }
            };
            let call = lane.next_call.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            lock(&lane.pending).insert(call, tx);
            // The reader clears `open` before it answers what is pending:
            // a call added after that would wait forever.
            if !lane.open.load(Ordering::SeqCst) {
                lock(&lane.pending).remove(&call);
                pass_over(&node);
                continue;
            }
            let msg = spb::ExchangeRequest {
                call,
                traceparent: traceparent.clone(),
                request: Some(request.clone()),
            };
            if lane.tx.send(msg).await.is_err() {
                lock(&lane.pending).remove(&call);
                lane.open.store(false, Ordering::SeqCst);
                pass_over(&node);
                continue;
            }
            return Ok(match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Answer::Done(r))) => Ok(r),
                Ok(Ok(Answer::NotRun)) => {
                    pass_over(&node);
                    continue;
                }
                Ok(Ok(Answer::Broken(s))) => Err(s),
                Ok(Err(_)) => Err(Status::unavailable("sasl-auth: the stream went away")),
                Err(_) => {
                    lock(&lane.pending).remove(&call);
                    Err(Status::deadline_exceeded(
                        "sasl-auth did not answer in time",
                    ))
                }
            });
        }
        Ok(Err(last))
    }

    /// The node's next lane, round-robin, opened again if its stream ended.
    async fn lane(&self, node: &Node, deadline: tokio::time::Instant) -> Result<Opened, Status> {
        let i = node.next_lane.fetch_add(1, Ordering::Relaxed) % node.lanes.len();
        let mut slot = node.lanes[i].lock().await;
        if let Some(lane) = slot.as_ref().filter(|l| l.open.load(Ordering::SeqCst)) {
            return Ok(Opened::Lane(lane.clone()));
        }
        *slot = None;
        let opened = tokio::time::timeout_at(deadline, self.open(node))
            .await
            .map_err(|_| Status::deadline_exceeded("sasl-auth: stream not opened in time"))??;
        if let Opened::Lane(lane) = &opened {
            *slot = Some(lane.clone());
        }
        Ok(opened)
    }

    async fn open(&self, node: &Node) -> Result<Opened, Status> {
        let (tx, rx) = mpsc::channel(QUEUED);
        let mut client = node.client.clone();
        // Not under the AUTH that happened to open it: the stream outlives it.
        let opened = client
            .exchange(ReceiverStream::new(rx))
            .instrument(tracing::Span::none())
            .await;
        let inbound = match opened {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::Unimplemented => {
                tracing::info!(
                    "sasl-auth does not know the Exchange stream (an older version): unary calls for {}s",
                    UNARY_FOR.as_secs()
                );
                *lock(&self.unary_until) = Some(Instant::now() + UNARY_FOR);
                return Ok(Opened::Unimplemented);
            }
            Err(s) => return Err(s),
        };
        let pending: Pending = Arc::default();
        let open = Arc::new(AtomicBool::new(true));
        tokio::spawn(read(inbound, pending.clone(), open.clone()));
        Ok(Opened::Lane(Arc::new(Lane {
            tx,
            pending,
            next_call: AtomicU64::new(0),
            open,
        })))
    }

    async fn unary(&self, request: Call) -> Result<spb::StepResponse, Status> {
        let mut c = self.unary.clone();
        match request {
            Call::Start(r) => c.start(r).await.map(|r| r.into_inner()),
            Call::Step(r) => c.step(r).await.map(|r| r.into_inner()),
        }
    }
}

/// Hand each answer to its caller until the stream ends; then answer
/// every call still pending: never run after a clean end, failed after a
/// broken one.
async fn read(
    mut inbound: Streaming<spb::ExchangeResponse>,
    pending: Pending,
    open: Arc<AtomicBool>,
) {
    let broken = loop {
        match inbound.message().await {
            Ok(Some(m)) => {
                let Some(tx) = lock(&pending).remove(&m.call) else {
                    // Its caller gave up (deadline).
                    continue;
                };
                let _ = tx.send(match m.response {
                    Some(r) => Answer::Done(r),
                    None => Answer::Broken(Status::internal("sasl-auth sent an empty answer")),
                });
            }
            Ok(None) => break None,
            Err(s) => break Some(s),
        }
    };
    open.store(false, Ordering::SeqCst);
    let left: Vec<_> = lock(&pending).drain().map(|(_, tx)| tx).collect();
    if let Some(s) = &broken {
        tracing::debug!(code = ?s.code(), calls = left.len(), "sasl-auth exchange stream broke");
    }
    for tx in left {
        let _ = tx.send(match &broken {
            None => Answer::NotRun,
            Some(s) => Answer::Broken(Status::unavailable(format!(
                "sasl-auth: the stream broke ({})",
                status_name(s.code())
            ))),
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    //! The rolling-upgrade case, over real gRPC on loopback: a sasl-auth
    //! from before the stream. Its generated router answers a method it
    //! does not know with UNIMPLEMENTED; this one answers Exchange so and
    //! Start/Step as any sasl-auth would shape them.

    use super::*;
    use authrelay_proto::sasl::v1::sasl_auth_server::{SaslAuth, SaslAuthServer};
    use tonic::{Request, Response};

    struct BeforeTheStream;

    fn challenge(id: &str) -> spb::StepResponse {
        spb::StepResponse {
            result: Some(spb::step_response::Result::Challenge(spb::Challenge {
                exchange_id: id.into(),
                data: b"<1.2@x>".to_vec(),
            })),
        }
    }

    #[tonic::async_trait]
    impl SaslAuth for BeforeTheStream {
        async fn list_mechanisms(
            &self,
            _: Request<spb::ListMechanismsRequest>,
        ) -> Result<Response<spb::ListMechanismsResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn start(
            &self,
            _: Request<spb::StartRequest>,
        ) -> Result<Response<spb::StepResponse>, Status> {
            Ok(Response::new(challenge("unary-start")))
        }
        async fn step(
            &self,
            _: Request<spb::StepRequest>,
        ) -> Result<Response<spb::StepResponse>, Status> {
            Ok(Response::new(challenge("unary-step")))
        }
        async fn abort(
            &self,
            _: Request<spb::AbortRequest>,
        ) -> Result<Response<spb::AbortResponse>, Status> {
            Ok(Response::new(spb::AbortResponse {}))
        }
        type ExchangeStream = ExchangeAnswers;
        async fn exchange(
            &self,
            _: Request<Streaming<spb::ExchangeRequest>>,
        ) -> Result<Response<ExchangeAnswers>, Status> {
            Err(Status::unimplemented(""))
        }
    }

    #[tokio::test]
    async fn a_sasl_auth_without_the_stream_is_called_unary() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SaslAuthServer::new(BeforeTheStream))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let timeout = Duration::from_secs(2);
        let urls = [url];
        let channel = authrelay_proto::channel::balanced_channel(&urls, timeout, None).unwrap();
        let replicas = authrelay_proto::channel::replica_set(&urls, timeout, None).unwrap();
        let client = ExchangeClient::new(SaslAuthClient::new(traced(channel)), replicas, timeout);
        let id = |r: spb::StepResponse| match r.result {
            Some(spb::step_response::Result::Challenge(c)) => c.exchange_id,
            other => panic!("{other:?}"),
        };
        let start = client.start(spb::StartRequest::default()).await.unwrap();
        assert_eq!(id(start), "unary-start");
        assert!(
            matches!(*lock(&client.unary_until), Some(t) if t > Instant::now()),
            "the client did not note the old sasl-auth"
        );
        let step = client.step(spb::StepRequest::default()).await.unwrap();
        assert_eq!(id(step), "unary-step");
    }
}

//! The `Exchange` stream: Start and Step as messages on one long-lived
//! gRPC stream per frontend lane (proto/sasl.proto says why).
//!
//! The answers are a stream that reads the requests itself: whoever polls
//! it for the next answer (hyper's task for this HTTP/2 stream) reads
//! what has arrived, starts each request, and drives every request in
//! flight, so a slow step (Argon2id on the blocking pool, a
//! credential-store miss) holds up nothing behind it. No task, channel or
//! spawn per request: each would be another wake-up between threads on
//! the auth path's hottest loop. Each request runs under a span shaped
//! like the one a unary call gets from `TraceLayer`, child of the
//! caller's span named in the request. When sasl-auth shuts down it stops
//! reading, answers what it read, then ends the stream: the frontend
//! re-sends a request left unanswered by a clean end on another stream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use authrelay_proto::sasl::v1 as pb;
use authrelay_proto::sasl::v1::exchange_request::Request as Call;
use authrelay_proto::sasl::v1::sasl_auth_server::SaslAuth;
use futures::stream::{FuturesUnordered, Stream};
use tonic::{Request, Status, Streaming};
use tracing::Instrument;

use crate::{AuthError, SaslService};

/// The answers, in the order they are ready (not the order asked).
pub type Answers = authrelay_grpc_tls::exchange::ExchangeAnswers;

type Running = FuturesUnordered<Pin<Box<dyn Future<Output = pb::ExchangeResponse> + Send>>>;

/// Answer each request of `inbound` until it ends or the service stops.
pub(crate) fn serve(service: SaslService, inbound: Streaming<pb::ExchangeRequest>) -> Answers {
    let mut stopping = service.stopping.subscribe();
    Box::pin(Answering {
        service,
        inbound: Some(inbound),
        running: Running::new(),
        stopping: Box::pin(async move {
            let _ = stopping.wait_for(|s| *s).await;
        }),
    })
}

struct Answering {
    service: SaslService,
    /// `None` once the requests ended or the service stopped reading.
    inbound: Option<Streaming<pb::ExchangeRequest>>,
    running: Running,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Stream for Answering {
    type Item = Result<pb::ExchangeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Stop reading on shutdown; what was read is still answered, and
        // a request left unread was never run (see the proto).
        if this.inbound.is_some() && this.stopping.as_mut().poll(cx).is_ready() {
            this.inbound = None;
        }
        while let Some(inbound) = this.inbound.as_mut() {
            match Pin::new(inbound).poll_next(cx) {
                Poll::Ready(Some(Ok(req))) => {
                    this.running
                        .push(Box::pin(answer(this.service.clone(), req)));
                }
                Poll::Ready(Some(Err(status))) => {
                    tracing::debug!(code = ?status.code(), "exchange stream broke");
                    this.inbound = None;
                }
                Poll::Ready(None) => this.inbound = None,
                Poll::Pending => break,
            }
        }
        match Pin::new(&mut this.running).poll_next(cx) {
            Poll::Ready(Some(answer)) => Poll::Ready(Some(Ok(answer))),
            _ if this.inbound.is_none() && this.running.is_empty() => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

async fn answer(service: SaslService, req: pb::ExchangeRequest) -> pb::ExchangeResponse {
    let (name, method) = match &req.request {
        Some(Call::Start(_)) => ("authrelay.sasl.v1.SaslAuth/Start", "Start"),
        Some(Call::Step(_)) => ("authrelay.sasl.v1.SaslAuth/Step", "Step"),
        None => ("authrelay.sasl.v1.SaslAuth/Exchange", "Exchange"),
    };
    let span = tracing::info_span!(
        "grpc",
        otel.name = name,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "authrelay.sasl.v1.SaslAuth",
        rpc.method = method,
    );
    authrelay_telemetry::adopt_parent(&span, &req.traceparent);
    let response = async {
        let answered = match req.request {
            Some(Call::Start(r)) => service.start(Request::new(r)).await,
            Some(Call::Step(r)) => service.step(Request::new(r)).await,
            None => {
                return pb::StepResponse {
                    result: Some(pb::step_response::Result::Failure(pb::Failure {
                        kind: pb::failure::Kind::Malformed as i32,
                        reason: "an exchange request with neither start nor step".into(),
                        ..Default::default()
                    })),
                };
            }
        };
        // Start and Step answer every refusal in the response itself.
        answered.map_or_else(
            |status| {
                AuthError::Dependency(format!("sasl-auth: {}", status.code())).into_response("")
            },
            |r| r.into_inner(),
        )
    }
    .instrument(span)
    .await;
    pb::ExchangeResponse {
        call: req.call,
        response: Some(response),
    }
}

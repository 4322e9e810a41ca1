//! The `Exchange` stream: Start and Step as messages on one long-lived
//! gRPC stream per frontend lane (proto/sasl.proto says why).
//!
//! Each request runs as a task of its own, so a slow step (Argon2id, a
//! credential-store miss) holds up nothing behind it, under a span shaped
//! like the one a unary call gets from `TraceLayer`, child of the caller's
//! span named in the request. When sasl-auth shuts down it stops reading,
//! answers what it read, then ends the stream: the frontend re-sends a
//! request left unanswered by a clean end on another stream.

use authrelay_proto::sasl::v1 as pb;
use authrelay_proto::sasl::v1::exchange_request::Request as Call;
use authrelay_proto::sasl::v1::sasl_auth_server::SaslAuth;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};
use tracing::Instrument;

use crate::{AuthError, SaslService};

/// The answers, in the order they are ready (not the order asked).
pub type Answers = authrelay_grpc_tls::exchange::ExchangeAnswers;

/// Answers ready before the HTTP/2 connection takes them. Each frontend
/// bounds what it has in flight on a stream (one AUTH step per SMTP
/// session), so this only smooths bursts.
const QUEUED_ANSWERS: usize = 256;

const SERVICE: &str = "authrelay.sasl.v1.SaslAuth";

/// Read `inbound` until it ends or the service stops, answering each
/// request on the returned stream.
pub(crate) fn serve(service: SaslService, mut inbound: Streaming<pb::ExchangeRequest>) -> Answers {
    let (tx, rx) = mpsc::channel(QUEUED_ANSWERS);
    let mut stopping = service.stopping.subscribe();
    tokio::spawn(async move {
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = stopping.wait_for(|s| *s) => break,
                Some(_) = running.join_next(), if !running.is_empty() => {}
                m = inbound.message() => match m {
                    Ok(Some(req)) => {
                        running.spawn(answer(service.clone(), req, tx.clone()));
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), "exchange stream broke");
                        break;
                    }
                }
            }
        }
        // Every request read is answered before the stream ends, so one
        // left unanswered at a clean end was never run (see the proto).
        while running.join_next().await.is_some() {}
        drop(inbound);
    });
    ReceiverStream::new(rx)
}

async fn answer(
    service: SaslService,
    req: pb::ExchangeRequest,
    tx: mpsc::Sender<Result<pb::ExchangeResponse, Status>>,
) {
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
        rpc.service = SERVICE,
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
    let _ = tx
        .send(Ok(pb::ExchangeResponse {
            call: req.call,
            response: Some(response),
        }))
        .await;
}

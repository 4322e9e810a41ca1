//! Taking a message in: the envelope first, then the body as it streams,
//! on disk and fsynced (see `spool`) before the queue id is the answer.

use authrelay_proto::queue::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Status;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::grpc::ServiceError;
use crate::now;
use crate::queue::Queue;
use crate::spool::{self, Envelope, Recipient};

impl Queue {
    pub(crate) async fn enqueue<S>(&self, mut stream: S) -> Result<String, ServiceError>
    where
        S: tokio_stream::Stream<Item = Result<pb::EnqueueRequest, Status>> + Unpin + Send,
    {
        use pb::enqueue_request::Part;
        let first = stream.next().await.ok_or(ServiceError::EmptyStream)??;
        let Some(Part::Envelope(e)) = first.part else {
            return Err(ServiceError::EnvelopeNotFirst);
        };
        if e.recipients.is_empty() {
            return Err(ServiceError::NoRecipients);
        }
        let id = if spool::valid_id(&e.queue_id) && !self.spool.exists(&e.queue_id) {
            e.queue_id.clone()
        } else {
            spool::new_id()
        };
        let env = Envelope {
            mail_from: e.mail_from,
            recipients: e
                .recipients
                .into_iter()
                .map(|r| Recipient {
                    address: r.address,
                    notify: r.notify,
                    orcpt: r.orcpt,
                })
                .collect(),
            auth_id: e.auth_id,
            auth_param: e.auth_param,
            env_id: e.env_id,
            ret: e.ret,
            body: e.body,
            smtputf8: e.smtputf8,
            client_address: e.client_address,
            session_id: e.session_id,
            traceparent: e.traceparent,
            queued_at: now(),
        };
        let span = tracing::info_span!(
            "enqueue",
            otel.name = "relay-queue enqueue",
            otel.kind = "consumer",
            messaging.system = "smtp",
            messaging.operation.type = "receive",
            messaging.operation.name = "enqueue",
            messaging.message.id = %id,
            messaging.batch.message_count = env.recipients.len(),
        );
        // The envelope names the submission's trace; a caller that did not
        // propagate it in gRPC metadata still gets its enqueue in that trace.
        if let Some(cx) = authrelay_telemetry::context_from_traceparent(&env.traceparent) {
            use opentelemetry::trace::TraceContextExt as _;
            let here = tracing::Span::current().context();
            if here.span().span_context().trace_id() != cx.span().span_context().trace_id() {
                let _ = span.set_parent(cx);
            }
        }
        self.store(id, env, stream).instrument(span).await
    }

    /// Write the body as it streams in; on Commit, make it durable and answer.
    async fn store<S>(
        &self,
        id: String,
        env: Envelope,
        mut stream: S,
    ) -> Result<String, ServiceError>
    where
        S: tokio_stream::Stream<Item = Result<pb::EnqueueRequest, Status>> + Unpin + Send,
    {
        use pb::enqueue_request::Part;
        let mut writer = self.spool.writer(&id, &env)?;
        // File writes are quick and buffered; each chunk is ≤ 64 KiB.
        while let Some(msg) = stream.next().await {
            match msg?.part {
                Some(Part::Chunk(bytes)) => writer.write(&bytes)?,
                Some(Part::Commit(c)) => {
                    if c.size != writer.body_len() {
                        return Err(ServiceError::SizeMismatch {
                            announced: c.size,
                            received: writer.body_len(),
                        });
                    }
                    let size = writer.body_len();
                    tokio::task::block_in_place(|| writer.commit())?;
                    tracing::info!(
                        "{id}: from=<{}>, size={size}, nrcpts={}, authid={}, stat=queued",
                        env.mail_from,
                        env.recipients.len(),
                        if env.auth_id.is_empty() {
                            "-"
                        } else {
                            &env.auth_id
                        }
                    );
                    self.scheduler.queued(&id, env.queued_at);
                    return Ok(id);
                }
                Some(Part::Envelope(_)) => return Err(ServiceError::SecondEnvelope),
                None => return Err(ServiceError::EmptyPart),
            }
        }
        // No commit: the sender gave up (client gone, message too big).
        Err(ServiceError::NoCommit)
    }
}

//! relay-queue's gRPC API (`authrelay.queue.v1.RelayQueue`): Enqueue for
//! the frontends, the queue commands for operators. Every failure is a
//! [`ServiceError`], turned into a `tonic::Status` in one place.

use std::sync::Arc;

use authrelay_proto::queue::v1 as pb;
use authrelay_proto::queue::v1::relay_queue_server::RelayQueue;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};

use crate::queue::Queue;
use crate::spool::{self, SpoolError};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The caller's stream failed; its status passes through.
    #[error("{}", .0.message())]
    Stream(#[from] Status),
    #[error("empty stream")]
    EmptyStream,
    #[error("the envelope must come first")]
    EnvelopeNotFirst,
    #[error("no recipients")]
    NoRecipients,
    #[error("a second envelope")]
    SecondEnvelope,
    #[error("empty message part")]
    EmptyPart,
    #[error("size mismatch: announced {announced}, received {received}")]
    SizeMismatch { announced: u64, received: u64 },
    #[error("stream ended without commit; message discarded")]
    NoCommit,
    #[error("malformed queue id")]
    MalformedId,
    #[error("no such message")]
    NoSuchMessage,
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        use ServiceError as E;
        let message = e.to_string();
        match e {
            // The frontend answers 452 4.3.1 to this, 451 to `unavailable`.
            E::Spool(SpoolError::DiskFull) => Status::resource_exhausted(message),
            E::Spool(SpoolError::NotFound) | E::NoSuchMessage => {
                Status::not_found("no such message")
            }
            E::Spool(_) => Status::unavailable(message),
            E::Stream(status) => status,
            E::EmptyStream
            | E::EnvelopeNotFirst
            | E::NoRecipients
            | E::SecondEnvelope
            | E::EmptyPart
            | E::MalformedId => Status::invalid_argument(message),
            E::SizeMismatch { .. } => Status::data_loss(message),
            E::NoCommit => Status::aborted(message),
        }
    }
}

pub struct QueueService {
    pub(crate) queue: Arc<Queue>,
}

impl QueueService {
    pub fn new(queue: Arc<Queue>) -> Self {
        QueueService { queue }
    }

    fn list(&self) -> Result<pb::ListQueueResponse, ServiceError> {
        let q = &self.queue;
        let mut entries = Vec::new();
        for id in q.spool.ids()? {
            let Ok(env) = q.spool.envelope(&id) else {
                continue;
            };
            let st = q.spool.state(&id);
            entries.push(pb::QueueEntry {
                size: q.spool.size(&id),
                mail_from: env.mail_from,
                recipients: env
                    .recipients
                    .into_iter()
                    .map(|r| r.address)
                    .filter(|a| !st.delivered.contains(a))
                    .collect(),
                queued_at: env.queued_at,
                next_attempt: st.next_attempt,
                attempts: st.attempts,
                last_error: st.last_error,
                held: st.held,
                queue_id: id,
            });
        }
        Ok(pb::ListQueueResponse { entries })
    }

    /// Every message not held (with a recipient in `domain`, when given —
    /// ETRN) is tried now, hosts marked down included.
    fn flush_domain(&self, domain: &str) -> Result<pb::FlushResponse, ServiceError> {
        let domain = domain.to_ascii_lowercase();
        let q = &self.queue;
        let mut ids = Vec::new();
        for id in q.spool.ids()? {
            let Ok(env) = q.spool.envelope(&id) else {
                continue;
            };
            if q.spool.state(&id).held {
                continue;
            }
            let matches = domain.is_empty()
                || env.recipients.iter().any(|r| {
                    r.address
                        .to_ascii_lowercase()
                        .ends_with(&format!("@{domain}"))
                });
            if matches {
                ids.push(id);
            }
        }
        // An operator's flush is a request to try now, dead hosts included.
        q.delivery.hosts.clear();
        let scheduled = q.scheduler.flush(ids);
        Ok(pb::FlushResponse { scheduled })
    }

    fn delete(&self, id: &str) -> Result<pb::MessageOpResponse, ServiceError> {
        if !spool::valid_id(id) {
            return Err(ServiceError::MalformedId);
        }
        self.queue.spool.remove(id)?;
        self.queue.scheduler.forget(id);
        tracing::info!(queue_id = %id, "deleted by operator");
        Ok(pb::MessageOpResponse {})
    }

    fn set_held(&self, id: &str, held: bool) -> Result<pb::MessageOpResponse, ServiceError> {
        let q = &self.queue;
        if !spool::valid_id(id) || !q.spool.exists(id) {
            return Err(ServiceError::NoSuchMessage);
        }
        let mut st = q.spool.state(id);
        st.held = held;
        if !held {
            st.next_attempt = 0;
        }
        q.spool.save_state(id, &st)?;
        if held {
            q.scheduler.hold(id);
        } else {
            q.scheduler.release(id);
        }
        Ok(pb::MessageOpResponse {})
    }
}

/// The frontend's calls, in the same process (`authrelay serve`).
#[tonic::async_trait]
impl authrelay_grpc_tls::api::LocalQueue for QueueService {
    async fn enqueue(
        &self,
        parts: tokio_stream::wrappers::ReceiverStream<pb::EnqueueRequest>,
    ) -> Result<pb::EnqueueResponse, Status> {
        let queue_id = self.queue.enqueue(parts.map(Ok)).await?;
        Ok(pb::EnqueueResponse { queue_id })
    }

    async fn flush(&self, r: pb::FlushRequest) -> Result<pb::FlushResponse, Status> {
        Ok(self.flush_domain(&r.domain)?)
    }
}

#[tonic::async_trait]
impl RelayQueue for QueueService {
    #[tracing::instrument(name = "relay-queue Enqueue", skip_all)]
    async fn enqueue(
        &self,
        req: Request<Streaming<pb::EnqueueRequest>>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let queue_id = self.queue.enqueue(req.into_inner()).await?;
        Ok(Response::new(pb::EnqueueResponse { queue_id }))
    }

    async fn list_queue(
        &self,
        _req: Request<pb::ListQueueRequest>,
    ) -> Result<Response<pb::ListQueueResponse>, Status> {
        Ok(Response::new(self.list()?))
    }

    async fn flush(
        &self,
        req: Request<pb::FlushRequest>,
    ) -> Result<Response<pb::FlushResponse>, Status> {
        Ok(Response::new(self.flush_domain(&req.into_inner().domain)?))
    }

    async fn delete_message(
        &self,
        req: Request<pb::MessageRef>,
    ) -> Result<Response<pb::MessageOpResponse>, Status> {
        Ok(Response::new(self.delete(&req.into_inner().queue_id)?))
    }

    async fn hold_message(
        &self,
        req: Request<pb::MessageRef>,
    ) -> Result<Response<pb::MessageOpResponse>, Status> {
        Ok(Response::new(
            self.set_held(&req.into_inner().queue_id, true)?,
        ))
    }

    async fn release_message(
        &self,
        req: Request<pb::MessageRef>,
    ) -> Result<Response<pb::MessageOpResponse>, Status> {
        Ok(Response::new(
            self.set_held(&req.into_inner().queue_id, false)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn a_full_spool_is_resource_exhausted_so_the_frontend_answers_452() {
        let s = Status::from(ServiceError::Spool(SpoolError::DiskFull));
        assert_eq!(
            (s.code(), s.message()),
            (Code::ResourceExhausted, "spool disk full")
        );
    }

    #[test]
    fn other_spool_trouble_is_unavailable() {
        let io = std::io::Error::other("EIO");
        let s = Status::from(ServiceError::Spool(SpoolError::Io(io)));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "spool I/O: EIO")
        );
    }

    #[test]
    fn an_unknown_message_is_not_found() {
        for e in [
            ServiceError::NoSuchMessage,
            ServiceError::Spool(SpoolError::NotFound),
        ] {
            let s = Status::from(e);
            assert_eq!((s.code(), s.message()), (Code::NotFound, "no such message"));
        }
    }

    #[test]
    fn a_malformed_stream_is_invalid_argument() {
        for e in [
            ServiceError::EmptyStream,
            ServiceError::EnvelopeNotFirst,
            ServiceError::NoRecipients,
            ServiceError::SecondEnvelope,
            ServiceError::EmptyPart,
            ServiceError::MalformedId,
        ] {
            let text = e.to_string();
            let s = Status::from(e);
            assert_eq!(
                (s.code(), s.message()),
                (Code::InvalidArgument, text.as_str())
            );
        }
    }

    #[test]
    fn a_body_of_another_size_than_announced_is_data_loss() {
        let s = Status::from(ServiceError::SizeMismatch {
            announced: 10,
            received: 8,
        });
        assert_eq!(s.code(), Code::DataLoss);
        assert_eq!(s.message(), "size mismatch: announced 10, received 8");
    }

    #[test]
    fn a_stream_without_commit_is_aborted() {
        let s = Status::from(ServiceError::NoCommit);
        assert_eq!(s.code(), Code::Aborted);
    }

    #[test]
    fn the_callers_stream_error_passes_through() {
        let s = Status::from(ServiceError::from(Status::cancelled("client gone")));
        assert_eq!((s.code(), s.message()), (Code::Cancelled, "client gone"));
    }
}

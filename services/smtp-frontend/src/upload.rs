//! One message on its way to relay-queue: the gRPC Enqueue stream a DATA
//! or BDAT transaction feeds as the client sends.

use std::time::Duration;

use authrelay_proto::queue::v1 as qpb;
use tokio_stream::wrappers::ReceiverStream;

use crate::Shared;

pub struct QueueFailure {
    pub why: String,
    pub disk_full: bool,
}

/// One message on its way to relay-queue: a client stream of envelope,
/// chunks, and a final Commit. Dropped without `finish`, the stream ends
/// without Commit and the queue discards the message.
pub struct Upload {
    pub queue_id: String,
    sender: tokio::sync::mpsc::Sender<qpb::EnqueueRequest>,
    call: tokio::task::JoinHandle<Result<qpb::EnqueueResponse, tonic::Status>>,
    queue_ok: bool,
    /// Body bytes from the client (SIZE counts these).
    pub size: u64,
    header_len: u64,
    max: u64,
    pub too_big: bool,
}

fn part(p: qpb::enqueue_request::Part) -> qpb::EnqueueRequest {
    qpb::EnqueueRequest { part: Some(p) }
}

impl Upload {
    pub async fn begin(
        shared: &Shared,
        queue_id: String,
        envelope: qpb::Envelope,
        header: String,
    ) -> Upload {
        let (sender, rx) = tokio::sync::mpsc::channel::<qpb::EnqueueRequest>(8);
        let queue = shared.queue.clone();
        // In the session's span, so the gRPC call carries its trace context.
        let call = tokio::spawn(tracing::Instrument::in_current_span(async move {
            queue.enqueue(ReceiverStream::new(rx)).await
        }));
        let header_len = header.len() as u64;
        let queue_ok = sender
            .send(part(qpb::enqueue_request::Part::Envelope(envelope)))
            .await
            .is_ok()
            && sender
                .send(part(qpb::enqueue_request::Part::Chunk(header.into_bytes())))
                .await
                .is_ok();
        Upload {
            queue_id,
            sender,
            call,
            queue_ok,
            size: 0,
            header_len,
            max: shared.cfg.frontend.max_message_size,
            too_big: false,
        }
    }

    pub async fn push(&mut self, bytes: Vec<u8>) {
        self.size += bytes.len() as u64;
        if self.size > self.max {
            self.too_big = true;
        }
        if self.queue_ok && !self.too_big && !bytes.is_empty() {
            self.queue_ok = self
                .sender
                .send(part(qpb::enqueue_request::Part::Chunk(bytes)))
                .await
                .is_ok();
        }
    }

    pub fn abort(self) {
        self.call.abort();
    }

    /// Commit and wait for relay-queue's answer: the queue id once the
    /// message is on disk.
    pub async fn finish(self) -> Result<String, QueueFailure> {
        let Upload {
            sender,
            call,
            mut queue_ok,
            size,
            header_len,
            ..
        } = self;
        if queue_ok {
            let commit = qpb::Commit {
                size: size + header_len,
            };
            queue_ok = sender
                .send(part(qpb::enqueue_request::Part::Commit(commit)))
                .await
                .is_ok();
        }
        drop(sender);
        let answer = tokio::time::timeout(Duration::from_secs(120), call).await;
        let fail = |why: String, disk_full| Err(QueueFailure { why, disk_full });
        match answer {
            Ok(Ok(Ok(resp))) if queue_ok => Ok(resp.queue_id),
            Ok(Ok(Ok(_))) => fail("relay-queue: stream closed early".into(), false),
            Ok(Ok(Err(status))) => fail(
                format!("relay-queue: {} {}", status.code(), status.message()),
                status.code() == tonic::Code::ResourceExhausted,
            ),
            Ok(Err(e)) => fail(format!("relay-queue call: {e}"), false),
            Err(_) => fail("relay-queue: no answer in time".into(), false),
        }
    }
}

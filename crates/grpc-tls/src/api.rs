//! The services as their callers see them: over gRPC, or in the same
//! process through the very trait the gRPC server implements.
//!
//! In a deployment each service is its own pod and every call is gRPC. In
//! `authrelay serve` the four run in one process, and a loopback socket on
//! the auth path would cost an HTTP/2 round trip and a listening port any
//! local user could reach (see SECURITY.md): there the frontend holds
//! sasl-auth itself, and sasl-auth holds credential-store itself. A call is
//! then a function call in the caller's span, so the trace stays one trace.

use std::sync::Arc;
use std::time::Duration;

use authrelay_proto::credentials::v1 as cpb;
use authrelay_proto::credentials::v1::credential_store_client::CredentialStoreClient;
use authrelay_proto::credentials::v1::credential_store_server::CredentialStore;
use authrelay_proto::queue::v1 as qpb;
use authrelay_proto::queue::v1::relay_queue_client::RelayQueueClient;
use authrelay_proto::sasl::v1 as spb;
use authrelay_proto::sasl::v1::sasl_auth_client::SaslAuthClient;
use authrelay_proto::sasl::v1::sasl_auth_server::SaslAuth;
use authrelay_telemetry::grpc::Traced;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use crate::exchange::{ExchangeAnswers, ExchangeClient};

/// sasl-auth, as the frontend calls it: over its `Exchange` streams
/// ([`ExchangeClient`]), or in process.
#[derive(Clone)]
pub enum SaslAuthApi {
    Remote(Arc<ExchangeClient>),
    Local(Arc<dyn SaslAuth<ExchangeStream = ExchangeAnswers>>),
}

impl SaslAuthApi {
    /// sasl-auth over gRPC: see [`ExchangeClient::new`].
    pub fn remote(
        unary: SaslAuthClient<Traced>,
        replicas: tokio::sync::watch::Receiver<Arc<Vec<authrelay_proto::channel::Replica>>>,
        timeout: Duration,
    ) -> Self {
        SaslAuthApi::Remote(Arc::new(ExchangeClient::new(unary, replicas, timeout)))
    }

    pub async fn start(&self, r: spb::StartRequest) -> Result<spb::StepResponse, Status> {
        match self {
            SaslAuthApi::Remote(c) => c.start(r).await,
            SaslAuthApi::Local(s) => s.start(Request::new(r)).await.map(|r| r.into_inner()),
        }
    }

    pub async fn step(&self, r: spb::StepRequest) -> Result<spb::StepResponse, Status> {
        match self {
            SaslAuthApi::Remote(c) => c.step(r).await,
            SaslAuthApi::Local(s) => s.step(Request::new(r)).await.map(|r| r.into_inner()),
        }
    }
}

/// credential-store, as sasl-auth calls it.
#[derive(Clone)]
pub enum CredentialStoreApi {
    Remote(CredentialStoreClient<Traced>),
    Local(Arc<dyn CredentialStore>),
}

impl CredentialStoreApi {
    pub async fn get_secret(
        &self,
        r: cpb::GetSecretRequest,
    ) -> Result<cpb::GetSecretResponse, Status> {
        match self {
            CredentialStoreApi::Remote(c) => c.clone().get_secret(r).await.map(|r| r.into_inner()),
            CredentialStoreApi::Local(s) => {
                s.get_secret(Request::new(r)).await.map(|r| r.into_inner())
            }
        }
    }
}

/// relay-queue in process, for what the frontend asks of it: Enqueue takes
/// the message parts as they come (a gRPC `Streaming` cannot be made
/// without a wire), Flush is ETRN.
#[tonic::async_trait]
pub trait LocalQueue: Send + Sync + 'static {
    async fn enqueue(
        &self,
        parts: ReceiverStream<qpb::EnqueueRequest>,
    ) -> Result<qpb::EnqueueResponse, Status>;
    async fn flush(&self, r: qpb::FlushRequest) -> Result<qpb::FlushResponse, Status>;
}

/// relay-queue, as the frontend calls it.
#[derive(Clone)]
pub enum QueueApi {
    Remote(RelayQueueClient<Traced>),
    Local(Arc<dyn LocalQueue>),
}

impl QueueApi {
    pub async fn enqueue(
        &self,
        parts: ReceiverStream<qpb::EnqueueRequest>,
    ) -> Result<qpb::EnqueueResponse, Status> {
        match self {
            QueueApi::Remote(c) => c.clone().enqueue(parts).await.map(|r| r.into_inner()),
            QueueApi::Local(q) => q.enqueue(parts).await,
        }
    }

    pub async fn flush(&self, r: qpb::FlushRequest) -> Result<qpb::FlushResponse, Status> {
        match self {
            QueueApi::Remote(c) => c.clone().flush(r).await.map(|r| r.into_inner()),
            QueueApi::Local(q) => q.flush(r).await,
        }
    }
}

//! relay-queue: takes messages over a gRPC stream, makes them durable before
//! answering, and delivers them to the next hop, retrying with back-off.
//!
//! One module per job:
//! - [`grpc`] the API (Enqueue, the queue commands) and its one error enum;
//!   `enqueue` takes a message in;
//! - [`spool`] the durable files; `scheduler` when to try what (back-off,
//!   retry, give-up, flush/ETRN, hold); `queue` ties them to the loop;
//! - `attempt` one delivery attempt of one message; `routing` where a
//!   domain's mail goes; `delivery` the hop or MX hosts it goes to, with
//!   `host_status`; [`client`] the SMTP client ([`client::reply`] parses
//!   replies with smtp-proto; `client::auth` AUTH with [`oauth`] tokens);
//! - [`error`] every delivery failure, mapped once to a DSN status and a
//!   retry decision; [`dsn`] and `bounce` the reports.

mod attempt;
mod bounce;
pub mod client;
mod delivery;
pub mod dsn;
mod enqueue;
pub mod error;
pub mod grpc;
mod host_status;
pub mod mx;
pub mod oauth;
mod queue;
mod routing;
mod scheduler;
pub mod spool;
pub mod tls;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use authrelay_config::Config;
use authrelay_proto::queue::v1::relay_queue_server::RelayQueueServer;
use tokio::net::TcpListener;

pub use grpc::QueueService;
pub use queue::Queue;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Serve on `listener` until `shutdown`; deliveries run alongside.
pub async fn serve(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), anyhow::Error> {
    let guard = authrelay_grpc_tls::guard(&cfg)?;
    let queue = Queue::open(cfg.clone())?;
    serve_queue(
        cfg,
        Some(listener),
        Arc::new(QueueService::new(queue)),
        guard,
        shutdown,
    )
    .await
}

/// Run `service`'s delivery and serve it over gRPC on `listener` and
/// `relay_queue.listen_unix` (either may be absent) until `shutdown`.
pub async fn serve_queue(
    cfg: Config,
    listener: Option<TcpListener>,
    service: Arc<QueueService>,
    guard: authrelay_grpc_tls::guard::GuardLayer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), anyhow::Error> {
    let unix = authrelay_grpc_tls::listen_unix(
        "relay-queue",
        "relay_queue.listen_unix",
        cfg.relay_queue.listen_unix.as_deref(),
    )?;
    let (grpc, tls, health_listen) = (
        authrelay_grpc_tls::server(),
        authrelay_grpc_tls::server_tls(&cfg)?,
        cfg.internal_tls.health_listen,
    );
    let runner = tokio::spawn(service.queue.clone().run());
    let (reporter, health) = tonic_health::server::health_reporter();
    authrelay_grpc_tls::serve_plain_health("relay-queue", health_listen, health.clone()).await?;
    reporter
        .set_serving::<RelayQueueServer<QueueService>>()
        .await;
    let result = grpc
        .layer(authrelay_telemetry::grpc::TraceLayer)
        .layer(guard)
        .add_service(health)
        .add_service(RelayQueueServer::from_arc(service))
        .serve_with_incoming_shutdown(authrelay_grpc_tls::incoming(listener, unix, tls), shutdown)
        .await;
    runner.abort();
    result?;
    Ok(())
}

/// Bind the configured address, announce it, and serve until SIGTERM/SIGINT.
pub async fn main_with(cfg: Config) -> Result<(), anyhow::Error> {
    // Before anything else: a SIGTERM during start-up waits for it to finish.
    let shutdown = authrelay_telemetry::shutdown_signal();
    let listener = TcpListener::bind(cfg.relay_queue.listen).await?;
    authrelay_telemetry::announce("relay-queue", "grpc", listener.local_addr()?);
    if let Some(addr) = cfg.telemetry.metrics_listen {
        authrelay_telemetry::announce(
            "relay-queue",
            "metrics",
            authrelay_telemetry::metrics::serve(addr).await?,
        );
    }
    serve(cfg, listener, shutdown).await
}

//! smtp-frontend: speaks ESMTP to mail clients.
//!
//! Owns the connections (the I/O around the sans-IO SMTP session of
//! `authrelay-smtp`), TLS, the relay policy, limits and the `Received:`
//! header. Authentication goes to sasl-auth and messages to
//! relay-queue over gRPC; the frontend never sees a stored secret and keeps
//! no state beyond its open connections, so it scales horizontally.

mod admin_error;
mod connection;
mod gate;
pub mod limits;
pub mod policy;
pub mod proxy;
pub mod received;
pub mod registry;
mod stream;
pub mod tls;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use authrelay_config::{Config, Listener};
pub use authrelay_grpc_tls::api::{QueueApi, SaslAuthApi};
use authrelay_proto::queue::v1::relay_queue_client::RelayQueueClient;
use authrelay_proto::sasl::v1::sasl_auth_client::SaslAuthClient;
use authrelay_state::SharedState;
use authrelay_telemetry::grpc::traced;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::policy::RelayPolicy;
use authrelay_smtp::Reply;

/// What every session of this frontend shares.
pub struct Shared {
    pub cfg: Config,
    pub policy: Arc<RelayPolicy>,
    /// What every SMTP session of this frontend shares (limits, names, policy).
    pub smtp: Arc<authrelay_smtp::Settings>,
    pub sasl: SaslAuthApi,
    pub queue: QueueApi,
    pub tls: Option<TlsAcceptor>,
    /// The certificate in use (for tls-server-end-point channel binding).
    pub cert: Option<Arc<tls::ReloadingCert>>,
    pub state: SharedState,
    /// Flips to true on SIGTERM: idle sessions close with 421, sessions in a
    /// transaction finish it first.
    pub draining: watch::Receiver<bool>,
    pub registry: Arc<registry::Registry>,
    /// Stolen-account limits (`[limits.per_user]`).
    pub limits: Arc<limits::AccountLimits>,
    /// Holds new greetings back while the sessions in hand are many.
    pub gate: Arc<gate::Gate>,
}

/// Listeners bound and ready (bind first, so a port clash fails at start).
pub struct Bound {
    pub listeners: Vec<(Listener, TcpListener)>,
    /// The sessions admin API on `frontend.admin_listen`; `authrelay serve`
    /// puts it on a private Unix socket instead.
    pub admin: Option<TcpListener>,
    pub admin_unix: Option<tokio::net::UnixListener>,
}

/// How the frontend reaches sasl-auth and relay-queue.
pub enum Backends {
    /// Over gRPC at `endpoints.*` (a deployment).
    Dial,
    /// In the same process (`authrelay serve`).
    InProcess(Box<(SaslAuthApi, QueueApi)>),
}

pub async fn bind(cfg: &Config) -> Result<Bound, anyhow::Error> {
    let mut bound = bind_smtp(cfg).await?;
    let admin = TcpListener::bind(cfg.frontend.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("frontend.admin_listen {}: {e}", cfg.frontend.admin_listen))?;
    bound.admin = Some(admin);
    Ok(bound)
}

/// The listeners of `frontend.listeners` only: `authrelay serve` gives the
/// admin API a Unix socket of its own.
pub async fn bind_smtp(cfg: &Config) -> Result<Bound, anyhow::Error> {
    let mut listeners = Vec::new();
    for l in &cfg.frontend.listeners {
        let sock = TcpListener::bind(l.address)
            .await
            .map_err(|e| anyhow::anyhow!("frontend.listeners {}: {e}", l.address))?;
        listeners.push((l.clone(), sock));
    }
    Ok(Bound {
        listeners,
        admin: None,
        admin_unix: None,
    })
}

/// Serve the bound listeners until `shutdown`, then drain: stop taking new
/// work (new connections get `421 4.3.2`), let transactions in flight finish
/// within `frontend.drain_grace`, and return.
pub async fn serve(
    cfg: Config,
    state: SharedState,
    bound: Bound,
    self_signed_ok: bool,
    backends: Backends,
    guard: authrelay_grpc_tls::guard::GuardLayer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), anyhow::Error> {
    let (tls, cert) = match tls::setup(&cfg, self_signed_ok)? {
        tls::TlsSetup::Disabled => (None, None),
        tls::TlsSetup::Enabled(c, cert) => {
            tokio::spawn(cert.clone().watch());
            (Some(TlsAcceptor::from(c)), Some(cert))
        }
    };
    let (sasl, queue, dependencies) = match backends {
        Backends::InProcess(apis) => {
            let (sasl, queue) = *apis;
            (sasl, queue, None)
        }
        Backends::Dial => {
            let sasl = authrelay_grpc_tls::channel(
                &cfg,
                cfg.endpoints.sasl_auth.as_slice(),
                cfg.endpoints.timeout,
            )
            .map_err(|e| anyhow::anyhow!("endpoints.sasl_auth: {e}"))?;
            // Start and Step go over streams to each replica (see
            // authrelay_grpc_tls::exchange); the channel above stays for a
            // sasl-auth without them and for the readiness probe.
            let sasl_replicas = authrelay_grpc_tls::replica_set(
                &cfg,
                cfg.endpoints.sasl_auth.as_slice(),
                cfg.endpoints.timeout,
            )
            .map_err(|e| anyhow::anyhow!("endpoints.sasl_auth: {e}"))?;
            // Enqueue streams a whole message: the per-call deadline must
            // cover a slow client's DATA, so the queue channel gets a
            // generous one.
            let queue = authrelay_grpc_tls::channel(
                &cfg,
                cfg.endpoints.relay_queue.as_slice(),
                cfg.frontend.timeouts.data_block * 4,
            )
            .map_err(|e| anyhow::anyhow!("endpoints.relay_queue: {e}"))?;
            (
                SaslAuthApi::remote(
                    SaslAuthClient::new(traced(sasl.clone())),
                    sasl_replicas,
                    cfg.endpoints.timeout,
                ),
                QueueApi::Remote(RelayQueueClient::new(traced(queue.clone()))),
                Some((sasl, queue)),
            )
        }
    };
    let (drain_tx, draining) = watch::channel(false);
    let max_conn = cfg.frontend.max_connections;
    let grace = cfg.frontend.drain_grace;
    let registry = registry::Registry::new(state.clone());
    tokio::spawn(registry.clone().run());
    let account_limits = limits::AccountLimits::new(
        cfg.limits.per_user.clone(),
        state.clone(),
        registry.clone(),
        cfg.hostname.clone(),
        // Without Redis (`authrelay serve`), a file in the data directory
        // keeps overrides and suspensions across restarts.
        (state.kind() == "in-process").then(|| cfg.data_dir.join("account-limits.json")),
    );
    account_limits
        .restore()
        .await
        .map_err(|e| anyhow::anyhow!("account limits: {e:#}"))?;
    tokio::spawn(account_limits.clone().run());
    let policy = Arc::new(RelayPolicy::from_config(&cfg));
    let smtp = Arc::new(authrelay_smtp::Settings {
        hostname: cfg.hostname.clone(),
        max_message_size: cfg.frontend.max_message_size,
        max_recipients: cfg.frontend.max_recipients,
        max_errors: cfg.frontend.max_errors,
        max_auth_attempts: cfg.frontend.max_auth_attempts,
        starttls: tls.is_some(),
        mechanisms_with_tls: cfg.mechanisms_for(true, true, true),
        traceparent_ok: |v| authrelay_telemetry::context_from_traceparent(v).is_some(),
        policy: policy.clone(),
    });
    let gate = gate::Gate::new(
        &cfg.frontend.admission,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let shared = Arc::new(Shared {
        registry: registry.clone(),
        limits: account_limits.clone(),
        policy,
        smtp,
        sasl,
        queue,
        tls,
        cert,
        state,
        draining,
        cfg,
        gate,
    });
    let slots = Arc::new(Semaphore::new(max_conn));

    for (listener, sock) in bound.listeners {
        let local = sock.local_addr()?;
        authrelay_telemetry::announce(
            "smtp-frontend",
            &format!(
                "smtp {:?}{}",
                listener.role,
                if listener.proxy_protocol {
                    " proxy"
                } else {
                    ""
                }
            )
            .to_lowercase(),
            local,
        );
        tokio::spawn(accept_loop(shared.clone(), listener, sock, slots.clone()));
    }

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    if let Some(dependencies) = dependencies {
        tokio::spawn(follow_dependencies(
            shared.clone(),
            reporter.clone(),
            dependencies,
        ));
    }
    let health_listen = shared.cfg.internal_tls.health_listen;
    authrelay_grpc_tls::serve_plain_health("smtp-frontend", health_listen, health.clone()).await?;
    if let Some(admin) = &bound.admin {
        authrelay_telemetry::announce("smtp-frontend", "grpc admin", admin.local_addr()?);
    }
    let mut admin_drain = shared.draining.clone();
    if let Some(addr) = shared.cfg.telemetry.metrics_listen {
        let local = authrelay_telemetry::metrics::serve(addr).await?;
        authrelay_telemetry::announce("smtp-frontend", "metrics", local);
    }
    let admin_tls = authrelay_grpc_tls::server_tls(&shared.cfg)?;
    let admin = authrelay_grpc_tls::server()
        .layer(authrelay_telemetry::grpc::TraceLayer)
        .layer(guard)
        .add_service(health)
        .add_service(
            authrelay_proto::frontend::v1::sessions_server::SessionsServer::new(
                registry::SessionsService { registry },
            ),
        )
        .add_service(
            authrelay_proto::frontend::v1::account_limits_server::AccountLimitsServer::new(
                limits::AccountLimitsService {
                    limits: account_limits,
                },
            ),
        )
        .serve_with_incoming_shutdown(
            authrelay_grpc_tls::incoming(bound.admin, bound.admin_unix, admin_tls),
            async move {
                let _ = admin_drain.wait_for(|d| *d).await;
            },
        );
    let admin_task = tokio::spawn(admin);

    shutdown.await;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "draining: new connections get 421, transactions in flight may finish"
    );
    // Draining first, then the status: follow_dependencies checks the
    // flag after each status it sets, so it cannot leave SERVING behind.
    let _ = drain_tx.send(true);
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let deadline = tokio::time::Instant::now() + grace;
    while slots.available_permits() < max_conn && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = max_conn - slots.available_permits();
    if left > 0 {
        tracing::warn!(
            sessions = left,
            "drain grace period over; closing remaining sessions"
        );
    }
    let _ = admin_task.await;
    Ok(())
}

/// Readiness follows what a session needs: Redis, sasl-auth and
/// relay-queue. A frontend that cannot reach one would answer AUTH or DATA
/// with 4xx, so the load balancer should send clients elsewhere. Two misses
/// in a row: one replica dying between polls is not an outage (the
/// channels drop it within a second). Stops at drain, which owns the status.
async fn follow_dependencies(
    shared: Arc<Shared>,
    reporter: tonic_health::server::HealthReporter,
    (sasl, queue): (tonic::transport::Channel, tonic::transport::Channel),
) {
    use authrelay_proto::queue::v1::relay_queue_server::SERVICE_NAME as QUEUE;
    use authrelay_proto::sasl::v1::sasl_auth_server::SERVICE_NAME as SASL;
    use tonic_health::pb::health_client::HealthClient;
    let serving = |ch: tonic::transport::Channel, service: &'static str| async move {
        let req = tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        };
        let mut client = HealthClient::new(ch);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), client.check(req)).await,
            Ok(Ok(r)) if r.get_ref().status() == tonic_health::pb::health_check_response::ServingStatus::Serving
        )
    };
    let mut misses = 0u32;
    let mut was_ready = true;
    while !*shared.draining.borrow() {
        let (redis, sasl_ok, queue_ok) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(2), shared.state.ping()),
            serving(sasl.clone(), SASL),
            serving(queue.clone(), QUEUE),
        );
        let redis_ok = matches!(redis, Ok(Ok(())));
        misses = if redis_ok && sasl_ok && queue_ok {
            0
        } else {
            misses + 1
        };
        let ready = misses < 2;
        if ready != was_ready {
            tracing::warn!(
                ready,
                redis = redis_ok,
                sasl_auth = sasl_ok,
                relay_queue = queue_ok,
                "readiness changed"
            );
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            was_ready = ready;
            if *shared.draining.borrow() {
                reporter
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: Listener,
    sock: TcpListener,
    slots: Arc<Semaphore>,
) {
    loop {
        let (stream, peer) = match sock.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if *shared.draining.borrow() {
            let host = shared.cfg.hostname.clone();
            tokio::spawn(refuse(stream, Reply::shutting_down(&host)));
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // confMAX_DAEMON_CHILDREN reached.
            let host = shared.cfg.hostname.clone();
            tokio::spawn(refuse(
                stream,
                Reply::new(
                    421,
                    "4.3.2",
                    format!("{host} Too many connections, try again later"),
                ),
            ));
            continue;
        };
        let shared = shared.clone();
        let listener = listener.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let mut peer = peer;
            if listener.proxy_protocol {
                match read_proxy_header(&mut stream).await {
                    Ok(Some(source)) => peer = source,
                    Ok(None) => {}
                    Err(why) => {
                        // Not from our balancer: say nothing, close.
                        tracing::info!(peer = %peer, why, "connection without a valid PROXY header");
                        return;
                    }
                }
            }
            // After the PROXY header, which is the balancer's to send: a
            // health check that never sends one holds no place at the gate.
            let admitted = shared.gate.admit().await;
            // A dual-stack listener ([::]) sees IPv4 clients as ::ffff:a.b.c.d;
            // networks, per-address limits, the access map and Received: all
            // speak of a.b.c.d.
            let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
            // confCONNECTION_RATE_THROTTLE, summed over every frontend through
            // the shared store. A throttle, not a lock: if the store is down,
            // connections are let through (AUTH still fails closed).
            let fe = &shared.cfg.frontend;
            let host = shared.cfg.hostname.clone();
            if fe.connection_rate > 0 {
                let key = format!("fe:rate:{}", peer.ip());
                if let Ok(n) = shared
                    .state
                    .record_event(&key, fe.connection_rate_window)
                    .await
                    && n > u64::from(fe.connection_rate)
                {
                    tracing::info!(peer = %peer, "connection rate limit exceeded");
                    let text = format!("{host} Connection rate limit exceeded, try again later");
                    refuse(stream, Reply::new(421, "4.7.0", text)).await;
                    return;
                }
            }
            let id = connection::new_id(8);
            let role = format!("{:?}", listener.role).to_lowercase();
            let Some(registration) =
                shared
                    .registry
                    .register(&id, peer, &role, fe.max_connections_per_ip)
            else {
                let text = format!("{host} Too many connections from your address");
                refuse(stream, Reply::new(421, "4.7.0", text)).await;
                return;
            };
            // Boxed: the connection and its session are large, and inline it would
            // make this task's future as large, copied whole at every spawn.
            Box::pin(
                connection::Connection::new(
                    shared.clone(),
                    stream,
                    listener,
                    peer,
                    id,
                    registration,
                    admitted,
                )
                .run(),
            )
            .await;
            drop(permit);
        });
    }
}

/// Read and consume the PROXY header, leaving the SMTP bytes in the socket.
/// `Ok(None)`: a balancer health check (keep the socket's address).
async fn read_proxy_header(
    stream: &mut tokio::net::TcpStream,
) -> Result<Option<std::net::SocketAddr>, &'static str> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 256];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .map_err(|_| "timed out")?
            .map_err(|_| "read error")?;
        if n == 0 {
            return Err("closed");
        }
        match proxy::parse(&buf[..n]) {
            Ok(header) => {
                let (source, len) = match header {
                    proxy::Header::Proxied { source, len } => (Some(source), len),
                    proxy::Header::Local { len } => (None, len),
                };
                let mut skip = vec![0u8; len];
                stream
                    .read_exact(&mut skip)
                    .await
                    .map_err(|_| "read error")?;
                return Ok(source);
            }
            Err(proxy::ProxyError::NeedMore) if n < buf.len() => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(proxy::ProxyError::NeedMore) => return Err("header too long"),
            Err(proxy::ProxyError::Invalid(why)) => return Err(why),
        }
    }
}

async fn refuse(mut stream: tokio::net::TcpStream, reply: Reply) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&reply.to_bytes())).await;
    let _ = stream.shutdown().await;
}

/// Bind, announce and serve until SIGTERM/SIGINT, then drain.
pub async fn main_with(cfg: Config) -> Result<(), anyhow::Error> {
    // Before anything else: a SIGTERM during start-up waits for it to finish.
    let shutdown = authrelay_telemetry::shutdown_signal();
    if cfg.redis.url.is_empty() {
        anyhow::bail!(
            "configuration key `redis.url` is empty: separate frontends share sessions and rates through Redis (only `authrelay serve` may run without it)"
        );
    }
    // Fail at start, not at the first STARTTLS, when TLS is misconfigured.
    tls::setup(&cfg, false)?;
    let state = SharedState::connect(&cfg.redis).await?;
    let bound = bind(&cfg).await?;
    let guard = authrelay_grpc_tls::guard(&cfg)?;
    serve(cfg, state, bound, false, Backends::Dial, guard, shutdown).await
}

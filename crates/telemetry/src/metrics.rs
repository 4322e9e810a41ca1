//! Prometheus metrics, one registry per process, served as text at
//! `http://telemetry.metrics_listen/metrics`.
//!
//! The HTTP side is a few lines over a TCP listener rather than a web
//! framework: it answers one fixed GET and nothing else, and every other
//! dependency of ours speaks gRPC.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub mechanism: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MechLabel {
    pub mechanism: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

fn latency() -> Histogram {
    // 100 µs … ~3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

pub struct Metrics {
    pub auth_attempts: Family<AuthLabels, Counter>,
    pub auth_duration: Family<MechLabel, Histogram>,
    pub bruteforce_blocks: Counter,
    pub sessions_live: Gauge,
    pub tls_handshakes: Family<OutcomeLabel, Counter>,
    pub queue_messages: Gauge,
    pub queue_oldest_age: Gauge,
    pub deliveries: Family<OutcomeLabel, Counter>,
    pub grpc_client_duration: Family<OpLabel, Histogram>,
    pub redis_duration: Family<OpLabel, Histogram>,
    /// sasl-auth's secret cache: result = hit | negative_hit | miss.
    pub auth_cache: Family<ResultLabel, Counter>,
    /// Sealed exchange states refused: reason = expired | tampered | unknown_key | malformed | replayed.
    pub sealed_refusals: Family<ReasonLabel, Counter>,
    registry: Registry,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("authrelay");
    let m = Metrics {
        auth_attempts: Family::default(),
        auth_duration: Family::new_with_constructor(latency),
        bruteforce_blocks: Counter::default(),
        sessions_live: Gauge::default(),
        tls_handshakes: Family::default(),
        queue_messages: Gauge::default(),
        queue_oldest_age: Gauge::default(),
        deliveries: Family::default(),
        grpc_client_duration: Family::new_with_constructor(latency),
        redis_duration: Family::new_with_constructor(latency),
        auth_cache: Family::default(),
        sealed_refusals: Family::default(),
        registry: Registry::default(),
    };
    registry.register(
        "auth_attempts",
        "SMTP AUTH attempts by mechanism and outcome",
        m.auth_attempts.clone(),
    );
    registry.register(
        "auth_duration_seconds",
        "SMTP AUTH latency by mechanism",
        m.auth_duration.clone(),
    );
    registry.register(
        "bruteforce_blocks",
        "AUTH attempts refused by the brute-force limits",
        m.bruteforce_blocks.clone(),
    );
    registry.register(
        "sessions_live",
        "Open SMTP sessions on this frontend",
        m.sessions_live.clone(),
    );
    registry.register(
        "tls_handshakes",
        "TLS handshakes by outcome",
        m.tls_handshakes.clone(),
    );
    registry.register(
        "queue_messages",
        "Messages in the spool",
        m.queue_messages.clone(),
    );
    registry.register(
        "queue_oldest_age_seconds",
        "Age of the oldest queued message",
        m.queue_oldest_age.clone(),
    );
    registry.register(
        "deliveries",
        "Delivery attempts by outcome",
        m.deliveries.clone(),
    );
    registry.register(
        "grpc_client_duration_seconds",
        "gRPC calls to other services",
        m.grpc_client_duration.clone(),
    );
    registry.register(
        "redis_duration_seconds",
        "Shared-store operations",
        m.redis_duration.clone(),
    );
    registry.register(
        "auth_cache_lookups",
        "sasl-auth secret cache lookups by result (hit, negative_hit, miss)",
        m.auth_cache.clone(),
    );
    registry.register(
        "sasl_sealed_state_refusals",
        "Sealed SASL exchange states refused, by reason",
        m.sealed_refusals.clone(),
    );
    Metrics { registry, ..m }
});

pub fn auth(mechanism: &str, outcome: &str, elapsed: Duration) {
    METRICS
        .auth_attempts
        .get_or_create(&AuthLabels {
            mechanism: mechanism.to_owned(),
            outcome: outcome.to_owned(),
        })
        .inc();
    METRICS
        .auth_duration
        .get_or_create(&MechLabel {
            mechanism: mechanism.to_owned(),
        })
        .observe(elapsed.as_secs_f64());
}

pub fn outcome(family: &Family<OutcomeLabel, Counter>, outcome: &str) {
    family
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_owned(),
        })
        .inc();
}

pub fn observe(family: &Family<OpLabel, Histogram>, operation: &str, elapsed: Duration) {
    family
        .get_or_create(&OpLabel {
            operation: operation.to_owned(),
        })
        .observe(elapsed.as_secs_f64());
}

pub fn auth_cache(result: &'static str) {
    METRICS
        .auth_cache
        .get_or_create(&ResultLabel {
            result: result.to_owned(),
        })
        .inc();
}

pub fn sealed_refusal(reason: &'static str) {
    METRICS
        .sealed_refusals
        .get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
}

/// The registry in Prometheus text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

/// Serve `GET /metrics` on `addr` for the life of the process.
pub async fn serve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let mut n = 0;
                // Read the request head (bounded, with a deadline).
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while n < buf.len() {
                        match sock.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k,
                        }
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                })
                .await;
                if read.is_err() {
                    return;
                }
                let (status, body) = if buf[..n].starts_with(b"GET /metrics") {
                    ("200 OK", render())
                } else {
                    ("404 Not Found", "not found\n".to_owned())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}

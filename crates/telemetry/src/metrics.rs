//! Prometheus metrics, served at `http://telemetry.metrics_listen/metrics`.
//!
//! Each process exposes the families it owns ([`set_process`]; the
//! all-in-one `authrelay serve` owns them all), in the format the scraper
//! asks for: OpenMetrics 1.0 (`Accept: application/openmetrics-text`, with
//! its content type and `# EOF`), else the Prometheus text format 0.0.4
//! (`text/plain; version=0.0.4`), converted from the OpenMetrics encoding
//! ([`to_text_004`]).
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

/// A gRPC call made to another service: `operation` is `service/Method`
/// (`sasl-auth/Start`), `status` the gRPC status code name (`OK`,
/// `UNAVAILABLE`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub operation: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksLabels {
    /// The configured issuer URL (few, operator-chosen: bounded cardinality).
    pub issuer: String,
    pub outcome: String,
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
    /// Greetings held back while the frontend was overloaded, by how long.
    pub greeting_holds: Histogram,
    pub tls_handshakes: Family<OutcomeLabel, Counter>,
    pub queue_messages: Gauge,
    pub queue_oldest_age: Gauge,
    pub deliveries: Family<OutcomeLabel, Counter>,
    /// `authrelay_grpc_client_duration_seconds{operation,status}`.
    pub grpc_client_calls: Family<RpcLabels, Histogram>,
    pub redis_duration: Family<OpLabel, Histogram>,
    /// sasl-auth's secret cache: result = hit | negative_hit | miss.
    pub auth_cache: Family<ResultLabel, Counter>,
    /// Sealed exchange states refused: reason = expired | tampered | unknown_key | malformed | replayed.
    pub sealed_refusals: Family<ReasonLabel, Counter>,
    /// Span batches the OTLP exporter could not deliver.
    pub trace_export_failures: Counter,
    /// OAuth issuers' key sets fetched: outcome = ok | error.
    pub jwks_fetches: Family<JwksLabels, Counter>,
    /// MAIL/RCPT refused by a per-account limit, by limit name.
    pub limit_refusals: Family<LimitLabel, Counter>,
    /// Accounts this frontend suspended (hard threshold crossed).
    pub account_suspensions: Counter,
    /// Accounts suspended now, cluster-wide (as this frontend last read it).
    pub accounts_suspended: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: String,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    auth_attempts: Family::default(),
    auth_duration: Family::new_with_constructor(latency),
    bruteforce_blocks: Counter::default(),
    sessions_live: Gauge::default(),
    greeting_holds: latency(),
    tls_handshakes: Family::default(),
    queue_messages: Gauge::default(),
    queue_oldest_age: Gauge::default(),
    deliveries: Family::default(),
    grpc_client_calls: Family::new_with_constructor(latency),
    redis_duration: Family::new_with_constructor(latency),
    auth_cache: Family::default(),
    sealed_refusals: Family::default(),
    trace_export_failures: Counter::default(),
    jwks_fetches: Family::default(),
    limit_refusals: Family::default(),
    account_suspensions: Counter::default(),
    accounts_suspended: Gauge::default(),
});

/// Who owns a family: the services that update it.
const FRONTEND: u8 = 1;
const SASL_AUTH: u8 = 2;
const CREDENTIAL_STORE: u8 = 4;
const RELAY_QUEUE: u8 = 8;
const EVERYONE: u8 = 15;

static PROCESS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(EVERYONE);

/// The families this process exposes: `service`'s own (`smtp-frontend`,
/// `sasl-auth`, `credential-store`, `relay-queue`), or all of them for the
/// all-in-one `authrelay` and anything else. [`crate::init`] calls it.
pub fn set_process(service: &str) {
    let owns = match service {
        "smtp-frontend" => FRONTEND,
        "sasl-auth" => SASL_AUTH,
        "credential-store" => CREDENTIAL_STORE,
        "relay-queue" => RELAY_QUEUE,
        _ => EVERYONE,
    };
    PROCESS.store(owns, std::sync::atomic::Ordering::Relaxed);
}

/// The registry of the families this process owns.
fn registry() -> Registry {
    let owns = PROCESS.load(std::sync::atomic::Ordering::Relaxed);
    let m = &*METRICS;
    let mut registry = Registry::with_prefix("authrelay");
    macro_rules! add {
        ($owner:expr, $name:expr, $help:expr, Box::new($metric:expr) $(,)?) => {
            if owns & $owner != 0 {
                registry.register($name, $help, $metric);
            }
        };
    }
    add!(
        FRONTEND,
        "auth_attempts",
        "SMTP AUTH attempts by mechanism and outcome",
        Box::new(m.auth_attempts.clone()),
    );
    add!(
        FRONTEND,
        "auth_duration_seconds",
        "SMTP AUTH latency by mechanism",
        Box::new(m.auth_duration.clone()),
    );
    add!(
        FRONTEND,
        "sessions_live",
        "Open SMTP sessions on this frontend",
        Box::new(m.sessions_live.clone()),
    );
    add!(
        FRONTEND,
        "greeting_hold_seconds",
        "How long new connections waited for their greeting while the frontend was overloaded (held ones only)",
        Box::new(m.greeting_holds.clone()),
    );
    add!(
        FRONTEND,
        "tls_handshakes",
        "TLS handshakes by outcome",
        Box::new(m.tls_handshakes.clone()),
    );
    add!(
        SASL_AUTH,
        "bruteforce_blocks",
        "AUTH attempts refused by the brute-force limits",
        Box::new(m.bruteforce_blocks.clone()),
    );
    add!(
        SASL_AUTH,
        "auth_cache_lookups",
        "sasl-auth secret cache lookups by result (hit, negative_hit, miss)",
        Box::new(m.auth_cache.clone()),
    );
    add!(
        SASL_AUTH,
        "sasl_sealed_state_refusals",
        "Sealed SASL exchange states refused, by reason",
        Box::new(m.sealed_refusals.clone()),
    );
    add!(
        SASL_AUTH,
        "oauth_jwks_fetches",
        "OAuth issuers' JWKS fetches by issuer and outcome (ok, error)",
        Box::new(m.jwks_fetches.clone()),
    );
    add!(
        RELAY_QUEUE,
        "queue_messages",
        "Messages in the spool",
        Box::new(m.queue_messages.clone()),
    );
    add!(
        RELAY_QUEUE,
        "queue_oldest_age_seconds",
        "Age of the oldest queued message",
        Box::new(m.queue_oldest_age.clone()),
    );
    add!(
        RELAY_QUEUE,
        "deliveries",
        "Delivery attempts by outcome",
        Box::new(m.deliveries.clone()),
    );
    add!(
        FRONTEND | SASL_AUTH,
        "grpc_client_duration_seconds",
        "gRPC calls to other services by operation and status",
        Box::new(m.grpc_client_calls.clone()),
    );
    add!(
        FRONTEND | SASL_AUTH | CREDENTIAL_STORE,
        "redis_duration_seconds",
        "Shared-store operations",
        Box::new(m.redis_duration.clone()),
    );
    add!(
        FRONTEND,
        "account_limit_refusals",
        "MAIL/RCPT refused by a per-account sending limit, by limit",
        Box::new(m.limit_refusals.clone()),
    );
    add!(
        FRONTEND,
        "account_suspensions",
        "Accounts suspended by this frontend for crossing a hard sending threshold (alert on any increase)",
        Box::new(m.account_suspensions.clone()),
    );
    add!(
        FRONTEND,
        "accounts_suspended",
        "Accounts suspended now, cluster-wide",
        Box::new(m.accounts_suspended.clone()),
    );
    add!(
        EVERYONE,
        "trace_export_failures",
        "Span batches the OTLP exporter failed to deliver",
        Box::new(m.trace_export_failures.clone()),
    );
    registry
}

/// A MAIL or RCPT refused by the per-account limit `limit`.
pub fn limit_refusal(limit: &str) {
    METRICS
        .limit_refusals
        .get_or_create(&LimitLabel {
            limit: limit.to_owned(),
        })
        .inc();
}

/// An account suspended here; the cluster-wide gauge follows at the next read.
pub fn account_suspended() {
    METRICS.account_suspensions.inc();
    METRICS.accounts_suspended.inc();
}

/// One finished gRPC client call.
pub fn rpc(operation: &str, status: &str, elapsed: Duration) {
    METRICS
        .grpc_client_calls
        .get_or_create(&RpcLabels {
            operation: operation.to_owned(),
            status: status.to_owned(),
        })
        .observe(elapsed.as_secs_f64());
}

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

pub fn jwks_fetch(issuer: &str, ok: bool) {
    METRICS
        .jwks_fetches
        .get_or_create(&JwksLabels {
            issuer: issuer.to_owned(),
            outcome: if ok { "ok" } else { "error" }.to_owned(),
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

/// The registry in OpenMetrics 1.0 text (ends with `# EOF`).
pub fn render_openmetrics() -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry());
    out
}

/// The registry in the Prometheus text format 0.0.4.
pub fn render() -> String {
    to_text_004(&render_openmetrics())
}

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_004_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter's
/// `# TYPE`/`# HELP` name the sample (`…_total`), `_created` samples,
/// exemplars, `# UNIT` and `# EOF` go, `unknown` is `untyped`.
pub fn to_text_004(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters: Vec<String> = Vec::new();
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            match kind {
                "counter" => {
                    counters.push(name.to_owned());
                    out.push_str(&format!("# TYPE {name}_total counter\n"));
                }
                "gauge" | "histogram" | "summary" => out.push_str(&format!("{line}\n")),
                _ => out.push_str(&format!("# TYPE {name} untyped\n")),
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // The HELP of a family precedes its TYPE: look ahead.
            let is_counter = openmetrics
                .lines()
                .any(|l| l == format!("# TYPE {name} counter"));
            let name = if is_counter {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            out.push_str(&format!("# HELP {name} {help}\n"));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample_name = line.split(['{', ' ']).next().unwrap_or("");
        if let Some(base) = sample_name.strip_suffix("_created")
            && counters.iter().any(|c| c == base)
        {
            continue;
        }
        // (No family of ours has exemplars, which 0.0.4 could not carry.)
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Does this `Accept` header prefer OpenMetrics? Media ranges with their
/// `q`; OpenMetrics when it is acceptable and weighs at least as much as
/// `text/plain` (Prometheus asks for it first, with 0.0.4 as fallback).
pub fn wants_openmetrics(accept: &str) -> bool {
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    om > 0.0 && om >= text
}

/// The `Accept` header of a request head, if any.
fn accept_header(head: &str) -> &str {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .map_or("", |(_, v)| v.trim())
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
                let mut buf = vec![0u8; 8192];
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
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("GET "))
                    .and_then(|l| l.split(' ').next())
                    .unwrap_or("");
                let (status, content_type, body) =
                    if path == "/metrics" || path.starts_with("/metrics?") {
                        if wants_openmetrics(accept_header(&head)) {
                            ("200 OK", OPENMETRICS_CONTENT_TYPE, render_openmetrics())
                        } else {
                            ("200 OK", TEXT_004_CONTENT_TYPE, render())
                        }
                    } else {
                        (
                            "404 Not Found",
                            "text/plain; charset=utf-8",
                            "not found\n".to_owned(),
                        )
                    };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_accept_and_q() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(prometheus));
        assert!(wants_openmetrics("application/openmetrics-text"));
        assert!(!wants_openmetrics(""));
        assert!(!wants_openmetrics("text/plain"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics(
            "text/plain;version=0.0.4,application/openmetrics-text;q=0.5"
        ));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
    }

    #[test]
    fn text_004_names_counters_by_their_samples_and_has_no_eof() {
        let om = "# HELP authrelay_deliveries Delivery attempts by outcome.\n\
                  # TYPE authrelay_deliveries counter\n\
                  authrelay_deliveries_total{outcome=\"sent\"} 2\n\
                  authrelay_deliveries_created{outcome=\"sent\"} 1700000000.0\n\
                  # HELP authrelay_queue_messages Messages in the spool.\n\
                  # TYPE authrelay_queue_messages gauge\n\
                  authrelay_queue_messages 0\n\
                  # UNIT authrelay_queue_messages messages\n\
                  # EOF\n";
        let t = to_text_004(om);
        assert_eq!(
            t,
            "# HELP authrelay_deliveries_total Delivery attempts by outcome.\n\
             # TYPE authrelay_deliveries_total counter\n\
             authrelay_deliveries_total{outcome=\"sent\"} 2\n\
             # HELP authrelay_queue_messages Messages in the spool.\n\
             # TYPE authrelay_queue_messages gauge\n\
             authrelay_queue_messages 0\n"
        );
    }

    #[test]
    fn a_process_exposes_only_what_it_owns() {
        // A family without samples is not written at all: give some one.
        outcome(&METRICS.deliveries, "sent");
        auth_cache("hit");
        sealed_refusal("expired");
        auth("PLAIN", "success", Duration::from_millis(1));
        rpc("relay-queue/Enqueue", "OK", Duration::from_millis(1));
        // The registry is built per scrape from the owner, set back below.
        set_process("relay-queue");
        let q = render();
        set_process("sasl-auth");
        let s = render_openmetrics();
        set_process("authrelay");
        let all = render();
        assert!(
            q.contains("# TYPE authrelay_deliveries_total counter"),
            "{q}"
        );
        assert!(!q.contains("authrelay_auth_attempts"), "{q}");
        assert!(!q.contains("authrelay_auth_cache"), "{q}");
        assert!(!q.contains("authrelay_grpc_client"), "{q}");
        assert!(!q.contains("authrelay_sessions_live"), "{q}");
        assert!(
            s.contains("# TYPE authrelay_auth_cache_lookups counter"),
            "{s}"
        );
        assert!(
            s.contains("# TYPE authrelay_sasl_sealed_state_refusals counter"),
            "{s}"
        );
        assert!(!s.contains("authrelay_queue_messages"), "{s}");
        assert!(s.ends_with("# EOF\n"), "{s}");
        for family in [
            "authrelay_auth_attempts_total",
            "authrelay_auth_cache_lookups_total",
            "authrelay_sasl_sealed_state_refusals_total",
            "authrelay_queue_messages",
            "authrelay_grpc_client_duration_seconds",
            "authrelay_trace_export_failures_total",
        ] {
            assert!(
                all.contains(&format!("# TYPE {family} ")),
                "{family}: {all}"
            );
        }
        assert!(all.contains(
            "authrelay_grpc_client_duration_seconds_count{operation=\"relay-queue/Enqueue\",status=\"OK\"} 1"
        ), "{all}");
    }
}

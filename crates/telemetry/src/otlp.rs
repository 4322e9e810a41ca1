//! The span exporter, set up the way the OpenTelemetry specification says
//! an SDK reads its environment:
//!
//! - `OTEL_SDK_DISABLED=true`: nothing is exported, whatever else is set.
//! - `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`:
//!   `grpc` (the default) or `http/protobuf`; anything else is refused
//!   with one log line rather than silently exporting nothing.
//! - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is used as is;
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (and `telemetry.otlp_endpoint`) is the
//!   base URL, to which HTTP appends `/v1/traces`.
//! - The resource: `OTEL_SERVICE_NAME` over `service.name` in
//!   `OTEL_RESOURCE_ATTRIBUTES` over the service's own name; plus
//!   `service.instance.id` (random per process), `service.version` and, in
//!   Kubernetes, `k8s.pod.name`/`k8s.namespace.name` from the downward API
//!   (`K8S_POD_NAME`/`K8S_NAMESPACE_NAME`, or `POD_NAME`/`POD_NAMESPACE`).
//!   What `OTEL_RESOURCE_ATTRIBUTES` names is never overridden.
//! - `OTEL_TRACES_SAMPLER(_ARG)` as usual for request traces; background
//!   work (a root span that is a client call: a Redis PING, a storage read
//!   nobody asked for) is sampled at `telemetry.background_sample_ratio`
//!   (0 by default) so it does not bury the traces that matter.
//! - Export failures are counted (`authrelay_trace_export_failures_total`)
//!   and logged, at most once a minute, with how many there were.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use authrelay_config::Config;
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample, SpanData,
    SpanExporter,
};

/// Which wire the exporter speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `OTEL_SDK_DISABLED=true` (case-insensitive), per the specification.
pub fn sdk_disabled() -> bool {
    env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The configured protocol, or the unsupported value.
pub fn protocol() -> Result<Protocol, String> {
    match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL")) {
        None => Ok(Protocol::Grpc),
        Some(p) if p == "grpc" => Ok(Protocol::Grpc),
        Some(p) if p == "http/protobuf" => Ok(Protocol::HttpProtobuf),
        Some(p) => Err(p),
    }
}

/// Where spans go, or `None` when nothing names a collector.
pub fn endpoint(cfg: &Config, protocol: Protocol) -> Option<String> {
    let base = |b: String| match protocol {
        Protocol::Grpc => b,
        Protocol::HttpProtobuf => format!("{}/v1/traces", b.trim_end_matches('/')),
    };
    if !cfg.telemetry.otlp_endpoint.is_empty() {
        return Some(base(cfg.telemetry.otlp_endpoint.clone()));
    }
    env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT").map(base))
}

/// The keys `OTEL_RESOURCE_ATTRIBUTES` sets.
fn env_resource_keys() -> Vec<String> {
    env("OTEL_RESOURCE_ATTRIBUTES")
        .map(|v| {
            v.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, _)| k.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A random version-4 UUID (RFC 9562), for `service.instance.id`.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The attributes we add to the resource; none that the environment set.
pub fn own_resource_attributes(service: &str) -> Vec<KeyValue> {
    let given = env_resource_keys();
    let mut out = Vec::new();
    let mut add = |k: &'static str, v: Option<String>| {
        if let Some(v) = v
            && !given.iter().any(|g| g == k)
        {
            out.push(KeyValue::new(k, v));
        }
    };
    add("service.name", Some(service.to_owned()));
    add("service.instance.id", Some(uuid_v4()));
    add(
        "service.version",
        Some(env!("CARGO_PKG_VERSION").to_owned()),
    );
    add(
        "k8s.pod.name",
        env("K8S_POD_NAME").or_else(|| env("POD_NAME")),
    );
    add(
        "k8s.namespace.name",
        env("K8S_NAMESPACE_NAME").or_else(|| env("POD_NAMESPACE")),
    );
    // Above OTEL_RESOURCE_ATTRIBUTES (whose detector runs after the one
    // that reads OTEL_SERVICE_NAME, so it would win otherwise).
    if let Some(name) = env("OTEL_SERVICE_NAME") {
        out.push(KeyValue::new("service.name", name));
    }
    out
}

pub fn resource(service: &str) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder()
        .with_attributes(own_resource_attributes(service))
        .build()
}

/// Root spans that are client calls (Redis, storage, another service)
/// started by no request: background work. Everything else goes to the
/// configured sampler.
#[derive(Clone, Debug)]
pub struct NoiseSampler {
    inner: Box<dyn ShouldSample>,
    background: Sampler,
}

impl NoiseSampler {
    /// `OTEL_TRACES_SAMPLER(_ARG)` (the SDK parses them) for requests,
    /// `ratio` for background roots.
    pub fn from_env(ratio: f64) -> Self {
        NoiseSampler {
            inner: opentelemetry_sdk::trace::Config::default().sampler,
            background: Sampler::TraceIdRatioBased(ratio.clamp(0.0, 1.0)),
        }
    }
}

impl ShouldSample for NoiseSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let has_parent = parent_context.is_some_and(|cx| cx.span().span_context().is_valid());
        if !has_parent && *span_kind == SpanKind::Client {
            return self.background.should_sample(
                parent_context,
                trace_id,
                name,
                span_kind,
                attributes,
                links,
            );
        }
        self.inner
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// Is a sampling result a drop? (For tests.)
pub fn dropped(r: &SamplingResult) -> bool {
    r.decision == SamplingDecision::Drop
}

/// Counts and reports failed exports: a collector that is down must not
/// be silent, nor flood the log.
#[derive(Debug)]
pub struct Reporting<E> {
    inner: E,
    endpoint: String,
    state: Mutex<ReportState>,
}

#[derive(Debug)]
struct ReportState {
    last: Option<Instant>,
    suppressed: u64,
}

const REPORT_EVERY: Duration = Duration::from_secs(60);

impl<E> Reporting<E> {
    pub fn new(inner: E, endpoint: String) -> Self {
        Reporting {
            inner,
            endpoint,
            state: Mutex::new(ReportState {
                last: None,
                suppressed: 0,
            }),
        }
    }

    fn failed(&self, spans: usize, error: &dyn std::fmt::Display) {
        crate::metrics::METRICS.trace_export_failures.inc();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if st
            .last
            .is_some_and(|t| now.duration_since(t) < REPORT_EVERY)
        {
            st.suppressed += 1;
            return;
        }
        let earlier = std::mem::take(&mut st.suppressed);
        st.last = Some(now);
        drop(st);
        tracing::warn!(
            target: "authrelay::otlp",
            "trace export to {} failed: {error}; {spans} spans lost{}",
            self.endpoint,
            if earlier > 0 {
                format!(" (and {earlier} more failed exports in the last minute)")
            } else {
                String::new()
            }
        );
    }
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let r = self.inner.export(batch).await;
        if let Err(e) = &r {
            self.failed(n, e);
        }
        r
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// OTLP/HTTP's client: hyper (HTTP/1.1, `http://` endpoints), run on the
/// service's own runtime, so the batch processor's thread can wait for it.
#[derive(Debug)]
pub struct HttpClient {
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<opentelemetry_http::Bytes>,
    ) -> Result<http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let timeout = self.timeout;
        let task = self.runtime.spawn(async move {
            tokio::time::timeout(timeout, send(request))
                .await
                .map_err(|_| -> opentelemetry_http::HttpError { "timed out".into() })?
        });
        task.await?
    }
}

async fn send(
    request: http::Request<opentelemetry_http::Bytes>,
) -> Result<http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
    use http_body_util::BodyExt;
    let uri = request.uri().clone();
    if uri.scheme_str() != Some("http") {
        return Err(format!("{uri}: only http:// endpoints for http/protobuf").into());
    }
    let host = uri.host().ok_or("no host in the endpoint")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let (mut parts, body) = request.into_parts();
    if !parts.headers.contains_key(http::header::HOST) {
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        parts
            .headers
            .insert(http::header::HOST, http::HeaderValue::from_str(&authority)?);
    }
    // HTTP/1.1 wants origin-form: the path, not the whole URL.
    parts.uri = uri.path_and_query().map_or("/", |p| p.as_str()).parse()?;
    let resp = sender
        .send_request(http::Request::from_parts(
            parts,
            http_body_util::Full::new(body),
        ))
        .await?;
    let (parts, body) = resp.into_parts();
    let body = http_body_util::Limited::new(body, 4 << 20)
        .collect()
        .await?
        .to_bytes();
    Ok(http::Response::from_parts(parts, body))
}

/// Why tracing export is off, when it is and someone should know.
pub enum Off {
    /// No collector configured (or the SDK disabled): say nothing.
    Quiet,
    /// Misconfigured: say this once.
    Say(String),
}

/// The provider, or why there is none. Call inside the runtime.
pub fn provider(service: &str, cfg: &Config) -> Result<SdkTracerProvider, Off> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    if sdk_disabled() {
        return Err(Off::Quiet);
    }
    let protocol = protocol().map_err(|p| {
        Off::Say(format!(
            "OTLP protocol {p:?} is not supported (grpc or http/protobuf); tracing export off"
        ))
    });
    // Without a collector, an unsupported protocol is nobody's concern.
    let endpoint =
        endpoint(cfg, *protocol.as_ref().unwrap_or(&Protocol::Grpc)).ok_or(Off::Quiet)?;
    let protocol = protocol?;
    let built = match protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build(),
        Protocol::HttpProtobuf => {
            let runtime = tokio::runtime::Handle::try_current()
                .map_err(|e| Off::Say(format!("OTLP/HTTP needs a runtime: {e}")))?;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(HttpClient {
                    runtime,
                    timeout: Duration::from_secs(10),
                })
                .with_endpoint(endpoint.clone())
                .build()
        }
    };
    let exporter = built.map_err(|e| {
        Off::Say(format!(
            "OTLP exporter for {endpoint}: {e}; tracing export off"
        ))
    })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(Reporting::new(exporter, endpoint))
        .with_sampler(NoiseSampler::from_env(
            cfg.telemetry.background_sample_ratio,
        ))
        .with_resource(resource(service))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_roots_are_dropped_and_requests_kept() {
        let s = NoiseSampler {
            inner: Box::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))),
            background: Sampler::TraceIdRatioBased(0.0),
        };
        let id = TraceId::from_bytes([7; 16]);
        let sample = |kind: SpanKind, cx: Option<&Context>| {
            s.should_sample(cx, id, "redis PING", &kind, &[], &[])
        };
        assert!(dropped(&sample(SpanKind::Client, None)));
        assert!(!dropped(&sample(SpanKind::Server, None)));
        assert!(!dropped(&sample(SpanKind::Internal, None)));
        // Under a sampled request, a client call is part of it.
        let parent =
            Context::new().with_remote_span_context(opentelemetry::trace::SpanContext::new(
                id,
                opentelemetry::trace::SpanId::from_bytes([1; 8]),
                opentelemetry::trace::TraceFlags::SAMPLED,
                true,
                Default::default(),
            ));
        assert!(!dropped(&sample(SpanKind::Client, Some(&parent))));
        // Sampled in by configuration.
        let all = NoiseSampler {
            inner: Box::new(Sampler::AlwaysOn),
            background: Sampler::TraceIdRatioBased(1.0),
        };
        assert!(!dropped(&all.should_sample(
            None,
            id,
            "redis PING",
            &SpanKind::Client,
            &[],
            &[]
        )));
    }

    #[test]
    fn uuid_is_version_4() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, uuid_v4());
    }
}

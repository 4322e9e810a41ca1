//! W3C trace context across gRPC hops, decided once: [`TraceLayer`] on
//! every server extracts `traceparent`/`tracestate` and opens the server
//! span under it; [`traced`] wraps every client channel with an
//! interceptor that injects the caller's current context, and measures
//! each call by operation and status.

use std::task::{Context, Poll};

use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The internal token this process presents on every call to another
/// service (`internal.token_file`); set once at start.
static INTERNAL_TOKEN: std::sync::OnceLock<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
    std::sync::OnceLock::new();

/// Present `token` (in the `x-authrelay-internal-token` header) on every
/// call this process makes through a [`traced`] channel. The first call
/// wins; a token that is not a valid header value is refused.
pub fn present_internal_token(token: &str) -> Result<(), String> {
    let v = token
        .parse()
        .map_err(|_| "internal token: not printable ASCII".to_owned())?;
    let _ = INTERNAL_TOKEN.set(v);
    Ok(())
}

/// Client side: puts the current span's context into the request metadata,
/// and the internal token when the process has one.
#[derive(Clone, Copy, Debug, Default)]
pub struct InjectContext;

impl Interceptor for InjectContext {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let cx = tracing::Span::current().context();
        global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut MetadataInjector(req.metadata_mut()))
        });
        if let Some(t) = INTERNAL_TOKEN.get() {
            req.metadata_mut()
                .insert("x-authrelay-internal-token", t.clone());
        }
        Ok(req)
    }
}

/// A client channel that propagates trace context and measures every call
/// (`authrelay_grpc_client_duration_seconds{operation,status}`).
pub type Traced = Measured<InterceptedService<Channel, InjectContext>>;

pub fn traced(channel: Channel) -> Traced {
    Measured {
        inner: InterceptedService::new(channel, InjectContext),
    }
}

/// Times each call to its response and labels it with the gRPC status:
/// the `grpc-status` of a trailers-only response (how a server answers an
/// error), `OK` for a response with a body, `UNAVAILABLE` when the call
/// never got an answer.
#[derive(Clone, Debug)]
pub struct Measured<S> {
    inner: S,
}

/// `/authrelay.sasl.v1.SaslAuth/Start` → `sasl-auth/Start`.
pub fn operation(path: &str) -> String {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let simple = service.rsplit('.').next().unwrap_or(service);
    let mut kebab = String::with_capacity(simple.len() + 2);
    for (i, c) in simple.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                kebab.push('-');
            }
            kebab.push(c.to_ascii_lowercase());
        } else {
            kebab.push(c);
        }
    }
    format!("{kebab}/{method}")
}

/// The gRPC status code's name, as the specification spells it.
pub fn status_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for Measured<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let op = operation(req.uri().path());
        let started = std::time::Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            let status = match &result {
                Ok(resp) => match resp.headers().get("grpc-status") {
                    Some(v) => status_name(tonic::Code::from_bytes(v.as_bytes())),
                    None if resp.status() == http::StatusCode::OK => "OK",
                    None => "UNKNOWN",
                },
                Err(_) => "UNAVAILABLE",
            };
            crate::metrics::rpc(&op, status, started.elapsed());
            result
        })
    }
}

/// Streams that carry many calls, each with its own trace context, and
/// open no span of their own.
pub const MULTIPLEXED: &[&str] = &["/authrelay.sasl.v1.SaslAuth/Exchange"];

/// Server side: one span per call, child of the caller's context, named and
/// attributed per the OpenTelemetry RPC conventions.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer;

impl<S> tower::Layer<S> for TraceLayer {
    type Service = TraceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct TraceService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for TraceService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        // Health probes every few seconds would drown real traces; a
        // long-lived stream that carries many calls spans each of them
        // itself (one span for the stream would hang off whichever AUTH
        // opened it, for as long as it lives).
        if path.starts_with("/grpc.health.") || MULTIPLEXED.contains(&path) {
            return self.inner.call(req).instrument(tracing::Span::none());
        }
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let parent =
            global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
        let span = tracing::info_span!(
            "grpc",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
        );
        let _ = span.set_parent(parent);
        self.inner.call(req).instrument(span)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn operation_names_are_the_services_names() {
        assert_eq!(
            super::operation("/authrelay.sasl.v1.SaslAuth/Start"),
            "sasl-auth/Start"
        );
        assert_eq!(
            super::operation("/authrelay.queue.v1.RelayQueue/Enqueue"),
            "relay-queue/Enqueue"
        );
        assert_eq!(
            super::operation("/authrelay.credentials.v1.CredentialStore/GetSecret"),
            "credential-store/GetSecret"
        );
    }
}

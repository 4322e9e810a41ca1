//! Logging, tracing and metrics shared by every service.
//!
//! - Log lines are one event each, grep-able `key=value` (or JSON), in the
//!   spirit of sendmail's `AUTH=server, relay=…, mech=…, bits=…`; events
//!   inside a traced span carry its `trace_id` and `span_id`.
//! - Spans go to an OTLP collector (gRPC or http/protobuf) when one is
//!   configured (`telemetry.otlp_endpoint` or the standard `OTEL_*`
//!   variables, read as the specification says: [`otlp`]), and nowhere —
//!   quietly — when none is. Which spans is decided apart from the log
//!   level ([`layers`]).
//! - W3C trace context crosses every gRPC hop through [`grpc`]: one layer on
//!   every server, one interceptor on every client.
//! - Prometheus metrics in [`metrics`].
//! - Data directories and files private to the service's user, whatever
//!   the umask, in [`private_fs`].

pub mod grpc;
pub mod layers;
pub mod metrics;
pub mod otlp;
pub mod private_fs;

use authrelay_config::{Config, LogFormat};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the exporter alive; dropping it flushes the spans still buffered
/// (so a service's last spans are not lost on SIGTERM).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

/// rustls warns for every TLS client that sends an IP address as SNI (RFC
/// 6066 §3 forbids it, and rustls then ignores the name, as it should).
/// Some mail clients always do: one WARN per session is noise that buries
/// real warnings, so that target logs errors only.
fn quiet_known_noise(filter: EnvFilter) -> EnvFilter {
    match "rustls::msgs::handshake=error".parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    }
}

/// Install the global subscriber for `service`: log lines filtered by
/// `log.level` (`RUST_LOG` wins), spans by `telemetry.trace_filter`, each
/// on its own — a quiet log does not mean no traces. A second call (the
/// all-in-one binary) is a no-op that returns an inert guard.
pub fn init(service: &str, cfg: &Config) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    metrics::set_process(service);
    let log_filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let log_filter = quiet_known_noise(log_filter);
    let (provider, complaint) = match otlp::provider(service, cfg) {
        Ok(p) => (Some(p), None),
        Err(otlp::Off::Quiet) => (None, None),
        Err(otlp::Off::Say(why)) => (None, Some(why)),
    };
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service.to_owned()))
            .with_filter(layers::SpanFilter::new(
                &cfg.telemetry.trace_filter,
                cfg.telemetry.span_user_names,
            ))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(otel_layer);
    let result = match cfg.log.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi)
                    .with_target(false)
                    .event_format(layers::WithTraceIds::new(
                        tracing_subscriber::fmt::format().with_target(false),
                        false,
                    ))
                    .with_filter(log_filter),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .event_format(layers::WithTraceIds::new(
                        tracing_subscriber::fmt::format().json().with_target(false),
                        true,
                    ))
                    .with_filter(log_filter),
            )
            .try_init(),
    };
    if result.is_err() {
        // Someone installed a subscriber already (all-in-one): keep theirs.
        return Telemetry { provider: None };
    }
    if let Some(why) = complaint {
        tracing::warn!("{service}: {why}");
    }
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
        tracing::dispatcher::get_default(|d| {
            let _ = layers::DISPATCH.set(d.clone());
        });
    }
    Telemetry { provider }
}

/// Formerly recorded the trace ids into the span's own fields; every log
/// line inside a traced span now carries them (see [`layers`]), so this
/// does nothing and is kept for its callers.
pub fn record_trace_ids(_span: &tracing::Span) {}

/// The W3C `traceparent` of the current span (empty when nothing is
/// traced), to carry a trace where gRPC metadata cannot: in a queued
/// message's envelope, or to the next hop in `XTRACE`.
pub fn traceparent() -> String {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::<String, String>::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove("traceparent").unwrap_or_default()
}

/// The remote context a `traceparent` names, or `None` when it is empty or
/// malformed (the propagator validates version, ids and flags).
pub fn context_from_traceparent(traceparent: &str) -> Option<opentelemetry::Context> {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    if traceparent.is_empty() || traceparent.len() > 128 {
        return None;
    }
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    // From an empty context: `extract` falls back to the current one (the
    // caller's own span) when the value does not parse.
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract_with_context(&opentelemetry::Context::new(), &carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Make the remote context named by `traceparent` the parent of `span`
/// (which must not have started: call before entering it or reading its
/// ids). False, and nothing changed, when the value is malformed.
pub fn adopt_parent(span: &tracing::Span, traceparent: &str) -> bool {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    context_from_traceparent(traceparent).is_some_and(|cx| span.set_parent(cx).is_ok())
}

/// Resolves on SIGTERM or SIGINT: the one shutdown trigger every service uses.
///
/// The handlers are installed when this is *called*, not when the future is
/// first polled: services call it before they bind, so a SIGTERM that comes
/// while they are still starting (Kubernetes deleting a pod that just began,
/// or a test restarting one) is held until they are up and then shuts them
/// down cleanly. With the signal's default action instead, the process died
/// wherever it was: a credential-store killed while creating its database
/// file left one that never opened again. Must be called inside a runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            // Installing a handler only fails if the runtime has no signal
            // driver; then wait for nothing rather than stop at once.
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {},
                _ = wait(int) => {},
            }
            tracing::info!("shutdown requested");
        }
    }
    #[cfg(not(unix))]
    async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
    }
}

/// Print where a service listens, on stdout, flushed: operators read it, and
/// the test harness reads it to learn ephemeral ports.
pub fn announce(service: &str, what: &str, addr: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{service} listening on {addr} ({what})");
    let _ = out.flush();
}

/// The whole `main` of a service binary: `--config FILE` (plus `AUTHRELAY__*`
/// overrides), logging and tracing, a runtime, then `run` until it returns.
/// A bad configuration exits non-zero naming the key, the value and why.
pub fn service_main<F, Fut, E>(
    service: &'static str,
    about: &'static str,
    run: F,
) -> std::process::ExitCode
where
    F: FnOnce(authrelay_config::Config) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let matches = clap::Command::new(service)
        .version(env!("CARGO_PKG_VERSION"))
        .about(about)
        .arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(std::path::PathBuf))
                .help("TOML configuration file (AUTHRELAY__* environment variables override it)"),
        )
        .get_matches();
    let config = matches.get_one::<std::path::PathBuf>("config");
    let cfg = match authrelay_config::Config::load(config.map(|p| p.as_path())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{service}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{service}: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's tonic channel spawns onto the runtime when built;
    // declared after `runtime`, the guard flushes spans before it stops.
    let _telemetry = {
        let _enter = runtime.enter();
        init(service, &cfg)
    };
    match runtime.block_on(run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{service}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

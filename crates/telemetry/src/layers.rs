//! The two halves of the subscriber, filtered each on its own:
//!
//! - log lines: `log.level` (or `RUST_LOG`), and every line inside a traced
//!   span carries that span's `trace_id` and `span_id` — in text and JSON,
//!   in every service — through [`WithTraceIds`];
//! - spans: [`SpanFilter`], `telemetry.trace_filter` (`info` by default)
//!   whatever the log level, minus the transport crates under the exporter
//!   (their spans would trace the export itself), and — unless
//!   `telemetry.span_user_names` — minus the events that may name a user.

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;

/// The process's subscriber, to ask the OpenTelemetry layer for a span's
/// context; set by [`crate::init`] once it is installed with that layer.
pub(crate) static DISPATCH: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();

/// The trace and span ids of the innermost span around the event that is
/// traced (exported spans only: one the span filter left out has none).
fn ids<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    use opentelemetry::trace::TraceContextExt;
    let dispatch = DISPATCH.get()?;
    let scope = ctx.event_scope()?;
    for span in scope {
        if let Some(cx) = tracing_opentelemetry::get_otel_context(&span.id(), dispatch) {
            let span = cx.span();
            let sc = span.span_context();
            if sc.is_valid() {
                return Some((sc.trace_id().to_string(), sc.span_id().to_string()));
            }
        }
    }
    None
}

/// Wraps the fmt layer's formatter: text lines end with
/// ` trace_id=… span_id=…`, JSON objects gain `"trace_id"` and `"span_id"`.
pub struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<F> WithTraceIds<F> {
    pub fn new(inner: F, json: bool) -> Self {
        WithTraceIds { inner, json }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = ids(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        if self.json {
            match body.strip_prefix('{') {
                Some(rest) => write!(
                    writer,
                    "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
                )?,
                None => writer.write_str(body)?,
            }
        } else {
            write!(writer, "{body} trace_id={trace_id} span_id={span_id}")?;
        }
        writeln!(writer)
    }
}

/// Crates whose spans and events would trace the exporter itself.
const EXPORT_PATH: &str = "h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off,opentelemetry_http=off";

/// What goes to the span exporter.
pub struct SpanFilter {
    env: EnvFilter,
    user_names: bool,
}

impl SpanFilter {
    pub fn new(directives: &str, user_names: bool) -> Self {
        let directives = if directives.trim().is_empty() {
            "info"
        } else {
            directives
        };
        let env = EnvFilter::try_new(format!("{directives},{EXPORT_PATH}"))
            .unwrap_or_else(|_| EnvFilter::new(format!("info,{EXPORT_PATH}")));
        SpanFilter { env, user_names }
    }
}

/// Field names that hold a user's name.
const USER_FIELDS: &[&str] = &[
    "user",
    "authid",
    "authzid",
    "authcid",
    "enduser.id",
    "user.name",
    "mail_from",
    "from",
    "to",
    "recipient",
];

/// Could this event name a user? Decided on the callsite alone (per-layer
/// filters cannot look at values without upsetting the filter state of the
/// other layer): auth lines (target `auth`), fields named for users, and
/// any free-text line below WARN — the envelope and delivery lines
/// (`from=<…>`, `authid=…`, `to=<…>`) are INFO. Such an event stays in the
/// log, which carries the trace id; it only does not become a span event.
pub fn may_name_a_user(meta: &tracing::Metadata<'_>) -> bool {
    if !meta.is_event() {
        return false;
    }
    meta.target() == "auth"
        || meta.target().ends_with("::auth")
        || meta
            .fields()
            .iter()
            .any(|f| USER_FIELDS.contains(&f.name()))
        || *meta.level() > tracing::Level::WARN
}

impl<S> Filter<S> for SpanFilter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, meta: &tracing::Metadata<'_>, cx: &Context<'_, S>) -> bool {
        (self.user_names || !may_name_a_user(meta)) && Filter::<S>::enabled(&self.env, meta, cx)
    }
    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if !self.user_names && may_name_a_user(meta) {
            return tracing::subscriber::Interest::never();
        }
        Filter::<S>::callsite_enabled(&self.env, meta)
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Filter::<S>::max_level_hint(&self.env)
    }
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        Filter::<S>::on_new_span(&self.env, attrs, id, ctx)
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        Filter::<S>::on_record(&self.env, id, values, ctx)
    }
    fn on_enter(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        Filter::<S>::on_enter(&self.env, id, ctx)
    }
    fn on_exit(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        Filter::<S>::on_exit(&self.env, id, ctx)
    }
    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        Filter::<S>::on_close(&self.env, id, ctx)
    }
}

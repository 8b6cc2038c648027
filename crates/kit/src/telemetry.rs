//! Logs and traces. Every service logs to stderr (filtered by `RUST_LOG`) and records a
//! span per unit of work (`watcher.publish`, `secrets.verdict`, `resolver.rebuild`,
//! `haproxy.apply`, `envoy.serve`, ...). A span continues the trace carried by the envelope
//! it consumed, and what it publishes carries the span's own context, so one change is one
//! trace from the watcher to the proxies.
//!
//! Spans are exported with OTLP when the standard variables ask for it:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`),
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`),
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`; `OTEL_SDK_DISABLED=true`
//! or `OTEL_TRACES_EXPORTER=none` turn export off. Without an endpoint nothing is
//! exported, but spans still get ids, so log lines name the trace either way.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use portico_bus::TraceContext;
use std::str::FromStr;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The tracer provider of this process; `shutdown` exports what is still buffered.
pub struct Telemetry {
    provider: SdkTracerProvider,
    /// Where spans go, for the start-up log line; `None` when nothing is exported.
    pub exporting_to: Option<String>,
    /// Why the configured exporter could not be built (then nothing is exported).
    pub export_error: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// The configured OTLP endpoint, unless export is switched off.
fn export_endpoint() -> Option<String> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// Build the tracer provider for `service` (the default `service.name`). Must run inside a
/// tokio runtime: the gRPC and HTTP exporters use it for their connections.
pub fn provider(service: &str) -> Telemetry {
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named_by_env = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|a| a.split(',').any(|kv| kv.trim().starts_with("service.name=")));
    if !named_by_env {
        resource = resource.with_service_name(service.to_owned());
    }
    resource = resource.with_attribute(KeyValue::new("service.instance.id", crate::cli::instance_name(None)));
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    let (mut exporting_to, mut export_error) = (None, None);
    if let Some(endpoint) = export_endpoint() {
        match opentelemetry_otlp::SpanExporter::builder().build() {
            Ok(exporter) => {
                let handle = tokio::runtime::Handle::current();
                builder = builder.with_batch_exporter(OnRuntime { inner: std::sync::Arc::new(exporter), handle });
                exporting_to = Some(endpoint);
            }
            // Logged once the subscriber is installed (see `init`).
            Err(e) => export_error = Some(format!("the OTLP exporter for {endpoint} cannot be built: {e}")),
        }
    }
    Telemetry { provider: builder.build(), exporting_to, export_error }
}

/// The OTLP exporter, run on the service's runtime: the batch processor calls it from a
/// thread of its own, where the HTTP client would find no tokio reactor.
#[derive(Debug)]
struct OnRuntime {
    inner: std::sync::Arc<opentelemetry_otlp::SpanExporter>,
    handle: tokio::runtime::Handle,
}

impl opentelemetry_sdk::trace::SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let inner = self.inner.clone();
        let exported = self.handle.spawn(async move { inner.export(batch).await });
        async move {
            exported
                .await
                .unwrap_or_else(|e| Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(e.to_string())))
        }
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // Called while the provider is built, before anything else holds the exporter.
        if let Some(inner) = std::sync::Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// Install the log and trace subscriber for `service`. Logs follow `RUST_LOG` (default
/// `info`); spans of Portico's own code are recorded whatever `RUST_LOG` says, so turning
/// logs down does not break traces.
pub fn init(service: &str) -> Telemetry {
    let telemetry = provider(service);
    let logs = tracing_subscriber::fmt::layer()
        .with_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    let traces = tracing_opentelemetry::layer()
        .with_tracer(telemetry.provider.tracer("portico"))
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::Targets::new().with_target("portico", tracing::Level::INFO));
    let _ = tracing_subscriber::registry().with(logs).with(traces).try_init();
    match (&telemetry.exporting_to, &telemetry.export_error) {
        (_, Some(e)) => tracing::error!("traces are not exported: {e}; fix the OTEL_EXPORTER_OTLP_* variables"),
        (Some(to), None) => tracing::info!(endpoint = %to, "exporting traces with OTLP"),
        (None, None) => tracing::debug!("no OTEL_EXPORTER_OTLP_ENDPOINT: traces are not exported"),
    }
    telemetry
}

impl Telemetry {
    /// Export the spans still buffered and stop. Blocks (up to the exporter's timeout), so
    /// call it off the async workers, while the runtime still runs.
    pub fn shutdown(self) {
        if self.exporting_to.is_some() {
            if let Err(e) = self.provider.shutdown() {
                eprintln!("exporting the last spans: {e}");
            }
        }
    }
}

/// The OpenTelemetry side of the envelope's trace context.
pub trait CarriedContext {
    /// The OpenTelemetry span context this carries, when it carries one.
    fn span_context(&self) -> Option<SpanContext>;
}

impl CarriedContext for TraceContext {
    fn span_context(&self) -> Option<SpanContext> {
        let parent = self.traceparent.as_deref()?;
        // `TraceContext::new` validated the form: 00-<trace id>-<span id>-<flags>.
        let trace_id = TraceId::from_hex(parent.get(3..35)?).ok()?;
        let span_id = SpanId::from_hex(parent.get(36..52)?).ok()?;
        let flags = u8::from_str_radix(parent.get(53..55)?, 16).ok()?;
        let state = self.tracestate.as_deref().and_then(|s| TraceState::from_str(s).ok()).unwrap_or_default();
        Some(SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state))
    }
}

/// The context of `span`, when it is recorded by the OpenTelemetry layer.
pub fn of_span(span: &tracing::Span) -> Option<TraceContext> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return None;
    }
    let parent =
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8());
    let state = span_context.trace_state().header();
    Some(TraceContext::new(&parent, Some(&state).filter(|s| !s.is_empty()).map(String::as_str)))
}

/// Make `span` a child of the trace `parent` carries (a no-op for an empty context). Call
/// it before the span is first entered: the parent of a started span cannot change.
pub fn continue_trace(span: &tracing::Span, parent: &TraceContext) {
    if let Some(remote) = parent.span_context() {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// Link `span` to another trace it also handles (a rebuild that folds several changes).
pub fn link(span: &tracing::Span, other: &TraceContext) {
    if let Some(remote) = other.span_context() {
        span.add_link(remote);
    }
}

/// For a unit of work that folds several changes (`causes`, oldest first): `span` becomes
/// the child of the first and links the others. Returns the context to publish from it.
pub fn fold_causes(span: &tracing::Span, causes: &[TraceContext]) -> TraceContext {
    let Some((first, others)) = causes.split_first() else { return outgoing(span, &TraceContext::default()) };
    continue_trace(span, first);
    for other in others {
        link(span, other);
    }
    outgoing(span, first)
}

/// The trace context to publish from `span`: its own when it is recorded, else `fallback`
/// (in tests without the subscriber), so the trace id is carried on either way.
pub fn outgoing(span: &tracing::Span, fallback: &TraceContext) -> TraceContext {
    of_span(span).unwrap_or_else(|| fallback.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carried_context_becomes_a_remote_span_context_and_back() {
        let carried = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("vendor=x"));
        let remote = carried.span_context().expect("a span context");
        assert_eq!(remote.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(remote.span_id().to_string(), "00f067aa0ba902b7");
        assert!(remote.is_sampled() && remote.is_remote());
        assert_eq!(remote.trace_state().header(), "vendor=x");
        assert_eq!(TraceContext::default().span_context(), None);
    }

    #[test]
    fn a_span_continues_the_carried_trace_and_passes_on_its_own_span_id() {
        let telemetry = provider("portico-test");
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(telemetry.provider.tracer("test")));
        let carried = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None);
        let passed_on = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("unit");
            continue_trace(&span, &carried);
            outgoing(&span, &TraceContext::default())
        });
        let passed_on = passed_on.traceparent.expect("a traceparent");
        assert!(passed_on.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "same trace: {passed_on}");
        assert!(!passed_on.contains("00f067aa0ba902b7"), "a new span id: {passed_on}");
        assert!(passed_on.ends_with("-01"), "sampled: {passed_on}");
    }

    #[test]
    fn without_the_subscriber_the_carried_context_is_passed_on_unchanged() {
        let carried = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None);
        let span = tracing::info_span!("unit");
        continue_trace(&span, &carried);
        assert_eq!(outgoing(&span, &carried), carried);
    }
}

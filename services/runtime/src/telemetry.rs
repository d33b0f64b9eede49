//! Logs and traces.
//!
//! Logs go to stdout through `tracing`, pretty on a terminal and JSON
//! otherwise. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also
//! exported over OTLP/gRPC (the tonic exporter: the async reqwest exporter
//! panics its export thread and silently drops every span). W3C trace
//! context crosses process boundaries through gRPC metadata: the server
//! layer extracts it ([`extract_context`]) and the client injects it
//! ([`inject_context`]).

use std::{
    collections::HashMap,
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::Context as _;
use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use crate::config::{CommonConfig, LogFormat};

/// Whether spans leave the process: hot paths create their per-message
/// spans only then.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported (`OTEL_EXPORTER_OTLP_ENDPOINT` is set).
/// Per-message spans (a WebSocket send, its storage and its publish) cost
/// time on paths that run tens of thousands of times a second, so they are
/// made only when someone will see them.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Marks traces as exported, for tests that install their own exporter.
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// The W3C trace context of `span`, to carry inside a message where
/// there are no per-message headers (a frame on a long-lived stream).
pub fn context_of(span: &tracing::Span) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    let context = span.context();
    global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut carrier));
    carrier
}

/// Sets the parent of `span` from a trace context carried in a message.
pub fn set_parent_from(span: &tracing::Span, carrier: &HashMap<String, String>) {
    if carrier.is_empty() {
        return;
    }
    let parent = global::get_text_map_propagator(|propagator| propagator.extract(carrier));
    // Fails only when the span is disabled; then there is nothing to link.
    let _ = span.set_parent(parent);
}

/// Flushes and shuts the trace exporter down when dropped, so the spans of
/// the last seconds before exit are not lost. Keep it alive in `main`.
#[must_use = "dropping the guard stops trace export"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("failed to flush traces on exit: {err}");
        }
    }
}

/// Installs the global `tracing` subscriber and, when an OTLP endpoint is
/// configured, the trace exporter. Call once, from `main`, inside the Tokio
/// runtime (the gRPC exporter needs it).
///
/// # Errors
/// Fails when the log filter is malformed, the exporter cannot be built or a
/// subscriber is already installed.
pub fn init(service_name: &'static str, config: &CommonConfig) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_new(&config.log_filter)
        .with_context(|| format!("RUST_LOG: invalid log filter `{}`", config.log_filter))?;
    let format = config.log_format.unwrap_or_else(|| {
        if std::io::stdout().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        }
    });
    let fmt_layer = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().boxed(),
    };

    let provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .with_context(|| {
                    format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot export to `{endpoint}`")
                })?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name(service_name).build())
                    .build(),
            )
        }
        None => None,
    };
    set_exporting(provider.is_some());
    let otel_layer = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name)));

    tracing_subscriber::registry()
        .with(otel_layer)
        .with(fmt_layer.with_filter(filter))
        .try_init()
        .context("a tracing subscriber is already installed")?;
    Ok(TelemetryGuard { provider })
}

/// Sets the parent of `span` from the W3C `traceparent` in `headers`, if any.
pub fn extract_context(headers: &http::HeaderMap, span: &tracing::Span) {
    let parent =
        global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)));
    // Fails only when the span is disabled; then there is nothing to link.
    let _ = span.set_parent(parent);
}

/// Writes the current span's W3C trace context into outgoing `headers`.
pub fn inject_context(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers))
    });
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

//! Traces: W3C trace context in, OpenTelemetry spans out over OTLP.
//!
//! Why it is shaped like this:
//!
//! - **Off by default, and then free.** Without `[telemetry] otlp_endpoint` no tracer is
//!   installed; [`start`] then only hands the caller's parent context on (one `OnceLock` read),
//!   so a request's `traceparent` still reaches its job record and its children, and nothing
//!   is recorded or sent.
//! - **Spans follow the work, not the call stack.** A job runs in its own task, possibly after
//!   a restart, so its parent is not "the current span" but the [`TraceParent`] stored on its
//!   record: the HTTP request's span for a submitted job, the `agent.delegate` host call's span
//!   for a child. One trace therefore reads request → job → host calls → child job → …
//! - **Export runs off the request path.** The SDK's batch processor queues finished spans and
//!   exports them from its own thread. The OTLP/gRPC exporter (tonic) needs a Tokio reactor,
//!   which that thread lacks, so [`OnRuntime`] drives each export on the host's runtime.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use serde::Deserialize;

/// The policy file's `[telemetry]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`. No traces are recorded without it.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// How often finished spans are sent.
    pub export_interval_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { otlp_endpoint: None, service_name: "corral".into(), export_interval_ms: 2_000 }
    }
}

static TRACER: OnceLock<opentelemetry_sdk::trace::SdkTracer> = OnceLock::new();

/// The installed exporter; [`Telemetry::shutdown`] sends what is still queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes and stops the exporter (blocking: call it off the async workers).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
    }
}

/// Installs the OTLP exporter if `config` names a collector. Call once, inside the runtime.
pub fn init(config: &TelemetryConfig) -> Result<Option<Telemetry>, String> {
    let Some(endpoint) = &config.otlp_endpoint else { return Ok(None) };
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| format!("telemetry needs the runtime: {e}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("cannot set up the OTLP exporter for {endpoint}: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_millis(config.export_interval_ms.max(10)))
        .build();
    let processor =
        BatchSpanProcessor::builder(OnRuntime { inner: exporter, runtime }).with_batch_config(batch).build();
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone()).build();
    let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
    if TRACER.set(provider.tracer("corral")).is_err() {
        return Err("telemetry is already initialised".into());
    }
    tracing::info!(%endpoint, "exporting traces over OTLP");
    Ok(Some(Telemetry { provider }))
}

/// Drives an exporter's futures on the host's runtime (see the module docs).
#[derive(Debug)]
struct OnRuntime<E> {
    inner: E,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if tokio::runtime::Handle::try_current().is_ok() {
            // Already on a runtime thread (not the batch thread): just run it.
            return self.inner.export(batch).await;
        }
        self.runtime.block_on(self.inner.export(batch))
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

/// A span's W3C trace context (`traceparent`: `00-<trace id>-<span id>-<flags>`): what a job
/// record keeps so its span, however late it runs, joins its submitter's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` header value; `None` if malformed (then it is ignored, as the
    /// W3C spec asks). Versions above `00` are read by their first four fields.
    pub fn parse(text: &str) -> Option<TraceParent> {
        let mut fields = text.trim().split('-');
        let (version, trace, span, flags) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        let lower_hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !lower_hex(version, 2) || version == "ff" || (version == "00" && fields.next().is_some()) {
            return None;
        }
        if !lower_hex(trace, 32) || !lower_hex(span, 16) || !lower_hex(flags, 2) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok().filter(|id| *id != TraceId::INVALID)?;
        let span_id = SpanId::from_hex(span).ok().filter(|id| *id != SpanId::INVALID)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        self.trace_id.to_string()
    }

    fn context(&self) -> Context {
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let remote = SpanContext::new(self.trace_id, self.span_id, flags, true, TraceState::default());
        Context::new().with_remote_span_context(remote)
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00-{}-{}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }
}

impl serde::Serialize for TraceParent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TraceParent::parse(&text).ok_or_else(|| serde::de::Error::custom("not a W3C traceparent"))
    }
}

/// A span in progress; ended (and queued for export) when dropped. Without a tracer it records
/// nothing and its [`Span::context`] is its parent's.
#[derive(Debug)]
pub struct Span {
    inner: Option<opentelemetry_sdk::trace::Span>,
    context: Option<TraceParent>,
}

/// Starts a span named `name` under `parent` (a new trace when `None`). `attributes` is called
/// only when spans are recorded, so callers pay nothing for them when traces are off.
pub fn start(
    name: impl Into<Cow<'static, str>>,
    parent: Option<&TraceParent>,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) -> Span {
    let Some(tracer) = TRACER.get() else { return Span { inner: None, context: parent.copied() } };
    let parent_context = parent.map_or_else(Context::new, TraceParent::context);
    let span = tracer.span_builder(name).with_attributes(attributes()).start_with_context(tracer, &parent_context);
    let sc = span.span_context();
    let context = TraceParent { trace_id: sc.trace_id(), span_id: sc.span_id(), sampled: sc.is_sampled() };
    Span { inner: Some(span), context: Some(context) }
}

/// Whether spans are recorded (an exporter is installed).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

impl Span {
    /// This span's context, to hand to work that continues the trace.
    pub fn context(&self) -> Option<&TraceParent> {
        self.context.as_ref()
    }

    /// Sets an attribute; `value` is called only when the span is recorded.
    pub fn set<V: Into<opentelemetry::Value>>(&mut self, key: &'static str, value: impl FnOnce() -> V) {
        if let Some(span) = &mut self.inner {
            span.set_attribute(KeyValue::new(key, value()));
        }
    }

    /// Marks the span failed with `message`.
    pub fn fail(&mut self, message: impl Into<Cow<'static, str>>) {
        if let Some(span) = &mut self.inner {
            span.set_status(Status::error(message));
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(span) = &mut self.inner {
            span.end();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_malformed_ones_are_ignored() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?} must be ignored");
        }
    }

    #[test]
    fn without_an_exporter_a_span_passes_its_parent_on_and_records_nothing() {
        let parent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let span = start("job", Some(&parent), || panic!("attributes are not built when traces are off"));
        assert_eq!(span.context(), Some(&parent));
        assert!(span.inner.is_none());
        assert!(start("request", None, Vec::new).context().is_none());
    }
}

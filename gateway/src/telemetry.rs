//! Logging and tracing set-up of `palisade gateway serve`: the log lines on
//! stderr (`PALISADE_LOG`), and — only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set — export of the per-request
//! spans over OTLP/gRPC. With neither set no exporter, no OpenTelemetry
//! layer and no background thread exist.
//!
//! What is exported is decided here and nowhere else: the OpenTelemetry
//! layer sees only the request span of `layers::trace` (no log events, no
//! other spans), and [`RequestSpans`] keeps only its
//! [`EXPORTED_FIELDS`](palisade_gateway::layers::trace::EXPORTED_FIELDS).
//! This module must never export headers, tokens, request ids, principals
//! or raw paths, and exporter failures must never reach a request.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
use opentelemetry::{Context, Value};
use opentelemetry_otlp::WithTonicConfig as _;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use palisade_gateway::layers::trace::{EXPORTED_FIELDS, SPAN_NAME, SPAN_TARGET};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// `service.name` unless `OTEL_SERVICE_NAME` (or `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`) says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "palisade-gateway";
/// How long shutdown waits for the last spans to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const INSECURE: &str = "OTEL_EXPORTER_OTLP_INSECURE";
const TRACES_INSECURE: &str = "OTEL_EXPORTER_OTLP_TRACES_INSECURE";
const CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
const TRACES_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE";
const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

/// A refused OpenTelemetry configuration: names the variable and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TelemetryError(String);

/// Flushes and stops the exporter; call [`shutdown`](Self::shutdown) after
/// the server stopped, while the tokio runtime is still alive (the gRPC
/// channel runs on it).
#[must_use = "call shutdown() at exit or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Export what is still queued (bounded by [`SHUTDOWN_TIMEOUT`]) and stop.
    /// Blocks: call it outside the runtime's worker threads.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            tracing::warn!(
                "could not flush the last spans to the OTLP collector at shutdown: {e}; \
                 they are lost (is the collector reachable?)"
            );
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The endpoint the exporter will use (the traces-specific variable wins),
/// or `None` when export is off.
fn configured_endpoint() -> Option<(&'static str, String)> {
    if env(SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    env(TRACES_ENDPOINT)
        .map(|v| (TRACES_ENDPOINT, v))
        .or_else(|| env(ENDPOINT).map(|v| (ENDPOINT, v)))
}

/// Check the exporter settings up front so that a mistake stops the start
/// with a message saying what to fix, instead of spans silently going nowhere.
fn check_config(var: &str, endpoint: &str) -> Result<String, TelemetryError> {
    for p in [TRACES_PROTOCOL, PROTOCOL] {
        if let Some(v) = env(p) {
            if !v.trim().eq_ignore_ascii_case("grpc") {
                return Err(TelemetryError(format!(
                    "{p}={v:?} is not supported: the gateway exports OTLP over gRPC only; \
                     set {p}=grpc or unset it (and point {var} at the collector's gRPC \
                     port, usually 4317)"
                )));
            }
            break;
        }
    }
    let insecure = env(TRACES_INSECURE)
        .or_else(|| env(INSECURE))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let has_scheme = endpoint
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.contains(['/', '?', '#']));
    let full = match (has_scheme, insecure) {
        (true, _) => endpoint.trim().to_owned(),
        (false, true) => format!("http://{}", endpoint.trim()),
        (false, false) => format!("https://{}", endpoint.trim()),
    };
    let bad = |why: &str| {
        TelemetryError(format!(
            "{var} is not a usable OTLP/gRPC endpoint ({why}); expected \
             http://HOST:PORT or https://HOST:PORT, e.g. http://otel-collector:4317, \
             or unset it to turn span export off"
        ))
    };
    let uri: http::Uri = full.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("the scheme must be http or https")),
    }
    match uri.host() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(bad("no host")),
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad(
            "credentials in the URL are not supported; use OTEL_EXPORTER_OTLP_HEADERS",
        ));
    }
    // Logged as scheme://host:port only.
    Ok(format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map(|a| a.as_str()).unwrap_or_default()
    ))
}

/// Install the global subscriber: log lines filtered by `PALISADE_LOG`
/// (default `default_filter`), plus the OpenTelemetry layer when an OTLP
/// endpoint is configured. Must run inside the tokio runtime (`rt.enter()`):
/// the gRPC channel is created on it.
pub fn init(default_filter: &str) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let Some((var, endpoint)) = configured_endpoint() else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { provider: None });
    };
    let shown = check_config(var, &endpoint)?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if shown.starts_with("https://") {
        exporter = exporter.with_tls_config(tls_config()?);
    }
    let exporter = exporter.build().map_err(|e| {
        TelemetryError(format!(
            "cannot set up the OTLP exporter from {var}: {e}; fix the OTEL_EXPORTER_OTLP_* \
                 settings or unset {var} to turn span export off"
        ))
    })?;
    let provider = provider(exporter, var, shown.clone());
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("palisade-gateway"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && meta.target() == SPAN_TARGET && meta.name() == SPAN_NAME
        }));
    tracing_subscriber::registry().with(logs).with(otel).init();
    tracing::info!(endpoint = %shown, "exporting request spans over OTLP/gRPC");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// TLS to an `https://` collector: the CA in `OTEL_EXPORTER_OTLP_CERTIFICATE`
/// (PEM) when set, the Mozilla roots otherwise.
fn tls_config() -> Result<ClientTlsConfig, TelemetryError> {
    let Some((var, path)) = env(TRACES_CERTIFICATE)
        .map(|p| (TRACES_CERTIFICATE, p))
        .or_else(|| env(CERTIFICATE).map(|p| (CERTIFICATE, p)))
    else {
        return Ok(ClientTlsConfig::new().with_webpki_roots());
    };
    let fix = "point it at the collector's CA certificate (PEM) or unset it to trust the \
               Mozilla roots";
    let pem = std::fs::read(&path)
        .map_err(|e| TelemetryError(format!("cannot read {var}={path}: {e}; {fix}")))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(TelemetryError(format!(
            "{var}={path} holds no PEM certificate; {fix}"
        )));
    }
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
}

fn provider<E: SpanExporter + 'static>(
    exporter: E,
    var: &'static str,
    endpoint: String,
) -> SdkTracerProvider {
    let exporter = WarnOnFailure {
        inner: exporter,
        var,
        endpoint,
        failing: Arc::new(AtomicBool::new(false)),
    };
    let mut resource = Resource::builder();
    let named_by_env = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    if !named_by_env {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    SdkTracerProvider::builder()
        .with_span_processor(RequestSpans {
            next: BatchSpanProcessor::builder(exporter).build(),
        })
        .with_resource(resource.build())
        .build()
}

/// The export contract: request spans only, [`EXPORTED_FIELDS`] only, no
/// events or links; named `METHOD /route/{template}` (semantic conventions),
/// kind server, status error for 5xx answers.
#[derive(Debug)]
struct RequestSpans<P> {
    next: P,
}

fn shape(mut span: SpanData) -> Option<SpanData> {
    if span.name != SPAN_NAME {
        return None;
    }
    span.attributes
        .retain(|kv| EXPORTED_FIELDS.contains(&kv.key.as_str()));
    span.dropped_attributes_count = 0;
    span.events = Default::default();
    span.links = Default::default();
    let attr = |key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    };
    let method = attr("http.request.method").map(|v| v.as_str().into_owned());
    let route = attr("http.route").map(|v| v.as_str().into_owned());
    let status = match attr("http.response.status_code") {
        Some(Value::I64(s)) => Some(s),
        _ => None,
    };
    span.name = match (method, route) {
        (Some(m), Some(r)) => Cow::Owned(format!("{m} {r}")),
        (Some(m), None) => Cow::Owned(m),
        _ => Cow::Borrowed("HTTP"),
    };
    span.span_kind = SpanKind::Server;
    span.status = match status {
        Some(s) if s >= 500 => Status::error(""),
        _ => Status::Unset,
    };
    Some(span)
}

impl<P: SpanProcessor> SpanProcessor for RequestSpans<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.next.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if let Some(span) = shape(span) {
            self.next.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.next.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.next.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.next.set_resource(resource);
    }
}

/// Exporter failures (collector down, refused, slow) cost one warning when
/// export starts failing and one note when it works again — never a
/// request. Spans of failed batches are dropped (the batch queue is bounded).
#[derive(Debug)]
struct WarnOnFailure<E> {
    inner: E,
    /// The variable the endpoint came from, and the endpoint (scheme://host:port).
    var: &'static str,
    endpoint: String,
    failing: Arc<AtomicBool>,
}

impl<E: SpanExporter> SpanExporter for WarnOnFailure<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                "cannot export spans to the OTLP collector at {}: {e}; dropping {n} span(s) \
                 and any that follow until it answers (requests are not affected); check \
                 {} and that the collector listens for OTLP/gRPC",
                self.endpoint,
                self.var
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(
                    "span export to the OTLP collector at {} works again",
                    self.endpoint
                )
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{SpanContext, SpanId};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use std::time::SystemTime;

    fn span(name: &'static str, attributes: Vec<KeyValue>) -> SpanData {
        SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed(name),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn only_allowed_fields_of_request_spans_leave() {
        let s = shape(span(
            SPAN_NAME,
            vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.route", "/v1/sandboxes/{id}"),
                KeyValue::new("http.response.status_code", 503_i64),
                KeyValue::new("principal", "user:alice@example.com"),
                KeyValue::new("request_id", "abc"),
                KeyValue::new("trace_id", "x"),
            ],
        ))
        .unwrap();
        let keys: Vec<_> = s.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.request.method",
                "http.route",
                "http.response.status_code"
            ]
        );
        assert_eq!(s.name, "GET /v1/sandboxes/{id}");
        assert_eq!(s.span_kind, SpanKind::Server);
        assert!(matches!(s.status, Status::Error { .. }));

        let unmatched = shape(span(
            SPAN_NAME,
            vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.response.status_code", 404_i64),
            ],
        ))
        .unwrap();
        assert_eq!(unmatched.name, "GET");
        assert_eq!(unmatched.status, Status::Unset);

        assert!(shape(span("something_else", vec![])).is_none());
    }

    #[test]
    fn endpoints_are_checked_with_a_fix_in_the_message() {
        let ok = check_config(ENDPOINT, "http://127.0.0.1:4317").unwrap();
        assert_eq!(ok, "http://127.0.0.1:4317");
        assert_eq!(
            check_config(ENDPOINT, "collector:4317").unwrap(),
            "https://collector:4317"
        );
        for bad in [
            "ftp://collector:4317",
            "http://",
            "http://a b",
            "https://u:pw@c:4317",
        ] {
            let e = check_config(ENDPOINT, bad).unwrap_err().to_string();
            assert!(e.contains(ENDPOINT) && e.contains("unset it"), "{bad}: {e}");
            assert!(!e.contains("pw"), "{e}");
        }
    }
}

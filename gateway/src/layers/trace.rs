//! One tracing span per request (request id, trace id, method, route,
//! principal) and one log line when it ends. Never logs headers or bodies.
//!
//! W3C Trace Context: a valid `traceparent` request header is continued
//! (same trace id, the caller's span as parent); otherwise a new trace id is
//! made. The request's [`TraceContext`] goes into request extensions, and the
//! answer carries it back in a `traceresponse` header (Trace Context level 2)
//! so that a caller can find the gateway's span.
//!
//! OpenTelemetry: when the binary installed the OpenTelemetry layer
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` set, see the `palisade` binary's
//! `telemetry` module), the caller's context becomes the exported span's
//! remote parent and the span's own ids are read back from it, so logs,
//! `traceresponse` and the exported span all name the same span. Without
//! that layer nothing here touches OpenTelemetry beyond one failed lookup.
//! Only [`EXPORTED_FIELDS`] ever leave the process; the request id, the
//! principal and every header stay in the logs.

use std::fmt::Write as _;
use std::time::Instant;

use http::HeaderValue;
use tower::Layer;
use tracing::Instrument;

use super::request_id::RequestId;
use crate::http::{HttpService, Next, Request, from_fn};

/// The incoming W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// The answer header naming the gateway's span.
pub const TRACERESPONSE: &str = "traceresponse";

/// Target and name of the per-request span: what the OpenTelemetry layer
/// selects (nothing else is exported).
pub const SPAN_TARGET: &str = module_path!();
pub const SPAN_NAME: &str = "request";

/// The request span's fields that may be exported (OpenTelemetry HTTP
/// semantic conventions): method, route TEMPLATE (never the raw path), status.
pub const EXPORTED_FIELDS: &[&str] = &[
    "http.request.method",
    "http.route",
    "http.response.status_code",
];

/// The trace this request belongs to and the gateway's span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The gateway's span for this request.
    pub span_id: [u8; 8],
    /// The caller's span, when a `traceparent` was continued.
    pub parent_span_id: Option<[u8; 8]>,
    pub sampled: bool,
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Parse a `traceparent` value (W3C Trace Context §3.2): version `00` exactly
/// four fields; a later version may append fields; `ff`, all-zero ids,
/// upper-case hex and wrong lengths are invalid.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace_id = hex::<16>(parts.next()?)?;
    let parent = hex::<8>(parts.next()?)?;
    let [flags] = hex::<1>(parts.next()?)?;
    let [v] = hex::<1>(version)?;
    if v == 0xff || (v == 0 && parts.next().is_some()) {
        return None;
    }
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

impl TraceContext {
    /// Continue the caller's trace, or start a new one.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let span_id = loop {
            let id = rand::random::<[u8; 8]>();
            if id != [0; 8] {
                break id;
            }
        };
        match headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
        {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                sampled: flags & 1 == 1,
            },
            None => Self {
                trace_id: loop {
                    let id = rand::random::<[u8; 16]>();
                    if id != [0; 16] {
                        break id;
                    }
                },
                span_id,
                parent_span_id: None,
                sampled: true,
            },
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// `00-<trace id>-<span id>-<flags>` naming the gateway's span.
    pub fn header_value(&self) -> String {
        let mut s = String::with_capacity(55);
        let _ = write!(
            s,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        );
        s
    }
}

/// The method as exported: a standard method, or `_OTHER` (semantic
/// conventions), so a client cannot put arbitrary text in a span.
fn method_label(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "_OTHER",
    }
}

/// Make the caller's span the OpenTelemetry parent of `span` and take back
/// the ids the exported span got. No-op (our own ids stay) without the
/// OpenTelemetry layer.
fn continue_in_otel(span: &tracing::Span, trace: &mut TraceContext) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    let parent = match trace.parent_span_id {
        Some(parent) => opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(parent),
            if trace.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        )),
        // A new trace: a root span, whatever span happens to be current.
        None => opentelemetry::Context::new(),
    };
    if span.set_parent(parent).is_err() {
        return;
    }
    let cx = span.context();
    let exported = cx.span().span_context().clone();
    if exported.is_valid() {
        trace.trace_id = exported.trace_id().to_bytes();
        trace.span_id = exported.span_id().to_bytes();
        trace.sampled = exported.is_sampled();
    }
}

pub fn layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    from_fn(|mut req: Request, next: Next| async move {
        let id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let matched = crate::routes::route_of(&mut req);
        let matched = matched.as_ref().as_ref().ok();
        let route = matched.map_or("unmatched", |m| m.route.id.as_str());
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            SPAN_NAME,
            request_id = %id,
            trace_id = tracing::field::Empty,
            route,
            principal = tracing::field::Empty,
            http.request.method = method_label(req.method()),
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        if let Some(m) = matched {
            span.record("http.route", m.route.path);
        }
        let mut trace = TraceContext::from_headers(req.headers());
        continue_in_otel(&span, &mut trace);
        span.record("trace_id", trace.trace_id_hex());
        req.extensions_mut().insert(trace);
        async move {
            let start = Instant::now();
            let mut resp = next.run(req).await;
            if let Ok(v) = HeaderValue::from_str(&trace.header_value()) {
                resp.headers_mut().insert(TRACERESPONSE, v);
            }
            let status = resp.status().as_u16();
            // i64: OpenTelemetry keeps integers only from i64 (u64 becomes a string).
            tracing::Span::current().record("http.response.status_code", i64::from(status));
            tracing::info!(
                status,
                elapsed_ms = start.elapsed().as_millis() as u64,
                "request done"
            );
            resp
        }
        .instrument(span)
        .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_is_parsed_strictly() {
        let (t, p, f) = parse_traceparent(GOOD).unwrap();
        assert_eq!(hex::encode(t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(p), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(parse_traceparent(&format!("01{}-later", &GOOD[2..])).is_some());
    }

    #[test]
    fn a_valid_traceparent_is_continued_and_a_missing_one_starts_a_trace() {
        let mut h = http::HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(GOOD));
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_span_id.map(hex::encode).unwrap(),
            "00f067aa0ba902b7"
        );
        assert_ne!(t.span_id, [0; 8]);
        let v = t.header_value();
        assert!(v.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{v}");
        assert!(parse_traceparent(&v).is_some());

        let fresh = TraceContext::from_headers(&http::HeaderMap::new());
        assert_eq!(fresh.parent_span_id, None);
        assert_ne!(fresh.trace_id, t.trace_id);
        assert_ne!(fresh.trace_id, [0; 16]);
    }

    #[test]
    fn only_standard_methods_are_exported_verbatim() {
        assert_eq!(method_label(&http::Method::GET), "GET");
        assert_eq!(method_label(&http::Method::PATCH), "PATCH");
        let odd = http::Method::from_bytes(b"SECRETSAUCE").unwrap();
        assert_eq!(method_label(&odd), "_OTHER");
    }

    #[test]
    fn without_the_otel_layer_our_own_ids_stay() {
        let mut h = http::HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(GOOD));
        let mut t = TraceContext::from_headers(&h);
        let before = t;
        continue_in_otel(&tracing::Span::none(), &mut t);
        assert_eq!(t, before);
    }
}

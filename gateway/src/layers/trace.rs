//! One tracing span per request (request id, trace id, method, route,
//! principal) and one log line when it ends. Never logs headers or bodies.
//!
//! W3C Trace Context: a valid `traceparent` request header is continued
//! (same trace id, the caller's span as parent); otherwise a new trace id is
//! made. The request's [`TraceContext`] goes into request extensions, and the
//! answer carries it back in a `traceresponse` header (Trace Context level 2)
//! so that a caller can find the gateway's span.

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

pub fn layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    from_fn(|mut req: Request, next: Next| async move {
        let id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let route = crate::routes::match_route(req.method(), req.uri().path())
            .map(|m| m.route.id.as_str())
            .unwrap_or("unmatched");
        let trace = TraceContext::from_headers(req.headers());
        req.extensions_mut().insert(trace);
        let span = tracing::info_span!(
            "request",
            request_id = %id,
            trace_id = %trace.trace_id_hex(),
            method = %req.method(),
            route,
            principal = tracing::field::Empty,
        );
        async move {
            let start = Instant::now();
            let mut resp = next.run(req).await;
            if let Ok(v) = HeaderValue::from_str(&trace.header_value()) {
                resp.headers_mut().insert(TRACERESPONSE, v);
            }
            tracing::info!(
                status = resp.status().as_u16(),
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
}

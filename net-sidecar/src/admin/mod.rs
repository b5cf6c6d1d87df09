//! What the operator observes: the admin listener (15020) with `/live`, `/ready` and
//! `/metrics` for the kubelet and Prometheus, the readiness state it reports ([`State`]),
//! and the data plane's metrics registry ([`metrics`]).
//!
//! Owns: the three endpoints and their status codes — `/live` 200 while the process runs;
//! `/ready` 200 once listeners are bound and a policy is loaded, 503 before and while
//! draining; `/metrics` in the Prometheus text format.
//! Must never: be reachable by the agent (the fence blocks it; this module does not rely on
//! the network for anything else), expose anything but health and metrics, or take a
//! request body.

pub mod metrics;
mod state;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use self::metrics::Metrics;
pub use self::state::State;

/// Concurrent admin connections; more wait in the accept queue.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// Scrapers and probes get this long to send their request.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Answer one admin request.
pub fn respond(req: &Request<Incoming>, state: &State, metrics: &Metrics) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if state.is_ready() => text(StatusCode::OK, "ready\n"),
        "/ready" if state.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /live, /ready or /metrics\n",
        ),
    }
}

/// Serve the admin endpoints on `listener` until the process exits (draining does not stop
/// it: probes must see the 503).
pub async fn serve(listener: TcpListener, state: State, metrics: Metrics) {
    let limit = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "admin accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (state, metrics) = (state.clone(), metrics.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let resp = respond(&req, &state, &metrics);
                async move { Ok::<_, Infallible>(resp) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            if let Err(err) = result {
                tracing::debug!(error = %err, "admin connection ended with an error");
            }
        });
    }
}

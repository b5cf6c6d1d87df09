//! One tracing span per request (request id, method, route, principal) and
//! one log line when it ends. Never logs headers or bodies.

use std::time::Instant;

use tower::Layer;
use tracing::Instrument;

use super::request_id::RequestId;
use crate::http::{HttpService, Next, Request, from_fn};

pub fn layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    from_fn(|req: Request, next: Next| async move {
        let id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let route = crate::routes::match_route(req.method(), req.uri().path())
            .map(|m| m.route.id.as_str())
            .unwrap_or("unmatched");
        let span = tracing::info_span!(
            "request",
            request_id = %id,
            method = %req.method(),
            route,
            principal = tracing::field::Empty,
        );
        async move {
            let start = Instant::now();
            let resp = next.run(req).await;
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

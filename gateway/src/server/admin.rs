//! The admin listener (default :9090): `/live`, `/ready`, `/metrics`.
//! Plaintext and unauthenticated, so it must not be exposed beyond the
//! cluster's monitoring network. Never serves API routes.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

use crate::http::{ApiError, HttpService, Request, Response, service};
use crate::state::AppState;

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response {
    let mut resp = http::Response::new(crate::http::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub fn service_for(state: Arc<AppState>) -> HttpService {
    service(move |req: Request| {
        let state = state.clone();
        async move {
            if req.method() != http::Method::GET {
                return ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "the admin port serves GET only",
                )
                .into_response();
            }
            match req.uri().path() {
                "/live" => text(StatusCode::OK, "ok\n", "text/plain"),
                "/ready" => {
                    let store = state.store.clone();
                    let ok = tokio::task::spawn_blocking(move || store.list_keys().is_ok())
                        .await
                        .unwrap_or(false);
                    if ok {
                        text(StatusCode::OK, "ready\n", "text/plain")
                    } else {
                        text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "store unavailable\n",
                            "text/plain",
                        )
                    }
                }
                "/metrics" => {
                    let now = crate::fsutil::now();
                    state
                        .metrics
                        .key_age
                        .set(state.tokens.keys().active_age(now) as f64);
                    text(
                        StatusCode::OK,
                        state.metrics.render(),
                        "text/plain; version=0.0.4",
                    )
                }
                _ => ApiError::not_found("the admin port serves /live, /ready and /metrics")
                    .into_response(),
            }
        }
    })
}

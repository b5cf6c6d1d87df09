//! Request id: keep a sane client `x-request-id`, otherwise mint one; put it
//! in extensions and echo it on the answer.

use http::HeaderValue;
use tower::Layer;

use crate::http::{HttpService, Next, Request, from_fn};

pub const HEADER: &str = "x-request-id";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

fn acceptable(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub fn layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    from_fn(|mut req: Request, next: Next| async move {
        let id = req
            .headers()
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| acceptable(v))
            .map(str::to_owned)
            .unwrap_or_else(|| crate::random_uuid().to_string());
        req.extensions_mut().insert(RequestId(id.clone()));
        let mut resp = next.run(req).await;
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(HEADER, v);
        }
        resp
    })
}

//! Whole-request deadline: past it the client gets 408 and the handler is dropped.

use std::time::Duration;

use http::StatusCode;
use tower::Layer;

use crate::http::{ApiError, HttpService, Next, Request, from_fn};

pub fn layer(limit: Duration) -> impl Layer<HttpService, Service = HttpService> + Clone {
    from_fn(move |req: Request, next: Next| async move {
        match tokio::time::timeout(limit, next.run(req)).await {
            Ok(resp) => resp,
            Err(_) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request did not complete within {}s; send the body promptly and retry",
                    limit.as_secs()
                ),
            )
            .into_response(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Next, empty_body, service};

    #[tokio::test]
    async fn slow_handler_gets_408_fast_one_passes() {
        let slow = service(|_req| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            crate::http::json(StatusCode::OK, &"late")
        });
        let svc = layer(Duration::from_millis(50)).layer(slow);
        let resp = Next::new(svc).run(http::Request::new(empty_body())).await;
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);

        let fast = service(|_req| async { crate::http::json(StatusCode::OK, &"ok") });
        let svc = layer(Duration::from_secs(5)).layer(fast);
        let resp = Next::new(svc).run(http::Request::new(empty_body())).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

//! Concurrency cap: at most N requests in handlers at once; the rest are shed
//! with 503 and `Retry-After` rather than queued without bound.

use std::sync::Arc;

use http::{HeaderValue, header};
use tokio::sync::Semaphore;
use tower::Layer;

use crate::http::{ApiError, HttpService, Next, Request, from_fn};

pub fn layer(max: usize) -> impl Layer<HttpService, Service = HttpService> + Clone {
    let permits = Arc::new(Semaphore::new(max));
    from_fn(move |req: Request, next: Next| {
        let permits = permits.clone();
        async move {
            let Ok(_permit) = permits.try_acquire_owned() else {
                let mut resp = ApiError::unavailable(
                    "the gateway is at its concurrent request limit; retry shortly",
                )
                .into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return resp;
            };
            next.run(req).await
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{empty_body, service};
    use http::StatusCode;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn sheds_beyond_the_limit_and_recovers() {
        let (entered_tx, entered_rx) = oneshot::channel::<()>();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let gate = Arc::new(tokio::sync::Mutex::new(Some((entered_tx, release_rx))));
        let inner = service(move |_req| {
            let gate = gate.clone();
            async move {
                if let Some((entered, release)) = gate.lock().await.take() {
                    let _ = entered.send(());
                    let _ = release.await;
                }
                crate::http::json(StatusCode::OK, &"ok")
            }
        });
        let svc = layer(1).layer(inner);
        let first = tokio::spawn(Next::new(svc.clone()).run(http::Request::new(empty_body())));
        entered_rx.await.unwrap();
        let shed = Next::new(svc.clone())
            .run(http::Request::new(empty_body()))
            .await;
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers().get("retry-after").unwrap(), "1");
        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().status(), StatusCode::OK);
        let again = Next::new(svc).run(http::Request::new(empty_body())).await;
        assert_eq!(again.status(), StatusCode::OK);
    }
}

//! Request body cap: a declared `Content-Length` over the limit is refused at
//! once (413); otherwise the body is wrapped so reading past the limit fails
//! with the same 413 in [`crate::http::read_body`].

use http_body_util::Limited;
use tower::Layer;

use crate::http::{HttpService, Next, Request, boxed, from_fn, too_large};

pub fn layer(limit: usize) -> impl Layer<HttpService, Service = HttpService> + Clone {
    from_fn(move |req: Request, next: Next| async move {
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return too_large().into_response();
        }
        let req = req.map(|body| boxed(Limited::new(body, limit)));
        next.run(req).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{read_body, service};
    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::Full;

    fn echo_len() -> HttpService {
        service(|req: Request| async move {
            match read_body(req.into_body()).await {
                Ok(b) => crate::http::json(StatusCode::OK, &b.len()),
                Err(e) => e.into_response(),
            }
        })
    }

    #[tokio::test]
    async fn declared_and_streamed_oversize_bodies_get_413() {
        let svc = layer(10).layer(echo_len());
        let small = http::Request::new(boxed(Full::new(Bytes::from_static(b"12345"))));
        assert_eq!(
            Next::new(svc.clone()).run(small).await.status(),
            StatusCode::OK
        );

        let mut declared = http::Request::new(boxed(Full::new(Bytes::from_static(b"1"))));
        declared
            .headers_mut()
            .insert("content-length", "11".parse().unwrap());
        let resp = Next::new(svc.clone()).run(declared).await;
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

        // No Content-Length (chunked): caught while reading.
        let streamed = http::Request::new(boxed(Chunks(vec![
            Bytes::from_static(b"123456"),
            Bytes::from_static(b"123456"),
        ])));
        let resp = Next::new(svc).run(streamed).await;
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// A body of several frames and no declared length.
    struct Chunks(Vec<Bytes>);

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop().map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }
}

//! The HTTP types every layer and handler share, the `from_fn` middleware
//! adapter, and the JSON error answer.
//!
//! Owns: request/response body types and [`ApiError`] → response mapping.
//! Must never: put a secret or a raw credential in an error body.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError};
use palisade_api::ErrorBody;
use serde::Serialize;
use tower::{Layer, Service};

/// Error type of request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// Body of a request as the stack sees it.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
pub type Request = http::Request<Body>;
/// Body of an answer: buffered for almost every route ([`full`]); the
/// session stream is the one streaming answer.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;
pub type Response = http::Response<ResponseBody>;
/// The type every layer wraps and produces: a shared async function of the
/// request. Cloning it is one reference count; a boxed tower service
/// (`BoxCloneSyncService`) would clone every layer below it, and each layer
/// clones the rest of the stack for every request it passes on.
#[derive(Clone)]
pub struct HttpService(Arc<dyn Fn(Request) -> ResponseFuture + Send + Sync>);

impl std::fmt::Debug for HttpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpService")
    }
}

/// A tower service like any other (always ready; the concurrency layer
/// sheds load itself rather than through back-pressure).
impl Service<Request> for HttpService {
    type Response = Response;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let fut = (self.0)(req);
        Box::pin(async move { Ok(fut.await) })
    }
}

/// The rest of the stack below a middleware.
#[derive(Clone, Debug)]
pub struct Next(HttpService);

/// A boxed, sendable response future.
pub type ResponseFuture = std::pin::Pin<Box<dyn Future<Output = Response> + Send>>;

impl Next {
    pub fn new(service: HttpService) -> Self {
        Self(service)
    }

    pub fn run(self, req: Request) -> ResponseFuture {
        (self.0.0)(req)
    }
}

/// A layer made of an async function `(request, next) -> response`.
#[derive(Clone, Debug)]
pub struct FnLayer<F>(F);

/// Build a layer from an async function of the request and the rest of the stack.
pub fn from_fn<F, Fut>(f: F) -> FnLayer<F>
where
    F: Fn(Request, Next) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    FnLayer(f)
}

impl<F, Fut> Layer<HttpService> for FnLayer<F>
where
    F: Fn(Request, Next) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    type Service = HttpService;

    fn layer(&self, inner: HttpService) -> HttpService {
        let f = self.0.clone();
        HttpService(Arc::new(move |req: Request| -> ResponseFuture {
            Box::pin(f(req, Next(inner.clone())))
        }))
    }
}

/// Turn an async handler into the innermost service.
pub fn service<F, Fut>(f: F) -> HttpService
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    HttpService(Arc::new(move |req: Request| -> ResponseFuture {
        Box::pin(f(req))
    }))
}

/// Wrap any body into the stack's body type.
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// An empty request body (tests, internal calls).
pub fn empty_body() -> Body {
    boxed(Full::new(Bytes::new()).map_err(|never| match never {}))
}

/// A buffered answer body.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = http::Response::new(full(bytes));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(_) => ApiError::internal("could not encode the answer").into_response(),
    }
}

/// An error answer: a status and an [`ErrorBody`]; everything the stack
/// refuses goes through here so that the body shape is always the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub reason: String,
    /// The `Allow` header of a 405: the methods the path supports.
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            code,
            reason: reason.into(),
            allow: None,
        }
    }
    /// A 405 naming the methods the path supports (`GET, DELETE`).
    pub fn with_allow(mut self, methods: impl Into<String>) -> Self {
        self.allow = Some(methods.into());
        self
    }
    pub fn bad_request(code: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, reason)
    }
    pub fn unauthenticated(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", reason)
    }
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", reason)
    }
    /// The one answer for "no such sandbox" and "not your sandbox".
    pub fn sandbox_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "sandbox not found")
    }
    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", reason)
    }
    pub fn internal(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", reason)
    }
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code.to_owned(),
            rule: None,
            reason: self.reason.clone(),
            host: None,
        }
    }

    pub fn into_response(self) -> Response {
        let mut resp = json(self.status, &self.body());
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(allow) = self
            .allow
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            resp.headers_mut().insert(header::ALLOW, allow);
        }
        resp
    }
}

impl From<ApiError> for Response {
    fn from(err: ApiError) -> Self {
        err.into_response()
    }
}

/// Read the whole request body (already capped by the body-limit layer).
pub async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(too_large()),
        Err(_) => Err(ApiError::bad_request(
            "body_unreadable",
            "the request body could not be read; resend it",
        )),
    }
}

/// The answer for a body over the configured limit.
pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the request body is larger than the gateway accepts (see --max-body-bytes)",
    )
}

/// Read and parse a JSON request body.
pub async fn read_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = read_body(body).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid: {e}"),
        )
    })
}

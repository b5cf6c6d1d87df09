//! The agent side of HTTP: hyper servers over the agent's stream (plain HTTP/1, or HTTP/1.1
//! and HTTP/2 inside inspected TLS), each request head checked before hyper parses it,
//! drain and idle handling, and the answers the sidecar writes itself.
//!
//! Owns: the hyper server builders and their limits (`--peek-timeout` for heads, the head
//! size, `--max-header-bytes` and the stream limit inside inspected TLS), wrapping the
//! agent stream in [`HeadCheck`] with the audit event of a refused head, running a
//! connection to its end ([`drive`]), counting what a server error says about the agent's
//! input ([`bad_input_of`]), the JSON and empty answers, and reading a refused request's
//! body in the background ([`discard`]).
//! Must never: let hyper see a head [`HeadCheck`] refused, or keep a connection open past
//! `--idle-timeout` without a byte either way.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_api::ErrorBody;
use tokio::io::{AsyncRead, AsyncWrite};

use super::HttpProxy;
use super::head::{HeadCheck, Problem, Start};
use crate::admin::metrics::BadInput;
use crate::proxy::Shared;
use crate::proxy::decide::Target;
use crate::proxy::io::Activity;
use crate::proxy::peek::PEEK_CAP;

/// Body of every answer to the agent.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Largest request head hyper accepts on later keep-alive requests (the first one is
/// already bounded by the peek at [`PEEK_CAP`]).
pub const MAX_HEAD: usize = 2 * PEEK_CAP;

/// Most request-body bytes read and thrown away after a refusal.
const DISCARD_LIMIT: usize = 1 << 20;

/// A 4xx/5xx JSON answer.
pub fn json_response(status: StatusCode, body: &ErrorBody) -> Response<Body> {
    let json = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(
        Full::new(Bytes::from(json))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An empty-bodied answer (e.g. CONNECT 200).
pub fn empty_response(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp
}

/// A hyper HTTP/1 server builder with the data plane's limits.
pub fn server_builder(shared: &Shared) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.timeouts.peek)
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_HEAD.max(8192) * 2)
        .keep_alive(true);
    builder
}

/// The agent-side stream of an HTTP proxy with every HTTP/1 request head checked
/// ([`super::head`]); a refused head is counted, audited, answered and ends the connection.
fn checked<I>(io: I, start: Start, limit: usize, proxy: &HttpProxy) -> HeadCheck<I> {
    let shared = proxy.shared.clone();
    let info = proxy.info.clone();
    let name = match &proxy.target {
        Target::Inspected(conn) => Some(conn.sni.clone()),
        Target::Tunnel { host, .. } => Some(host.clone()),
        Target::Original(_) | Target::Absolute => None,
    };
    let report = move |problem: Problem| {
        shared.metrics.bad_input(problem.kind());
        let dst = info.original_dst.map(|d| d.to_string());
        tracing::warn!(
            target: "audit",
            event = "request_refused",
            reason = problem.kind().as_str(),
            status = problem.status(),
            listener = info.listener.as_str(),
            client = %info.client,
            original_dst = dst.as_deref().unwrap_or("-"),
            name = name.as_deref().unwrap_or("-"),
            "HTTP request refused ({}); connection closed",
            problem.message()
        );
    };
    HeadCheck::new(io, start, limit, Box::new(report))
}

/// The explicit proxy's agent stream, its request heads checked like every other
/// listener's (absolute-form requests; checking stops after a CONNECT, whose tunnel is
/// then spliced or inspected on its own).
pub fn checked_explicit<I>(io: I, proxy: &HttpProxy) -> HeadCheck<I> {
    checked(io, Start::Http1, MAX_HEAD, proxy)
}

/// The bad-input kind a hyper server error stands for, if any.
pub fn bad_input_of(
    err: &hyper::Error,
    served_any: bool,
    parse_kind: BadInput,
) -> Option<BadInput> {
    if err.is_parse_too_large() {
        Some(BadInput::HeaderTooLarge)
    } else if err.is_parse() {
        Some(parse_kind)
    } else if err.is_timeout() && !served_any {
        // After a served request, a header timeout is just an idle keep-alive connection.
        Some(BadInput::PeekTimeout)
    } else {
        None
    }
}

/// Run a hyper connection to its end: asked to finish gracefully once the sidecar drains,
/// dropped (`None`) after `--idle-timeout` without a byte either way.
pub async fn drive<C: Future>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    shared: &Shared,
    activity: &Activity,
) -> Option<C::Output> {
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => return Some(result),
            () = shared.state.drained(), if !draining => {
                draining = true;
                graceful(conn.as_mut());
            }
            () = activity.idle(shared.timeouts.idle) => return None,
        }
    }
}

/// Every request of one connection through [`HttpProxy::handle`].
fn service(
    proxy: &Arc<HttpProxy>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    let p = proxy.clone();
    service_fn(move |req| {
        let p = p.clone();
        async move { Ok::<_, Infallible>(p.handle(req).await) }
    })
}

/// A connection that ended with `err`: counted when it says something about the agent's
/// input (`hyper`: the error as hyper's, if it is one), logged as `what` otherwise.
fn ended(
    proxy: &HttpProxy,
    hyper: Option<&hyper::Error>,
    err: &dyn std::fmt::Display,
    what: &'static str,
) {
    let served = proxy.counted_connection.load(Ordering::Relaxed);
    match hyper.and_then(|e| bad_input_of(e, served, BadInput::MalformedHttp)) {
        Some(kind) => proxy.shared.metrics.bad_input(kind),
        None => tracing::debug!(error = %err, "{what}"),
    }
}

/// Serve one agent connection as plain HTTP until it closes, goes idle, or draining ends it.
pub async fn serve<I>(io: I, proxy: Arc<HttpProxy>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = proxy.shared.clone();
    let io = checked(io, Start::Http1, MAX_HEAD, &proxy);
    let conn = server_builder(&shared)
        .half_close(true)
        .serve_connection(TokioIo::new(io), service(&proxy))
        .with_upgrades();
    if let Some(Err(err)) = drive(conn, |c| c.graceful_shutdown(), &shared, &proxy.activity).await {
        ended(
            &proxy,
            Some(&err),
            &err,
            "HTTP connection ended with an error",
        );
    }
}

/// Serve a terminated TLS connection: HTTP/1.1 or HTTP/2 (by ALPN / preface), with
/// `--max-header-bytes`, the header-read timeout, upgrades, drain and idle handling.
pub async fn serve_auto<I>(io: I, proxy: Arc<HttpProxy>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = proxy.shared.clone();
    let max = usize::try_from(shared.max_header_bytes).unwrap_or(MAX_HEAD);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.timeouts.peek)
        .max_buf_size(max.max(8192))
        .half_close(true)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(shared.max_header_bytes)
        .max_concurrent_streams(100);
    let io = checked(io, Start::Http1OrH2, max, &proxy);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service(&proxy));
    if let Some(Err(err)) = drive(conn, |c| c.graceful_shutdown(), &shared, &proxy.activity).await {
        let hyper = err.downcast_ref::<hyper::Error>();
        ended(
            &proxy,
            hyper,
            &err,
            "inspected connection ended with an error",
        );
    }
}

/// Read (and drop) a refused request's body in the background, bounded in size and time, so
/// the agent's upload finishes cleanly instead of the stream being reset under it (HTTP/2
/// clients report a reset during upload as an error and lose the 403 body).
pub fn discard(body: Option<Incoming>) {
    let Some(mut body) = body else { return };
    if hyper::body::Body::is_end_stream(&body) {
        return;
    }
    tokio::spawn(async move {
        let drain = async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    seen += data.len();
                }
                if seen > DISCARD_LIMIT {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
    });
}

//! HTTP proxying with a policy decision on EVERY request: plain HTTP/1, and HTTP/1.1 or
//! HTTP/2 inside TLS the sidecar terminated ([`super::inspect`]).
//!
//! Owns: serving the agent side with hyper (keep-alive, `Expect: 100-continue`, WebSocket
//! upgrades), checking each request's Host (and absolute-form target) against the policy
//! and the anti-spoofing rules, HTTP rules (`http:` in a policy rule) on a normalised path
//! without `;` parameters, on the method and every method override ([`method`]), the
//! bounded read-ahead of each request body before anything goes upstream ([`body`]), the
//! 403/400/413/502 JSON answers, hop-by-hop header handling (never removing what the
//! decision relies on, never relaying an upgrade but WebSocket), and a hyper client towards
//! the verified upstream address (reused across requests while it stays valid). For
//! inspected connections also: Host = SNI (421), smuggling-prone framing (400, close), the
//! rule's credential (fail closed with 502), and verified TLS towards the upstream.
//! HTTP/1 request heads are checked byte for byte before hyper parses them ([`head`]): CL+TE,
//! several Content-Length, a Transfer-Encoding other than `chunked`, bare LF, obs-fold and
//! several Host headers are answered 400 and the connection is closed.
//! Must never: let a later request on a keep-alive connection reach a host the first request
//! was not checked for (every request is decided anew), forward `Proxy-Authorization` or
//! other hop-by-hop headers, relay a protocol switch after which requests would go
//! undecided (`h2c`), send an upstream a request other than the one judged, or dial
//! anything but a decision's addresses.

mod body;
mod head;
mod method;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_api::ErrorBody;
use palisade_policy::{CompiledPolicy, Decision, DenyReason, RuleId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::Shared;
use super::audit::{ConnInfo, Outcome, denied_body, error_body, record};
use super::decide::{Plan, Protocol, Refusal, Route};
use super::inspect::{Inspected, is_certificate_error};
use super::io::Activity;
use super::listener::ConnGuard;
use super::metrics::{BadInput, UpstreamError};
use super::metrics::{method_class, status_class};
use super::peek::{PEEK_CAP, normalize_host};
use super::pool::PoolKey;
use super::splice::splice;
use super::upstream;
use crate::credentials::{CredentialError, header_for};
use body::preread;
pub use body::{PREREAD_LIMIT, UpstreamBody};
pub use head::HeadCheck;
use head::{Problem, Start};

/// Body of every answer to the agent.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Largest request head hyper accepts on later keep-alive requests (the first one is
/// already bounded by the peek at [`PEEK_CAP`]).
const MAX_HEAD: usize = 2 * PEEK_CAP;

/// Where the requests of one connection may go.
#[derive(Debug, Clone)]
pub enum Target {
    /// Transparent capture: every request goes to the original destination, and its Host
    /// must be allowed and resolve there.
    Original(SocketAddr),
    /// Plain HTTP inside a CONNECT tunnel: every request must be for the tunnel's host.
    Tunnel { host: String, port: u16 },
    /// Explicit proxy, absolute-form (`GET http://host/path`): each request names its target.
    Absolute,
    /// Inside TLS the sidecar terminated: every request must be for the SNI (else 421), is
    /// decided on it, gets the rule's credential, and goes upstream over verified TLS.
    Inspected(Inspected),
}

struct Upstream {
    addr: SocketAddr,
    sender: SendRequest<UpstreamBody>,
}

/// One agent connection's HTTP proxy state.
pub struct HttpProxy {
    shared: Arc<Shared>,
    info: ConnInfo,
    target: Target,
    activity: Arc<Activity>,
    upstream: tokio::sync::Mutex<Option<Upstream>>,
    counted_connection: AtomicBool,
    /// The connection slot, also held by protocol upgrades that outlive the HTTP exchange.
    guard: Arc<ConnGuard>,
}

impl std::fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProxy")
            .field("info", &self.info)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

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
/// ([`head`]); a refused head is counted, audited, answered and ends the connection.
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

/// Serve one agent connection as plain HTTP until it closes, goes idle, or draining ends it.
pub async fn serve<I>(io: I, proxy: Arc<HttpProxy>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = proxy.shared.clone();
    let activity = proxy.activity.clone();
    let p = proxy.clone();
    let svc = service_fn(move |req| {
        let p = p.clone();
        async move { Ok::<_, Infallible>(p.handle(req).await) }
    });
    let io = checked(io, Start::Http1, MAX_HEAD, &proxy);
    let conn = server_builder(&shared)
        .half_close(true)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let Some(result) = drive(conn, |c| c.graceful_shutdown(), &shared, &activity).await else {
        return;
    };
    if let Err(err) = result {
        let served = proxy.counted_connection.load(Ordering::Relaxed);
        match bad_input_of(&err, served, BadInput::MalformedHttp) {
            Some(kind) => shared.metrics.bad_input(kind),
            None => tracing::debug!(error = %err, "HTTP connection ended with an error"),
        }
    }
}

/// Serve a terminated TLS connection: HTTP/1.1 or HTTP/2 (by ALPN / preface), with
/// `--max-header-bytes`, the header-read timeout, upgrades, drain and idle handling.
pub async fn serve_auto<I>(io: I, proxy: Arc<HttpProxy>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = proxy.shared.clone();
    let activity = proxy.activity.clone();
    let p = proxy.clone();
    let svc = service_fn(move |req| {
        let p = p.clone();
        async move { Ok::<_, Infallible>(p.handle(req).await) }
    });
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
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let Some(result) = drive(conn, |c| c.graceful_shutdown(), &shared, &activity).await else {
        return;
    };
    if let Err(err) = result {
        let served = proxy.counted_connection.load(Ordering::Relaxed);
        match err
            .downcast_ref::<hyper::Error>()
            .and_then(|e| bad_input_of(e, served, BadInput::MalformedHttp))
        {
            Some(kind) => shared.metrics.bad_input(kind),
            None => tracing::debug!(error = %err, "inspected connection ended with an error"),
        }
    }
}

/// Most request-body bytes read and thrown away after a refusal.
const DISCARD_LIMIT: usize = 1 << 20;

/// Read (and drop) a refused request's body in the background, bounded in size and time, so
/// the agent's upload finishes cleanly instead of the stream being reset under it (HTTP/2
/// clients report a reset during upload as an error and lose the 403 body).
fn discard(body: Option<Incoming>) {
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

const MULTIPLE_HOSTS: &str = "more than one Host header";
const MALFORMED_BODY: &str = "malformed request body";
const PATH_PARAMETERS: &str = "the request path has `;` parameters, which servers strip or keep \
    differently (ambiguous path)";
const AMBIGUOUS_PATH: &str =
    "the request path is ambiguous (encoded slash or backslash, empty or invalid segment)";

/// Why [`HttpProxy::http_rules`] refused a request.
enum Refused {
    /// The rule's HTTP rules deny it (403).
    Denied(DenyReason, String),
    /// It cannot be judged (400).
    Bad(BadInput, &'static str),
}

/// What the HTTP rules were checked on, kept for the form-body override check.
struct Judged {
    path: String,
    query: Option<String>,
    overrides: Vec<String>,
}

/// Decide `method` and every override on the judged path and query (deny wins); a denial is
/// recorded on `plan` (audit mode) or returned.
fn judge(
    policy: &CompiledPolicy,
    plan: &mut Plan,
    method: &http::Method,
    overrides: &[String],
    judged: &Judged,
) -> Result<(), (DenyReason, String)> {
    let Some(id) = plan.rule else { return Ok(()) };
    let overrides: Vec<&str> = overrides.iter().map(String::as_str).collect();
    if let Decision::Deny { reason, rule, .. } = policy.match_request_methods(
        id,
        method.as_str(),
        &overrides,
        &judged.path,
        judged.query.as_deref(),
    ) {
        let rule = rule.unwrap_or("none").to_owned();
        plan.deny_late(policy, reason).map_err(|_| (reason, rule))?;
    }
    Ok(())
}

/// Whether the deciding rule's answer for this path and query depends on the method at
/// all. When every method (the standard ones and an unknown token) is allowed, no override
/// can change the decision and a form body need not be read for one.
fn method_matters(policy: &CompiledPolicy, rule: Option<RuleId>, judged: &Judged) -> bool {
    const PROBES: [&str; 10] = [
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
        "OPTIONS",
        "TRACE",
        "CONNECT",
        "X-PALISADE-ANY",
    ];
    let Some(id) = rule else { return false };
    !PROBES.iter().all(|m| {
        policy
            .match_request(id, m, &judged.path, judged.query.as_deref())
            .is_allow()
    })
}

/// Whether a raw request path has a `;` (also percent-encoded) in any segment: Tomcat, Jetty
/// and Spring strip such "path parameters" before routing (`/secret;x=1/` is `/secret/`,
/// `/a/..;/secret` is `/secret`), other servers keep them.
fn has_path_parameters(path: &str) -> bool {
    path.contains(';') || path.contains("%3b") || path.contains("%3B")
}

/// Refuse requests whose framing could be read differently by another HTTP implementation
/// (request smuggling): both Content-Length and Transfer-Encoding, or several Content-Length.
/// HTTP/1 heads never get here like that ([`head`] refused them on the raw bytes); this is
/// the same rule for what HTTP/2 hands over.
fn framing_problem(req: &Request<Incoming>) -> Option<Problem> {
    let h = req.headers();
    let cl = h.get_all(header::CONTENT_LENGTH).iter().count();
    if cl > 0 && h.contains_key(header::TRANSFER_ENCODING) {
        return Some(Problem::ClAndTe);
    }
    if cl > 1 {
        return Some(Problem::DuplicateContentLength);
    }
    None
}

/// Whether an HTTP/1 request asks to switch protocols; unless the answer is 101, its
/// connection is closed after the answer ([`head`] stops checking after such a request).
fn switch_requested(req: &Request<Incoming>) -> bool {
    req.version() <= Version::HTTP_11
        && (req.method() == http::Method::CONNECT || req.headers().contains_key(header::UPGRADE))
}

impl HttpProxy {
    /// Decide and answer one request, and count the answer.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let class = method_class(req.method());
        let start = std::time::Instant::now();
        let switch = switch_requested(&req);
        let (mut resp, rule) = self.handle_inner(req).await;
        if switch && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let metrics = &self.shared.metrics;
        metrics
            .http_responses
            .with_label_values(&[rule.as_str(), class, status_class(resp.status())])
            .inc();
        if rule != "none" {
            metrics
                .http_request_seconds
                .observe(start.elapsed().as_secs_f64());
        }
        resp
    }

    pub fn new(
        shared: Arc<Shared>,
        info: ConnInfo,
        target: Target,
        activity: Arc<Activity>,
        guard: Arc<ConnGuard>,
    ) -> Self {
        Self {
            shared,
            info,
            target,
            activity,
            upstream: tokio::sync::Mutex::new(None),
            counted_connection: AtomicBool::new(false),
            guard,
        }
    }

    /// Start with an upstream connection that is already established (CONNECT tunnels).
    pub async fn with_upstream(self, tcp: TcpStream) -> Self {
        if let Ok(addr) = tcp.peer_addr()
            && let Ok(sender) = handshake(tcp).await
        {
            *self.upstream.lock().await = Some(Upstream { addr, sender });
        }
        self
    }

    /// Decide and answer one request; also returns the rule label for metrics (`none` when
    /// the request was refused before a rule decided).
    async fn handle_inner(&self, req: Request<Incoming>) -> (Response<Body>, String) {
        let none = || "none".to_owned();
        let policy = self.shared.policy.borrow().clone();
        let framing = framing_problem(&req);
        let target = match framing {
            Some(problem) => Err(problem.message()),
            None => self.request_target(&req),
        };
        let (host, port) = match target {
            Ok(t) => t,
            Err(why) => {
                let kind = match framing {
                    Some(problem) => problem.kind(),
                    None if why == MULTIPLE_HOSTS => BadInput::MultipleHost,
                    None => BadInput::MalformedHttp,
                };
                self.shared.metrics.bad_input(kind);
                let mut resp = json_response(
                    StatusCode::BAD_REQUEST,
                    &error_body("bad_request", why, None),
                );
                if framing.is_some() || why == MULTIPLE_HOSTS {
                    // The framing of what follows cannot be trusted: close after answering.
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                return (resp, none());
            }
        };
        if let Target::Inspected(conn) = &self.target
            && (host != conn.sni || port != conn.port)
        {
            let resp = json_response(
                StatusCode::MISDIRECTED_REQUEST,
                &error_body(
                    "misdirected_request",
                    "the Host / :authority of this request differs from the TLS server name",
                    Some(&host),
                ),
            );
            discard(Some(req.into_body()));
            return (resp, none());
        }
        let inspected = matches!(self.target, Target::Inspected(_));
        let first = !inspected && !self.counted_connection.swap(true, Ordering::Relaxed);
        if inspected {
            self.counted_connection.store(true, Ordering::Relaxed);
        }
        let record_outcome = |verdict: Result<&Plan, (DenyReason, &str)>| {
            let outcome = Outcome {
                info: &self.info,
                protocol: Protocol::Http,
                name: Some(host.as_str()),
                port,
                policy: policy.name(),
                mode: policy.mode(),
                verdict,
                count_connection: first,
                count_request: true,
            };
            record(&self.shared.metrics, &outcome);
        };
        let plan = match self.decide(&policy, &host, port).await {
            Ok(plan) => plan,
            Err(Refusal::Denied { reason, rule_label }) => {
                record_outcome(Err((reason, &rule_label)));
                let resp = json_response(
                    StatusCode::FORBIDDEN,
                    &denied_body(reason, &rule_label, Some(&host)),
                );
                discard(Some(req.into_body()));
                return (resp, rule_label);
            }
            Err(Refusal::Unresolvable) => {
                self.shared.metrics.upstream_error(UpstreamError::Resolve);
                let resp = json_response(
                    StatusCode::BAD_GATEWAY,
                    &error_body(
                        "upstream_error",
                        "the sidecar cannot resolve this host",
                        Some(&host),
                    ),
                );
                discard(Some(req.into_body()));
                return (resp, none());
            }
        };
        let (mut parts, body) = req.into_parts();
        let denied = |reason, rule_label: String, body: Option<Incoming>| {
            record_outcome(Err((reason, &rule_label)));
            discard(body);
            let resp = json_response(
                StatusCode::FORBIDDEN,
                &denied_body(reason, &rule_label, Some(&host)),
            );
            (resp, rule_label)
        };
        let bad = |kind: BadInput, status: StatusCode, why: &str, body: Option<Incoming>| {
            self.shared.metrics.bad_input(kind);
            discard(body);
            let resp = json_response(status, &error_body("bad_request", why, Some(&host)));
            (resp, none())
        };
        let (mut plan, judged) = match self.http_rules(&policy, plan, &mut parts) {
            Ok(judged) => judged,
            Err(Refused::Denied(reason, rule)) => return denied(reason, rule, Some(body)),
            Err(Refused::Bad(kind, why)) => {
                return bad(kind, StatusCode::BAD_REQUEST, why, Some(body));
            }
        };
        // Nothing goes upstream before the body's first PREREAD_LIMIT bytes are in: a body
        // that breaks inside them is refused here, never half-sent.
        let preread = match preread(body, PREREAD_LIMIT).await {
            Ok(preread) => preread,
            Err(err) => return self.broken_body(&err, parts.version, &host),
        };
        if let Some(judged) = &judged
            && method::is_form(&parts.method, &parts.headers)
            && method_matters(&policy, plan.rule, judged)
        {
            // `_method` in a urlencoded form body (Rails, Laravel, Symfony, Spring).
            if !preread.complete() {
                let why = "a urlencoded form body longer than the sidecar reads ahead cannot be \
                           checked for a `_method` override; send it with another Content-Type";
                return bad(
                    BadInput::FormTooLarge,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    why,
                    preread.rest,
                );
            }
            let mut overrides = judged.overrides.clone();
            if let Err(why) = method::form_overrides(&mut overrides, &preread.data) {
                return bad(
                    BadInput::BadMethodOverride,
                    StatusCode::BAD_REQUEST,
                    why,
                    None,
                );
            }
            if overrides.len() > judged.overrides.len()
                && let Err((reason, rule)) =
                    judge(&policy, &mut plan, &parts.method, &overrides, judged)
            {
                return denied(reason, rule, None);
            }
        }
        record_outcome(Ok(&plan));
        // A gateway-delivered secret goes only to the endpoints it is bound to.
        if inspected
            && let Some(name) = plan.rule.and_then(|id| policy.rule(id).credential())
            && let Some(def) = policy.credential(name)
            && let Err(why) = self.shared.credentials.check_binding(
                name,
                def,
                &host,
                port,
                normalize_path(parts.uri.path()).as_deref(),
            )
        {
            tracing::warn!(target: "audit", event = "credential_endpoint_mismatch", credential = name,
                rule = plan.rule_label.as_str(), policy = policy.name(), client = %self.info.client,
                name = host.as_str(), port, "credential not bound to this endpoint; request refused");
            discard(preread.rest);
            let body = error_body(
                "credential_endpoint_mismatch",
                &why.to_string(),
                Some(&host),
            );
            return (
                json_response(StatusCode::FORBIDDEN, &body),
                plan.rule_label.clone(),
            );
        }
        let injection = if inspected {
            // Normalised like the rule match (a path that cannot be normalised was refused).
            let path =
                normalize_path(parts.uri.path()).unwrap_or_else(|| parts.uri.path().to_owned());
            match self.credential(&policy, &plan, &host, port, &path).await {
                Ok(injection) => injection,
                Err(resp) => {
                    discard(preread.rest);
                    return (resp, plan.rule_label.clone());
                }
            }
        } else {
            None
        };
        let credential = plan.rule.and_then(|id| policy.rule(id).credential());
        let req = Request::from_parts(parts, UpstreamBody::new(preread));
        let resp = self.forward(req, &plan, &host, injection, credential).await;
        (resp, plan.rule_label.clone())
    }

    /// The answer to a request whose body broke before anything was sent upstream: 400, and
    /// the connection closes (its framing cannot be trusted). HTTP/1 bodies were already
    /// counted and audited by the raw stream check ([`head`]), which saw the break.
    fn broken_body(
        &self,
        err: &hyper::Error,
        version: Version,
        host: &str,
    ) -> (Response<Body>, String) {
        tracing::debug!(error = %err, "request body failed before the upstream");
        if version >= Version::HTTP_2 {
            self.shared.metrics.bad_input(BadInput::MalformedBody);
        }
        (self.broken_body_answer(host), "none".to_owned())
    }

    /// 400 `malformed request body`, `Connection: close`.
    fn broken_body_answer(&self, host: &str) -> Response<Body> {
        let mut resp = json_response(
            StatusCode::BAD_REQUEST,
            &error_body("bad_request", MALFORMED_BODY, Some(host)),
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }

    /// The header to inject for the deciding rule's credential, if it has one. A credential
    /// that cannot be produced fails the request closed (502 `credential_unavailable`).
    async fn credential(
        &self,
        policy: &CompiledPolicy,
        plan: &Plan,
        host: &str,
        port: u16,
        path: &str,
    ) -> Result<Option<(HeaderName, HeaderValue)>, Response<Body>> {
        let Some(name) = plan.rule.and_then(|id| policy.rule(id).credential()) else {
            return Ok(None);
        };
        let metrics = &self.shared.metrics;
        let mut kind = "undefined";
        let result = match policy.credential(name) {
            None => Err(CredentialError::Undefined(name.to_owned())),
            Some(def) => {
                let source = self.shared.credentials.source(name, def);
                kind = source.kind();
                let target = crate::credentials::token_grant::RequestTarget { host, port, path };
                match source.get_for(&target).await {
                    Ok(secret) => header_for(def, &secret).map(|h| (h, secret.fingerprint())),
                    Err(err) => Err(err),
                }
            }
        };
        match result {
            Ok((header, fingerprint)) => {
                metrics
                    .credential_injections
                    .with_label_values(&[name, "injected"])
                    .inc();
                tracing::info!(
                    target: "audit",
                    event = "credential_injected",
                    credential = name,
                    source = kind,
                    rule = plan.rule_label.as_str(),
                    policy = policy.name(),
                    header = header.0.as_str(),
                    fingerprint = fingerprint.as_str(),
                    client = %self.info.client,
                    name = host,
                    "credential injected"
                );
                Ok(Some(header))
            }
            Err(err) => {
                metrics
                    .credential_injections
                    .with_label_values(&[name, "unavailable"])
                    .inc();
                tracing::warn!(
                    target: "audit",
                    event = "credential_unavailable",
                    credential = name,
                    source = kind,
                    rule = plan.rule_label.as_str(),
                    policy = policy.name(),
                    error = %err,
                    client = %self.info.client,
                    name = host,
                    "credential unavailable; request refused"
                );
                Err(json_response(
                    StatusCode::BAD_GATEWAY,
                    &error_body(
                        "credential_unavailable",
                        &format!("credential `{name}` is not available: {err}"),
                        Some(host),
                    ),
                ))
            }
        }
    }

    /// Host and port this request is for, checked against the connection's target.
    fn request_target(&self, req: &Request<Incoming>) -> Result<(String, u16), &'static str> {
        let uri = req.uri();
        if matches!(self.target, Target::Absolute) {
            match uri.scheme_str() {
                Some("http") => {}
                Some(_) => {
                    return Err(
                        "only http:// URLs are proxied in absolute form; use CONNECT for https",
                    );
                }
                None => {
                    return Err(
                        "the explicit proxy needs an absolute URL (GET http://host/path) or CONNECT",
                    );
                }
            }
        }
        let default_port = match &self.target {
            Target::Original(dst) => dst.port(),
            Target::Inspected(conn) => conn.port,
            Target::Tunnel { port, .. } => *port,
            Target::Absolute => 80,
        };
        let from_uri = uri
            .authority()
            .map(|a| parse_authority(a.as_str()))
            .transpose()?;
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let from_header = match (hosts.next(), hosts.next()) {
            (None, _) => None,
            (Some(v), None) => Some(parse_authority(
                v.to_str().map_err(|_| "the Host header is not ASCII")?,
            )?),
            (Some(_), Some(_)) => return Err(MULTIPLE_HOSTS),
        };
        let with_port = |(h, p): (String, Option<u16>)| (h, p.unwrap_or(default_port));
        let (host, port) = match (from_uri.map(with_port), from_header.map(with_port)) {
            (Some(u), Some(h)) if u != h => {
                return Err("the Host header does not match the request target");
            }
            (Some(u), _) => u,
            (None, Some(h)) => h,
            (None, None) => return Err("missing Host header"),
        };
        if let Target::Original(dst) = self.target
            && port != dst.port()
        {
            return Err("the Host header names another port than the connection's destination");
        }
        Ok((host, port))
    }

    async fn decide(
        &self,
        policy: &CompiledPolicy,
        host: &str,
        port: u16,
    ) -> Result<Plan, Refusal> {
        let decider = &self.shared.decider;
        match &self.target {
            Target::Original(dst) => {
                decider
                    .decide_name(policy, host, Route::Original(*dst), Some(Protocol::Http))
                    .await
            }
            Target::Absolute => {
                decider
                    .decide_name(policy, host, Route::ByName(port), Some(Protocol::Http))
                    .await
            }
            Target::Inspected(conn) => {
                decider
                    .decide_name(policy, &conn.sni, conn.route, Some(Protocol::Tls))
                    .await
            }
            Target::Tunnel {
                host: tunnel_host,
                port: tunnel_port,
            } => {
                let mut plan = decider
                    .decide_name(
                        policy,
                        tunnel_host,
                        Route::ByName(*tunnel_port),
                        Some(Protocol::Http),
                    )
                    .await?;
                if host != tunnel_host || port != *tunnel_port {
                    plan.deny_late(policy, palisade_policy::DenyReason::DestinationMismatch)?;
                }
                Ok(plan)
            }
        }
    }

    /// Apply the rule's `http` section, if any. The path is normalised first (and the
    /// request rewritten to it, so the upstream sees exactly what was judged); ambiguous
    /// paths, `;` path parameters and method overrides that are not methods are refused
    /// (400). The method and every override the head carries (headers, `_method` in the
    /// query) are decided, deny wins. Returns what was judged when the rule has HTTP rules.
    fn http_rules(
        &self,
        policy: &CompiledPolicy,
        mut plan: Plan,
        parts: &mut http::request::Parts,
    ) -> Result<(Plan, Option<Judged>), Refused> {
        let Some(id) = plan.rule else {
            return Ok((plan, None));
        };
        if !policy.rule(id).has_http_rules() {
            return Ok((plan, None));
        }
        if has_path_parameters(parts.uri.path()) {
            return Err(Refused::Bad(BadInput::AmbiguousPath, PATH_PARAMETERS));
        }
        let path = normalize_path(parts.uri.path())
            .ok_or(Refused::Bad(BadInput::AmbiguousPath, AMBIGUOUS_PATH))?;
        let query = parts.uri.query().map(str::to_owned);
        let overrides = method::overrides(&parts.headers, query.as_deref())
            .map_err(|why| Refused::Bad(BadInput::BadMethodOverride, why))?;
        let judged = Judged {
            path,
            query,
            overrides,
        };
        judge(policy, &mut plan, &parts.method, &judged.overrides, &judged)
            .map_err(|(reason, rule)| Refused::Denied(reason, rule))?;
        let pq = match &judged.query {
            Some(q) => format!("{}?{q}", judged.path),
            None => judged.path.clone(),
        };
        let invalid = Refused::Bad(BadInput::MalformedHttp, "invalid request path");
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = Some(PathAndQuery::from_str(&pq).map_err(|_| invalid)?);
        parts.uri = Uri::from_parts(uri)
            .map_err(|_| Refused::Bad(BadInput::MalformedHttp, "invalid request target"))?;
        Ok((plan, Some(judged)))
    }

    async fn forward(
        &self,
        mut req: Request<UpstreamBody>,
        plan: &Plan,
        host: &str,
        injection: Option<(HeaderName, HeaderValue)>,
        credential: Option<&str>,
    ) -> Response<Body> {
        let upgrade = permitted_upgrade(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        strip_hop_by_hop(
            req.headers_mut(),
            upgrade.as_ref(),
            injection.as_ref().map(|(name, _)| name),
        );
        if let Some((name, value)) = injection {
            // Every agent-supplied instance goes (HeaderMap names are case-insensitive), and
            // the agent's own Authorization never reaches an upstream that gets a credential.
            req.headers_mut().remove(header::AUTHORIZATION);
            req.headers_mut().remove(&name);
            req.headers_mut().insert(name, value);
        }
        if !req.headers().contains_key(header::HOST)
            && let Some(authority) = req.uri().authority()
            && let Ok(value) = HeaderValue::from_str(authority.as_str())
        {
            // HTTP/2 from the agent, HTTP/1.1 upstream: :authority becomes Host.
            req.headers_mut().insert(header::HOST, value);
        }
        if req.uri().authority().is_some() {
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(pq);
        }
        *req.version_mut() = Version::HTTP_11;
        let broken = req.body().broken();

        let failed = |why: &str| {
            if broken.load(Ordering::Relaxed) {
                // The agent's body broke while it was streamed: the upstream connection was
                // aborted before the end of the body, and the fault is the agent's.
                return self.broken_body_answer(host);
            }
            json_response(
                StatusCode::BAD_GATEWAY,
                &error_body("upstream_error", why, Some(host)),
            )
        };
        let mut slot_guard = None;
        let (mut resp, pooled) = if let Target::Inspected(conn) = &self.target {
            match self.send_inspected(conn, &plan.dial, credential, req).await {
                Ok((resp, key, sender)) => (resp, Some((key, sender))),
                Err(why) => return failed(why),
            }
        } else {
            let mut slot = self.upstream.lock().await;
            let sender = match self.sender(&mut slot, &plan.dial).await {
                Ok(sender) => sender,
                Err(_) => return failed("cannot connect to the upstream"),
            };
            let resp = match sender.send_request(req).await {
                Ok(resp) => resp,
                Err(err) => {
                    tracing::debug!(error = %err, "upstream HTTP exchange failed");
                    if !broken.load(Ordering::Relaxed) {
                        self.shared.metrics.upstream_error(UpstreamError::Http);
                    }
                    *slot = None;
                    return failed("the upstream failed to answer");
                }
            };
            slot_guard = Some(slot);
            (resp, None)
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let switched = permitted_upgrade(resp.headers());
            let Some(client_upgrade) = client_upgrade.filter(|_| switched.is_some()) else {
                // A switch nobody asked for (the request's Upgrade was removed) or to another
                // protocol than WebSocket: the upstream connection is not reused or relayed.
                if let Some(slot) = slot_guard.as_mut() {
                    **slot = None;
                }
                drop(pooled);
                self.shared.metrics.upstream_error(UpstreamError::Http);
                return json_response(
                    StatusCode::BAD_GATEWAY,
                    &error_body(
                        "upstream_error",
                        "the upstream switched to a protocol the sidecar does not relay",
                        Some(host),
                    ),
                );
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            strip_hop_by_hop(resp.headers_mut(), switched.as_ref(), None);
            // The upstream connection now belongs to the upgraded protocol.
            if let Some(slot) = slot_guard.as_mut() {
                **slot = None;
            }
            drop(pooled);
            let activity = self.activity.clone();
            let idle = self.shared.timeouts.idle;
            let guard = self.guard.clone();
            tokio::spawn(async move {
                let _guard = guard;
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let (mut client, mut upstream) =
                            (TokioIo::new(client), TokioIo::new(upstream));
                        splice(&mut client, &mut upstream, &activity, idle).await;
                    }
                    Err(err) => tracing::debug!(error = %err, "HTTP upgrade failed"),
                }
            });
        } else {
            strip_hop_by_hop(resp.headers_mut(), None, None);
            if let Some((key, mut sender)) = pooled {
                // Back to the pool once this response's body has been relayed.
                let pool = self.shared.pool.clone();
                tokio::spawn(async move {
                    if sender.ready().await.is_ok() {
                        pool.put(key, sender);
                    }
                });
            }
        }
        resp.map(BodyExt::boxed)
    }

    /// Send an inspected request on a pooled upstream connection (to one of the decision's
    /// addresses, same server name and credential), or a new verified one. A pooled
    /// connection that closed before the request went out is replaced transparently.
    async fn send_inspected(
        &self,
        conn: &Inspected,
        dial: &[SocketAddr],
        credential: Option<&str>,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, PoolKey, SendRequest<UpstreamBody>), &'static str> {
        let metrics = &self.shared.metrics;
        let broken = req.body().broken();
        let upstream_failed = || {
            if !broken.load(Ordering::Relaxed) {
                metrics.upstream_error(UpstreamError::Http);
            }
            "the upstream failed to answer"
        };
        if let Some((key, mut sender)) = self.shared.pool.take(dial, &conn.sni, credential) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, key, sender)),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        tracing::debug!(error = %err.error(), "pooled upstream exchange failed");
                        return Err(upstream_failed());
                    }
                },
            }
        }
        let tcp = upstream::connect(dial, self.shared.timeouts.connect, metrics)
            .await
            .map_err(|_| "cannot connect to the upstream")?;
        let addr = tcp
            .peer_addr()
            .map_err(|_| "cannot connect to the upstream")?;
        let tls = self
            .upstream_tls(tcp, &conn.sni)
            .await
            .map_err(|_| "the upstream's TLS certificate did not verify or its handshake failed")?;
        let mut sender = handshake(tls).await.map_err(|_| {
            metrics.upstream_error(UpstreamError::Http);
            "the upstream failed to answer"
        })?;
        let key = PoolKey {
            addr,
            sni: conn.sni.clone(),
            credential: credential.map(str::to_owned),
        };
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, key, sender)),
            Err(err) => {
                tracing::debug!(error = %err, "upstream HTTP exchange failed");
                Err(upstream_failed())
            }
        }
    }

    /// A ready upstream sender to one of `dial`: the current one if it still fits, else a new
    /// connection.
    async fn sender<'s>(
        &self,
        slot: &'s mut Option<Upstream>,
        dial: &[SocketAddr],
    ) -> Result<&'s mut SendRequest<UpstreamBody>, UpstreamError> {
        let reusable = match slot.as_mut() {
            Some(up) if dial.contains(&up.addr) && !up.sender.is_closed() => {
                up.sender.ready().await.is_ok()
            }
            _ => false,
        };
        if !reusable {
            *slot = None;
            let tcp =
                upstream::connect(dial, self.shared.timeouts.connect, &self.shared.metrics).await?;
            let addr = tcp.peer_addr().map_err(|_| UpstreamError::Connect)?;
            let sender = handshake(tcp)
                .await
                .inspect_err(|_| self.shared.metrics.upstream_error(UpstreamError::Http))?;
            *slot = Some(Upstream { addr, sender });
        }
        match slot.as_mut() {
            Some(up) => Ok(&mut up.sender),
            None => Err(UpstreamError::Connect),
        }
    }
}

impl HttpProxy {
    /// TLS towards the real upstream, verifying its certificate for `sni` against the
    /// webpki roots, the system bundle and `--upstream-ca`.
    async fn upstream_tls(
        &self,
        tcp: TcpStream,
        sni: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
        let metrics = &self.shared.metrics;
        let name = rustls_pki_types::ServerName::try_from(sni.to_owned())
            .map_err(|_| UpstreamError::Tls)?;
        let connector = tokio_rustls::TlsConnector::from(self.shared.tls.client.clone());
        match tokio::time::timeout(self.shared.timeouts.connect, connector.connect(name, tcp)).await
        {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(err)) => {
                let reason = if is_certificate_error(&err) {
                    "certificate"
                } else {
                    "handshake"
                };
                metrics.tls_failure("upstream", reason);
                metrics.upstream_error(UpstreamError::Tls);
                tracing::warn!(sni, error = %err, "upstream TLS handshake failed");
                Err(UpstreamError::Tls)
            }
            Err(_) => {
                metrics.tls_failure("upstream", "timeout");
                metrics.upstream_error(UpstreamError::Tls);
                Err(UpstreamError::Tls)
            }
        }
    }
}

/// HTTP/1 client handshake on an upstream connection; the connection task runs detached.
async fn handshake<T>(io: T) -> Result<SendRequest<UpstreamBody>, UpstreamError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|_| UpstreamError::Http)?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(error = %err, "upstream HTTP connection ended with an error");
        }
    });
    Ok(sender)
}

/// `host[:port]` → normalised host (name or IP literal without brackets) and port.
pub fn parse_authority(raw: &str) -> Result<(String, Option<u16>), &'static str> {
    const BAD: &str = "the request target or Host header is not a valid host[:port]";
    if raw.contains('@') {
        return Err("credentials in the request target are not allowed");
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or(BAD)?;
        let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| BAD)?;
        (IpAddr::V6(ip).to_string(), after)
    } else {
        match raw.split_once(':') {
            Some((host, _)) => (
                normalize_host(host.as_bytes()).ok_or(BAD)?,
                &raw[host.len()..],
            ),
            None => (normalize_host(raw.as_bytes()).ok_or(BAD)?, ""),
        }
    };
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => None,
        None => return Err(BAD),
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| BAD)?)
        }
        Some(_) => return Err(BAD),
    };
    Ok((host, port))
}

/// The one protocol upgrade the sidecar relays: WebSocket (RFC 6455), whose requests and
/// messages the policy can still reason about (the upgrade request is decided like any GET).
/// Every other `Upgrade` token — `h2c` above all, after which the connection would carry
/// HTTP/2 requests that are never decided — is removed and the request forwarded as a plain
/// request (answered with `Connection: close`, see [`switch_requested`]).
const RELAYED_UPGRADE: &str = "websocket";

/// `Upgrade: websocket` if this message asks to switch (`Connection: upgrade`) to WebSocket
/// among its `Upgrade` tokens; `None` otherwise (no switch, or only other protocols).
fn permitted_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    let websocket = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(RELAYED_UPGRADE));
    (asks && websocket).then(|| HeaderValue::from_static(RELAYED_UPGRADE))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// End-to-end headers the decision, the credential injection or the upstream's routing rely
/// on: a `Connection` token naming one of them is ignored (RFC 9110 §7.6.1 lets a proxy
/// drop what `Connection` names; dropping these would make the upstream see another request
/// than the one that was judged, e.g. `Connection: host` leaving it without `Host`).
const PROTECTED: [HeaderName; 5] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    header::COOKIE,
];

/// Whether `Connection` may not remove this header: [`PROTECTED`], the method-override
/// headers ([`method::OVERRIDE_HEADERS`]) and `keep`.
fn protected(name: &HeaderName, keep: Option<&HeaderName>) -> bool {
    PROTECTED.contains(name) || method::OVERRIDE_HEADERS.contains(name) || Some(name) == keep
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1) and what `Connection` names — except the
/// [`PROTECTED`] headers and `keep` (the injected credential's header) — plus
/// `HTTP2-Settings`; keep a WebSocket upgrade if one is being negotiated.
pub fn strip_hop_by_hop(
    headers: &mut HeaderMap,
    keep_upgrade: Option<&HeaderValue>,
    keep: Option<&HeaderName>,
) {
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|name| !protected(name, keep))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove("http2-settings");
    if let Some(upgrade) = keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade.clone());
    }
}

/// Normalise a request path for HTTP rules: decode percent-encoded unreserved characters,
/// upper-case other escapes, resolve `.` and `..`. `None` for paths whose meaning differs
/// between servers (encoded `/` or `\`, NUL, raw `\`, empty segments like `//`) or that are
/// not origin-form.
pub fn normalize_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                decoded.push(v as char);
            } else if matches!(v, b'/' | b'\\' | 0) {
                return None;
            } else {
                decoded.push_str(&format!("%{v:02X}"));
            }
            i += 3;
        } else if b == b'\\' || !b.is_ascii() {
            return None;
        } else {
            decoded.push(b as char);
            i += 1;
        }
    }
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for (n, segment) in segments.iter().enumerate() {
        trailing_slash = false;
        match *segment {
            "" if n == last => trailing_slash = n > 0,
            "" => return None,
            "." => trailing_slash = true,
            ".." => {
                out.pop();
                trailing_slash = true;
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if result.is_empty() || trailing_slash {
        result.push('/');
    }
    Some(result)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(
            parse_authority("Allowed.Test"),
            Ok(("allowed.test".into(), None))
        );
        assert_eq!(
            parse_authority("allowed.test.:8080"),
            Ok(("allowed.test".into(), Some(8080)))
        );
        assert_eq!(
            parse_authority("[2001:DB8::1]:443"),
            Ok(("2001:db8::1".into(), Some(443)))
        );
        assert_eq!(
            parse_authority("198.18.0.1"),
            Ok(("198.18.0.1".into(), None))
        );
        for bad in [
            "user:pw@allowed.test",
            "a b",
            "allowed.test:",
            "allowed.test:99999",
            "",
            "a/b",
            "[zz]:1",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic abc"),
        );
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, None, None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        let up = permitted_upgrade(&h);
        assert_eq!(up.as_ref().map(|v| v.to_str().unwrap()), Some("websocket"));
        strip_hop_by_hop(&mut h, up.as_ref(), None);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn only_websocket_upgrades_are_kept() {
        let upgrade = |connection: &'static str, upgrade: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(connection));
            h.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
            h.insert(
                "http2-settings",
                HeaderValue::from_static("AAMAAABkAAQAAP__"),
            );
            let up = permitted_upgrade(&h);
            strip_hop_by_hop(&mut h, up.as_ref(), None);
            (up, h)
        };
        for (connection, value) in [
            ("Upgrade, HTTP2-Settings", "h2c"),
            ("upgrade", "H2C"),
            ("upgrade", "h2"),
            ("upgrade", "TLS/1.2"),
            ("upgrade", "echo"),
            // Upgrade without `Connection: upgrade` is no switch at all.
            ("keep-alive", "websocket"),
        ] {
            let (up, h) = upgrade(connection, value);
            assert_eq!(up, None, "{connection} / {value}");
            assert!(h.is_empty(), "{connection} / {value}: {h:?}");
        }
        // h2c offered beside WebSocket: only WebSocket goes upstream.
        let (up, h) = upgrade("upgrade, http2-settings", "h2c, websocket");
        assert_eq!(up.unwrap(), "websocket");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert!(!h.contains_key("http2-settings"));
    }

    #[test]
    fn connection_cannot_remove_what_the_decision_relies_on() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static(
                "Host, content-length, Content-Type, authorization, cookie, \
                 X-HTTP-Method-Override, x-http-method, x-method-override, x-api-key, x-hop",
            ),
        );
        for (name, value) in [
            ("host", "allowed.test"),
            ("content-length", "2"),
            ("content-type", "text/plain"),
            ("authorization", "Bearer agent"),
            ("cookie", "a=1"),
            ("x-http-method-override", "GET"),
            ("x-http-method", "GET"),
            ("x-method-override", "GET"),
            ("x-api-key", "injected"),
            ("x-hop", "1"),
        ] {
            h.insert(name, HeaderValue::from_static(value));
        }
        let key = HeaderName::from_static("x-api-key");
        strip_hop_by_hop(&mut h, None, Some(&key));
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "authorization",
                "content-length",
                "content-type",
                "cookie",
                "host",
                "x-api-key",
                "x-http-method",
                "x-http-method-override",
                "x-method-override"
            ]
        );
    }

    #[test]
    fn path_parameters_are_found() {
        for p in ["/a;x=1/b", "/a/..;/b", "/a;", "/a%3bb", "/a%3Bb", "/;/"] {
            assert!(has_path_parameters(p), "{p}");
        }
        for p in ["/a/b", "/a%3/b", "/a%253Bb", "/"] {
            assert!(!has_path_parameters(p), "{p}");
        }
    }

    #[test]
    fn paths() {
        let ok = |p: &str, want: &str| assert_eq!(normalize_path(p).as_deref(), Some(want), "{p}");
        ok("/", "/");
        ok("/a/b", "/a/b");
        ok("/a/b/", "/a/b/");
        ok("/a/./b", "/a/b");
        ok("/a/../b", "/b");
        ok("/a/b/..", "/a/");
        ok("/../../etc", "/etc");
        ok("/%61%2e%2E/x", "/a../x");
        ok("/%2e%2e/admin", "/admin");
        ok("/a%20b", "/a%20b");
        ok("/a%3bb", "/a%3Bb");
        for bad in [
            "", "*", "a", "//admin", "/a//b", "/a%2Fb", "/a%5cb", "/a\\b", "/%00", "/%zz", "/%4",
        ] {
            assert_eq!(normalize_path(bad), None, "{bad}");
        }
    }
}

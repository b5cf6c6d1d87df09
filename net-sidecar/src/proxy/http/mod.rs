//! HTTP proxying with a policy decision on EVERY request: plain HTTP/1, and HTTP/1.1 or
//! HTTP/2 inside TLS the sidecar terminated ([`super::inspect`]).
//!
//! One request reads top to bottom in [`HttpProxy::pipeline`]: route (which host and port,
//! [`route`](mod@route)) → decide ([`crate::proxy::decide::Decider::decide_request`]) → HTTP rules
//! ([`rules`]) → body window ([`body`]) and form override → inject the credential
//! ([`inject`]) → forward ([`client`]). Each step either passes the request on or returns a
//! [`Refusal`], which [`HttpProxy::answer`] answers in one place (status, JSON body,
//! counters, audit event, the refused body read away); [`HttpProxy::handle`] counts every
//! answer.
//!
//! Module map: [`server`] (hyper on the agent side, drain, idle, JSON answers), [`head`]
//! (HTTP/1 heads checked byte for byte before hyper parses them: CL+TE, several
//! Content-Length, a Transfer-Encoding other than `chunked`, bare LF, obs-fold and several
//! Host headers are answered 400 and the connection is closed), [`route`](mod@route),
//! [`rules`] with
//! [`method`] (method overrides), [`body`], [`inject`], [`client`] and its [`pool`], and
//! [`headers`] (hop-by-hop hygiene, the WebSocket upgrade).
//!
//! For inspected connections also: Host = SNI (421), smuggling-prone framing (400, close),
//! the rule's credential (fail closed with 502), and verified TLS towards the upstream.
//! Must never: let a later request on a keep-alive connection reach a host the first request
//! was not checked for (every request is decided anew), forward `Proxy-Authorization` or
//! other hop-by-hop headers, relay a protocol switch after which requests would go
//! undecided (`h2c`), send an upstream a request other than the one judged, or dial
//! anything but a decision's addresses.

mod body;
mod client;
mod head;
mod headers;
mod inject;
mod method;
mod pool;
mod route;
mod rules;
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use palisade_policy::CompiledPolicy;
use tokio::net::TcpStream;

use self::body::preread;
pub use self::body::{PREREAD_LIMIT, UpstreamBody};
use self::client::Upstream;
pub use self::pool::UpstreamPool;
pub use self::route::parse_authority;
use self::route::{route, switch_requested};
pub use self::server::{
    Body, bad_input_of, checked_explicit, drive, empty_response, json_response, serve, serve_auto,
    server_builder,
};
use super::Shared;
use super::audit::{ConnInfo, Scene, record};
use super::decide::{Handling, Protocol, Refusal, Target};
use super::io::Activity;
use super::listener::ConnGuard;
use crate::admin::metrics::{BadInput, method_class, status_class};

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

/// A request the pipeline refused, with what its answer and records need.
struct Refused {
    refusal: Refusal,
    /// The request's host and port, once routed.
    target: Option<(String, u16)>,
    /// Whether this request counts the connection (plain HTTP: its first decided request).
    first: bool,
    /// The rule label of the answer's metrics: the plan's rule once decided, `none` before.
    rule_label: String,
    /// The request body still to be read away ([`server::discard`]).
    body: Option<Incoming>,
}

impl HttpProxy {
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
        if let Some(upstream) = Upstream::over(tcp).await {
            *self.upstream.lock().await = Some(upstream);
        }
        self
    }

    /// Decide and answer one request, and count the answer.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let class = method_class(req.method());
        let start = std::time::Instant::now();
        let switch = switch_requested(&req);
        let policy = self.shared.policy.borrow().clone();
        let (mut resp, rule) = match self.pipeline(&policy, req).await {
            Ok(answered) => answered,
            Err(refused) => self.answer(&policy, refused),
        };
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

    /// Where this connection's requests are recorded.
    fn scene<'a>(
        &'a self,
        policy: &'a CompiledPolicy,
        target: Option<&'a (String, u16)>,
        first: bool,
    ) -> Scene<'a> {
        Scene {
            info: &self.info,
            protocol: Protocol::Http,
            name: target.map(|(host, _)| host.as_str()),
            port: target.map_or(0, |(_, port)| *port),
            policy,
            count_connection: first,
            count_request: true,
        }
    }

    /// The one place refused requests are answered: counted and audited, their body read
    /// away, and answered with the refusal's status and JSON body.
    fn answer(&self, policy: &CompiledPolicy, refused: Refused) -> (Response<Body>, String) {
        let scene = self.scene(policy, refused.target.as_ref(), refused.first);
        refused.refusal.record(&self.shared.metrics, &scene);
        server::discard(refused.body);
        let mut resp = json_response(refused.refusal.status(), &refused.refusal.body(scene.name));
        if refused.refusal.closes() {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        (resp, refused.rule_label)
    }

    /// Whether this request counts the connection in `connections_total`: the first request
    /// of a plain-HTTP connection does; inspected connections were counted when decided.
    fn counts_connection(&self) -> bool {
        if matches!(self.target, Target::Inspected(_)) {
            self.counted_connection.store(true, Ordering::Relaxed);
            false
        } else {
            !self.counted_connection.swap(true, Ordering::Relaxed)
        }
    }

    /// One request: route → decide → HTTP rules → body window and form override →
    /// credential → forward. Returns the answer and the rule label of its metrics.
    async fn pipeline(
        &self,
        policy: &CompiledPolicy,
        req: Request<Incoming>,
    ) -> Result<(Response<Body>, String), Refused> {
        let early = |refusal, target, body| Refused {
            refusal,
            target,
            first: false,
            rule_label: "none".to_owned(),
            body,
        };
        let target = route(&self.target, &req).map_err(|r| early(r, None, None))?;
        if let Target::Inspected(conn) = &self.target
            && (target.0 != conn.sni || target.1 != conn.port)
        {
            return Err(early(
                Refusal::Misdirected,
                Some(target),
                Some(req.into_body()),
            ));
        }
        let (host, port) = (target.0.as_str(), target.1);
        let first = self.counts_connection();
        // Labelled with the denying rule, or `rule_label` (the plan's once it exists).
        let refused = |refusal: Refusal, rule_label: &str, body| Refused {
            rule_label: refusal.denying_rule().unwrap_or(rule_label).to_owned(),
            refusal,
            target: Some(target.clone()),
            first,
            body,
        };

        let plan = self
            .shared
            .decider
            .decide_request(policy, &self.target, host, port)
            .await;
        let plan = match plan {
            Ok(plan) => plan,
            Err(refusal) => return Err(refused(refusal, "none", Some(req.into_body()))),
        };
        let (mut parts, body) = req.into_parts();
        let (mut plan, judged) = match rules::http_rules(policy, plan, &mut parts) {
            Ok(judged) => judged,
            Err(refusal) => return Err(refused(refusal, "none", Some(body))),
        };
        // Nothing goes upstream before the body's first PREREAD_LIMIT bytes are in: a body
        // that breaks inside them is refused here, never half-sent. HTTP/1 bodies were
        // already counted and audited by the raw stream check ([`head`]), which saw the break.
        let preread = match preread(body, PREREAD_LIMIT).await {
            Ok(preread) => preread,
            Err(err) => {
                tracing::debug!(error = %err, "request body failed before the upstream");
                let count = (parts.version >= Version::HTTP_2).then_some(BadInput::MalformedBody);
                return Err(refused(Refusal::broken_body(count), "none", None));
            }
        };
        if let Err(refusal) =
            rules::form_override(policy, &mut plan, &parts, judged.as_ref(), &preread)
        {
            return Err(refused(refusal, "none", preread.rest));
        }
        record(
            &self.shared.metrics,
            &self.scene(policy, Some(&target), first).outcome(Ok(&plan)),
        );

        let injection = match &plan.handling {
            Handling::Inspect { .. } => {
                let header = inject::credential_header(
                    &self.shared,
                    policy,
                    &plan,
                    self.info.client,
                    (host, port),
                    parts.uri.path(),
                )
                .await;
                match header {
                    Ok(header) => header,
                    Err(refusal) => return Err(refused(refusal, &plan.rule_label, preread.rest)),
                }
            }
            Handling::Http | Handling::Splice => None,
        };
        let credential = plan.rule.and_then(|id| policy.rule(id).credential());
        let req = Request::from_parts(parts, UpstreamBody::new(preread));
        match self.forward(req, &plan, injection, credential).await {
            Ok(resp) => Ok((resp, plan.rule_label.clone())),
            Err(refusal) => Err(refused(refusal, &plan.rule_label, None)),
        }
    }
}

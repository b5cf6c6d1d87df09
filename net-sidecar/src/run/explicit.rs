//! The explicit proxy listener (15080, loopback): `CONNECT host:port` tunnels and
//! absolute-form plain HTTP (`GET http://host/path`), for agents configured with
//! `HTTPS_PROXY`/`HTTP_PROXY`.
//!
//! Owns: the CONNECT flow — authority must be `host:port`; decide on the name; dial the
//! sidecar's own resolution of it (there is no original destination); answer 200, or 403
//! JSON / 502 JSON; then look at the tunnel's first bytes: TLS must carry an SNI equal to
//! the CONNECT host (else the tunnel is closed as `destination_mismatch`), plain HTTP is
//! served request by request, anything else needs `opaqueTcp`. Absolute-form requests go to
//! [`super::http`].
//! Must never: dial the address the agent names, or let a tunnel carry TLS for another name.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ::http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use palisade_policy::DenyReason;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Shared;
use super::audit::{ConnInfo, Listener, Outcome, denied_body, error_body, record};
use super::decide::{Plan, Protocol, Refusal, Route, protocol_requirement};
use super::http::{
    self, Body, HttpProxy, Target, bad_input_of, empty_response, json_response, parse_authority,
};
use super::inspect::{self, Inspected};
use super::io::{Activity, Counted, Rewind};
use super::listener::ConnGuard;
use super::metrics::{BadInput, UpstreamError};
use super::peek::{PeekError, Peeked, read_ahead};
use super::splice::splice;
use super::upstream;

/// Per-connection state shared by the requests on it.
struct ExplicitConn {
    shared: Arc<Shared>,
    info: ConnInfo,
    activity: Arc<Activity>,
    /// Absolute-form requests on this connection.
    http: Arc<HttpProxy>,
    /// Keeps the connection slot while a tunnel outlives the HTTP connection.
    guard: Arc<ConnGuard>,
    /// Whether any request got as far as routing (a later header timeout is then idleness).
    served: AtomicBool,
}

/// Handle one admitted connection on the explicit proxy listener.
pub async fn handle(shared: Arc<Shared>, stream: TcpStream, client: SocketAddr, guard: ConnGuard) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    let activity = Activity::new();
    let agent = Counted::new(
        stream,
        shared.metrics.bytes_up.clone(),
        shared.metrics.bytes_down.clone(),
        activity.clone(),
    );
    let info = ConnInfo {
        listener: Listener::Explicit,
        client,
        original_dst: None,
    };
    let guard = Arc::new(guard);
    let http = Arc::new(HttpProxy::new(
        shared.clone(),
        info.clone(),
        Target::Absolute,
        activity.clone(),
        guard.clone(),
    ));
    let conn = Arc::new(ExplicitConn {
        shared: shared.clone(),
        info,
        activity: activity.clone(),
        http,
        guard,
        served: AtomicBool::new(false),
    });
    let c = conn.clone();
    let svc = service_fn(move |req| {
        let c = c.clone();
        async move { Ok::<_, Infallible>(c.route(req).await) }
    });
    let agent = http::checked_explicit(agent, &conn.http);
    let hyper_conn = http::server_builder(&shared)
        .half_close(true)
        .serve_connection(TokioIo::new(agent), svc)
        .with_upgrades();
    let Some(result) = http::drive(hyper_conn, |c| c.graceful_shutdown(), &shared, &activity).await
    else {
        return;
    };
    if let Err(err) = result {
        let served = conn.served.load(Ordering::Relaxed);
        // Unparseable first bytes are not HTTP at all; after a served request, a broken
        // head is malformed HTTP.
        let parse_kind = if served {
            BadInput::MalformedHttp
        } else {
            BadInput::Garbage
        };
        match bad_input_of(&err, served, parse_kind) {
            Some(kind) => shared.metrics.bad_input(kind),
            None => {
                tracing::debug!(%client, error = %err, "explicit proxy connection ended with an error")
            }
        }
    }
}

impl ExplicitConn {
    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        self.served.store(true, Ordering::Relaxed);
        if req.method() == Method::CONNECT {
            self.connect(req).await
        } else {
            self.http.handle(req).await
        }
    }

    async fn connect(&self, req: Request<Incoming>) -> Response<Body> {
        let target = req
            .uri()
            .authority()
            .filter(|_| req.uri().scheme().is_none() && req.uri().path_and_query().is_none())
            .map(|a| parse_authority(a.as_str()));
        let (host, port) = match target {
            Some(Ok((host, Some(port)))) if port != 0 => (host, port),
            Some(Err(why)) => return self.bad_request(why),
            _ => return self.bad_request("CONNECT needs a host:port target"),
        };
        let policy = self.shared.policy.borrow().clone();
        let plan = match self
            .shared
            .decider
            .decide_name(&policy, &host, Route::ByName(port), None)
            .await
        {
            Ok(plan) => plan,
            Err(Refusal::Denied { reason, rule_label }) => {
                // Refused before any tunnel byte is seen: counted with protocol `tcp`.
                record(
                    &self.shared.metrics,
                    &Outcome {
                        info: &self.info,
                        protocol: Protocol::Tcp,
                        name: Some(&host),
                        port,
                        policy: policy.name(),
                        mode: policy.mode(),
                        verdict: Err((reason, &rule_label)),
                        count_connection: true,
                        count_request: false,
                    },
                );
                return json_response(
                    StatusCode::FORBIDDEN,
                    &denied_body(reason, &rule_label, Some(&host)),
                );
            }
            Err(Refusal::Unresolvable) => {
                self.shared.metrics.upstream_error(UpstreamError::Resolve);
                return json_response(
                    StatusCode::BAD_GATEWAY,
                    &error_body(
                        "upstream_error",
                        "the sidecar cannot resolve this host",
                        Some(&host),
                    ),
                );
            }
        };
        let upstream = match upstream::connect(
            &plan.dial,
            self.shared.timeouts.connect,
            &self.shared.metrics,
        )
        .await
        {
            Ok(upstream) => upstream,
            Err(_) => {
                return json_response(
                    StatusCode::BAD_GATEWAY,
                    &error_body(
                        "upstream_error",
                        "cannot connect to the upstream",
                        Some(&host),
                    ),
                );
            }
        };
        let tunnel = Tunnel {
            shared: self.shared.clone(),
            info: self.info.clone(),
            activity: self.activity.clone(),
            host,
            port,
            plan,
            guard: self.guard.clone(),
        };
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => tunnel.run(TokioIo::new(upgraded), upstream).await,
                Err(err) => tracing::debug!(error = %err, "CONNECT upgrade failed"),
            }
        });
        empty_response(StatusCode::OK)
    }

    fn bad_request(&self, why: &'static str) -> Response<Body> {
        self.shared.metrics.bad_input(BadInput::MalformedHttp);
        json_response(
            StatusCode::BAD_REQUEST,
            &error_body("bad_request", why, None),
        )
    }
}

/// An established CONNECT tunnel, before its first bytes are judged.
struct Tunnel {
    shared: Arc<Shared>,
    info: ConnInfo,
    activity: Arc<Activity>,
    host: String,
    port: u16,
    plan: Plan,
    /// Keeps the connection slot until the tunnel ends.
    guard: Arc<ConnGuard>,
}

impl Tunnel {
    async fn run(mut self, mut agent: TokioIo<hyper::upgrade::Upgraded>, mut upstream: TcpStream) {
        let (prefix, peeked) = read_ahead(&mut agent, self.shared.timeouts.peek).await;
        let peeked = match peeked {
            Ok(peeked) => peeked,
            Err(PeekError::Bad(kind)) => return self.shared.metrics.bad_input(kind),
            Err(PeekError::Closed) => return,
            Err(PeekError::Io(err)) => {
                return tracing::debug!(error = %err, "tunnel failed before its first bytes");
            }
        };
        let policy = self.shared.policy.borrow().clone();
        let (protocol, name) = match &peeked {
            Peeked::Http { .. } => {
                let shared = self.shared.clone();
                let target = Target::Tunnel {
                    host: self.host.clone(),
                    port: self.port,
                };
                let proxy = HttpProxy::new(
                    shared,
                    self.info.clone(),
                    target,
                    self.activity.clone(),
                    self.guard.clone(),
                )
                .with_upstream(upstream)
                .await;
                return http::serve(Rewind::new(prefix, agent), Arc::new(proxy)).await;
            }
            Peeked::Tls { sni } => (Protocol::Tls, sni.clone()),
            Peeked::Opaque => (Protocol::Tcp, None),
        };
        let late = match (&name, self.plan.rule) {
            (Some(sni), _) if *sni != self.host => Some(DenyReason::DestinationMismatch),
            (_, Some(rule)) => protocol_requirement(&policy, rule, protocol, name.is_some()),
            (_, None) => None,
        };
        let verdict = match late {
            Some(reason) => self.plan.deny_late(&policy, reason),
            None => Ok(()),
        };
        let denied = verdict.as_ref().err().and_then(|r| match r {
            Refusal::Denied { reason, rule_label } => Some((*reason, rule_label.as_str())),
            Refusal::Unresolvable => None,
        });
        record(
            &self.shared.metrics,
            &Outcome {
                info: &self.info,
                protocol,
                name: Some(name.as_deref().unwrap_or(&self.host)),
                port: self.port,
                policy: policy.name(),
                mode: policy.mode(),
                verdict: match denied {
                    Some(d) => Err(d),
                    None => Ok(&self.plan),
                },
                count_connection: true,
                count_request: false,
            },
        );
        if verdict.is_err() {
            return; // dropping both ends closes the tunnel
        }
        if let (Protocol::Tls, Some(sni), true) = (protocol, &name, self.plan.inspect(&policy)) {
            // Terminated here; requests go upstream over a new, verified TLS connection.
            drop(upstream);
            let conn = Inspected {
                sni: sni.clone(),
                route: Route::ByName(self.port),
                port: self.port,
            };
            drop(policy);
            return inspect::serve(
                self.shared.clone(),
                Rewind::new(prefix, agent),
                self.info.clone(),
                conn,
                self.activity.clone(),
                self.guard.clone(),
            )
            .await;
        }
        drop(policy);
        if upstream.write_all(&prefix).await.is_err() {
            return;
        }
        let end = splice(
            &mut agent,
            &mut upstream,
            &self.activity,
            self.shared.timeouts.idle,
        )
        .await;
        tracing::debug!(host = %self.host, port = self.port, ?end, "tunnel closed");
    }
}

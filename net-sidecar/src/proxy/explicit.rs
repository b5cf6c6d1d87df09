//! The explicit proxy listener (15080, loopback): `CONNECT host:port` tunnels and
//! absolute-form plain HTTP (`GET http://host/path`), for agents configured with
//! `HTTPS_PROXY`/`HTTP_PROXY`.
//!
//! Owns: the CONNECT flow — authority must be `host:port`; decide on the name; dial the
//! sidecar's own resolution of it (there is no original destination); answer 200, or the
//! refusal's 400/403/502 JSON; then peek the tunnel's first bytes and let
//! [`super::decide::decide_tunnel`] judge them (TLS must carry an SNI equal to the CONNECT
//! host, else the tunnel is closed as `destination_mismatch`; opaque bytes need
//! `opaqueTcp`) and dispatch on the plan's handling: plain HTTP served request by request,
//! TLS inspected or spliced, opaque bytes spliced. Absolute-form requests go to
//! [`super::http`].
//! Must never: dial the address the agent names, or let a tunnel carry TLS for another name.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ::http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use palisade_policy::CompiledPolicy;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Shared;
use super::audit::{ConnInfo, Listener, Scene, record};
use super::decide::{Handling, Inspected, Plan, Protocol, Refusal, Route, Target, decide_tunnel};
use super::http::{
    self, Body, HttpProxy, bad_input_of, empty_response, json_response, parse_authority,
};
use super::inspect;
use super::io::{Activity, Rewind};
use super::listener::{Accepted, ConnGuard};
use super::peek::{PeekError, Peeked, read_ahead};
use super::splice::splice;
use super::upstream;
use crate::admin::metrics::BadInput;

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
pub async fn handle(shared: Arc<Shared>, conn: Accepted) {
    let (agent, client, activity) = (conn.stream, conn.peer, conn.activity);
    let info = ConnInfo {
        listener: Listener::Explicit,
        client,
        original_dst: None,
    };
    let http = Arc::new(HttpProxy::new(
        shared.clone(),
        info.clone(),
        Target::Absolute,
        activity.clone(),
        conn.guard.clone(),
    ));
    let conn = Arc::new(ExplicitConn {
        shared: shared.clone(),
        info,
        activity: activity.clone(),
        http,
        guard: conn.guard,
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
        let policy = self.shared.policy.borrow().clone();
        let target = req
            .uri()
            .authority()
            .filter(|_| req.uri().scheme().is_none() && req.uri().path_and_query().is_none())
            .map(|a| parse_authority(a.as_str()));
        let (host, port) = match target {
            Some(Ok((host, Some(port)))) if port != 0 => (host, port),
            Some(Err(why)) => {
                let refusal = Refusal::bad_request(BadInput::MalformedHttp, why);
                return self.refuse(refusal, &self.scene(&policy, None, 0));
            }
            _ => {
                let why = "CONNECT needs a host:port target";
                let refusal = Refusal::bad_request(BadInput::MalformedHttp, why);
                return self.refuse(refusal, &self.scene(&policy, None, 0));
            }
        };
        let decided = self
            .shared
            .decider
            .decide_name(&policy, &host, Route::ByName(port), None)
            .await;
        let plan = match decided {
            Ok(plan) => plan,
            // Refused before any tunnel byte is seen: counted with protocol `tcp`.
            Err(refusal) => return self.refuse(refusal, &self.scene(&policy, Some(&host), port)),
        };
        let connected = upstream::connect(
            &plan.dial,
            self.shared.timeouts.connect,
            &self.shared.metrics,
        )
        .await;
        let Ok(upstream) = connected else {
            let refusal = Refusal::Upstream {
                why: "cannot connect to the upstream",
                count: None, // counted by the dialler
            };
            return self.refuse(refusal, &self.scene(&policy, Some(&host), port));
        };
        drop(policy);
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

    /// A CONNECT (to `host:port` once known), for records: before any tunnel byte is seen,
    /// counted with protocol `tcp`.
    fn scene<'a>(
        &'a self,
        policy: &'a CompiledPolicy,
        host: Option<&'a str>,
        port: u16,
    ) -> Scene<'a> {
        Scene {
            info: &self.info,
            protocol: Protocol::Tcp,
            name: host,
            port,
            policy,
            count_connection: true,
            count_request: false,
        }
    }

    /// Record a refused CONNECT and answer it.
    fn refuse(&self, refusal: Refusal, scene: &Scene<'_>) -> Response<Body> {
        refusal.record(&self.shared.metrics, scene);
        json_response(refusal.status(), &refusal.body(scene.name))
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
    async fn run(self, mut agent: TokioIo<hyper::upgrade::Upgraded>, mut upstream: TcpStream) {
        let (prefix, peeked) = read_ahead(&mut agent, self.shared.timeouts.peek).await;
        let peeked = match peeked {
            Ok(peeked) => peeked,
            Err(PeekError::Bad(kind)) => return self.shared.metrics.bad_input(kind),
            Err(PeekError::Closed) => return,
            Err(PeekError::Io(err)) => {
                return tracing::debug!(error = %err, "tunnel failed before its first bytes");
            }
        };
        let (protocol, sni) = match peeked {
            Peeked::Http { .. } => (Protocol::Http, None),
            Peeked::Tls { sni } => (Protocol::Tls, sni),
            Peeked::Opaque => (Protocol::Tcp, None),
        };
        let Tunnel {
            shared,
            info,
            activity,
            host,
            port,
            plan,
            guard,
        } = self;
        let plan = {
            let policy = shared.policy.borrow().clone();
            let decided = decide_tunnel(&policy, plan, &host, protocol, sni.as_deref());
            let scene = Scene {
                info: &info,
                protocol,
                name: Some(sni.as_deref().unwrap_or(&host)),
                port,
                policy: &policy,
                count_connection: true,
                count_request: false,
            };
            match decided {
                // Plain HTTP: every request is decided and recorded on its own.
                Ok(plan) if plan.handling == Handling::Http => plan,
                Ok(plan) => {
                    record(&shared.metrics, &scene.outcome(Ok(&plan)));
                    plan
                }
                Err(refusal) => {
                    refusal.record(&shared.metrics, &scene);
                    return; // dropping both ends closes the tunnel
                }
            }
        };
        match plan.handling {
            Handling::Http => {
                let target = Target::Tunnel { host, port };
                let proxy = HttpProxy::new(shared, info, target, activity, guard)
                    .with_upstream(upstream)
                    .await;
                http::serve(Rewind::new(prefix, agent), Arc::new(proxy)).await;
            }
            Handling::Inspect { sni } => {
                // Terminated here; requests go upstream over a new, verified TLS connection.
                drop(upstream);
                let conn = Inspected {
                    sni,
                    route: Route::ByName(port),
                    port,
                };
                let agent = Rewind::new(prefix, agent);
                inspect::serve(shared, agent, info, conn, activity, guard).await;
            }
            Handling::Splice => {
                if upstream.write_all(&prefix).await.is_err() {
                    return;
                }
                let end = splice(&mut agent, &mut upstream, &activity, shared.timeouts.idle).await;
                tracing::debug!(%host, port, ?end, "tunnel closed");
            }
        }
    }
}

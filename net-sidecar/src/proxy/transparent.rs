//! The transparent egress listener (15001): connections the capture rules redirected.
//!
//! Owns: recovering the original destination (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`
//! through `nix`), refusing connections that were not redirected, the per-connection flow
//! peek → decide → dispatch on the plan's [`Handling`] (splice | inspect | serve HTTP) or
//! reset, and the HTTP error answers for bad request heads.
//! Must never: dial a destination the decision did not verify, or answer a TLS/opaque
//! refusal with anything but a TCP reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt, sockopt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Shared;
use super::audit::{ConnInfo, Listener, Scene, record};
use super::decide::{Handling, Inspected, Protocol, Route, Target};
use super::http::{self, HttpProxy};
use super::inspect;
use super::io::{Activity, Counted};
use super::listener::{Accepted, ConnGuard};
use super::peek::{PeekError, Peeked, peek_stream};
use super::splice::{reset, splice};
use super::upstream;
use crate::admin::metrics::BadInput;

/// The destination the agent dialled before the capture rules redirected it here.
pub fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let dst = if local.is_ipv4() {
        SocketAddr::from(SockaddrIn::from(getsockopt(stream, sockopt::OriginalDst)?))
    } else {
        SocketAddr::from(SockaddrIn6::from(getsockopt(
            stream,
            sockopt::Ip6tOriginalDst,
        )?))
    };
    Ok(dst)
}

/// Handle one admitted connection on the transparent listener.
pub async fn handle(shared: Arc<Shared>, conn: Accepted) {
    let (mut agent, client) = (conn.stream, conn.peer);
    let socket = agent.get_ref();
    let dst = match original_dst(socket) {
        Ok(dst) if Some(dst) != socket.local_addr().ok() && !dst.ip().is_unspecified() => dst,
        other => {
            tracing::debug!(%client, result = ?other, "connection to the transparent port was not redirected; refusing");
            shared.metrics.bad_input(BadInput::NotRedirected);
            reset(agent.into_inner());
            return;
        }
    };
    let info = ConnInfo {
        listener: Listener::Transparent,
        client,
        original_dst: Some(dst),
    };
    let peeked = match peek_stream(agent.get_ref(), shared.timeouts.peek).await {
        Ok(peeked) => peeked,
        Err(PeekError::Bad(kind)) => {
            return refuse_bad_input(&shared, agent.into_inner(), kind).await;
        }
        Err(PeekError::Closed) => return,
        Err(PeekError::Io(err)) => {
            tracing::debug!(%client, error = %err, "connection failed before its first bytes");
            return;
        }
    };
    let plan = {
        let policy = shared.policy.borrow().clone();
        let (protocol, name, decided) = match &peeked {
            Peeked::Tls { sni: Some(sni) } => (
                Protocol::Tls,
                Some(sni.as_str()),
                shared
                    .decider
                    .decide_name(&policy, sni, Route::Original(dst), Some(Protocol::Tls))
                    .await,
            ),
            Peeked::Tls { sni: None } => (
                Protocol::Tls,
                None,
                shared.decider.decide_opaque(&policy, dst),
            ),
            Peeked::Opaque => (
                Protocol::Tcp,
                None,
                shared.decider.decide_opaque(&policy, dst),
            ),
            // Decided request by request.
            Peeked::Http { .. } => {
                drop(policy);
                return serve_http(shared, agent, info, dst, conn.activity, conn.guard).await;
            }
        };
        let scene = Scene {
            info: &info,
            protocol,
            name,
            port: dst.port(),
            policy: &policy,
            count_connection: true,
            count_request: false,
        };
        match decided {
            Ok(plan) => {
                record(&shared.metrics, &scene.outcome(Ok(&plan)));
                plan
            }
            Err(refusal) => {
                // TLS and opaque connections are refused with a reset.
                refusal.record(&shared.metrics, &scene);
                reset(agent.into_inner());
                return;
            }
        }
    };
    match plan.handling {
        Handling::Inspect { sni } => {
            let inspected = Inspected {
                sni,
                route: Route::Original(dst),
                port: dst.port(),
            };
            inspect::serve(shared, agent, info, inspected, conn.activity, conn.guard).await;
        }
        Handling::Splice => {
            let Ok(mut up) =
                upstream::connect(&plan.dial, shared.timeouts.connect, &shared.metrics).await
            else {
                reset(agent.into_inner());
                return;
            };
            let end = splice(&mut agent, &mut up, &conn.activity, shared.timeouts.idle).await;
            tracing::debug!(%client, %dst, ?end, "connection closed");
        }
        Handling::Http => serve_http(shared, agent, info, dst, conn.activity, conn.guard).await,
    }
}

/// Plain HTTP to the original destination, every request decided on its own.
async fn serve_http(
    shared: Arc<Shared>,
    agent: Counted<TcpStream>,
    info: ConnInfo,
    dst: SocketAddr,
    activity: Arc<Activity>,
    guard: Arc<ConnGuard>,
) {
    let proxy = HttpProxy::new(shared, info, Target::Original(dst), activity, guard);
    http::serve(agent, Arc::new(proxy)).await;
}

/// Count a bad first flight and close: HTTP heads get a 400/431 answer, the rest a reset.
async fn refuse_bad_input(shared: &Shared, mut stream: TcpStream, kind: BadInput) {
    shared.metrics.bad_input(kind);
    let status = match kind {
        BadInput::HeaderTooLarge => "431 Request Header Fields Too Large",
        BadInput::MalformedHttp => "400 Bad Request",
        _ => return reset(stream),
    };
    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return reset(stream);
    }
    // Read and discard what the client is still sending (bounded) so that closing does not
    // turn into a reset that destroys our answer before the client reads it.
    let mut sink = [0u8; 8192];
    let mut budget: usize = 1 << 20;
    let drain = async {
        while budget > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

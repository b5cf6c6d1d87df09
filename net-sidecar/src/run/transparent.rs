//! The transparent egress listener (15001): connections the capture rules redirected.
//!
//! Owns: recovering the original destination (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`
//! through `nix`), refusing connections that were not redirected, the per-connection flow
//! peek → decide → (splice | serve HTTP | reset), and the HTTP error answers for bad
//! request heads.
//! Must never: dial a destination the decision did not verify, or answer a TLS/opaque
//! refusal with anything but a TCP reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt, sockopt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Shared;
use super::audit::{ConnInfo, Listener, Outcome, record};
use super::decide::{Plan, Protocol, Refusal, Route};
use super::http::{self, HttpProxy, Target};
use super::inspect::{self, Inspected};
use super::io::{Activity, Counted};
use super::listener::ConnGuard;
use super::metrics::{BadInput, UpstreamError};
use super::peek::{PeekError, Peeked, peek_stream};
use super::splice::{reset, splice};
use super::upstream;

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
pub async fn handle(shared: Arc<Shared>, stream: TcpStream, client: SocketAddr, guard: ConnGuard) {
    let guard = Arc::new(guard);
    let dst = match original_dst(&stream) {
        Ok(dst) if Some(dst) != stream.local_addr().ok() && !dst.ip().is_unspecified() => dst,
        other => {
            tracing::debug!(%client, result = ?other, "connection to the transparent port was not redirected; refusing");
            shared.metrics.bad_input(BadInput::NotRedirected);
            reset(stream);
            return;
        }
    };
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    let info = ConnInfo {
        listener: Listener::Transparent,
        client,
        original_dst: Some(dst),
    };
    let peeked = match peek_stream(&stream, shared.timeouts.peek).await {
        Ok(peeked) => peeked,
        Err(PeekError::Bad(kind)) => return refuse_bad_input(&shared, stream, kind).await,
        Err(PeekError::Closed) => return,
        Err(PeekError::Io(err)) => {
            tracing::debug!(%client, error = %err, "connection failed before its first bytes");
            return;
        }
    };
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
        Peeked::Http { .. } => {
            drop(policy);
            return serve_http(shared, stream, info, dst, guard).await;
        }
    };
    let outcome = |verdict| Outcome {
        info: &info,
        protocol,
        name,
        port: dst.port(),
        policy: policy.name(),
        mode: policy.mode(),
        verdict,
        count_connection: true,
        count_request: false,
    };
    let plan: Plan = match decided {
        Ok(plan) => plan,
        Err(Refusal::Denied { reason, rule_label }) => {
            record(&shared.metrics, &outcome(Err((reason, &rule_label))));
            reset(stream);
            return;
        }
        Err(Refusal::Unresolvable) => {
            // Only the explicit proxy resolves; keep the match exhaustive.
            shared.metrics.upstream_error(UpstreamError::Resolve);
            reset(stream);
            return;
        }
    };
    record(&shared.metrics, &outcome(Ok(&plan)));
    if let (Some(sni), true) = (name, plan.inspect(&policy)) {
        let conn = Inspected {
            sni: sni.to_owned(),
            route: Route::Original(dst),
            port: dst.port(),
        };
        drop(policy);
        let activity = Activity::new();
        let agent = Counted::new(
            stream,
            shared.metrics.bytes_up.clone(),
            shared.metrics.bytes_down.clone(),
            activity.clone(),
        );
        return inspect::serve(shared, agent, info, conn, activity, guard).await;
    }
    drop(policy);
    let Ok(mut up) = upstream::connect(&plan.dial, shared.timeouts.connect, &shared.metrics).await
    else {
        reset(stream);
        return;
    };
    let activity = Activity::new();
    let mut agent = Counted::new(
        stream,
        shared.metrics.bytes_up.clone(),
        shared.metrics.bytes_down.clone(),
        activity.clone(),
    );
    let end = splice(&mut agent, &mut up, &activity, shared.timeouts.idle).await;
    tracing::debug!(%client, %dst, ?end, "connection closed");
}

async fn serve_http(
    shared: Arc<Shared>,
    stream: TcpStream,
    info: ConnInfo,
    dst: SocketAddr,
    guard: Arc<ConnGuard>,
) {
    let activity = Activity::new();
    let agent = Counted::new(
        stream,
        shared.metrics.bytes_up.clone(),
        shared.metrics.bytes_down.clone(),
        activity.clone(),
    );
    let proxy = Arc::new(HttpProxy::new(
        shared,
        info,
        Target::Original(dst),
        activity,
        guard,
    ));
    http::serve(agent, proxy).await;
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

//! The exec relay's two upgrades:
//! * `POST /v1/sandboxes/{id}/exec` (`Upgrade: palisade-exec`, an operator
//!   with `sandbox:write`): ask the sandbox's live session for a relay, wait
//!   for the dial-back, answer 101 and forward exec frames
//!   ([`crate::sessions::relay`]).
//! * `POST /v1/sandboxes/{id}/relays/{relay_id}` (`Upgrade: palisade-relay`,
//!   the sandbox itself): the sidecar's dial-back, answered 101 and paired.

use http::{HeaderMap, HeaderValue, StatusCode, header};
use palisade_api::exec::EXEC_UPGRADE_PROTOCOL;
use palisade_api::session::RELAY_UPGRADE;

use super::ctx::{Ctx, HandlerResult};
use super::sandboxes::visible_sandbox;
use crate::http::{ApiError, Request, Response};
use crate::principal::SandboxId;
use crate::sessions::relay::ExecAudit;
use crate::sessions::{RELAY_DIAL_BACK_TIMEOUT, RelayRefusal};

/// Refuse anything but an HTTP/1.1 `Connection: upgrade` + `Upgrade: <protocol>`.
fn require_upgrade(req: &Request, protocol: &'static str) -> Result<(), ApiError> {
    let has = |headers: &HeaderMap, name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let headers = req.headers();
    if req.version() != http::Version::HTTP_11
        || !has(headers, header::CONNECTION, "upgrade")
        || !has(headers, header::UPGRADE, protocol)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "upgrade_required",
            format!(
                "this route switches protocols: send an HTTP/1.1 request with \
                 `Connection: upgrade` and `Upgrade: {protocol}`"
            ),
        ));
    }
    Ok(())
}

fn switching(protocol: &'static str) -> Response {
    let mut resp = http::Response::new(crate::http::full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(protocol));
    resp
}

pub async fn exec(ctx: &Ctx, mut req: Request) -> HandlerResult {
    // 404 for a sandbox the caller cannot see comes first, then the protocol.
    let sandbox = visible_sandbox(ctx).await?;
    require_upgrade(&req, EXEC_UPGRADE_PROTOCOL)?;
    let id = sandbox.id.clone();
    let ticket = match ctx.state.sessions.open_relay(&id) {
        Ok(t) => t,
        Err(RelayRefusal::TooMany) => {
            ctx.state
                .metrics
                .exec_sessions
                .with_label_values(&["refused_limit"])
                .inc();
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sessions",
                format!(
                    "the sandbox already has {} exec sessions (--exec-max-per-sandbox); \
                     close one and retry",
                    ctx.state.sessions.limits().exec_max_per_sandbox
                ),
            ));
        }
        Err(RelayRefusal::NotConnected) => {
            ctx.state
                .metrics
                .exec_sessions
                .with_label_values(&["refused_not_connected"])
                .inc();
            // 409, not 503: the gateway is fine; the sandbox is not in a state to take an
            // exec (its sidecar has no session). Retrying once it connects succeeds.
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "sandbox_not_connected",
                "the sandbox's sidecar has no session with this gateway; check that the \
                 sandbox is running and its sidecar can reach the gateway",
            ));
        }
    };
    let relay_id = ticket.relay_id.clone();
    let sandbox_side = match tokio::time::timeout(RELAY_DIAL_BACK_TIMEOUT, ticket.dial_back).await {
        Ok(Ok(on_upgrade)) => on_upgrade,
        _ => {
            ctx.state
                .metrics
                .exec_sessions
                .with_label_values(&["dial_back_timeout"])
                .inc();
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "sandbox_dial_back_timeout",
                format!(
                    "the sandbox's sidecar did not dial back within {}s; check the sidecar's \
                     log and its route to the gateway",
                    RELAY_DIAL_BACK_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    let client_side = hyper::upgrade::on(&mut req);
    let audit = ExecAudit {
        principal: ctx.principal.subject(),
        sandbox: id,
        relay_id,
    };
    tokio::spawn(crate::sessions::relay::run(
        client_side,
        sandbox_side,
        audit,
        ctx.state.sessions.limits().clone(),
        ctx.state.metrics.clone(),
        ticket.slot,
    ));
    Ok(switching(EXEC_UPGRADE_PROTOCOL))
}

pub async fn dial_back(ctx: &Ctx, mut req: Request) -> HandlerResult {
    require_upgrade(&req, RELAY_UPGRADE)?;
    let id = ctx
        .matched
        .params
        .id
        .as_deref()
        .and_then(SandboxId::parse)
        .ok_or_else(ApiError::sandbox_not_found)?;
    let relay_id = ctx.matched.params.relay_id.as_deref().unwrap_or_default();
    let not_found = || ApiError::not_found("no such relay: it expired or was never requested");
    let waiter = ctx
        .state
        .sessions
        .take_relay(&id, relay_id)
        .ok_or_else(not_found)?;
    waiter
        .send(hyper::upgrade::on(&mut req))
        .map_err(|_| not_found())?;
    Ok(switching(RELAY_UPGRADE))
}

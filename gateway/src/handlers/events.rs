//! `POST /v1/sandboxes/{id}/events`: audit events from a sandbox's own
//! sidecar (the route table pins the caller to its own id). Today they are
//! written to the gateway log under target `palisade_audit`, tagged with the
//! authenticated sandbox id (never a caller-supplied one).

use http::StatusCode;
use palisade_api::AuditEvents;

use super::ctx::{Ctx, HandlerResult};
use crate::http::{ApiError, Request, json, read_json};
use crate::principal::Principal;

/// Most events in one request.
pub const MAX_EVENTS: usize = 256;
/// Largest single event, serialised.
pub const MAX_EVENT_BYTES: usize = 8192;

pub async fn ingest(ctx: &Ctx, req: Request) -> HandlerResult {
    let Principal::Sandbox { id, .. } = &ctx.principal else {
        return Err(ApiError::sandbox_not_found());
    };
    let batch: AuditEvents = read_json(req.into_body()).await?;
    if batch.events.len() > MAX_EVENTS {
        return Err(ApiError::bad_request(
            "too_many_events",
            format!("send at most {MAX_EVENTS} events per request"),
        ));
    }
    let mut lines = Vec::with_capacity(batch.events.len());
    for (i, event) in batch.events.iter().enumerate() {
        let line = serde_json::to_string(event).map_err(|_| {
            ApiError::bad_request("invalid_event", format!("events[{i}] cannot be encoded"))
        })?;
        if line.len() > MAX_EVENT_BYTES {
            return Err(ApiError::bad_request(
                "invalid_event",
                format!("events[{i}] is larger than {MAX_EVENT_BYTES} bytes"),
            ));
        }
        lines.push(line);
    }
    for line in &lines {
        tracing::info!(target: "palisade_audit", sandbox = %id, event = %line, "audit event");
    }
    ctx.state.metrics.audit_events.inc_by(lines.len() as u64);
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "accepted": lines.len() }),
    ))
}

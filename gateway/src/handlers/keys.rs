//! `GET /v1/keys` and `POST /v1/keys:rotate` (admin).

use http::StatusCode;
use palisade_api::KeyList;

use super::ctx::{Ctx, HandlerResult};
use crate::http::{ApiError, json};

pub fn list(ctx: &Ctx) -> HandlerResult {
    Ok(json(
        StatusCode::OK,
        &KeyList {
            keys: ctx.state.tokens.keys().infos(),
        },
    ))
}

pub async fn rotate(ctx: &Ctx) -> HandlerResult {
    let keys = ctx.state.tokens.keys().clone();
    let now = crate::fsutil::now();
    let rotated = tokio::task::spawn_blocking(move || keys.rotate(now))
        .await
        .map_err(|_| ApiError::internal("key rotation task panicked"))?;
    match rotated {
        Ok(fresh) => {
            ctx.state.metrics.key_rotations.inc();
            tracing::info!(kid = fresh.kid(), by = %ctx.principal.subject(), "signing key rotated");
            list(ctx)
        }
        Err(e) => {
            tracing::error!(error = %e, "key rotation failed");
            Err(ApiError::unavailable(format!("key rotation failed: {e}")))
        }
    }
}

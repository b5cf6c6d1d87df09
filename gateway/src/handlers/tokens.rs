//! `POST /v1/token:issue` (one-time bootstrap token → sandbox JWT) and
//! `POST /v1/token:refresh` (sandbox JWT → new sandbox JWT, new `jti`).

use http::StatusCode;
use palisade_api::{TokenResponse, WorkloadTokenRequest, WorkloadTokenResponse};
use palisade_policy::model::CredentialSource;

use super::{Ctx, HandlerResult};
use crate::http::{ApiError, json};
use crate::principal::{Principal, SandboxId};

fn answer(ctx: &Ctx, id: &SandboxId) -> HandlerResult {
    let minted = ctx
        .state
        .tokens
        .mint(id, crate::fsutil::now())
        .map_err(|e| ApiError::internal(format!("cannot sign a token: {e}")))?;
    Ok(json(
        StatusCode::OK,
        &TokenResponse {
            token: minted.token,
            token_type: "Bearer".to_owned(),
            sandbox_id: id.to_string(),
            expires_at: minted.claims.exp,
            kid: minted.kid,
        },
    ))
}

pub async fn issue(ctx: &Ctx) -> HandlerResult {
    let Principal::Bootstrap { token_hash, .. } = &ctx.principal else {
        return Err(ApiError::forbidden(
            "POST /v1/token:issue needs a bootstrap token",
        ));
    };
    let hash = token_hash.clone();
    let now = crate::fsutil::now();
    // Consume atomically: of two racing requests exactly one gets a token.
    let consumed = ctx.store(move |s| s.consume_bootstrap(&hash, now)).await?;
    let Some(id) = consumed else {
        ctx.state.metrics.auth_failure("bootstrap", "replayed");
        return Err(ApiError::unauthenticated(
            "the bootstrap token is unknown or was already used",
        ));
    };
    let lookup = id.clone();
    if ctx.store(move |s| s.get_sandbox(&lookup)).await?.is_none() {
        return Err(ApiError::sandbox_not_found());
    }
    let resp = answer(ctx, &id)?;
    ctx.state.metrics.tokens_issued.inc();
    tracing::info!(sandbox = %id, "sandbox token issued");
    Ok(resp)
}

pub async fn refresh(ctx: &Ctx) -> HandlerResult {
    let Principal::Sandbox { id, .. } = &ctx.principal else {
        return Err(ApiError::forbidden(
            "POST /v1/token:refresh needs a sandbox token",
        ));
    };
    // The authentication layer already checked that the sandbox exists.
    let resp = answer(ctx, id)?;
    ctx.state.metrics.tokens_refreshed.inc();
    Ok(resp)
}

/// `POST /v1/sandboxes/{id}/workload-tokens`: a short-lived JWT for one
/// upstream audience that the sandbox's own policy names in a
/// `workloadToken` credential; anything else is 403.
pub async fn workload(ctx: &Ctx, req: crate::http::Request) -> HandlerResult {
    let Principal::Sandbox { id, .. } = &ctx.principal else {
        return Err(ApiError::sandbox_not_found());
    };
    let request: WorkloadTokenRequest = crate::http::read_json(req.into_body()).await?;
    let lookup = id.clone();
    let sandbox = ctx
        .store(move |s| s.get_sandbox(&lookup))
        .await?
        .ok_or_else(ApiError::sandbox_not_found)?;
    let refuse = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "audience_not_allowed",
            "the sandbox's policy has no workloadToken credential for this audience",
        )
    };
    let name = sandbox.spec.policy.ok_or_else(refuse)?;
    let stored = ctx
        .store(move |s| s.get_policy(&name))
        .await?
        .ok_or_else(refuse)?;
    // Stored policies were validated on write; re-parse the exact revision.
    let policy = palisade_policy::parse_policy(stored.document.as_bytes())
        .map_err(|_| ApiError::internal("a stored policy no longer parses"))?;
    let allowed = policy.spec.credentials.values().any(|c| {
        matches!(&c.from, CredentialSource::WorkloadToken { audience } if *audience == request.audience)
    });
    if !allowed {
        return Err(refuse());
    }
    let (token, claims, kid) = ctx
        .state
        .tokens
        .mint_workload(id, &request.audience, crate::fsutil::now())
        .map_err(|e| ApiError::internal(format!("cannot sign a token: {e}")))?;
    ctx.state.metrics.workload_tokens.inc();
    Ok(json(
        StatusCode::OK,
        &WorkloadTokenResponse {
            token,
            audience: claims.aud,
            expires_at: claims.exp,
            kid,
        },
    ))
}

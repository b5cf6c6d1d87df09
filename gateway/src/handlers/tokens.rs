//! `POST /v1/token:issue` (one-time bootstrap token, or a reviewed
//! Kubernetes ServiceAccount token → sandbox JWT; the latter bound to the
//! pod by a `pod_uid` claim) and `POST /v1/token:refresh` (sandbox JWT → new
//! sandbox JWT, new `jti`).

use http::StatusCode;
use palisade_api::{
    SANDBOX_TOKEN_AUDIENCE, TokenResponse, WorkloadTokenRequest, WorkloadTokenResponse,
};
use palisade_policy::model::CredentialSource;
use serde::Serialize;

use super::{Ctx, HandlerResult};
use crate::http::{ApiError, json};
use crate::principal::{BootstrapCredential, PodIdentity, Principal, SandboxId};
use crate::tokens::SandboxClaims;

/// Claims of a sandbox JWT issued for a ServiceAccount token: the usual
/// claims plus the UID of the pod the token was bound to.
#[derive(Debug, Serialize)]
struct PodBoundClaims<'a> {
    #[serde(flatten)]
    base: &'a SandboxClaims,
    pod_uid: &'a str,
}

/// A sandbox JWT carrying `pod_uid`, signed by the active key.
fn answer_pod_bound(ctx: &Ctx, id: &SandboxId, pod: &PodIdentity) -> HandlerResult {
    let now = crate::fsutil::now();
    let tokens = &ctx.state.tokens;
    let claims = SandboxClaims {
        iss: tokens.issuer().to_owned(),
        sub: id.to_string(),
        aud: SANDBOX_TOKEN_AUDIENCE.to_owned(),
        sandbox_id: id.to_string(),
        iat: now,
        nbf: now,
        exp: now + ctx.state.config.token_ttl.as_secs(),
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let bound = PodBoundClaims {
        base: &claims,
        pod_uid: &pod.uid,
    };
    let (token, kid) = tokens
        .sign_claims(&bound)
        .map_err(|e| ApiError::internal(format!("cannot sign a token: {e}")))?;
    Ok(json(
        StatusCode::OK,
        &TokenResponse {
            token,
            token_type: "Bearer".to_owned(),
            sandbox_id: id.to_string(),
            expires_at: claims.exp,
            kid,
        },
    ))
}

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
    let Principal::Bootstrap {
        sandbox_id,
        credential,
    } = &ctx.principal
    else {
        return Err(ApiError::forbidden(
            "POST /v1/token:issue needs a bootstrap token",
        ));
    };
    let token_hash = match credential {
        BootstrapCredential::OneTime { token_hash } => token_hash,
        BootstrapCredential::ServiceAccount(pod) => {
            // The authenticator checked the record; check again right before
            // minting so that a sandbox deleted meanwhile gets no token.
            let lookup = sandbox_id.clone();
            if ctx.store(move |s| s.get_sandbox(&lookup)).await?.is_none() {
                ctx.state
                    .metrics
                    .auth_failure(crate::authn::AUTHENTICATOR_KUBE, "unknown_sandbox");
                return Err(ApiError::forbidden("the pod's sandbox no longer exists"));
            }
            let resp = answer_pod_bound(ctx, sandbox_id, pod)?;
            ctx.state.metrics.tokens_issued.inc();
            tracing::info!(
                sandbox = %sandbox_id,
                namespace = %pod.namespace,
                pod = %pod.name,
                "sandbox token issued for a ServiceAccount token"
            );
            return Ok(resp);
        }
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

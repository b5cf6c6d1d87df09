//! `/.well-known/jwks.json` and `/.well-known/openid-configuration`.

use http::StatusCode;

use super::ctx::{Ctx, HandlerResult};
use crate::http::json;

pub fn jwks(ctx: &Ctx) -> HandlerResult {
    let now = crate::fsutil::now();
    Ok(json(StatusCode::OK, &ctx.state.tokens.keys().jwks(now)))
}

pub fn openid_configuration(ctx: &Ctx) -> HandlerResult {
    let issuer = ctx.state.tokens.issuer().trim_end_matches('/');
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            "token_endpoint": format!("{issuer}/v1/token:issue"),
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "token_endpoint_auth_methods_supported": ["bearer"],
        }),
    ))
}

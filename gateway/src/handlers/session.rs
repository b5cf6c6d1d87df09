//! `GET /v1/sandboxes/{id}/session`: the sandbox's own sidecar opens its
//! long-lived session stream (see [`crate::sessions::stream`]).

use http::{HeaderValue, StatusCode, header};
use palisade_api::session::SESSION_CONTENT_TYPE;

use super::sandboxes::visible_sandbox;
use super::{Ctx, HandlerResult};
use crate::http::ApiError;
use crate::principal::SandboxId;

pub async fn open(ctx: &Ctx) -> HandlerResult {
    let sandbox = visible_sandbox(ctx).await?;
    let id = SandboxId::parse(&sandbox.id).ok_or_else(ApiError::sandbox_not_found)?;
    let body = crate::sessions::stream::open(ctx.state.clone(), id);
    let mut resp = http::Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(SESSION_CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

//! `GET /v1/sandboxes/{id}/session`: the sandbox's own sidecar opens its
//! long-lived session stream (see [`crate::sessions::stream`]).

use http::{HeaderValue, StatusCode, header};
use palisade_api::session::SESSION_CONTENT_TYPE;

use super::ctx::{Ctx, HandlerResult};
use super::sandboxes::visible_sandbox;
use crate::sessions::stream::{self, Sources};

pub async fn open(ctx: &Ctx) -> HandlerResult {
    let sandbox = visible_sandbox(ctx).await?;
    let id = sandbox.id.clone();
    let state = &ctx.state;
    let sources = Sources {
        store: state.store.clone(),
        metrics: state.metrics.clone(),
        policy_revision: state.policy_revision.subscribe(),
    };
    let body = stream::open(&state.sessions, sources, id);
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

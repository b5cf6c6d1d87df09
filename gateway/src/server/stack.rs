//! THE middleware stack of the API, top (outermost) to bottom. Read this
//! file to know what happens to every request, in order.

use std::sync::Arc;

use tower::ServiceBuilder;

use crate::http::HttpService;
use crate::layers::{
    authz, body_limit, concurrency, metrics, rate_limit, request_id, timeout, trace,
};
use crate::state::AppState;
use crate::{authn, handlers};

pub fn build(state: Arc<AppState>) -> HttpService {
    let config = &state.config;
    ServiceBuilder::new()
        // 1. x-request-id: accepted when sane, minted otherwise, echoed back.
        .layer(request_id::layer())
        // 2. one tracing span per request.
        .layer(trace::layer())
        // 3. count and time every answer, including refusals below.
        .layer(metrics::layer(state.metrics.clone()))
        // 4. deadline on the answer's head (408). It bounds the handler, not
        //    what comes after the head: the session stream's body and the
        //    connections upgraded by exec/relay outlive it by construction
        //    and are bounded by their own heartbeat, idle and max-duration
        //    limits (crate::sessions). Their handlers answer well within it
        //    (the exec's dial-back wait is 10s).
        .layer(timeout::layer(config.request_timeout))
        // 5. body size cap (413).
        .layer(body_limit::layer(config.max_body_bytes))
        // 6. concurrency cap, shedding with 503 + Retry-After.
        .layer(concurrency::layer(config.max_concurrent_requests))
        // 7. authentication chain → Principal (401 on a refused credential).
        .layer(authn::layer(state.authn.clone()))
        // 8. per-principal token bucket (429 + Retry-After); after 7 because
        //    it keys on who is calling.
        .layer(rate_limit::layer(
            config.rate_limit_per_sec,
            config.rate_limit_burst,
            state.metrics.clone(),
        ))
        // 9. route table + per-route authorization (401/403/404/405).
        .layer(authz::layer())
        // 10. router → handler.
        .service(handlers::router(state.clone()))
}

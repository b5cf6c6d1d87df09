//! Authorization: match the route table, check the caller's [`Principal`]
//! against the route's declared grants, and pass the
//! [`Matched`](crate::routes::Matched) route on.

use tower::Layer;

use crate::http::{ApiError, HttpService, Next, Request, from_fn};
use crate::principal::Principal;
use crate::routes::{authorize, route_of};

pub fn layer() -> impl Layer<HttpService, Service = HttpService> + Clone {
    from_fn(|mut req: Request, next: Next| async move {
        let matched = match &*route_of(&mut req) {
            Ok(m) => m.clone(),
            Err(e) => return e.clone().into_response(),
        };
        let Some(principal) = req.extensions().get::<Principal>() else {
            // The stack is built wrong if this happens; fail closed.
            return ApiError::internal("no principal: authentication layer missing")
                .into_response();
        };
        if let Err(e) = authorize(&matched, principal) {
            return e.into_response();
        }
        req.extensions_mut().insert(matched);
        next.run(req).await
    })
}

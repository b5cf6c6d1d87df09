//! Request count by route and status class, latency by route.

use std::time::Instant;

use tower::Layer;

use crate::http::{HttpService, Next, Request, from_fn};
use crate::metrics::{Metrics, status_class};

pub fn layer(metrics: Metrics) -> impl Layer<HttpService, Service = HttpService> + Clone {
    from_fn(move |mut req: Request, next: Next| {
        let metrics = metrics.clone();
        async move {
            let route = crate::routes::route_of(&mut req)
                .as_ref()
                .as_ref()
                .map_or("unmatched", |m| m.route.id.as_str());
            let start = Instant::now();
            let resp = next.run(req).await;
            metrics
                .requests
                .with_label_values(&[route, status_class(resp.status())])
                .inc();
            metrics
                .latency
                .with_label_values(&[route])
                .observe(start.elapsed().as_secs_f64());
            resp
        }
    })
}

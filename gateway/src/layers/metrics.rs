//! Request count by route and status class, latency by route.

use std::time::Instant;

use tower::Layer;

use crate::http::{HttpService, Next, Request, from_fn};
use crate::metrics::{Metrics, status_class};

pub fn layer(metrics: Metrics) -> impl Layer<HttpService, Service = HttpService> + Clone {
    // Only the two families this layer records, not all of `Metrics`.
    let Metrics {
        requests, latency, ..
    } = metrics;
    from_fn(move |mut req: Request, next: Next| {
        let (requests, latency) = (requests.clone(), latency.clone());
        async move {
            let route = crate::routes::route_of(&mut req)
                .as_ref()
                .as_ref()
                .map_or("unmatched", |m| m.route.id.as_str());
            let start = Instant::now();
            let resp = next.run(req).await;
            requests
                .with_label_values(&[route, status_class(resp.status())])
                .inc();
            latency
                .with_label_values(&[route])
                .observe(start.elapsed().as_secs_f64());
            resp
        }
    })
}

//! Per-principal rate limit: a token bucket per authenticated principal
//! (sandbox id, user subject; all anonymous callers share one), 429 with
//! `Retry-After` when empty. It runs right after authentication because it
//! needs to know who is calling; failed authentications are not charged here
//! (they are counted in the auth-failure metric).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, StatusCode, header};
use parking_lot::Mutex;
use tower::Layer;

use crate::http::{ApiError, HttpService, Next, Request, from_fn};
use crate::metrics::Metrics;
use crate::principal::Principal;

/// Buckets kept before idle (full) ones are dropped.
const MAX_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Limiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// Take one token for `key`; `Err(seconds until one is available)`.
    fn take(&self, key: &str, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

fn key(principal: &Principal) -> String {
    match principal {
        Principal::Bootstrap { sandbox_id, .. } => format!("bootstrap:{sandbox_id}"),
        other => other.subject(),
    }
}

pub fn layer(
    rate_per_sec: f64,
    burst: u32,
    metrics: Metrics,
) -> impl Layer<HttpService, Service = HttpService> + Clone {
    let limiter = Arc::new(Limiter {
        rate: rate_per_sec,
        burst: f64::from(burst.max(1)),
        buckets: Mutex::new(HashMap::new()),
    });
    // Only the one counter this layer needs: cloning all of `Metrics` on
    // every request showed up in the token-refresh profile.
    let rate_limited = metrics.rate_limited;
    from_fn(move |req: Request, next: Next| {
        let limiter = limiter.clone();
        let rate_limited = rate_limited.clone();
        async move {
            let Some(principal) = req.extensions().get::<Principal>() else {
                return next.run(req).await;
            };
            if let Err(wait) = limiter.take(&key(principal), Instant::now()) {
                rate_limited
                    .with_label_values(&[principal.kind().as_str()])
                    .inc();
                let mut resp = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many requests from this principal; retry in {wait}s"),
                )
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return resp;
            }
            next.run(req).await
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_empties_refills_and_is_per_key() {
        let l = Limiter {
            rate: 1.0,
            burst: 2.0,
            buckets: Mutex::new(HashMap::new()),
        };
        let t0 = Instant::now();
        assert!(l.take("a", t0).is_ok());
        assert!(l.take("a", t0).is_ok());
        assert_eq!(l.take("a", t0), Err(1));
        assert!(l.take("b", t0).is_ok(), "other principals unaffected");
        assert!(l.take("a", t0 + Duration::from_secs(1)).is_ok(), "refilled");
        assert!(l.take("a", t0 + Duration::from_secs(1)).is_err());
    }
}

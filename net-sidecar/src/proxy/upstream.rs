//! Dialling upstreams on the agent's behalf.
//!
//! Owns: TCP connects to addresses a [`super::decide::Plan`] produced, bounded by
//! `--connect-timeout`, with the connect-latency histogram and upstream error counters.
//! Must never: dial an address that did not come out of a decision.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::admin::metrics::{Metrics, UpstreamError};

/// At most this many resolved addresses are tried for one connection.
const MAX_ATTEMPTS: usize = 4;

/// Connect to the first address that answers.
pub async fn connect(
    addrs: &[SocketAddr],
    timeout: Duration,
    metrics: &Metrics,
) -> Result<TcpStream, UpstreamError> {
    let mut last = UpstreamError::Connect;
    for addr in addrs.iter().take(MAX_ATTEMPTS) {
        let start = Instant::now();
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                metrics
                    .upstream_connect_seconds
                    .observe(start.elapsed().as_secs_f64());
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(error = %err, "cannot set TCP_NODELAY upstream");
                }
                return Ok(stream);
            }
            Ok(Err(err)) => {
                tracing::debug!(upstream = %addr, error = %err, "upstream connect failed");
                last = UpstreamError::Connect;
            }
            Err(_) => {
                tracing::debug!(upstream = %addr, "upstream connect timed out");
                last = UpstreamError::ConnectTimeout;
            }
        }
    }
    metrics.upstream_error(last);
    Err(last)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_to_the_first_answering_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        // A port nobody listens on (bound then closed).
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let metrics = Metrics::new().unwrap();
        let s = connect(&[dead, good], Duration::from_secs(30), &metrics)
            .await
            .unwrap();
        assert_eq!(s.peer_addr().unwrap(), good);
        assert_eq!(metrics.upstream_connect_seconds.get_sample_count(), 1);
        assert_eq!(
            connect(&[dead], Duration::from_secs(30), &metrics)
                .await
                .unwrap_err(),
            UpstreamError::Connect
        );
        assert_eq!(
            metrics
                .upstream_errors
                .with_label_values(&["connect"])
                .get(),
            1
        );
    }
}

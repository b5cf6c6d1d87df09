//! Exec relay dial-back: on a `Relay{relay_id}` session event, open
//! `POST /v1/sandboxes/{id}/relays/{relay_id}` with `Upgrade: palisade-relay`, and splice the
//! upgraded stream with a fresh connection to the agent shim's session socket.
//!
//! Owns: the dial-back, the splice, and `palisade_sidecar_relays_total{outcome}`.
//! Must never: interpret the bytes (the gateway and shim speak the exec frame protocol), or
//! dial back for an id that is not a plain token.

use std::sync::Arc;

use http::{HeaderValue, Method, StatusCode, header};
use hyper_util::rt::TokioIo;
use palisade_api::session::RELAY_UPGRADE;
use tokio::net::UnixStream;

use super::session::SessionCtx;

/// Relay ids go into a URL path: letters, digits, `-` and `_`, at most 128.
pub fn valid_relay_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Dial back one relay and splice until either side closes.
pub async fn dial_back(ctx: Arc<SessionCtx>, relay_id: String) {
    let count = |outcome: &str| ctx.metrics.relays.with_label_values(&[outcome]).inc();
    if !valid_relay_id(&relay_id) {
        count("error");
        tracing::warn!("ignoring a relay request with a malformed id");
        return;
    }
    let mut shim = match UnixStream::connect(&ctx.shim_socket).await {
        Ok(s) => s,
        Err(e) => {
            count("shim_unavailable");
            tracing::warn!(relay = %relay_id, socket = %ctx.shim_socket.display(), error = %e,
                "cannot reach the agent shim's session socket; is palisade-shim running with --session-socket?");
            return;
        }
    };
    let upgraded = async {
        let jwt = ctx.jwt.get().await.map_err(|e| e.to_string())?;
        let path = format!("/v1/sandboxes/{}/relays/{relay_id}", ctx.sandbox);
        let mut req = ctx
            .client
            .request(Method::POST, &path, jwt.expose(), None)
            .map_err(|e| e.to_string())?;
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        req.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static(RELAY_UPGRADE));
        let resp = ctx.client.open(req).await.map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(format!(
                "the gateway answered {} instead of 101",
                resp.status()
            ));
        }
        hyper::upgrade::on(resp)
            .await
            .map_err(|e| format!("upgrade failed: {e}"))
    }
    .await;
    let upgraded = match upgraded {
        Ok(u) => u,
        Err(e) => {
            count("dial_failed");
            tracing::warn!(relay = %relay_id, error = %e, "relay dial-back failed");
            return;
        }
    };
    tracing::info!(relay = %relay_id, "relay connected to the agent shim");
    let mut gateway = TokioIo::new(upgraded);
    match tokio::io::copy_bidirectional(&mut gateway, &mut shim).await {
        Ok((up, down)) => {
            count("spliced");
            tracing::info!(relay = %relay_id, to_shim = up, to_gateway = down, "relay finished");
        }
        Err(e) => {
            count("error");
            tracing::warn!(relay = %relay_id, error = %e, "relay ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_ids() {
        assert!(valid_relay_id("r-1_A"));
        assert!(!valid_relay_id(""));
        assert!(!valid_relay_id("../x"));
        assert!(!valid_relay_id("a?b"));
        assert!(!valid_relay_id(&"a".repeat(129)));
    }
}

//! The gateway session: `GET /v1/sandboxes/{id}/session`, an endless NDJSON stream of
//! [`SessionEvent`]s.
//!
//! Owns: connecting with the sandbox JWT, reading bounded lines, the heartbeat watchdog
//! (three missed heartbeats = dead), reconnecting with capped jittered backoff, and handing
//! each event to its owner (policy → the policy source, credentials → the delivered store,
//! relay → a dial-back task).
//! Must never: apply a policy itself (the policy source validates and keeps the last good),
//! drop the current policy or credentials when the stream is lost, or log credential values.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt as _;
use palisade_api::session::{DEFAULT_HEARTBEAT_SECONDS, SESSION_CONTENT_TYPE, SessionEvent};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::client::{GatewayClient, GatewayError, status_error};
use super::jwt::{IdentityError, JwtStore};
use super::metrics::IdentityMetrics;
use super::settings::SandboxId;
use crate::credentials::DeliveredStore;
use crate::policy::{PolicyUpdate, UpdateSender};

/// Longest event line accepted: a maximal policy, JSON-escaped, with room to spare.
pub const MAX_EVENT_LINE: usize = 4 * palisade_policy::MAX_POLICY_BYTES + 1024 * 1024;
/// Heartbeats that may be missed before the session is declared dead.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Reconnect delays.
pub const RECONNECT_BASE: Duration = Duration::from_millis(500);
pub const RECONNECT_CAP: Duration = Duration::from_secs(30);

/// An NDJSON line splitter with a hard line-length limit.
#[derive(Debug)]
pub struct NdjsonLines {
    buf: Vec<u8>,
    max: usize,
}

/// A line exceeded the limit: the stream cannot be trusted any more.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an event line is longer than {0} bytes")]
pub struct LineTooLong(pub usize);

impl NdjsonLines {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Feed bytes; returns the complete non-empty lines (without `\n` / `\r\n`).
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, LineTooLong> {
        let mut out = Vec::new();
        let mut rest = data;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.buf.len() + i > self.max {
                return Err(LineTooLong(self.max));
            }
            self.buf.extend_from_slice(&rest[..i]);
            rest = &rest[i + 1..];
            let mut line = std::mem::take(&mut self.buf);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                out.push(line);
            }
        }
        if self.buf.len() + rest.len() > self.max {
            return Err(LineTooLong(self.max));
        }
        self.buf.extend_from_slice(rest);
        Ok(out)
    }
}

/// Everything the session and its relays need.
#[derive(Debug)]
pub struct SessionCtx {
    pub client: GatewayClient,
    pub sandbox: SandboxId,
    pub jwt: Arc<JwtStore>,
    pub policy: UpdateSender,
    pub delivered: Arc<DeliveredStore>,
    pub shim_socket: PathBuf,
    pub metrics: IdentityMetrics,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    TooLong(#[from] LineTooLong),
    #[error("{0}")]
    Stream(String),
}

/// Keep a session open forever.
pub async fn run(ctx: Arc<SessionCtx>) {
    let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_CAP);
    let mut first = true;
    loop {
        if !first {
            ctx.metrics.session_reconnects.inc();
        }
        first = false;
        ctx.metrics.set_session_state("connecting");
        let err = stream_once(&ctx, &mut backoff).await;
        ctx.metrics.set_session_state("disconnected");
        let delay = backoff.next_delay();
        tracing::warn!(error = %err, retry_in = ?delay,
            "gateway session lost; enforcing the last policy and credentials meanwhile");
        tokio::time::sleep(delay).await;
    }
}

/// One session, until it fails.
async fn stream_once(ctx: &Arc<SessionCtx>, backoff: &mut Backoff) -> SessionError {
    match stream_inner(ctx, backoff).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn stream_inner(
    ctx: &Arc<SessionCtx>,
    backoff: &mut Backoff,
) -> Result<std::convert::Infallible, SessionError> {
    let jwt = ctx.jwt.get().await?;
    let path = format!("/v1/sandboxes/{}/session", ctx.sandbox);
    let mut req = ctx.client.request(Method::GET, &path, jwt.expose(), None)?;
    req.headers_mut().insert(
        header::ACCEPT,
        HeaderValue::from_static(SESSION_CONTENT_TYPE),
    );
    let resp = ctx.client.open(req).await?;
    let status = resp.status();
    if status != StatusCode::OK {
        let body = http_body_util::Limited::new(resp.into_body(), 16 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let err = status_error(status, &body);
        if err.is_unauthorized() {
            // Renew (refresh, or re-bootstrap) before the next attempt.
            if let Err(e) = ctx.jwt.renew(jwt.generation).await {
                tracing::warn!(error = %e, "cannot renew the sandbox JWT after the session's 401");
            }
        }
        return Err(err.into());
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with(SESSION_CONTENT_TYPE) {
        return Err(SessionError::Stream(format!(
            "the session answered with content-type `{}` instead of {SESSION_CONTENT_TYPE}",
            content_type.chars().take(64).collect::<String>()
        )));
    }
    ctx.metrics.set_session_state("connected");
    if Instant::now() >= jwt.refresh_at {
        // The gateway is back after refreshes were missed: renew now rather than at the
        // refresh loop's next backoff step, so the identity does not lapse (and credentials
        // are not withheld) while the gateway is reachable. Single-flight with that loop.
        let (store, seen) = (ctx.jwt.clone(), jwt.generation);
        tokio::spawn(async move {
            if let Err(e) = store.renew(seen).await {
                tracing::warn!(error = %e, "cannot renew the sandbox JWT after reconnecting");
            }
        });
    }
    let mut body = resp.into_body();
    let mut lines = NdjsonLines::new(MAX_EVENT_LINE);
    let mut heartbeat = Duration::from_secs(DEFAULT_HEARTBEAT_SECONDS);
    let mut deadline = Instant::now() + heartbeat * MISSED_HEARTBEATS;
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| {
                SessionError::Stream(format!(
                    "{MISSED_HEARTBEATS} heartbeats ({heartbeat:?} apart) missed; the session is dead"
                ))
            })?;
        let data = match frame {
            None => return Err(SessionError::Stream("the gateway ended the session".into())),
            Some(Err(e)) => return Err(SessionError::Stream(format!("session stream: {e}"))),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        for line in lines.push(&data)? {
            let event: SessionEvent = match serde_json::from_slice(&line) {
                Ok(e) => e,
                Err(e) => {
                    // Unknown event types from a newer gateway are skipped, not fatal.
                    tracing::warn!(error = %e, "ignoring an unreadable session event");
                    continue;
                }
            };
            deadline = Instant::now() + heartbeat * MISSED_HEARTBEATS;
            ctx.metrics
                .session_events
                .with_label_values(&[event.kind()])
                .inc();
            match event {
                SessionEvent::Hello {
                    session_id,
                    sandbox_id,
                    heartbeat_seconds,
                } => {
                    if sandbox_id != ctx.sandbox.as_str() {
                        return Err(SessionError::Stream(format!(
                            "the gateway opened a session for `{sandbox_id}`, not {}",
                            ctx.sandbox
                        )));
                    }
                    heartbeat = Duration::from_secs(heartbeat_seconds.clamp(1, 300));
                    deadline = Instant::now() + heartbeat * MISSED_HEARTBEATS;
                    backoff.reset();
                    tracing::info!(session = %session_id, heartbeat = ?heartbeat, "gateway session established");
                }
                SessionEvent::Policy { revision, policy } => {
                    let update = PolicyUpdate {
                        revision,
                        text: policy,
                    };
                    if ctx.policy.send(update).await.is_err() {
                        return Err(SessionError::Stream("the policy source stopped".into()));
                    }
                }
                SessionEvent::Credentials {
                    revision,
                    credentials,
                } => ctx.delivered.replace(revision, credentials),
                SessionEvent::Heartbeat { .. } => {}
                SessionEvent::Relay { relay_id } => {
                    tokio::spawn(super::relay::dial_back(ctx.clone(), relay_id));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_and_crlf() {
        let mut l = NdjsonLines::new(64);
        assert!(l.push(b"{\"a\"").unwrap().is_empty());
        let out = l.push(b":1}\r\n\n{\"b\":2}\n{\"c\"").unwrap();
        assert_eq!(out, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
        assert_eq!(l.push(b":3}\n").unwrap(), vec![b"{\"c\":3}".to_vec()]);
    }

    #[test]
    fn overlong_lines_are_refused_with_or_without_newline() {
        let mut l = NdjsonLines::new(8);
        assert_eq!(l.push(b"123456789"), Err(LineTooLong(8)));
        let mut l = NdjsonLines::new(8);
        assert_eq!(l.push(b"12345"), Ok(vec![]));
        assert_eq!(l.push(b"6789\n"), Err(LineTooLong(8)));
        let mut l = NdjsonLines::new(8);
        assert_eq!(
            l.push(b"12345678\n").unwrap().len(),
            1,
            "exactly the limit is fine"
        );
    }

    #[test]
    fn contract_events_parse() {
        let lines = concat!(
            r#"{"type":"hello","session_id":"s1","sandbox_id":"sbx-x","heartbeat_seconds":15}"#,
            "\n",
            r#"{"type":"credentials","revision":3,"credentials":[{"name":"gh","value":"v","bindings":[{"host":"api.test","port":443,"paths":[]}]}]}"#,
            "\n",
            r#"{"type":"relay","relay_id":"r-1"}"#,
            "\n"
        );
        let mut l = NdjsonLines::new(MAX_EVENT_LINE);
        let events: Vec<SessionEvent> = l
            .push(lines.as_bytes())
            .unwrap()
            .iter()
            .map(|line| serde_json::from_slice(line).unwrap())
            .collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[1].kind(), "credentials");
    }
}

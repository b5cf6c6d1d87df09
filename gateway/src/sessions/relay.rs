//! One exec session through the relay: frames from the CLI's upgraded
//! connection go to the sidecar's dial-back and back, decoded on the way so
//! the gateway can audit the command (the `Open` frame's argv) and how it
//! ended (the `Exit` frame). Idle timeout and maximum duration are enforced
//! here; one audit event is written per session, whatever the ending.
//!
//! Must never: log stdin/stdout bytes, or keep a session past its limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use palisade_api::exec::{ExecExit, ExecOpen, Frame, read_frame, write_frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use super::{ExecSlot, SessionLimits};
use crate::metrics::Metrics;
use crate::principal::SandboxId;

/// How an exec session ended (bounded: the `outcome` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command ended and its `Exit` frame was forwarded.
    Exited,
    /// The sandbox side reported an `Error` frame.
    SandboxError,
    /// The sandbox side closed without an `Exit`.
    SandboxClosed,
    /// The client closed its connection.
    ClientClosed,
    IdleTimeout,
    MaxDuration,
    /// A side sent something that is not an exec frame.
    ProtocolError,
    /// An upgrade did not complete.
    UpgradeFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Exited => "exited",
            Outcome::SandboxError => "sandbox_error",
            Outcome::SandboxClosed => "sandbox_closed",
            Outcome::ClientClosed => "client_closed",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::MaxDuration => "max_duration",
            Outcome::ProtocolError => "protocol_error",
            Outcome::UpgradeFailed => "upgrade_failed",
        }
    }
}

/// Who asked for the session, and where.
#[derive(Debug, Clone)]
pub struct ExecAudit {
    pub principal: String,
    pub sandbox: SandboxId,
    pub relay_id: String,
}

/// What the frames said.
#[derive(Debug, Default)]
struct Seen {
    open: Option<ExecOpen>,
    exit: Option<ExecExit>,
}

/// Run one paired session to its end: await both upgrades, forward frames,
/// enforce limits, write the audit event. Holds `slot` until the end.
pub async fn run(
    client: OnUpgrade,
    sandbox: OnUpgrade,
    audit: ExecAudit,
    limits: SessionLimits,
    metrics: Metrics,
    slot: ExecSlot,
) {
    let started = Instant::now();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let outcome = match tokio::try_join!(client, sandbox) {
        Ok((client, sandbox)) => {
            forward(
                TokioIo::new(client),
                TokioIo::new(sandbox),
                &limits,
                seen.clone(),
            )
            .await
        }
        Err(e) => {
            tracing::warn!(sandbox = %audit.sandbox, error = %e, "exec upgrade failed");
            Outcome::UpgradeFailed
        }
    };
    drop(slot);
    metrics
        .exec_sessions
        .with_label_values(&[outcome.as_str()])
        .inc();
    let seen = seen.lock().await;
    let argv = seen
        .open
        .as_ref()
        .map(|o| o.argv.clone())
        .unwrap_or_default();
    let tty = seen.open.as_ref().is_some_and(|o| o.tty);
    let (code, signal) = seen.exit.map(|e| (e.code, e.signal)).unwrap_or_default();
    tracing::info!(
        target: "palisade_audit",
        event = "exec_session",
        principal = %audit.principal,
        sandbox = %audit.sandbox,
        relay_id = %audit.relay_id,
        argv = ?argv,
        tty,
        duration_seconds = started.elapsed().as_secs_f64(),
        exit_code = ?code,
        exit_signal = ?signal,
        outcome = outcome.as_str(),
        "exec session ended"
    );
}

/// Milliseconds since `start`, for the shared last-activity stamp.
fn stamp(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn forward<C, S>(
    client: C,
    sandbox: S,
    limits: &SessionLimits,
    seen: Arc<Mutex<Seen>>,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Send + Unpin,
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let start = Instant::now();
    let activity = AtomicU64::new(0);
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut sandbox_r, mut sandbox_w) = tokio::io::split(sandbox);
    let deadline = tokio::time::Instant::now() + limits.exec_max_duration;
    let outcome = {
        // Client → sandbox: Open (audited), Stdin, StdinEof, Resize, Signal.
        let up = async {
            loop {
                match read_frame(&mut client_r).await {
                    Ok(Some(frame)) => {
                        activity.store(stamp(start), Ordering::Relaxed);
                        if let Frame::Open(open) = &frame {
                            let mut seen = seen.lock().await;
                            if seen.open.is_none() {
                                seen.open = Some(open.clone());
                            }
                        }
                        if write_frame(&mut sandbox_w, &frame).await.is_err() {
                            return Outcome::SandboxClosed;
                        }
                    }
                    Ok(None) => {
                        // Half-close: the sandbox sees EOF; its answer may still come.
                        let _ = sandbox_w.shutdown().await;
                        return Outcome::ClientClosed;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        return Outcome::ProtocolError;
                    }
                    Err(_) => return Outcome::ClientClosed,
                }
            }
        };
        // Sandbox → client: Stdout, Stderr, then Exit or Error.
        let down = async {
            loop {
                match read_frame(&mut sandbox_r).await {
                    Ok(Some(frame)) => {
                        activity.store(stamp(start), Ordering::Relaxed);
                        let last = match &frame {
                            Frame::Exit(exit) => {
                                seen.lock().await.exit = Some(*exit);
                                Some(Outcome::Exited)
                            }
                            Frame::Error(_) => Some(Outcome::SandboxError),
                            _ => None,
                        };
                        if write_frame(&mut client_w, &frame).await.is_err() {
                            return Outcome::ClientClosed;
                        }
                        if let Some(outcome) = last {
                            return outcome;
                        }
                    }
                    Ok(None) => return Outcome::SandboxClosed,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        return Outcome::ProtocolError;
                    }
                    Err(_) => return Outcome::SandboxClosed,
                }
            }
        };
        tokio::pin!(up, down);
        let mut up_done = false;
        loop {
            let idle_at = tokio::time::Instant::from_std(
                start + Duration::from_millis(activity.load(Ordering::Relaxed)),
            ) + limits.exec_idle_timeout;
            tokio::select! {
                outcome = &mut down => break outcome,
                outcome = &mut up, if !up_done => {
                    if outcome != Outcome::ClientClosed {
                        break outcome;
                    }
                    // Client finished sending; keep relaying the answer.
                    up_done = true;
                }
                () = tokio::time::sleep_until(deadline) => break Outcome::MaxDuration,
                () = tokio::time::sleep_until(idle_at) => {
                    let last = start + Duration::from_millis(activity.load(Ordering::Relaxed));
                    if last.elapsed() >= limits.exec_idle_timeout {
                        break Outcome::IdleTimeout;
                    }
                }
            }
        }
    };
    let reason = match outcome {
        Outcome::IdleTimeout => Some(format!(
            "session closed by the gateway: no traffic for {}s (--exec-idle-timeout)",
            limits.exec_idle_timeout.as_secs()
        )),
        Outcome::MaxDuration => Some(format!(
            "session closed by the gateway: it reached --exec-max-duration ({}s)",
            limits.exec_max_duration.as_secs()
        )),
        Outcome::SandboxClosed => {
            Some("the sandbox closed the session without an exit status".to_owned())
        }
        Outcome::ProtocolError => Some("exec protocol error; session closed".to_owned()),
        _ => None,
    };
    if let Some(message) = reason {
        let _ = write_frame(&mut client_w, &Frame::error(message)).await;
    }
    let _ = client_w.shutdown().await;
    let _ = sandbox_w.shutdown().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_api::exec::ExecOpen;

    fn limits(idle: Duration) -> SessionLimits {
        SessionLimits {
            exec_idle_timeout: idle,
            ..SessionLimits::default()
        }
    }

    #[tokio::test]
    async fn forwards_both_ways_and_records_argv_and_exit() {
        let (client, mut cli) = tokio::io::duplex(4096);
        let (sandbox, mut sbx) = tokio::io::duplex(4096);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move { forward(client, sandbox, &limits(Duration::from_secs(60)), seen).await }
        });
        let open = Frame::Open(ExecOpen {
            argv: vec!["id".into(), "-u".into()],
            tty: false,
            rows: 0,
            cols: 0,
        });
        write_frame(&mut cli, &open).await.unwrap();
        assert_eq!(read_frame(&mut sbx).await.unwrap().unwrap(), open);
        write_frame(&mut sbx, &Frame::Stdout(b"1000\n".to_vec()))
            .await
            .unwrap();
        let exit = Frame::Exit(ExecExit {
            code: Some(0),
            signal: None,
        });
        write_frame(&mut sbx, &exit).await.unwrap();
        assert_eq!(
            read_frame(&mut cli).await.unwrap().unwrap(),
            Frame::Stdout(b"1000\n".to_vec())
        );
        assert_eq!(read_frame(&mut cli).await.unwrap().unwrap(), exit);
        assert_eq!(task.await.unwrap(), Outcome::Exited);
        let seen = seen.lock().await;
        assert_eq!(seen.open.as_ref().unwrap().argv, ["id", "-u"]);
        assert_eq!(seen.exit.unwrap().code, Some(0));
    }

    #[tokio::test]
    async fn idle_session_is_closed_with_an_error_frame() {
        let (client, mut cli) = tokio::io::duplex(4096);
        let (sandbox, _sbx) = tokio::io::duplex(4096);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let outcome = tokio::spawn(async move {
            forward(client, sandbox, &limits(Duration::from_millis(200)), seen).await
        });
        match read_frame(&mut cli).await.unwrap().unwrap() {
            Frame::Error(e) => assert!(e.message.contains("no traffic"), "{e:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(outcome.await.unwrap(), Outcome::IdleTimeout);
    }
}

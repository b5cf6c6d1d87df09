//! Sessions: `palisade sandbox exec` commands, run as the agent user.
//!
//! Owns: the unix socket in the shared dir that the sidecar connects relay streams to
//! (`--session-socket`), the peer check (only `--sidecar-uid` may talk to it, by
//! `SO_PEERCRED`), the session limit, and one task per session speaking the exec framed
//! protocol of `palisade_api::exec`. Sessions run on their own thread with a
//! single-threaded tokio runtime; the main thread stays the PID 1 supervisor.
//!
//! Must never: accept a peer of another UID, run a command as anyone but the shim's own
//! user or with another environment than the workload's, or wait for a child itself —
//! the reaper delivers session children's statuses through [`Waiters`].

mod child;
mod fdio;
mod pump;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use palisade_api::exec::{Frame, write_frame};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::environment::Env;
use crate::log::{info, warning};
use crate::supervise::Waiters;

pub use child::{SESSION_CHILD_FLAG, session_child};

/// Where the sidecar finds the shim (shared dir).
pub const DEFAULT_SESSION_SOCKET: &str = palisade_api::defaults::SHIM_SOCKET;
/// The sidecar's UID, the only peer allowed on the socket.
pub const DEFAULT_SIDECAR_UID: u32 = palisade_api::defaults::SIDECAR_UID;
/// Sessions running at once; more are refused with an `Error` frame.
pub const DEFAULT_MAX_SESSIONS: u32 = 8;

/// Settings of the session server.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub sidecar_uid: u32,
    pub max_sessions: u32,
}

/// What every session task shares.
#[derive(Debug)]
struct Shared {
    env: Env,
    waiters: Waiters,
    next_id: AtomicU64,
}

/// Bind the socket (replacing a stale one) and serve sessions on a background thread.
/// An error here means no sessions; the caller decides whether that is fatal.
pub fn start(config: Config, env: Env, waiters: Waiters) -> Result<()> {
    let listener = bind(&config.socket)?;
    let ctx = Arc::new(Shared {
        env,
        waiters,
        next_id: AtomicU64::new(1),
    });
    std::thread::Builder::new()
        .name("palisade-sessions".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warning!("cannot start the session runtime ({e}); sessions are disabled");
                    return;
                }
            };
            runtime.block_on(serve(listener, config, ctx));
        })
        .context("cannot start the session thread")?;
    Ok(())
}

/// Create the socket at `path`, mode 0666 (access is decided by the peer check).
fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path)
                .with_context(|| format!("cannot replace the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; remove it or pass another --session-socket",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        bail!(
            "the directory {} of the session socket does not exist; mount the shared \
             dir there or pass --session-socket",
            dir.display()
        );
    }
    let listener = std::os::unix::net::UnixListener::bind(path).with_context(|| {
        format!(
            "cannot create the session socket {} (is its directory writable by this UID?)",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("cannot make {} connectable (chmod 0666)", path.display()))?;
    listener
        .set_nonblocking(true)
        .context("cannot make the session socket non-blocking")?;
    Ok(listener)
}

async fn serve(listener: std::os::unix::net::UnixListener, config: Config, ctx: Arc<Shared>) {
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warning!("cannot serve the session socket ({e}); sessions are disabled");
            return;
        }
    };
    info!(
        "serving sessions on {} for UID {} (at most {} at once)",
        config.socket.display(),
        config.sidecar_uid,
        config.max_sessions
    );
    let slots = Arc::new(Semaphore::new(config.max_sessions as usize));
    let mut refused_peers: u64 = 0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warning!("accepting a session connection failed: {e}");
                // E.g. EMFILE: do not spin.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let peer = stream.peer_cred();
        let peer_uid = peer.as_ref().map(|c| c.uid()).ok();
        if peer_uid != Some(config.sidecar_uid) {
            refused_peers += 1;
            let who = match &peer {
                Ok(c) => format!("UID {} (pid {})", c.uid(), c.pid().unwrap_or(0)),
                Err(e) => format!("a peer whose credentials cannot be read ({e})"),
            };
            warning!(
                "refused a session connection from {who}: only the sidecar UID {} may open \
                 sessions ({refused_peers} refused so far)",
                config.sidecar_uid
            );
            tokio::spawn(refuse(
                stream,
                format!(
                    "permission denied: only the sidecar (UID {}) may open sessions",
                    config.sidecar_uid
                ),
            ));
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warning!(
                "refused a session: {} sessions already running (--max-sessions)",
                config.max_sessions
            );
            tokio::spawn(refuse(
                stream,
                format!(
                    "too many sessions: {} already running in this sandbox; close one and retry",
                    config.max_sessions
                ),
            ));
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
            pump::run(stream, id, &ctx.env, &ctx.waiters).await;
            drop(slot);
        });
    }
}

/// Send one `Error` frame and close.
async fn refuse(mut stream: UnixStream, message: String) {
    let _ = write_frame(&mut stream, &Frame::error(message)).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_socket_is_replaced_and_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.sock");
        drop(bind(&path).unwrap());
        // The socket file stays behind after the listener is gone: stale.
        assert!(path.exists());
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        drop(listener);

        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let err = bind(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");

        let missing = dir.path().join("nope/shim.sock");
        let err = bind(&missing).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}

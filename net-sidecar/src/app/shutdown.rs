//! Graceful drain: the ready file, the signal wait, and waiting for in-flight connections.
//!
//! Owns: the `--ready-file` (written when ready, removed when draining starts or a data
//! plane dies), SIGTERM/SIGINT, and waiting for in-flight connections up to the drain
//! deadline. The readiness the admin endpoints report is [`crate::admin::State`].
//! Must never: keep the process alive past the drain deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() -> anyhow::Result<&'static str> {
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Wait until every connection permit is back (no connection in flight) or `deadline`
/// passes. Returns whether all connections finished.
pub async fn wait_for_connections(limit: &Semaphore, max: u32, deadline: Duration) -> bool {
    matches!(
        tokio::time::timeout(deadline, limit.acquire_many(max)).await,
        Ok(Ok(_))
    )
}

/// The `--ready-file`: written atomically (temp file + rename) when ready, removed on drain.
#[derive(Debug, Clone)]
pub struct ReadyFile(pub PathBuf);

impl ReadyFile {
    pub fn write(&self) -> anyhow::Result<()> {
        let tmp = tmp_path(&self.0);
        let body = format!("ready pid={}\n", std::process::id());
        std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, &self.0))
            .with_context(|| {
                format!(
                    "cannot write the ready file {}; make its directory writable by the sidecar UID \
                     (usually the shared /var/run/palisade emptyDir)",
                    self.0.display()
                )
            })
    }

    pub fn remove(&self) {
        if let Err(err) = std::fs::remove_file(&self.0)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %err, "cannot remove the ready file");
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn waits_for_in_flight_connections() {
        let limit = Arc::new(Semaphore::new(3));
        let permit = limit.clone().acquire_owned().await.unwrap();
        let l2 = limit.clone();
        let waiter =
            tokio::spawn(
                async move { wait_for_connections(&l2, 3, Duration::from_secs(60)).await },
            );
        tokio::task::yield_now().await;
        drop(permit);
        assert!(waiter.await.unwrap());
        let _held = limit.clone().acquire_owned().await.unwrap();
        assert!(!wait_for_connections(&limit, 3, Duration::from_millis(10)).await);
    }

    #[test]
    fn ready_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let f = ReadyFile(dir.path().join("sidecar.ready"));
        f.write().unwrap();
        assert!(std::fs::read_to_string(&f.0).unwrap().starts_with("ready"));
        f.remove();
        assert!(!f.0.exists());
        f.remove(); // idempotent
        assert!(
            ReadyFile(dir.path().join("no/such/dir/x"))
                .write()
                .unwrap_err()
                .to_string()
                .contains("writable")
        );
    }
}

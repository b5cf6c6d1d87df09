//! Waiting for the sidecar.
//!
//! Owns: polling for the ready file the sidecar writes into the shared dir once its
//! listeners are bound and a policy is loaded. Must never: start the workload before the
//! file exists (unless `--no-wait`), or wait forever.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::log::info;

/// How often the ready file is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often a "still waiting" line is logged.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// Why the sidecar was not seen ready.
#[derive(Debug)]
pub enum NotReady {
    /// The ready file did not appear in time; the message says what to check.
    Timeout(String),
    /// A termination signal arrived while waiting (pod deleted before it started).
    Signal(Signal),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Timeout(message) => f.write_str(message),
            NotReady::Signal(sig) => write!(
                f,
                "received {sig} while waiting for the sidecar; not starting the workload"
            ),
        }
    }
}

/// Wait until `file` exists, at most `timeout`; `interrupted` is polled each round and
/// ends the wait when it reports a termination signal.
pub fn wait(
    file: &Path,
    timeout: Duration,
    mut interrupted: impl FnMut() -> Option<Signal>,
) -> Result<(), NotReady> {
    let start = Instant::now();
    let mut next_progress = PROGRESS_INTERVAL;
    let mut announced = false;
    loop {
        if file.exists() {
            if announced {
                info!("sidecar ready after {:.1}s", start.elapsed().as_secs_f64());
            }
            return Ok(());
        }
        if let Some(sig) = interrupted() {
            return Err(NotReady::Signal(sig));
        }
        let waited = start.elapsed();
        if waited >= timeout {
            let dir_hint = match file.parent() {
                Some(dir) if !dir.is_dir() => format!(
                    "; its directory {} does not exist either (is the shared emptyDir mounted into this container?)",
                    dir.display()
                ),
                _ => String::new(),
            };
            return Err(NotReady::Timeout(format!(
                "sidecar not ready after {}s: ready file {} was not created{dir_hint}; \
                     check that the palisade-sidecar container is running and its logs, \
                     raise --ready-timeout, or pass --no-wait when running without a sidecar",
                timeout.as_secs_f64(),
                file.display()
            )));
        }
        if !announced {
            info!(
                "waiting for the sidecar: {} (timeout {}s)",
                file.display(),
                timeout.as_secs_f64()
            );
            announced = true;
        } else if waited >= next_progress {
            info!(
                "still waiting for {} ({}s)",
                file.display(),
                waited.as_secs()
            );
            next_progress += PROGRESS_INTERVAL;
        }
        std::thread::sleep(POLL_INTERVAL.min(timeout.saturating_sub(waited)));
    }
}

/// Parse `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (num, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}; use e.g. 500ms, 30s, 2m, 1h"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?}; use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("120s").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("120").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn times_out_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("nope/ready");
        let err = wait(&f, Duration::from_millis(50), || None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&f.display().to_string()), "{err}");
        assert!(err.contains("does not exist either"), "{err}");
        std::fs::write(tmp.path().join("ready"), "").unwrap();
        wait(&tmp.path().join("ready"), Duration::from_millis(50), || {
            None
        })
        .unwrap();
        let err = wait(&f, Duration::from_secs(100), || Some(Signal::SIGTERM)).unwrap_err();
        assert!(matches!(err, NotReady::Signal(Signal::SIGTERM)), "{err}");
    }
}

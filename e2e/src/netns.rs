//! [`Netns`]: a uniquely named network namespace that is deleted when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

use crate::process::{self, CmdOutput, Proc};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A process-wide unique small number (used for names and address blocks).
pub(crate) fn next_serial() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A network namespace created with `ip netns add`, loopback up.
///
/// Drop kills every process still running in it (`ip netns pids`), deletes it and removes
/// `/etc/netns/<name>/` — also when the test panics. Each namespace owns a work directory
/// (mode 0755, readable by the agent UID) for configs, logs and scripts.
#[derive(Debug)]
pub struct Netns {
    name: String,
    workdir: tempfile::TempDir,
}

impl Netns {
    /// Create `plsd-<role>-<pid>-<serial>-<random>`; `role` is a short label ("pod").
    pub fn new(role: &str) -> anyhow::Result<Netns> {
        let random: u32 = rand::random::<u32>() & 0xffff;
        let name = format!(
            "plsd-{role}-{}-{}-{random:04x}",
            std::process::id(),
            next_serial()
        );
        let workdir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .context("create namespace work dir")?;
        make_world_readable(workdir.path())?;
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .context("run `ip netns add` (install iproute2)")?;
        if !out.status.success() {
            bail!(
                "ip netns add {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let ns = Netns { name, workdir };
        ns.run(["ip", "link", "set", "lo", "up"]).ok_or_fail()?;
        Ok(ns)
    }

    /// The namespace name (as used by `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's work directory (0755).
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// `/etc/netns/<name>`: files here are bind-mounted over `/etc/<file>` by
    /// `ip netns exec` (used for `resolv.conf`).
    pub fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// Write `/etc/netns/<name>/resolv.conf` so processes in this namespace use `nameserver`.
    pub fn set_resolv_conf(&self, contents: &str) -> anyhow::Result<()> {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let file = dir.join("resolv.conf");
        std::fs::write(&file, contents).with_context(|| format!("write {}", file.display()))?;
        Ok(())
    }

    /// Run `argv` in this namespace and wait (see [`process::run_in`]).
    pub fn run<I, S>(&self, argv: I) -> CmdOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        process::run_in(self, argv)
    }

    /// Spawn `argv` in this namespace (see [`process::spawn_in`]).
    pub fn spawn<I, S>(&self, argv: I) -> anyhow::Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        process::spawn_in(self, argv)
    }

    /// `sysctl -w key=value` inside the namespace (net.* sysctls are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.run(["sysctl", "-q", "-w", &format!("{key}={value}")])
            .ok_or_fail()?;
        Ok(())
    }

    /// PIDs of processes in this namespace.
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for _ in 0..3 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

/// chmod 0755 so the agent and sidecar UIDs can read what the harness writes.
pub fn make_world_readable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if path.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

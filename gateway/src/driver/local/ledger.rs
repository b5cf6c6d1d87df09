//! The local driver's crash-safety record (`<data-dir>/driver/ledger.json`):
//! every host resource it creates is written here BEFORE it is created and
//! removed after it is gone, so a later start can clean up what a killed
//! `palisade up` left behind.
//! Must never: hold a secret, or lead cleanup to a process it did not start
//! (processes are recorded with their kernel start time and killed only if
//! both still match).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::net;
use crate::driver::contract::DriverError;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    #[serde(default)]
    pub bridge: Option<BridgeRecord>,
    #[serde(default)]
    pub nat: Option<NatRecord>,
    #[serde(default)]
    pub sandboxes: BTreeMap<String, SandboxRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeRecord {
    pub name: String,
    pub subnet: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NatRecord {
    pub subnet: Ipv4Net,
    pub bridge: String,
    /// `net.ipv4.ip_forward` before we set it (`None` until known).
    pub ip_forward_before: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxRecord {
    pub netns: Option<String>,
    pub veth_host: Option<String>,
    pub run_dir: PathBuf,
    #[serde(default)]
    pub processes: Vec<ProcRecord>,
}

/// A process group we started: its leader's pid and kernel start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcRecord {
    pub pid: i32,
    pub start_time: u64,
}

impl Ledger {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("ledger.json")
    }

    pub fn load(state_dir: &Path) -> Result<Ledger, DriverError> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                DriverError::failed(format!(
                    "the driver ledger {} is corrupt ({e}); clean up by hand (`ip netns list`, \
                     `ip link`, iptables rules commented `{}`) and delete the file",
                    path.display(),
                    net::NAT_COMMENT
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(DriverError::failed(format!(
                "cannot read the driver ledger {}: {e}",
                path.display()
            ))),
        }
    }

    pub fn save(&self, state_dir: &Path) -> Result<(), DriverError> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| DriverError::failed(format!("cannot encode the driver ledger: {e}")))?;
        crate::fsutil::write_private(&Self::path(state_dir), &bytes).map_err(|e| {
            DriverError::failed(format!(
                "cannot write the driver ledger in {}: {e}; check that the data dir is writable",
                state_dir.display()
            ))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.bridge.is_none() && self.nat.is_none() && self.sandboxes.is_empty()
    }
}

/// The kernel start time (clock ticks since boot) of `pid`, from `/proc/<pid>/stat`.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 is `(comm)` and may contain spaces; count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Kill a recorded process group if its leader is still the process we started.
pub fn kill_recorded(p: ProcRecord) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    if p.pid > 1 && start_time(p.pid) == Some(p.start_time) {
        let _ = killpg(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
}

/// Remove everything one sandbox record names. Idempotent.
pub fn clean_sandbox(rec: &SandboxRecord) -> Result<(), DriverError> {
    for p in &rec.processes {
        kill_recorded(*p);
    }
    let mut result = Ok(());
    if let Some(ns) = &rec.netns {
        let veth = rec.veth_host.as_deref().unwrap_or("");
        result = net::delete_sandbox_net(ns, veth);
    }
    if rec.run_dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&rec.run_dir)
    {
        result = result.and(Err(DriverError::failed(format!(
            "cannot remove {}: {e}",
            rec.run_dir.display()
        ))));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_our_own_start_time() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Ledger::load(dir.path()).unwrap().is_empty());
        let mut l = Ledger::default();
        l.sandboxes.insert(
            "sbx-x".into(),
            SandboxRecord {
                netns: Some("palisade-x".into()),
                run_dir: "/run/palisade/x".into(),
                processes: vec![ProcRecord {
                    pid: 7,
                    start_time: 9,
                }],
                ..Default::default()
            },
        );
        l.save(dir.path()).unwrap();
        assert_eq!(Ledger::load(dir.path()).unwrap(), l);
    }

    #[test]
    fn kills_only_the_process_it_recorded() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let started = start_time(pid).unwrap();
        // A recycled pid (other start time) is left alone.
        kill_recorded(ProcRecord {
            pid,
            start_time: started + 1,
        });
        assert!(child.try_wait().unwrap().is_none());
        kill_recorded(ProcRecord {
            pid,
            start_time: started,
        });
        let status = child.wait().unwrap();
        assert!(!status.success());
    }
}

//! Hardening check: is this process really as unprivileged as Palisade was promised?
//!
//! Owns: reading the process credentials (UID, GID, groups, capability sets from
//! `/proc/self/status`), setting `no_new_privs` when the runtime did not, and turning
//! every gap into a [`Finding`] that names the Kubernetes `securityContext` field that
//! closes it. Must never: raise privileges, or start the workload itself — the caller
//! decides whether findings refuse the start (`--allow-insecure` only downgrades them).

use std::fmt;

use anyhow::{Context, Result};
use nix::unistd::{Gid, Uid};

/// Capability names by bit number (see capabilities(7)); bit 0 is `cap_chown`.
const CAP_NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// The privilege-relevant lines of `/proc/self/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStatus {
    /// `CapEff`: capabilities in effect.
    pub effective: u64,
    /// `CapPrm`: capabilities the process may make effective.
    pub permitted: u64,
    /// `CapAmb`: capabilities kept across `execve` of unprivileged programs.
    pub ambient: u64,
    /// `NoNewPrivs`: `execve` can never grant privileges (setuid, file caps).
    pub no_new_privs: bool,
}

impl ProcStatus {
    /// Parse the text of `/proc/<pid>/status`.
    pub fn parse(text: &str) -> Result<Self> {
        let field = |name: &str| -> Result<&str> {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .with_context(|| format!("/proc/self/status has no {name} line (kernel too old?)"))
        };
        let hex = |name: &str| -> Result<u64> {
            let value = field(name)?;
            u64::from_str_radix(value, 16)
                .with_context(|| format!("/proc/self/status: {name} is not a hex mask: {value:?}"))
        };
        Ok(Self {
            effective: hex("CapEff")?,
            permitted: hex("CapPrm")?,
            ambient: hex("CapAmb")?,
            no_new_privs: field("NoNewPrivs")? == "1",
        })
    }

    /// Read this process's status.
    pub fn read_self() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/self/status")
            .context("cannot read /proc/self/status; is /proc mounted?")?;
        Self::parse(&text)
    }
}

/// Names of the capabilities set in `mask` (`net_raw`, …; unknown bits as `cap_<n>`).
pub fn cap_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| match CAP_NAMES.get(bit as usize) {
            Some(name) => (*name).to_owned(),
            None => format!("cap_{bit}"),
        })
        .collect()
}

/// One way in which the process is more privileged than promised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Real or effective UID is 0.
    RootUser,
    /// Real or effective GID is 0.
    RootGroup,
    /// Group 0 is among the supplementary groups.
    RootSupplementaryGroup,
    /// A capability set is not empty.
    Capabilities {
        /// `effective`, `permitted` or `ambient`.
        set: &'static str,
        /// Capability names in the set.
        caps: Vec<String>,
    },
    /// `no_new_privs` is off and could not be set.
    NoNewPrivs,
}

impl Finding {
    /// The `securityContext` setting that fixes this finding.
    pub fn fix(&self) -> &'static str {
        match self {
            Finding::RootUser => {
                "set securityContext.runAsNonRoot: true and runAsUser: <non-zero UID> (e.g. 1000)"
            }
            Finding::RootGroup => {
                "set securityContext.runAsGroup: <non-zero GID> (e.g. 1000); on OpenShift, where GID 0 is the norm, pass --allow-root-group"
            }
            Finding::RootSupplementaryGroup => {
                "remove 0 from securityContext.supplementalGroups / fsGroup and the image's /etc/group; on OpenShift pass --allow-root-group"
            }
            Finding::Capabilities { .. } => {
                "set securityContext.capabilities.drop: [ALL] (and add none), runAsNonRoot: true"
            }
            Finding::NoNewPrivs => "set securityContext.allowPrivilegeEscalation: false",
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::RootUser => write!(f, "runs as UID 0 (root)"),
            Finding::RootGroup => write!(f, "runs as GID 0 (root group)"),
            Finding::RootSupplementaryGroup => {
                write!(f, "GID 0 (root group) is a supplementary group")
            }
            Finding::Capabilities { set, caps } => {
                write!(f, "{set} capability set is not empty ({})", caps.join(", "))
            }
            Finding::NoNewPrivs => write!(f, "NoNewPrivs is not set and could not be set"),
        }
    }
}

/// Credentials the check looks at (separate from the OS so the rules are unit-testable).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Real and effective UID.
    pub uids: [Uid; 2],
    /// Real and effective GID.
    pub gids: [Gid; 2],
    /// Supplementary groups.
    pub groups: Vec<Gid>,
    /// Capability sets and `NoNewPrivs`.
    pub status: ProcStatus,
}

impl Credentials {
    /// Credentials of this process.
    pub fn current() -> Result<Self> {
        let groups = nix::unistd::getgroups().context("getgroups failed")?;
        Ok(Self {
            uids: [nix::unistd::getuid(), nix::unistd::geteuid()],
            gids: [nix::unistd::getgid(), nix::unistd::getegid()],
            groups,
            status: ProcStatus::read_self()?,
        })
    }

    /// Every finding for these credentials.
    pub fn findings(&self, allow_root_group: bool) -> Vec<Finding> {
        let mut out = Vec::new();
        if self.uids.iter().any(|u| u.is_root()) {
            out.push(Finding::RootUser);
        }
        if !allow_root_group {
            if self.gids.iter().any(|g| g.as_raw() == 0) {
                out.push(Finding::RootGroup);
            } else if self.groups.iter().any(|g| g.as_raw() == 0) {
                out.push(Finding::RootSupplementaryGroup);
            }
        }
        for (set, mask) in [
            ("effective", self.status.effective),
            ("permitted", self.status.permitted),
            ("ambient", self.status.ambient),
        ] {
            if mask != 0 {
                out.push(Finding::Capabilities {
                    set,
                    caps: cap_names(mask),
                });
            }
        }
        if !self.status.no_new_privs {
            out.push(Finding::NoNewPrivs);
        }
        out
    }
}

/// Outcome of [`check`].
#[derive(Debug)]
pub struct Report {
    /// Everything that is not as promised.
    pub findings: Vec<Finding>,
    /// The shim had to set `no_new_privs` itself.
    pub set_no_new_privs: bool,
}

/// Check this process; sets `no_new_privs` first when it is missing, then re-checks.
pub fn check(allow_root_group: bool) -> Result<Report> {
    let mut set_no_new_privs = false;
    if !ProcStatus::read_self()?.no_new_privs {
        // Setting it can only reduce privilege; failure shows up as a finding below.
        if nix::sys::prctl::set_no_new_privs().is_ok() {
            set_no_new_privs = true;
        }
    }
    let creds = Credentials::current()?;
    Ok(Report {
        findings: creds.findings(allow_root_group),
        set_no_new_privs: set_no_new_privs && creds.status.no_new_privs,
    })
}

/// One line per finding with its fix.
pub fn describe(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| format!("\n  - {f}; fix: {}", f.fix()))
        .collect()
}

/// The refusal text: one line per finding with its fix.
pub fn refusal_message(findings: &[Finding]) -> String {
    format!(
        "refusing to start: this container is not hardened as Palisade requires:{}\n\
         (--allow-insecure downgrades this to a warning; for debugging only)",
        describe(findings)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000002000\nCapEff:\t0000000000002000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000002000\nNoNewPrivs:\t0\nSeccomp:\t0\n";

    #[test]
    fn parses_status() {
        let s = ProcStatus::parse(STATUS).unwrap();
        assert_eq!(s.effective, 0x2000);
        assert_eq!(s.permitted, 0x2000);
        assert_eq!(s.ambient, 0x2000);
        assert!(!s.no_new_privs);
        assert!(ProcStatus::parse("CapEff:\t0\n").is_err());
    }

    #[test]
    fn names_capabilities() {
        assert_eq!(cap_names(0x2000), vec!["net_raw"]);
        assert_eq!(cap_names(0b11), vec!["chown", "dac_override"]);
        assert_eq!(cap_names(1 << 50), vec!["cap_50"]);
    }

    fn creds(uid: u32, gid: u32, groups: &[u32], status: &str) -> Credentials {
        Credentials {
            uids: [Uid::from_raw(uid); 2],
            gids: [Gid::from_raw(gid); 2],
            groups: groups.iter().map(|g| Gid::from_raw(*g)).collect(),
            status: ProcStatus::parse(status).unwrap(),
        }
    }

    #[test]
    fn findings_name_each_gap() {
        let bad = creds(0, 0, &[], STATUS).findings(false);
        assert_eq!(bad[0], Finding::RootUser);
        assert_eq!(bad[1], Finding::RootGroup);
        assert_eq!(bad.len(), 6, "{bad:?}");
        assert!(bad.contains(&Finding::NoNewPrivs));
        let msg = refusal_message(&bad);
        assert!(msg.contains("capabilities.drop: [ALL]"), "{msg}");
        assert!(msg.contains("allowPrivilegeEscalation: false"), "{msg}");
        assert!(msg.contains("runAsNonRoot"), "{msg}");
        assert!(
            msg.contains("ambient capability set is not empty (net_raw)"),
            "{msg}"
        );

        let clean = STATUS
            .replace("0000000000002000", "0000000000000000")
            .replace("NoNewPrivs:\t0", "NoNewPrivs:\t1");
        assert!(
            creds(1000, 1000, &[1000], &clean)
                .findings(false)
                .is_empty()
        );
        assert_eq!(
            creds(1000, 1000, &[0], &clean).findings(false),
            vec![Finding::RootSupplementaryGroup]
        );
        assert!(creds(1000570000, 0, &[0], &clean).findings(true).is_empty());
    }
}

//! The check table: every check's ID, level and revisions (the policy
//! version each revision starts at, and the baseline checks a restricted
//! revision replaces), and the evaluation that picks the revisions in force
//! for a level and version.

use std::fmt;

use super::model::Pod;
use super::{Level, Version, Violation, baseline, restricted};

/// A check, named by its official ID (`CheckId::HostPorts` is `hostPorts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckId {
    HostNamespaces,
    Privileged,
    CapabilitiesBaseline,
    HostPathVolumes,
    HostPorts,
    AppArmorProfile,
    SeLinuxOptions,
    ProcMount,
    SeccompProfileBaseline,
    Sysctls,
    WindowsHostProcess,
    HostProbesAndHostLifecycle,
    RestrictedVolumes,
    AllowPrivilegeEscalation,
    RunAsNonRoot,
    RunAsUser,
    SeccompProfileRestricted,
    CapabilitiesRestricted,
    ProcMountRestricted,
    /// Not an official check: a field the checker could not read (wrong
    /// type, missing `spec`). The pod fails rather than pass unread.
    InvalidPod,
}

impl CheckId {
    /// The official check ID (`invalidPod` is Palisade's own).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckId::HostNamespaces => "hostNamespaces",
            CheckId::Privileged => "privileged",
            CheckId::CapabilitiesBaseline => "capabilities_baseline",
            CheckId::HostPathVolumes => "hostPathVolumes",
            CheckId::HostPorts => "hostPorts",
            CheckId::AppArmorProfile => "appArmorProfile",
            CheckId::SeLinuxOptions => "seLinuxOptions",
            CheckId::ProcMount => "procMount",
            CheckId::SeccompProfileBaseline => "seccompProfile_baseline",
            CheckId::Sysctls => "sysctls",
            CheckId::WindowsHostProcess => "windowsHostProcess",
            CheckId::HostProbesAndHostLifecycle => "hostProbesAndHostLifecycle",
            CheckId::RestrictedVolumes => "restrictedVolumes",
            CheckId::AllowPrivilegeEscalation => "allowPrivilegeEscalation",
            CheckId::RunAsNonRoot => "runAsNonRoot",
            CheckId::RunAsUser => "runAsUser",
            CheckId::SeccompProfileRestricted => "seccompProfile_restricted",
            CheckId::CapabilitiesRestricted => "capabilities_restricted",
            CheckId::ProcMountRestricted => "procMount_restricted",
            CheckId::InvalidPod => "invalidPod",
        }
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a running check puts its findings.
pub(super) struct Out<'a> {
    id: CheckId,
    list: &'a mut Vec<Violation>,
}

impl Out<'_> {
    pub fn push(&mut self, path: String, reason: &'static str, detail: String) {
        self.list.push(Violation {
            check: self.id,
            path,
            reason,
            detail,
        });
    }
}

type CheckFn = fn(&Pod, &mut Out<'_>);

struct Revision {
    /// The first policy version (`v1.<since>`) this revision applies to.
    since: u32,
    run: CheckFn,
    /// Baseline checks this (restricted) revision replaces at restricted.
    overrides: &'static [CheckId],
}

struct Check {
    id: CheckId,
    level: Level,
    /// Oldest first.
    revisions: &'static [Revision],
}

const fn rev(since: u32, run: CheckFn) -> Revision {
    Revision {
        since,
        run,
        overrides: &[],
    }
}

const fn rev_over(since: u32, run: CheckFn, overrides: &'static [CheckId]) -> Revision {
    Revision {
        since,
        run,
        overrides,
    }
}

use CheckId as C;
use Level::{Baseline as B, Restricted as R};

/// Every check of the published standard, with the policy versions its
/// revisions start at (the official check IDs and version boundaries).
static CHECKS: &[Check] = &[
    // Baseline.
    Check {
        id: C::HostNamespaces,
        level: B,
        revisions: &[rev(0, baseline::host_namespaces)],
    },
    Check {
        id: C::Privileged,
        level: B,
        revisions: &[rev(0, baseline::privileged)],
    },
    Check {
        id: C::CapabilitiesBaseline,
        level: B,
        revisions: &[rev(0, baseline::capabilities)],
    },
    Check {
        id: C::HostPathVolumes,
        level: B,
        revisions: &[rev(0, baseline::host_path_volumes)],
    },
    Check {
        id: C::HostPorts,
        level: B,
        revisions: &[rev(0, baseline::host_ports)],
    },
    Check {
        id: C::AppArmorProfile,
        level: B,
        revisions: &[rev(0, baseline::app_armor_profile)],
    },
    Check {
        id: C::SeLinuxOptions,
        level: B,
        revisions: &[
            rev(0, baseline::se_linux_options_1_0),
            rev(31, baseline::se_linux_options_1_31),
        ],
    },
    Check {
        id: C::ProcMount,
        level: B,
        revisions: &[
            rev(0, baseline::proc_mount_1_0),
            rev(35, baseline::proc_mount_1_35),
        ],
    },
    Check {
        id: C::SeccompProfileBaseline,
        level: B,
        revisions: &[
            rev(0, baseline::seccomp_annotations),
            rev(19, baseline::seccomp_fields),
        ],
    },
    Check {
        id: C::Sysctls,
        level: B,
        revisions: &[
            rev(0, baseline::sysctls_1_0),
            rev(27, baseline::sysctls_1_27),
            rev(29, baseline::sysctls_1_29),
            rev(32, baseline::sysctls_1_32),
            rev(37, baseline::sysctls_1_37),
        ],
    },
    Check {
        id: C::WindowsHostProcess,
        level: B,
        revisions: &[rev(0, baseline::windows_host_process)],
    },
    Check {
        id: C::HostProbesAndHostLifecycle,
        level: B,
        revisions: &[rev(34, baseline::host_probes_and_lifecycle)],
    },
    // Restricted.
    Check {
        id: C::RestrictedVolumes,
        level: R,
        revisions: &[rev_over(0, restricted::volumes, &[C::HostPathVolumes])],
    },
    Check {
        id: C::AllowPrivilegeEscalation,
        level: R,
        revisions: &[
            rev(8, restricted::allow_privilege_escalation_1_8),
            rev(25, restricted::allow_privilege_escalation_1_25),
        ],
    },
    Check {
        id: C::RunAsNonRoot,
        level: R,
        revisions: &[
            rev(0, restricted::run_as_non_root_1_0),
            rev(35, restricted::run_as_non_root_1_35),
        ],
    },
    Check {
        id: C::RunAsUser,
        level: R,
        revisions: &[
            rev(23, restricted::run_as_user_1_23),
            rev(35, restricted::run_as_user_1_35),
        ],
    },
    Check {
        id: C::SeccompProfileRestricted,
        level: R,
        revisions: &[
            rev_over(19, restricted::seccomp_1_19, &[C::SeccompProfileBaseline]),
            rev_over(25, restricted::seccomp_1_25, &[C::SeccompProfileBaseline]),
        ],
    },
    Check {
        id: C::CapabilitiesRestricted,
        level: R,
        revisions: &[
            rev_over(
                22,
                restricted::capabilities_1_22,
                &[C::CapabilitiesBaseline],
            ),
            rev_over(
                25,
                restricted::capabilities_1_25,
                &[C::CapabilitiesBaseline],
            ),
        ],
    },
    Check {
        id: C::ProcMountRestricted,
        level: R,
        revisions: &[rev_over(35, baseline::proc_mount_1_0, &[C::ProcMount])],
    },
];

/// The revisions in force at `level` and `version`: for each check of the
/// level (restricted includes baseline) the newest revision not newer than
/// `version`, minus the baseline checks a restricted revision replaces.
fn in_force(level: Level, version: Version) -> Vec<(CheckId, &'static Revision)> {
    let selected: Vec<(&Check, &Revision)> = CHECKS
        .iter()
        .filter(|c| c.level <= level)
        .filter_map(|c| {
            c.revisions
                .iter()
                .rev()
                .find(|r| r.since <= version.minor())
                .map(|r| (c, r))
        })
        .collect();
    let overridden: Vec<CheckId> = selected
        .iter()
        .filter(|(c, _)| c.level == Level::Restricted && level == Level::Restricted)
        .flat_map(|(_, r)| r.overrides.iter().copied())
        .collect();
    selected
        .into_iter()
        .filter(|(c, _)| !(c.level == Level::Baseline && overridden.contains(&c.id)))
        .map(|(c, r)| (c.id, r))
        .collect()
}

/// The IDs of the checks in force at `level` and `version`, in table order.
pub fn checks_in_force(level: Level, version: Version) -> Vec<CheckId> {
    in_force(level, version)
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

pub(super) fn evaluate(level: Level, version: Version, pod: &Pod, out: &mut Vec<Violation>) {
    for (id, revision) in in_force(level, version) {
        (revision.run)(pod, &mut Out { id, list: out });
    }
}

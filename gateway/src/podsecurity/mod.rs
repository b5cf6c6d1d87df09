//! Pod Security Standards: checks a Pod against the `baseline` or
//! `restricted` profile of a policy version `v1.0` … `v1.37` (`latest`),
//! giving the verdict of the official Pod Security Admission library
//! (`k8s.io/pod-security-admission`) with one violation per offending field.
//!
//! Used to prove every pod the pod renderer produces is `restricted` (but
//! for the documented `init` container, see [`check_except`]). Works on
//! the JSON form of a Pod, so it does not
//! depend on the `k8s-openapi` version; [`check_k8s_pod`] takes the typed
//! Pod. Conformance with the official library's test data is
//! `gateway/tests/pod_security_conformance.rs`; see `docs/pod-security.md`.
//!
//! * [`registry`] — the check table (IDs, levels, the versions each check
//!   revision starts at, which baseline checks a restricted one replaces).
//! * `baseline`, `restricted` — the checks themselves.
//! * `model` — the fields the checks read, taken from the JSON once.
//!
//! Must never: pass a pod it could not fully read (a field of the wrong
//! type is an `invalidPod` violation), guess the rules of a policy version
//! newer than it knows (refused when parsed), or do I/O.

mod baseline;
mod model;
pub mod registry;
mod restricted;
mod version;

#[cfg(test)]
mod tests;

use std::fmt;

pub use registry::{CheckId, checks_in_force};
pub use version::{LATEST_MINOR, Level, Version};

/// One field of the pod that the policy forbids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The check that forbids it, by its official ID.
    pub check: CheckId,
    /// The field, as `spec.containers[1].securityContext.capabilities.add`
    /// or `metadata.annotations[<key>]`.
    pub path: String,
    /// The official forbidden reason (`"host namespaces"`,
    /// `"unrestricted capabilities"`).
    pub reason: &'static str,
    /// What is wrong with this field, in the official detail's wording
    /// (`container "agent" must set securityContext.allowPrivilegeEscalation=false`).
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}: {}",
            self.check, self.path, self.reason, self.detail
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodSecurityError {
    #[error(
        "unknown Pod Security level {0:?}; use \"baseline\" or \"restricted\" \
         (\"privileged\" has nothing to check)"
    )]
    Level(String),
    #[error(
        "invalid Pod Security policy version {0:?}; use \"latest\" or \"v1.N\" (for example v1.30)"
    )]
    Version(String),
    #[error(
        "Pod Security policy version v1.{0} is newer than this checker knows (latest is v1.{LATEST_MINOR}); \
         use v1.{LATEST_MINOR} or older, or upgrade Palisade"
    )]
    VersionTooNew(u32),
    #[error("cannot exempt container {0:?}: the pod has no container of that name")]
    UnknownExemptContainer(String),
}

/// Checks `pod` (the JSON form of a Pod: `{"apiVersion": "v1", "kind":
/// "Pod", "metadata": …, "spec": …}`) against `level` at `version`. Empty
/// means the official library admits it.
pub fn check(level: Level, version: Version, pod: &serde_json::Value) -> Vec<Violation> {
    let (pod, mut violations) = model::read(pod);
    registry::evaluate(level, version, &pod, &mut violations);
    violations
}

/// [`check`] for a typed `k8s-openapi` Pod.
pub fn check_k8s_pod(
    level: Level,
    version: Version,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Vec<Violation> {
    match serde_json::to_value(pod) {
        Ok(value) => check(level, version, &value),
        Err(e) => vec![Violation {
            check: CheckId::InvalidPod,
            path: "(pod)".to_owned(),
            reason: "invalid pod",
            detail: format!("cannot serialise the pod to JSON: {e}"),
        }],
    }
}

/// [`check`], but the containers named in `exempt` (init, regular or
/// ephemeral) are left out, as if the pod did not have them; everything at
/// pod level is still checked (host namespaces, volumes, pod security
/// context, sysctls, AppArmor annotations, including one naming an exempt
/// container). The one per-container annotation left out with its
/// container is the legacy `container.seccomp.security.alpha.kubernetes.io/<name>`
/// (read only before v1.19). A field of an exempt container that cannot be
/// read is still an `invalidPod` violation. Paths still refer to the pod as
/// given. For "restricted except the `init` container":
/// `check_except(Level::Restricted, Version::LATEST, &pod, &["init"])`.
///
/// A name in `exempt` that no container has is an error: it is a typo, or
/// the pod is not the one the caller thinks it is.
pub fn check_except(
    level: Level,
    version: Version,
    pod: &serde_json::Value,
    exempt: &[&str],
) -> Result<Vec<Violation>, PodSecurityError> {
    let (mut pod, mut violations) = model::read(pod);
    for name in exempt {
        if !pod.containers.iter().any(|c| c.name == *name) {
            return Err(PodSecurityError::UnknownExemptContainer((*name).to_owned()));
        }
    }
    pod.containers
        .retain(|c| !exempt.contains(&c.name.as_str()));
    registry::evaluate(level, version, &pod, &mut violations);
    Ok(violations)
}

/// The violations as the official admission message words them:
/// `violates PodSecurity "restricted:v1.37": host namespaces (hostNetwork=true), …`
/// (one entry per check, its field details joined by `; `). Empty when
/// there are none.
pub fn summary(level: Level, version: Version, violations: &[Violation]) -> String {
    if violations.is_empty() {
        return String::new();
    }
    let mut groups: Vec<(CheckId, &str, Vec<&str>)> = Vec::new();
    for v in violations {
        match groups.iter_mut().find(|(id, _, _)| *id == v.check) {
            Some((_, _, details)) => details.push(&v.detail),
            None => groups.push((v.check, v.reason, vec![&v.detail])),
        }
    }
    let parts: Vec<String> = groups
        .into_iter()
        .map(|(_, reason, details)| format!("{reason} ({})", details.join("; ")))
        .collect();
    format!(
        "violates PodSecurity \"{level}:{version}\": {}",
        parts.join(", ")
    )
}

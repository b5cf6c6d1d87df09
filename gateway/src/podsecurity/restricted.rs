//! The restricted checks (current pod hardening practice), run on top of the
//! baseline ones.
//!
//! Windows pods (`spec.os.name: windows`) are exempt from the requirements
//! to *set* `allowPrivilegeEscalation`, `seccompProfile` and
//! `capabilities.drop` from v1.25, as in the official library (the API
//! server refuses those Linux-only fields on a Windows pod). A Windows pod
//! that sets one of them to a forbidden value anyway still fails: the
//! exemption is for the absent field, never for a bad one.

use super::baseline::{container_label, quote, seccomp_fields, seccomp_type_allowed};
use super::model::Pod;
use super::registry::Out;

/// The volume types restricted allows (besides a volume with no source,
/// which the API server makes an `emptyDir`).
const ALLOWED_VOLUME_SOURCES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

pub(super) fn volumes(pod: &Pod, out: &mut Out<'_>) {
    for v in &pod.volumes {
        for source in &v.sources {
            if !ALLOWED_VOLUME_SOURCES.contains(&source.as_str()) {
                out.push(
                    format!("{}.{source}", v.path),
                    "restricted volume types",
                    format!(
                        "volume {} uses restricted volume type {}",
                        quote(&[&v.name]),
                        quote(&[source])
                    ),
                );
            }
        }
    }
}

fn allow_privilege_escalation(pod: &Pod, out: &mut Out<'_>, windows_exempt: bool) {
    for c in &pod.containers {
        let ape = c.sc.allow_privilege_escalation;
        let bad = if windows_exempt {
            ape == Some(true)
        } else {
            ape != Some(false)
        };
        if bad {
            out.push(
                c.sc_path("allowPrivilegeEscalation"),
                "allowPrivilegeEscalation != false",
                format!(
                    "{} must set securityContext.allowPrivilegeEscalation=false",
                    container_label(c)
                ),
            );
        }
    }
}

pub(super) fn allow_privilege_escalation_1_8(pod: &Pod, out: &mut Out<'_>) {
    allow_privilege_escalation(pod, out, false);
}

pub(super) fn allow_privilege_escalation_1_25(pod: &Pod, out: &mut Out<'_>) {
    allow_privilege_escalation(pod, out, pod.windows);
}

pub(super) fn run_as_non_root_1_0(pod: &Pod, out: &mut Out<'_>) {
    const REASON: &str = "runAsNonRoot != true";
    let pod_level = pod.security_context.run_as_non_root;
    if pod_level == Some(false) {
        out.push(
            "spec.securityContext.runAsNonRoot".to_owned(),
            REASON,
            "pod must not set securityContext.runAsNonRoot=false".to_owned(),
        );
    }
    for c in &pod.containers {
        match c.sc.run_as_non_root {
            Some(true) => {}
            Some(false) => out.push(
                c.sc_path("runAsNonRoot"),
                REASON,
                format!(
                    "{} must not set securityContext.runAsNonRoot=false",
                    container_label(c)
                ),
            ),
            None if pod_level == Some(true) => {}
            None => out.push(
                c.sc_path("runAsNonRoot"),
                REASON,
                format!(
                    "pod or {} must set securityContext.runAsNonRoot=true",
                    container_label(c)
                ),
            ),
        }
    }
}

/// From v1.35 a pod in a user namespace (`hostUsers: false`) may run as
/// UID 0: that UID is not root on the node.
pub(super) fn run_as_non_root_1_35(pod: &Pod, out: &mut Out<'_>) {
    if pod.host_users == Some(false) {
        return;
    }
    run_as_non_root_1_0(pod, out);
}

pub(super) fn run_as_user_1_23(pod: &Pod, out: &mut Out<'_>) {
    const REASON: &str = "runAsUser=0";
    if pod.security_context.run_as_user == Some(0) {
        out.push(
            "spec.securityContext.runAsUser".to_owned(),
            REASON,
            "pod must not set runAsUser=0".to_owned(),
        );
    }
    for c in &pod.containers {
        if c.sc.run_as_user == Some(0) {
            out.push(
                c.sc_path("runAsUser"),
                REASON,
                format!("{} must not set runAsUser=0", container_label(c)),
            );
        }
    }
}

/// From v1.35 skipped for a pod in a user namespace (`hostUsers: false`).
pub(super) fn run_as_user_1_35(pod: &Pod, out: &mut Out<'_>) {
    if pod.host_users == Some(false) {
        return;
    }
    run_as_user_1_23(pod, out);
}

fn seccomp(pod: &Pod, out: &mut Out<'_>, windows_exempt: bool) {
    // Explicitly bad values, pod or container.
    seccomp_fields(pod, out);
    if windows_exempt {
        return;
    }
    let pod_set = pod
        .security_context
        .seccomp_type
        .as_deref()
        .is_some_and(seccomp_type_allowed);
    if pod_set {
        return;
    }
    // Containers that set nothing and are not covered by a valid pod profile.
    for c in pod
        .containers
        .iter()
        .filter(|c| c.sc.seccomp_type.is_none())
    {
        out.push(
            c.sc_path("seccompProfile.type"),
            "seccompProfile",
            format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" \
                 or \"Localhost\"",
                container_label(c)
            ),
        );
    }
}

pub(super) fn seccomp_1_19(pod: &Pod, out: &mut Out<'_>) {
    seccomp(pod, out, false);
}

pub(super) fn seccomp_1_25(pod: &Pod, out: &mut Out<'_>) {
    seccomp(pod, out, pod.windows);
}

fn capabilities(pod: &Pod, out: &mut Out<'_>, windows_exempt: bool) {
    const REASON: &str = "unrestricted capabilities";
    for c in &pod.containers {
        let (add, drop): (&[String], &[String]) = match &c.sc.capabilities {
            Some(caps) => (&caps.add, &caps.drop),
            None => (&[], &[]),
        };
        if !windows_exempt && !drop.iter().any(|d| d == "ALL") {
            out.push(
                c.sc_path("capabilities.drop"),
                REASON,
                format!(
                    "{} must set securityContext.capabilities.drop=[\"ALL\"]",
                    container_label(c)
                ),
            );
        }
        let bad: Vec<&str> = add
            .iter()
            .map(String::as_str)
            .filter(|cap| *cap != "NET_BIND_SERVICE")
            .collect();
        if !bad.is_empty() {
            out.push(
                c.sc_path("capabilities.add"),
                REASON,
                format!(
                    "{} must not include {} in securityContext.capabilities.add",
                    container_label(c),
                    quote(&bad)
                ),
            );
        }
    }
}

pub(super) fn capabilities_1_22(pod: &Pod, out: &mut Out<'_>) {
    capabilities(pod, out, false);
}

pub(super) fn capabilities_1_25(pod: &Pod, out: &mut Out<'_>) {
    capabilities(pod, out, pod.windows);
}

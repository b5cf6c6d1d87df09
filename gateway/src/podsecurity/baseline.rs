//! The baseline checks (prevent known privilege escalations). One function
//! per check revision; each reports one violation per offending field, with
//! the official forbidden reason and a detail in the official wording.

use super::model::{Container, Pod, SeLinux};
use super::registry::Out;

/// `"a"`, `"a", "b"` — names and values as the official messages quote them.
pub(super) fn quote(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn container_label(c: &Container) -> String {
    format!("container {}", quote(&[&c.name]))
}

pub(super) fn host_namespaces(pod: &Pod, out: &mut Out<'_>) {
    for (set, field) in [
        (pod.host_ipc, "hostIPC"),
        (pod.host_network, "hostNetwork"),
        (pod.host_pid, "hostPID"),
    ] {
        if set {
            out.push(
                format!("spec.{field}"),
                "host namespaces",
                format!("{field}=true"),
            );
        }
    }
}

pub(super) fn privileged(pod: &Pod, out: &mut Out<'_>) {
    for c in &pod.containers {
        if c.sc.privileged == Some(true) {
            out.push(
                c.sc_path("privileged"),
                "privileged",
                format!(
                    "{} must not set securityContext.privileged=true",
                    container_label(c)
                ),
            );
        }
    }
}

/// The capabilities baseline lets a container add (the container runtime's
/// default set, minus `NET_RAW`).
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

pub(super) fn capabilities(pod: &Pod, out: &mut Out<'_>) {
    for c in &pod.containers {
        let Some(caps) = &c.sc.capabilities else {
            continue;
        };
        let bad: Vec<&str> = caps
            .add
            .iter()
            .map(String::as_str)
            .filter(|cap| !BASELINE_CAPABILITIES.contains(cap))
            .collect();
        if !bad.is_empty() {
            out.push(
                c.sc_path("capabilities.add"),
                "non-default capabilities",
                format!(
                    "{} must not include {} in securityContext.capabilities.add",
                    container_label(c),
                    quote(&bad)
                ),
            );
        }
    }
}

pub(super) fn host_path_volumes(pod: &Pod, out: &mut Out<'_>) {
    for v in &pod.volumes {
        if v.sources.iter().any(|s| s == "hostPath") {
            out.push(
                format!("{}.hostPath", v.path),
                "hostPath volumes",
                format!("volume {} uses hostPath", quote(&[&v.name])),
            );
        }
    }
}

pub(super) fn host_ports(pod: &Pod, out: &mut Out<'_>) {
    for c in &pod.containers {
        for &(i, port) in &c.host_ports {
            if port != 0 {
                out.push(
                    format!("{}.ports[{i}].hostPort", c.path),
                    "hostPort",
                    format!("{} uses hostPort {port}", container_label(c)),
                );
            }
        }
    }
}

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

fn app_armor_type_allowed(t: &str) -> bool {
    matches!(t, "RuntimeDefault" | "Localhost")
}

fn app_armor_annotation_allowed(v: &str) -> bool {
    v.is_empty() || v == "runtime/default" || v.starts_with("localhost/")
}

pub(super) fn app_armor_profile(pod: &Pod, out: &mut Out<'_>) {
    const REASON: &str = "forbidden AppArmor profile";
    if let Some(t) = &pod.security_context.app_armor_type
        && !app_armor_type_allowed(t)
    {
        out.push(
            "spec.securityContext.appArmorProfile.type".to_owned(),
            REASON,
            format!("pod must not set AppArmor profile type to {}", quote(&[t])),
        );
    }
    for c in &pod.containers {
        if let Some(t) = &c.sc.app_armor_type
            && !app_armor_type_allowed(t)
        {
            out.push(
                c.sc_path("appArmorProfile.type"),
                REASON,
                format!(
                    "{} must not set AppArmor profile type to {}",
                    container_label(c),
                    quote(&[t])
                ),
            );
        }
    }
    for (k, v) in &pod.annotations {
        if k.starts_with(APPARMOR_ANNOTATION_PREFIX) && !app_armor_annotation_allowed(v) {
            out.push(
                format!("metadata.annotations[{k}]"),
                REASON,
                format!("{k}={}", quote(&[v])),
            );
        }
    }
}

const SELINUX_TYPES_1_0: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t"];
const SELINUX_TYPES_1_31: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

fn se_linux_options(pod: &Pod, out: &mut Out<'_>, allowed_types: &[&str]) {
    let mut one = |setter: &str, path: String, o: &SeLinux| {
        let detail =
            |what: String| format!("{setter} set forbidden securityContext.seLinuxOptions: {what}");
        if !allowed_types.contains(&o.type_.as_str()) {
            out.push(
                format!("{path}.type"),
                "seLinuxOptions",
                detail(format!("type {}", quote(&[&o.type_]))),
            );
        }
        if !o.user.is_empty() {
            out.push(
                format!("{path}.user"),
                "seLinuxOptions",
                detail("user may not be set".to_owned()),
            );
        }
        if !o.role.is_empty() {
            out.push(
                format!("{path}.role"),
                "seLinuxOptions",
                detail("role may not be set".to_owned()),
            );
        }
    };
    if let Some(o) = &pod.security_context.se_linux {
        one("pod", "spec.securityContext.seLinuxOptions".to_owned(), o);
    }
    for c in &pod.containers {
        if let Some(o) = &c.sc.se_linux {
            one(&container_label(c), c.sc_path("seLinuxOptions"), o);
        }
    }
}

pub(super) fn se_linux_options_1_0(pod: &Pod, out: &mut Out<'_>) {
    se_linux_options(pod, out, SELINUX_TYPES_1_0);
}

pub(super) fn se_linux_options_1_31(pod: &Pod, out: &mut Out<'_>) {
    se_linux_options(pod, out, SELINUX_TYPES_1_31);
}

/// Anything but the default `/proc` masks is forbidden (also the restricted
/// `procMount_restricted` check from v1.35).
pub(super) fn proc_mount_1_0(pod: &Pod, out: &mut Out<'_>) {
    for c in &pod.containers {
        if let Some(m) = &c.sc.proc_mount
            && m != "Default"
        {
            out.push(
                c.sc_path("procMount"),
                "procMount",
                format!(
                    "{} must not set securityContext.procMount to {}",
                    container_label(c),
                    quote(&[m])
                ),
            );
        }
    }
}

/// From v1.35, a pod in a user namespace (`hostUsers: false`) may unmask
/// `/proc` under baseline (restricted still forbids it).
pub(super) fn proc_mount_1_35(pod: &Pod, out: &mut Out<'_>) {
    if pod.host_users == Some(false) {
        return;
    }
    proc_mount_1_0(pod, out);
}

const SECCOMP_POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
const SECCOMP_CONTAINER_ANNOTATION_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";

fn seccomp_annotation_allowed(v: &str) -> bool {
    v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/")
}

/// Before v1.19 the seccomp profile was an annotation.
pub(super) fn seccomp_annotations(pod: &Pod, out: &mut Out<'_>) {
    let mut keys = vec![SECCOMP_POD_ANNOTATION.to_owned()];
    keys.extend(
        pod.containers
            .iter()
            .map(|c| format!("{SECCOMP_CONTAINER_ANNOTATION_PREFIX}{}", c.name)),
    );
    for key in keys {
        if let Some(v) = pod.annotations.get(&key)
            && !seccomp_annotation_allowed(v)
        {
            out.push(
                format!("metadata.annotations[{key}]"),
                "seccompProfile",
                format!("forbidden annotation {key}={}", quote(&[v])),
            );
        }
    }
}

pub(super) fn seccomp_type_allowed(t: &str) -> bool {
    matches!(t, "RuntimeDefault" | "Localhost")
}

/// From v1.19: a seccomp profile, where set, must be `RuntimeDefault` or
/// `Localhost`. (Also the explicit half of the restricted check.)
pub(super) fn seccomp_fields(pod: &Pod, out: &mut Out<'_>) {
    if let Some(t) = &pod.security_context.seccomp_type
        && !seccomp_type_allowed(t)
    {
        out.push(
            "spec.securityContext.seccompProfile.type".to_owned(),
            "seccompProfile",
            format!(
                "pod must not set securityContext.seccompProfile.type to {}",
                quote(&[t])
            ),
        );
    }
    for c in &pod.containers {
        if let Some(t) = &c.sc.seccomp_type
            && !seccomp_type_allowed(t)
        {
            out.push(
                c.sc_path("seccompProfile.type"),
                "seccompProfile",
                format!(
                    "{} must not set securityContext.seccompProfile.type to {}",
                    container_label(c),
                    quote(&[t])
                ),
            );
        }
    }
}

const SYSCTLS_1_0: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
];
const SYSCTLS_ADDED_1_27: &[&str] = &["net.ipv4.ip_local_reserved_ports"];
const SYSCTLS_ADDED_1_29: &[&str] = &[
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
const SYSCTLS_ADDED_1_32: &[&str] = &["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"];
const SYSCTLS_ADDED_1_37: &[&str] = &[
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
];

/// Only the safe (namespaced, isolated) sysctls of the version's list.
fn sysctls(pod: &Pod, out: &mut Out<'_>, allowed: &[&[&str]]) {
    for (i, name) in &pod.security_context.sysctls {
        if !allowed.iter().any(|set| set.contains(&name.as_str())) {
            out.push(
                format!("spec.securityContext.sysctls[{i}].name"),
                "forbidden sysctls",
                name.clone(),
            );
        }
    }
}

pub(super) fn sysctls_1_0(pod: &Pod, out: &mut Out<'_>) {
    sysctls(pod, out, &[SYSCTLS_1_0]);
}

pub(super) fn sysctls_1_27(pod: &Pod, out: &mut Out<'_>) {
    sysctls(pod, out, &[SYSCTLS_1_0, SYSCTLS_ADDED_1_27]);
}

pub(super) fn sysctls_1_29(pod: &Pod, out: &mut Out<'_>) {
    sysctls(
        pod,
        out,
        &[SYSCTLS_1_0, SYSCTLS_ADDED_1_27, SYSCTLS_ADDED_1_29],
    );
}

pub(super) fn sysctls_1_32(pod: &Pod, out: &mut Out<'_>) {
    let sets = [
        SYSCTLS_1_0,
        SYSCTLS_ADDED_1_27,
        SYSCTLS_ADDED_1_29,
        SYSCTLS_ADDED_1_32,
    ];
    sysctls(pod, out, &sets);
}

pub(super) fn sysctls_1_37(pod: &Pod, out: &mut Out<'_>) {
    let sets = [
        SYSCTLS_1_0,
        SYSCTLS_ADDED_1_27,
        SYSCTLS_ADDED_1_29,
        SYSCTLS_ADDED_1_32,
        SYSCTLS_ADDED_1_37,
    ];
    sysctls(pod, out, &sets);
}

pub(super) fn windows_host_process(pod: &Pod, out: &mut Out<'_>) {
    const REASON: &str = "hostProcess";
    const WHAT: &str = "must not set securityContext.windowsOptions.hostProcess=true";
    if pod.security_context.host_process == Some(true) {
        out.push(
            "spec.securityContext.windowsOptions.hostProcess".to_owned(),
            REASON,
            format!("pod {WHAT}"),
        );
    }
    for c in &pod.containers {
        if c.sc.host_process == Some(true) {
            out.push(
                c.sc_path("windowsOptions.hostProcess"),
                REASON,
                format!("{} {WHAT}", container_label(c)),
            );
        }
    }
}

/// From v1.34: probes and lifecycle hooks must not name a `host` (which
/// would let the kubelet reach an address of the agent's choosing).
pub(super) fn host_probes_and_lifecycle(pod: &Pod, out: &mut Out<'_>) {
    for c in &pod.containers {
        for (path, host) in &c.handler_hosts {
            out.push(
                path.clone(),
                "probe or lifecycle host",
                format!(
                    "{} uses probe or lifecycle host {}",
                    container_label(c),
                    quote(&[host])
                ),
            );
        }
    }
}

//! [`render`]: the pod of one sandbox; and [`wrap`], the topology around a
//! pod spec's containers, which `render` and `inject` share.
//!
//! Must never: see the module docs of [`super`].

use std::collections::BTreeMap;
use std::ffi::OsString;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::{
    CSIVolumeSource, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, HTTPGetAction, PodSecurityContext, PodSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use palisade_api::Sandbox;
use palisade_api::defaults::{ADMIN_PORT, STATE_DIR};
use sha2::{Digest, Sha256};

use super::settings::{PodSettings, Topology};
use super::uids::{self, IdSettings, ResolvedIds};
use super::{
    AGENT_CONTAINER, CONFIG_DIR, HOME_DIR, INIT_CONTAINER, OWNER_ANNOTATION, PALISADE_CONTAINERS,
    PALISADE_PREFIX, POLICY_ANNOTATION, POLICY_REVISION_ANNOTATION, RenderError,
    SANDBOX_ID_ANNOTATION, SANDBOX_ID_LABEL, SANDBOX_NAME_LABEL, SECRETS_DIR, SHIM_DIR,
    SHIM_INSTALL_CONTAINER, SHIM_PATH, SIDECAR_CONTAINER, SPIFFE_DIR, SPIFFE_SOCKET, TOKEN_DIR,
    TOKEN_FILE_NAME, TOPOLOGY_ANNOTATION, validate,
};
use crate::driver::contract::Launch;
use crate::driver::plan::{
    self, Bootstrap, Contents, GatewayLink, LaunchPlan, Layout, Network, PlanOptions, PolicySource,
    Privilege, ProcessPlan,
};

/// Volume names the topology adds (a user's may not take one).
pub(crate) const VOL_INIT_RUN: &str = "palisade-init-run";
pub(crate) const VOL_SHIM: &str = "palisade-shim";
pub(crate) const VOL_SHARED: &str = "palisade-shared";
pub(crate) const VOL_HOME: &str = "palisade-home";
pub(crate) const VOL_CONFIG: &str = "palisade-config";
pub(crate) const VOL_SECRETS: &str = "palisade-secrets";
pub(crate) const VOL_TOKEN: &str = "palisade-token";
pub(crate) const VOL_SPIFFE: &str = "palisade-spiffe";

/// Where the standard ServiceAccount token would be mounted.
const SA_MOUNT_DIRS: [&str; 2] = [
    "/var/run/secrets/kubernetes.io/serviceaccount",
    "/run/secrets/kubernetes.io/serviceaccount",
];
/// File mode of the ConfigMap and Secret files. They are mounted into the
/// sidecar only: the mount, not the mode, keeps them from the agent; 0444
/// lets the sidecar's UID read them also where a runtime ignores `fsGroup`.
const MOUNTED_FILE_MODE: i32 = 0o444;

/// Why a classic-topology pod does not end with its agent: `palisade-sidecar
/// run` stops only on SIGTERM (it does not watch the shim's exit file), and a
/// pod whose restart policy is `Never` ends when every container has.
pub(crate) const CLASSIC_NEVER_COMPLETES: &str = "with --topology classic the sidecar does not stop when the agent ends (it stops on \
     SIGTERM only), so the pod stays Running until it is deleted; the agent's exit code is \
     in the agent container's status. --topology native (Kubernetes >= 1.29) lets the pod \
     complete";

/// The policy a sandbox runs under, as far as the pod needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRef<'a> {
    /// The policy document (required for the file policy source; when
    /// given, it is validated and its name and SHA-256 annotate the pod).
    pub text: Option<&'a str>,
    /// The gateway's revision of it (default: `sha256:…` of `text`).
    pub revision: Option<String>,
}

/// One sandbox, as the pod renderer needs it.
#[derive(Debug, Clone)]
pub struct SandboxPod<'a> {
    /// id, name, namespace, policy name, labels, command, uid/gid, owner.
    pub sandbox: &'a Sandbox,
    /// The agent's image (any image: the shim is copied in).
    pub image: &'a str,
    /// The agent's environment (never `PALISADE_*`).
    pub env: &'a [(String, String)],
    pub resources: Option<ResourceRequirements>,
    pub policy: PolicyRef<'a>,
    /// The namespace's annotations (the OpenShift SCC ranges).
    pub namespace_annotations: &'a BTreeMap<String, String>,
}

/// What [`render`] produces.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub pod: Pod,
    /// The sidecar's config (file policy, CA certificates), when it has any.
    pub config_map: Option<ConfigMap>,
    pub ids: ResolvedIds,
    /// Things that work but probably not as meant (printed on stderr).
    pub warnings: Vec<String>,
}

impl Rendered {
    /// The objects as YAML, the ConfigMap first (it must exist when the pod starts).
    pub fn to_yaml(&self) -> Result<String, serde_yaml_ng::Error> {
        let mut docs = Vec::new();
        if let Some(cm) = &self.config_map {
            docs.push(serde_yaml_ng::to_value(cm)?);
        }
        docs.push(serde_yaml_ng::to_value(&self.pod)?);
        super::to_yaml(&docs)
    }
}

/// The pod (and ConfigMap) of `input` under `settings`.
pub fn render(input: &SandboxPod<'_>, settings: &PodSettings) -> Result<Rendered, RenderError> {
    let sbx = input.sandbox;
    validate::dns_label("the sandbox name", &sbx.spec.name)?;
    if let Some(ns) = &sbx.spec.namespace {
        validate::dns_label("--namespace", ns)?;
    }
    validate::image("--image", input.image)?;
    for (k, v) in &sbx.spec.labels {
        validate::user_label(k, v)?;
    }
    for (k, _) in input.env {
        validate::agent_env_name(&format!("--env {k}"), k)?;
    }
    if let Some(r) = &input.resources {
        for (kind, list) in [("--request", &r.requests), ("--limit", &r.limits)] {
            for (k, q) in list.iter().flatten() {
                validate::quantity(&format!("{kind} {k}"), &q.0)?;
            }
        }
    }
    let env: Vec<EnvVar> = input
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            value_from: None,
        })
        .collect();
    let agent = Container {
        name: AGENT_CONTAINER.to_owned(),
        image: Some(input.image.to_owned()),
        image_pull_policy: settings.pull_policy.map(|p| p.as_str().to_owned()),
        env: (!env.is_empty()).then_some(env),
        resources: input.resources.clone(),
        ..Container::default()
    };
    let mut spec = PodSpec {
        containers: vec![agent],
        // A sandbox runs its command once; the driver sees how it ended.
        restart_policy: Some("Never".to_owned()),
        ..PodSpec::default()
    };
    let mut metadata = ObjectMeta {
        name: Some(sbx.spec.name.clone()),
        namespace: sbx.spec.namespace.clone(),
        labels: (!sbx.spec.labels.is_empty()).then(|| sbx.spec.labels.clone()),
        ..ObjectMeta::default()
    };
    let wrapped = wrap(
        &mut spec,
        &mut metadata,
        &Target {
            sandbox: sbx,
            policy: &input.policy,
            namespace_annotations: input.namespace_annotations,
            agent: 0,
            agent_home: true,
            spec_path: "spec",
            object_name: &sbx.spec.name,
            namespace: sbx.spec.namespace.as_deref(),
        },
        settings,
    )?;
    let mut warnings = wrapped.warnings;
    if settings.topology == Topology::Classic {
        warnings.push(CLASSIC_NEVER_COMPLETES.to_owned());
    }
    Ok(Rendered {
        pod: Pod {
            metadata,
            spec: Some(spec),
            status: None,
        },
        config_map: wrapped.config_map,
        ids: wrapped.ids,
        warnings,
    })
}

/// What [`wrap`] is given besides the spec.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    /// The agent's command is `sandbox.spec.command` (the primary container's
    /// own command and args are replaced by the shim's).
    pub sandbox: &'a Sandbox,
    pub policy: &'a PolicyRef<'a>,
    pub namespace_annotations: &'a BTreeMap<String, String>,
    /// Index in `spec.containers` of the agent container the shim wraps.
    pub agent: usize,
    /// Give the agent an emptyDir HOME (`--home`).
    pub agent_home: bool,
    /// Field path of the spec in messages (`spec`, `spec.template.spec`).
    pub spec_path: &'a str,
    /// Name of the object (the ConfigMap is `<name>-palisade`).
    pub object_name: &'a str,
    pub namespace: Option<&'a str>,
}

#[derive(Debug)]
pub(crate) struct Wrapped {
    pub config_map: Option<ConfigMap>,
    pub ids: ResolvedIds,
    pub warnings: Vec<String>,
}

/// Name of the ConfigMap of object `name`.
pub(crate) fn config_map_name(name: &str) -> String {
    format!("{name}-palisade")
}

fn strings(args: &[OsString], what: &str) -> Result<Vec<String>, RenderError> {
    args.iter()
        .map(|a| {
            a.clone().into_string().map_err(|_| {
                RenderError::setting(what, "an argument is not UTF-8 (Kubernetes needs text)")
            })
        })
        .collect()
}

fn env_vars(plan_env: &[(String, OsString)], what: &str) -> Result<Vec<EnvVar>, RenderError> {
    plan_env
        .iter()
        .map(|(k, v)| {
            let value = v.clone().into_string().map_err(|_| {
                RenderError::setting(what, format!("{k} is not UTF-8 (Kubernetes needs text)"))
            })?;
            Ok(EnvVar {
                name: k.clone(),
                value: Some(value),
                value_from: None,
            })
        })
        .collect()
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_owned())
}

fn resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity(cpu)),
            ("memory".to_owned(), quantity(memory)),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            quantity(memory_limit),
        )])),
        ..ResourceRequirements::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

/// The security context of a confined process (sidecar, shim copy, agent).
fn dropped(uid: u32, gid: u32, read_only_root: bool) -> SecurityContext {
    SecurityContext {
        run_as_user: Some(i64::from(uid)),
        run_as_group: Some(i64::from(gid)),
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        read_only_root_filesystem: read_only_root.then_some(true),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// The `init` container's: root with NET_ADMIN and NET_RAW, nothing else.
fn network_admin() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        run_as_group: Some(0),
        // Explicit: a pod-level runAsNonRoot would otherwise keep it from starting.
        run_as_non_root: Some(false),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
        }),
        read_only_root_filesystem: Some(true),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn empty_dir(name: &str, memory: bool, size: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: memory.then(|| "Memory".to_owned()),
            size_limit: Some(quantity(size)),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

/// The plan's UID/GID of a confined process, or an error for anything else
/// (a pod never runs a process unconfined).
fn confined(p: &ProcessPlan) -> Result<(u32, u32), RenderError> {
    match p.privilege {
        Privilege::Dropped { uid, gid } => Ok((uid, gid)),
        other => Err(RenderError::setting(
            "the launch plan",
            format!(
                "the {} would run {other:?}; a pod confines it",
                p.part.label()
            ),
        )),
    }
}

fn sha256_revision(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// What the checks read of a container's security context.
fn sc_path(base: &str, field: &str) -> String {
    format!("{base}.securityContext.{field}")
}

/// Refuse a user container the topology cannot wrap safely.
fn check_user_container(
    c: &Container,
    path: &str,
    token_volumes: &[&str],
) -> Result<(), RenderError> {
    if PALISADE_CONTAINERS.contains(&c.name.as_str()) {
        return Err(RenderError::refused(
            format!("{path}.name"),
            format!("`{}` is the name of a container the topology adds", c.name),
        ));
    }
    if let Some(sc) = &c.security_context {
        if sc.privileged == Some(true) {
            return Err(RenderError::refused(
                sc_path(path, "privileged"),
                "a privileged container has every capability and could remove the capture \
                 rules; the agent runs unprivileged",
            ));
        }
        if let Some(add) = sc.capabilities.as_ref().and_then(|c| c.add.as_ref())
            && !add.is_empty()
        {
            return Err(RenderError::refused(
                sc_path(path, "capabilities.add"),
                format!(
                    "adds {}; the agent runs with every capability dropped (palisade-shim \
                     refuses to start otherwise)",
                    add.join(", ")
                ),
            ));
        }
        if sc.run_as_user == Some(0) {
            return Err(RenderError::refused(
                sc_path(path, "runAsUser"),
                "0 is root; the agent runs as a non-root UID (remove it to use the resolved one)",
            ));
        }
        if sc.run_as_non_root == Some(false) {
            return Err(RenderError::refused(
                sc_path(path, "runAsNonRoot"),
                "false allows root; the agent runs as a non-root UID",
            ));
        }
        if sc.run_as_group == Some(0) {
            return Err(RenderError::refused(
                sc_path(path, "runAsGroup"),
                "0 is the root group, which palisade-shim refuses",
            ));
        }
        if sc.allow_privilege_escalation == Some(true) {
            return Err(RenderError::refused(
                sc_path(path, "allowPrivilegeEscalation"),
                "true lets setuid programs gain privileges; the agent runs with no_new_privs",
            ));
        }
        if sc
            .seccomp_profile
            .as_ref()
            .is_some_and(|p| p.type_ == "Unconfined")
        {
            return Err(RenderError::refused(
                sc_path(path, "seccompProfile.type"),
                "Unconfined; use RuntimeDefault or a Localhost profile",
            ));
        }
        if sc.proc_mount.as_deref() == Some("Unmasked") {
            return Err(RenderError::refused(
                sc_path(path, "procMount"),
                "Unmasked exposes the host's /proc paths; remove it",
            ));
        }
    }
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let field = format!("{path}.volumeMounts[{i}]");
        let norm = m.mount_path.trim_end_matches('/');
        if token_volumes.contains(&m.name.as_str())
            || SA_MOUNT_DIRS.iter().any(|d| {
                norm == *d
                    || norm.starts_with(&format!("{d}/"))
                    || d.starts_with(&format!("{norm}/"))
            })
        {
            return Err(RenderError::refused(
                field,
                "mounts a ServiceAccount token into the agent; only the sidecar holds one \
                 (and only for the gateway)",
            ));
        }
        for own in [
            STATE_DIR,
            SHIM_DIR,
            HOME_DIR,
            CONFIG_DIR,
            SECRETS_DIR,
            TOKEN_DIR,
        ] {
            if norm == own {
                return Err(RenderError::refused(
                    format!("{field}.mountPath"),
                    format!("{own} is where the topology mounts its own volume"),
                ));
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        validate::agent_env_name(&format!("{path}.env[{i}].name"), &e.name).map_err(
            |e| match e {
                RenderError::Setting { setting, reason } => RenderError::Refused {
                    field: setting,
                    reason,
                },
                other => other,
            },
        )?;
    }
    Ok(())
}

/// Refuse a pod spec the topology cannot wrap safely.
fn check_pod_spec(spec: &PodSpec, path: &str) -> Result<(), RenderError> {
    if spec.host_aliases.as_ref().is_some_and(|a| !a.is_empty()) {
        return Err(RenderError::refused(
            format!("{path}.hostAliases"),
            "the Palisade sidecar never reads hosts files: it resolves every policy host with \
             its own resolver, so that SNI or Host cannot point an allowed name at another \
             address. A name that only a hostAlias resolves would be refused as a destination \
             mismatch; give it a DNS record instead (or use an IP-literal rule)",
        ));
    }
    for (flag, field, why) in [
        (
            spec.host_network,
            "hostNetwork",
            "the capture rules would go into the node's network namespace and the agent would \
             share the node's network",
        ),
        (
            spec.host_pid,
            "hostPID",
            "the agent would see and signal the node's processes",
        ),
        (
            spec.host_ipc,
            "hostIPC",
            "the agent would share the node's IPC namespace",
        ),
        (
            spec.share_process_namespace,
            "shareProcessNamespace",
            "the agent would see the sidecar's processes; every part of the sandbox keeps its own",
        ),
        (
            spec.automount_service_account_token,
            "automountServiceAccountToken",
            "the agent would get a ServiceAccount token; only the sidecar holds one (a \
             projected token for the gateway), so the renderer sets false",
        ),
        (
            spec.enable_service_links,
            "enableServiceLinks",
            "the agent's environment would list every Service of the namespace (the gateway's \
             address among them); the renderer sets false",
        ),
    ] {
        if flag == Some(true) {
            return Err(RenderError::refused(
                format!("{path}.{field}"),
                format!("true: {why}"),
            ));
        }
    }
    if spec
        .os
        .as_ref()
        .is_some_and(|os| os.name.eq_ignore_ascii_case("windows"))
    {
        return Err(RenderError::refused(
            format!("{path}.os.name"),
            "Palisade's capture needs Linux",
        ));
    }
    if let Some(sc) = &spec.security_context {
        let field = |f: &str| format!("{path}.securityContext.{f}");
        if sc.run_as_user == Some(0) {
            return Err(RenderError::refused(
                field("runAsUser"),
                "0 is root; the agent runs as a non-root UID",
            ));
        }
        if sc.run_as_non_root == Some(false) {
            return Err(RenderError::refused(
                field("runAsNonRoot"),
                "false allows root; the agent runs as a non-root UID",
            ));
        }
        if sc.run_as_group == Some(0) {
            return Err(RenderError::refused(
                field("runAsGroup"),
                "0 is the root group, which palisade-shim refuses",
            ));
        }
        if sc.fs_group == Some(0) {
            return Err(RenderError::refused(
                field("fsGroup"),
                "0 would make the root group a supplementary group of the agent, which \
                 palisade-shim refuses",
            ));
        }
        if sc.supplemental_groups.iter().flatten().any(|g| *g == 0) {
            return Err(RenderError::refused(
                field("supplementalGroups"),
                "holds 0 (the root group), which palisade-shim refuses",
            ));
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if v.name.starts_with("palisade-") {
            return Err(RenderError::refused(
                format!("{path}.volumes[{i}].name"),
                format!(
                    "`{}`: volume names palisade-* are the topology's own",
                    v.name
                ),
            ));
        }
    }
    Ok(())
}

/// Names of the spec's volumes that project a ServiceAccount token.
fn token_volumes(spec: &PodSpec) -> Vec<&str> {
    spec.volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.service_account_token.is_some())
            })
        })
        .map(|v| v.name.as_str())
        .collect()
}

/// The explicit IDs a pod spec sets for its agent container.
pub(crate) fn manifest_ids(spec: &PodSpec, agent: usize) -> IdSettings {
    let pod = spec.security_context.as_ref();
    let container = spec
        .containers
        .get(agent)
        .and_then(|c| c.security_context.as_ref());
    let id = |c: Option<i64>, p: Option<i64>| c.or(p).and_then(|v| u32::try_from(v).ok());
    IdSettings {
        agent_uid: id(
            container.and_then(|s| s.run_as_user),
            pod.and_then(|s| s.run_as_user),
        ),
        agent_gid: id(
            container.and_then(|s| s.run_as_group),
            pod.and_then(|s| s.run_as_group),
        ),
        sidecar_uid: None,
        sidecar_gid: None,
    }
}

/// Where the manifest sets the agent's `runAsUser` or `runAsGroup`.
fn agent_id_field(spec: &PodSpec, target: &Target<'_>, field: &str) -> String {
    let sc = spec
        .containers
        .get(target.agent)
        .and_then(|c| c.security_context.as_ref());
    let set = match field {
        "runAsUser" => sc.is_some_and(|sc| sc.run_as_user.is_some()),
        _ => sc.is_some_and(|sc| sc.run_as_group.is_some()),
    };
    if set {
        format!(
            "{}.containers[{}].securityContext.{field}",
            target.spec_path, target.agent
        )
    } else {
        format!("{}.securityContext.{field}", target.spec_path)
    }
}

/// The manifest's own agent UID must lie in the namespace's SCC range; the
/// error names the manifest's field (not a flag the user never gave).
fn check_manifest_ids_in_range(
    spec: &PodSpec,
    target: &Target<'_>,
    manifest: IdSettings,
) -> Result<(), RenderError> {
    let (Some(uid), Some(value)) = (
        manifest.agent_uid,
        target.namespace_annotations.get(uids::UID_RANGE_ANNOTATION),
    ) else {
        return Ok(());
    };
    let block = uids::parse_uid_range(value)?;
    if block.contains(uid) {
        return Ok(());
    }
    let field = agent_id_field(spec, target, "runAsUser");
    Err(RenderError::refused(
        field,
        format!(
            "{uid} is outside the namespace's {}={value:?} ({block}); the SCC would reject the \
             pod (`runAsUser: Invalid value: {uid}: must be in the ranges: [{}, {}]`); remove it \
             to take one from the range",
            uids::UID_RANGE_ANNOTATION,
            block.start,
            block.end()
        ),
    ))
}

/// Harden a user container in place: non-root (`uid`/`gid` unless it or the
/// pod sets its own), no privilege escalation, every capability dropped,
/// seccomp.
fn harden(c: &mut Container, uid: u32, gid: u32, pod: &PodSecurityContext) {
    let sc = c
        .security_context
        .get_or_insert_with(SecurityContext::default);
    if sc.run_as_user.is_none() && pod.run_as_user.is_none() {
        sc.run_as_user = Some(i64::from(uid));
    }
    if sc.run_as_group.is_none() && pod.run_as_group.is_none() {
        sc.run_as_group = Some(i64::from(gid));
    }
    sc.run_as_non_root = Some(true);
    sc.allow_privilege_escalation = Some(false);
    let caps = sc.capabilities.get_or_insert_with(Capabilities::default);
    let drop = caps.drop.get_or_insert_with(Vec::new);
    if !drop.iter().any(|d| d == "ALL") {
        drop.insert(0, "ALL".to_owned());
    }
    if sc.seccomp_profile.is_none() {
        sc.seccomp_profile = Some(runtime_default());
    }
}

/// Wrap `spec` (whose containers are the user's) in the topology and
/// annotate `meta`; see the module docs for what is added.
pub(crate) fn wrap(
    spec: &mut PodSpec,
    meta: &mut ObjectMeta,
    target: &Target<'_>,
    settings: &PodSettings,
) -> Result<Wrapped, RenderError> {
    settings.check()?;
    let path = target.spec_path;
    check_pod_spec(spec, path)?;
    let tokens = token_volumes(spec);
    for (kind, list) in [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("containers", spec.containers.as_slice()),
    ] {
        for (i, c) in list.iter().enumerate() {
            check_user_container(c, &format!("{path}.{kind}[{i}]"), &tokens)?;
        }
    }
    if target.agent >= spec.containers.len() {
        return Err(RenderError::refused(
            format!("{path}.containers"),
            "there is no agent container to wrap",
        ));
    }
    let mut warnings = Vec::new();

    // IDs: the manifest's own, then the sandbox's, then the settings'.
    let sandbox_ids = IdSettings {
        agent_uid: target.sandbox.spec.uid,
        agent_gid: target.sandbox.spec.gid,
        sidecar_uid: None,
        sidecar_gid: None,
    };
    let manifest = manifest_ids(spec, target.agent);
    check_manifest_ids_in_range(spec, target, manifest)?;
    let explicit = settings
        .ids
        .overridden_by(sandbox_ids)
        .overridden_by(manifest);
    let resolved = uids::resolve(explicit, target.namespace_annotations).map_err(|e| {
        let (field, from_manifest) = match &e {
            uids::UidError::Shared {
                what: "UID", id, ..
            } => ("runAsUser", manifest.agent_uid == Some(*id)),
            uids::UidError::Shared { id, .. } => ("runAsGroup", manifest.agent_gid == Some(*id)),
            _ => ("", false),
        };
        if from_manifest {
            RenderError::refused(
                agent_id_field(spec, target, field),
                format!(
                    "the sidecar runs as this ID; the capture and the fence exempt it, so the \
                     agent's traffic would leave uncaptured; use another one (or move the \
                     sidecar: --sidecar-uid/--sidecar-gid). {e}"
                ),
            )
        } else {
            e.into()
        }
    })?;
    let ids = resolved.ids;
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    for (kind, list) in [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("containers", spec.containers.as_slice()),
    ] {
        for (i, c) in list.iter().enumerate() {
            let sc = c.security_context.as_ref();
            let uid = sc.and_then(|s| s.run_as_user).or(pod_sc.run_as_user);
            let gid = sc.and_then(|s| s.run_as_group).or(pod_sc.run_as_group);
            let escape = "the capture and the fence exempt the sidecar's UID and GID, so this \
                          container's traffic would leave uncaptured";
            if uid == Some(i64::from(ids.sidecar.uid)) {
                return Err(RenderError::refused(
                    format!("{path}.{kind}[{i}].securityContext.runAsUser"),
                    format!("{} is the sidecar's UID; {escape}", ids.sidecar.uid),
                ));
            }
            if gid == Some(i64::from(ids.sidecar.gid)) {
                return Err(RenderError::refused(
                    format!("{path}.{kind}[{i}].securityContext.runAsGroup"),
                    format!("{} is the sidecar's GID; {escape}", ids.sidecar.gid),
                ));
            }
        }
    }

    // The policy: validated when given; the file source needs it.
    let parsed = match target.policy.text {
        Some(text) => Some(
            palisade_policy::parse_policy(text.as_bytes())
                .map_err(|e| RenderError::Policy(e.render("policy")))?,
        ),
        None => None,
    };
    if settings.policy_source == PolicySource::File && parsed.is_none() {
        return Err(RenderError::setting(
            "--policy",
            "the file policy source needs the policy document (--policy FILE); it is put into \
             the ConfigMap the sidecar reads",
        ));
    }
    if let Some(policy) = &parsed {
        file_credential_warnings(policy, settings, &mut warnings);
    }
    let policy_name = target
        .sandbox
        .spec
        .policy
        .clone()
        .or_else(|| parsed.as_ref().map(|p| p.metadata.name.clone()));
    let policy_revision = target
        .policy
        .revision
        .clone()
        .or_else(|| target.policy.text.map(sha256_revision));

    // The plan: what runs, with which arguments.
    let layout = Layout {
        sidecar: CONFIG_DIR.into(),
        shared: STATE_DIR.into(),
        home: HOME_DIR.into(),
    };
    let gateway_url = settings
        .gateway
        .as_ref()
        .map(|g| g.url.as_str())
        .unwrap_or("");
    let launch = Launch {
        sandbox: target.sandbox,
        // Pods bootstrap with their ServiceAccount token; no one-time token.
        bootstrap_token: "",
        policy: target.policy.text,
    };
    let lp: LaunchPlan = plan::plan_with(
        &plan::PlanRequest {
            launch: &launch,
            gateway: GatewayLink {
                url: gateway_url,
                insecure_plaintext: false,
            },
            policy_source: settings.policy_source,
            upstream_ca: settings.upstream_ca.clone(),
            network: Network::Captured,
            layout: &layout,
        },
        &PlanOptions {
            ids: Some(ids),
            bootstrap: Bootstrap::ServiceAccountToken(
                std::path::Path::new(TOKEN_DIR).join(TOKEN_FILE_NAME),
            ),
            gateway_ca: settings.gateway.as_ref().and_then(|g| g.ca_pem.clone()),
            spiffe_socket: settings
                .spiffe_csi_driver
                .as_ref()
                .map(|_| SPIFFE_SOCKET.into()),
            agent_home: target.agent_home,
        },
    )
    .map_err(|e| RenderError::setting("the launch plan", e.to_string()))?;

    // The sidecar's files become the ConfigMap.
    let mut config = BTreeMap::new();
    for f in &lp.files {
        let Contents::Plain(bytes) = &f.contents else {
            return Err(RenderError::setting(
                "the launch plan",
                "it holds a secret file; a pod never puts a secret into a ConfigMap",
            ));
        };
        let name = f
            .path
            .strip_prefix(CONFIG_DIR)
            .ok()
            .and_then(|p| p.to_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                RenderError::setting("the launch plan", "a file outside the sidecar's dir")
            })?;
        let text = String::from_utf8(bytes.clone())
            .map_err(|_| RenderError::setting(name.clone(), "not UTF-8 text"))?;
        config.insert(name, text);
    }
    let cm_name = config_map_name(target.object_name);
    let gateway_source = settings.policy_source == PolicySource::Gateway;
    let pull = settings.pull_policy.map(|p| p.as_str().to_owned());

    let init_plan = lp.init.as_ref().ok_or_else(|| {
        RenderError::setting("the launch plan", "a captured sandbox has an init step")
    })?;
    if init_plan.privilege != Privilege::NetworkAdmin {
        return Err(RenderError::setting(
            "the launch plan",
            "the init step must be the network administrator, nothing else",
        ));
    }
    let init = Container {
        name: INIT_CONTAINER.to_owned(),
        image: Some(settings.sidecar_image.clone()),
        image_pull_policy: pull.clone(),
        args: Some(strings(&init_plan.args, "the init step")?),
        security_context: Some(network_admin()),
        resources: Some(resources("10m", "16Mi", "64Mi")),
        // iptables takes its lock in /run (the root filesystem is read-only).
        volume_mounts: Some(vec![mount(VOL_INIT_RUN, "/run", false)]),
        ..Container::default()
    };
    let (agent_uid, agent_gid) = confined(&lp.agent)?;
    let shim_install = Container {
        name: SHIM_INSTALL_CONTAINER.to_owned(),
        image: Some(settings.shim_image.clone()),
        image_pull_policy: pull.clone(),
        // The image's entrypoint copies palisade-shim to the path it is given.
        args: Some(vec![SHIM_PATH.to_owned()]),
        security_context: Some(dropped(agent_uid, agent_gid, true)),
        resources: Some(resources("10m", "16Mi", "32Mi")),
        volume_mounts: Some(vec![mount(VOL_SHIM, SHIM_DIR, false)]),
        ..Container::default()
    };
    let (sidecar_uid, sidecar_gid) = confined(&lp.sidecar)?;
    let mut sidecar_mounts = vec![mount(VOL_SHARED, STATE_DIR, false)];
    if !config.is_empty() {
        sidecar_mounts.push(mount(VOL_CONFIG, CONFIG_DIR, true));
    }
    if settings.sidecar_secret.is_some() {
        sidecar_mounts.push(mount(VOL_SECRETS, SECRETS_DIR, true));
    }
    if gateway_source {
        sidecar_mounts.push(mount(VOL_TOKEN, TOKEN_DIR, true));
    }
    if settings.spiffe_csi_driver.is_some() {
        sidecar_mounts.push(mount(VOL_SPIFFE, SPIFFE_DIR, true));
    }
    let sidecar_env = env_vars(&lp.sidecar.env, "the sidecar's environment")?;
    let sidecar = Container {
        name: SIDECAR_CONTAINER.to_owned(),
        image: Some(settings.sidecar_image.clone()),
        image_pull_policy: pull.clone(),
        args: Some(strings(&lp.sidecar.args, "the sidecar's arguments")?),
        env: (!sidecar_env.is_empty()).then_some(sidecar_env),
        ports: Some(vec![ContainerPort {
            name: Some("admin".to_owned()),
            container_port: i32::from(ADMIN_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        // Up to two minutes to the first policy and JWT (the shim's wait).
        startup_probe: Some(http_probe("/ready", 1, 120)),
        readiness_probe: Some(http_probe("/ready", 5, 3)),
        liveness_probe: Some(http_probe("/live", 10, 3)),
        restart_policy: (settings.topology == Topology::Native).then(|| "Always".to_owned()),
        security_context: Some(dropped(sidecar_uid, sidecar_gid, true)),
        resources: Some(resources("100m", "64Mi", "512Mi")),
        volume_mounts: Some(sidecar_mounts),
        ..Container::default()
    };

    // The user's containers: hardened; the agent wrapped by the shim.
    let agent_name = spec.containers[target.agent].name.clone();
    for c in spec.init_containers.iter_mut().flatten() {
        harden(c, agent_uid, agent_gid, &pod_sc);
    }
    for (i, c) in spec.containers.iter_mut().enumerate() {
        harden(c, agent_uid, agent_gid, &pod_sc);
        let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
        if i != target.agent {
            // The sandbox CA bundle, for their trust settings.
            mounts.push(mount(VOL_SHARED, STATE_DIR, true));
            continue;
        }
        // The manifest's own IDs were explicit input; the resolved ones rule.
        if let Some(sc) = c.security_context.as_mut() {
            sc.run_as_user = Some(i64::from(agent_uid));
            sc.run_as_group = Some(i64::from(agent_gid));
        }
        mounts.push(mount(VOL_SHARED, STATE_DIR, false));
        mounts.push(mount(VOL_SHIM, SHIM_DIR, true));
        if target.agent_home {
            mounts.push(mount(VOL_HOME, HOME_DIR, false));
        }
        c.command = Some(vec![SHIM_PATH.to_owned()]);
        c.args = Some(strings(&lp.agent.args, "the agent's arguments")?);
        let env = c.env.get_or_insert_with(Vec::new);
        for var in env_vars(&lp.agent.env, "the agent's environment")? {
            env.retain(|e| e.name != var.name);
            env.push(var);
        }
    }

    let mut init_containers = vec![init, shim_install];
    let mut containers = Vec::new();
    match settings.topology {
        Topology::Native => init_containers.push(sidecar),
        Topology::Classic => containers.push(sidecar),
    }
    init_containers.extend(spec.init_containers.take().unwrap_or_default());
    containers.append(&mut spec.containers);
    spec.init_containers = Some(init_containers);
    spec.containers = containers;

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(empty_dir(VOL_INIT_RUN, true, "1Mi"));
    volumes.push(empty_dir(VOL_SHIM, false, "64Mi"));
    volumes.push(empty_dir(VOL_SHARED, true, "16Mi"));
    if target.agent_home {
        volumes.push(Volume {
            name: VOL_HOME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
    if !config.is_empty() {
        volumes.push(Volume {
            name: VOL_CONFIG.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm_name.clone(),
                default_mode: Some(MOUNTED_FILE_MODE),
                optional: Some(false),
                ..Default::default()
            }),
            ..Volume::default()
        });
    }
    if let Some(secret) = &settings.sidecar_secret {
        volumes.push(Volume {
            name: VOL_SECRETS.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                default_mode: Some(MOUNTED_FILE_MODE),
                optional: Some(false),
                ..Default::default()
            }),
            ..Volume::default()
        });
    }
    if gateway_source {
        volumes.push(Volume {
            name: VOL_TOKEN.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(palisade_api::GATEWAY_AUDIENCE.to_owned()),
                        expiration_seconds: Some(settings.token_expiration_seconds),
                        path: TOKEN_FILE_NAME.to_owned(),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if let Some(driver) = &settings.spiffe_csi_driver {
        volumes.push(Volume {
            name: VOL_SPIFFE.to_owned(),
            csi: Some(CSIVolumeSource {
                driver: driver.clone(),
                read_only: Some(true),
                ..CSIVolumeSource::default()
            }),
            ..Volume::default()
        });
    }

    spec.automount_service_account_token = Some(false);
    spec.enable_service_links = Some(false);
    let wanted_sa = target
        .sandbox
        .spec
        .service_account
        .clone()
        .or_else(|| settings.service_account.clone());
    match (&spec.service_account_name, wanted_sa) {
        (Some(have), Some(want)) if *have != want => {
            return Err(RenderError::refused(
                format!("{path}.serviceAccountName"),
                format!(
                    "`{have}`, but --service-account says `{want}` (the gateway accepts the \
                     tokens of one ServiceAccount); make them agree"
                ),
            ));
        }
        (None, Some(want)) => spec.service_account_name = Some(want),
        _ => {}
    }
    let psc = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    psc.fs_group.get_or_insert(i64::from(resolved.fs_group));
    if psc.seccomp_profile.is_none() {
        psc.seccomp_profile = Some(runtime_default());
    }

    annotate(
        meta,
        target,
        settings,
        &agent_name,
        policy_name.as_deref(),
        policy_revision.as_deref(),
        &mut warnings,
    )?;

    let config_map = (!config.is_empty()).then(|| ConfigMap {
        metadata: ObjectMeta {
            name: Some(cm_name),
            namespace: target.namespace.map(str::to_owned),
            labels: Some(BTreeMap::from([
                (
                    SANDBOX_ID_LABEL.to_owned(),
                    target.sandbox.id.as_str().to_owned(),
                ),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "palisade".to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(config),
        ..ConfigMap::default()
    });
    Ok(Wrapped {
        config_map,
        ids: resolved,
        warnings,
    })
}

/// Labels and annotations of the pod (or the pod template).
fn annotate(
    meta: &mut ObjectMeta,
    target: &Target<'_>,
    settings: &PodSettings,
    agent_name: &str,
    policy: Option<&str>,
    revision: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<(), RenderError> {
    let id = target.sandbox.id.as_str();
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    for key in labels.keys() {
        if key.starts_with(PALISADE_PREFIX) {
            return Err(RenderError::refused(
                format!("metadata.labels[{key}]"),
                "labels under palisade.dev/ are Palisade's own",
            ));
        }
    }
    labels.insert(SANDBOX_ID_LABEL.to_owned(), id.to_owned());
    labels.insert(
        SANDBOX_NAME_LABEL.to_owned(),
        target.sandbox.spec.name.clone(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "palisade".to_owned(),
    );

    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    for key in annotations.keys() {
        if key.starts_with(PALISADE_PREFIX) {
            return Err(RenderError::refused(
                format!("metadata.annotations[{key}]"),
                "annotations under palisade.dev/ are Palisade's own (the gateway trusts \
                 palisade.dev/sandbox-id)",
            ));
        }
    }
    annotations.insert(SANDBOX_ID_ANNOTATION.to_owned(), id.to_owned());
    annotations.insert(
        TOPOLOGY_ANNOTATION.to_owned(),
        settings.topology.as_str().to_owned(),
    );
    if !target.sandbox.owner.is_empty() {
        annotations.insert(OWNER_ANNOTATION.to_owned(), target.sandbox.owner.clone());
    }
    if let Some(p) = policy {
        annotations.insert(POLICY_ANNOTATION.to_owned(), p.to_owned());
    }
    if let Some(r) = revision {
        annotations.insert(POLICY_REVISION_ANNOTATION.to_owned(), r.to_owned());
    }
    annotations.insert(
        "kubectl.kubernetes.io/default-container".to_owned(),
        agent_name.to_owned(),
    );
    if let Some(scc) = &settings.required_scc {
        annotations.insert("openshift.io/required-scc".to_owned(), scc.clone());
    }
    let port = ADMIN_PORT.to_string();
    if annotations.contains_key("prometheus.io/scrape")
        || annotations.contains_key("prometheus.io/port")
    {
        if annotations.get("prometheus.io/port") != Some(&port) {
            warnings.push(format!(
                "the pod's prometheus.io/* annotations are kept (they scrape the workload), so \
                 annotation-based discovery does not scrape the sidecar's metrics on port {port}; \
                 use a PodMonitor for port `admin`"
            ));
        }
    } else {
        annotations.insert("prometheus.io/scrape".to_owned(), "true".to_owned());
        annotations.insert("prometheus.io/port".to_owned(), port);
        annotations.insert("prometheus.io/path".to_owned(), "/metrics".to_owned());
    }
    Ok(())
}

/// Warnings about `from: {file|env}` credentials a pod cannot serve.
fn file_credential_warnings(
    policy: &palisade_policy::model::Policy,
    settings: &PodSettings,
    warnings: &mut Vec<String>,
) {
    use palisade_policy::model::CredentialSource;
    for (name, cred) in &policy.spec.credentials {
        match &cred.from {
            CredentialSource::File(path) => {
                let in_secret = path.starts_with(&format!("{SECRETS_DIR}/"));
                if settings.sidecar_secret.is_none() {
                    warnings.push(format!(
                        "credential `{name}` reads {path}, but no --sidecar-secret is mounted; \
                         requests that need it will get 502 credential_unavailable"
                    ));
                } else if !in_secret {
                    warnings.push(format!(
                        "credential `{name}` reads {path}, which is outside the Secret's mount \
                         {SECRETS_DIR}; requests that need it will get 502 credential_unavailable"
                    ));
                }
            }
            CredentialSource::Env(var) => warnings.push(format!(
                "credential `{name}` reads the sidecar's environment variable {var}, which the \
                 rendered sidecar does not have; put it into --sidecar-secret and use \
                 `from: {{file: {SECRETS_DIR}/KEY}}`"
            )),
            _ => {}
        }
    }
}

//! The sandbox pod: the ONE renderer of Palisade's Kubernetes topology, used by
//! `palisade sandbox render`, `palisade inject` and (next) the Kubernetes
//! driver and the Helm chart.
//!
//! Owns: turning a sandbox and [`PodSettings`] into a `k8s_openapi` [`Pod`]
//! (and, for the file policy source, the [`ConfigMap`] holding the policy);
//! wrapping a user's pod spec in the same topology ([`inject`]); resolving
//! the UIDs ([`uids`]). What runs, with which arguments, UIDs and files, comes
//! from the driver-neutral launch plan ([`crate::driver::plan`]); this module
//! only decides containers, security contexts, volumes and metadata.
//! `docs/kubernetes.md` describes the pod container by container.
//!
//! * [`render`] — the pod of one sandbox; `topology` native (the sidecar is
//!   an init container with `restartPolicy: Always`) or classic (an ordinary
//!   container).
//! * [`inject`] — Pod, Deployment, StatefulSet, Job and CronJob manifests
//!   (multi-document YAML): the same topology around the user's containers.
//! * [`uids`] — explicit settings, the OpenShift SCC range annotations, the
//!   defaults.
//!
//! Must never: mount the ServiceAccount token, the sidecar's config or its
//! credential Secret into any container but the sidecar; give the agent a
//! capability, the sidecar's UID or GID, the gateway's address or a
//! credential in its environment; grant the `init` container more than
//! NET_ADMIN and NET_RAW; accept `hostAliases` (the sidecar never reads hosts
//! files); put a secret into a ConfigMap; do I/O.

pub mod inject;
mod render;
mod settings;
pub mod uids;
mod validate;

#[cfg(test)]
mod tests;

pub use k8s_openapi::api::core::v1::{ConfigMap, Pod};
pub use render::{PolicyRef, Rendered, SandboxPod, render};
pub use settings::{
    DEFAULT_SHIM_IMAGE, DEFAULT_SIDECAR_IMAGE, DEFAULT_TOKEN_EXPIRATION_SECONDS, GatewaySettings,
    PodSettings, PullPolicy, Topology,
};

/// `palisade-sidecar init`: capture and fence rules, then it exits.
pub const INIT_CONTAINER: &str = "palisade-init";
/// Copies `palisade-shim` into [`SHIM_DIR`] so that any agent image works.
pub const SHIM_INSTALL_CONTAINER: &str = "palisade-shim-install";
/// `palisade-sidecar run`, the data plane.
pub const SIDECAR_CONTAINER: &str = "palisade-sidecar";
/// The agent's container in a rendered sandbox pod.
pub const AGENT_CONTAINER: &str = "agent";
/// Every container name the topology adds (a user's may not take one).
pub const PALISADE_CONTAINERS: [&str; 3] =
    [INIT_CONTAINER, SHIM_INSTALL_CONTAINER, SIDECAR_CONTAINER];

/// The sidecar's read-only config (the ConfigMap: policy, CA certificates).
pub const CONFIG_DIR: &str = "/etc/palisade/config";
/// The `--sidecar-secret` Secret, read-only, sidecar only: where a file
/// policy's `from: {file: PATH}` credentials live.
pub const SECRETS_DIR: &str = "/etc/palisade/secrets";
/// The projected ServiceAccount token (audience `palisade-gateway`).
pub const TOKEN_DIR: &str = "/var/run/secrets/palisade.dev/serviceaccount";
/// File name of the token in [`TOKEN_DIR`].
pub const TOKEN_FILE_NAME: &str = "token";
/// Where the agent finds `palisade-shim` (an emptyDir, read-only for it).
pub const SHIM_DIR: &str = "/palisade/bin";
/// The agent container's entrypoint.
pub const SHIM_PATH: &str = "/palisade/bin/palisade-shim";
/// The agent's HOME in a rendered sandbox (an emptyDir).
pub const HOME_DIR: &str = "/home/agent";
/// The SPIFFE CSI driver's Workload API directory in the sidecar.
pub const SPIFFE_DIR: &str = "/spiffe-workload-api";
/// The Workload API socket in [`SPIFFE_DIR`].
pub const SPIFFE_SOCKET: &str = "/spiffe-workload-api/spire-agent.sock";

/// Pod annotation naming the sandbox (the gateway reads it on `token:issue`).
pub const SANDBOX_ID_ANNOTATION: &str = crate::authn::kube::SANDBOX_ANNOTATION;
/// Pod label with the sandbox id (for selectors).
pub const SANDBOX_ID_LABEL: &str = "palisade.dev/sandbox-id";
/// Pod label with the sandbox's name.
pub const SANDBOX_NAME_LABEL: &str = "palisade.dev/sandbox";
/// The principal that created the sandbox.
pub const OWNER_ANNOTATION: &str = "palisade.dev/owner";
/// The policy's name.
pub const POLICY_ANNOTATION: &str = "palisade.dev/policy";
/// The policy's revision (the gateway's, or `sha256:…` of a policy file).
pub const POLICY_REVISION_ANNOTATION: &str = "palisade.dev/policy-revision";
/// `native` or `classic`; also what `inject` recognises an injected pod by.
pub const TOPOLOGY_ANNOTATION: &str = "palisade.dev/topology";
/// The prefix of every Palisade label and annotation.
pub const PALISADE_PREFIX: &str = "palisade.dev/";

/// Why a pod cannot be rendered; the text names the setting or field and
/// says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A setting or input value is invalid.
    #[error("{setting}: {reason}")]
    Setting { setting: String, reason: String },
    /// A field of the pod the topology cannot wrap.
    #[error("{field}: {reason}")]
    Refused { field: String, reason: String },
    #[error(transparent)]
    Ids(#[from] uids::UidError),
    /// The file policy does not parse or validate.
    #[error("the policy is invalid:\n{0}")]
    Policy(String),
}

impl RenderError {
    pub(crate) fn setting(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        RenderError::Setting {
            setting: setting.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn refused(field: impl Into<String>, reason: impl Into<String>) -> Self {
        RenderError::Refused {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The YAML of `objects` as one multi-document stream (`---` between).
pub fn to_yaml<T: serde::Serialize>(objects: &[T]) -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::new();
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(object)?);
    }
    Ok(out)
}

//! [`PodSettings`]: what a deployment decides for every sandbox pod (images,
//! UIDs, gateway, topology, policy source), with its defaults, checked once.
//!
//! Must never: hold a credential (the gateway CA and the upstream CA are
//! public certificates; the credential Secret is only named).

use super::RenderError;
use super::uids::IdSettings;
use crate::driver::plan::PolicySource;

/// The sidecar image `just images` builds.
pub const DEFAULT_SIDECAR_IMAGE: &str = "localhost/palisade-sidecar:latest";
/// The shim image `just images` builds (its entrypoint copies the shim).
pub const DEFAULT_SHIM_IMAGE: &str = "localhost/palisade-shim:latest";
/// Lifetime of the projected ServiceAccount token (the kubelet refreshes it
/// at 80 %; the sidecar re-reads it on every bootstrap).
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// The Kubernetes minimum for `expirationSeconds`.
pub const MIN_TOKEN_EXPIRATION_SECONDS: i64 = 600;
/// Palisade's maximum: a leaked token is useless within the hour.
pub const MAX_TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// Where the sidecar runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// A native sidecar (Kubernetes ≥ 1.29): an init container with
    /// `restartPolicy: Always`; it is up before the agent starts and stops
    /// after it (Jobs complete).
    #[default]
    Native,
    /// An ordinary container beside the agent, for runtimes without native
    /// sidecars (Podman 4.3); the shim waits for its ready file.
    Classic,
}

impl Topology {
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Native => "native",
            Topology::Classic => "classic",
        }
    }
}

/// `imagePullPolicy` of the containers the renderer creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// How the sidecar reaches the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// `https://host[:port]` as seen from the pod.
    pub url: String,
    /// PEM certificates that verify the gateway (a private CA).
    pub ca_pem: Option<Vec<u8>>,
}

/// What a deployment decides for every sandbox pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSettings {
    pub sidecar_image: String,
    pub shim_image: String,
    /// `None`: the cluster's default for the tag.
    pub pull_policy: Option<PullPolicy>,
    /// Explicit UIDs/GIDs (a sandbox's own `uid`/`gid` win over these).
    pub ids: IdSettings,
    /// Needed with [`PolicySource::Gateway`].
    pub gateway: Option<GatewaySettings>,
    pub topology: Topology,
    pub policy_source: PolicySource,
    /// A Secret mounted read-only at [`super::SECRETS_DIR`] into the sidecar
    /// only, for a file policy's `from: {file: …}` credentials.
    pub sidecar_secret: Option<String>,
    /// PEM trust anchors for upstreams of inspected connections.
    pub upstream_ca: Option<Vec<u8>>,
    /// The pod's ServiceAccount (the one the gateway's
    /// `--sandbox-service-account` names), unless the sandbox has its own.
    pub service_account: Option<String>,
    pub token_expiration_seconds: i64,
    /// A SPIFFE CSI driver (`csi.spiffe.io`) whose Workload API socket is
    /// mounted into the sidecar only.
    pub spiffe_csi_driver: Option<String>,
    /// `openshift.io/required-scc`: pin the SCC the pod is admitted under.
    pub required_scc: Option<String>,
}

impl Default for PodSettings {
    fn default() -> Self {
        Self {
            sidecar_image: DEFAULT_SIDECAR_IMAGE.to_owned(),
            shim_image: DEFAULT_SHIM_IMAGE.to_owned(),
            pull_policy: None,
            ids: IdSettings::default(),
            gateway: None,
            topology: Topology::default(),
            policy_source: PolicySource::Gateway,
            sidecar_secret: None,
            upstream_ca: None,
            service_account: None,
            token_expiration_seconds: DEFAULT_TOKEN_EXPIRATION_SECONDS,
            spiffe_csi_driver: None,
            required_scc: None,
        }
    }
}

impl PodSettings {
    /// Every check that does not depend on the sandbox.
    pub fn check(&self) -> Result<(), RenderError> {
        for (setting, image) in [
            ("--sidecar-image", &self.sidecar_image),
            ("--shim-image", &self.shim_image),
        ] {
            super::validate::image(setting, image)?;
        }
        match (self.policy_source, &self.gateway) {
            (PolicySource::Gateway, None) => {
                return Err(RenderError::setting(
                    "--gateway-url",
                    "the gateway policy source needs the gateway's URL (https://host:port, as \
                     the pod reaches it); or use --policy-source file",
                ));
            }
            (PolicySource::Gateway, Some(gw)) => {
                super::validate::gateway_url(&gw.url)?;
                if let Some(pem) = &gw.ca_pem {
                    super::validate::pem_certificates("--gateway-ca", pem)?;
                }
            }
            (PolicySource::File, Some(_)) => {
                return Err(RenderError::setting(
                    "--gateway-url",
                    "a file-sourced policy runs without a gateway; drop --gateway-url/--gateway-ca \
                     or use --policy-source gateway",
                ));
            }
            (PolicySource::File, None) => {}
        }
        if let Some(secret) = &self.sidecar_secret {
            if self.policy_source != PolicySource::File {
                return Err(RenderError::setting(
                    "--sidecar-secret",
                    "the Secret holds `from: {file: …}` credentials, which only a file-sourced \
                     policy may use; a gateway delivers its credentials itself (use \
                     --policy-source file)",
                ));
            }
            super::validate::dns_subdomain("--sidecar-secret", secret)?;
        }
        if let Some(pem) = &self.upstream_ca {
            super::validate::pem_certificates("--upstream-ca", pem)?;
        }
        if let Some(sa) = &self.service_account {
            super::validate::dns_subdomain("--service-account", sa)?;
        }
        if !(MIN_TOKEN_EXPIRATION_SECONDS..=MAX_TOKEN_EXPIRATION_SECONDS)
            .contains(&self.token_expiration_seconds)
        {
            return Err(RenderError::setting(
                "--token-expiration-seconds",
                format!(
                    "{} is outside {MIN_TOKEN_EXPIRATION_SECONDS}..={MAX_TOKEN_EXPIRATION_SECONDS} \
                     (Kubernetes' minimum; Palisade's maximum of one hour)",
                    self.token_expiration_seconds
                ),
            ));
        }
        if let Some(driver) = &self.spiffe_csi_driver {
            super::validate::dns_subdomain("--spiffe-csi-driver", driver)?;
        }
        if let Some(scc) = &self.required_scc {
            super::validate::dns_subdomain("--openshift-scc", scc)?;
        }
        Ok(())
    }
}

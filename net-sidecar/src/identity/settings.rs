//! The gateway flags of `palisade-sidecar run`, checked into [`GatewaySettings`].
//!
//! Owns: the URL scheme rule (https, or http only for loopback or with the local-driver
//! flag), the bootstrap credential choice, the sandbox id syntax.
//! Must never: read a token file (that happens at bootstrap, in `jwt`).

use std::net::IpAddr;
use std::path::PathBuf;

use http::Uri;

/// The raw flags (see `app::config::RunArgs`).
#[derive(Debug)]
pub struct GatewayFlags {
    pub url: String,
    pub ca: Option<PathBuf>,
    pub insecure_plaintext: bool,
    pub sandbox_id: Option<String>,
    pub token_file: Option<PathBuf>,
    pub k8s_sa_token_file: Option<PathBuf>,
    pub shim_socket: PathBuf,
}

/// How the sidecar proves who it is on its first `token:issue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// The local driver's one-time `pbt_…` token: usable exactly once.
    OneTime(PathBuf),
    /// A projected ServiceAccount token, re-read each time (kubelet rotates it).
    ServiceAccount(PathBuf),
}

/// A sandbox id (`sbx-` + 32 lower-case hex), safe to put in a URL path: the one type the
/// gateway, the wire types and the sidecar share.
pub use palisade_api::SandboxId;

/// Checked gateway settings.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// `scheme://authority`, no path.
    pub base: Uri,
    pub tls: bool,
    pub ca: Option<PathBuf>,
    pub sandbox_id: SandboxId,
    pub bootstrap: Bootstrap,
    pub shim_socket: PathBuf,
}

impl GatewaySettings {
    pub fn from_flags(f: GatewayFlags) -> anyhow::Result<Self> {
        let base: Uri = f.url.trim_end_matches('/').parse().map_err(|_| {
            anyhow::anyhow!(
                "--gateway `{}` is not a URL; write e.g. https://palisade-gateway:8443",
                f.url
            )
        })?;
        let Some(host) = base.host() else {
            anyhow::bail!(
                "--gateway `{}` has no host; write e.g. https://gateway:8443",
                f.url
            );
        };
        anyhow::ensure!(
            base.path() == "/" || base.path().is_empty(),
            "--gateway `{}` must not have a path; give only scheme://host:port",
            f.url
        );
        let tls = match base.scheme_str() {
            Some("https") => true,
            Some("http") => {
                let loopback = host == "localhost"
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                anyhow::ensure!(
                    loopback || f.insecure_plaintext,
                    "--gateway `{}` is plaintext http to a non-loopback host; use https \
                     (with --gateway-ca if needed), or --gateway-insecure-plaintext for the \
                     local driver's veth only",
                    f.url
                );
                false
            }
            _ => anyhow::bail!(
                "--gateway `{}` must start with https:// (or http:// for loopback)",
                f.url
            ),
        };
        anyhow::ensure!(
            tls || f.ca.is_none(),
            "--gateway-ca is only used with an https:// gateway; remove it or use https"
        );
        let raw_id = f.sandbox_id.ok_or_else(|| {
            anyhow::anyhow!("--gateway needs --sandbox-id ID (the sandbox's sbx-… id)")
        })?;
        let sandbox_id = SandboxId::parse(&raw_id).ok_or_else(|| {
            anyhow::anyhow!("--sandbox-id `{raw_id}` is not a sandbox id (sbx-<32 hex digits>)")
        })?;
        let bootstrap = match (f.token_file, f.k8s_sa_token_file) {
            (Some(p), None) => Bootstrap::OneTime(p),
            (None, Some(p)) => Bootstrap::ServiceAccount(p),
            (Some(_), Some(_)) => anyhow::bail!(
                "--token-file and --k8s-sa-token-file are mutually exclusive; pick the one \
                 your driver provides"
            ),
            (None, None) => anyhow::bail!(
                "--gateway needs a bootstrap credential: --token-file PATH (local driver) or \
                 --k8s-sa-token-file PATH (Kubernetes)"
            ),
        };
        Ok(Self {
            base,
            tls,
            ca: f.ca,
            sandbox_id,
            bootstrap,
            shim_socket: f.shim_socket,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    const ID: &str = "sbx-0123456789abcdef0123456789abcdef";

    fn flags(url: &str) -> GatewayFlags {
        GatewayFlags {
            url: url.into(),
            ca: None,
            insecure_plaintext: false,
            sandbox_id: Some(ID.into()),
            token_file: Some("/t".into()),
            k8s_sa_token_file: None,
            shim_socket: "/s".into(),
        }
    }

    fn err(f: GatewayFlags) -> String {
        format!("{:#}", GatewaySettings::from_flags(f).unwrap_err())
    }

    #[test]
    fn schemes_and_hosts() {
        assert!(
            GatewaySettings::from_flags(flags("https://gw.example:8443"))
                .unwrap()
                .tls
        );
        assert!(
            !GatewaySettings::from_flags(flags("http://127.0.0.1:8080"))
                .unwrap()
                .tls
        );
        assert!(GatewaySettings::from_flags(flags("http://[::1]:8080")).is_ok());
        assert!(GatewaySettings::from_flags(flags("http://localhost:8080")).is_ok());
        assert!(err(flags("http://198.18.0.1:8080")).contains("--gateway-insecure-plaintext"));
        let mut f = flags("http://198.18.0.1:8080");
        f.insecure_plaintext = true;
        assert!(GatewaySettings::from_flags(f).is_ok());
        assert!(err(flags("ftp://x")).contains("https://"));
        assert!(err(flags("https://gw/api")).contains("path"));
        let mut f = flags("http://127.0.0.1:1");
        f.ca = Some("/ca.pem".into());
        assert!(err(f).contains("--gateway-ca"));
    }

    #[test]
    fn identity_flags() {
        let mut f = flags("https://gw");
        f.sandbox_id = None;
        assert!(err(f).contains("--sandbox-id"));
        let mut f = flags("https://gw");
        f.sandbox_id = Some("sbx-nothex".into());
        assert!(err(f).contains("not a sandbox id"));
        let mut f = flags("https://gw");
        f.token_file = None;
        assert!(err(f).contains("--k8s-sa-token-file"));
        let mut f = flags("https://gw");
        f.k8s_sa_token_file = Some("/sa".into());
        assert!(err(f).contains("mutually exclusive"));
        let mut f = flags("https://gw");
        f.token_file = None;
        f.k8s_sa_token_file = Some("/sa".into());
        assert_eq!(
            GatewaySettings::from_flags(f).unwrap().bootstrap,
            Bootstrap::ServiceAccount("/sa".into())
        );
    }
}

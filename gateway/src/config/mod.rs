//! Gateway configuration: defaults < YAML file (`--config`) < `PALISADE_*`
//! environment < flags, parsed once into a typed [`Config`].
//!
//! * [`args`] — the flags (clap); [`file`](mod@file) — the YAML file.
//! * `resolve` — flags over file over the defaults below, validated.
//! * `authenticators` — the Kubernetes and OIDC settings, whose types and
//!   defaults live with their authenticators in [`crate::authn`].
//! * `show` — `--print-config`.
//!
//! This module reads the types of the parts it configures; none of them
//! reads it back (the driver, the authenticators and the session hub get
//! their own part of a [`Config`], never the whole).
//!
//! Must never: print a secret (`--print-config` shows the admin token file's
//! path and fingerprint only), or start in a mode that fails open.

pub mod args;
mod authenticators;
pub mod file;
mod resolve;
mod show;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use args::{KubeArgs, OidcArgs, ServeArgs, TlsArgs};
pub use file::{FileConfig, OidcFileConfig};

use crate::authn::kube::KubeAuthConfig;
use crate::authn::oidc::OidcConfig;
use crate::driver::LocalDriverConfig;
use crate::sessions::SessionLimits;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9090";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/palisade";
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_BOOTSTRAP_TTL: Duration = Duration::from_secs(60 * 60);
pub const DEFAULT_KEY_ROTATION_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A policy may be 1 MiB ([`palisade_policy::MAX_POLICY_BYTES`]); bodies are capped there.
pub const DEFAULT_MAX_BODY_BYTES: usize = palisade_policy::MAX_POLICY_BYTES;
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;
/// Sustained requests per second per principal.
pub const DEFAULT_RATE_LIMIT_PER_SEC: f64 = 50.0;
/// Requests a principal may burst above the sustained rate.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 100;
/// The longest `?wait=` a long-poll may ask for.
pub const MAX_LONG_POLL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// Where the gateway keeps its records (`--store`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum StoreConfig {
    /// One redb file in the data dir; one replica.
    Embedded,
    /// The Kubernetes API ([`crate::store::kube_store`]); any number of replicas.
    Kubernetes {
        /// `None`: in-cluster configuration.
        kube_config: Option<PathBuf>,
        namespace: String,
        /// The leader Lease's duration.
        #[serde(serialize_with = "crate::duration::ser_secs")]
        lease_duration: Duration,
    },
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub tls: Option<TlsFiles>,
    pub admin_token_file: Option<PathBuf>,
    pub insecure_allow_anonymous: bool,
    pub issuer: String,
    pub token_ttl: Duration,
    pub bootstrap_ttl: Duration,
    pub key_rotation_interval: Duration,
    pub leeway: Duration,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_concurrent_requests: usize,
    pub rate_limit_per_sec: f64,
    pub rate_limit_burst: u32,
    /// Where records live.
    pub store: StoreConfig,
    /// Kubernetes ServiceAccount tokens on `token:issue` (off when `None`).
    pub kube: Option<KubeAuthConfig>,
    /// OIDC user/platform bearer tokens (off when `None`).
    pub oidc: Option<OidcConfig>,
    /// Sidecar sessions and exec relays.
    pub sessions: SessionLimits,
    /// Sandbox lifecycle driver; set by `palisade up` (no flag of `gateway serve`).
    pub driver: Option<LocalDriverConfig>,
}

//! The settings of OIDC user/platform tokens and their defaults;
//! [`crate::config`] fills them from flags and the config file.
//!
//! Must never: hold a secret (no client secret is involved; keys are public).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::ser_secs;
use crate::principal::Role;

/// Default age after which the OIDC JWKS is fetched again.
pub const DEFAULT_OIDC_JWKS_REFRESH: Duration = Duration::from_secs(5 * 60);
/// Default minimum gap between JWKS fetches triggered by unknown `kid`s.
pub const DEFAULT_OIDC_JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
/// Default deadline of one JWKS fetch.
pub const DEFAULT_OIDC_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Group → roles pairs as the config file writes them.
pub type GroupRoles = BTreeMap<String, Vec<Role>>;

/// What OIDC tokens become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OidcPrincipalKind {
    /// `Principal::User` with mapped roles.
    User,
    /// `Principal::Platform` limited to the namespaces in a claim.
    Platform,
}

/// Where the OIDC issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JwksSource {
    Url {
        url: String,
        ca_file: Option<PathBuf>,
    },
    File(PathBuf),
}

/// OIDC user/platform tokens; present only when `--oidc-issuer` is given.
/// Nothing here is secret (no client secret is involved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    #[serde(serialize_with = "ser_secs")]
    pub refresh_interval: Duration,
    #[serde(serialize_with = "ser_secs")]
    pub min_refresh_interval: Duration,
    #[serde(serialize_with = "ser_secs")]
    pub fetch_timeout: Duration,
    pub principal: OidcPrincipalKind,
    pub subject_claim: String,
    pub roles_claim: Option<String>,
    pub groups_claim: String,
    pub group_roles: GroupRoles,
    pub namespaces_claim: String,
}

//! The settings of the Kubernetes and OIDC authenticators, from their flags
//! and the config file. Their types and defaults are the authenticators' own
//! ([`crate::authn::kube`], [`crate::authn::oidc`]).
//!
//! Must never: enable an authenticator half-configured — a setting that does
//! nothing without another is refused, not ignored.

use std::time::Duration;

use anyhow::bail;

use super::StoreConfig;
use super::args::{KubeArgs, OidcArgs, ServeArgs, StoreKind};
use super::file::{FileConfig, OidcFileConfig, file_duration};
use crate::authn::kube::{DEFAULT_KUBE_TIMEOUT, DEFAULT_TOKEN_AUDIENCE, KubeAuthConfig};
use crate::authn::oidc::{
    DEFAULT_OIDC_FETCH_TIMEOUT, DEFAULT_OIDC_JWKS_MIN_REFRESH, DEFAULT_OIDC_JWKS_REFRESH,
    JwksSource, OidcConfig, OidcPrincipalKind,
};
use crate::principal::{Role, valid_label};

/// `--oidc-*` over the file's `oidc:` map; `None` without an issuer.
pub(super) fn oidc(
    args: &OidcArgs,
    file: Option<&OidcFileConfig>,
) -> anyhow::Result<Option<OidcConfig>> {
    let empty = OidcFileConfig::default();
    let file = file.unwrap_or(&empty);
    let Some(issuer) = args.oidc_issuer.clone().or(file.issuer.clone()) else {
        if args.oidc_audience.is_some()
            || args.oidc_jwks_url.is_some()
            || args.oidc_jwks_file.is_some()
            || file.audience.is_some()
            || file.jwks_url.is_some()
            || file.jwks_file.is_some()
        {
            bail!("the --oidc-* settings do nothing without --oidc-issuer URL");
        }
        return Ok(None);
    };
    if issuer.trim().is_empty() {
        bail!("--oidc-issuer must not be empty");
    }
    let Some(audience) = args.oidc_audience.clone().or(file.audience.clone()) else {
        bail!(
            "--oidc-issuer needs --oidc-audience (the `aud` your IdP puts in tokens for Palisade)"
        );
    };
    if audience.is_empty() {
        bail!("--oidc-audience must not be empty");
    }
    let url = args.oidc_jwks_url.clone().or(file.jwks_url.clone());
    let ca_file = args.oidc_jwks_ca_file.clone().or(file.jwks_ca_file.clone());
    let key_file = args.oidc_jwks_file.clone().or(file.jwks_file.clone());
    let jwks = match (url, key_file) {
        (Some(url), None) => {
            if !url.starts_with("https://") {
                bail!("--oidc-jwks-url `{url}` must be an https:// URL");
            }
            if url
                .parse::<http::Uri>()
                .map(|u| u.host().is_none())
                .unwrap_or(true)
            {
                bail!("--oidc-jwks-url `{url}` is not a valid URL");
            }
            JwksSource::Url { url, ca_file }
        }
        (None, Some(path)) => {
            if ca_file.is_some() {
                bail!("--oidc-jwks-ca-file is for --oidc-jwks-url; a key file needs no CA");
            }
            JwksSource::File(path)
        }
        (Some(_), Some(_)) => bail!("give --oidc-jwks-url or --oidc-jwks-file, not both"),
        (None, None) => bail!(
            "--oidc-issuer needs its keys: --oidc-jwks-url https://… or --oidc-jwks-file FILE"
        ),
    };
    let refresh_interval = args
        .oidc_jwks_refresh_interval
        .or(file_duration(
            file.jwks_refresh_interval.as_ref(),
            "oidc.jwks-refresh-interval",
        )?)
        .unwrap_or(DEFAULT_OIDC_JWKS_REFRESH);
    let min_refresh_interval = args
        .oidc_jwks_min_refresh_interval
        .or(file_duration(
            file.jwks_min_refresh_interval.as_ref(),
            "oidc.jwks-min-refresh-interval",
        )?)
        .unwrap_or(DEFAULT_OIDC_JWKS_MIN_REFRESH);
    let fetch_timeout = args
        .oidc_fetch_timeout
        .or(file_duration(
            file.fetch_timeout.as_ref(),
            "oidc.fetch-timeout",
        )?)
        .unwrap_or(DEFAULT_OIDC_FETCH_TIMEOUT);
    if refresh_interval.is_zero() || fetch_timeout.is_zero() {
        bail!("--oidc-jwks-refresh-interval and --oidc-fetch-timeout must be at least 1s");
    }
    if min_refresh_interval > refresh_interval {
        bail!("--oidc-jwks-min-refresh-interval must not exceed --oidc-jwks-refresh-interval");
    }
    let mut group_roles = file.group_roles.clone().unwrap_or_default();
    if !args.oidc_group_role.is_empty() {
        group_roles.clear();
        for pair in &args.oidc_group_role {
            let Some((group, role)) = pair.split_once('=') else {
                bail!(
                    "--oidc-group-role `{pair}`: write GROUP=ROLE (role: admin, editor or viewer)"
                );
            };
            let role: Role = serde_json::from_value(serde_json::Value::String(
                role.trim().to_owned(),
            ))
            .map_err(|_| {
                anyhow::anyhow!("--oidc-group-role `{pair}`: role must be admin, editor or viewer")
            })?;
            group_roles
                .entry(group.trim().to_owned())
                .or_default()
                .push(role);
        }
    }
    let claim = |flag: &Option<String>, file: &Option<String>, default: &str| {
        flag.clone()
            .or(file.clone())
            .unwrap_or_else(|| default.to_owned())
    };
    Ok(Some(OidcConfig {
        issuer,
        audience,
        jwks,
        refresh_interval,
        min_refresh_interval,
        fetch_timeout,
        principal: args
            .oidc_principal
            .or(file.principal)
            .unwrap_or(OidcPrincipalKind::User),
        subject_claim: claim(&args.oidc_subject_claim, &file.subject_claim, "sub"),
        roles_claim: args.oidc_roles_claim.clone().or(file.roles_claim.clone()),
        groups_claim: claim(&args.oidc_groups_claim, &file.groups_claim, "groups"),
        group_roles,
        namespaces_claim: claim(
            &args.oidc_namespaces_claim,
            &file.namespaces_claim,
            "namespaces",
        ),
    }))
}

/// How long the leader Lease holds without renewal.
const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Where the service account's namespace is mounted in a pod.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// `--store` and `--store-namespace` over the file.
pub(super) fn store(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<StoreConfig> {
    let kind = args
        .store
        .store
        .or(file.store)
        .unwrap_or(StoreKind::Embedded);
    let namespace = args
        .store
        .store_namespace
        .clone()
        .or(file.store_namespace.clone());
    let lease_duration = args.store.lease_duration.or(file_duration(
        file.lease_duration.as_ref(),
        "lease-duration",
    )?);
    match kind {
        StoreKind::Embedded => {
            if namespace.is_some() || lease_duration.is_some() {
                bail!("--store-namespace and --lease-duration need --store kubernetes");
            }
            Ok(StoreConfig::Embedded)
        }
        StoreKind::Kubernetes => {
            let namespace = match namespace {
                Some(ns) => ns,
                None => std::env::var("POD_NAMESPACE")
                    .ok()
                    .or_else(|| std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok())
                    .map(|ns| ns.trim().to_owned())
                    .filter(|ns| !ns.is_empty())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--store kubernetes needs --store-namespace NS (not running in a pod:                              no $POD_NAMESPACE and no {SERVICE_ACCOUNT_NAMESPACE})"
                        )
                    })?,
            };
            if !valid_label(&namespace) {
                bail!("--store-namespace: `{namespace}` is not a valid namespace name");
            }
            let lease_duration = lease_duration.unwrap_or(DEFAULT_LEASE_DURATION);
            if lease_duration < Duration::from_secs(1) || lease_duration > Duration::from_secs(300)
            {
                bail!("--lease-duration must be between 1s and 5m");
            }
            Ok(StoreConfig::Kubernetes {
                kube_config: args.kube.kube_config.clone().or(file.kube_config.clone()),
                namespace,
                lease_duration,
            })
        }
    }
}

/// The Kubernetes flags over the file; `None` without a ServiceAccount.
pub(super) fn kube(
    args: &KubeArgs,
    file: &FileConfig,
    kube_store: bool,
) -> anyhow::Result<Option<KubeAuthConfig>> {
    let kube_config = args.kube_config.clone().or(file.kube_config.clone());
    let namespaces = if args.sandbox_namespaces.is_empty() {
        file.sandbox_namespaces.clone().unwrap_or_default()
    } else {
        args.sandbox_namespaces.clone()
    };
    let namespaces: Vec<String> = namespaces
        .into_iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    let Some(service_account) = args
        .sandbox_service_account
        .clone()
        .or(file.sandbox_service_account.clone())
    else {
        if (kube_config.is_some() && !kube_store) || !namespaces.is_empty() {
            bail!(
                "--kube-config/--sandbox-namespaces do nothing without --sandbox-service-account \
                 NAME (the ServiceAccount sandbox pods run as)"
            );
        }
        return Ok(None);
    };
    if !valid_label(&service_account) {
        bail!("--sandbox-service-account `{service_account}` is not a valid ServiceAccount name");
    }
    if namespaces.is_empty() {
        bail!(
            "--sandbox-service-account needs --sandbox-namespaces ns1,ns2 (the namespaces sandbox \
             pods run in)"
        );
    }
    if let Some(bad) = namespaces.iter().find(|n| !valid_label(n)) {
        bail!("--sandbox-namespaces: `{bad}` is not a valid namespace name");
    }
    let audience = args
        .token_audience
        .clone()
        .or(file.token_audience.clone())
        .unwrap_or_else(|| DEFAULT_TOKEN_AUDIENCE.to_owned());
    if audience.is_empty() {
        bail!("--token-audience must not be empty");
    }
    let timeout = args
        .kube_timeout
        .or(file_duration(file.kube_timeout.as_ref(), "kube-timeout")?)
        .unwrap_or(DEFAULT_KUBE_TIMEOUT);
    if timeout.is_zero() {
        bail!("--kube-timeout must be at least 1s");
    }
    Ok(Some(KubeAuthConfig {
        kube_config,
        service_account,
        namespaces,
        audience,
        timeout,
    }))
}

//! [`Config::resolve`]: flags and environment over the config file over the
//! defaults, then every cross-field rule checked.
//!
//! Must never: start without TLS or without operator authentication unless
//! the operator said `--insecure-…` for it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use super::file::file_duration;
use super::*;

impl Config {
    /// Merge flags/env over the config file over defaults, then validate.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Config> {
        let file = FileConfig::read(args.config.as_deref())?;
        let store = authenticators::store(args, &file)?;
        let kube = authenticators::kube(&args.kube, &file, store != StoreConfig::Embedded)?;
        let oidc = authenticators::oidc(&args.oidc, file.oidc.as_ref())?;
        let default_addr = |s: &str| -> anyhow::Result<SocketAddr> { Ok(s.parse()?) };
        let listen = match args.listen.or(file.listen) {
            Some(a) => a,
            None => default_addr(DEFAULT_LISTEN)?,
        };
        let admin_listen = match args.admin_listen.or(file.admin_listen) {
            Some(a) => a,
            None => default_addr(DEFAULT_ADMIN_LISTEN)?,
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let cert = args.tls.tls_cert.clone().or(file.tls_cert);
        let key = args.tls.tls_key.clone().or(file.tls_key);
        let insecure_plaintext = args.insecure_plaintext || file.insecure_plaintext == Some(true);
        let client_ca = args.tls.tls_client_ca.clone().or(file.tls_client_ca);
        let tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca,
            }),
            (None, None) if client_ca.is_some() => {
                bail!("--tls-client-ca needs --tls-cert and --tls-key")
            }
            (None, None) if insecure_plaintext => None,
            (None, None) => bail!(
                "refusing to serve the API without TLS: give --tls-cert and --tls-key, or \
                 --insecure-plaintext for local use"
            ),
            _ => bail!("--tls-cert and --tls-key must be given together"),
        };
        let admin_token_file = args.admin_token_file.clone().or(file.admin_token_file);
        let insecure_allow_anonymous =
            args.insecure_allow_anonymous || file.insecure_allow_anonymous == Some(true);
        if admin_token_file.is_none() && oidc.is_none() && !insecure_allow_anonymous {
            bail!(
                "no operator authentication is configured: give --admin-token-file FILE (a 0600 \
                 file holding a random token) or --oidc-issuer URL (with its JWKS), or \
                 --insecure-allow-anonymous for local use"
            );
        }
        let issuer = match args.issuer.clone().or(file.issuer) {
            Some(i) => i,
            // Replicas must agree on `iss`, and one derived from each
            // replica's --listen would not.
            None if store != StoreConfig::Embedded => bail!(
                "--store kubernetes needs --issuer URL: every replica must mint and accept the \
                 same `iss` (e.g. https://palisade-gateway.palisade-system.svc:8443)"
            ),
            None => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let host = if listen.ip().is_unspecified() {
                    "localhost".to_owned()
                } else {
                    match listen {
                        SocketAddr::V4(a) => a.ip().to_string(),
                        SocketAddr::V6(a) => format!("[{}]", a.ip()),
                    }
                };
                format!("{scheme}://{host}:{}", listen.port())
            }
        };
        let pick = |flag: Option<Duration>, file: Option<Duration>, default: Duration| {
            flag.or(file).unwrap_or(default)
        };
        let token_ttl = pick(
            args.token_ttl,
            file_duration(file.token_ttl.as_ref(), "token-ttl")?,
            DEFAULT_TOKEN_TTL,
        );
        let bootstrap_ttl = pick(
            args.bootstrap_ttl,
            file_duration(file.bootstrap_ttl.as_ref(), "bootstrap-ttl")?,
            DEFAULT_BOOTSTRAP_TTL,
        );
        let key_rotation_interval = pick(
            args.key_rotation_interval,
            file_duration(file.key_rotation_interval.as_ref(), "key-rotation-interval")?,
            DEFAULT_KEY_ROTATION_INTERVAL,
        );
        let leeway = pick(
            args.leeway,
            file_duration(file.leeway.as_ref(), "leeway")?,
            DEFAULT_LEEWAY,
        );
        let request_timeout = pick(
            args.request_timeout,
            file_duration(file.request_timeout.as_ref(), "request-timeout")?,
            DEFAULT_REQUEST_TIMEOUT,
        );
        let header_read_timeout = pick(
            args.header_read_timeout,
            file_duration(file.header_read_timeout.as_ref(), "header-read-timeout")?,
            DEFAULT_HEADER_READ_TIMEOUT,
        );
        let max_body_bytes = args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let max_concurrent_requests = args
            .max_concurrent_requests
            .or(file.max_concurrent_requests)
            .unwrap_or(DEFAULT_MAX_CONCURRENT_REQUESTS);

        let rate_limit_per_sec = args
            .rate_limit_per_sec
            .or(file.rate_limit_per_sec)
            .unwrap_or(DEFAULT_RATE_LIMIT_PER_SEC);
        let rate_limit_burst = args
            .rate_limit_burst
            .or(file.rate_limit_burst)
            .unwrap_or(DEFAULT_RATE_LIMIT_BURST);
        if !(rate_limit_per_sec.is_finite() && rate_limit_per_sec > 0.0) || rate_limit_burst == 0 {
            bail!("--rate-limit-per-sec and --rate-limit-burst must be positive");
        }
        if !(5..=86_400).contains(&token_ttl.as_secs()) {
            bail!("--token-ttl must be between 5s and 24h");
        }
        if leeway.as_secs() > crate::tokens::MAX_LEEWAY_SECS {
            bail!("--leeway must be at most 60s");
        }
        if key_rotation_interval < token_ttl {
            bail!("--key-rotation-interval must be at least --token-ttl");
        }
        if bootstrap_ttl.as_secs() < 1 {
            bail!("--bootstrap-ttl must be at least 1s");
        }
        if request_timeout <= MAX_LONG_POLL {
            bail!("--request-timeout must be longer than the 30s long-poll limit");
        }
        if header_read_timeout.is_zero() {
            bail!("--header-read-timeout must be at least 1s");
        }
        let sessions = SessionLimits::resolve(
            args.exec_max_per_sandbox.or(file.exec_max_per_sandbox),
            args.exec_idle_timeout.or(file_duration(
                file.exec_idle_timeout.as_ref(),
                "exec-idle-timeout",
            )?),
            args.exec_max_duration.or(file_duration(
                file.exec_max_duration.as_ref(),
                "exec-max-duration",
            )?),
        )?;
        if max_body_bytes == 0 || max_concurrent_requests == 0 {
            bail!("--max-body-bytes and --max-concurrent-requests must be positive");
        }
        Ok(Config {
            listen,
            admin_listen,
            data_dir,
            tls,
            admin_token_file,
            insecure_allow_anonymous,
            issuer,
            token_ttl,
            bootstrap_ttl,
            key_rotation_interval,
            leeway,
            request_timeout,
            header_read_timeout,
            max_body_bytes,
            max_concurrent_requests,
            rate_limit_per_sec,
            rate_limit_burst,
            store,
            kube,
            oidc,
            sessions,
            driver: None,
        })
    }
}

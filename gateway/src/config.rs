//! Gateway configuration: defaults < YAML file (`--config`) < `PALISADE_*`
//! environment < flags, parsed once into a typed [`Config`].
//!
//! Must never: print a secret (`--print-config` shows the admin token file's
//! path and fingerprint only), or start in a mode that fails open.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

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
/// Audience a projected ServiceAccount token must carry for `token:issue`.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "palisade-gateway";
/// Deadline for the Kubernetes API calls of one `token:issue`.
pub const DEFAULT_KUBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `?wait=` a long-poll may ask for.
pub const MAX_LONG_POLL: Duration = Duration::from_secs(30);

/// `palisade gateway serve` flags. Every flag also reads `PALISADE_<NAME>`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// YAML config file; flags and PALISADE_* env override its values.
    #[arg(long, env = "PALISADE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// API listen address [default: 0.0.0.0:8443].
    #[arg(long, env = "PALISADE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listen address for /live, /ready, /metrics [default: 0.0.0.0:9090].
    #[arg(long, env = "PALISADE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Directory for the database and signing keys [default: /var/lib/palisade].
    #[arg(long, env = "PALISADE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TLS files (boxed to keep the CLI's command enum small).
    #[command(flatten)]
    pub tls: Box<TlsArgs>,
    /// Serve the API without TLS (local use only).
    #[arg(long, env = "PALISADE_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// File holding the static admin bearer token (mode 0600).
    #[arg(long, env = "PALISADE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Start with no operator authenticator; anonymous callers then get
    /// sandbox and policy read/write (never admin). Local use only.
    #[arg(long, env = "PALISADE_INSECURE_ALLOW_ANONYMOUS")]
    pub insecure_allow_anonymous: bool,
    /// `iss` of minted tokens and the OpenID issuer [default: derived from --listen].
    #[arg(long, env = "PALISADE_ISSUER")]
    pub issuer: Option<String>,
    /// Sandbox JWT lifetime, e.g. 15m.
    #[arg(long, env = "PALISADE_TOKEN_TTL", value_parser = parse_duration)]
    pub token_ttl: Option<Duration>,
    /// Bootstrap token lifetime, e.g. 1h.
    #[arg(long, env = "PALISADE_BOOTSTRAP_TTL", value_parser = parse_duration)]
    pub bootstrap_ttl: Option<Duration>,
    /// Rotate the signing key automatically when it is this old, e.g. 24h.
    #[arg(long, env = "PALISADE_KEY_ROTATION_INTERVAL", value_parser = parse_duration)]
    pub key_rotation_interval: Option<Duration>,
    /// Clock skew tolerated on token times (at most 60s).
    #[arg(long, env = "PALISADE_LEEWAY", value_parser = parse_duration)]
    pub leeway: Option<Duration>,
    /// Whole-request timeout.
    #[arg(long, env = "PALISADE_REQUEST_TIMEOUT", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,
    /// How long a client may take to send its request headers.
    #[arg(long, env = "PALISADE_HEADER_READ_TIMEOUT", value_parser = parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "PALISADE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Requests served at once; more get 503.
    #[arg(long, env = "PALISADE_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Sustained requests per second allowed per principal.
    #[arg(long, env = "PALISADE_RATE_LIMIT_PER_SEC")]
    pub rate_limit_per_sec: Option<f64>,
    /// Burst allowed per principal above the sustained rate.
    #[arg(long, env = "PALISADE_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// Exec sessions open at once per sandbox; more get 429 [default: 4].
    #[arg(long, env = "PALISADE_EXEC_MAX_PER_SANDBOX")]
    pub exec_max_per_sandbox: Option<usize>,
    /// Close an exec session with no traffic either way for this long [default: 15m].
    #[arg(long, env = "PALISADE_EXEC_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub exec_idle_timeout: Option<Duration>,
    /// Close any exec session this old [default: 8h].
    #[arg(long, env = "PALISADE_EXEC_MAX_DURATION", value_parser = parse_duration)]
    pub exec_max_duration: Option<Duration>,
    /// Kubernetes ServiceAccount authentication on token:issue.
    #[command(flatten)]
    pub kube: Box<KubeArgs>,
    /// OIDC user/platform bearer tokens.
    #[command(flatten)]
    pub oidc: Box<OidcArgs>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The TLS flags of `palisade gateway serve` (boxed in [`ServeArgs`]).
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// PEM certificate chain for TLS.
    #[arg(long, env = "PALISADE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "PALISADE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require TLS client certificates signed by this CA (PEM).
    #[arg(long, env = "PALISADE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// The Kubernetes flags of `palisade gateway serve` (boxed in [`ServeArgs`]).
#[derive(Debug, Clone, Default, Args)]
pub struct KubeArgs {
    /// kubeconfig for the TokenReview/Pod client [default: in-cluster config].
    #[arg(long, env = "PALISADE_KUBE_CONFIG", value_name = "PATH")]
    pub kube_config: Option<PathBuf>,
    /// ServiceAccount whose projected tokens may call token:issue; enables
    /// Kubernetes ServiceAccount authentication.
    #[arg(long, env = "PALISADE_SANDBOX_SERVICE_ACCOUNT", value_name = "NAME")]
    pub sandbox_service_account: Option<String>,
    /// Namespaces in which that ServiceAccount is accepted (comma-separated).
    #[arg(
        long,
        env = "PALISADE_SANDBOX_NAMESPACES",
        value_delimiter = ',',
        value_name = "NS,..."
    )]
    pub sandbox_namespaces: Vec<String>,
    /// Audience ServiceAccount tokens must carry [default: palisade-gateway].
    #[arg(long, env = "PALISADE_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,
    /// Deadline for the Kubernetes API calls of one token:issue [default: 5s].
    #[arg(long, env = "PALISADE_KUBE_TIMEOUT", value_parser = parse_duration)]
    pub kube_timeout: Option<Duration>,
}

/// The YAML config file: every key optional, unknown keys refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub insecure_plaintext: Option<bool>,
    pub admin_token_file: Option<PathBuf>,
    pub insecure_allow_anonymous: Option<bool>,
    pub issuer: Option<String>,
    pub token_ttl: Option<String>,
    pub bootstrap_ttl: Option<String>,
    pub key_rotation_interval: Option<String>,
    pub leeway: Option<String>,
    pub request_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub max_concurrent_requests: Option<usize>,
    pub rate_limit_per_sec: Option<f64>,
    pub rate_limit_burst: Option<u32>,
    pub kube_config: Option<PathBuf>,
    pub sandbox_service_account: Option<String>,
    pub sandbox_namespaces: Option<Vec<String>>,
    pub token_audience: Option<String>,
    pub kube_timeout: Option<String>,
    pub exec_max_per_sandbox: Option<usize>,
    pub exec_idle_timeout: Option<String>,
    pub exec_max_duration: Option<String>,
    /// OIDC user/platform tokens (a nested map; see [`OidcFileConfig`]).
    pub oidc: Option<OidcFileConfig>,
}

/// Kubernetes ServiceAccount authentication on `token:issue`; present only
/// when `--sandbox-service-account` is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KubeAuthConfig {
    /// `None`: in-cluster configuration.
    pub kube_config: Option<PathBuf>,
    pub service_account: String,
    pub namespaces: Vec<String>,
    pub audience: String,
    #[serde(serialize_with = "ser_secs")]
    pub timeout: Duration,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}s", d.as_secs()))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
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
    /// Kubernetes ServiceAccount tokens on `token:issue` (off when `None`).
    pub kube: Option<KubeAuthConfig>,
    /// OIDC user/platform bearer tokens (off when `None`).
    pub oidc: Option<OidcConfig>,
    /// Sidecar sessions and exec relays.
    pub sessions: crate::sessions::SessionLimits,
    /// Sandbox lifecycle driver; set by `palisade up` (no flag of `gateway serve`).
    pub driver: Option<crate::driver::LocalDriverConfig>,
}

/// `30s`, `15m`, `1h`, `2d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is not a duration; write e.g. 30s, 15m, 1h or 2d"))
}

fn file_duration(v: Option<&String>, key: &str) -> anyhow::Result<Option<Duration>> {
    v.map(|s| parse_duration(s).map_err(|e| anyhow::anyhow!("config key `{key}`: {e}")))
        .transpose()
}

impl Config {
    /// Merge flags/env over the config file over defaults, then validate.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                serde_yaml_ng::from_str::<FileConfig>(&text)
                    .with_context(|| format!("config file {} is invalid", path.display()))?
            }
            None => FileConfig::default(),
        };
        let kube = resolve_kube(&args.kube, &file)?;
        let oidc = resolve_oidc(&args.oidc, file.oidc.as_ref())?;
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
        let sessions = crate::sessions::SessionLimits::resolve(
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
            kube,
            oidc,
            sessions,
            driver: None,
        })
    }

    /// The effective configuration as YAML, secrets replaced by fingerprints.
    pub fn redacted_yaml(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "kebab-case")]
        struct Shown<'a> {
            listen: String,
            admin_listen: String,
            data_dir: &'a Path,
            tls: Option<&'a TlsFiles>,
            insecure_plaintext: bool,
            admin_token_file: Option<&'a Path>,
            admin_token: Option<String>,
            insecure_allow_anonymous: bool,
            issuer: &'a str,
            token_ttl: String,
            bootstrap_ttl: String,
            key_rotation_interval: String,
            leeway: String,
            request_timeout: String,
            header_read_timeout: String,
            max_body_bytes: usize,
            max_concurrent_requests: usize,
            rate_limit_per_sec: f64,
            rate_limit_burst: u32,
            kubernetes: Option<&'a KubeAuthConfig>,
            oidc: Option<&'a OidcConfig>,
        }
        let secs = |d: Duration| format!("{}s", d.as_secs());
        let admin_token =
            self.admin_token_file.as_ref().map(
                |p| match crate::authn::admin_token::AdminToken::load(p) {
                    Ok(t) => format!("<redacted, {}>", t.fingerprint()),
                    Err(e) => format!("<unreadable: {e}>"),
                },
            );
        let shown = Shown {
            listen: self.listen.to_string(),
            admin_listen: self.admin_listen.to_string(),
            data_dir: &self.data_dir,
            tls: self.tls.as_ref(),
            insecure_plaintext: self.tls.is_none(),
            admin_token_file: self.admin_token_file.as_deref(),
            admin_token,
            insecure_allow_anonymous: self.insecure_allow_anonymous,
            issuer: &self.issuer,
            token_ttl: secs(self.token_ttl),
            bootstrap_ttl: secs(self.bootstrap_ttl),
            key_rotation_interval: secs(self.key_rotation_interval),
            leeway: secs(self.leeway),
            request_timeout: secs(self.request_timeout),
            header_read_timeout: secs(self.header_read_timeout),
            max_body_bytes: self.max_body_bytes,
            max_concurrent_requests: self.max_concurrent_requests,
            rate_limit_per_sec: self.rate_limit_per_sec,
            rate_limit_burst: self.rate_limit_burst,
            kubernetes: self.kube.as_ref(),
            oidc: self.oidc.as_ref(),
        };
        serde_yaml_ng::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Default age after which the OIDC JWKS is fetched again.
pub const DEFAULT_OIDC_JWKS_REFRESH: Duration = Duration::from_secs(5 * 60);
/// Default minimum gap between JWKS fetches triggered by unknown `kid`s.
pub const DEFAULT_OIDC_JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
/// Default deadline of one JWKS fetch.
pub const DEFAULT_OIDC_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The OIDC flags of `palisade gateway serve` (boxed in [`ServeArgs`]).
#[derive(Debug, Clone, Default, Args)]
pub struct OidcArgs {
    /// OIDC issuer whose bearer tokens identify users (exact `iss`); enables OIDC.
    #[arg(long, env = "PALISADE_OIDC_ISSUER", value_name = "URL")]
    pub oidc_issuer: Option<String>,
    /// Audience OIDC tokens must carry (exact `aud`).
    #[arg(long, env = "PALISADE_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// HTTPS URL of the issuer's JWKS (fetched, cached, refreshed).
    #[arg(long, env = "PALISADE_OIDC_JWKS_URL", value_name = "URL")]
    pub oidc_jwks_url: Option<String>,
    /// Extra CA (PEM) to trust for the JWKS URL [default: the web PKI roots].
    #[arg(long, env = "PALISADE_OIDC_JWKS_CA_FILE", value_name = "FILE")]
    pub oidc_jwks_ca_file: Option<PathBuf>,
    /// Static JWKS JSON or PEM public key file, instead of --oidc-jwks-url.
    #[arg(long, env = "PALISADE_OIDC_JWKS_FILE", value_name = "FILE")]
    pub oidc_jwks_file: Option<PathBuf>,
    /// Fetch the JWKS again when it is this old [default: 5m].
    #[arg(long, env = "PALISADE_OIDC_JWKS_REFRESH_INTERVAL", value_parser = parse_duration)]
    pub oidc_jwks_refresh_interval: Option<Duration>,
    /// Least time between fetches caused by unknown key ids [default: 30s].
    #[arg(long, env = "PALISADE_OIDC_JWKS_MIN_REFRESH_INTERVAL", value_parser = parse_duration)]
    pub oidc_jwks_min_refresh_interval: Option<Duration>,
    /// Deadline of one JWKS fetch [default: 5s].
    #[arg(long, env = "PALISADE_OIDC_FETCH_TIMEOUT", value_parser = parse_duration)]
    pub oidc_fetch_timeout: Option<Duration>,
    /// Principal OIDC tokens become: `user` (roles) or `platform` (namespaces) [default: user].
    #[arg(long, env = "PALISADE_OIDC_PRINCIPAL", value_name = "user|platform")]
    pub oidc_principal: Option<OidcPrincipalKind>,
    /// Claim holding the subject [default: sub].
    #[arg(long, env = "PALISADE_OIDC_SUBJECT_CLAIM")]
    pub oidc_subject_claim: Option<String>,
    /// Claim whose values are role names (admin, editor, viewer).
    #[arg(long, env = "PALISADE_OIDC_ROLES_CLAIM")]
    pub oidc_roles_claim: Option<String>,
    /// Claim holding group names [default: groups].
    #[arg(long, env = "PALISADE_OIDC_GROUPS_CLAIM")]
    pub oidc_groups_claim: Option<String>,
    /// GROUP=ROLE: members of GROUP get ROLE (repeat, or comma-separate).
    #[arg(
        long,
        env = "PALISADE_OIDC_GROUP_ROLES",
        value_delimiter = ',',
        value_name = "GROUP=ROLE,..."
    )]
    pub oidc_group_role: Vec<String>,
    /// Claim holding a platform principal's namespaces [default: namespaces].
    #[arg(long, env = "PALISADE_OIDC_NAMESPACES_CLAIM")]
    pub oidc_namespaces_claim: Option<String>,
}

/// The `oidc:` map of the YAML config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OidcFileConfig {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_ca_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_refresh_interval: Option<String>,
    pub jwks_min_refresh_interval: Option<String>,
    pub fetch_timeout: Option<String>,
    pub principal: Option<OidcPrincipalKind>,
    pub subject_claim: Option<String>,
    pub roles_claim: Option<String>,
    pub groups_claim: Option<String>,
    pub group_roles: Option<std::collections::BTreeMap<String, Vec<crate::principal::Role>>>,
    pub namespaces_claim: Option<String>,
}

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
    pub group_roles: std::collections::BTreeMap<String, Vec<crate::principal::Role>>,
    pub namespaces_claim: String,
}

fn resolve_oidc(
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
            let role: crate::principal::Role = serde_json::from_value(serde_json::Value::String(
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

fn resolve_kube(args: &KubeArgs, file: &FileConfig) -> anyhow::Result<Option<KubeAuthConfig>> {
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
        if kube_config.is_some() || !namespaces.is_empty() {
            bail!(
                "--kube-config/--sandbox-namespaces do nothing without --sandbox-service-account \
                 NAME (the ServiceAccount sandbox pods run as)"
            );
        }
        return Ok(None);
    };
    if !crate::handlers::valid_label(&service_account) {
        bail!("--sandbox-service-account `{service_account}` is not a valid ServiceAccount name");
    }
    if namespaces.is_empty() {
        bail!(
            "--sandbox-service-account needs --sandbox-namespaces ns1,ns2 (the namespaces sandbox \
             pods run in)"
        );
    }
    if let Some(bad) = namespaces.iter().find(|n| !crate::handlers::valid_label(n)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn args(list: &[&str]) -> ServeArgs {
        T::try_parse_from(std::iter::once("t").chain(list.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn refuses_plaintext_and_anonymous_unless_asked() {
        let e = Config::resolve(&args(&["--admin-token-file", "/x"])).unwrap_err();
        assert!(e.to_string().contains("--insecure-plaintext"), "{e}");
        let e = Config::resolve(&args(&["--insecure-plaintext"])).unwrap_err();
        assert!(e.to_string().contains("--admin-token-file"), "{e}");
        let c = Config::resolve(&args(&[
            "--insecure-plaintext",
            "--insecure-allow-anonymous",
        ]))
        .unwrap();
        assert!(c.tls.is_none() && c.insecure_allow_anonymous);
        assert_eq!(c.issuer, "http://localhost:8443");
        let e =
            Config::resolve(&args(&["--tls-cert", "/c", "--admin-token-file", "/x"])).unwrap_err();
        assert!(e.to_string().contains("together"), "{e}");
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.yaml");
        std::fs::write(
            &file,
            "listen: 127.0.0.1:1111\nadmin-listen: 127.0.0.1:2222\ninsecure-plaintext: true\n\
             insecure-allow-anonymous: true\ntoken-ttl: 5m\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = Config::resolve(&args(&["--config", f, "--listen", "127.0.0.1:3333"])).unwrap();
        assert_eq!(c.listen.port(), 3333);
        assert_eq!(c.admin_listen.port(), 2222);
        assert_eq!(c.token_ttl, Duration::from_secs(300));
        assert_eq!(c.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        std::fs::write(&file, "listn: 1\n").unwrap();
        let e = Config::resolve(&args(&["--config", f])).unwrap_err();
        assert!(format!("{e:#}").contains("listn"), "{e:#}");
    }

    #[test]
    fn kube_auth_needs_a_service_account_and_namespaces() {
        let base = ["--insecure-plaintext", "--insecure-allow-anonymous"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            Config::resolve(&args(&v))
        };
        assert_eq!(with(&[]).unwrap().kube, None);
        let e = with(&["--kube-config", "/k"]).unwrap_err();
        assert!(e.to_string().contains("--sandbox-service-account"), "{e}");
        let e = with(&["--sandbox-service-account", "sbx"]).unwrap_err();
        assert!(e.to_string().contains("--sandbox-namespaces"), "{e}");
        let e = with(&[
            "--sandbox-service-account",
            "Bad_SA",
            "--sandbox-namespaces",
            "a",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("not a valid"), "{e}");
        let c = with(&[
            "--sandbox-service-account",
            "sbx",
            "--sandbox-namespaces",
            "a,b",
            "--kube-timeout",
            "2s",
        ])
        .unwrap();
        let k = c.kube.clone().unwrap();
        assert_eq!(k.namespaces, vec!["a", "b"]);
        assert_eq!(k.audience, DEFAULT_TOKEN_AUDIENCE);
        assert_eq!(k.timeout, Duration::from_secs(2));
        assert_eq!(k.kube_config, None);
        let shown = c.redacted_yaml();
        assert!(shown.contains("service-account: sbx"), "{shown}");
        assert!(shown.contains("timeout: 2s"), "{shown}");
    }
}

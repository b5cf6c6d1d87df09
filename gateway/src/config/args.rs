//! The flags of `palisade gateway serve` (clap), each also read from
//! `PALISADE_<NAME>`. Only their shape lives here: what they mean together is
//! [`super::Config::resolve`].
//!
//! Must never: give a flag a default here (a flag left out must fall back to
//! the config file, then to the defaults in [`super`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::authn::oidc::OidcPrincipalKind;
use crate::duration::parse_duration;

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
    /// Where records live (boxed, like the other groups).
    #[command(flatten)]
    pub store: Box<StoreArgs>,
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

/// The store flags of `palisade gateway serve` (boxed in [`ServeArgs`]).
#[derive(Debug, Clone, Default, Args)]
pub struct StoreArgs {
    /// Where records live: `embedded` (one redb file in --data-dir; one
    /// replica) or `kubernetes` (custom resources, Secrets and a ConfigMap in
    /// --store-namespace; any number of replicas) [default: embedded].
    #[arg(long, env = "PALISADE_STORE", value_name = "KIND")]
    pub store: Option<StoreKind>,
    /// Namespace of the Kubernetes store's own objects [default: the pod's
    /// namespace, from $POD_NAMESPACE or the ServiceAccount mount].
    #[arg(long, env = "PALISADE_STORE_NAMESPACE", value_name = "NS")]
    pub store_namespace: Option<String>,
    /// How long the `palisade-gateway` Lease holds without renewal before
    /// another replica may take it (`--store kubernetes`) [default: 15s].
    #[arg(long, env = "PALISADE_LEASE_DURATION", value_parser = parse_duration)]
    pub lease_duration: Option<Duration>,
}

/// `--store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    Embedded,
    Kubernetes,
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

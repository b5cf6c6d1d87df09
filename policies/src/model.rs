//! The policy document as written by people: a Kubernetes-shaped YAML object
//! with camelCase fields. Deserialisation only checks shape; every semantic
//! rule lives in [`crate::validate`].

use std::collections::BTreeMap;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `apiVersion` every policy must carry.
pub const API_VERSION: &str = "palisade.dev/v1alpha1";
/// `kind` every policy must carry.
pub const KIND: &str = "Policy";

/// A Palisade egress policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Must be `palisade.dev/v1alpha1`.
    #[schemars(extend("const" = API_VERSION))]
    pub api_version: String,
    /// Must be `Policy`.
    #[schemars(extend("const" = KIND))]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// DNS-label-like name (lowercase alphanumerics and `-`, at most 63 characters).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// `enforce` (default) blocks denied traffic; `audit` logs and counts
    /// would-be denials and lets the traffic pass.
    #[serde(default)]
    pub mode: Mode,
    /// `policy` (default): only names that some egress rule matches resolve.
    /// `forward`: every name resolves (connections are still checked).
    #[serde(default)]
    pub dns: DnsMode,
    /// Egress rules. An empty list is refused: write `denyAll: true` instead.
    #[serde(default)]
    pub egress: Vec<EgressRule>,
    /// Set to `true` (with no egress rules) to say on purpose that nothing may leave.
    #[serde(default)]
    pub deny_all: bool,
    /// Named credentials that egress rules refer to by `credential`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, Credential>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DnsMode {
    #[default]
    Policy,
    Forward,
}

/// One egress rule: which hosts and ports, how TLS is handled, which HTTP
/// requests pass, and which credential is injected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// Rule name (DNS-label-like, unique in the policy). Appears in metrics,
    /// audit events and 403 bodies.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: String,
    /// Exact names (`api.github.com`), one leading-label wildcard
    /// (`*.githubusercontent.com`: exactly one extra label, not the parent
    /// itself), or IP literals. Case-insensitive; a trailing dot is ignored;
    /// internationalised names are matched in their IDNA (punycode) form.
    #[schemars(length(min = 1))]
    pub hosts: Vec<String>,
    /// Destination ports, 1–65535. Must not be empty.
    #[schemars(length(min = 1), inner(range(min = 1, max = 65535)))]
    pub ports: Vec<u32>,
    /// `inspect` terminates TLS with the sandbox CA; `passthrough` splices it.
    /// Default: `inspect` when `http` or `credential` is set, else `passthrough`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMode>,
    /// HTTP request rules (need `tls: inspect` or a plain-HTTP port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRules>,
    /// Name of an entry in `spec.credentials` to inject on matching requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Allow connections whose first bytes are neither TLS nor HTTP (opaque
    /// TCP) to these hosts and ports. Default `false`.
    #[serde(default)]
    pub opaque_tcp: bool,
    /// Opt-in for resolved addresses in private ranges (RFC 1918, ULA, CGNAT).
    /// Loopback, link-local and unspecified ranges are never accepted here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub allowed_cidrs: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TlsMode {
    Inspect,
    Passthrough,
}

/// HTTP request rules. Either `access` (a preset) or explicit `allow` rules;
/// `deny` rules are checked first in both cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<RequestRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<RequestRule>,
}

/// Presets: `read-only` = GET, HEAD, OPTIONS on every path; `read-write` adds
/// POST, PUT, PATCH; `full` = every method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadOnly,
    ReadWrite,
    Full,
}

/// One request matcher. All given parts must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRule {
    /// Methods (upper-case tokens). Absent = any method; an explicitly empty
    /// list (`methods: []`) is refused by the parser as ambiguous.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Path glob starting with `/`: `*` matches within one segment, `**` any
    /// number of segments. Absent = any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Query parameters that must be present, each value a glob (`*` = any value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
}

/// A named credential: where its value comes from and how it is injected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credential {
    /// Where the value comes from: a mapping with exactly one key naming the
    /// source (`from: {secret: {name: x, key: y}}`).
    #[serde(with = "serde_yaml_ng::with::singleton_map")]
    #[schemars(with = "CredentialSource")]
    pub from: CredentialSource,
    #[serde(default)]
    pub inject: Injection,
}

/// Exactly one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum CredentialSource {
    /// A secret held by the gateway (embedded store or Kubernetes Secret).
    Secret { name: String, key: String },
    /// A file readable only by the sidecar; re-read on change.
    File(String),
    /// An environment variable of the sidecar process.
    Env(String),
    /// A SPIFFE JWT-SVID exchanged at an OAuth token endpoint.
    TokenGrant(TokenGrant),
    /// A gateway-minted JWT bound to one upstream audience.
    WorkloadToken { audience: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenGrant {
    /// Token endpoint URL (https; http only for loopback and cluster-local names).
    pub token_endpoint: String,
    /// `clientCredentials` (RFC 7523 client assertion) or `tokenExchange` (RFC 8693).
    pub grant: GrantType,
    /// Audience requested for the JWT-SVID.
    pub svid_audience: String,
    /// `audience` sent to the token endpoint (the API the token is for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Scopes requested (sent space-separated as `scope`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Per-endpoint `audience` / `scopes`: on a request whose host, port and
    /// path a selector matches, the most specific matching override replaces
    /// the grant's `audience` and/or `scopes` (a field the override omits keeps
    /// the grant's value). Two overrides that can match the same request where
    /// neither is more specific than the other are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<GrantOverride>,
}

/// One per-endpoint override of a token grant. The selector is `host`
/// (required, one exact host name or IP literal), `port` (absent = any port)
/// and `path` (a literal prefix ending at a segment boundary: `/v1` matches
/// `/v1` and `/v1/orders`, not `/v10`; absent = any path). It must set
/// `audience`, `scopes`, or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantOverride {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GrantType {
    ClientCredentials,
    TokenExchange,
}

/// How a credential is put on the request. Default: `Authorization: Bearer <value>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Injection {
    #[serde(default = "default_header")]
    pub header: String,
    /// Prefix written before the value (`Bearer`, `token`, ...). Absent = raw value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

fn default_header() -> String {
    "Authorization".to_owned()
}

impl Default for Injection {
    fn default() -> Self {
        Self {
            header: default_header(),
            scheme: Some("Bearer".to_owned()),
        }
    }
}

/// The request selector of a [`GrantOverride`], normalised: what the sidecar
/// matches requests against and what validation compares overrides with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OverrideSelector {
    /// Normal form of the host (lower-case name without trailing dot, or the
    /// canonical address text), as [`crate::host::with_lookup_key`] gives it.
    pub host: String,
    pub port: Option<u16>,
    /// Literal path prefix without a trailing `/` (except `/` itself).
    pub path: Option<String>,
}

impl GrantOverride {
    /// The normalised selector, or the offending field (`host`, `port`,
    /// `path`) and a sentence saying what is wrong.
    pub fn selector(&self) -> Result<OverrideSelector, (&'static str, String)> {
        let parsed = crate::host::parse_pattern(&self.host).map_err(|e| ("host", e))?;
        let host = match parsed {
            crate::host::HostPattern::Exact(name) => name,
            crate::host::HostPattern::Ip(ip) => ip.to_string(),
            crate::host::HostPattern::Wildcard(_) => {
                return Err((
                    "host",
                    format!(
                        "host `{}` is a wildcard; an override names one exact host",
                        self.host
                    ),
                ));
            }
        };
        let port = match self.port {
            None => None,
            Some(p) => match u16::try_from(p) {
                Ok(p) if p != 0 => Some(p),
                _ => {
                    return Err((
                        "port",
                        format!("port {p} is out of range; ports are 1-65535"),
                    ));
                }
            },
        };
        let path = match &self.path {
            None => None,
            Some(p) => {
                if !p.starts_with('/')
                    || p.chars().any(|c| {
                        c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '*')
                    })
                    || p.split('/').any(|seg| seg == "..")
                {
                    return Err((
                        "path",
                        format!(
                            "path `{p}` is invalid: write a literal path prefix starting with \
                             `/` (no `*`, `?`, `#`, `..` or whitespace), such as `/v1/orders`"
                        ),
                    ));
                }
                let trimmed = p.trim_end_matches('/');
                Some(if trimmed.is_empty() { "/" } else { trimmed }.to_owned())
            }
        };
        Ok(OverrideSelector { host, port, path })
    }
}

impl OverrideSelector {
    /// Whether a request to `host` (already in normal form), `port` and `path`
    /// (without the query) is selected.
    pub fn matches(&self, host: &str, port: u16, path: &str) -> bool {
        self.host == host
            && self.port.is_none_or(|p| p == port)
            && self
                .path
                .as_deref()
                .is_none_or(|p| path_has_prefix(path, p))
    }

    /// Every request `self` selects is also selected by `other`.
    pub fn within(&self, other: &OverrideSelector) -> bool {
        self.host == other.host
            && other.port.is_none_or(|p| self.port == Some(p))
            && other
                .path
                .as_deref()
                .is_none_or(|p| self.path.as_deref().is_some_and(|s| path_has_prefix(s, p)))
    }

    /// Some request is selected by both.
    pub fn overlaps(&self, other: &OverrideSelector) -> bool {
        self.host == other.host
            && (self.port.is_none() || other.port.is_none() || self.port == other.port)
            && match (self.path.as_deref(), other.path.as_deref()) {
                (Some(a), Some(b)) => path_has_prefix(a, b) || path_has_prefix(b, a),
                _ => true,
            }
    }
}

/// `prefix` is `/`, equals `path`, or is followed in `path` by `/`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

//! The hardened OAuth token client: hyper HTTP/1.1 over rustls, nothing implicit.
//!
//! * HTTPS only; plain HTTP only to loopback addresses, `localhost` and in-cluster `*.svc` /
//!   `*.svc.cluster.local` names.
//! * No redirects (a 3xx is an error), no proxy (the environment is never read), connect
//!   timeout here and a total timeout around the whole exchange (in `client`).
//! * The response body is read up to a cap; `access_token` must be token68.
//! * OAuth `error` / `error_description` are reduced to printable ASCII, stripped of anything
//!   token-like and truncated before they reach an error message.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use palisade_policy::model::GrantType;
use rustls_pki_types::ServerName;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::TokenKey;
use crate::credentials::Secret;

pub(super) const CLIENT_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub(super) const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub(super) const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Longest OAuth `error` code and `error_description` kept in messages.
const MAX_ERROR_CODE: usize = 64;
const MAX_ERROR_DESCRIPTION: usize = 200;
/// Runs of token characters at least this long are redacted from relayed text.
const TOKEN_LIKE_RUN: usize = 24;

/// A failed exchange: a bounded metrics label and an operator-facing message (no tokens).
#[derive(Debug)]
pub(super) struct GrantError {
    pub outcome: &'static str,
    pub message: String,
}

impl GrantError {
    pub fn new(outcome: &'static str, message: String) -> Self {
        Self { outcome, message }
    }
}

/// An issued access token and its lifetime (`expires_in`), if the endpoint gave one.
#[derive(Debug)]
pub(super) struct Token {
    pub secret: Secret,
    pub lifetime: Option<Duration>,
}

/// A token endpoint URL, checked.
#[derive(Debug)]
pub(super) struct Endpoint {
    https: bool,
    /// Host without IPv6 brackets (for DNS / SNI).
    host: String,
    port: u16,
    /// `Host` header value.
    authority: String,
    path_and_query: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, GrantError> {
        let refuse = |why: &str| {
            GrantError::new(
                "refused_endpoint",
                format!("token endpoint {} {why}", display_endpoint(url)),
            )
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| refuse("is not a valid absolute URL"))?;
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => return Err(refuse("must use https")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| refuse("has no host"))?
            .as_str();
        if authority.contains('@') {
            return Err(refuse("carries user credentials; remove them from the URL"));
        }
        let raw_host = uri.host().ok_or_else(|| refuse("has no host"))?;
        let host = raw_host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(raw_host)
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(refuse("has no host"));
        }
        if !https && !plain_http_allowed(&host) {
            return Err(refuse(
                "uses plain http; tokens travel over https (http is allowed only for loopback \
                 and in-cluster `*.svc` / `*.svc.cluster.local` names)",
            ));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(Self {
            https,
            host,
            port,
            authority: authority.to_owned(),
            path_and_query,
        })
    }
}

/// Loopback addresses, `localhost`, and Kubernetes service names.
pub(super) fn plain_http_allowed(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            host == "localhost" || host.ends_with(".svc") || host.ends_with(".svc.cluster.local")
        }
    }
}

/// `scheme://authority/path` of an endpoint URL for messages (no query, no user info).
pub(super) fn display_endpoint(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => {
            let scheme = uri.scheme_str().unwrap_or("?");
            let host = uri.host().unwrap_or("?");
            let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            sanitize(&format!("{scheme}://{host}{port}{}", uri.path()), 200, None)
        }
        Err(_) => "(an unparseable URL)".to_owned(),
    }
}

/// The `application/x-www-form-urlencoded` body of the grant request.
pub(super) fn form(key: &TokenKey, svid: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = match key.grant {
        GrantType::ClientCredentials => vec![
            ("grant_type", "client_credentials"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", svid),
        ],
        GrantType::TokenExchange => vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", svid),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ],
    };
    if let Some(a) = key.audience.as_deref() {
        pairs.push(("audience", a));
    }
    if let Some(s) = key.scope.as_deref() {
        pairs.push(("scope", s));
    }
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        url_encode(k, &mut out);
        out.push('=');
        url_encode(v, &mut out);
    }
    out
}

fn url_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Aborts the connection task when the exchange is done or dropped (total timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// POST the grant and read the token.
pub(super) async fn post(
    endpoint: &Endpoint,
    form: String,
    svid: &str,
    tls: &Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    max_body: usize,
) -> Result<Token, GrantError> {
    let io = tokio::time::timeout(connect_timeout, connect(endpoint, tls))
        .await
        .unwrap_or_else(|_| {
            Err(GrantError::new(
                "connect",
                format!(
                    "cannot connect to {}:{} within {connect_timeout:?}",
                    endpoint.host, endpoint.port
                ),
            ))
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| GrantError::new("connect", format!("HTTP handshake failed: {e}")))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        // Errors surface through the request future below.
        let _ = conn.await;
    }));
    let req = Request::post(endpoint.path_and_query.as_str())
        .header(HOST, endpoint.authority.as_str())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| GrantError::new("bad_response", format!("cannot build the request: {e}")))?;
    let resp = sender.send_request(req).await.map_err(|e| {
        GrantError::new(
            "connect",
            format!("the token endpoint broke the exchange: {e}"),
        )
    })?;
    let status = resp.status();
    if status.is_redirection() {
        return Err(GrantError::new(
            "redirect",
            format!(
                "the token endpoint answered HTTP {} (a redirect); the sidecar never follows \
                 redirects: put the final token URL in tokenEndpoint",
                status.as_u16()
            ),
        ));
    }
    let body = Limited::new(resp.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                GrantError::new(
                    "bad_response",
                    format!("the token endpoint's response is larger than {max_body} bytes"),
                )
            } else {
                GrantError::new(
                    "connect",
                    format!("reading the token endpoint's response failed: {e}"),
                )
            }
        })?
        .to_bytes();
    if status.is_success() {
        parse_success(&body)
    } else {
        Err(parse_failure(status, &body, svid))
    }
}

/// Tries of the system resolver before the exchange fails (a resolver answers "try again"
/// now and then; the exchange's total timeout still bounds the whole).
const RESOLVE_TRIES: u32 = 3;
const RESOLVE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// The endpoint's addresses from the system resolver (`/etc/resolv.conf` with its search
/// list, so short in-cluster `*.svc` names work), retried on failure.
async fn resolve(endpoint: &Endpoint) -> Result<Vec<std::net::SocketAddr>, GrantError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await {
            Ok(addrs) => return Ok(addrs.collect()),
            Err(e) if tries >= RESOLVE_TRIES => {
                return Err(GrantError::new(
                    "connect",
                    format!("cannot resolve {} ({tries} tries): {e}", endpoint.host),
                ));
            }
            Err(e) => {
                tracing::debug!(host = %endpoint.host, error = %e, tries,
                    "resolving the token endpoint failed; retrying");
                tokio::time::sleep(RESOLVE_RETRY_DELAY * tries).await;
            }
        }
    }
}

async fn connect(
    endpoint: &Endpoint,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Box<dyn Io>, GrantError> {
    let addrs = resolve(endpoint).await?;
    let mut last = None;
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let tcp = tcp.ok_or_else(|| {
        GrantError::new(
            "connect",
            format!(
                "cannot connect to {}:{}: {}",
                endpoint.host,
                endpoint.port,
                last.map_or_else(|| "no address".to_owned(), |e| e.to_string())
            ),
        )
    })?;
    let _ = tcp.set_nodelay(true);
    if !endpoint.https {
        return Ok(Box::new(tcp));
    }
    let name = ServerName::try_from(endpoint.host.clone()).map_err(|_| {
        GrantError::new(
            "tls",
            format!("`{}` is not a valid TLS server name", endpoint.host),
        )
    })?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| {
            GrantError::new(
                "tls",
                format!(
                    "TLS with {} failed: {e}; if it uses a private CA, pass it with --upstream-ca",
                    endpoint.host
                ),
            )
        })?;
    Ok(Box::new(stream))
}

#[derive(Deserialize)]
struct Success {
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Failure {
    error: Option<String>,
    error_description: Option<String>,
}

fn parse_success(body: &[u8]) -> Result<Token, GrantError> {
    let bad = |why: &str| GrantError::new("bad_response", format!("the token endpoint {why}"));
    let parsed: Success = serde_json::from_slice(body)
        .map_err(|_| bad("answered 2xx with a body that is not an OAuth token response (JSON)"))?;
    let token = parsed
        .access_token
        .ok_or_else(|| bad("answered without an access_token"))?;
    if !is_token68(&token) {
        return Err(GrantError::new(
            "invalid_token",
            "the token endpoint returned an access_token that is not token68 (it contains \
             whitespace, CR/LF or other characters a Bearer token may not carry); refusing to \
             inject it"
                .to_owned(),
        ));
    }
    let secret = Secret::new(&token).map_err(|e| {
        GrantError::new(
            "invalid_token",
            format!("the access_token is unusable: {e}"),
        )
    })?;
    let lifetime = match parsed.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Duration::from_secs),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok().map(Duration::from_secs),
        Some(_) => None,
    };
    Ok(Token { secret, lifetime })
}

fn parse_failure(status: StatusCode, body: &[u8], svid: &str) -> GrantError {
    let code = status.as_u16();
    match serde_json::from_slice::<Failure>(body) {
        Ok(Failure {
            error: Some(error),
            error_description,
        }) => {
            let error = sanitize(&error, MAX_ERROR_CODE, Some(svid));
            let description = error_description
                .map(|d| format!(": {}", sanitize(&d, MAX_ERROR_DESCRIPTION, Some(svid))))
                .unwrap_or_default();
            GrantError::new(
                "oauth_error",
                format!(
                    "the token endpoint refused the grant (HTTP {code}, error `{error}`{description})"
                ),
            )
        }
        _ => GrantError::new(
            "http_status",
            format!("the token endpoint answered HTTP {code} without an OAuth error response"),
        ),
    }
}

/// Printable ASCII only, `secret` and token-like runs replaced by `[redacted]`, at most `max`
/// characters.
pub(super) fn sanitize(text: &str, max: usize, secret: Option<&str>) -> String {
    let text = match secret {
        Some(s) if !s.is_empty() => text.replace(s, "[redacted]"),
        _ => text.to_owned(),
    };
    let mut out = String::with_capacity(text.len().min(max + 3));
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= TOKEN_LIKE_RUN {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || "-._~+/=".contains(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(if (' '..='~').contains(&c) { c } else { '?' });
        }
    }
    flush(&mut run, &mut out);
    if out.len() > max {
        // ASCII only, so any byte index is a char boundary.
        out.truncate(max);
        out.push_str("...");
    }
    out
}

/// RFC 7235 token68.
pub(super) fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

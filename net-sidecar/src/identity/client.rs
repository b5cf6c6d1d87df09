//! A small HTTP/1.1 client for the gateway API: one connection per request (calls are rare:
//! token refresh, workload tokens, audit batches), plaintext or rustls, with upgrades for
//! relay streams.
//!
//! Owns: dialling (connect timeout), TLS verification against `--gateway-ca` or the
//! webpki + system roots, bounded response bodies, and mapping answers to [`GatewayError`].
//! Must never: log or put in an error the bearer token or a response body that may hold one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::settings::GatewaySettings;

/// Time to establish TCP (+TLS) to the gateway.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole unary call (request → complete response body).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest unary response body accepted.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why a gateway call failed. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot reach the gateway at {0}")]
    Connect(String),
    #[error("the gateway call timed out")]
    Timeout,
    #[error("the gateway refused the sandbox credential (401): {0}")]
    Unauthorized(String),
    #[error("the gateway answered {status}: {error}")]
    Status { status: StatusCode, error: String },
    #[error("bad answer from the gateway: {0}")]
    Protocol(String),
}

impl GatewayError {
    /// Whether the gateway no longer recognises the sandbox at all (deleted, unknown).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, GatewayError::Unauthorized(_))
    }
}

/// Something a request can run over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Where and how to reach the gateway.
#[derive(Clone)]
pub struct GatewayClient {
    base: Uri,
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn roots(ca: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let Some(path) = ca else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Ok(pem) = std::fs::read(crate::tls::SYSTEM_BUNDLE) {
            let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
                .flatten()
                .collect();
            roots.add_parsable_certificates(certs);
        }
        return Ok(roots);
    };
    let pem = std::fs::read(path).with_context(|| {
        format!(
            "cannot read --gateway-ca {}; give a readable PEM file with the gateway's CA",
            path.display()
        )
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--gateway-ca {} is not valid PEM", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "--gateway-ca {} holds no CERTIFICATE block",
        path.display()
    );
    for c in certs {
        roots
            .add(c)
            .with_context(|| format!("--gateway-ca {}: unusable certificate", path.display()))?;
    }
    Ok(roots)
}

impl GatewayClient {
    pub fn new(settings: &GatewaySettings) -> anyhow::Result<Self> {
        let host = settings
            .base
            .host()
            .context("the gateway URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = settings
            .base
            .port_u16()
            .unwrap_or(if settings.tls { 443 } else { 80 });
        let tls = if settings.tls {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .context("rustls refuses TLS 1.2/1.3 with the ring provider")?
                .with_root_certificates(roots(settings.ca.as_deref())?)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone()).with_context(|| {
                format!("the gateway host `{host}` is not a valid TLS server name")
            })?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self {
            base: settings.base.clone(),
            host,
            port,
            tls,
        })
    }

    /// A fresh connection (TCP, plus TLS for https).
    async fn dial(&self) -> Result<Box<dyn Io>, GatewayError> {
        let what = || format!("{}:{}", self.host, self.port);
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| GatewayError::Connect(format!("{} (connect timed out)", what())))?
        .map_err(|e| GatewayError::Connect(format!("{} ({e})", what())))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| {
                            GatewayError::Connect(format!("{} (TLS handshake timed out)", what()))
                        })?
                        .map_err(|e| {
                            GatewayError::Connect(format!(
                                "{} (TLS: {e}; check --gateway-ca)",
                                what()
                            ))
                        })?;
                Ok(Box::new(tls))
            }
        }
    }

    /// Build a request to `path` with `bearer`.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>, GatewayError> {
        let uri = format!(
            "{}://{}{path}",
            self.base.scheme_str().unwrap_or("https"),
            self.base.authority().map(|a| a.as_str()).unwrap_or("")
        );
        let mut auth = HeaderValue::from_str(&format!("Bearer {bearer}"))
            .map_err(|_| GatewayError::Protocol("the token is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let authority = self.base.authority().map(|a| a.as_str()).unwrap_or("");
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, authority)
            .header(header::AUTHORIZATION, auth)
            .header(
                header::USER_AGENT,
                concat!("palisade-sidecar/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| GatewayError::Protocol(format!("cannot build the request: {e}")))
    }

    /// Send one request on a new connection and return the response head (the body streams).
    /// The connection supports upgrades (relay).
    pub async fn open(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, GatewayError> {
        let io = self.dial().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| GatewayError::Connect(format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                tracing::debug!(error = %err, "gateway connection ended with an error");
            }
        });
        tokio::time::timeout(CALL_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| GatewayError::Timeout)?
            .map_err(|e| GatewayError::Connect(format!("request failed: {e}")))
    }

    /// A unary JSON call: the parsed 2xx answer, or the gateway's error.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<T, GatewayError> {
        let bytes = tokio::time::timeout(CALL_TIMEOUT, async {
            let resp = self.open(req).await?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| GatewayError::Protocol(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, GatewayError>((status, body))
        })
        .await
        .map_err(|_| GatewayError::Timeout)??;
        let (status, body) = bytes;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        serde_json::from_slice(&body)
            .map_err(|e| GatewayError::Protocol(format!("unexpected JSON ({e})")))
    }
}

/// Map a non-2xx answer: the `error`/`reason` of the gateway's JSON body, truncated.
pub fn status_error(status: StatusCode, body: &[u8]) -> GatewayError {
    let error = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            // Either a flat ErrorBody or {error: ErrorBody}.
            let flat = |o: &serde_json::Value| {
                let code = o.get("error").and_then(|x| x.as_str())?;
                let reason = o.get("reason").and_then(|x| x.as_str()).unwrap_or("");
                Some(format!("{code}: {reason}"))
            };
            match e {
                serde_json::Value::String(code) => Some(format!(
                    "{code}: {}",
                    v.get("reason").and_then(|x| x.as_str()).unwrap_or("")
                )),
                obj => flat(obj),
            }
        })
        .unwrap_or_else(|| "no error body".to_owned());
    let error: String = error
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    if status == StatusCode::UNAUTHORIZED {
        GatewayError::Unauthorized(error)
    } else {
        GatewayError::Status { status, error }
    }
}

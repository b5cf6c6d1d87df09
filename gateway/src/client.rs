//! A small HTTP client for the gateway API (the operator CLI and tests):
//! one request per connection, HTTP/1.1, plaintext or rustls with a CA file.
//! Must never: print or log the bearer token it sends.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where and how to reach a gateway.
#[derive(Clone)]
pub struct GatewayClient {
    base: Uri,
    token: Option<String>,
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// An answer: status, headers, body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("the gateway answered with invalid JSON")
    }
}

impl GatewayClient {
    /// `base` is `http://host:port` or `https://host:port`; `ca_file` adds a
    /// trusted CA for https (otherwise the Mozilla roots are not bundled, so
    /// https needs a CA file).
    pub fn new(base: &str, token: Option<String>, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let base: Uri = base
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("`{base}` is not a URL; use e.g. https://gateway:8443"))?;
        let tls = match base.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let Some(ca) = ca_file else {
                    bail!(
                        "https gateways need --ca-file (the CA that signed the gateway's certificate)"
                    );
                };
                let pem = std::fs::read(ca)
                    .with_context(|| format!("cannot read CA file {}", ca.display()))?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    roots
                        .add(cert.with_context(|| format!("{} is not PEM", ca.display()))?)
                        .with_context(|| {
                            format!("{} holds an unusable certificate", ca.display())
                        })?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .context("TLS setup")?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(TlsConnector::from(Arc::new(config)))
            }
            _ => bail!("gateway URL must start with http:// or https://"),
        };
        Ok(Self { base, token, tls })
    }

    /// Send one request; `path` includes any query.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        self.send_with(method, path, content_type, body, &[]).await
    }

    /// Like [`send`](Self::send) with extra headers.
    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut req = self.builder(method, path)?;
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).context("invalid request")?;
        exchange(TokioIo::new(self.dial().await?), req).await
    }

    /// A request to `path` with the gateway's `Host` and, if set, the bearer token.
    fn builder(&self, method: Method, path: &str) -> anyhow::Result<http::request::Builder> {
        let host = self.base.host().context("gateway URL has no host")?;
        let authority = self
            .base
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.to_owned());
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        Ok(req)
    }

    /// A connection to the gateway: TCP, then TLS unless the URL is plaintext.
    async fn dial(&self) -> anyhow::Result<Box<dyn UpgradeIo>> {
        let host = self.base.host().context("gateway URL has no host")?;
        let host = host.trim_matches(['[', ']']);
        let port = self
            .base
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port))
            .await
            .with_context(|| format!("cannot connect to the gateway at {}", self.base))?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = ServerName::try_from(host.to_owned())
                    .context("gateway host is not a valid TLS name")?;
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .with_context(|| format!("TLS handshake with {} failed", self.base))?,
                )
            }
        })
    }
}

/// A byte stream to the gateway, plaintext or TLS (for protocol upgrades).
pub trait UpgradeIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> UpgradeIo for T {}

impl GatewayClient {
    /// Send a bodiless request that switches protocols (`Connection: upgrade`,
    /// `Upgrade: protocol`), e.g. `POST /v1/sandboxes/{id}/exec`. `Ok(Ok(stream))`
    /// after `101 Switching Protocols`; `Ok(Err(answer))` for any other answer.
    pub async fn upgrade(
        &self,
        method: Method,
        path: &str,
        protocol: &str,
    ) -> anyhow::Result<Result<hyper::upgrade::Upgraded, Answer>> {
        let req = self
            .builder(method, path)?
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, protocol)
            .body(Full::new(Bytes::new()))
            .context("invalid request")?;
        let io = self.dial().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .context("HTTP handshake with the gateway failed")?;
        // Drives the connection until the upgrade hands the stream over.
        tokio::spawn(conn.with_upgrades());
        let resp = sender
            .send_request(req)
            .await
            .context("the gateway closed the connection")?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .context("reading the gateway's answer failed")?
                .to_bytes();
            return Ok(Err(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            }));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .context("the gateway switched protocols but the upgrade failed")?;
        Ok(Ok(upgraded))
    }
}

async fn exchange<IO>(io: IO, req: http::Request<Full<Bytes>>) -> anyhow::Result<Answer>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake with the gateway failed")?;
    let driver = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .context("the gateway closed the connection")?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .context("reading the gateway's answer failed")?
        .to_bytes();
    driver.abort();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

//! The upstream side of HTTP: a hyper HTTP/1.1 client towards a decision's addresses.
//!
//! Owns: sending the judged request — inspected requests over verified TLS for the SNI on
//! pooled connections ([`super::pool`]), plain requests on the connection's own upstream (reused
//! while it stays one of the decision's addresses) — relaying the answer and a WebSocket
//! upgrade, and telling the agent's broken body apart from the upstream's failure.
//! Must never: dial anything but the decision's addresses, reuse a connection across
//! server names or credentials, or relay a protocol switch but WebSocket.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::headers::{permitted_upgrade, strip_hop_by_hop, to_upstream};
use super::pool::PoolKey;
use super::server::Body;
use super::{HttpProxy, UpstreamBody};
use crate::admin::metrics::UpstreamError;
use crate::proxy::decide::{Handling, Plan, Refusal};
use crate::proxy::inspect::is_certificate_error;
use crate::proxy::splice::splice;
use crate::proxy::upstream;

/// This connection's upstream for plain HTTP.
pub(super) struct Upstream {
    addr: SocketAddr,
    sender: SendRequest<UpstreamBody>,
}

impl Upstream {
    /// An upstream connection that is already established (CONNECT tunnels).
    pub(super) async fn over(tcp: TcpStream) -> Option<Self> {
        let addr = tcp.peer_addr().ok()?;
        let sender = handshake(tcp).await.ok()?;
        Some(Self { addr, sender })
    }
}

impl HttpProxy {
    /// Send the judged request to one of `plan`'s addresses as its handling says — over
    /// verified TLS on a pooled connection when inspected, on this connection's upstream
    /// otherwise — and relay the answer (and a WebSocket upgrade). `credential` is the
    /// injected credential's name (pool key).
    pub(super) async fn forward(
        &self,
        mut req: Request<UpstreamBody>,
        plan: &Plan,
        injection: Option<(HeaderName, HeaderValue)>,
        credential: Option<&str>,
    ) -> Result<Response<Body>, Refusal> {
        let upgrade = permitted_upgrade(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        to_upstream(&mut req, upgrade.as_ref(), injection);
        let broken = req.body().broken();

        let failed = |why: &'static str| {
            if broken.load(Ordering::Relaxed) {
                // The agent's body broke while it was streamed: the upstream connection was
                // aborted before the end of the body, and the fault is the agent's (counted
                // by the raw stream check, which saw the break).
                return Refusal::broken_body(None);
            }
            // Counted where it failed (dialling, TLS, the exchange).
            Refusal::Upstream { why, count: None }
        };
        let mut slot_guard = None;
        let (mut resp, pooled) = if let Handling::Inspect { sni } = &plan.handling {
            match self.send_inspected(sni, &plan.dial, credential, req).await {
                Ok((resp, key, sender)) => (resp, Some((key, sender))),
                Err(why) => return Err(failed(why)),
            }
        } else {
            // Plain HTTP (`Handling::Http`; nothing else reaches the HTTP path).
            let mut slot = self.upstream.lock().await;
            let sender = match self.sender(&mut slot, &plan.dial).await {
                Ok(sender) => sender,
                Err(_) => return Err(failed("cannot connect to the upstream")),
            };
            let resp = match sender.send_request(req).await {
                Ok(resp) => resp,
                Err(err) => {
                    tracing::debug!(error = %err, "upstream HTTP exchange failed");
                    if !broken.load(Ordering::Relaxed) {
                        self.shared.metrics.upstream_error(UpstreamError::Http);
                    }
                    *slot = None;
                    return Err(failed("the upstream failed to answer"));
                }
            };
            slot_guard = Some(slot);
            (resp, None)
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let switched = permitted_upgrade(resp.headers());
            let Some(client_upgrade) = client_upgrade.filter(|_| switched.is_some()) else {
                // A switch nobody asked for (the request's Upgrade was removed) or to another
                // protocol than WebSocket: the upstream connection is not reused or relayed.
                if let Some(slot) = slot_guard.as_mut() {
                    **slot = None;
                }
                drop(pooled);
                return Err(Refusal::Upstream {
                    why: "the upstream switched to a protocol the sidecar does not relay",
                    count: Some(UpstreamError::Http),
                });
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            strip_hop_by_hop(resp.headers_mut(), switched.as_ref(), None);
            // The upstream connection now belongs to the upgraded protocol.
            if let Some(slot) = slot_guard.as_mut() {
                **slot = None;
            }
            drop(pooled);
            let activity = self.activity.clone();
            let idle = self.shared.timeouts.idle;
            let guard = self.guard.clone();
            tokio::spawn(async move {
                let _guard = guard;
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let (mut client, mut upstream) =
                            (TokioIo::new(client), TokioIo::new(upstream));
                        splice(&mut client, &mut upstream, &activity, idle).await;
                    }
                    Err(err) => tracing::debug!(error = %err, "HTTP upgrade failed"),
                }
            });
        } else {
            strip_hop_by_hop(resp.headers_mut(), None, None);
            if let Some((key, mut sender)) = pooled {
                // Back to the pool once this response's body has been relayed.
                let pool = self.shared.pool.clone();
                tokio::spawn(async move {
                    if sender.ready().await.is_ok() {
                        pool.put(key, sender);
                    }
                });
            }
        }
        Ok(resp.map(BodyExt::boxed))
    }

    /// Send an inspected request on a pooled upstream connection (to one of the decision's
    /// addresses, same server name and credential), or a new verified one. A pooled
    /// connection that closed before the request went out is replaced transparently.
    async fn send_inspected(
        &self,
        sni: &str,
        dial: &[SocketAddr],
        credential: Option<&str>,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, PoolKey, SendRequest<UpstreamBody>), &'static str> {
        let metrics = &self.shared.metrics;
        let broken = req.body().broken();
        let upstream_failed = || {
            if !broken.load(Ordering::Relaxed) {
                metrics.upstream_error(UpstreamError::Http);
            }
            "the upstream failed to answer"
        };
        if let Some((key, mut sender)) = self.shared.pool.take(dial, sni, credential) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, key, sender)),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        tracing::debug!(error = %err.error(), "pooled upstream exchange failed");
                        return Err(upstream_failed());
                    }
                },
            }
        }
        let tcp = upstream::connect(dial, self.shared.timeouts.connect, metrics)
            .await
            .map_err(|_| "cannot connect to the upstream")?;
        let addr = tcp
            .peer_addr()
            .map_err(|_| "cannot connect to the upstream")?;
        let tls = self
            .upstream_tls(tcp, sni)
            .await
            .map_err(|_| "the upstream's TLS certificate did not verify or its handshake failed")?;
        let mut sender = handshake(tls).await.map_err(|_| {
            metrics.upstream_error(UpstreamError::Http);
            "the upstream failed to answer"
        })?;
        let key = PoolKey {
            addr,
            sni: sni.to_owned(),
            credential: credential.map(str::to_owned),
        };
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, key, sender)),
            Err(err) => {
                tracing::debug!(error = %err, "upstream HTTP exchange failed");
                Err(upstream_failed())
            }
        }
    }

    /// A ready upstream sender to one of `dial`: the current one if it still fits, else a new
    /// connection.
    async fn sender<'s>(
        &self,
        slot: &'s mut Option<Upstream>,
        dial: &[SocketAddr],
    ) -> Result<&'s mut SendRequest<UpstreamBody>, UpstreamError> {
        let reusable = match slot.as_mut() {
            Some(up) if dial.contains(&up.addr) && !up.sender.is_closed() => {
                up.sender.ready().await.is_ok()
            }
            _ => false,
        };
        if !reusable {
            *slot = None;
            let tcp =
                upstream::connect(dial, self.shared.timeouts.connect, &self.shared.metrics).await?;
            let addr = tcp.peer_addr().map_err(|_| UpstreamError::Connect)?;
            let sender = handshake(tcp)
                .await
                .inspect_err(|_| self.shared.metrics.upstream_error(UpstreamError::Http))?;
            *slot = Some(Upstream { addr, sender });
        }
        match slot.as_mut() {
            Some(up) => Ok(&mut up.sender),
            None => Err(UpstreamError::Connect),
        }
    }

    /// TLS towards the real upstream, verifying its certificate for `sni` against the
    /// webpki roots, the system bundle and `--upstream-ca`.
    async fn upstream_tls(
        &self,
        tcp: TcpStream,
        sni: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
        let metrics = &self.shared.metrics;
        let name = rustls_pki_types::ServerName::try_from(sni.to_owned())
            .map_err(|_| UpstreamError::Tls)?;
        let connector = tokio_rustls::TlsConnector::from(self.shared.tls.client.clone());
        match tokio::time::timeout(self.shared.timeouts.connect, connector.connect(name, tcp)).await
        {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(err)) => {
                let reason = if is_certificate_error(&err) {
                    "certificate"
                } else {
                    "handshake"
                };
                metrics.tls_failure("upstream", reason);
                metrics.upstream_error(UpstreamError::Tls);
                tracing::warn!(sni, error = %err, "upstream TLS handshake failed");
                Err(UpstreamError::Tls)
            }
            Err(_) => {
                metrics.tls_failure("upstream", "timeout");
                metrics.upstream_error(UpstreamError::Tls);
                Err(UpstreamError::Tls)
            }
        }
    }
}

/// HTTP/1 client handshake on an upstream connection; the connection task runs detached.
async fn handshake<T>(io: T) -> Result<SendRequest<UpstreamBody>, UpstreamError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|_| UpstreamError::Http)?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(error = %err, "upstream HTTP connection ended with an error");
        }
    });
    Ok(sender)
}

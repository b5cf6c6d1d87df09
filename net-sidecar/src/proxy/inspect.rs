//! TLS termination for connections whose rule needs L7 (`tls: inspect`, `http` rules, or a
//! credential): the agent's TLS ends here with a leaf for its SNI signed by the sandbox CA,
//! and the decrypted requests go through the same per-request pipeline as plain HTTP
//! ([`super::http`]), towards a fresh, verified TLS connection to the real upstream.
//!
//! Owns: the agent-side handshake (bounded by `--peek-timeout`, failures counted by reason).
//! Must never: serve a leaf for another name than the SNI the connection was decided on
//! (every request's Host/`:authority` must equal it, else 421), or dial anything but the
//! decision's addresses.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Shared;
use super::audit::ConnInfo;
use super::decide::{Inspected, Target};
use super::http::{self, HttpProxy};
use super::io::Activity;
use super::listener::ConnGuard;

/// Terminate the agent's TLS and serve HTTP/1.1 or HTTP/2 (ALPN) request by request.
pub async fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    info: ConnInfo,
    conn: Inspected,
    activity: Arc<Activity>,
    guard: Arc<ConnGuard>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A policy reload that just added this host may not have reached the CA yet: bring it
    // up to date now rather than serve a leaf outside the CA's name constraints.
    if !shared.tls.store.current().covers(&conn.sni) {
        let hosts: Vec<String> = shared
            .policy
            .borrow()
            .inspected_hosts()
            .map(str::to_owned)
            .collect();
        if let Err(err) = shared.tls.store.refresh(hosts) {
            tracing::error!(error = %format!("{err:#}"), "cannot replace the sandbox CA");
        }
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.server.clone());
    let tls = match tokio::time::timeout(shared.timeouts.peek, acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            let reason = if is_certificate_error(&err) {
                "certificate"
            } else {
                "handshake"
            };
            shared.metrics.tls_failure("agent", reason);
            tracing::debug!(client = %info.client, sni = %conn.sni, error = %err, "agent TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.metrics.tls_failure("agent", "timeout");
            return;
        }
    };
    let proxy = Arc::new(HttpProxy::new(
        shared,
        info,
        Target::Inspected(conn),
        activity,
        guard,
    ));
    http::serve_auto(tls, proxy).await;
}

/// Whether a handshake error is about certificates (ours refused by the agent, or the
/// upstream's not verifying) rather than broken TLS.
pub fn is_certificate_error(err: &std::io::Error) -> bool {
    use rustls::AlertDescription as A;
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => true,
        Some(rustls::Error::AlertReceived(a)) => matches!(
            a,
            A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::UnsupportedCertificate
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::AccessDenied
        ),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// HPACK "literal header field without indexing — new name", no Huffman (RFC 7541 §6.2.2).
    fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        assert!(name.len() < 127 && value.len() < 127);
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.push(value.len() as u8);
        out.extend_from_slice(value);
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Send one HTTP/2 GET whose `x-probe` header has `value`, with the same hyper server
    /// builder kind the inspected path uses; returns (service calls, frame types received).
    async fn h2_probe(value: &[u8]) -> (usize, Vec<u8>) {
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let (client, server) = tokio::io::duplex(64 * 1024);
        let c = calls.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                c.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("ok")))) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(server), svc)
                .await;
        });
        let mut client = client;
        let mut block = Vec::new();
        literal(&mut block, b":method", b"GET");
        literal(&mut block, b":scheme", b"https");
        literal(&mut block, b":path", b"/");
        literal(&mut block, b":authority", b"allowed.test");
        literal(&mut block, b"x-probe", value);
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        out.extend(frame(0x1, 0x5, 1, &block));
        client.write_all(&out).await.unwrap();
        // Collect frame types until the stream is answered (HEADERS), reset or the
        // connection goes away.
        let mut kinds = Vec::new();
        let read = async {
            loop {
                let mut head = [0u8; 9];
                if client.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len = (usize::from(head[0]) << 16)
                    | (usize::from(head[1]) << 8)
                    | usize::from(head[2]);
                let mut payload = vec![0u8; len];
                if client.read_exact(&mut payload).await.is_err() {
                    break;
                }
                kinds.push(head[3]);
                if head[3] == 0x4 && head[4] & 1 == 0 {
                    // Ack the server's SETTINGS.
                    let _ = client.write_all(&frame(0x4, 1, 0, &[])).await;
                }
                if matches!(head[3], 0x1 | 0x3 | 0x7) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
        (calls.load(Ordering::SeqCst), kinds)
    }

    #[tokio::test]
    async fn h2_header_values_with_cr_lf_nul_never_reach_the_service() {
        let (calls, kinds) = h2_probe(b"fine").await;
        assert_eq!(calls, 1, "control request must be served: {kinds:?}");
        assert!(kinds.contains(&0x1), "{kinds:?}");
        for bad in [&b"a\r\nx-injected: 1"[..], b"a\nb", b"a\rb", b"a\0b"] {
            let (calls, kinds) = h2_probe(bad).await;
            assert_eq!(calls, 0, "{bad:?} reached the service");
            assert!(
                kinds.contains(&0x3) || kinds.contains(&0x7),
                "{bad:?}: expected RST_STREAM or GOAWAY, got {kinds:?}"
            );
        }
    }
}

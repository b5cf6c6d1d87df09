//! Listening sockets and admission of agent connections.
//!
//! Owns: binding TCP listeners (IPv6 sockets with `IPV6_V6ONLY`, so the v4 and v6 listeners
//! on one port coexist; an address family the namespace lacks is skipped with a warning),
//! the accept loop that stops when draining starts, the connection limit (a semaphore:
//! over the limit a connection is reset at once and counted), and the one wrapping of each
//! admitted connection ([`Accepted`]: `TCP_NODELAY`, byte counting and the idle clock, the
//! connection slot) that every handler then uses.
//! Must never: bind a privileged port or need a capability (the sidecar has none).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus::IntGauge;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::io::{Activity, Counted};
use super::splice::reset;
use crate::admin::State;
use crate::admin::metrics::Metrics;

const BACKLOG: i32 = 1024;

/// Bind one TCP listener (non-blocking, listening), before any async runtime exists: the
/// keeper binds, the data plane adopts ([`crate::app`]'s keeper).
pub fn bind_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Bind one TCP listener in the current runtime.
#[cfg(test)]
pub fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr)?)
}

/// Bind every address; an address whose family is unavailable here (no IPv6 in the
/// namespace) is skipped with a warning, any other failure is an error, and at least one
/// listener must come up.
pub fn bind_all(what: &str, addrs: &[SocketAddr]) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::new();
    for &addr in addrs {
        match bind_std(addr) {
            Ok(l) => out.push(l),
            Err(err) if family_unavailable(&err) => {
                tracing::warn!(listener = what, %addr, error = %err, "address family unavailable; not listening there");
            }
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "cannot listen for {what} on {addr}; is another process (or a second sidecar) using \
                         the port? Ports below 1024 need privileges the sidecar does not have"
                    )
                });
            }
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "cannot listen for {what} on any of {addrs:?}"
    );
    Ok(out)
}

fn family_unavailable(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(code) if code == libc::EAFNOSUPPORT || code == libc::EADDRNOTAVAIL)
}

/// A slot in the connection limit; releases it and the active gauge on drop.
#[derive(Debug)]
pub struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// An admitted agent connection, wrapped once for every handler.
#[derive(Debug)]
pub struct Accepted {
    /// The agent side: bytes counted into `bytes_total`, activity stamped for the idle
    /// timeout. [`Counted::get_ref`] reaches the socket (original destination, peek, reset).
    pub stream: Counted<TcpStream>,
    pub peer: SocketAddr,
    pub activity: Arc<Activity>,
    /// The connection slot; also held by tunnels and upgrades that outlive the handler.
    pub guard: Arc<ConnGuard>,
}

impl Accepted {
    fn new(stream: TcpStream, peer: SocketAddr, guard: ConnGuard, metrics: &Metrics) -> Self {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let activity = Activity::new();
        Self {
            stream: Counted::new(
                stream,
                metrics.bytes_up.clone(),
                metrics.bytes_down.clone(),
                activity.clone(),
            ),
            peer,
            activity,
            guard: Arc::new(guard),
        }
    }
}

/// Admission: take a slot or reset the connection.
pub fn admit(
    limit: &Arc<Semaphore>,
    metrics: &Metrics,
    stream: TcpStream,
) -> Option<(TcpStream, ConnGuard)> {
    match limit.clone().try_acquire_owned() {
        Ok(permit) => {
            metrics.active_connections.inc();
            Some((
                stream,
                ConnGuard {
                    _permit: permit,
                    gauge: metrics.active_connections.clone(),
                },
            ))
        }
        Err(_) => {
            metrics.connection_limit_rejections.inc();
            reset(stream);
            None
        }
    }
}

/// Accept until draining starts, handing each admitted connection to `handle` on its own
/// task. Accept errors (EMFILE, ...) are logged and retried after a short pause.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    state: State,
    limit: Arc<Semaphore>,
    metrics: Metrics,
    handle: F,
) where
    F: Fn(Accepted) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            biased;
            () = state.drained() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Some((stream, guard)) = admit(&limit, &metrics, stream) {
                        tokio::spawn(handle(Accepted::new(stream, peer, guard, &metrics)));
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[tokio::test]
    async fn v4_and_v6_on_the_same_port() {
        let v4 = bind_one("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6 = bind_all("test", &[format!("[::1]:{port}").parse().unwrap()]);
        // Either IPv6 exists here and the bind succeeds beside v4, or it is skipped (error
        // "cannot listen on any").
        if let Ok(v6) = v6 {
            assert_eq!(v6[0].local_addr().unwrap().port(), port);
        }
        let taken = bind_all("test", &[v4.local_addr().unwrap()]).unwrap_err();
        assert!(
            format!("{taken:#}").contains("another process"),
            "{taken:#}"
        );
    }

    #[tokio::test]
    async fn over_the_limit_is_reset_and_counted() {
        use tokio::io::AsyncReadExt;
        let listener = bind_one("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = Arc::new(Semaphore::new(1));
        let metrics = Metrics::new().unwrap();
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let (s1, _) = listener.accept().await.unwrap();
        let held = admit(&limit, &metrics, s1).unwrap();
        assert_eq!(metrics.active_connections.get(), 1);
        let mut c2 = TcpStream::connect(addr).await.unwrap();
        let (s2, _) = listener.accept().await.unwrap();
        assert!(admit(&limit, &metrics, s2).is_none());
        assert_eq!(metrics.connection_limit_rejections.get(), 1);
        let err = c2.read(&mut [0u8; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        drop(held);
        assert_eq!(metrics.active_connections.get(), 0);
    }
}

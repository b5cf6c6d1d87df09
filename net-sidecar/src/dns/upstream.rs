//! One query's exchange with the upstream nameservers.
//!
//! The sidecar's own traffic is never redirected, so the nameservers from its resolv.conf
//! are reached directly. Each attempt uses a fresh connected UDP socket (kernel-chosen
//! random source port; a connected socket only accepts datagrams from the nameserver's
//! address and port) and a fresh random message id, and accepts only a response with that
//! id to exactly the question asked. Anything else is ignored until the attempt times out.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use super::metrics::{DnsMetrics, Transport, UpstreamFailure};
use super::wire::{matching_reply, with_id};

/// Receive buffer for an upstream UDP answer unless the client advertised a larger one.
const MIN_UDP_RECEIVE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub(super) enum ExchangeError {
    #[error("no answer within the upstream timeout")]
    Timeout,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the answer over TCP does not match the query")]
    Mismatch,
}

impl ExchangeError {
    fn kind(&self) -> UpstreamFailure {
        match self {
            Self::Timeout => UpstreamFailure::Timeout,
            Self::Io(_) | Self::Mismatch => UpstreamFailure::Error,
        }
    }
}

/// An upstream's answer: the bytes as received (id is the one we chose) and their parse.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) bytes: Vec<u8>,
    pub(super) message: Message,
}

/// The nameservers, tried in order.
#[derive(Debug)]
pub(super) struct Upstreams {
    addrs: Arc<[SocketAddr]>,
    timeout: Duration,
    metrics: DnsMetrics,
}

impl Upstreams {
    pub(super) fn new(addrs: &[SocketAddr], timeout: Duration, metrics: DnsMetrics) -> Self {
        Self {
            addrs: addrs.into(),
            timeout,
            metrics,
        }
    }

    /// Ask each upstream in turn until one answers. `query` is the message rebuilt from the
    /// client's question ([`super::wire::upstream_query`]); only its id is replaced. A truncated UDP answer is retried over TCP when
    /// the client itself came over TCP (a UDP client gets the TC bit and retries itself).
    pub(super) async fn resolve(
        &self,
        query: &[u8],
        question: &Query,
        client_max_payload: u16,
        client: Transport,
    ) -> Option<Answer> {
        let receive = MIN_UDP_RECEIVE.max(usize::from(client_max_payload));
        for &upstream in self.addrs.iter() {
            let started = Instant::now();
            let mut result = exchange_udp(upstream, query, question, receive, self.timeout).await;
            if client == Transport::Tcp
                && let Ok(truncated) = &result
                && truncated.message.truncated()
            {
                match exchange_tcp(upstream, query, question, self.timeout).await {
                    Ok(full) => result = Ok(full),
                    // Still an answer: the client sees TC rather than SERVFAIL.
                    Err(err) => {
                        self.metrics.upstream_failure(err.kind());
                        tracing::debug!(%upstream, error = %err, "upstream TCP retry of a truncated answer failed");
                    }
                }
            }
            match result {
                Ok(answer) => {
                    self.metrics
                        .upstream_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Some(answer);
                }
                Err(err) => {
                    self.metrics.upstream_failure(err.kind());
                    tracing::debug!(%upstream, error = %err, "upstream nameserver gave no usable answer");
                }
            }
        }
        None
    }
}

async fn exchange_udp(
    upstream: SocketAddr,
    query: &[u8],
    question: &Query,
    receive: usize,
    timeout: Duration,
) -> Result<Answer, ExchangeError> {
    let id: u16 = rand::random();
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(&with_id(query, id)).await?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; receive];
    loop {
        let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Err(_elapsed) => return Err(ExchangeError::Timeout),
            Ok(received) => received?,
        };
        if let Some(message) = matching_reply(&buf[..n], id, question) {
            buf.truncate(n);
            return Ok(Answer {
                bytes: buf,
                message,
            });
        }
        tracing::debug!(%upstream, len = n, "ignoring upstream datagram that does not answer our query");
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    query: &[u8],
    question: &Query,
    timeout: Duration,
) -> Result<Answer, ExchangeError> {
    let id: u16 = rand::random();
    let exchange = async {
        let len = u16::try_from(query.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query longer than 65535"))?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&with_id(query, id));
        let mut stream = TcpStream::connect(upstream).await?;
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        let message = matching_reply(&buf, id, question).ok_or(ExchangeError::Mismatch)?;
        Ok(Answer {
            bytes: buf,
            message,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ExchangeError::Timeout),
    }
}

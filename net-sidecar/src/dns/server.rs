//! Sockets and the per-query flow: classify → decide → forward or refuse → record → reply.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hickory_proto::op::{Message, Query, ResponseCode};
use palisade_policy::CompiledPolicy;
use palisade_policy::model::DnsMode;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::DnsPolicy;
use super::cache::AnswerCache;
use super::config::{DenyRcode, DnsConfig};
use super::metrics::{DnsMetrics, Outcome, Transport};
use super::upstream::Upstreams;
use super::wire::{
    Inbound, answer_addrs, classify, policy_name, reply_with_rcode, upstream_query, with_id,
};

/// UDP queries handled at once per socket; beyond this the socket is not read (the kernel
/// queue absorbs bursts and drops the excess).
const MAX_INFLIGHT_UDP: usize = 256;
/// Open TCP connections per listener; more are accepted and closed at once.
const MAX_TCP_CONNECTIONS: usize = 128;
/// A TCP connection waiting this long for (the rest of) a query, or to take a response,
/// is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest DNS message over either transport.
const MAX_MESSAGE: usize = 65535;
/// How many times to look for a port free on both UDP and TCP when asked for port 0.
const EPHEMERAL_BIND_ATTEMPTS: usize = 16;

/// The bound sockets of the policy DNS server: a UDP socket and a TCP listener on the
/// same port for every listen address.
#[derive(Debug)]
pub struct DnsServer {
    udp: Vec<Arc<UdpSocket>>,
    tcp: Vec<TcpListener>,
    upstreams: Vec<SocketAddr>,
    deny_rcode: DenyRcode,
    upstream_timeout: Duration,
}

/// Bind UDP and TCP on every listen address (IPv6 sockets are v6-only, so `0.0.0.0` and
/// `[::]` on the same port coexist). Port 0 picks one port free on both transports.
#[cfg(test)]
pub async fn bind(config: &DnsConfig) -> anyhow::Result<DnsServer> {
    anyhow::ensure!(
        !config.listen.is_empty(),
        "the policy DNS server has no listen address; configure at least one"
    );
    anyhow::ensure!(
        !config.upstreams.is_empty(),
        "the policy DNS server has no upstream nameserver; add a `nameserver` line to the \
         sidecar's resolv.conf"
    );
    let pairs = bind_pairs(&config.listen)?;
    DnsServer::from_sockets(pairs, config)
}

/// A UDP socket and a TCP listener (both non-blocking) on the same port for every listen
/// address, bound before any async runtime exists (the keeper binds, the data plane
/// adopts them through [`DnsServer::from_sockets`]).
pub fn bind_pairs(
    listen: &[SocketAddr],
) -> anyhow::Result<Vec<(std::net::UdpSocket, std::net::TcpListener)>> {
    anyhow::ensure!(
        !listen.is_empty(),
        "the policy DNS server has no listen address; configure at least one"
    );
    listen.iter().map(|&addr| bind_pair(addr)).collect()
}

impl DnsServer {
    /// Serve on sockets bound earlier ([`bind_pairs`]), inside the runtime.
    pub fn from_sockets(
        pairs: Vec<(std::net::UdpSocket, std::net::TcpListener)>,
        config: &DnsConfig,
    ) -> anyhow::Result<DnsServer> {
        anyhow::ensure!(
            !config.upstreams.is_empty(),
            "the policy DNS server has no upstream nameserver; add a `nameserver` line to the \
             sidecar's resolv.conf"
        );
        let mut udp = Vec::with_capacity(pairs.len());
        let mut tcp = Vec::with_capacity(pairs.len());
        for (u, t) in pairs {
            u.set_nonblocking(true)?;
            t.set_nonblocking(true)?;
            udp.push(Arc::new(UdpSocket::from_std(u)?));
            tcp.push(TcpListener::from_std(t)?);
        }
        Ok(DnsServer {
            udp,
            tcp,
            upstreams: config.upstreams.clone(),
            deny_rcode: config.deny_rcode,
            upstream_timeout: config.upstream_timeout,
        })
    }
}

fn bind_pair(addr: SocketAddr) -> anyhow::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let hint = "is another process (a second sidecar?) using the port, or is IPv6 disabled in \
                this network namespace? change the DNS listen addresses or free the port";
    let attempts = if addr.port() == 0 {
        EPHEMERAL_BIND_ATTEMPTS
    } else {
        1
    };
    let mut last_err = None;
    for _ in 0..attempts {
        let udp = udp_socket(addr)
            .with_context(|| format!("cannot bind the policy DNS server to udp {addr}; {hint}"))?;
        let mut tcp_addr = addr;
        tcp_addr.set_port(udp.local_addr()?.port());
        match tcp_listener(tcp_addr) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(err) => last_err = Some(err),
        }
    }
    let err = last_err.map_or_else(|| anyhow::anyhow!("no attempt made"), anyhow::Error::from);
    Err(err.context(format!(
        "cannot bind the policy DNS server to tcp {addr}; {hint}"
    )))
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

impl DnsServer {
    /// The bound addresses (UDP and TCP share each one).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|socket| socket.local_addr().ok())
            .collect()
    }

    /// Serve until the future is dropped. Each query reads the current policy generation
    /// from `policy`, so a policy update applies to the next query.
    pub async fn run(
        self,
        policy: watch::Receiver<Arc<CompiledPolicy>>,
        cache: Arc<AnswerCache>,
        metrics: DnsMetrics,
    ) {
        self.serve(policy, cache, metrics).await;
    }

    pub(super) async fn serve<P: DnsPolicy>(
        self,
        policy: watch::Receiver<Arc<P>>,
        cache: Arc<AnswerCache>,
        metrics: DnsMetrics,
    ) {
        let handler = Arc::new(Handler {
            policy,
            cache,
            upstreams: Upstreams::new(&self.upstreams, self.upstream_timeout, metrics.clone()),
            metrics,
            deny_rcode: self.deny_rcode,
        });
        let mut tasks = JoinSet::new();
        for socket in self.udp {
            tasks.spawn(serve_udp(socket, handler.clone()));
        }
        for listener in self.tcp {
            tasks.spawn(serve_tcp(listener, handler.clone()));
        }
        while let Some(ended) = tasks.join_next().await {
            if let Err(err) = ended {
                tracing::error!(error = %err, "a policy DNS listener task failed");
            }
        }
    }
}

/// Everything a query needs, shared by all listener tasks.
struct Handler<P> {
    policy: watch::Receiver<Arc<P>>,
    cache: Arc<AnswerCache>,
    upstreams: Upstreams,
    metrics: DnsMetrics,
    deny_rcode: DenyRcode,
}

impl<P: DnsPolicy> Handler<P> {
    /// The response to one client message, or `None` to send nothing (and, over TCP,
    /// close the connection).
    async fn handle(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let query = match classify(packet) {
            Inbound::Query(query) => query,
            Inbound::Drop(kind) => {
                self.metrics.bad(kind);
                self.metrics.query(Outcome::Error, transport);
                tracing::debug!(
                    kind = kind.as_str(),
                    transport = transport.as_str(),
                    len = packet.len(),
                    "dropped DNS message"
                );
                return None;
            }
            Inbound::Reject { kind, response } => {
                self.metrics.bad(kind);
                self.metrics.query(Outcome::Error, transport);
                tracing::debug!(
                    kind = kind.as_str(),
                    transport = transport.as_str(),
                    len = packet.len(),
                    "rejected DNS message"
                );
                return Some(response);
            }
        };
        let question = query.queries().first()?.clone();
        let qname = policy_name(question.name());
        let qtype = question.query_type();
        let outcome = {
            let policy = self.policy.borrow();
            match policy.dns_mode() {
                DnsMode::Forward => Outcome::Forward,
                DnsMode::Policy if policy.name_allowed(&qname) => Outcome::Allow,
                DnsMode::Policy => Outcome::Deny,
            }
        };

        if outcome == Outcome::Deny {
            self.metrics.query(Outcome::Deny, transport);
            tracing::info!(
                target: "audit",
                event = "dns_deny",
                qname = %qname,
                qtype = %qtype,
                transport = transport.as_str(),
                "DNS query refused: no egress rule names this host"
            );
            let rcode = match self.deny_rcode {
                DenyRcode::Refused => ResponseCode::Refused,
                DenyRcode::NxDomain => ResponseCode::NXDomain,
            };
            return reply_with_rcode(&query, rcode);
        }

        // Never the client's bytes: only what was parsed and judged goes upstream.
        let Some((upstream_query, stripped)) = upstream_query(&query) else {
            self.metrics.query(Outcome::Error, transport);
            return reply_with_rcode(&query, ResponseCode::ServFail);
        };
        if stripped {
            self.metrics.edns_options_stripped.inc();
        }
        let answer = self
            .upstreams
            .resolve(&upstream_query, &question, query.max_payload(), transport)
            .await;
        let Some(answer) = answer else {
            self.metrics.query(Outcome::Error, transport);
            tracing::debug!(qname = %qname, qtype = %qtype, transport = transport.as_str(), "no upstream nameserver answered: SERVFAIL");
            return reply_with_rcode(&query, ResponseCode::ServFail);
        };
        self.record(&qname, &question, &answer.message);
        self.metrics.query(outcome, transport);
        tracing::debug!(
            qname = %qname,
            qtype = %qtype,
            decision = outcome.as_str(),
            transport = transport.as_str(),
            rcode = %answer.message.response_code(),
            "DNS query answered"
        );
        Some(with_id(&answer.bytes, query.id()))
    }

    /// Remember the answer's addresses for `qname` (the data plane checks dials against them).
    fn record(&self, qname: &str, question: &Query, answer: &Message) {
        if let Some((addrs, ttl)) = answer_addrs(answer, question.name()) {
            self.cache
                .record(qname, &addrs, Duration::from_secs(u64::from(ttl)));
        }
    }
}

async fn serve_udp<P: DnsPolicy>(socket: Arc<UdpSocket>, handler: Arc<Handler<P>>) {
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_UDP));
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                tracing::debug!(error = %err, "policy DNS udp receive failed");
                // Errors here are transient (an ICMP error queued on the socket); do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let packet = buf[..len].to_vec();
        let socket = socket.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(response) = handler.handle(&packet, Transport::Udp).await
                && let Err(err) = socket.send_to(&response, peer).await
            {
                tracing::debug!(%peer, error = %err, "cannot send DNS response");
            }
        });
    }
}

async fn serve_tcp<P: DnsPolicy>(listener: TcpListener, handler: Arc<Handler<P>>) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %err, "policy DNS tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many policy DNS tcp connections; closing the new one");
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, &handler).await;
        });
    }
}

/// RFC 7766 framing: a 2-byte length before each message, any number of queries per
/// connection, answered in order.
async fn serve_connection<P: DnsPolicy>(mut stream: TcpStream, handler: &Handler<P>) {
    use tokio::time::timeout;
    loop {
        let len = match timeout(TCP_IDLE_TIMEOUT, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        let mut packet = vec![0u8; len];
        if !matches!(
            timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut packet)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(response) = handler.handle(&packet, Transport::Tcp).await else {
            return;
        };
        let Ok(len) = u16::try_from(response.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&response);
        if !matches!(
            timeout(TCP_IDLE_TIMEOUT, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

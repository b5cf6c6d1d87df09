//! The server end to end over loopback: real sockets, a fake upstream nameserver on
//! 127.0.0.1 that speaks real DNS (built with hickory-proto), and a stand-in policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use palisade_policy::model::DnsMode;
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use super::*;

/// Generous bound so a broken test fails instead of hanging; never a performance claim.
const HANG_GUARD: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
struct FakePolicy {
    mode: DnsMode,
    allowed: Vec<&'static str>,
}

impl DnsPolicy for FakePolicy {
    fn dns_mode(&self) -> DnsMode {
        self.mode
    }
    fn name_allowed(&self, name: &str) -> bool {
        self.allowed.contains(&name)
    }
}

fn policy(allowed: &[&'static str]) -> FakePolicy {
    FakePolicy {
        mode: DnsMode::Policy,
        allowed: allowed.to_vec(),
    }
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn query(id: u16, qname: &str, qtype: RecordType) -> Message {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name(qname), qtype));
    m
}

fn query_bytes(id: u16, qname: &str, qtype: RecordType) -> Vec<u8> {
    query(id, qname, qtype).to_vec().unwrap()
}

/// How the fake upstream behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Upstream {
    /// Answers every query.
    Answer,
    /// Never answers.
    Silent,
    /// First a reply with the wrong id, then one with the wrong question (both claiming
    /// 198.18.6.6), then the real answer.
    SpoofFirst,
    /// Over UDP: TC set, no records. Over TCP (same port): the full answer.
    Truncating,
    /// Over UDP: TC set, no records. Over TCP: the connection is closed unanswered.
    TruncatingTcpBroken,
}

/// What the fake upstream saw and sent.
#[derive(Debug)]
struct Seen {
    query: Message,
    sent: Vec<u8>,
}

/// The fake upstream's answer: `www.allowed.test` is a CNAME chain to 198.18.0.7 (TTL 60),
/// PTR queries get a name, other A/AAAA queries 198.18.0.10 / 2001:db8::10.
fn answer_for(q: &Message) -> Message {
    let question = q.queries()[0].clone();
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    let qname = question.name().clone();
    match question.query_type() {
        RecordType::A if qname == name("www.allowed.test.") => {
            m.add_answer(Record::from_rdata(
                qname,
                300,
                RData::CNAME(CNAME(name("edge.cdn.test."))),
            ));
            m.add_answer(Record::from_rdata(
                name("edge.cdn.test."),
                60,
                RData::A(A(Ipv4Addr::new(198, 18, 0, 7))),
            ));
        }
        RecordType::A => {
            m.add_answer(Record::from_rdata(
                qname,
                300,
                RData::A(A(Ipv4Addr::new(198, 18, 0, 10))),
            ));
        }
        RecordType::AAAA => {
            m.add_answer(Record::from_rdata(
                qname,
                300,
                RData::AAAA(AAAA("2001:db8::10".parse::<Ipv6Addr>().unwrap())),
            ));
        }
        RecordType::PTR => {
            m.add_answer(Record::from_rdata(
                qname,
                300,
                RData::PTR(PTR(name("host.allowed.test."))),
            ));
        }
        _ => {}
    }
    m
}

fn spoof_of(q: &Message, id: u16, qname: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Response)
        .set_recursion_available(true)
        .add_query(Query::query(name(qname), q.queries()[0].query_type()))
        .add_answer(Record::from_rdata(
            name(qname),
            300,
            RData::A(A(Ipv4Addr::new(198, 18, 6, 6))),
        ));
    m.to_vec().unwrap()
}

/// Start a fake upstream on 127.0.0.1 (UDP, and TCP on the same port).
async fn fake_upstream(behaviour: Upstream) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = TcpListener::bind(addr).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let tx = seen_tx.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            if behaviour == Upstream::SpoofFirst {
                udp.send_to(
                    &spoof_of(&q, q.id().wrapping_add(1), "www.allowed.test."),
                    peer,
                )
                .await
                .unwrap();
                udp.send_to(&spoof_of(&q, q.id(), "evil.test."), peer)
                    .await
                    .unwrap();
            }
            let mut reply = answer_for(&q);
            if matches!(
                behaviour,
                Upstream::Truncating | Upstream::TruncatingTcpBroken
            ) {
                reply.take_answers();
                reply.set_truncated(true);
            }
            let bytes = reply.to_vec().unwrap();
            if behaviour != Upstream::Silent {
                udp.send_to(&bytes, peer).await.unwrap();
            }
            let _ = tx.send(Seen {
                query: q,
                sent: bytes,
            });
        }
    });
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tcp.accept().await.unwrap();
            if behaviour == Upstream::TruncatingTcpBroken {
                drop(stream);
                continue;
            }
            let tx = seen_tx.clone();
            tokio::spawn(async move {
                let len = stream.read_u16().await.unwrap();
                let mut buf = vec![0u8; usize::from(len)];
                stream.read_exact(&mut buf).await.unwrap();
                let q = Message::from_vec(&buf).unwrap();
                let bytes = answer_for(&q).to_vec().unwrap();
                let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&bytes);
                stream.write_all(&framed).await.unwrap();
                let _ = tx.send(Seen {
                    query: q,
                    sent: bytes,
                });
            });
        }
    });
    (addr, seen_rx)
}

struct Harness {
    addr: SocketAddr,
    cache: Arc<AnswerCache>,
    metrics: DnsMetrics,
    registry: Registry,
    policy: watch::Sender<Arc<FakePolicy>>,
}

impl Harness {
    async fn start(policy: FakePolicy, upstreams: Vec<SocketAddr>, deny_rcode: DenyRcode) -> Self {
        Self::start_with_timeout(policy, upstreams, deny_rcode, Duration::from_secs(5)).await
    }

    async fn start_with_timeout(
        policy: FakePolicy,
        upstreams: Vec<SocketAddr>,
        deny_rcode: DenyRcode,
        upstream_timeout: Duration,
    ) -> Self {
        let config = DnsConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            upstreams,
            deny_rcode,
            upstream_timeout,
        };
        let server = bind(&config).await.unwrap();
        let addr = server.local_addrs()[0];
        let registry = Registry::new();
        let metrics = DnsMetrics::register(&registry).unwrap();
        let cache = Arc::new(AnswerCache::new(64));
        let (tx, rx) = watch::channel(Arc::new(policy));
        tokio::spawn(server.serve(rx, cache.clone(), metrics.clone()));
        Self {
            addr,
            cache,
            metrics,
            registry,
            policy: tx,
        }
    }

    async fn udp(&self, bytes: &[u8]) -> Message {
        Message::from_vec(&self.udp_raw(bytes).await).unwrap()
    }

    async fn udp_raw(&self, bytes: &[u8]) -> Vec<u8> {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(self.addr).await.unwrap();
        client.send(bytes).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let n = tokio::time::timeout(HANG_GUARD, client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        buf.truncate(n);
        buf
    }

    fn queries(&self, decision: &str, transport: &str) -> u64 {
        self.metrics
            .queries
            .with_label_values(&[decision, transport])
            .get()
    }

    fn bad(&self, kind: &str) -> u64 {
        self.metrics.bad_queries.with_label_values(&[kind]).get()
    }

    fn upstream_failures(&self, kind: &str) -> u64 {
        self.metrics
            .upstream_failures
            .with_label_values(&[kind])
            .get()
    }
}

async fn tcp_exchange(stream: &mut TcpStream, bytes: &[u8]) -> Message {
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.unwrap();
    let read = async {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(HANG_GUARD, read).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

#[tokio::test]
async fn allowed_name_is_forwarded_relayed_unchanged_and_recorded() {
    let (upstream, mut seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(
        policy(&["www.allowed.test"]),
        vec![upstream],
        DenyRcode::Refused,
    )
    .await;
    let mut q = query(0x4242, "WWW.Allowed.Test.", RecordType::A);
    q.set_edns(Edns::new());
    let sent = q.to_vec().unwrap();

    let raw = h.udp_raw(&sent).await;
    let reply = Message::from_vec(&raw).unwrap();
    assert_eq!(reply.id(), 0x4242);
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(reply.answers().len(), 2);

    let upstream_saw = seen.recv().await.unwrap();
    // The upstream got the client's bytes, only the id replaced…
    assert_eq!(&upstream_saw.query.to_vec().unwrap()[2..], &sent[2..]);
    // …and the client got the upstream's bytes, only the id restored.
    assert_eq!(&raw[2..], &upstream_saw.sent[2..]);
    assert_eq!(
        &upstream_saw.sent[..2],
        &upstream_saw.query.id().to_be_bytes()
    );

    // The final address of the CNAME chain is recorded under the queried name.
    assert!(
        h.cache
            .answered("www.allowed.test", IpAddr::from([198, 18, 0, 7]))
    );
    assert_eq!(
        h.cache.names_for(IpAddr::from([198, 18, 0, 7])),
        vec![Arc::<str>::from("www.allowed.test")]
    );
    assert!(
        !h.cache
            .answered("edge.cdn.test", IpAddr::from([198, 18, 0, 7]))
    );
    assert_eq!(h.queries("allow", "udp"), 1);
    assert_eq!(h.queries("deny", "udp"), 0);
    assert_eq!(h.metrics.upstream_seconds.get_sample_count(), 1);
}

#[tokio::test]
async fn other_types_for_allowed_names_are_forwarded_too() {
    let (upstream, _seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(
        policy(&["api.allowed.test", "10.0.18.198.in-addr.arpa"]),
        vec![upstream],
        DenyRcode::Refused,
    )
    .await;
    let v6 = h
        .udp(&query_bytes(1, "api.allowed.test.", RecordType::AAAA))
        .await;
    assert_eq!(v6.response_code(), ResponseCode::NoError);
    assert!(
        h.cache
            .answered("api.allowed.test", "2001:db8::10".parse().unwrap())
    );
    let ptr = h
        .udp(&query_bytes(
            2,
            "10.0.18.198.in-addr.arpa.",
            RecordType::PTR,
        ))
        .await;
    assert_eq!(ptr.response_code(), ResponseCode::NoError);
    assert!(matches!(ptr.answers()[0].data(), RData::PTR(_)));
    assert_eq!(h.queries("allow", "udp"), 2);
}

#[tokio::test]
async fn denied_name_is_refused_without_asking_upstream() {
    let (upstream, mut seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(
        policy(&["www.allowed.test"]),
        vec![upstream],
        DenyRcode::Refused,
    )
    .await;
    for qtype in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::PTR,
    ] {
        let reply = h.udp(&query_bytes(0x0D0D, "evil.test.", qtype)).await;
        assert_eq!(reply.id(), 0x0D0D);
        assert_eq!(reply.response_code(), ResponseCode::Refused);
        assert_eq!(reply.queries(), query(0, "evil.test.", qtype).queries());
        assert!(reply.answers().is_empty());
        assert!(reply.recursion_available());
    }
    // A subdomain of an allowed name is not the allowed name.
    let sub = h
        .udp(&query_bytes(5, "x.www.allowed.test.", RecordType::A))
        .await;
    assert_eq!(sub.response_code(), ResponseCode::Refused);
    assert_eq!(h.queries("deny", "udp"), 5);
    assert!(
        seen.try_recv().is_err(),
        "upstream must not see denied names"
    );
    assert!(h.cache.names_for(IpAddr::from([198, 18, 0, 10])).is_empty());
}

#[tokio::test]
async fn denied_name_can_be_nxdomain() {
    let (upstream, _seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(policy(&[]), vec![upstream], DenyRcode::NxDomain).await;
    let reply = h
        .udp(&query_bytes(0x7777, "evil.test.", RecordType::A))
        .await;
    assert_eq!(
        (reply.id(), reply.response_code()),
        (0x7777, ResponseCode::NXDomain)
    );
}

#[tokio::test]
async fn forward_mode_forwards_everything_and_still_records() {
    let (upstream, mut seen) = fake_upstream(Upstream::Answer).await;
    let mut p = policy(&[]);
    p.mode = DnsMode::Forward;
    let h = Harness::start(p, vec![upstream], DenyRcode::Refused).await;
    let reply = h
        .udp(&query_bytes(3, "anything.test.", RecordType::A))
        .await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert!(seen.recv().await.is_some());
    assert!(
        h.cache
            .answered("anything.test", IpAddr::from([198, 18, 0, 10]))
    );
    assert_eq!(h.queries("forward", "udp"), 1);
    assert_eq!(h.queries("allow", "udp"), 0);
}

#[tokio::test]
async fn a_policy_update_applies_to_the_next_query() {
    let (upstream, _seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(policy(&[]), vec![upstream], DenyRcode::Refused).await;
    let before = h.udp(&query_bytes(1, "late.test.", RecordType::A)).await;
    assert_eq!(before.response_code(), ResponseCode::Refused);
    h.policy.send(Arc::new(policy(&["late.test"]))).unwrap();
    let after = h.udp(&query_bytes(2, "late.test.", RecordType::A)).await;
    assert_eq!(after.response_code(), ResponseCode::NoError);
}

#[tokio::test]
async fn compression_loop_is_formerr() {
    let (upstream, _seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(
        policy(&["www.allowed.test"]),
        vec![upstream],
        DenyRcode::Refused,
    )
    .await;
    // Header: id 0xBEEF, RD, one question; the question's name is a pointer to offset 12,
    // i.e. to itself.
    let mut packet = vec![0xBE, 0xEF, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    packet.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    let reply = h.udp(&packet).await;
    assert_eq!(
        (reply.id(), reply.response_code()),
        (0xBEEF, ResponseCode::FormErr)
    );
    assert_eq!(h.bad("malformed"), 1);
    assert_eq!(h.queries("error", "udp"), 1);
}

#[tokio::test]
async fn short_packets_are_dropped_and_the_server_keeps_going() {
    let (upstream, _seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(policy(&[]), vec![upstream], DenyRcode::Refused).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(h.addr).await.unwrap();
    client.send(&[1, 2, 3]).await.unwrap();
    client
        .send(&query_bytes(0x5151, "after.test.", RecordType::A))
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(HANG_GUARD, client.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // The first datagram back answers the second query: the 3-byte one got nothing.
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(reply.id(), 0x5151);
    assert_eq!(h.bad("short"), 1);
    assert_eq!(h.queries("deny", "udp"), 1);
}

#[tokio::test]
async fn two_questions_are_formerr() {
    let (upstream, mut seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(
        policy(&["a.test", "b.test"]),
        vec![upstream],
        DenyRcode::Refused,
    )
    .await;
    let mut q = query(0x2222, "a.test.", RecordType::A);
    q.add_query(Query::query(name("b.test."), RecordType::A));
    let reply = h.udp(&q.to_vec().unwrap()).await;
    assert_eq!(
        (reply.id(), reply.response_code()),
        (0x2222, ResponseCode::FormErr)
    );
    assert_eq!(h.bad("questions"), 1);
    assert!(seen.try_recv().is_err());
}

#[tokio::test]
async fn upstream_timeout_is_servfail() {
    let (silent, mut seen) = fake_upstream(Upstream::Silent).await;
    let h = Harness::start_with_timeout(
        policy(&["www.allowed.test"]),
        vec![silent],
        DenyRcode::Refused,
        Duration::from_millis(300),
    )
    .await;
    let reply = h
        .udp(&query_bytes(0x5EF1, "www.allowed.test.", RecordType::A))
        .await;
    assert_eq!(
        (reply.id(), reply.response_code()),
        (0x5EF1, ResponseCode::ServFail)
    );
    assert_eq!(reply.queries()[0].name(), &name("www.allowed.test."));
    assert!(
        seen.recv().await.is_some(),
        "the query did reach the upstream"
    );
    assert_eq!(h.upstream_failures("timeout"), 1);
    assert_eq!(h.queries("error", "udp"), 1);
    assert_eq!(h.queries("allow", "udp"), 0);
    assert!(h.cache.names_for(IpAddr::from([198, 18, 0, 7])).is_empty());
}

#[tokio::test]
async fn the_next_upstream_is_tried_after_a_timeout() {
    let (silent, _s) = fake_upstream(Upstream::Silent).await;
    let (answering, _a) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start_with_timeout(
        policy(&["www.allowed.test"]),
        vec![silent, answering],
        DenyRcode::Refused,
        Duration::from_millis(300),
    )
    .await;
    let reply = h
        .udp(&query_bytes(9, "www.allowed.test.", RecordType::A))
        .await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(h.upstream_failures("timeout"), 1);
    assert_eq!(h.queries("allow", "udp"), 1);
}

#[tokio::test]
async fn an_unreachable_upstream_is_an_error_not_a_hang() {
    // Bind then drop: nothing listens there, the kernel answers ICMP port unreachable.
    let closed = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start(policy(&["x.test"]), vec![closed], DenyRcode::Refused).await;
    let reply = h.udp(&query_bytes(4, "x.test.", RecordType::A)).await;
    assert_eq!(reply.response_code(), ResponseCode::ServFail);
    assert_eq!(h.upstream_failures("error"), 1);
}

#[tokio::test]
async fn mismatched_upstream_replies_are_ignored() {
    let (upstream, mut seen) = fake_upstream(Upstream::SpoofFirst).await;
    let h = Harness::start(
        policy(&["www.allowed.test"]),
        vec![upstream],
        DenyRcode::Refused,
    )
    .await;
    let reply = h
        .udp(&query_bytes(0x3131, "www.allowed.test.", RecordType::A))
        .await;
    assert_eq!(reply.id(), 0x3131);
    assert_eq!(reply.queries()[0].name(), &name("www.allowed.test."));
    let addrs: Vec<_> = reply
        .answers()
        .iter()
        .filter_map(|r| r.data().ip_addr())
        .collect();
    assert_eq!(addrs, vec![IpAddr::from([198, 18, 0, 7])]);
    let spoofed = IpAddr::from([198, 18, 6, 6]);
    assert!(h.cache.names_for(spoofed).is_empty());
    assert!(!h.cache.answered("www.allowed.test", spoofed));
    assert!(
        h.cache
            .answered("www.allowed.test", IpAddr::from([198, 18, 0, 7]))
    );
    assert!(seen.recv().await.is_some());
}

#[tokio::test]
async fn tcp_carries_several_queries_per_connection() {
    let (upstream, _seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(
        policy(&["www.allowed.test"]),
        vec![upstream],
        DenyRcode::Refused,
    )
    .await;
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let first = tcp_exchange(
        &mut stream,
        &query_bytes(0x0101, "www.allowed.test.", RecordType::A),
    )
    .await;
    assert_eq!(
        (first.id(), first.response_code()),
        (0x0101, ResponseCode::NoError)
    );
    let second = tcp_exchange(
        &mut stream,
        &query_bytes(0x0202, "evil.test.", RecordType::A),
    )
    .await;
    assert_eq!(
        (second.id(), second.response_code()),
        (0x0202, ResponseCode::Refused)
    );
    // Two framed queries in one write are answered in order.
    let mut both = Vec::new();
    for id in [0x0303u16, 0x0404] {
        let q = query_bytes(id, "evil.test.", RecordType::A);
        both.extend_from_slice(&(q.len() as u16).to_be_bytes());
        both.extend_from_slice(&q);
    }
    stream.write_all(&both).await.unwrap();
    for id in [0x0303u16, 0x0404] {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(Message::from_vec(&buf).unwrap().id(), id);
    }
    assert_eq!(h.queries("allow", "tcp"), 1);
    assert_eq!(h.queries("deny", "tcp"), 3);
    assert_eq!(h.queries("allow", "udp") + h.queries("deny", "udp"), 0);
    assert!(
        h.cache
            .answered("www.allowed.test", IpAddr::from([198, 18, 0, 7]))
    );
}

#[tokio::test]
async fn tcp_garbage_gets_formerr_and_short_frames_close_the_connection() {
    let (upstream, _seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(policy(&[]), vec![upstream], DenyRcode::Refused).await;
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let mut packet = vec![0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    packet.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    let reply = tcp_exchange(&mut stream, &packet).await;
    assert_eq!(
        (reply.id(), reply.response_code()),
        (0xABCD, ResponseCode::FormErr)
    );
    // A 3-byte frame: nothing to answer, the connection is closed.
    stream.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(h.bad("malformed"), 1);
    assert_eq!(h.bad("short"), 1);
    assert_eq!(h.queries("error", "tcp"), 2);
}

#[tokio::test]
async fn truncated_answers_are_retried_over_tcp_for_tcp_clients_only() {
    let (upstream, mut seen) = fake_upstream(Upstream::Truncating).await;
    let h = Harness::start(
        policy(&["api.allowed.test"]),
        vec![upstream],
        DenyRcode::Refused,
    )
    .await;
    // UDP client: gets the TC answer and would retry over TCP itself.
    let udp = h
        .udp(&query_bytes(1, "api.allowed.test.", RecordType::A))
        .await;
    assert!(udp.truncated());
    assert!(udp.answers().is_empty());
    assert!(
        !h.cache
            .answered("api.allowed.test", IpAddr::from([198, 18, 0, 10]))
    );
    assert!(seen.recv().await.is_some());
    assert!(seen.try_recv().is_err(), "no TCP retry for a UDP client");
    // TCP client: the sidecar retries over TCP and relays the full answer.
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let tcp = tcp_exchange(
        &mut stream,
        &query_bytes(2, "api.allowed.test.", RecordType::A),
    )
    .await;
    assert!(!tcp.truncated());
    assert_eq!(tcp.id(), 2);
    assert_eq!(tcp.answers().len(), 1);
    assert!(
        h.cache
            .answered("api.allowed.test", IpAddr::from([198, 18, 0, 10]))
    );
}

#[tokio::test]
async fn a_failed_tcp_retry_still_relays_the_truncated_answer() {
    let (upstream, _seen) = fake_upstream(Upstream::TruncatingTcpBroken).await;
    let h = Harness::start(
        policy(&["api.allowed.test"]),
        vec![upstream],
        DenyRcode::Refused,
    )
    .await;
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let reply = tcp_exchange(
        &mut stream,
        &query_bytes(8, "api.allowed.test.", RecordType::A),
    )
    .await;
    assert_eq!(
        (reply.id(), reply.response_code()),
        (8, ResponseCode::NoError)
    );
    assert!(reply.truncated());
    assert_eq!(h.upstream_failures("error"), 1);
    assert_eq!(h.queries("allow", "tcp"), 1);
}

#[tokio::test]
async fn metrics_are_exposed_with_bounded_labels_only() {
    let (upstream, _seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(
        policy(&["www.allowed.test"]),
        vec![upstream],
        DenyRcode::Refused,
    )
    .await;
    h.udp(&query_bytes(1, "www.allowed.test.", RecordType::A))
        .await;
    h.udp(&query_bytes(2, "secret-looking-name.test.", RecordType::A))
        .await;
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&h.registry.gather(), &mut text)
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    for line in [
        "palisade_sidecar_dns_queries_total{decision=\"allow\",transport=\"udp\"} 1",
        "palisade_sidecar_dns_queries_total{decision=\"deny\",transport=\"udp\"} 1",
        "palisade_sidecar_dns_queries_total{decision=\"error\",transport=\"tcp\"} 0",
        "palisade_sidecar_dns_bad_queries_total{kind=\"malformed\"} 0",
        "palisade_sidecar_dns_upstream_failures_total{kind=\"timeout\"} 0",
        "palisade_sidecar_dns_upstream_seconds_count 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("allowed.test"), "{text}");
    assert!(!text.contains("secret-looking-name"), "{text}");
}

#[tokio::test]
async fn bind_shares_one_port_between_udp_and_tcp_on_v4_and_v6() {
    let (upstream, _seen) = fake_upstream(Upstream::Answer).await;
    let config = DnsConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()],
        upstreams: vec![upstream],
        deny_rcode: DenyRcode::Refused,
        upstream_timeout: Duration::from_secs(5),
    };
    let server = match bind(&config).await {
        Ok(server) => server,
        Err(err) if format!("{err:#}").contains("[::1]") => {
            eprintln!("skipping: no IPv6 loopback here: {err:#}");
            return;
        }
        Err(err) => panic!("{err:#}"),
    };
    let addrs = server.local_addrs();
    assert_eq!(addrs.len(), 2);
    let v6 = addrs[1];
    // Something else on the same port must fail with an error that names the address.
    let clash = DnsConfig {
        listen: vec![addrs[0]],
        ..config.clone()
    };
    let msg = format!("{:#}", bind(&clash).await.unwrap_err());
    assert!(
        msg.contains("cannot bind the policy DNS server to udp 127.0.0.1:"),
        "{msg}"
    );

    let registry = Registry::new();
    let metrics = DnsMetrics::register(&registry).unwrap();
    let cache = Arc::new(AnswerCache::new(8));
    let (_tx, rx) = watch::channel(Arc::new(policy(&[])));
    tokio::spawn(server.serve(rx, cache, metrics));
    let mut stream = TcpStream::connect(v6).await.unwrap();
    let reply = tcp_exchange(&mut stream, &query_bytes(6, "v6.test.", RecordType::AAAA)).await;
    assert_eq!(
        (reply.id(), reply.response_code()),
        (6, ResponseCode::Refused)
    );
    let client = UdpSocket::bind("[::1]:0").await.unwrap();
    client
        .send_to(&query_bytes(7, "v6.test.", RecordType::AAAA), v6)
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(HANG_GUARD, client.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Message::from_vec(&buf[..n]).unwrap().id(), 7);
}

#[tokio::test]
async fn bind_refuses_configs_it_cannot_serve() {
    let mut config = DnsConfig {
        listen: vec![],
        upstreams: vec!["127.0.0.1:53".parse().unwrap()],
        deny_rcode: DenyRcode::Refused,
        upstream_timeout: Duration::from_secs(2),
    };
    assert!(format!("{:#}", bind(&config).await.unwrap_err()).contains("no listen address"));
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.upstreams.clear();
    assert!(format!("{:#}", bind(&config).await.unwrap_err()).contains("no upstream nameserver"));
}

/// Many concurrent queries: every one answered with its own id, the counter adds up.
#[tokio::test]
async fn concurrent_queries_each_get_their_own_answer() {
    let (upstream, _seen) = fake_upstream(Upstream::Answer).await;
    let h = Arc::new(
        Harness::start(
            policy(&["www.allowed.test"]),
            vec![upstream],
            DenyRcode::Refused,
        )
        .await,
    );
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for id in 0..64u16 {
        let h = h.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let qname = if id % 2 == 0 {
                "www.allowed.test."
            } else {
                "evil.test."
            };
            let reply = h.udp(&query_bytes(id, qname, RecordType::A)).await;
            assert_eq!(reply.id(), id);
            done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 64);
    assert_eq!(h.queries("allow", "udp"), 32);
    assert_eq!(h.queries("deny", "udp"), 32);
}

/// The real policy crate decides: exact and wildcard hosts resolve, others are refused,
/// and `dns: forward` forwards everything.
#[tokio::test]
async fn a_compiled_policy_drives_the_decision() {
    use palisade_policy::CompiledPolicy;

    fn compiled(yaml: &str) -> Arc<CompiledPolicy> {
        let parsed = palisade_policy::parse_policy(yaml.as_bytes()).unwrap();
        palisade_policy::validate(&parsed).unwrap();
        Arc::new(CompiledPolicy::compile(&parsed))
    }
    let enforce = compiled(
        "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: dns-test\n\
         spec:\n  egress:\n    - name: api\n      hosts: [\"api.allowed.test\", \"*.cdn.test\"]\n      ports: [443]\n",
    );
    let (upstream, _seen) = fake_upstream(Upstream::Answer).await;
    let config = DnsConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        upstreams: vec![upstream],
        deny_rcode: DenyRcode::Refused,
        upstream_timeout: Duration::from_secs(5),
    };
    let server = bind(&config).await.unwrap();
    let addr = server.local_addrs()[0];
    let metrics = DnsMetrics::register(&Registry::new()).unwrap();
    let cache = Arc::new(AnswerCache::new(8));
    let (tx, rx) = watch::channel(enforce);
    // The public entry point, with the real policy type.
    tokio::spawn(server.run(rx, cache.clone(), metrics));

    let ask = |id: u16, qname: &'static str| async move {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(&query_bytes(id, qname, RecordType::A), addr)
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(HANG_GUARD, client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.id(), id);
        reply.response_code()
    };
    assert_eq!(ask(1, "API.allowed.test.").await, ResponseCode::NoError);
    assert_eq!(ask(2, "edge.cdn.test.").await, ResponseCode::NoError);
    assert_eq!(ask(3, "evil.test.").await, ResponseCode::Refused);
    assert_eq!(ask(4, "allowed.test.").await, ResponseCode::Refused);
    assert!(cache.answered("api.allowed.test", IpAddr::from([198, 18, 0, 10])));

    tx.send(compiled(
        "apiVersion: palisade.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: dns-forward\n\
         spec:\n  dns: forward\n  egress:\n    - name: api\n      hosts: [\"api.allowed.test\"]\n      ports: [443]\n",
    ))
    .unwrap();
    assert_eq!(ask(5, "evil.test.").await, ResponseCode::NoError);
}

/// A TXT record under a name the policy does not allow: the payload of a smuggling attempt.
fn smuggled(owner: &str) -> Record {
    use hickory_proto::rr::rdata::TXT;
    Record::from_rdata(
        name(owner),
        0,
        RData::TXT(TXT::new(vec!["exfiltrated-bytes".to_owned()])),
    )
}

#[tokio::test]
async fn records_besides_the_question_are_formerr_and_never_forwarded() {
    let (upstream, mut seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(policy(&["a.test"]), vec![upstream], DenyRcode::Refused).await;
    let mut attempts = Vec::new();
    let mut q = query(0x3001, "a.test.", RecordType::A);
    q.add_answer(smuggled("secret.denied.test."));
    attempts.push(q);
    let mut q = query(0x3002, "a.test.", RecordType::A);
    q.add_name_server(smuggled("secret.denied.test."));
    attempts.push(q);
    let mut q = query(0x3003, "a.test.", RecordType::A);
    q.add_additional(smuggled("secret.denied.test."));
    q.set_edns(Edns::new());
    attempts.push(q);
    for (n, q) in attempts.iter().enumerate() {
        let reply = h.udp(&q.to_vec().unwrap()).await;
        assert_eq!(
            (reply.id(), reply.response_code()),
            (q.id(), ResponseCode::FormErr),
            "attempt {n}"
        );
        // Over TCP the same.
        let mut stream = TcpStream::connect(h.addr).await.unwrap();
        let reply = tcp_exchange(&mut stream, &q.to_vec().unwrap()).await;
        assert_eq!(reply.response_code(), ResponseCode::FormErr, "tcp {n}");
    }
    assert_eq!(h.bad("records"), 6);
    assert_eq!(h.queries("error", "udp"), 3);
    assert!(seen.try_recv().is_err(), "nothing may reach the upstream");
    // The same query without the extra records is answered.
    let reply = h.udp(&query_bytes(0x3004, "a.test.", RecordType::A)).await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(seen.recv().await.unwrap().query.additionals().len(), 0);
}

#[tokio::test]
async fn trailing_bytes_are_formerr_and_never_forwarded() {
    let (upstream, mut seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(policy(&["a.test"]), vec![upstream], DenyRcode::Refused).await;
    let mut bytes = query_bytes(0x3101, "a.test.", RecordType::A);
    bytes.extend_from_slice(b"trailing-secret-payload");
    let reply = h.udp(&bytes).await;
    assert_eq!(
        (reply.id(), reply.response_code()),
        (0x3101, ResponseCode::FormErr)
    );
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let reply = tcp_exchange(&mut stream, &bytes).await;
    assert_eq!(reply.response_code(), ResponseCode::FormErr);
    assert_eq!(h.bad("trailing"), 2);
    assert!(seen.try_recv().is_err(), "nothing may reach the upstream");
}

#[tokio::test]
async fn the_upstream_gets_a_rebuilt_query_without_edns_options() {
    use hickory_proto::rr::rdata::opt::EdnsOption;
    let (upstream, mut seen) = fake_upstream(Upstream::Answer).await;
    let h = Harness::start(policy(&["a.test"]), vec![upstream], DenyRcode::Refused).await;
    let mut q = query(0x3201, "a.test.", RecordType::A);
    q.set_checking_disabled(true);
    let mut edns = Edns::new();
    edns.set_max_payload(1400).set_dnssec_ok(true);
    edns.options_mut()
        .insert(EdnsOption::Unknown(65001, b"smuggled option data".to_vec()));
    edns.options_mut().insert(EdnsOption::Unknown(
        10, // COOKIE: 8-40 bytes of whatever the client likes
        b"0123456789abcdef".to_vec(),
    ));
    q.set_edns(edns);
    let reply = h.udp(&q.to_vec().unwrap()).await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    let upstream_saw = seen.recv().await.unwrap().query;
    assert_eq!(upstream_saw.queries(), q.queries());
    assert!(upstream_saw.recursion_desired() && upstream_saw.checking_disabled());
    let forwarded = upstream_saw.extensions().as_ref().unwrap();
    assert!(forwarded.options().as_ref().is_empty(), "{forwarded:?}");
    assert_eq!(forwarded.max_payload(), 1400);
    assert!(forwarded.flags().dnssec_ok);
    assert_eq!(h.metrics.edns_options_stripped.get(), 1);
    // A query without options is not counted.
    let mut q = query(0x3202, "a.test.", RecordType::A);
    q.set_edns(Edns::new());
    h.udp(&q.to_vec().unwrap()).await;
    assert_eq!(h.metrics.edns_options_stripped.get(), 1);
}

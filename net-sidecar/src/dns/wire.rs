//! DNS messages on the wire: classifying what a client sent, checking what an upstream
//! sent back, and the few responses the server writes itself. All parsing is
//! `hickory-proto`'s; this module only adds the checks a resolver in front of an untrusted
//! client needs (bounded allocation, exactly one question, id/question matching).

use std::net::IpAddr;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::metrics::BadKind;

/// Size of the fixed DNS header.
pub(super) const HEADER_LEN: usize = 12;
/// Smallest wire size of a question: root name (1) + type (2) + class (2).
const MIN_QUESTION_LEN: usize = 5;
/// Smallest wire size of a resource record: root name (1) + type, class, ttl, rdlength (10).
const MIN_RECORD_LEN: usize = 11;
/// UDP payload size we advertise in responses we write ourselves (RFC 9715 advice).
const OWN_EDNS_PAYLOAD: u16 = 1232;
/// CNAME hops followed when collecting the addresses of a queried name.
const MAX_CNAME_HOPS: usize = 16;

/// What a client message turned out to be.
#[derive(Debug)]
pub(super) enum Inbound {
    /// Not worth an answer (too short to carry an id, or itself a response).
    Drop(BadKind),
    /// Answer with this error response (FORMERR / NOTIMP), counting `kind`.
    Reject { kind: BadKind, response: Vec<u8> },
    /// A standard query with exactly one question.
    Query(Message),
}

/// Classify a client message. Never panics, and never allocates more than a small
/// multiple of the packet size, whatever the header's counts claim.
pub(super) fn classify(packet: &[u8]) -> Inbound {
    let Some(header) = read_header(packet) else {
        return Inbound::Drop(BadKind::Short);
    };
    if header.message_type() == MessageType::Response {
        return Inbound::Drop(BadKind::Response);
    }
    let reject = |kind, rcode| match error_response(&header, rcode) {
        Some(response) => Inbound::Reject { kind, response },
        None => Inbound::Drop(kind),
    };
    if header.op_code() != OpCode::Query {
        return reject(BadKind::Opcode, ResponseCode::NotImp);
    }
    if header.query_count() != 1 {
        return reject(BadKind::Questions, ResponseCode::FormErr);
    }
    if !counts_plausible(&header, packet.len()) {
        return reject(BadKind::Malformed, ResponseCode::FormErr);
    }
    // A query is its question (and at most one OPT): records in any other section, or in
    // the additional section besides OPT, would reach the resolver as data of their own.
    if header.answer_count() != 0 || header.name_server_count() != 0 {
        return reject(BadKind::Records, ResponseCode::FormErr);
    }
    let mut decoder = BinDecoder::new(packet);
    let message = match Message::read(&mut decoder) {
        Ok(message) => message,
        Err(_) => return reject(BadKind::Malformed, ResponseCode::FormErr),
    };
    if message.queries().len() != 1 {
        return reject(BadKind::Questions, ResponseCode::FormErr);
    }
    if !message.additionals().is_empty() || !message.signature().is_empty() {
        return reject(BadKind::Records, ResponseCode::FormErr);
    }
    if !decoder.is_empty() {
        return reject(BadKind::Trailing, ResponseCode::FormErr);
    }
    Inbound::Query(message)
}

/// What is sent upstream for a client's query: a message rebuilt from its parsed parts,
/// never the client's bytes. It carries the question, the RD and CD flags, and — when the
/// client sent an OPT record — an OPT with only the UDP payload size (at least 512) and the
/// DO bit: no EDNS options, no other flags, version 0. The second value is true when the
/// client's OPT carried options that were dropped. The id is set by the exchange.
pub(super) fn upstream_query(query: &Message) -> Option<(Vec<u8>, bool)> {
    let question = query.queries().first()?;
    let mut message = Message::new();
    message
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(query.recursion_desired())
        .set_checking_disabled(query.checking_disabled())
        .add_query(question.clone());
    let mut stripped = false;
    if let Some(client) = query.extensions() {
        stripped = !client.options().as_ref().is_empty();
        let mut edns = Edns::new();
        edns.set_max_payload(client.max_payload().max(512))
            .set_version(0)
            .set_dnssec_ok(client.flags().dnssec_ok);
        message.set_edns(edns);
    }
    message.to_vec().ok().map(|bytes| (bytes, stripped))
}

/// The header, if the packet is long enough to have one.
fn read_header(packet: &[u8]) -> Option<Header> {
    if packet.len() < HEADER_LEN {
        return None;
    }
    Header::read(&mut BinDecoder::new(packet)).ok()
}

/// Whether the section counts could fit in the packet at all. `hickory-proto` reserves
/// vectors of the declared counts before reading, so a 12-byte packet claiming 65535
/// records would otherwise cost megabytes.
fn counts_plausible(header: &Header, len: usize) -> bool {
    let questions = usize::from(header.query_count()) * MIN_QUESTION_LEN;
    let records = (usize::from(header.answer_count())
        + usize::from(header.name_server_count())
        + usize::from(header.additional_count()))
        * MIN_RECORD_LEN;
    questions + records <= len.saturating_sub(HEADER_LEN)
}

/// An error response carrying only the header fields we could read (no question).
fn error_response(header: &Header, rcode: ResponseCode) -> Option<Vec<u8>> {
    let mut message = Message::error_msg(header.id(), header.op_code(), rcode);
    message
        .set_recursion_desired(header.recursion_desired())
        .set_recursion_available(true);
    message.to_vec().ok()
}

/// A response to `query` with `rcode`, the question echoed and no records (deny, SERVFAIL).
pub(super) fn reply_with_rcode(query: &Message, rcode: ResponseCode) -> Option<Vec<u8>> {
    let mut message = Message::new();
    message
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(query.checking_disabled())
        .set_response_code(rcode)
        .add_queries(query.queries().iter().cloned());
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(OWN_EDNS_PAYLOAD).set_version(0);
        message.set_edns(edns);
    }
    message.to_vec().ok()
}

/// `packet` with its id replaced (the first two bytes).
pub(super) fn with_id(packet: &[u8], id: u16) -> Vec<u8> {
    let mut out = packet.to_vec();
    if let Some(head) = out.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
    out
}

/// Parse an upstream datagram and accept it only as the answer to what we sent: a
/// response, with our id, to exactly our question. Anything else is `None`.
pub(super) fn matching_reply(packet: &[u8], id: u16, question: &Query) -> Option<Message> {
    let header = read_header(packet)?;
    if header.id() != id
        || header.message_type() != MessageType::Response
        || header.query_count() != 1
        || !counts_plausible(&header, packet.len())
    {
        return None;
    }
    let message = Message::from_vec(packet).ok()?;
    let echoed = message.queries().first()?;
    // `Name` equality ignores ASCII case, as DNS does.
    (echoed.name() == question.name()
        && echoed.query_type() == question.query_type()
        && echoed.query_class() == question.query_class())
    .then_some(message)
}

/// The addresses an answer gives for `qname`, following CNAMEs from it, and the smallest
/// TTL along the way. `None` when the answer holds no address for the name.
pub(super) fn answer_addrs(answer: &Message, qname: &Name) -> Option<(Vec<IpAddr>, u32)> {
    if answer.response_code() != ResponseCode::NoError {
        return None;
    }
    let mut chain: Vec<&Name> = vec![qname];
    let mut ttl = u32::MAX;
    for _ in 0..MAX_CNAME_HOPS {
        let next = answer
            .answers()
            .iter()
            .find_map(|record| match record.data() {
                RData::CNAME(target)
                    if chain.contains(&record.name()) && !chain.contains(&&target.0) =>
                {
                    Some((&target.0, record.ttl()))
                }
                _ => None,
            });
        let Some((target, hop_ttl)) = next else {
            break;
        };
        chain.push(target);
        ttl = ttl.min(hop_ttl);
    }
    let mut addrs = Vec::new();
    let mut addr_ttl = u32::MAX;
    for record in answer.answers() {
        let ip = match record.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        if chain.contains(&record.name()) && !addrs.contains(&ip) {
            addrs.push(ip);
            addr_ttl = addr_ttl.min(record.ttl());
        }
    }
    (!addrs.is_empty()).then(|| (addrs, ttl.min(addr_ttl)))
}

/// The query name as the policy sees it: ASCII (presentation escapes kept), lower case,
/// no trailing dot.
pub(super) fn policy_name(name: &Name) -> String {
    let mut text = name.to_ascii();
    if text.ends_with('.') {
        text.pop();
    }
    text.make_ascii_lowercase();
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::{Record, RecordType};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn query_message(id: u16, qname: &str, qtype: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(name(qname), qtype));
        m
    }

    /// Header (id 0xBEEF, RD, one question) + a question whose name is a pointer to itself.
    fn compression_loop_packet() -> Vec<u8> {
        let mut p = vec![0xBE, 0xEF, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        p.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        p
    }

    fn rcode_and_id(bytes: &[u8]) -> (ResponseCode, u16) {
        let m = Message::from_vec(bytes).unwrap();
        assert_eq!(m.message_type(), MessageType::Response);
        (m.response_code(), m.id())
    }

    #[test]
    fn a_well_formed_query_is_a_query() {
        let bytes = query_message(7, "api.example.test.", RecordType::A)
            .to_vec()
            .unwrap();
        match classify(&bytes) {
            Inbound::Query(m) => assert_eq!(m.queries()[0].name(), &name("api.example.test.")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_packets_and_responses_are_dropped() {
        assert!(matches!(
            classify(&[1, 2, 3]),
            Inbound::Drop(BadKind::Short)
        ));
        assert!(matches!(classify(&[]), Inbound::Drop(BadKind::Short)));
        let mut m = query_message(7, "x.test.", RecordType::A);
        m.set_message_type(MessageType::Response);
        assert!(matches!(
            classify(&m.to_vec().unwrap()),
            Inbound::Drop(BadKind::Response)
        ));
    }

    #[test]
    fn compression_loop_is_formerr_with_the_id() {
        match classify(&compression_loop_packet()) {
            Inbound::Reject {
                kind: BadKind::Malformed,
                response,
            } => {
                assert_eq!(rcode_and_id(&response), (ResponseCode::FormErr, 0xBEEF));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_and_garbage_bodies_are_formerr() {
        let full = query_message(9, "truncated.example.test.", RecordType::AAAA)
            .to_vec()
            .unwrap();
        for cut in HEADER_LEN..full.len() {
            match classify(&full[..cut]) {
                Inbound::Reject {
                    kind: BadKind::Malformed,
                    response,
                } => {
                    assert_eq!(rcode_and_id(&response), (ResponseCode::FormErr, 9));
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        // A header claiming 65535 additional records in a 17-byte packet.
        let mut huge = full[..HEADER_LEN].to_vec();
        huge[10] = 0xFF;
        huge[11] = 0xFF;
        huge.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(matches!(
            classify(&huge),
            Inbound::Reject {
                kind: BadKind::Malformed,
                ..
            }
        ));
        // Label longer than 63 (0x40 is a reserved label type).
        let mut bad = full[..HEADER_LEN].to_vec();
        bad.extend_from_slice(&[0x40, b'a', 0, 0, 1, 0, 1]);
        assert!(matches!(
            classify(&bad),
            Inbound::Reject {
                kind: BadKind::Malformed,
                ..
            }
        ));
    }

    #[test]
    fn question_count_must_be_one() {
        let mut two = query_message(11, "a.test.", RecordType::A);
        two.add_query(Query::query(name("b.test."), RecordType::A));
        match classify(&two.to_vec().unwrap()) {
            Inbound::Reject {
                kind: BadKind::Questions,
                response,
            } => {
                assert_eq!(rcode_and_id(&response), (ResponseCode::FormErr, 11));
            }
            other => panic!("{other:?}"),
        }
        let none = Message::error_msg(12, OpCode::Query, ResponseCode::NoError);
        let mut none = none;
        none.set_message_type(MessageType::Query);
        assert!(matches!(
            classify(&none.to_vec().unwrap()),
            Inbound::Reject {
                kind: BadKind::Questions,
                ..
            }
        ));
    }

    #[test]
    fn other_opcodes_are_notimp() {
        let mut m = query_message(13, "x.test.", RecordType::A);
        m.set_op_code(OpCode::Update);
        match classify(&m.to_vec().unwrap()) {
            Inbound::Reject {
                kind: BadKind::Opcode,
                response,
            } => {
                assert_eq!(rcode_and_id(&response), (ResponseCode::NotImp, 13));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deny_reply_echoes_the_question() {
        let mut q = query_message(0x1234, "Denied.Example.Test.", RecordType::AAAA);
        q.set_edns(Edns::new());
        for rcode in [
            ResponseCode::Refused,
            ResponseCode::NXDomain,
            ResponseCode::ServFail,
        ] {
            let bytes = reply_with_rcode(&q, rcode).unwrap();
            let m = Message::from_vec(&bytes).unwrap();
            assert_eq!(m.id(), 0x1234);
            assert_eq!(m.response_code(), rcode);
            assert!(m.recursion_desired() && m.recursion_available());
            assert_eq!(m.queries(), q.queries());
            assert!(m.answers().is_empty());
            assert_eq!(
                m.extensions().as_ref().map(|e| e.max_payload()),
                Some(OWN_EDNS_PAYLOAD)
            );
        }
    }

    #[test]
    fn upstream_replies_must_match_id_and_question() {
        let question = Query::query(name("api.example.test."), RecordType::A);
        let mut reply = query_message(500, "API.example.test.", RecordType::A);
        reply.set_message_type(MessageType::Response);
        let good = reply.to_vec().unwrap();
        assert!(matching_reply(&good, 500, &question).is_some());
        assert!(matching_reply(&good, 501, &question).is_none());
        assert!(matching_reply(&good[..good.len() - 1], 500, &question).is_none());
        let other_type = Query::query(name("api.example.test."), RecordType::AAAA);
        assert!(matching_reply(&good, 500, &other_type).is_none());
        let other_name = Query::query(name("evil.example.test."), RecordType::A);
        assert!(matching_reply(&good, 500, &other_name).is_none());
        // A query (QR=0) with the right id is not an answer.
        let q = query_message(500, "api.example.test.", RecordType::A)
            .to_vec()
            .unwrap();
        assert!(matching_reply(&q, 500, &question).is_none());
    }

    #[test]
    fn addresses_follow_cname_chains() {
        let qname = name("www.example.test.");
        let mut m = Message::new();
        m.set_message_type(MessageType::Response);
        m.add_answer(Record::from_rdata(
            qname.clone(),
            300,
            RData::CNAME(CNAME(name("edge.cdn.test."))),
        ));
        m.add_answer(Record::from_rdata(
            name("EDGE.cdn.test."),
            120,
            RData::CNAME(CNAME(name("pop1.cdn.test."))),
        ));
        m.add_answer(Record::from_rdata(
            name("pop1.cdn.test."),
            60,
            RData::A(A(Ipv4Addr::new(198, 18, 0, 7))),
        ));
        m.add_answer(Record::from_rdata(
            name("pop1.cdn.test."),
            90,
            RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
        ));
        // Not on the chain: never recorded under the queried name.
        m.add_answer(Record::from_rdata(
            name("elsewhere.test."),
            10,
            RData::A(A(Ipv4Addr::new(198, 18, 0, 99))),
        ));
        let (addrs, ttl) = answer_addrs(&m, &qname).unwrap();
        assert_eq!(
            addrs,
            vec![
                IpAddr::from([198, 18, 0, 7]),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ]
        );
        assert_eq!(ttl, 60);

        // A CNAME loop ends; no address means nothing to record.
        let mut looped = Message::new();
        looped.add_answer(Record::from_rdata(
            qname.clone(),
            5,
            RData::CNAME(CNAME(name("b.test."))),
        ));
        looped.add_answer(Record::from_rdata(
            name("b.test."),
            5,
            RData::CNAME(CNAME(qname.clone())),
        ));
        assert!(answer_addrs(&looped, &qname).is_none());

        m.set_response_code(ResponseCode::NXDomain);
        assert!(answer_addrs(&m, &qname).is_none());
    }

    #[test]
    fn policy_names_are_lower_case_without_the_root_dot() {
        assert_eq!(policy_name(&name("API.Example.Test.")), "api.example.test");
        assert_eq!(policy_name(&name("relative.test")), "relative.test");
        assert_eq!(policy_name(&Name::root()), "");
    }

    #[test]
    fn ids_are_rewritten_in_place() {
        let bytes = query_message(1, "x.test.", RecordType::A).to_vec().unwrap();
        let out = with_id(&bytes, 0xABCD);
        assert_eq!(&out[..2], &[0xAB, 0xCD]);
        assert_eq!(&out[2..], &bytes[2..]);
        assert!(with_id(&[], 1).is_empty());
    }
}

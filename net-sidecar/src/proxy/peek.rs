//! Protocol peek: what a connection's first bytes are — a TLS ClientHello (and its SNI), an
//! HTTP/1 request head (and its Host), or opaque TCP — without consuming them.
//!
//! Owns: the pure classifier [`classify`] over a byte prefix, the non-consuming peek loop on a
//! socket ([`peek_stream`], `MSG_PEEK` through `nix`), and the consuming read-ahead for
//! streams that cannot be peeked ([`read_ahead`], used inside CONNECT tunnels).
//! Must never: consume bytes from a peeked socket (the upstream gets the client's bytes
//! unchanged), hold more than [`PEEK_CAP`] bytes, wait longer than the peek timeout, or
//! busy-loop while waiting for more bytes.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{MsgFlags, recv};
use tls_parser::{
    SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_client_hello_extensions,
    parse_tls_message_handshake,
};
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::admin::metrics::BadInput;

/// Most bytes looked at before deciding. A ClientHello or request head that does not fit is
/// refused (`client_hello_too_large` / `header_too_large`).
pub const PEEK_CAP: usize = 16 * 1024;
/// Most headers in a request head.
const MAX_HEADERS: usize = 100;
/// Longest HTTP method token accepted as "looks like HTTP".
const MAX_METHOD_LEN: usize = 32;
/// TLS record type of handshake messages.
const TLS_HANDSHAKE: u8 = 0x16;
/// Largest TLS plaintext record fragment (RFC 8446 §5.1).
const TLS_MAX_FRAGMENT: usize = 1 << 14;

/// What a connection carries, as far as its first bytes tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// A complete TLS ClientHello; the SNI host name (lower-case, no trailing dot) if present.
    Tls { sni: Option<String> },
    /// A complete HTTP/1 request head; its Host header (as sent, without port) if present.
    Http { host: Option<String> },
    /// Anything else — including a client that sent nothing (server-speaks-first protocols).
    Opaque,
}

/// Result of looking at a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    Done(Peeked),
    /// The prefix is a valid beginning of a ClientHello / request head: wait for more.
    NeedMore,
    Bad(BadInput),
}

/// Classify a byte prefix. `eof` says no more bytes will come (peer closed or buffer full).
pub fn classify(buf: &[u8], eof: bool) -> Classified {
    if buf.is_empty() {
        return if eof {
            Classified::Done(Peeked::Opaque)
        } else {
            Classified::NeedMore
        };
    }
    let out = if buf[0] == TLS_HANDSHAKE {
        classify_tls(buf)
    } else {
        classify_http(buf)
    };
    match out {
        Classified::NeedMore if buf.len() >= PEEK_CAP => {
            Classified::Bad(if buf[0] == TLS_HANDSHAKE {
                BadInput::ClientHelloTooLarge
            } else {
                BadInput::HeaderTooLarge
            })
        }
        Classified::NeedMore if eof => Classified::Bad(if buf[0] == TLS_HANDSHAKE {
            BadInput::MalformedClientHello
        } else {
            BadInput::MalformedHttp
        }),
        other => other,
    }
}

/// Reassemble the first handshake message from one or more TLS records and parse it.
fn classify_tls(buf: &[u8]) -> Classified {
    let mut handshake: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(header) = buf.get(pos..pos + 5) else {
            return Classified::NeedMore;
        };
        let (kind, major, len) = (
            header[0],
            header[1],
            usize::from(u16::from_be_bytes([header[3], header[4]])),
        );
        if kind != TLS_HANDSHAKE || major != 3 || len == 0 || len > TLS_MAX_FRAGMENT {
            return Classified::Bad(BadInput::MalformedClientHello);
        }
        let available = &buf[pos + 5..];
        let complete_record = available.len() >= len;
        handshake.extend_from_slice(&available[..len.min(available.len())]);
        pos += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                // Not a ClientHello (type 1): no client starts a connection like that.
                return Classified::Bad(BadInput::MalformedClientHello);
            }
            let body_len = usize::from(handshake[1]) << 16
                | usize::from(handshake[2]) << 8
                | usize::from(handshake[3]);
            if body_len > PEEK_CAP {
                return Classified::Bad(BadInput::ClientHelloTooLarge);
            }
            if handshake.len() >= 4 + body_len {
                return match client_hello_sni(&handshake[..4 + body_len]) {
                    Ok(sni) => Classified::Done(Peeked::Tls { sni }),
                    Err(()) => Classified::Bad(BadInput::MalformedClientHello),
                };
            }
        }
        if !complete_record {
            return Classified::NeedMore;
        }
    }
}

/// The SNI host name of a complete ClientHello handshake message.
fn client_hello_sni(message: &[u8]) -> Result<Option<String>, ()> {
    let Ok((rest, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) =
        parse_tls_message_handshake(message)
    else {
        return Err(());
    };
    if !rest.is_empty() {
        return Err(());
    }
    let Some(ext) = hello.ext else {
        return Ok(None);
    };
    let Ok((rest, extensions)) = parse_tls_client_hello_extensions(ext) else {
        return Err(());
    };
    if !rest.is_empty() {
        return Err(());
    }
    for extension in extensions {
        if let TlsExtension::SNI(names) = extension {
            let Some((_, name)) = names.iter().find(|(kind, _)| *kind == SNIType::HostName) else {
                return Err(());
            };
            return normalize_host(name).map(Some).ok_or(());
        }
    }
    Ok(None)
}

/// A DNS host name as the policy compares it: ASCII letters, digits, `-`, `_`, `.`; at most
/// 253 characters; lower-cased, one trailing dot removed. `None` if it is not such a name.
pub fn normalize_host(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    if raw.is_empty()
        || raw.len() > 253
        || raw.starts_with(b".")
        || raw.windows(2).any(|w| w == b"..")
    {
        return None;
    }
    if !raw
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return None;
    }
    Some(raw.iter().map(|b| b.to_ascii_lowercase() as char).collect())
}

/// Whether the bytes so far can be the start of an HTTP/1 request line.
#[derive(Debug, PartialEq, Eq)]
enum RequestLine {
    Complete,
    Partial,
    Invalid,
}

fn request_line(buf: &[u8]) -> RequestLine {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    // method
    let method_len = buf.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len > MAX_METHOD_LEN {
        return RequestLine::Invalid;
    }
    if method_len == buf.len() {
        return RequestLine::Partial;
    }
    if method_len == 0 || buf[method_len] != b' ' {
        return RequestLine::Invalid;
    }
    // request target: visible ASCII
    let rest = &buf[method_len + 1..];
    let target_len = rest.iter().take_while(|&&b| b.is_ascii_graphic()).count();
    if target_len == rest.len() {
        return RequestLine::Partial;
    }
    if target_len == 0 || rest[target_len] != b' ' {
        return RequestLine::Invalid;
    }
    // version
    let rest = &rest[target_len + 1..];
    const VERSION: &[u8] = b"HTTP/1.";
    let n = rest.len().min(VERSION.len());
    if rest[..n] != VERSION[..n] {
        return RequestLine::Invalid;
    }
    match rest.get(VERSION.len()) {
        None => RequestLine::Partial,
        Some(b'0' | b'1') => match rest.get(VERSION.len() + 1..) {
            None | Some([]) | Some([b'\r']) => RequestLine::Partial,
            Some([b'\r', b'\n', ..]) | Some([b'\n', ..]) => RequestLine::Complete,
            Some(_) => RequestLine::Invalid,
        },
        Some(_) => RequestLine::Invalid,
    }
}

fn classify_http(buf: &[u8]) -> Classified {
    match request_line(buf) {
        RequestLine::Invalid => return Classified::Done(Peeked::Opaque),
        RequestLine::Partial => return Classified::NeedMore,
        RequestLine::Complete => {}
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let host = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(|v| v.trim().to_owned());
            Classified::Done(Peeked::Http { host })
        }
        Ok(httparse::Status::Partial) => Classified::NeedMore,
        Err(httparse::Error::TooManyHeaders) => Classified::Bad(BadInput::HeaderTooLarge),
        Err(_) => Classified::Bad(BadInput::MalformedHttp),
    }
}

/// Why a peek ended without a classification.
#[derive(Debug)]
pub enum PeekError {
    Bad(BadInput),
    Io(io::Error),
    /// The client closed without sending a byte: nothing to decide.
    Closed,
}

/// Peek (without consuming) until the first bytes classify, the cap is reached, the peer
/// closes, or `timeout` passes. A client that sends nothing before the timeout is opaque.
pub async fn peek_stream(stream: &TcpStream, timeout: Duration) -> Result<Peeked, PeekError> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; PEEK_CAP];
    let mut seen = 0usize;
    loop {
        let step = tokio::time::timeout_at(deadline, peek_more(stream, &mut buf, seen)).await;
        let (n, eof) = match step {
            Err(_elapsed) => {
                return if seen == 0 {
                    Ok(Peeked::Opaque)
                } else {
                    Err(PeekError::Bad(BadInput::PeekTimeout))
                };
            }
            Ok(Err(err)) => return Err(PeekError::Io(err)),
            Ok(Ok(v)) => v,
        };
        seen = n;
        if seen == 0 && eof {
            return Err(PeekError::Closed);
        }
        match classify(&buf[..seen], eof || seen >= PEEK_CAP) {
            Classified::Done(peeked) => return Ok(peeked),
            Classified::Bad(kind) => return Err(PeekError::Bad(kind)),
            Classified::NeedMore => {}
        }
    }
}

/// Wait until more than `seen` bytes are queued (or the peer closed) and peek them all.
/// Returns the number of queued bytes and whether the peer has closed its side.
async fn peek_more(stream: &TcpStream, buf: &mut [u8], seen: usize) -> io::Result<(usize, bool)> {
    let fd = stream.as_raw_fd();
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let closed = ready.is_read_closed();
        let result = stream.try_io(Interest::READABLE, || {
            let n = recv(fd, buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT)
                .map_err(io::Error::from)?;
            if n <= seen && n != 0 && !closed {
                // Nothing new yet: report WouldBlock so tokio clears readiness and the next
                // arriving segment wakes us (no busy loop).
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match result {
            Ok(n) => return Ok((n, n == 0 || closed)),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Read (consuming) from a stream that cannot be peeked until the prefix classifies; the
/// bytes read are returned so the caller can replay them upstream.
pub async fn read_ahead<R: AsyncRead + Unpin>(
    reader: &mut R,
    timeout: Duration,
) -> (Vec<u8>, Result<Peeked, PeekError>) {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let mut chunk = [0u8; 4096];
        let room = PEEK_CAP - buf.len();
        let step =
            tokio::time::timeout_at(deadline, reader.read(&mut chunk[..room.min(4096)])).await;
        let n = match step {
            Err(_elapsed) => {
                let result = if buf.is_empty() {
                    Ok(Peeked::Opaque)
                } else {
                    Err(PeekError::Bad(BadInput::PeekTimeout))
                };
                return (buf, result);
            }
            Ok(Err(err)) => return (buf, Err(PeekError::Io(err))),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.is_empty() {
            return (buf, Err(PeekError::Closed));
        }
        match classify(&buf, n == 0 || buf.len() >= PEEK_CAP) {
            Classified::Done(peeked) => return (buf, Ok(peeked)),
            Classified::Bad(kind) => return (buf, Err(PeekError::Bad(kind))),
            Classified::NeedMore => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
pub(crate) mod tests {
    use super::*;

    /// A TLS 1.2-style ClientHello with the given SNI (and a few other extensions), as one
    /// handshake message (without record framing).
    pub(crate) fn client_hello_message(sni: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let name = name.as_bytes();
            let mut list = vec![0u8]; // host_name
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend_from_slice(&list);
            exts.extend_from_slice(&[0, 0]);
            exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
            exts.extend_from_slice(&data);
        }
        // supported_versions: TLS 1.3
        exts.extend_from_slice(&[0, 0x2b, 0, 3, 2, 3, 4]);
        // a GREASE extension with some padding to make the hello bigger
        exts.extend_from_slice(&[0x0a, 0x0a, 0, 0]);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]); // ciphers
        body.extend_from_slice(&[1, 0]); // compression: null
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// Frame a handshake message into TLS records of at most `chunk` bytes each.
    pub(crate) fn records(message: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in message.chunks(chunk) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    fn tls(sni: Option<&str>) -> Classified {
        Classified::Done(Peeked::Tls {
            sni: sni.map(str::to_owned),
        })
    }

    #[test]
    fn client_hello_sni_in_one_record() {
        let wire = records(&client_hello_message(Some("API.Example.COM.")), 16384);
        assert_eq!(classify(&wire, false), tls(Some("api.example.com")));
    }

    #[test]
    fn client_hello_without_sni() {
        let wire = records(&client_hello_message(None), 16384);
        assert_eq!(classify(&wire, false), tls(None));
    }

    #[test]
    fn client_hello_split_over_records_and_segments() {
        let wire = records(&client_hello_message(Some("allowed.test")), 7);
        assert!(wire.len() > 100);
        // Every strict prefix is "need more"; the whole is complete.
        for cut in 1..wire.len() {
            assert_eq!(
                classify(&wire[..cut], false),
                Classified::NeedMore,
                "prefix {cut}"
            );
        }
        assert_eq!(classify(&wire, false), tls(Some("allowed.test")));
        // A prefix with the peer gone is malformed, never opaque.
        assert_eq!(
            classify(&wire[..20], true),
            Classified::Bad(BadInput::MalformedClientHello)
        );
    }

    #[test]
    fn malformed_client_hellos() {
        // Wrong record version.
        assert_eq!(
            classify(&[0x16, 9, 1, 0, 5, 1, 0, 0, 1, 0], false),
            Classified::Bad(BadInput::MalformedClientHello)
        );
        // Zero-length record.
        assert_eq!(
            classify(&[0x16, 3, 1, 0, 0], false),
            Classified::Bad(BadInput::MalformedClientHello)
        );
        // Handshake of another type (ServerHello).
        let mut msg = client_hello_message(Some("a.test"));
        msg[0] = 2;
        assert_eq!(
            classify(&records(&msg, 16384), false),
            Classified::Bad(BadInput::MalformedClientHello)
        );
        // Garbage inside a well-framed ClientHello.
        let mut msg = client_hello_message(Some("a.test"));
        let len = msg.len();
        msg[len - 12..].fill(0xff);
        assert_eq!(
            classify(&records(&msg, 16384), false),
            Classified::Bad(BadInput::MalformedClientHello)
        );
        // An alert record in the middle.
        let mut wire = records(&client_hello_message(Some("a.test"))[..10], 16384);
        wire.extend_from_slice(&[0x15, 3, 3, 0, 2, 2, 40]);
        assert_eq!(
            classify(&wire, false),
            Classified::Bad(BadInput::MalformedClientHello)
        );
        // An SNI that is not a host name.
        let wire = records(&client_hello_message(Some("bad host")), 16384);
        assert_eq!(
            classify(&wire, false),
            Classified::Bad(BadInput::MalformedClientHello)
        );
    }

    #[test]
    fn oversized_client_hello_is_refused_at_the_cap() {
        // Announces a 1 MiB handshake message.
        let wire = [0x16, 3, 1, 0x40, 0, 1, 0x10, 0, 0];
        assert_eq!(
            classify(&wire, false),
            Classified::Bad(BadInput::ClientHelloTooLarge)
        );
        // Fills the cap with valid-looking records without ever completing.
        let mut msg = vec![1, 0, 0x80, 0];
        msg.resize(PEEK_CAP + 100, 0);
        let wire = records(&msg, 16384);
        assert_eq!(
            classify(&wire[..PEEK_CAP], true),
            Classified::Bad(BadInput::ClientHelloTooLarge)
        );
    }

    #[test]
    fn http_request_heads() {
        let head = b"GET /x HTTP/1.1\r\nHost: Allowed.Test:8080\r\nAccept: */*\r\n\r\n";
        assert_eq!(
            classify(head, false),
            Classified::Done(Peeked::Http {
                host: Some("Allowed.Test:8080".into())
            })
        );
        for cut in 1..head.len() {
            assert_eq!(
                classify(&head[..cut], false),
                Classified::NeedMore,
                "prefix {cut}"
            );
        }
        assert_eq!(
            classify(b"GET / HTTP/1.0\r\n\r\n", false),
            Classified::Done(Peeked::Http { host: None })
        );
    }

    #[test]
    fn bad_http() {
        // A valid request line, then a broken header.
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n", false),
            Classified::Bad(BadInput::MalformedHttp)
        );
        // Too many headers.
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            head.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert_eq!(
            classify(&head, false),
            Classified::Bad(BadInput::HeaderTooLarge)
        );
        // A 64 KiB Host header never completes within the cap.
        let mut head = b"GET / HTTP/1.1\r\nHost: ".to_vec();
        head.resize(64 * 1024, b'a');
        assert_eq!(
            classify(&head[..PEEK_CAP], true),
            Classified::Bad(BadInput::HeaderTooLarge)
        );
        // The peer hung up half-way.
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a", true),
            Classified::Bad(BadInput::MalformedHttp)
        );
    }

    #[test]
    fn everything_else_is_opaque() {
        for bytes in [
            &b"\x00\x01\x02garbage"[..],
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"PING\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / SPDY/3\r\n",
            b"\x80\x2e\x01\x03\x01",
            b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA / HTTP/1.1\r\n",
        ] {
            assert_eq!(
                classify(bytes, false),
                Classified::Done(Peeked::Opaque),
                "{bytes:?}"
            );
        }
        assert_eq!(classify(b"", true), Classified::Done(Peeked::Opaque));
        assert_eq!(classify(b"", false), Classified::NeedMore);
    }

    #[test]
    fn host_names() {
        assert_eq!(
            normalize_host(b"A-b_c.Example.com."),
            Some("a-b_c.example.com".into())
        );
        for bad in [
            &b""[..],
            b".",
            b".a",
            b"a..b",
            b"a b",
            b"a/b",
            b"\xc3\xa9.test",
            b"a:443",
        ] {
            assert_eq!(normalize_host(bad), None, "{bad:?}");
        }
        assert_eq!(normalize_host(&[b'a'; 254]), None);
    }

    #[tokio::test]
    async fn peek_does_not_consume_and_waits_for_split_hellos() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let wire = records(&client_hello_message(Some("allowed.test")), 9);
        let sent = wire.clone();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.set_nodelay(true).unwrap();
            for part in sent.chunks(13) {
                c.write_all(part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            c
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let peeked = peek_stream(&server, Duration::from_secs(30)).await.unwrap();
        assert_eq!(
            peeked,
            Peeked::Tls {
                sni: Some("allowed.test".into())
            }
        );
        let _client = client.await.unwrap();
        let mut got = vec![0u8; wire.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, wire, "peek must leave every byte in the socket");
    }

    #[tokio::test]
    async fn peek_times_out_on_slowloris_and_treats_silence_as_opaque() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _slow = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for b in b"GET / HTTP/1.1\r\nHost: a" {
                if c.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            c
        });
        let (server, _) = listener.accept().await.unwrap();
        let err = peek_stream(&server, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(err, PeekError::Bad(BadInput::PeekTimeout)),
            "{err:?}"
        );

        let silent = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(
            peek_stream(&server, Duration::from_millis(100))
                .await
                .unwrap(),
            Peeked::Opaque
        );
        drop(silent);
    }

    #[tokio::test]
    async fn a_client_that_closes_silently_is_not_decided() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        drop(c);
        let (server, _) = listener.accept().await.unwrap();
        let err = peek_stream(&server, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(matches!(err, PeekError::Closed), "{err:?}");
        let (bytes, r) = read_ahead(&mut tokio::io::empty(), Duration::from_secs(60)).await;
        assert!(bytes.is_empty() && matches!(r, Err(PeekError::Closed)));
    }

    #[tokio::test]
    async fn peek_sees_a_close_after_partial_data() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        c.shutdown().await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // Generous timeout: the result must come from the FIN, not from the timer.
        let err = peek_stream(&server, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(
            matches!(err, PeekError::Bad(BadInput::MalformedHttp)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn read_ahead_returns_the_bytes_it_consumed() {
        let wire = records(&client_hello_message(Some("x.test")), 50);
        let (mut a, mut b) = tokio::io::duplex(64);
        let sent = wire.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(&sent).await.unwrap();
            a
        });
        let (bytes, peeked) = read_ahead(&mut b, Duration::from_secs(30)).await;
        assert_eq!(
            peeked.unwrap(),
            Peeked::Tls {
                sni: Some("x.test".into())
            }
        );
        assert_eq!(bytes, wire);
    }
}

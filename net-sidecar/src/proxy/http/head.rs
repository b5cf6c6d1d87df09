//! Strict HTTP/1 request heads, checked on the agent side before hyper parses them.
//!
//! hyper is lenient where request smuggling lives: it accepts bare-LF line endings, and when
//! a request carries both `Content-Length` and `Transfer-Encoding` it drops the former
//! instead of refusing the request, so by the time a request reaches the proxy the evidence
//! is gone. [`HeadCheck`] sits between the agent's (decrypted) byte stream and hyper and
//! looks at every request head with `httparse` before hyper gets a byte of it.
//!
//! Owns: finding where each request head on a keep-alive connection begins, refusing heads
//! that another HTTP implementation could frame differently ([`Problem`]), and writing the
//! 400/431 JSON answer for them.
//! Must never: hand hyper a single byte of a head it has not accepted, change a byte it does
//! accept, or lose sync with hyper about where a message ends.
//!
//! How it stays in sync with hyper (the part that has to be obviously right):
//! * It follows the message framing itself. After an accepted head, the body is exactly
//!   `Content-Length` bytes, or a chunked body, or empty — heads that leave any doubt (both
//!   headers, several `Content-Length`, a `Transfer-Encoding` other than `chunked`) are
//!   refused, so the framing it follows is the only one the request can have. Chunked
//!   bodies are followed with `httparse::parse_chunk_size`, only accepting the canonical
//!   form (digits first, CRLF line ends, CRLF after data, a CRLF-terminated trailer section)
//!   that hyper reads the same way; anything else is refused as malformed. The byte after a
//!   message is therefore the first byte of the next head for both of them.
//! * Bytes of a head are held back until the complete head was accepted (bounded by the
//!   head limit: a longer head is answered 431). A refused head, and everything after it,
//!   is never released: hyper reads end-of-stream there, finishes the responses it owes
//!   (hyper's `half_close` must be on so that end-of-stream mid-exchange does not abort
//!   them), and shuts the stream down — at which point the refusal is written, so it
//!   cannot interleave with a response hyper is still writing. Then the connection closes.
//! * After a protocol switch request (`CONNECT`, or an `Upgrade` header once its body, if
//!   any, ended) the bytes that follow may be another protocol, so checking stops for good;
//!   the proxy closes the connection after answering such a request unless the switch
//!   happened (101), so hyper never parses a further request on it.
//! * A problem inside a body (broken chunked framing, or the agent closing before the body
//!   is complete) is reported but not answered here: hyper already handed the request to
//!   the proxy, which sees the body fail at the end of the stream and answers it (400,
//!   nothing sent upstream within its read-ahead window).
//! * A connection that opens with the HTTP/2 preface (hyper's auto server) is HTTP/2:
//!   nothing is checked (HTTP/2 framing has no such ambiguity; the h2 crate refuses CR/LF/NUL
//!   in header values).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::admin::metrics::BadInput;
use crate::proxy::audit::error_body;

/// Most header fields in a request head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (size, extensions, CRLF); hyper refuses longer extensions too.
const MAX_CHUNK_LINE: usize = 16 * 1024;
/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes read from the agent at once while a head is being collected.
const READ_CHUNK: usize = 8 * 1024;

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    ClAndTe,
    DuplicateContentLength,
    BadTransferEncoding,
    BareLf,
    ObsFold,
    MultipleHost,
    /// Not parseable as an HTTP/1 request head, a bad Content-Length value, or broken chunked
    /// framing.
    Malformed,
    /// The head is longer than the limit or has too many fields (431).
    TooLarge,
    /// Broken framing inside a request body (chunk-size line, CRLF after chunk data,
    /// trailers). Found after hyper got the head: the proxy answers it (400, nothing sent
    /// upstream while the body is inside the pre-read window).
    MalformedBody,
    /// The agent closed its side before the body it announced was complete.
    TruncatedBody,
}

impl Problem {
    /// The `bad_input_total{kind}` this is counted as.
    pub fn kind(self) -> BadInput {
        match self {
            Problem::ClAndTe => BadInput::ClAndTe,
            Problem::DuplicateContentLength => BadInput::DuplicateContentLength,
            Problem::BadTransferEncoding => BadInput::BadTransferEncoding,
            Problem::BareLf => BadInput::BareLf,
            Problem::ObsFold => BadInput::ObsFold,
            Problem::MultipleHost => BadInput::MultipleHost,
            Problem::Malformed => BadInput::MalformedHttp,
            Problem::TooLarge => BadInput::HeaderTooLarge,
            Problem::MalformedBody | Problem::TruncatedBody => BadInput::MalformedBody,
        }
    }

    /// What the agent is told.
    pub fn message(self) -> &'static str {
        match self {
            Problem::ClAndTe => "both Content-Length and Transfer-Encoding",
            Problem::DuplicateContentLength => "more than one Content-Length header",
            Problem::BadTransferEncoding => "Transfer-Encoding other than exactly `chunked`",
            Problem::BareLf => "line feed without carriage return in the request head",
            Problem::ObsFold => "folded (obs-fold) header line",
            Problem::MultipleHost => "more than one Host header",
            Problem::Malformed => "malformed HTTP/1 request (head, Content-Length or chunked body)",
            Problem::TooLarge => "the request head is larger than the sidecar accepts",
            Problem::MalformedBody => {
                "malformed request body (chunk-size line, chunk end or trailers)"
            }
            Problem::TruncatedBody => "the request body ended before it was complete",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Problem::TooLarge => 431,
            _ => 400,
        }
    }

    /// The complete HTTP/1.1 answer: JSON error body, `Connection: close`.
    pub fn response(self) -> Vec<u8> {
        let (error, line) = match self {
            Problem::TooLarge => ("header_too_large", "431 Request Header Fields Too Large"),
            _ => ("bad_request", "400 Bad Request"),
        };
        let body = serde_json::to_vec(&error_body(error, self.message(), None))
            .unwrap_or_else(|_| b"{}".to_vec());
        let mut out = format!(
            "HTTP/1.1 {line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }
}

/// How the connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// HTTP/1 only.
    Http1,
    /// HTTP/1 or, if it opens with the preface, HTTP/2 (hyper's auto server).
    Http1OrH2,
}

/// Where in the request stream the next byte is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first byte: HTTP/2 preface or an HTTP/1 head.
    Preface,
    /// Collecting a request head.
    Head,
    /// This many body bytes remain (Content-Length).
    Length(u64),
    /// A chunk-size line.
    ChunkSize,
    /// This many bytes of chunk data remain.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// The trailer section after the last chunk (ends with an empty line).
    Trailers,
    /// Not checked any more (HTTP/2, or after a protocol switch request).
    PassThrough,
}

/// What a step over the held bytes did.
enum Step {
    /// Some bytes became releasable, or the state changed: go on.
    Progress,
    /// More bytes are needed from the agent.
    NeedMore,
    Refuse(Problem),
}

/// What a complete, accepted head says about what follows it.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    len: usize,
    next: State,
    /// An `Upgrade` request: after its body (if any) the bytes may be another protocol.
    upgrade: bool,
}

/// Called once with the reason when a head is refused (metrics, audit).
pub type Report = Box<dyn FnOnce(Problem) + Send>;

/// The agent-side stream as hyper sees it: request heads checked, refused ones answered.
pub struct HeadCheck<T> {
    inner: T,
    state: State,
    /// Head limit in bytes.
    limit: usize,
    /// Read from the agent, not yet judged.
    held: Vec<u8>,
    /// Judged, not yet handed to hyper (`released[pos..]`).
    released: Vec<u8>,
    pos: usize,
    /// No more bytes for hyper: the agent closed, or a head was refused.
    eof: bool,
    /// The refusal to write when hyper shuts the stream down (`reply[sent..]`).
    reply: Vec<u8>,
    sent: usize,
    report: Option<Report>,
    /// The current body belongs to an `Upgrade` request: pass through once it ends.
    pass_after_body: bool,
}

impl<T> std::fmt::Debug for HeadCheck<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadCheck")
            .field("state", &self.state)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl<T> HeadCheck<T> {
    pub fn new(inner: T, start: Start, limit: usize, report: Report) -> Self {
        Self {
            inner,
            state: match start {
                Start::Http1 => State::Head,
                Start::Http1OrH2 => State::Preface,
            },
            limit,
            held: Vec::new(),
            released: Vec::new(),
            pos: 0,
            eof: false,
            reply: Vec::new(),
            sent: 0,
            report: Some(report),
            pass_after_body: false,
        }
    }

    /// Whether the next bytes belong to a request body (hyper has the head already).
    fn in_body(&self) -> bool {
        matches!(
            self.state,
            State::Length(_)
                | State::ChunkSize
                | State::ChunkData(_)
                | State::ChunkEnd
                | State::Trailers
        )
    }

    /// The state after a request body ended: the next head, or pass-through after an
    /// `Upgrade` request's body.
    fn after_body(&mut self) -> State {
        if std::mem::take(&mut self.pass_after_body) {
            State::PassThrough
        } else {
            State::Head
        }
    }

    /// The agent closed its side: hyper sees the end of the stream. Inside a body that is
    /// a truncated request (reported; hyper fails the body and the proxy answers it).
    fn closed(&mut self) {
        if self.in_body() {
            self.refuse(Problem::TruncatedBody);
        }
        self.eof = true;
        self.held.clear();
    }

    /// Release the first `n` held bytes to hyper.
    fn release(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.released.clear();
        self.pos = 0;
        if n == self.held.len() {
            std::mem::swap(&mut self.released, &mut self.held);
        } else {
            self.released.extend(self.held.drain(..n));
        }
    }

    /// Refuse what follows. A head is answered here (when hyper shuts the stream down);
    /// inside a body hyper already handed the request to the proxy, which sees the body
    /// fail (end of stream) and answers it itself, so nothing is written here.
    fn refuse(&mut self, problem: Problem) {
        let problem = match problem {
            Problem::TruncatedBody => Problem::TruncatedBody,
            _ if self.in_body() => Problem::MalformedBody,
            other => {
                self.reply = other.response();
                other
            }
        };
        self.eof = true;
        self.held = Vec::new();
        self.state = State::PassThrough;
        if let Some(report) = self.report.take() {
            report(problem);
        }
    }

    /// Judge as much of `held` as the state allows.
    fn step(&mut self) -> Step {
        let held = &self.held[..];
        match self.state {
            State::Preface => {
                let n = held.len().min(H2_PREFACE.len());
                if held[..n] != H2_PREFACE[..n] {
                    self.state = State::Head;
                } else if n == H2_PREFACE.len() {
                    self.state = State::PassThrough;
                } else {
                    return Step::NeedMore;
                }
                Step::Progress
            }
            State::Head => match check_head(held, self.limit) {
                Ok(Some(head)) => {
                    self.state = head.next;
                    self.pass_after_body = head.upgrade;
                    self.release(head.len);
                    Step::Progress
                }
                Ok(None) => Step::NeedMore,
                Err(problem) => Step::Refuse(problem),
            },
            State::Length(left) | State::ChunkData(left) => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(held.len());
                let left = left - n as u64;
                self.state = match (self.state, left) {
                    (State::Length(_), 0) => self.after_body(),
                    (State::Length(_), _) => State::Length(left),
                    (_, 0) => State::ChunkEnd,
                    _ => State::ChunkData(left),
                };
                self.release(n);
                Step::Progress
            }
            State::ChunkSize => match chunk_size_line(held) {
                Ok(Some((len, 0))) => {
                    self.state = State::Trailers;
                    self.release(len);
                    Step::Progress
                }
                Ok(Some((len, size))) => {
                    self.state = State::ChunkData(size);
                    self.release(len);
                    Step::Progress
                }
                Ok(None) => Step::NeedMore,
                Err(problem) => Step::Refuse(problem),
            },
            State::ChunkEnd => match held {
                [b'\r', b'\n', ..] => {
                    self.state = State::ChunkSize;
                    self.release(2);
                    Step::Progress
                }
                [] | [b'\r'] => Step::NeedMore,
                _ => Step::Refuse(Problem::Malformed),
            },
            State::Trailers => match trailer_section(held, self.limit) {
                Ok(Some(len)) => {
                    self.state = self.after_body();
                    self.release(len);
                    Step::Progress
                }
                Ok(None) => Step::NeedMore,
                Err(problem) => Step::Refuse(problem),
            },
            State::PassThrough => {
                self.release(held.len());
                Step::Progress
            }
        }
    }
}

/// Judge a request head at the start of `buf`: `Ok(None)` = incomplete so far.
fn check_head(buf: &[u8], limit: usize) -> Result<Option<Head>, Problem> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let parsed = req.parse(buf);
    // The head is everything up to its end, or all we have while it is incomplete.
    let head = match parsed {
        Ok(httparse::Status::Complete(len)) => &buf[..len],
        _ => buf,
    };
    if has_bare_lf(head) {
        return Err(Problem::BareLf);
    }
    if head
        .windows(2)
        .any(|w| w[0] == b'\n' && matches!(w[1], b' ' | b'\t'))
    {
        return Err(Problem::ObsFold);
    }
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limit => return Err(Problem::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Problem::TooLarge),
        Err(_) => return Err(Problem::Malformed),
    };
    if len > limit {
        return Err(Problem::TooLarge);
    }
    let (mut lengths, mut encodings, mut hosts) = (Vec::new(), Vec::new(), 0usize);
    let connect = req.method == Some("CONNECT");
    let mut upgrade = false;
    for field in req.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            lengths.push(field.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            encodings.push(field.value);
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if hosts > 1 {
        return Err(Problem::MultipleHost);
    }
    if !lengths.is_empty() && !encodings.is_empty() {
        return Err(Problem::ClAndTe);
    }
    if lengths.len() > 1 {
        return Err(Problem::DuplicateContentLength);
    }
    let body = match (lengths.first(), encodings.as_slice()) {
        (Some(value), _) => {
            let value = value.trim_ascii();
            if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
                return Err(Problem::Malformed);
            }
            let n: u64 = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or(Problem::Malformed)?;
            (n > 0).then_some(State::Length(n))
        }
        (None, []) => None,
        (None, [one]) if one.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            if req.version != Some(1) {
                // HTTP/1.0 has no chunked encoding.
                return Err(Problem::BadTransferEncoding);
            }
            Some(State::ChunkSize)
        }
        (None, _) => return Err(Problem::BadTransferEncoding),
    };
    let next = match (connect, upgrade, body) {
        // A tunnel: whatever follows the head is not HTTP.
        (true, _, _) => State::PassThrough,
        // The body (if any) is still HTTP framing; what follows it may be another protocol.
        (false, true, body) => body.unwrap_or(State::PassThrough),
        (false, false, body) => body.unwrap_or(State::Head),
    };
    Ok(Some(Head {
        len,
        next,
        upgrade: upgrade && !connect,
    }))
}

/// A LF that is not the second byte of a CRLF.
fn has_bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

/// A CR that is not followed by LF (the last byte may be a CR whose LF is still to come).
fn has_bare_cr(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && bytes.get(i + 1).is_some_and(|&n| n != b'\n'))
}

/// A chunk-size line at the start of `buf`: `(line length, chunk size)`, `Ok(None)` =
/// incomplete. Only `HEXDIGITS [ext] CRLF` with no other CR or LF is accepted.
fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, Problem> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_CHUNK_LINE || has_bare_cr(buf) {
            return Err(Problem::Malformed);
        }
        return Ok(None);
    };
    let line = &buf[..=lf];
    if lf > MAX_CHUNK_LINE
        || !line.first().is_some_and(u8::is_ascii_hexdigit)
        || lf == 0
        || line[lf - 1] != b'\r'
        || line[..lf - 1].contains(&b'\r')
    {
        return Err(Problem::Malformed);
    }
    match httparse::parse_chunk_size(line) {
        Ok(httparse::Status::Complete((len, size))) if len == line.len() => Ok(Some((len, size))),
        _ => Err(Problem::Malformed),
    }
}

/// The trailer section after the last chunk: its length including the final empty line,
/// `Ok(None)` = incomplete. Every line must end with CRLF and parse as a header field.
fn trailer_section(buf: &[u8], limit: usize) -> Result<Option<usize>, Problem> {
    let end = if buf.starts_with(b"\r\n") {
        Some(2)
    } else {
        buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
    };
    let section = &buf[..end.unwrap_or(buf.len())];
    if has_bare_lf(section) || has_bare_cr(section) {
        return Err(Problem::BareLf);
    }
    let Some(len) = end else {
        return if buf.len() > limit {
            Err(Problem::TooLarge)
        } else {
            Ok(None)
        };
    };
    if len > limit {
        return Err(Problem::TooLarge);
    }
    if len > 2 {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::parse_headers(section, &mut fields) {
            Ok(httparse::Status::Complete((n, _))) if n == len => {}
            Err(httparse::Error::TooManyHeaders) => return Err(Problem::TooLarge),
            _ => return Err(Problem::Malformed),
        }
    }
    Ok(Some(len))
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadCheck<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.released.len() {
                let n = (this.released.len() - this.pos).min(buf.remaining());
                buf.put_slice(&this.released[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !this.held.is_empty() {
                match this.step() {
                    Step::Progress => continue,
                    Step::NeedMore => {}
                    Step::Refuse(problem) => {
                        this.refuse(problem);
                        continue;
                    }
                }
            }
            let fast = matches!(
                this.state,
                State::Length(_) | State::ChunkData(_) | State::PassThrough
            );
            if fast && this.held.is_empty() {
                // Body bytes: read straight into hyper's buffer, keep back whatever lies past
                // the end of the body for the next step.
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let new = buf.filled().len() - before;
                if new == 0 {
                    this.closed();
                    return Poll::Ready(Ok(()));
                }
                let take = match this.state {
                    State::Length(left) | State::ChunkData(left) => {
                        usize::try_from(left).unwrap_or(usize::MAX).min(new)
                    }
                    _ => new,
                };
                if take < new {
                    this.held
                        .extend_from_slice(&buf.filled()[before + take..before + new]);
                    buf.set_filled(before + take);
                }
                this.state = match this.state {
                    State::Length(left) if left == take as u64 => this.after_body(),
                    State::Length(left) => State::Length(left - take as u64),
                    State::ChunkData(left) if left == take as u64 => State::ChunkEnd,
                    State::ChunkData(left) => State::ChunkData(left - take as u64),
                    other => other,
                };
                if take > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut tmp = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut tmp))?;
            if tmp.filled().is_empty() {
                // The agent closed; an unfinished head or chunk line is dropped (hyper sees
                // the end of the stream, as it would have anyway).
                this.closed();
                return Poll::Ready(Ok(()));
            }
            this.held.extend_from_slice(tmp.filled());
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadCheck<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// hyper shuts the stream down once it has written every response it owes: the place to
    /// answer a refused head.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.sent < this.reply.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.reply[this.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.sent += n;
        }
        if !this.reply.is_empty() {
            ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const LIMIT: usize = 4096;

    fn head(raw: &str) -> Result<Option<Head>, Problem> {
        check_head(raw.as_bytes(), LIMIT)
    }

    #[test]
    fn well_formed_heads_and_what_follows_them() {
        let h = head("GET / HTTP/1.1\r\nHost: a\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(
            h,
            Head {
                len: 27,
                next: State::Head,
                upgrade: false,
            }
        );
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.next, State::Length(5));
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.next, State::Head);
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.next, State::ChunkSize);
        let h = head(
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.next, h.upgrade), (State::PassThrough, true));
        let h = head("POST /up HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nContent-Length: 4\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.next, h.upgrade), (State::Length(4), true));
        let h = head("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.next, State::PassThrough);
        // Incomplete so far.
        assert_eq!(head("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(head("GET / HTTP/1.1\r\nHost: a\r\n\r"), Ok(None));
        assert_eq!(head("GE"), Ok(None));
    }

    #[test]
    fn smuggling_prone_heads_are_refused() {
        let cases = [
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                Problem::ClAndTe,
            ),
            (
                "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: a\r\ncontent-length: 4\r\n\r\n",
                Problem::ClAndTe,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 46\r\n\r\n",
                Problem::DuplicateContentLength,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                Problem::DuplicateContentLength,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Problem::BadTransferEncoding,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Problem::BadTransferEncoding,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
                Problem::BadTransferEncoding,
            ),
            (
                "GET / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Problem::BadTransferEncoding,
            ),
            ("GET / HTTP/1.1\nHost: a\n\n", Problem::BareLf),
            ("GET / HTTP/1.1\r\nHost: a\n\r\n", Problem::BareLf),
            ("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Problem::BareLf),
            // Refused as soon as the bare LF shows, before the head is complete.
            ("GET / HTTP/1.1\nHo", Problem::BareLf),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
                Problem::ObsFold,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n",
                Problem::ObsFold,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                Problem::MultipleHost,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHOST: a\r\n\r\n",
                Problem::MultipleHost,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\n",
                Problem::Malformed,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                Problem::Malformed,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
                Problem::Malformed,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nAuthorization : x\r\n\r\n",
                Problem::Malformed,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
                Problem::Malformed,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
                Problem::Malformed,
            ),
            ("\x16\x03\x01\x00", Problem::Malformed),
        ];
        for (raw, want) in cases {
            assert_eq!(head(raw), Err(want), "{raw:?}");
        }
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(LIMIT)
        );
        assert_eq!(head(&big), Err(Problem::TooLarge));
        assert_eq!(head(&big[..LIMIT + 10]), Err(Problem::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(check_head(many.as_bytes(), 1 << 20), Err(Problem::TooLarge));
    }

    #[test]
    fn chunk_lines_and_trailers() {
        assert_eq!(chunk_size_line(b"1a\r\nxyz"), Ok(Some((4, 26))));
        assert_eq!(chunk_size_line(b"1A;ext=v\r\n"), Ok(Some((10, 26))));
        assert_eq!(chunk_size_line(b"0\r\n"), Ok(Some((3, 0))));
        assert_eq!(chunk_size_line(b"1a"), Ok(None));
        assert_eq!(chunk_size_line(b"1a\r"), Ok(None));
        for bad in [
            &b"1a\n"[..],
            b"\r\n",
            b";x\r\n",
            b" 1\r\n",
            b"1 1\r\n",
            b"1;a\rb\r\n",
            b"1a\rx",
            b"zz\r\n",
            b"11111111111111111\r\n",
        ] {
            assert_eq!(chunk_size_line(bad), Err(Problem::Malformed), "{bad:?}");
        }
        assert_eq!(trailer_section(b"\r\nGET", LIMIT), Ok(Some(2)));
        assert_eq!(
            trailer_section(b"X: 1\r\nY: 2\r\n\r\nGET", LIMIT),
            Ok(Some(14))
        );
        assert_eq!(trailer_section(b"X: 1\r\n", LIMIT), Ok(None));
        assert_eq!(trailer_section(b"\r", LIMIT), Ok(None));
        assert_eq!(
            trailer_section(b"X: 1\nGET / HTTP/1.1\r\n\r\n", LIMIT),
            Err(Problem::BareLf)
        );
        assert_eq!(
            trailer_section(b"X: 1\r\r\n\r\n", LIMIT),
            Err(Problem::BareLf)
        );
        assert_eq!(
            trailer_section(b"X : 1\r\n\r\n", LIMIT),
            Err(Problem::Malformed)
        );
    }

    /// Feed `input` through a [`HeadCheck`] `step` bytes at a time; returns what the reader
    /// got, the reported problem, and what the agent got after shutdown.
    async fn through(input: &[u8], step: usize) -> (Vec<u8>, Option<Problem>, Vec<u8>) {
        let (mut agent, sidecar) = tokio::io::duplex(64 * 1024);
        let reported = Arc::new(parking_lot::Mutex::new(None));
        let r = reported.clone();
        let mut check = HeadCheck::new(
            sidecar,
            Start::Http1OrH2,
            LIMIT,
            Box::new(move |p| *r.lock() = Some(p)),
        );
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            // After a refusal the sidecar side stops reading: later writes may fail.
            for piece in input.chunks(step) {
                if agent.write_all(piece).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let _ = agent.shutdown().await;
            let mut back = Vec::new();
            agent.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        check.read_to_end(&mut got).await.unwrap();
        check.shutdown().await.unwrap();
        drop(check);
        let back = writer.await.unwrap();
        let problem = *reported.lock();
        (got, problem, back)
    }

    #[tokio::test]
    async fn keep_alive_requests_are_each_checked_and_bodies_pass_unchanged() {
        let good = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\nGET /x HTTP/\
POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\n\nGET \r\n0\r\nX-T: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: a\r\n\r\n";
        let smuggled = b"GET /d HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /e HTTP/1.1\r\nHost: a\r\n\r\n";
        for step in [1, 3, 7, 64, 100_000] {
            let (got, problem, back) = through(good, step).await;
            assert_eq!(got, good.to_vec(), "step {step}");
            assert_eq!(problem, None);
            assert!(back.is_empty());

            let mut input = good.to_vec();
            input.extend_from_slice(smuggled);
            let (got, problem, back) = through(&input, step).await;
            // Everything up to the refused head, not one byte of it or after it.
            assert_eq!(got, good.to_vec(), "step {step}");
            assert_eq!(problem, Some(Problem::ClAndTe));
            let back = String::from_utf8(back).unwrap();
            assert!(back.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{back}");
            assert!(back.contains("connection: close\r\n"), "{back}");
            assert!(back.ends_with(
                r#"{"error":"bad_request","reason":"both Content-Length and Transfer-Encoding"}"#
            ), "{back}");
        }
    }

    #[tokio::test]
    async fn body_bytes_that_look_like_heads_are_not_judged() {
        // A body that contains a "smuggled" head is just body bytes: it is framed by CL.
        let input =
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 24\r\n\r\nGET / HTTP/1.1\nHost: b\n\n";
        let (got, problem, _) = through(input, 5).await;
        assert_eq!(problem, None);
        assert_eq!(got, input.to_vec());
        // Broken chunk framing is refused rather than guessed at; the request is already
        // hyper's, so the proxy answers it (nothing is written here).
        let input = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcGET / HTTP/1.1\r\n\r\n";
        let (got, problem, back) = through(input, 5).await;
        assert_eq!(problem, Some(Problem::MalformedBody));
        assert_eq!(got, input[..input.len() - 18].to_vec());
        assert!(back.is_empty(), "{}", String::from_utf8_lossy(&back));
    }

    #[tokio::test]
    async fn broken_and_truncated_bodies_are_reported_not_answered() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        for (body, want) in [
            // Chunk size that is not hex.
            (&b"zz\r\nabc\r\n0\r\n\r\n"[..], Problem::MalformedBody),
            // Data not followed by CRLF.
            (b"3\r\nabcd\r\n0\r\n\r\n", Problem::MalformedBody),
            // Bare LF in a chunk line.
            (b"3\nabc\r\n0\r\n\r\n", Problem::MalformedBody),
            // Bare LF in the trailers.
            (b"0\r\nX: 1\n\r\n", Problem::MalformedBody),
            // Truncated inside a chunk, inside a chunk line, before the trailers end.
            (b"5\r\nab", Problem::TruncatedBody),
            (b"5", Problem::TruncatedBody),
            (b"0\r\nX: 1\r\n", Problem::TruncatedBody),
        ] {
            let mut input = head.to_vec();
            input.extend_from_slice(body);
            for step in [1, 4, 1000] {
                let (got, problem, back) = through(&input, step).await;
                assert_eq!(
                    problem,
                    Some(want),
                    "{:?} step {step}",
                    String::from_utf8_lossy(body)
                );
                assert!(got.starts_with(head));
                assert!(back.is_empty());
            }
        }
        // Content-Length body cut short.
        let input = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc";
        let (got, problem, back) = through(input, 7).await;
        assert_eq!(
            (got, problem),
            (input.to_vec(), Some(Problem::TruncatedBody))
        );
        assert!(back.is_empty());
        assert_eq!(Problem::TruncatedBody.kind(), BadInput::MalformedBody);
        // A complete request followed by the agent closing is not a truncation.
        let input = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(through(input, 2).await.1, None);
    }

    #[tokio::test]
    async fn upgrade_request_bodies_are_still_checked() {
        // The body of an Upgrade request is HTTP framing: checked like any other.
        let bad = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX";
        let (_, problem, _) = through(bad, 3).await;
        assert_eq!(problem, Some(Problem::MalformedBody));
        // After the body ends, what follows may be another protocol: not judged.
        let ok = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nhi\x81\x05hello\nbare\n";
        let (got, problem, _) = through(ok, 3).await;
        assert_eq!((got, problem), (ok.to_vec(), None));
    }

    #[tokio::test]
    async fn http2_and_switched_protocols_pass_through() {
        let mut h2 = H2_PREFACE.to_vec();
        h2.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\nanything\n");
        let (got, problem, _) = through(&h2, 3).await;
        assert_eq!((got, problem), (h2, None));
        let ws = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello\nbare\n";
        let (got, problem, _) = through(ws, 4).await;
        assert_eq!((got, problem), (ws.to_vec(), None));
    }

    #[tokio::test]
    async fn a_long_head_is_answered_431() {
        let input = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(LIMIT)
        );
        let (got, problem, back) = through(input.as_bytes(), 1000).await;
        assert!(got.is_empty());
        assert_eq!(problem, Some(Problem::TooLarge));
        assert!(
            String::from_utf8(back)
                .unwrap()
                .starts_with("HTTP/1.1 431 ")
        );
    }

    /// hyper behind the check: the requests before a refused head are answered, the refused
    /// one never reaches the service, the agent gets the 400 last, then the connection ends.
    #[tokio::test]
    async fn hyper_answers_what_came_before_and_then_the_refusal() {
        for pipelined in [false, true] {
            let calls = Arc::new(AtomicUsize::new(0));
            let (mut agent, sidecar) = tokio::io::duplex(64 * 1024);
            let c = calls.clone();
            let server = tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let c = c.clone();
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        // Slow enough that a pipelined refusal arrives mid-exchange.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                            "got {}",
                            body.len()
                        )))))
                    }
                });
                let io = HeadCheck::new(sidecar, Start::Http1, LIMIT, Box::new(|_| {}));
                hyper::server::conn::http1::Builder::new()
                    .half_close(true)
                    .serve_connection(TokioIo::new(io), svc)
                    .with_upgrades()
                    .await
            });
            let first = b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
            let bad = b"GET /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 9\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\n\r\n";
            agent.write_all(first).await.unwrap();
            if !pipelined {
                let mut seen = Vec::new();
                while !String::from_utf8_lossy(&seen).contains("got 3") {
                    let mut b = [0u8; 1024];
                    let n = agent.read(&mut b).await.unwrap();
                    assert!(n > 0);
                    seen.extend_from_slice(&b[..n]);
                }
            }
            agent.write_all(bad).await.unwrap();
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), agent.read_to_end(&mut rest))
                .await
                .unwrap()
                .unwrap();
            let rest = String::from_utf8(rest).unwrap();
            assert!(
                rest.contains("HTTP/1.1 400 Bad Request\r\n")
                    && rest.ends_with(r#""reason":"more than one Content-Length header"}"#),
                "pipelined={pipelined}: {rest}"
            );
            if pipelined {
                assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
                assert!(rest.find("got 3").unwrap() < rest.find("400 Bad").unwrap());
            }
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}

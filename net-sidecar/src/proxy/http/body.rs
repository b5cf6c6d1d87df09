//! Request bodies on their way upstream: read up to [`PREREAD_LIMIT`] before anything is
//! sent, then relayed.
//!
//! Owns: the bounded pre-read of each request body ([`preread`]) and the body the upstream
//! request carries ([`UpstreamBody`]): the pre-read bytes, then the rest streamed from the
//! agent. A body that breaks inside the window is refused (400) before the upstream is
//! dialled; one that breaks after it makes the upstream body fail, which aborts the upstream
//! connection (hyper never writes the end of the body), and [`UpstreamBody::broken`] tells
//! the proxy that the agent, not the upstream, was at fault.
//! Must never: buffer more than the window (plus one frame), or let an upstream see the end
//! of a body the agent did not finish.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Request-body bytes read before the request goes upstream (and before the request's
/// `_method` form field is looked for). A body that ends within it is sent as a complete
/// body; a longer one is streamed after it.
pub const PREREAD_LIMIT: usize = 64 * 1024;

/// The start of a request body, read before anything went upstream.
#[derive(Debug)]
pub struct Preread {
    /// The bytes read (at most the window plus the last frame).
    pub data: Bytes,
    /// Trailers, when the body ended inside the window with some.
    trailers: Option<HeaderMap>,
    /// The rest of the body, or `None` when it ended inside the window.
    pub rest: Option<Incoming>,
}

impl Preread {
    /// Whether the whole body was read (it ended inside the window).
    pub fn complete(&self) -> bool {
        self.rest.is_none()
    }
}

/// Read `body` until it ends or at least `limit` bytes are in; an error (broken framing, the
/// agent closing early or resetting the stream) is returned before anything was sent.
pub async fn preread(mut body: Incoming, limit: usize) -> Result<Preread, hyper::Error> {
    let mut data = BytesMut::new();
    let mut trailers = None;
    let mut rest = None;
    while !body.is_end_stream() {
        if data.len() >= limit {
            rest = Some(body);
            break;
        }
        match body.frame().await {
            None => break,
            Some(Err(err)) => return Err(err),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                        break;
                    }
                }
            },
        }
    }
    Ok(Preread {
        data: data.freeze(),
        trailers,
        rest,
    })
}

/// The body of a request sent upstream: the pre-read bytes, then the rest of the agent's body.
#[derive(Debug)]
pub struct UpstreamBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<Incoming>,
    broken: Arc<AtomicBool>,
}

impl UpstreamBody {
    pub fn new(preread: Preread) -> Self {
        Self {
            data: Some(preread.data).filter(|d| !d.is_empty()),
            trailers: preread.trailers,
            rest: preread.rest,
            broken: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set once the agent's body failed while it was being streamed upstream.
    pub fn broken(&self) -> Arc<AtomicBool> {
        self.broken.clone()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(rest) = this.rest.as_mut() {
            match ready!(Pin::new(rest).poll_frame(cx)) {
                Some(Ok(frame)) => return Poll::Ready(Some(Ok(frame))),
                Some(Err(err)) => {
                    this.rest = None;
                    this.broken.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(err)));
                }
                None => this.rest = None,
            }
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let buffered = self.data.as_ref().map_or(0, |d| d.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower().saturating_add(buffered));
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper.saturating_add(buffered));
                }
                out
            }
        }
    }
}

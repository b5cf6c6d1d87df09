//! Stream adapters for the agent side of a connection.
//!
//! Owns: [`Counted`] (counts bytes up/down into the metrics and stamps [`Activity`] for the
//! idle timeout), [`Activity`] itself, and [`Rewind`] (replays bytes that were read ahead,
//! then reads from the stream).
//! Must never: buffer beyond what it is handed, or change a single byte.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection last moved a byte (either direction).
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    pub fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once nothing has moved for `idle`.
    pub async fn idle(&self, idle: Duration) {
        loop {
            let deadline = self.last() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Agent-side stream that counts bytes and records activity.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    up: IntCounter,
    down: IntCounter,
    activity: Arc<Activity>,
}

impl<T> Counted<T> {
    pub fn new(inner: T, up: IntCounter, down: IntCounter, activity: Arc<Activity>) -> Self {
        activity.touch();
        Self {
            inner,
            up,
            down,
            activity,
        }
    }

    /// The stream underneath, for what is not reading or writing (socket options, peeking).
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The stream underneath, for what is not the agent's traffic (a reset, a refusal
    /// answer and what is drained after it): neither counted nor idle-clock activity.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.up.inc_by(n as u64);
            self.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result
            && *n > 0
        {
            self.down.inc_by(*n as u64);
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream whose first bytes were already read (by [`super::peek::read_ahead`]): reads
/// return those bytes first, then continue on the stream. Writes go straight through.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn counted_counts_both_directions() {
        let (a, mut b) = tokio::io::duplex(1024);
        let up = IntCounter::new("up", "up").unwrap();
        let down = IntCounter::new("down", "down").unwrap();
        let mut c = Counted::new(a, up.clone(), down.clone(), Activity::new());
        b.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        c.write_all(b"abc").await.unwrap();
        assert_eq!((up.get(), down.get()), (5, 3));
    }

    #[tokio::test]
    async fn rewind_replays_then_reads_on() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut r = Rewind::new(b"prefix-".to_vec(), a);
        b.write_all(b"rest").await.unwrap();
        drop(b);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"prefix-rest");
    }

    #[tokio::test]
    async fn idle_fires_only_after_quiet_time() {
        let activity = Activity::new();
        activity.touch();
        let a2 = activity.clone();
        let keep_busy = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                a2.touch();
            }
        });
        let start = Instant::now();
        activity.idle(Duration::from_millis(60)).await;
        // The watch cannot fire while touches keep coming (a lower bound, not a deadline):
        // 5 touches 30 ms apart, then 60 ms of quiet.
        assert!(
            start.elapsed() >= Duration::from_millis(150 + 60),
            "{:?}",
            start.elapsed()
        );
        keep_busy.await.unwrap();
    }
}

//! Splicing: relay bytes both ways between the agent and an upstream until both sides are
//! done, the connection goes idle, or the process exits; and resetting refused connections.
//!
//! Owns: the bidirectional copy (half-close propagated: EOF on one side becomes a FIN on the
//! other while the opposite direction keeps flowing), the idle timeout, and TCP reset
//! (`SO_LINGER` 0) for refusals.
//! Must never: look at or alter the bytes (passthrough TLS stays end-to-end encrypted).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::TcpStream;

use super::io::Activity;

/// How a splice ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both directions reached EOF.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// One side failed (reset, broken pipe).
    Error,
}

/// Relay until done. Bytes are counted by the [`super::io::Counted`] agent stream whose
/// `activity` is passed here.
pub async fn splice<A, B>(
    agent: &mut A,
    upstream: &mut B,
    activity: &Activity,
    idle: Duration,
) -> SpliceEnd
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::select! {
        result = copy_bidirectional(agent, upstream) => match result {
            Ok(_) => SpliceEnd::Closed,
            Err(err) => {
                tracing::debug!(error = %err, "splice ended with an error");
                SpliceEnd::Error
            }
        },
        () = activity.idle(idle) => SpliceEnd::Idle,
    }
}

/// Refuse a connection with a TCP reset instead of a graceful close.
pub fn reset(stream: TcpStream) {
    if let Err(err) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(error = %err, "cannot set SO_LINGER 0; closing normally");
    }
    drop(stream);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use prometheus::IntCounter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::io::Counted;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        let (mut agent_client, agent_side) = pair().await;
        let (mut upstream_side, mut server) = pair().await;
        let up = IntCounter::new("u", "u").unwrap();
        let down = IntCounter::new("d", "d").unwrap();
        let activity = Activity::new();
        let a2 = activity.clone();
        let task = tokio::spawn(async move {
            let mut agent = Counted::new(agent_side, up.clone(), down.clone(), a2.clone());
            let end = splice(&mut agent, &mut upstream_side, &a2, Duration::from_secs(60)).await;
            (end, up.get(), down.get())
        });
        agent_client.write_all(b"request").await.unwrap();
        agent_client.shutdown().await.unwrap(); // half-close: the server must see EOF ...
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        server
            .write_all(b"response after client EOF")
            .await
            .unwrap(); // ... and still answer.
        drop(server);
        let mut back = Vec::new();
        agent_client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"response after client EOF");
        assert_eq!(task.await.unwrap(), (SpliceEnd::Closed, 7, 25));
    }

    #[tokio::test]
    async fn reset_sends_rst() {
        let (mut client, server) = pair().await;
        reset(server);
        let mut buf = [0u8; 1];
        let err = client.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    }
}

//! Idle client connections are closed. hyper's header read timeout covers a request that
//! has started to arrive, but not a connection that never sends a byte (the auto builder
//! waits for the first bytes to tell HTTP/1.1 from h2, with no deadline) nor a kept-alive
//! connection gone quiet: ten thousand of either would sit in memory for good.
//!
//! [`Tracked`] stamps the time of every byte moved in either direction; [`expired`]
//! resolves once no byte moved for the allowed time, and the server then shuts the
//! connection down gracefully (a request in flight still gets its answer).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection last moved a byte, in milliseconds since it was accepted (0: never).
#[derive(Clone)]
pub struct Activity {
    accepted: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            accepted: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.accepted.elapsed().as_millis() as u64;
        // Stamps only move forward; Relaxed is enough for a timestamp read by one task.
        self.last_ms.fetch_max(ms.max(1), Ordering::Relaxed);
    }

    /// When the connection last moved a byte, and whether it ever did.
    fn last(&self) -> (Instant, bool) {
        let ms = self.last_ms.load(Ordering::Relaxed);
        (self.accepted + Duration::from_millis(ms), ms > 0)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves once the connection has been silent for `first_byte` since it was accepted (it
/// never sent anything) or for `idle` since it last moved a byte.
pub async fn expired(activity: &Activity, first_byte: Duration, idle: Duration) {
    loop {
        let (last, active) = activity.last();
        let deadline = last + if active { idle } else { first_byte };
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// An I/O object that records its activity.
pub struct Tracked<T> {
    inner: T,
    activity: Activity,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Activity) -> Self {
        Tracked { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn silence_expires_and_traffic_postpones_it() {
        let (a, mut b) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut tracked = Tracked::new(a, activity.clone());
        let first = Duration::from_secs(10);
        let idle = Duration::from_secs(60);

        // Never a byte: the first-byte deadline.
        let started = tokio::time::Instant::now();
        let waiter = {
            let activity = activity.clone();
            tokio::spawn(async move { expired(&activity, first, idle).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        b.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 3];
        tracked.read_exact(&mut buf).await.unwrap();
        // A byte at 5 s moves the deadline to 5 + 60 s.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!waiter.is_finished(), "active 30 s ago");
        tracked.write_all(b"HTTP/1.1 200").await.unwrap();
        waiter.await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(95) && took < Duration::from_secs(96), "{took:?}");

        // A silent connection expires at the first-byte deadline.
        let silent = Activity::new();
        let started = tokio::time::Instant::now();
        expired(&silent, first, idle).await;
        assert_eq!(started.elapsed().as_secs(), 10);
    }
}

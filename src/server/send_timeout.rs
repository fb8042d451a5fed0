//! `limits.send_timeout`: a client that accepts no bytes for that long is
//! disconnected.
//!
//! Memory for a slow reader is bounded elsewhere (upstream reads are capped
//! per connection); this bounds its *time*. A client that asks for a large
//! response (or holds a WebSocket open) and stops reading would otherwise
//! keep its connection slot and an upstream connection forever. The clock
//! runs only while a write is blocked, and restarts whenever the client
//! takes any bytes: a slow but progressing reader is never cut off, and a
//! write that completes at once — every write under normal load — costs one
//! branch and no timer.

use super::gather::TokioWrites;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// An I/O stream whose writes fail with `TimedOut` once they have made no
/// progress for `limit`.
pub struct SendTimeout<S> {
    inner: S,
    limit: Duration,
    /// Kept between stalls so that a connection allocates its timer once.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` is counting down the current stall.
    stalled: bool,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, limit: Duration) -> SendTimeout<S> {
        SendTimeout {
            inner,
            limit,
            timer: None,
            stalled: false,
        }
    }

    /// A write is blocked: start the clock if this stall is new, and fail
    /// once it has run out.
    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if !self.stalled {
            let deadline = Instant::now() + self.limit.min(crate::timer::ABOUT_NEVER);
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.stalled = true;
        }
        match self.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client accepted no bytes within send_timeout",
            ))),
            _ => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, done: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.stalled = false;
        done
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.blocked(cx),
            done => this.progress(done),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = super::gather::write_gathered(&mut this.inner, &mut TokioWrites(cx), bufs);
        match written {
            Poll::Pending => this.blocked(cx),
            done => this.progress(done),
        }
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

    /// A peer that never reads: writes block once the pipe is full, and the
    /// blocked write fails after the limit.
    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_for_the_limit_fails() {
        let (a, _b) = tokio::io::duplex(1024);
        let mut w = SendTimeout::new(a, Duration::from_secs(5));
        let chunk = [7u8; 4096];
        let stalled = async {
            loop {
                if let Err(e) = w.write(&chunk).await {
                    break e;
                }
            }
        };
        // (virtual time: the bound only turns "never" into a failure)
        let err = tokio::time::timeout(Duration::from_secs(3600), stalled)
            .await
            .expect("the blocked write must fail, not wait forever");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    /// The same through vectored writes (hyper's way of writing a head and
    /// body), which go through the gathering of `super::gather`.
    #[tokio::test(start_paused = true)]
    async fn a_vectored_write_blocked_for_the_limit_fails() {
        let (a, _b) = tokio::io::duplex(1024);
        let mut w = SendTimeout::new(a, Duration::from_secs(5));
        let head = [7u8; 100];
        let body = [8u8; 300];
        let stalled = async {
            loop {
                let bufs = [io::IoSlice::new(&head), io::IoSlice::new(&body)];
                match w.write_vectored(&bufs).await {
                    Err(e) => break e,
                    Ok(n) => assert!(n > 0 && n <= 400, "wrote {n} of 400"),
                }
            }
        };
        let err = tokio::time::timeout(Duration::from_secs(3600), stalled)
            .await
            .expect("the blocked write must fail, not wait forever");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    /// A peer that keeps taking bytes, however slowly, is never cut off: the
    /// clock restarts at every bit of progress.
    #[tokio::test(start_paused = true)]
    async fn a_slow_but_progressing_reader_is_not_cut_off() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = SendTimeout::new(a, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let mut got = 0usize;
            let mut buf = [0u8; 512];
            while got < 64 * 1024 {
                // 4 s between reads: under the 5 s limit each time, far
                // over it in total
                tokio::time::sleep(Duration::from_secs(4)).await;
                got += b.read(&mut buf).await.expect("read");
            }
            got
        });
        let data = vec![1u8; 64 * 1024];
        w.write_all(&data)
            .await
            .expect("a progressing reader is served");
        drop(w);
        assert!(reader.await.expect("reader") >= 64 * 1024);
    }
}

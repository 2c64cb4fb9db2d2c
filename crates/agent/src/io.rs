//! A connection whose writes cannot stall for ever: a peer that sends requests and never reads
//! the answers would otherwise keep its connection, and its slot, as long as it likes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `I` with a bound on how long a write (or flush, or shutdown) may wait for the peer to take
/// bytes: past `stall` without progress the write fails with [`io::ErrorKind::TimedOut`], and
/// hyper closes the connection. Reads are bounded by hyper's header timeout and the request
/// timeout; an answer the peer reads, however slowly, keeps the connection.
pub(crate) struct WriteBounded<I> {
    io: I,
    stall: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<I> WriteBounded<I> {
    pub(crate) fn new(io: I, stall: Duration) -> Self {
        WriteBounded {
            io,
            stall,
            timer: None,
        }
    }

    /// `r` if the peer made progress; else arms (or checks) the stall timer.
    fn bound<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let stall = self.stall;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                ready!(timer.as_mut().poll(cx));
                self.timer = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer took no bytes of the answer for too long",
                )))
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteBounded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteBounded<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.bound(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.bound(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.bound(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.bound(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A peer that never reads: the write fails after the stall bound (paused time), where the
    /// bare stream waits for ever.
    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_takes_fails_after_the_bound() {
        let (a, _b) = tokio::io::duplex(64);
        let mut w = WriteBounded::new(a, Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        let e = w.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_secs(10));
    }

    /// A peer that reads, however slowly, gets the whole answer.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_gets_everything() {
        use tokio::io::AsyncReadExt;
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = WriteBounded::new(a, Duration::from_secs(10));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 64];
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                match b.read(&mut chunk).await.unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&chunk[..n]),
                }
            }
        });
        w.write_all(&[1u8; 1024]).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap().len(), 1024);
    }
}

//! The TCP stream under a tenant connection. Its shutdown lasts until the server has
//! closed its side: a backend closes its socket only when it exits, after it has left
//! `pg_stat_activity` and freed its `max_connections` slot. A connection's budget
//! permit is released when the shutdown completes, so a permit is free exactly when
//! the server's slot is.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// How long a shutdown waits for the server to close before giving up (a server that
/// vanished from the network never answers).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct UntilClosed {
    inner: TcpStream,
    /// Set once our side is shut: the deadline for the server's.
    closing: Option<Pin<Box<Sleep>>>,
}

impl UntilClosed {
    pub(crate) fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            closing: None,
        }
    }
}

impl AsyncRead for UntilClosed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for UntilClosed {
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
        if self.closing.is_none() {
            // A failed shutdown means the socket is already dead: nothing to wait for.
            if ready!(Pin::new(&mut self.inner).poll_shutdown(cx)).is_err() {
                return Poll::Ready(Ok(()));
            }
            self.closing = Some(Box::pin(tokio::time::sleep(CLOSE_WAIT)));
        }
        let mut scratch = [0u8; 512];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                // End of stream: the backend has exited.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                // A late notice: read on to the end.
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        let gave_up = self
            .closing
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if gave_up {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

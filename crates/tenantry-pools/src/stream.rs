//! The socket under a tenant connection (TCP, or a Unix socket for a server on this host). Its shutdown lasts until the server has
//! closed its side: a backend closes its socket only when it exits, after it has left
//! `pg_stat_activity` and freed its `max_connections` slot. A connection's budget
//! permit is released when the shutdown completes, so a permit is free exactly when
//! the server's slot is.
//!
//! Reads can be capped ([`ReadCap`]): past the cap, nothing more reaches the driver
//! (so one huge row cannot be read whole into memory); the stream shuts its side,
//! discards what the server still sends until the server has closed (so the permit
//! rule above holds), and then fails, which ends the connection.
//!
//! A server that owes an answer and sends nothing for the answer deadline fails the
//! read too ([`crate::answer`]): the connection ends instead of waiting forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Sleep;

use crate::answer::Answers;

/// How long a shutdown waits for the server to close before giving up (a server that
/// vanished from the network never answers).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How many more bytes a connection may read; shared by the stream and its `Conn`.
#[derive(Debug)]
pub(crate) struct ReadCap {
    /// `u64::MAX`: no cap.
    remaining: AtomicU64,
    tripped: AtomicBool,
}

impl Default for ReadCap {
    fn default() -> Self {
        Self {
            remaining: AtomicU64::new(u64::MAX),
            tripped: AtomicBool::new(false),
        }
    }
}

impl ReadCap {
    pub(crate) fn set(&self, bytes: Option<u64>) {
        self.remaining
            .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    pub(crate) fn tripped(&self) -> bool {
        self.tripped.load(Ordering::SeqCst)
    }

    /// Takes `n` bytes; false (and tripped from then on) when past the cap.
    fn take(&self, n: u64) -> bool {
        let ok = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                if left == u64::MAX {
                    Some(left)
                } else {
                    left.checked_sub(n)
                }
            })
            .is_ok();
        if !ok {
            self.tripped.store(true, Ordering::SeqCst);
        }
        ok
    }
}

/// A connection's socket: TCP, or a Unix socket (`host` a directory, as libpq takes it).
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    /// Connects to `host:port`, or to `{host}/.s.PGSQL.{port}` when `host` is a directory
    /// (starts with `/`).
    pub(crate) async fn connect(host: &str, port: u16) -> io::Result<Self> {
        if host.starts_with('/') {
            let path = std::path::Path::new(host).join(format!(".s.PGSQL.{port}"));
            return Ok(Self::Unix(UnixStream::connect(path).await?));
        }
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        Ok(Self::Tcp(tcp))
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

pub(crate) struct UntilClosed {
    inner: Socket,
    /// Set once our side is shut: the deadline for the server's.
    closing: Option<Pin<Box<Sleep>>>,
    cap: Arc<ReadCap>,
    answers: Answers,
}

impl UntilClosed {
    pub(crate) fn new(inner: Socket, cap: Arc<ReadCap>, answer_timeout: Duration) -> Self {
        Self {
            inner,
            closing: None,
            cap,
            answers: Answers::new(answer_timeout),
        }
    }

    /// Shuts our side and reads (discarding) until the server closes or the wait ends.
    fn poll_until_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.closing.is_none() {
            // A failed shutdown means the socket is already dead: nothing to wait for.
            if ready!(Pin::new(&mut self.inner).poll_shutdown(cx)).is_err() {
                return Poll::Ready(());
            }
            self.closing = Some(Box::pin(tokio::time::sleep(CLOSE_WAIT)));
        }
        let mut scratch = [0u8; 8192];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                // End of stream: the backend has exited.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                // Late data (a notice, the rest of a capped result): read on to the end.
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        let gave_up = self
            .closing
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if gave_up {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl AsyncRead for UntilClosed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.cap.tripped() {
            let before = buf.filled().len();
            if Pin::new(&mut this.inner).poll_read(cx, buf)?.is_pending() {
                if this.answers.poll_overdue(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the server stopped answering",
                    )));
                }
                return Poll::Pending;
            }
            this.answers.read(&buf.filled()[before..]);
            let read = (buf.filled().len() - before) as u64;
            if this.cap.take(read) {
                return Poll::Ready(Ok(()));
            }
            // Past the cap: this data never reaches the driver.
            buf.set_filled(before);
        }
        ready!(this.poll_until_closed(cx));
        Poll::Ready(Err(io::Error::other(
            "the connection read past its cap and was closed",
        )))
    }
}

impl AsyncWrite for UntilClosed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.answers.wrote(&buf[..written], cx);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_until_closed(cx));
        Poll::Ready(Ok(()))
    }
}

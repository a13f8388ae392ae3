//! The answer deadline: a server that owes an answer and sends nothing for too long is
//! taken as gone. A server that stops answering without closing its sockets (a hung
//! host, a network that drops everything, a proxy that swallows the traffic) would
//! otherwise hold a request, its connection and its budget permit forever: the kernel's
//! keepalives are answered by whatever still holds the socket.
//!
//! The stream counts the answers owed: one for the start-up message and one for each
//! `Query` or `Sync` sent (each is answered by exactly one `ReadyForQuery`), one less for
//! each `ReadyForQuery` received. While one is owed, every byte read restarts the
//! deadline; past it with nothing read, the read fails and the connection ends. The
//! deadline is above the sessions' statement timeout, so the server answers before it
//! whenever it is alive: a statement it runs is cancelled at the timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Splits one direction of the protocol into messages: a type byte (none for the
/// client's first, start-up message) and a length that counts itself.
struct Framer {
    typed: bool,
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message's body still to skip.
    left: usize,
}

impl Framer {
    fn new(typed: bool) -> Self {
        Self {
            typed,
            header: [0; 5],
            have: 0,
            left: 0,
        }
    }

    /// Feeds bytes; `on` is told the type of each message whose header is complete (0
    /// for the start-up message).
    fn feed(&mut self, mut bytes: &[u8], mut on: impl FnMut(u8)) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let skip = self.left.min(bytes.len());
                self.left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let head = if self.typed { 5 } else { 4 };
            let take = (head - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == head {
                let (kind, len) = if self.typed {
                    let [kind, a, b, c, d] = self.header;
                    (kind, u32::from_be_bytes([a, b, c, d]))
                } else {
                    let [a, b, c, d, _] = self.header;
                    (0, u32::from_be_bytes([a, b, c, d]))
                };
                self.left = (len as usize).saturating_sub(4);
                self.have = 0;
                self.typed = true;
                on(kind);
            }
        }
    }
}

/// The answers a connection's server owes, and the deadline for its next byte.
///
/// A query costs no timer: the deadline is `since + limit`, kept as a time, and one
/// timer per connection is armed only when an answer becomes owed while it is not armed.
/// When it fires early (the server made progress since it was set), it is set again for
/// the deadline as it stands then; when nothing is owed any more it is let go. So a busy
/// connection re-arms it once per `limit`, not once per query.
pub(crate) struct Answers {
    sent: Framer,
    received: Framer,
    owed: u64,
    limit: Duration,
    /// When the server last made progress on what it owes (or first owed it).
    since: Instant,
    /// Fires at or before the deadline; `None` until first needed.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Answers {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            sent: Framer::new(false),
            received: Framer::new(true),
            owed: 0,
            limit,
            since: Instant::now(),
            timer: None,
            armed: false,
        }
    }

    /// Bytes the client wrote.
    pub(crate) fn wrote(&mut self, bytes: &[u8], cx: &mut Context<'_>) {
        let mut owed = 0;
        self.sent.feed(bytes, |kind| {
            if matches!(kind, 0 | b'Q' | b'S') {
                owed += 1;
            }
        });
        if owed == 0 {
            return;
        }
        if self.owed == 0 {
            self.since = Instant::now();
        }
        self.owed += owed;
        if !self.armed {
            let deadline = self.since + self.limit;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
            // Polled once, so that the task is woken when it fires.
            let _ = self.poll_overdue(cx);
        }
    }

    /// Bytes the server sent: progress.
    pub(crate) fn read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut answered = 0;
        self.received.feed(bytes, |kind| {
            if kind == b'Z' {
                answered += 1;
            }
        });
        self.owed = self.owed.saturating_sub(answered);
        if self.owed > 0 {
            self.since = Instant::now();
        }
    }

    /// Ready once an answer is owed and nothing came for the whole limit.
    pub(crate) fn poll_overdue(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(timer) = self.timer.as_mut().filter(|_| self.armed) else {
            return Poll::Pending;
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.owed == 0 {
                // Nothing owed: let it go until an answer is owed again.
                self.armed = false;
                return Poll::Pending;
            }
            let deadline = self.since + self.limit;
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn messages_are_told_apart_whatever_the_chunks() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&8u32.to_be_bytes());
        stream.extend_from_slice(&[0, 3, 0, 0]);
        for (kind, body) in [(b'Q', &b"SELECT 1\0"[..]), (b'P', b"xyz"), (b'S', b"")] {
            stream.extend(message(kind, body));
        }
        for chunk in [1, 2, 3, 7, stream.len()] {
            let mut framer = Framer::new(false);
            let mut kinds = Vec::new();
            for part in stream.chunks(chunk) {
                framer.feed(part, |k| kinds.push(k));
            }
            assert_eq!(kinds, [0, b'Q', b'P', b'S'], "chunks of {chunk}");
        }
    }

    fn query() -> Vec<u8> {
        message(b'Q', b"SELECT 1\0")
    }

    fn ready() -> Vec<u8> {
        message(b'Z', b"I")
    }

    /// Paused time: the runtime's clock moves only when every task waits.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_last_progress_and_only_while_an_answer_is_owed() {
        let limit = Duration::from_secs(10);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut answers = Answers::new(limit);
        let mut startup = 8u32.to_be_bytes().to_vec();
        startup.extend_from_slice(&[0, 3, 0, 0]);
        answers.wrote(&startup, &mut cx);
        answers.read(&ready());
        // Nothing owed: no deadline, however long the connection waits.
        tokio::time::sleep(limit * 3).await;
        assert!(answers.poll_overdue(&mut cx).is_pending());

        // Owed, with progress every 6 s: never overdue, though the first timer fires.
        answers.wrote(&query(), &mut cx);
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert!(answers.poll_overdue(&mut cx).is_pending());
            answers.read(&message(b'D', b"row"));
        }
        answers.read(&ready());
        // Answered; the timer still set fires and is let go.
        tokio::time::sleep(limit * 2).await;
        assert!(answers.poll_overdue(&mut cx).is_pending());

        // Owed again and nothing comes: overdue at the limit, not before.
        answers.wrote(&query(), &mut cx);
        tokio::time::sleep(limit - Duration::from_millis(1)).await;
        assert!(answers.poll_overdue(&mut cx).is_pending());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(answers.poll_overdue(&mut cx).is_ready());
    }
}

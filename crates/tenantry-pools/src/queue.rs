//! The requests waiting for a permit of a server's budget, and the order in which they
//! get one: the highest priority first (the earliest of those first), except that a
//! waiter that has waited `max_defer` or longer goes before everyone, in arrival order.
//! A lower priority therefore defers to higher ones for at most `max_defer`, and then
//! takes its turn as it would without priorities; `max_defer` zero is arrival order.
//!
//! Permits are handed out, never taken: nobody waits inside the semaphore. Whoever puts
//! a permit back ([`Slot`](crate::budget::Slot)'s drop, a raised limit) hands it to the
//! first waiter in that order, and a waiter joining takes a permit that is free (or gives
//! it to whoever is ahead of it). Every decision is taken under the queue's lock at the
//! moment a permit is free, so the order needs no timer and a waiter wakes at once.
//!
//! No permit is left in the semaphore while someone waits. A waiter counts itself in
//! `waiting` before it looks at the semaphore; whoever puts a permit back looks at
//! `waiting` after it did: with a fence on both sides, one of them sees the other (the
//! waiter the permit, or the returner the waiter, and hands it out).

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::atomic::{fence, Ordering};
use std::sync::MutexGuard;
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::budget::Budget;

/// The waiters of one budget: by rank (priority, highest first, then arrival) and by
/// arrival. A waiter is in both or in neither.
#[derive(Default)]
pub(crate) struct Waiters {
    next: u64,
    by_rank: BTreeMap<(Reverse<u8>, u64), oneshot::Sender<OwnedSemaphorePermit>>,
    by_arrival: BTreeMap<u64, (u8, Instant)>,
}

impl Waiters {
    /// Takes out the waiter to serve now.
    fn next_served(
        &mut self,
        now: Instant,
        max_defer: Duration,
    ) -> Option<oneshot::Sender<OwnedSemaphorePermit>> {
        let (&first, &(priority, since)) = self.by_arrival.first_key_value()?;
        let key = if now.saturating_duration_since(since) >= max_defer {
            (Reverse(priority), first)
        } else {
            *self.by_rank.first_key_value()?.0
        };
        self.by_arrival.remove(&key.1);
        self.by_rank.remove(&key)
    }

    fn remove(&mut self, priority: u8, seq: u64) -> bool {
        self.by_arrival.remove(&seq);
        self.by_rank.remove(&(Reverse(priority), seq)).is_some()
    }
}

impl Budget {
    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // Nothing panics while the lock is held; a poisoned lock is still consistent.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the semaphore's free permits to waiters, in order.
    fn hand_out(&self, waiters: &mut Waiters) {
        let now = Instant::now();
        while !waiters.by_arrival.is_empty() {
            let Ok(permit) = self.limit.semaphore.clone().try_acquire_owned() else {
                return;
            };
            let Some(next) = waiters.next_served(now, self.max_defer) else {
                return;
            };
            // A waiter leaves the queue before its receiver goes, so this is received;
            // were it not, the permit goes back and to the next one.
            let _ = next.send(permit);
        }
    }

    /// A permit went back to the semaphore (or the limit grew): it goes to the first
    /// waiter, if anyone waits.
    pub(crate) fn returned(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.hand_out(&mut self.waiters());
        }
    }

    /// Joins the queue with `priority`. A permit free now is handed out at once: to this
    /// waiter, or to one ahead of it.
    pub(crate) fn wait(&self, priority: u8) -> Wait<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.waiters();
        let seq = waiters.next;
        waiters.next += 1;
        waiters.by_rank.insert((Reverse(priority), seq), tx);
        waiters.by_arrival.insert(seq, (priority, Instant::now()));
        self.hand_out(&mut waiters);
        Wait {
            budget: self,
            priority,
            seq,
            rx: Some(rx),
        }
    }
}

/// One waiter's place in its budget's queue. Dropped (served, past its deadline, or its
/// request gone), it leaves the queue and is uncounted; a permit handed to it that it
/// never took goes to the next waiter.
pub(crate) struct Wait<'a> {
    budget: &'a Budget,
    priority: u8,
    seq: u64,
    rx: Option<oneshot::Receiver<OwnedSemaphorePermit>>,
}

impl Wait<'_> {
    /// The permit, if one was handed to this waiter already.
    pub(crate) fn granted(&mut self) -> Option<OwnedSemaphorePermit> {
        let permit = self.rx.as_mut()?.try_recv().ok()?;
        self.rx = None;
        Some(permit)
    }

    /// The permit, if one is handed to this waiter within `pause`.
    pub(crate) async fn granted_within(&mut self, pause: Duration) -> Option<OwnedSemaphorePermit> {
        let rx = self.rx.as_mut()?;
        match tokio::time::timeout(pause, rx).await {
            Ok(Ok(permit)) => {
                self.rx = None;
                Some(permit)
            }
            // Its sender dropped unsent: cannot happen while it is queued, but it would
            // not be polled again.
            Ok(Err(_)) => {
                self.rx = None;
                None
            }
            Err(_) => None,
        }
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        let budget = self.budget;
        {
            let mut waiters = budget.waiters();
            if !waiters.remove(self.priority, self.seq) {
                // Served: a permit it did not take goes on to the next waiter.
                if let Some(permit) = self.rx.take().and_then(|mut rx| rx.try_recv().ok()) {
                    drop(permit);
                    budget.hand_out(&mut waiters);
                }
            }
        }
        budget.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(waiters: &[(u8, u64)]) -> Waiters {
        let mut w = Waiters::default();
        let start = Instant::now();
        for &(priority, at_ms) in waiters {
            let (tx, _) = oneshot::channel();
            let seq = w.next;
            w.next += 1;
            w.by_rank.insert((Reverse(priority), seq), tx);
            w.by_arrival
                .insert(seq, (priority, start + Duration::from_millis(at_ms)));
        }
        w
    }

    /// The order in which the waiters are served at `now_ms`, as arrival numbers.
    fn order(w: &mut Waiters, now_ms: u64, max_defer_ms: u64) -> Vec<u64> {
        let start = *w.by_arrival.values().map(|(_, t)| t).min().unwrap();
        let now = start + Duration::from_millis(now_ms);
        let mut out = Vec::new();
        while !w.by_arrival.is_empty() {
            let before: Vec<u64> = w.by_arrival.keys().copied().collect();
            w.next_served(now, Duration::from_millis(max_defer_ms))
                .unwrap();
            let after: Vec<u64> = w.by_arrival.keys().copied().collect();
            out.extend(before.into_iter().filter(|s| !after.contains(s)));
            assert_eq!(w.by_rank.len(), w.by_arrival.len());
        }
        out
    }

    #[test]
    fn higher_priorities_first_then_arrival() {
        // free, pro, enterprise, free, enterprise: arrived 0..4 ms.
        let mut w = queue(&[(0, 0), (1, 1), (2, 2), (0, 3), (2, 4)]);
        assert_eq!(order(&mut w, 10, 500), [2, 4, 1, 0, 3]);
    }

    #[test]
    fn a_waiter_past_the_bound_goes_first_in_arrival_order() {
        // The free and the enterprise waiter past the bound go first, in arrival order;
        // then the rest by priority.
        let mut w = queue(&[(0, 0), (2, 100), (0, 250), (1, 500), (2, 600)]);
        assert_eq!(order(&mut w, 700, 500), [0, 1, 4, 3, 2]);
    }

    #[test]
    fn a_permit_handed_to_a_waiter_that_leaves_goes_to_the_next() {
        let budget = Budget::new(0, Duration::from_secs(5));
        let mut free = budget.wait(0);
        let mut enterprise = budget.wait(2);
        assert_eq!(budget.waiting.load(Ordering::SeqCst), 2);
        assert!(free.granted().is_none() && enterprise.granted().is_none());
        // A permit comes: the enterprise waiter is handed it, and leaves without it.
        budget.set_limit(1);
        drop(enterprise);
        let permit = free.granted().expect("passed on to the free waiter");
        drop(free);
        assert_eq!(budget.waiting.load(Ordering::SeqCst), 0);
        assert_eq!(budget.limit.semaphore.available_permits(), 0);
        // Nobody waits: the permit goes back to the semaphore.
        drop(permit);
        budget.returned();
        assert_eq!(budget.limit.semaphore.available_permits(), 1);
        let mut waiters = budget.waiters();
        assert!(waiters.by_rank.is_empty() && waiters.by_arrival.is_empty());
        assert!(waiters
            .next_served(Instant::now(), Duration::ZERO)
            .is_none());
    }

    #[test]
    fn a_waiter_joining_takes_a_free_permit_unless_someone_is_ahead() {
        let budget = Budget::new(1, Duration::from_secs(5));
        let mut alone = budget.wait(0);
        let permit = alone.granted().expect("a free permit, nobody ahead");
        drop(alone);
        let mut low = budget.wait(0);
        drop(permit);
        budget.returned();
        assert!(low.granted().is_some(), "handed out as it came back");
    }

    #[test]
    fn no_bound_is_arrival_order() {
        let mut w = queue(&[(0, 0), (2, 1), (1, 2), (0, 3)]);
        assert_eq!(order(&mut w, 5, 0), [0, 1, 2, 3]);
    }
}

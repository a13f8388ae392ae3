//! The requests waiting for a permit of a [`Limit`], and the order in which they get
//! one. Each waiter has a key: a server's budget ranks its waiters by priority (the
//! highest first: the key is `Reverse(priority)`), a tenant's pool by the worker thread
//! they wait on. A permit goes to the first waiter by key (the earliest of those
//! first), or, when whoever puts it back prefers a key, to the earliest waiter of that
//! key if there is one and else the earliest of all; except that a waiter that has
//! waited `max_defer` or longer goes before everyone, in arrival order. A waiter
//! therefore lets others go first for at most `max_defer`, and then takes its turn as
//! in plain arrival order; `max_defer` zero is arrival order.
//!
//! Permits are handed out, never taken: nobody waits inside the semaphore. Whoever puts
//! a permit back (a connection's budget [`Slot`](crate::budget::Slot) or a
//! [`Lease`](crate::Lease) dropped, a raised limit) hands it to the first waiter in that
//! order, and a waiter joining takes a permit that is free (or gives it to whoever is
//! ahead of it). Every decision is taken under the queue's lock at the moment a permit
//! is free, so the order needs no timer and a waiter wakes at once.
//!
//! No permit is left in the semaphore while someone waits. A waiter counts itself in
//! `waiting` before it looks at the semaphore; whoever puts a permit back looks at
//! `waiting` after it did: with a fence on both sides, one of them sees the other (the
//! waiter the permit, or the returner the waiter, and hands it out).

use std::collections::BTreeMap;
use std::sync::atomic::{fence, Ordering};
use std::sync::MutexGuard;
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::limit::Limit;

/// The waiters of one limit: by key (then arrival) and by arrival. A waiter is in both
/// or in neither.
pub(crate) struct Waiters<K> {
    next: u64,
    by_key: BTreeMap<(K, u64), oneshot::Sender<OwnedSemaphorePermit>>,
    by_arrival: BTreeMap<u64, (K, Instant)>,
}

impl<K> Default for Waiters<K> {
    fn default() -> Self {
        Self {
            next: 0,
            by_key: BTreeMap::new(),
            by_arrival: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Copy> Waiters<K> {
    /// Takes out the waiter to serve now.
    fn next_served(
        &mut self,
        now: Instant,
        max_defer: Duration,
        prefer: Option<K>,
    ) -> Option<oneshot::Sender<OwnedSemaphorePermit>> {
        let (&first, &(key, since)) = self.by_arrival.first_key_value()?;
        let earliest = (key, first);
        let chosen = if now.saturating_duration_since(since) >= max_defer {
            earliest
        } else if let Some(prefer) = prefer {
            self.by_key
                .range((prefer, 0)..=(prefer, u64::MAX))
                .next()
                .map_or(earliest, |(k, _)| *k)
        } else {
            *self.by_key.first_key_value()?.0
        };
        self.by_arrival.remove(&chosen.1);
        self.by_key.remove(&chosen)
    }

    fn remove(&mut self, key: K, seq: u64) -> bool {
        self.by_arrival.remove(&seq);
        self.by_key.remove(&(key, seq)).is_some()
    }
}

impl<K: Ord + Copy> Limit<K> {
    fn lock(&self) -> MutexGuard<'_, Waiters<K>> {
        // Nothing panics while the lock is held; a poisoned lock is still consistent.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the semaphore's free permits to waiters, in order.
    fn hand_out(&self, waiters: &mut Waiters<K>, prefer: Option<K>) {
        let now = Instant::now();
        while !waiters.by_arrival.is_empty() {
            let Ok(permit) = self.semaphore.clone().try_acquire_owned() else {
                return;
            };
            let Some(next) = waiters.next_served(now, self.max_defer, prefer) else {
                return;
            };
            // A waiter leaves the queue before its receiver goes, so this is received;
            // were it not, the permit goes back and to the next one.
            let _ = next.send(permit);
        }
    }

    /// A permit went back to the semaphore (or the limit grew): it goes to the first
    /// waiter (preferring `prefer`'s), if anyone waits.
    pub(crate) fn returned(&self, prefer: Option<K>) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.hand_out(&mut self.lock(), prefer);
        }
    }

    /// A free permit, taken at once if nobody waits (a waiter would be handed it
    /// otherwise).
    pub(crate) fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.semaphore.clone().try_acquire_owned().ok()
    }

    /// Joins the queue under `key`. A permit free now is handed out at once: to this
    /// waiter, or to one ahead of it (preferring `prefer`'s, which is also whom a permit
    /// handed to this waiter goes to if it leaves without it).
    pub(crate) fn wait(&self, key: K, prefer: Option<K>) -> Wait<'_, K> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.lock();
        let seq = waiters.next;
        waiters.next += 1;
        waiters.by_key.insert((key, seq), tx);
        waiters.by_arrival.insert(seq, (key, Instant::now()));
        self.hand_out(&mut waiters, prefer);
        Wait {
            limit: self,
            key,
            prefer,
            seq,
            rx: Some(rx),
        }
    }
}

/// One waiter's place in its limit's queue. Dropped (served, past its deadline, or its
/// request gone), it leaves the queue and is uncounted; a permit handed to it that it
/// never took goes to the next waiter.
pub(crate) struct Wait<'a, K: Ord + Copy> {
    limit: &'a Limit<K>,
    key: K,
    prefer: Option<K>,
    seq: u64,
    rx: Option<oneshot::Receiver<OwnedSemaphorePermit>>,
}

impl<K: Ord + Copy> Wait<'_, K> {
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

impl<K: Ord + Copy> Drop for Wait<'_, K> {
    fn drop(&mut self) {
        let limit = self.limit;
        {
            let mut waiters = limit.lock();
            if !waiters.remove(self.key, self.seq) {
                // Served: a permit it did not take goes on to the next waiter.
                if let Some(permit) = self.rx.take().and_then(|mut rx| rx.try_recv().ok()) {
                    drop(permit);
                    limit.hand_out(&mut waiters, self.prefer);
                }
            }
        }
        limit.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;

    use super::*;

    fn queue<K: Ord + Copy>(waiters: &[(K, u64)]) -> Waiters<K> {
        let mut w = Waiters::default();
        let start = Instant::now();
        for &(key, at_ms) in waiters {
            let (tx, _) = oneshot::channel();
            let seq = w.next;
            w.next += 1;
            w.by_key.insert((key, seq), tx);
            w.by_arrival
                .insert(seq, (key, start + Duration::from_millis(at_ms)));
        }
        w
    }

    /// Priorities as a budget ranks them.
    fn priorities(waiters: &[(u8, u64)]) -> Waiters<Reverse<u8>> {
        let ranked: Vec<_> = waiters.iter().map(|&(p, at)| (Reverse(p), at)).collect();
        queue(&ranked)
    }

    /// The order in which the waiters are served at `now_ms`, as arrival numbers.
    fn order<K: Ord + Copy>(
        w: &mut Waiters<K>,
        now_ms: u64,
        max_defer_ms: u64,
        prefer: Option<K>,
    ) -> Vec<u64> {
        let start = *w.by_arrival.values().map(|(_, t)| t).min().unwrap();
        let now = start + Duration::from_millis(now_ms);
        let mut out = Vec::new();
        while !w.by_arrival.is_empty() {
            let before: Vec<u64> = w.by_arrival.keys().copied().collect();
            w.next_served(now, Duration::from_millis(max_defer_ms), prefer)
                .unwrap();
            let after: Vec<u64> = w.by_arrival.keys().copied().collect();
            out.extend(before.into_iter().filter(|s| !after.contains(s)));
            assert_eq!(w.by_key.len(), w.by_arrival.len());
        }
        out
    }

    #[test]
    fn higher_priorities_first_then_arrival() {
        // free, pro, enterprise, free, enterprise: arrived 0..4 ms.
        let mut w = priorities(&[(0, 0), (1, 1), (2, 2), (0, 3), (2, 4)]);
        assert_eq!(order(&mut w, 10, 500, None), [2, 4, 1, 0, 3]);
    }

    #[test]
    fn a_waiter_past_the_bound_goes_first_in_arrival_order() {
        // The free and the enterprise waiter past the bound go first, in arrival order;
        // then the rest by priority.
        let mut w = priorities(&[(0, 0), (2, 100), (0, 250), (1, 500), (2, 600)]);
        assert_eq!(order(&mut w, 700, 500, None), [0, 1, 4, 3, 2]);
    }

    #[test]
    fn the_preferred_key_first_then_arrival_and_the_bound_above_both() {
        // Waiters on threads 0, 1, 0, 1, 2: a permit from thread 1 goes to thread 1's
        // waiters first, then to the others in arrival order.
        let mut w = queue(&[(0usize, 0), (1, 1), (0, 2), (1, 3), (2, 4)]);
        assert_eq!(order(&mut w, 10, 500, Some(1)), [1, 3, 0, 2, 4]);
        // Past the bound, arrival order before any preference.
        let mut w = queue(&[(0usize, 0), (1, 1), (0, 600), (1, 700)]);
        assert_eq!(order(&mut w, 750, 500, Some(1)), [0, 1, 3, 2]);
    }

    #[test]
    fn a_permit_handed_to_a_waiter_that_leaves_goes_to_the_next() {
        let limit = Limit::new(0, Duration::from_secs(5));
        let mut free = limit.wait(Reverse(0), None);
        let mut enterprise = limit.wait(Reverse(2), None);
        assert_eq!(limit.waiting.load(Ordering::SeqCst), 2);
        assert!(free.granted().is_none() && enterprise.granted().is_none());
        // A permit comes: the enterprise waiter is handed it, and leaves without it.
        limit.set(1);
        drop(enterprise);
        let permit = free.granted().expect("passed on to the free waiter");
        drop(free);
        assert_eq!(limit.waiting.load(Ordering::SeqCst), 0);
        assert_eq!(limit.semaphore.available_permits(), 0);
        // Nobody waits: the permit goes back to the semaphore.
        assert!(limit.give_back(permit, None));
        assert_eq!(limit.semaphore.available_permits(), 1);
        let mut waiters = limit.lock();
        assert!(waiters.by_key.is_empty() && waiters.by_arrival.is_empty());
        assert!(waiters
            .next_served(Instant::now(), Duration::ZERO, None)
            .is_none());
    }

    #[test]
    fn a_waiter_joining_takes_a_free_permit_unless_someone_is_ahead() {
        let limit = Limit::new(1, Duration::from_secs(5));
        assert!(limit.try_take().is_some_and(|p| limit.give_back(p, None)));
        let mut alone = limit.wait(Reverse(0u8), None);
        let permit = alone.granted().expect("a free permit, nobody ahead");
        drop(alone);
        let mut low = limit.wait(Reverse(0), None);
        assert!(limit.try_take().is_none(), "someone waits: nothing to take");
        limit.give_back(permit, None);
        assert!(low.granted().is_some(), "handed out as it came back");
    }

    #[test]
    fn a_permit_given_back_goes_to_a_waiter_of_the_preferred_key() {
        let limit = Limit::new(1, Duration::from_secs(5));
        let held = limit.try_take().unwrap();
        let mut other = limit.wait(0usize, Some(0));
        let mut mine = limit.wait(1usize, Some(1));
        limit.give_back(held, Some(1));
        assert!(other.granted().is_none());
        let held = mine.granted().expect("the waiter of the preferred key");
        let again = limit.wait(1, Some(1));
        limit.give_back(held, Some(1));
        assert!(other.granted().is_none(), "the preferred key's again");
        // Left without it, the permit goes on to the next waiter.
        drop(again);
        assert!(other.granted().is_some());
    }

    #[test]
    fn no_bound_is_arrival_order() {
        let mut w = priorities(&[(0, 0), (2, 1), (1, 2), (0, 3)]);
        assert_eq!(order(&mut w, 5, 0, None), [0, 1, 2, 3]);
    }
}

//! A server's connection budget and the books kept on it: permits, open connections,
//! debt after a lowered limit, waiters, and evictions whose permits are still to come back.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use crate::limit::Limit;

/// A server's share of connections.
pub struct Budget {
    /// Its permits; lowered, the connections over it close before their permits come
    /// back to anyone. Its waiters are ranked by priority, the highest first, and wait
    /// for higher ones at most `max_defer` ([`crate::queue`]).
    pub(crate) limit: Limit<Reverse<u8>>,
    pub(crate) open: AtomicUsize,
    /// Connections opened and idle connections closed to make room, since start.
    pub(crate) opened: AtomicU64,
    pub(crate) evicted: AtomicU64,
    /// Evicted connections whose permits are still to come back (the server has not
    /// closed them yet): a waiter evicts only while there are fewer of these than
    /// waiters (`limit.waiting`), so a slow close does not make it evict a second
    /// tenant (who would then evict a third, and so on). A connection is counted here
    /// only if it was still open when chosen (see [`Life`]), and uncounted exactly once,
    /// when its permit comes back.
    pub(crate) evicting: AtomicUsize,
    /// Connections holding a permit whose session is still being opened (connect,
    /// start-up, authentication): permits no request can use yet. When tenants outnumber
    /// the budget, each request that finds no open connection holds one of these for
    /// the server's start-up time, so the connections that can stay open between
    /// requests are the budget less these.
    pub(crate) opening: AtomicUsize,
    /// Turns to open a session ([`Turn`]): a request takes one before it looks for a
    /// permit and gives it back once its session is open, so at most this many sessions
    /// are started on the server at once (and at most this many waiters close other
    /// tenants' idle connections). The server starts sessions about as fast a few at a
    /// time as many at a time, and each one started holds a permit until it is open: a
    /// few turns leave the rest of the budget to connections that stay open. Ranked by
    /// priority as the budget is. `None`: no limit.
    pub(crate) turns: Option<Limit<Reverse<u8>>>,
    /// The tenants holding its permits, and how many each (a [`Slot`] apiece): where an
    /// idle connection to close is looked for, so that finding one costs what the budget
    /// holds, not every tenant this process has served since (a thousand pools, most
    /// of them empty, under a budget of 64).
    residents: Mutex<HashMap<Uuid, usize>>,
}

/// Where one connection is in its life, shared by its [`Conn`](crate::Conn) (the pool's side) and its
/// [`Slot`] (the driving task's side). `LIVE → EVICTED → CLOSED` or `LIVE → CLOSED`: the
/// evictor moves it out of `LIVE` only by compare-and-swap, and the slot's drop swaps in
/// `CLOSED` and uncounts an eviction only if it saw `EVICTED`. A connection the server
/// has already closed (a restart, `pg_terminate_backend`) still sits idle in its pool
/// until someone looks; choosing it for eviction counts nothing, as it frees nothing.
pub(crate) struct Life(AtomicU8);

impl Life {
    const LIVE: u8 = 0;
    const EVICTED: u8 = 1;
    const CLOSED: u8 = 2;

    pub(crate) fn new() -> Self {
        Self(AtomicU8::new(Self::LIVE))
    }

    pub(crate) fn closed(&self) -> bool {
        self.0.load(Ordering::SeqCst) == Self::CLOSED
    }

    /// Marks a live connection evicted, counted in `evicting` (first, so that its slot's
    /// drop, which may follow at once, always finds the count to take back). `false`
    /// when it was closed already: nothing is counted.
    pub(crate) fn evict(&self, budget: &Budget) -> bool {
        budget.evicting.fetch_add(1, Ordering::SeqCst);
        let evicted = self
            .0
            .compare_exchange(
                Self::LIVE,
                Self::EVICTED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok();
        if evicted {
            budget.evicted.fetch_add(1, Ordering::Relaxed);
        } else {
            budget.evicting.fetch_sub(1, Ordering::SeqCst);
        }
        evicted
    }
}

impl Budget {
    pub(crate) fn new(limit: usize, turns: usize, max_defer: Duration) -> Self {
        Self {
            turns: (turns > 0).then(|| Limit::new(turns, max_defer)),
            limit: Limit::new(limit, max_defer),
            open: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            evicting: AtomicUsize::new(0),
            opening: AtomicUsize::new(0),
            residents: Mutex::new(HashMap::new()),
        }
    }

    fn residents_map(&self) -> MutexGuard<'_, HashMap<Uuid, usize>> {
        // The map stays whole whatever panics while it is held: a count at a time.
        self.residents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenants holding a permit now.
    pub(crate) fn residents(&self) -> Vec<Uuid> {
        self.residents_map().keys().copied().collect()
    }

    /// Connections holding a permit that are not on their way out (evicted, not closed).
    pub(crate) fn held(&self) -> usize {
        self.open
            .load(Ordering::SeqCst)
            .saturating_sub(self.evicting.load(Ordering::SeqCst))
    }
}

/// Counts one connection in [`Budget::opening`] until dropped: its session opened, or
/// failed to, or the request opening it went away.
pub(crate) struct Opening<'a>(&'a Budget);

impl<'a> Opening<'a> {
    pub(crate) fn start(budget: &'a Budget) -> Self {
        budget.opening.fetch_add(1, Ordering::SeqCst);
        Self(budget)
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.opening.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A turn to open a session on a server (see [`Budget::turns`]), given back when dropped.
pub(crate) struct Turn<'a> {
    turns: &'a Limit<Reverse<u8>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Budget {
    /// A turn to open a session, waited for in priority order until `deadline`
    /// (`Ok(None)`: turns are not limited). `Err(())` past the deadline.
    pub(crate) async fn turn(
        &self,
        priority: u8,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Turn<'_>>, ()> {
        let Some(turns) = &self.turns else {
            return Ok(None);
        };
        let turn = |permit| {
            Some(Turn {
                turns,
                permit: Some(permit),
            })
        };
        if let Some(permit) = turns.try_take() {
            return Ok(turn(permit));
        }
        let mut wait = turns.wait(Reverse(priority), None);
        if let Some(permit) = wait.granted() {
            return Ok(turn(permit));
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        wait.granted_within(left).await.map(turn).ok_or(())
    }

    /// Requests waiting for a turn to open a session.
    pub(crate) fn waiting_for_turns(&self) -> usize {
        self.turns
            .as_ref()
            .map_or(0, |t| t.waiting.load(Ordering::SeqCst))
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.turns.give_back(permit, None);
        }
    }
}

/// A budget permit held by one open connection.
pub(crate) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    budget: Arc<Budget>,
    pub(crate) life: Arc<Life>,
    tenant: Uuid,
}

impl Slot {
    /// `permit`, held for `tenant`'s connection from now until the slot is dropped.
    pub(crate) fn new(budget: &Arc<Budget>, permit: OwnedSemaphorePermit, tenant: Uuid) -> Self {
        budget.open.fetch_add(1, Ordering::SeqCst);
        budget.opened.fetch_add(1, Ordering::Relaxed);
        *budget.residents_map().entry(tenant).or_default() += 1;
        Slot {
            permit: Some(permit),
            budget: budget.clone(),
            life: Arc::new(Life::new()),
            tenant,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        // The permit first (handed to the first waiter, or the debt paid with it), the
        // eviction uncounted after: a waiter that sees the count drop finds the permit
        // already given out, and does not close another tenant's connection for a
        // permit on its way.
        self.budget.limit.give_back(permit, None);
        self.budget.open.fetch_sub(1, Ordering::SeqCst);
        {
            let mut residents = self.budget.residents_map();
            if let Some(n) = residents.get_mut(&self.tenant) {
                *n -= 1;
                if *n == 0 {
                    residents.remove(&self.tenant);
                }
            }
        }
        if self.life.0.swap(Life::CLOSED, Ordering::SeqCst) == Life::EVICTED {
            let counted = self
                .budget
                .evicting
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            debug_assert!(counted, "an eviction uncounted twice");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_resident_while_it_holds_a_permit() {
        let budget = Arc::new(Budget::new(3, 0, Duration::ZERO));
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let permit = || budget.limit.try_take().expect("a free permit");
        let a1 = Slot::new(&budget, permit(), a);
        let a2 = Slot::new(&budget, permit(), a);
        let b1 = Slot::new(&budget, permit(), b);
        let mut residents = budget.residents();
        residents.sort();
        let mut both = vec![a, b];
        both.sort();
        assert_eq!(residents, both);
        assert_eq!(budget.open.load(Ordering::SeqCst), 3);
        drop(a1);
        drop(b1);
        assert_eq!(budget.residents(), vec![a], "a holds one more");
        drop(a2);
        assert!(budget.residents().is_empty());
        assert_eq!(budget.open.load(Ordering::SeqCst), 0);
        assert!(budget.limit.try_take().is_some(), "the permits came back");
    }
}

//! A limit that can be lowered while permits are held: a semaphore, the limit it stands
//! for, and the debt left when it was lowered below what is held. A permit that comes
//! back while there is debt pays it (is forgotten) instead of going back. Used for a
//! server's budget ([`crate::Budget`]) and for a tenant pool's size in this replica
//! ([`crate::Lease`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) struct Limit {
    pub(crate) semaphore: Arc<Semaphore>,
    limit: AtomicUsize,
    /// Permits to swallow as they come back, after the limit was lowered.
    debt: AtomicUsize,
}

impl Limit {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit: AtomicUsize::new(limit),
            debt: AtomicUsize::new(0),
        }
    }

    pub(crate) fn get(&self) -> usize {
        self.limit.load(Ordering::SeqCst)
    }

    /// Sets the limit; true when it grew (permits were added, maybe to be handed out).
    /// Lowered, it takes back the free permits and owes the rest.
    pub(crate) fn set(&self, new: usize) -> bool {
        let old = self.limit.swap(new, Ordering::SeqCst);
        if new > old {
            let mut grow = new - old;
            // Pay back debt first.
            while grow > 0 {
                let debt = self.debt.load(Ordering::SeqCst);
                if debt == 0 {
                    break;
                }
                let pay = debt.min(grow);
                if self
                    .debt
                    .compare_exchange(debt, debt - pay, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    grow -= pay;
                }
            }
            self.semaphore.add_permits(grow);
            true
        } else {
            if new < old {
                let shrink = old - new;
                let forgotten = self.semaphore.forget_permits(shrink);
                self.debt.fetch_add(shrink - forgotten, Ordering::SeqCst);
            }
            false
        }
    }

    /// Takes one permit's worth of debt, if there is any: the caller then forgets its
    /// permit (and closes what it held) instead of giving it back.
    pub(crate) fn owed(&self) -> bool {
        self.debt
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1))
            .is_ok()
    }

    /// Gives a permit back: it pays debt if there is any (false), else goes back (true).
    pub(crate) fn give_back(&self, permit: OwnedSemaphorePermit) -> bool {
        if self.owed() {
            permit.forget();
            false
        } else {
            drop(permit);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowered_below_what_is_held_it_owes_the_rest() {
        let limit = Limit::new(3);
        let held: Vec<_> = (0..2)
            .map(|_| limit.semaphore.clone().try_acquire_owned().unwrap())
            .collect();
        // One free permit is taken back, one is owed.
        assert!(!limit.set(1));
        assert_eq!(limit.semaphore.available_permits(), 0);
        let mut held = held.into_iter();
        assert!(!limit.give_back(held.next().unwrap()), "pays the debt");
        assert!(limit.give_back(held.next().unwrap()), "goes back");
        assert_eq!(limit.semaphore.available_permits(), 1);
        // Raised again: exactly the new limit is available.
        assert!(limit.set(4));
        assert_eq!(limit.semaphore.available_permits(), 4);
    }

    #[test]
    fn raised_while_owing_it_pays_the_debt_first() {
        let limit = Limit::new(2);
        let a = limit.semaphore.clone().try_acquire_owned().unwrap();
        let b = limit.semaphore.clone().try_acquire_owned().unwrap();
        limit.set(0);
        limit.set(1);
        // Two held against a limit of one: one is still owed.
        assert_eq!(limit.semaphore.available_permits(), 0);
        assert!(!limit.give_back(a));
        assert!(limit.give_back(b));
        assert_eq!(limit.semaphore.available_permits(), 1);
    }
}

//! A limit that can be lowered while permits are held, and whose permits are handed to
//! the requests waiting for one in an order ([`crate::queue`]): a semaphore, the limit
//! it stands for, the debt left when it was lowered below what is held, and the
//! waiters. A permit that comes back while there is debt pays it (is forgotten) instead
//! of going back. Used for a server's budget ([`crate::Budget`], waiters ranked by
//! priority) and its turns to open a session (ranked the same way), and for a tenant
//! pool's size in this replica ([`crate::Lease`], waiters ranked by the worker thread
//! they wait on).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::queue::Waiters;

pub(crate) struct Limit<K> {
    pub(crate) semaphore: Arc<Semaphore>,
    limit: AtomicUsize,
    /// Permits to swallow as they come back, after the limit was lowered.
    debt: AtomicUsize,
    /// Requests waiting for a permit: counted before they look at the semaphore.
    pub(crate) waiting: AtomicUsize,
    /// The waiters, in the order they get permits: nobody waits inside the semaphore,
    /// permits are handed to them.
    pub(crate) waiters: Mutex<Waiters<K>>,
    /// How long a waiter lets others go first at most.
    pub(crate) max_defer: Duration,
}

impl<K: Ord + Copy> Limit<K> {
    pub(crate) fn new(limit: usize, max_defer: Duration) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit: AtomicUsize::new(limit),
            debt: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            waiters: Mutex::new(Waiters::default()),
            max_defer,
        }
    }

    pub(crate) fn get(&self) -> usize {
        self.limit.load(Ordering::SeqCst)
    }

    /// Sets the limit; true when it grew (permits were added and handed to waiters).
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
            self.returned(None);
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

    /// Gives a permit back: it pays debt if there is any (false), else goes to the
    /// waiter `prefer` picks ([`crate::queue`]) or back to the semaphore (true).
    pub(crate) fn give_back(&self, permit: OwnedSemaphorePermit, prefer: Option<K>) -> bool {
        if self.owed() {
            permit.forget();
            false
        } else {
            drop(permit);
            self.returned(prefer);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(n: usize) -> Limit<u8> {
        Limit::new(n, Duration::ZERO)
    }

    #[test]
    fn lowered_below_what_is_held_it_owes_the_rest() {
        let limit = limit(3);
        let held: Vec<_> = (0..2)
            .map(|_| limit.semaphore.clone().try_acquire_owned().unwrap())
            .collect();
        // One free permit is taken back, one is owed.
        assert!(!limit.set(1));
        assert_eq!(limit.semaphore.available_permits(), 0);
        let mut held = held.into_iter();
        assert!(
            !limit.give_back(held.next().unwrap(), None),
            "pays the debt"
        );
        assert!(limit.give_back(held.next().unwrap(), None), "goes back");
        assert_eq!(limit.semaphore.available_permits(), 1);
        // Raised again: exactly the new limit is available.
        assert!(limit.set(4));
        assert_eq!(limit.semaphore.available_permits(), 4);
    }

    #[test]
    fn raised_while_owing_it_pays_the_debt_first() {
        let limit = limit(2);
        let a = limit.semaphore.clone().try_acquire_owned().unwrap();
        let b = limit.semaphore.clone().try_acquire_owned().unwrap();
        limit.set(0);
        limit.set(1);
        // Two held against a limit of one: one is still owed.
        assert_eq!(limit.semaphore.available_permits(), 0);
        assert!(!limit.give_back(a, None));
        assert!(limit.give_back(b, None));
        assert_eq!(limit.semaphore.available_permits(), 1);
    }
}

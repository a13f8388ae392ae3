//! A tenant's connections in this process, kept per worker thread.
//!
//! A connection is driven by a task on the thread that opened it (a router worker runs
//! its own single-threaded runtime). A request on another thread that uses it pays two
//! hops between threads — its query handed to the driving thread, the answer handed
//! back — each a wake-up of a parked thread: on a router with a busy tenant, most of a
//! query's cost on the router's side (`make bench` measures it). So a tenant's pool is
//! one deadpool pool per thread slot, and a request takes an idle connection of its own
//! thread's pool first; else an idle one of another thread (a hop is cheaper than a
//! new backend); else its own thread's pool opens one. What the tenant may hold is
//! still one limit for the whole tenant ([`crate::lease`]): a connection that comes
//! back while the tenant has more open than its size is closed.
//!
//! When the tenant's requests wait for one another's connections, a returned
//! connection's permit goes to a request waiting on the thread that drives it
//! ([`crate::queue`], keyed by slot), which then finds that connection idle in its own
//! thread's pool: under load, each thread's requests keep to its own connections. A
//! request waits for its own thread's at most [`crate::HANDOVER_MAX_DEFER`]; past it, it
//! takes the next permit whichever thread it comes from (and a hop).

use std::sync::atomic::{AtomicUsize, Ordering};

use deadpool::managed::{Metrics, Pool};

use crate::conn::{Conn, Manager};

/// This thread's slot among `n`: threads are numbered as they first take a connection.
fn slot(n: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|s| *s) % n.max(1)
}

/// How many slots a tenant's pool has: `configured`, or one per core (0), as the router
/// runs a worker per core. Threads beyond it share slots, which only costs hops.
pub(crate) fn count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// A tenant's pools, one per thread slot.
pub(crate) struct Slots {
    pools: Box<[Pool<Manager>]>,
}

/// Open and idle connections, over every slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Status {
    pub(crate) size: usize,
    pub(crate) available: usize,
}

impl Slots {
    pub(crate) fn new(pools: Vec<Pool<Manager>>) -> Self {
        Self {
            pools: pools.into_boxed_slice(),
        }
    }

    /// This thread's slot.
    pub(crate) fn mine(&self) -> usize {
        slot(self.pools.len())
    }

    /// The pool a request on this thread takes its connection from, and its slot: its
    /// own thread's if that has an idle connection, else one that has, else its own
    /// thread's.
    pub(crate) fn pick(&self) -> (usize, &Pool<Manager>) {
        let mine = self.mine();
        if self.pools[mine].status().available > 0 {
            return (mine, &self.pools[mine]);
        }
        self.pools
            .iter()
            .enumerate()
            .find(|(_, p)| p.status().available > 0)
            .unwrap_or((mine, &self.pools[mine]))
    }

    pub(crate) fn status(&self) -> Status {
        self.pools.iter().fold(
            Status {
                size: 0,
                available: 0,
            },
            |s, p| {
                let st = p.status();
                Status {
                    size: s.size + st.size,
                    available: s.available + st.available,
                }
            },
        )
    }

    /// Keeps the idle connections `keep` says to keep, slot after slot; how many were
    /// removed.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&Conn, Metrics) -> bool) -> usize {
        self.pools
            .iter()
            .map(|p| p.retain(&mut keep).removed.len())
            .sum()
    }

    pub(crate) fn close(&self) {
        for p in self.pools.iter() {
            p.close();
        }
    }
}

//! Closing another tenant's idle connection to make room on a server's budget: which
//! one, and the books kept on it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use uuid::Uuid;

use crate::slots::Slots;
use crate::Inner;

impl Inner {
    /// Closes one idle connection of another pool on `server`: from a pool with more
    /// than one idle connection if there is one (every tenant keeps a warm connection
    /// as long as the budget allows), else from the pool used least lately (its
    /// decaying use count, then its last use): under skewed traffic the popular tenants
    /// keep their connections and the rarely seen ones make room for each other.
    /// Idle connections the server has already closed are cleared out on the way and
    /// count for nothing (they hold no permit). Whether a live connection was closed.
    pub(crate) fn evict_one_idle(&self, server: i64, except: Uuid) -> bool {
        let Some(budget) = self.budgets.get(&server).map(|b| b.clone()) else {
            return false;
        };
        // Only the tenants holding the budget's permits can have an idle connection.
        let residents = budget.residents();
        // Each round either closes a live connection or clears a pool's dead ones, so
        // the rounds are few; bounded all the same.
        for _ in 0..=residents.len() {
            let mut victim: Option<((bool, u64, u64), Arc<Slots>)> = None;
            for tenant in &residents {
                if *tenant == except {
                    continue;
                }
                let Some(entry) = self.pools.get(tenant) else {
                    continue;
                };
                let idle = entry.pool.status().available;
                if entry.server != server || idle == 0 {
                    continue;
                }
                // Lower ranks first: spare idle connections before last ones, then the
                // least used lately, then the least recently used.
                let rank = (
                    idle < 2,
                    entry.uses.load(Ordering::Relaxed),
                    entry.last_used.load(Ordering::Relaxed),
                );
                if victim.as_ref().is_none_or(|(r, _)| rank < *r) {
                    victim = Some((rank, entry.pool.clone()));
                }
            }
            let Some((_, pool)) = victim else {
                return false;
            };
            let mut taken = false;
            let cleared = pool.retain(|conn, _| {
                if conn.life.closed() {
                    return false;
                }
                if taken {
                    return true;
                }
                // A connection that closed since the check above goes too, uncounted.
                taken = conn.life.evict(&budget);
                false
            });
            if taken {
                return true;
            }
            if cleared == 0 {
                // Taken from the pool meanwhile: nothing idle there any more.
                return false;
            }
        }
        false
    }
}

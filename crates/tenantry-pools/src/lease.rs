//! A connection lent to one request, and the tenant pool's size in this replica that it
//! counts against.
//!
//! Each tenant's deadpool pool is built at its plan's size and never resized: deadpool's
//! `resize` takes back only the permits of connections it can close, so a pool shrunk
//! while it held fewer connections than its old size keeps the difference, and every
//! connection it then opens past the new size is closed as soon as it is returned (a
//! connection opened per request). The size this replica may use, which follows the
//! live replicas and the server's budget, is a [`Limit`] of its own instead: a request
//! holds one of its permits for as long as it holds the connection. Lowered, the limit
//! closes idle connections over it at once ([`crate::Pools`]' `fit`) and connections in
//! use as they come back. Given back, a permit goes first to a request waiting on the
//! thread that drives the returned connection ([`crate::slots`]).

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use crate::conn::clean;
use crate::limit::Limit;
use crate::slots::Slots;
use crate::Object;

/// A tenant connection lent to a request; returned to its pool when dropped (closed
/// instead if the pool's size was lowered meanwhile).
pub struct Lease {
    conn: Option<Object>,
    permit: Option<OwnedSemaphorePermit>,
    size: Arc<Limit<usize>>,
    slots: Arc<Slots>,
    /// The slot of the pool the connection came from: the thread driving it.
    slot: usize,
}

impl Lease {
    pub(crate) fn new(
        conn: Object,
        permit: OwnedSemaphorePermit,
        size: Arc<Limit<usize>>,
        slots: Arc<Slots>,
        slot: usize,
    ) -> Self {
        Self {
            conn: Some(conn),
            permit: Some(permit),
            size,
            slots,
            slot,
        }
    }

    /// Closes the connection instead of returning it to its pool.
    pub fn close(mut self) {
        if let Some(conn) = self.conn.take() {
            drop(Object::take(conn));
        }
    }
}

impl std::ops::Deref for Lease {
    type Target = Object;
    fn deref(&self) -> &Object {
        self.conn
            .as_ref()
            .expect("a lease holds its connection until dropped")
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Object {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        // The connection first, then the permit: whoever the permit lets in finds the
        // connection idle in the pool (a waiter on the thread driving it first). Over a
        // lowered size, the connection closes and its permit pays the debt.
        if self.size.owed() {
            permit.forget();
            if let Some(conn) = self.conn.take() {
                drop(Object::take(conn));
            }
        } else {
            // Two threads' pools can each open a connection at once: one over the
            // tenant's size is closed, not kept idle.
            if self.slots.status().size > self.size.get() {
                if let Some(conn) = self.conn.take() {
                    drop(Object::take(conn));
                }
            }
            drop(self.conn.take());
            drop(permit);
            self.size.returned(Some(self.slot));
        }
    }
}

/// Gives a connection back to its pool cleaned, now rather than at its next use: what a
/// session holds (an advisory lock, say) is let go as soon as its request is done, not
/// when the connection is next taken. A session that cannot be cleaned is closed.
/// Run it in a task of its own after answering (`tokio::spawn(release(conn))`).
pub async fn release(mut conn: Lease) {
    if conn.dirty && clean(&mut conn).await.is_err() {
        conn.close();
    }
}

//! One tenant connection ([`Conn`]) and the deadpool manager that opens it as the
//! tenant's role, holding a permit of its server's budget for as long as the server
//! keeps the session open.

use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use crate::budget::{Budget, Life, Opening, Slot, Turn};
use crate::{stream, ConnError, Inner};

/// One open connection. Its budget permit is held by the task driving the connection,
/// which ends when the server has closed the socket (see [`stream`]).
pub struct Conn {
    pub(crate) client: deadpool_postgres::ClientWrapper,
    pub(crate) dirty: bool,
    /// Shared with the connection's [`Slot`].
    pub(crate) life: Arc<Life>,
    /// Shared with the connection's stream.
    pub(crate) reads: Arc<stream::ReadCap>,
}

impl Conn {
    /// Says the session may carry state of its own (settings, temporary tables, …):
    /// it is cleaned before anyone uses it again. Plain queries and transactions leave
    /// nothing behind and need no cleaning, which costs a round trip.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Caps the bytes the connection may read from now on (`None`: no cap). Past the cap
    /// the connection is closed, and [`Conn::reads_capped`] says so.
    pub fn cap_reads(&self, bytes: Option<u64>) {
        self.reads.set(bytes);
    }

    /// Whether the connection went past its read cap (and is closed).
    pub fn reads_capped(&self) -> bool {
        self.reads.tripped()
    }
}

/// What cleaning runs: everything a session can keep, short of the prepared
/// statements Tenantry itself caches.
/// Prepared statements are not cleaned but counted: one the session prepared itself
/// (`PREPARE`, `from_sql`) could take a name the driver will use, and one of ours that is
/// gone (`DEALLOCATE`) would fail its next use, so either way the connection is closed.
pub(crate) const CLEAN_SQL: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
                         SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; \
                         SELECT count(*) FILTER (WHERE from_sql), count(*) FILTER (WHERE NOT from_sql) \
                         FROM pg_prepared_statements;";

impl std::ops::Deref for Conn {
    type Target = deadpool_postgres::ClientWrapper;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.client
    }
}

/// A session as it opens: the client, and the connection its task is to drive.
type Opened = (
    tokio_postgres::Client,
    tokio_postgres::Connection<stream::UntilClosed, tokio_postgres::tls::NoTlsStream>,
);

/// The pool manager: opens connections as the tenant, each holding a budget permit.
pub struct Manager {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) connect_timeout: Duration,
    pub(crate) answer_timeout: Duration,
    pub(crate) budget: Arc<Budget>,
    pub(crate) pools: Weak<Inner>,
    pub(crate) tenant: Uuid,
    pub(crate) server: i64,
    pub(crate) wait: Duration,
    pub(crate) priority: u8,
}

impl Manager {
    /// A permit of the server's budget: a free one when nobody waits; else a place in
    /// the queue, which hands out permits by priority ([`queue`]); while waiting, close an
    /// idle connection of another tenant on this server (unless enough closes are
    /// already on their way for everyone waiting) and wait a moment for a permit; again,
    /// until the deadline.
    async fn permit(&self, deadline: tokio::time::Instant) -> Result<Slot, ConnError> {
        let budget = &self.budget;
        if let Some(p) = budget.limit.try_take() {
            return Ok(self.slot(p));
        }
        let mut wait = budget.limit.wait(Reverse(self.priority), None);
        let permit = loop {
            if let Some(p) = wait.granted() {
                break p;
            }
            let short = budget.evicting.load(Ordering::SeqCst)
                < budget.limit.waiting.load(Ordering::SeqCst);
            if short {
                if let Some(pools) = self.pools.upgrade() {
                    pools.evict_one_idle(self.server, self.tenant);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ConnError::Budget);
            }
            let pause = (deadline - now).min(Duration::from_millis(10));
            if let Some(p) = wait.granted_within(pause).await {
                break p;
            }
        };
        drop(wait);
        Ok(self.slot(permit))
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        Slot::new(&self.budget, permit, self.tenant)
    }

    /// Opens the connection; a server that says the role (or the server) has too many
    /// connections (SQLSTATE 53300) is asked again until `deadline`, as a full pool would
    /// be waited for: when a router replica joins, the others shrink their pools for the
    /// tenant only at their next heartbeat. The slot's permit is kept meanwhile; the turn
    /// is not (a tenant at its role's limit does not hold up the server's other tenants),
    /// and is waited for again before the next try.
    async fn open<'b>(
        &'b self,
        deadline: tokio::time::Instant,
        reads: &Arc<stream::ReadCap>,
        turn: &mut Option<Turn<'b>>,
    ) -> Result<Opened, ConnError> {
        let mut pause = Duration::from_millis(20);
        loop {
            let error = match tokio::time::timeout(self.connect_timeout, self.connect(reads)).await
            {
                Err(_) => return Err(ConnError::Timeout),
                Ok(Ok(opened)) => return Ok(opened),
                Ok(Err(e)) => e,
            };
            let full = matches!(&error, ConnError::Pg(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS));
            if !full {
                return Err(error);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                tracing::debug!(error = %error, "the server kept refusing: too many connections");
                return Err(ConnError::Budget);
            }
            // Asked again up to the deadline itself, the last time at it.
            *turn = None;
            tokio::time::sleep_until((now + pause).min(deadline)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
            *turn = self.turn(deadline).await?;
        }
    }

    /// A turn to open a session on the server ([`Budget::turns`]), by `deadline`.
    async fn turn(&self, deadline: tokio::time::Instant) -> Result<Option<Turn<'_>>, ConnError> {
        self.budget
            .turn(self.priority, deadline)
            .await
            .map_err(|()| ConnError::Budget)
    }

    async fn connect(&self, reads: &Arc<stream::ReadCap>) -> Result<Opened, ConnError> {
        let socket = stream::Socket::connect(&self.host, self.port)
            .await
            .map_err(ConnError::Connect)?;
        Ok(self
            .config
            .connect_raw(
                stream::UntilClosed::new(socket, reads.clone(), self.answer_timeout),
                tokio_postgres::NoTls,
            )
            .await?)
    }
}

impl managed::Manager for Manager {
    type Type = Conn;
    type Error = ConnError;

    async fn create(&self) -> Result<Conn, ConnError> {
        // Whatever way this ends (an error, a timeout, the future dropped), the slot is
        // dropped with it and gives its permit and its count back.
        let deadline = tokio::time::Instant::now() + self.wait;
        // The turn first: only requests whose session is next to start look for a permit
        // (and close other tenants' idle connections to get one).
        let mut turn = self.turn(deadline).await?;
        let slot = self.permit(deadline).await?;
        let life = slot.life.clone();
        let reads = Arc::new(stream::ReadCap::default());
        let opening = Opening::start(&self.budget);
        let (client, connection) = self.open(deadline, &reads, &mut turn).await?;
        drop(opening);
        drop(turn);
        // The task drives the connection and holds the permit until the server has
        // closed the socket; dropping the client ends the session (Terminate, then
        // our side shut, then the server's close).
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "tenant connection ended with an error");
            }
            drop(slot);
        });
        // The wrapper aborts the task it is given when dropped; it is given one that has
        // nothing to do, so the connection above ends cleanly instead.
        let noop = tokio::spawn(async {});
        Ok(Conn {
            client: deadpool_postgres::ClientWrapper::new(client, noop),
            dirty: false,
            life,
            reads,
        })
    }

    async fn recycle(&self, conn: &mut Conn, _: &Metrics) -> RecycleResult<ConnError> {
        if conn.client.is_closed() || conn.reads.tripped() {
            return Err(RecycleError::message("connection closed"));
        }
        // A request that ended early (its client went away) may have left a cap set.
        conn.reads.set(None);
        if conn.dirty {
            clean(conn).await.map_err(RecycleError::message)?;
        }
        Ok(())
    }
}

/// Cleans a dirty session; `Err` when it cannot be reused.
pub(crate) async fn clean(conn: &mut Conn) -> Result<(), &'static str> {
    let messages = conn
        .client
        .simple_query(CLEAN_SQL)
        .await
        .map_err(|_| "the session could not be cleaned")?;
    // The last row is the count's (an earlier one is the unlock's).
    let counts = messages.iter().rev().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some((
            r.try_get(0)
                .ok()
                .flatten()
                .and_then(|v| v.parse::<usize>().ok()),
            r.try_get(1)
                .ok()
                .flatten()
                .and_then(|v| v.parse::<usize>().ok()),
        )),
        _ => None,
    });
    let ours = conn.client.statement_cache.size();
    match counts {
        Some((Some(0), Some(n))) if n >= ours => {
            conn.dirty = false;
            Ok(())
        }
        _ => Err("the session's prepared statements were changed"),
    }
}

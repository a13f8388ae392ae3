//! Tenant connection pools.
//!
//! * One deadpool pool per tenant, made on first use, sized by its plan (split among the
//!   live router replicas: [`Pools::plan_share`]), connecting as the tenant's own role;
//!   statements prepared once per connection. A connection that may carry session
//!   state ([`Conn::mark_dirty`]) is cleaned (`RESET ALL`, `DISCARD TEMP`, …) before its
//!   next use, so no session state passes from one request to the next.
//! * A **budget per server**: every connection of every tenant pool on a server holds a
//!   permit of that server's semaphore. When the budget is spent, an idle connection of
//!   the other pool on the server used least lately (a decaying use count, then the
//!   last use) is closed to make room; if none is idle, the request waits up to the wait deadline and then fails as
//!   [`PoolError::Busy`] (the router answers 503 with Retry-After).
//! * The books balance on every path: each connection's permit, its `open` count and
//!   (if it was evicted) its `evicting` count come back exactly once, when the task
//!   driving it ends, however it ends; waiters uncount themselves when dropped.
//! * Idle connections are closed after `idle_timeout`, idle pools dropped after
//!   `pool_idle_timeout`: an idle tenant holds no connection.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use secrecy::{ExposeSecret, SecretString};

mod budget;
mod stream;
pub use budget::Budget;
use budget::{Life, Slot};
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

/// Timeouts and idle limits.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// How long a request waits for a connection before it is told to come back.
    pub wait_timeout: Duration,
    /// How long opening a connection to a tenant database may take.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Pools unused for this long are dropped.
    pub pool_idle_timeout: Duration,
    /// Settings every tenant connection starts with (`-c name=value …`, libpq's
    /// `options`): start-up options outrank the role's and the database's own defaults,
    /// which a tenant can change, and `RESET` returns to them.
    pub session_options: String,
}

/// Where and as whom a tenant's pool connects.
#[derive(Clone)]
pub struct Target {
    pub tenant: Uuid,
    /// The catalog generation the target was read at; a newer one replaces the pool.
    pub generation: i64,
    pub server: i64,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: SecretString,
    pub max_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection within the wait deadline (the tenant's pool, or its server's budget, is full).
    #[error("no connection became free within the wait deadline")]
    Busy,
    /// The tenant's database did not accept a connection.
    #[error("the tenant database is unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("the server's connection budget is spent")]
    Budget,
    #[error("could not reach the server: {0}")]
    Connect(std::io::Error),
    #[error("the server did not accept the connection in time")]
    Timeout,
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
}

/// One open connection. Its budget permit is held by the task driving the connection,
/// which ends when the server has closed the socket (see [`stream`]).
pub struct Conn {
    client: deadpool_postgres::ClientWrapper,
    dirty: bool,
    /// Shared with the connection's [`Slot`].
    life: Arc<Life>,
    /// Shared with the connection's stream.
    reads: Arc<stream::ReadCap>,
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
const CLEAN_SQL: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
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
    config: tokio_postgres::Config,
    host: String,
    port: u16,
    connect_timeout: Duration,
    budget: Arc<Budget>,
    pools: Weak<Inner>,
    tenant: Uuid,
    server: i64,
    wait: Duration,
}

impl Manager {
    /// A permit of the server's budget: a free one; else close an idle connection of
    /// another tenant on this server (unless enough closes are already on their way for
    /// everyone waiting) and wait a moment for a permit; again, until the deadline.
    async fn permit(&self, deadline: tokio::time::Instant) -> Result<Slot, ConnError> {
        if let Ok(p) = self.budget.semaphore.clone().try_acquire_owned() {
            return Ok(self.slot(p));
        }
        let budget = &self.budget;
        budget.waiting.fetch_add(1, Ordering::SeqCst);
        struct Waiting<'a>(&'a Budget);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _waiting = Waiting(budget);
        let permit = loop {
            if let Ok(p) = self.budget.semaphore.clone().try_acquire_owned() {
                break p;
            }
            let short =
                budget.evicting.load(Ordering::SeqCst) < budget.waiting.load(Ordering::SeqCst);
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
            if let Ok(Ok(p)) =
                tokio::time::timeout(pause, self.budget.semaphore.clone().acquire_owned()).await
            {
                break p;
            }
        };
        Ok(self.slot(permit))
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        self.budget.open.fetch_add(1, Ordering::SeqCst);
        self.budget.opened.fetch_add(1, Ordering::Relaxed);
        Slot {
            permit: Some(permit),
            budget: self.budget.clone(),
            life: Arc::new(Life::new()),
        }
    }

    /// Opens the connection; a server that says the role (or the server) has too many
    /// connections (SQLSTATE 53300) is asked again until `deadline`, as a full pool would
    /// be waited for: when a router replica joins, the others shrink their pools for the
    /// tenant only at their next heartbeat. The slot's permit is kept meanwhile.
    async fn open(
        &self,
        deadline: tokio::time::Instant,
        reads: &Arc<stream::ReadCap>,
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
            tokio::time::sleep_until((now + pause).min(deadline)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    async fn connect(&self, reads: &Arc<stream::ReadCap>) -> Result<Opened, ConnError> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(ConnError::Connect)?;
        tcp.set_nodelay(true).map_err(ConnError::Connect)?;
        Ok(self
            .config
            .connect_raw(
                stream::UntilClosed::new(tcp, reads.clone()),
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
        let slot = self.permit(deadline).await?;
        let life = slot.life.clone();
        let reads = Arc::new(stream::ReadCap::default());
        let (client, connection) = self.open(deadline, &reads).await?;
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
async fn clean(conn: &mut Conn) -> Result<(), &'static str> {
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

type Pool = managed::Pool<Manager>;
/// A pooled connection; returned to its pool when dropped.
pub type Object = managed::Object<Manager>;

/// Gives a connection back to its pool cleaned, now rather than at its next use: what a
/// session holds (an advisory lock, say) is let go as soon as its request is done, not
/// when the connection is next taken. A session that cannot be cleaned is closed.
/// Run it in a task of its own after answering (`tokio::spawn(release(conn))`).
pub async fn release(mut conn: Object) {
    if conn.dirty && clean(&mut conn).await.is_err() {
        drop(Object::take(conn));
    }
}

struct Entry {
    pool: Pool,
    generation: i64,
    server: i64,
    last_used: Arc<AtomicU64>,
    /// Requests lately: counted on every use, halved at every reap (a decaying count).
    uses: AtomicU64,
    /// The plan's pool size: this replica's part of it is the most the pool may grow to.
    plan_size: usize,
}

struct Inner {
    config: PoolConfig,
    started: Instant,
    pools: DashMap<Uuid, Entry>,
    budgets: DashMap<i64, Arc<Budget>>,
    default_budget: usize,
    /// Live router replicas (at least 1), each holding pools of the same tenants.
    replicas: AtomicUsize,
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Used in the last two seconds: counted when the budget is shared out.
    fn is_active(&self, entry: &Entry, now: u64) -> bool {
        now.saturating_sub(entry.last_used.load(Ordering::Relaxed)) < 2_000
    }

    /// Closes one idle connection of another pool on `server`: from a pool with more
    /// than one idle connection if there is one (every tenant keeps a warm connection
    /// as long as the budget allows), else from the pool used least lately (its
    /// decaying use count, then its last use): under skewed traffic the popular tenants
    /// keep their connections and the rarely seen ones make room for each other.
    /// Idle connections the server has already closed are cleared out on the way and
    /// count for nothing (they hold no permit). Whether a live connection was closed.
    fn evict_one_idle(&self, server: i64, except: Uuid) -> bool {
        let Some(budget) = self.budgets.get(&server).map(|b| b.clone()) else {
            return false;
        };
        // Each round either closes a live connection or clears a pool's dead ones, so
        // the rounds are few; bounded all the same.
        for _ in 0..=self.pools.len() {
            let mut victim: Option<((bool, u64, u64), Pool)> = None;
            for entry in self.pools.iter() {
                let idle = entry.pool.status().available;
                if entry.server != server || *entry.key() == except || idle == 0 {
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
            if cleared.removed.is_empty() {
                // Taken from the pool meanwhile: nothing idle there any more.
                return false;
            }
        }
        false
    }
}

/// Per-server usage, for metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUsage {
    pub server: i64,
    pub budget: usize,
    pub open: usize,
    pub pools: usize,
    /// Connections opened since start.
    pub opened: u64,
    /// Idle connections closed to make room for another tenant's, since start.
    pub evicted: u64,
    /// Of those, the ones whose permits have not come back yet (their server has not
    /// closed them yet).
    pub evicting: usize,
    /// Requests waiting for a permit of this server's budget now.
    pub waiting: usize,
}

/// All tenant pools of this process.
#[derive(Clone)]
pub struct Pools {
    inner: Arc<Inner>,
}

impl Pools {
    /// `default_budget` applies to servers whose budget was never set.
    pub fn new(config: PoolConfig, default_budget: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                started: Instant::now(),
                pools: DashMap::new(),
                budgets: DashMap::new(),
                default_budget,
                replicas: AtomicUsize::new(1),
            }),
        }
    }

    /// Sets how many connections this process may hold to `server`, across all tenants.
    pub fn set_budget(&self, server: i64, limit: usize) {
        self.budget(server).set_limit(limit);
    }

    /// Says how many router replicas live (each with its own `Pools`): a tenant's plan
    /// pool size is split among them ([`Pools::plan_share`]); pools made before take
    /// their new size at once.
    pub fn set_replicas(&self, live: usize) {
        let live = live.max(1);
        if self.inner.replicas.swap(live, Ordering::SeqCst) != live {
            // Every pool takes its new part now, not at the next reap: when a replica
            // joins, the connections it may open are given back at once.
            let per_server = self.active_per_server(self.inner.now_ms());
            for entry in self.inner.pools.iter() {
                self.fit(&entry, &per_server);
            }
        }
    }

    /// Live router replicas, as last set (1 until then).
    pub fn replicas(&self) -> usize {
        self.inner.replicas.load(Ordering::SeqCst).max(1)
    }

    /// This replica's part of a tenant's plan pool size: `max(1, plan / replicas)`. The
    /// tenant's role allows `plan + 2` connections, so the replicas' pools together stay
    /// within it as long as there are at most `plan + 2` replicas; beyond that each keeps
    /// one connection, and connections past the role's limit are waited for (53300 is
    /// taken as busy) until the pool's wait deadline.
    pub fn plan_share(&self, plan_size: usize) -> usize {
        (plan_size / self.replicas()).max(1)
    }

    fn budget(&self, server: i64) -> Arc<Budget> {
        self.inner
            .budgets
            .entry(server)
            .or_insert_with(|| Arc::new(Budget::new(self.inner.default_budget)))
            .clone()
    }

    /// A connection to the tenant's database, within the wait deadline.
    pub async fn get(&self, target: &Target) -> Result<Object, PoolError> {
        let pool = self.pool_for(target)?;
        pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(ConnError::Pg(e)) => {
                PoolError::Unavailable(tenantry_catalog::describe_pg_error(&e))
            }
            managed::PoolError::Backend(e @ (ConnError::Connect(_) | ConnError::Timeout)) => {
                PoolError::Unavailable(e.to_string())
            }
            managed::PoolError::Backend(ConnError::Budget)
            | managed::PoolError::Timeout(_)
            | managed::PoolError::Closed
            | managed::PoolError::NoRuntimeSpecified
            | managed::PoolError::PostCreateHook(_) => PoolError::Busy,
        })
    }

    fn pool_for(&self, target: &Target) -> Result<Pool, PoolError> {
        use dashmap::mapref::entry::Entry as Slot;
        let now = self.inner.now_ms();
        // Clone the pool out: no map guard is held across an await. A request that read
        // an older route uses the newer pool (never replaces it).
        if let Some(entry) = self.inner.pools.get(&target.tenant) {
            if entry.generation >= target.generation {
                entry.last_used.store(now, Ordering::Relaxed);
                entry.uses.fetch_add(1, Ordering::Relaxed);
                return Ok(entry.pool.clone());
            }
        }
        // Sized and built with no guard held (sizing reads the map).
        let size = self.fair_size(target.server, self.plan_share(target.max_size));
        let built = self.build(target, size)?;
        let entry = Entry {
            pool: built.clone(),
            generation: target.generation,
            server: target.server,
            last_used: Arc::new(AtomicU64::new(now)),
            uses: AtomicU64::new(1),
            plan_size: target.max_size.max(1),
        };
        let (pool, replaced, inserted) = match self.inner.pools.entry(target.tenant) {
            // Another first request built one meanwhile: share it (ours was never used).
            Slot::Occupied(e) if e.get().generation >= target.generation => {
                e.get().last_used.store(now, Ordering::Relaxed);
                e.get().uses.fetch_add(1, Ordering::Relaxed);
                (e.get().pool.clone(), None, false)
            }
            Slot::Occupied(mut e) => (built, Some(e.insert(entry)), true),
            Slot::Vacant(e) => {
                e.insert(entry);
                (built, None, true)
            }
        };
        if let Some(old) = replaced {
            old.pool.close();
        }
        if inserted {
            self.shrink_to_fair(target.server);
        }
        Ok(pool)
    }

    /// A new pool became active on `server`: pools above the new even share give back
    /// their spare connections now rather than at the next reap, so the newcomer finds
    /// room without taking it from a pool that is at its share.
    fn shrink_to_fair(&self, server: i64) {
        let fair = self.fair_size(server, usize::MAX);
        for entry in self.inner.pools.iter() {
            if entry.server == server && entry.pool.status().max_size > fair {
                entry.pool.resize(fair);
            }
        }
    }

    fn build(&self, target: &Target, max_size: usize) -> Result<Pool, PoolError> {
        let c = &self.inner.config;
        let mut pg = tokio_postgres::Config::new();
        pg.dbname(&target.database)
            .user(&target.user)
            .password(target.password.expose_secret())
            .application_name("tenantry-router");
        if !c.session_options.is_empty() {
            pg.options(&c.session_options);
        }
        let manager = Manager {
            config: pg,
            host: target.host.clone(),
            port: target.port,
            connect_timeout: c.connect_timeout,
            budget: self.budget(target.server),
            pools: Arc::downgrade(&self.inner),
            tenant: target.tenant,
            server: target.server,
            wait: c.wait_timeout,
        };
        managed::Pool::builder(manager)
            .max_size(max_size)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(c.wait_timeout))
            .create_timeout(Some(c.wait_timeout + c.connect_timeout))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .build()
            .map_err(|e| PoolError::Unavailable(e.to_string()))
    }

    /// Drops a tenant's pool (suspended, deleted, moved): its connections close as they come back.
    pub fn drop_tenant(&self, tenant: Uuid) {
        if let Some((_, entry)) = self.inner.pools.remove(&tenant) {
            entry.pool.close();
        }
    }

    /// Closes idle connections and drops idle pools; run it every second or so.
    pub fn reap(&self) {
        let c = &self.inner.config;
        let now = self.inner.now_ms();
        let mut idle_pools = Vec::new();
        let per_server = self.active_per_server(now);
        for entry in self.inner.pools.iter() {
            entry.pool.retain(|_, m| m.last_used() < c.idle_timeout);
            let _ = entry
                .uses
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u / 2));
            self.fit(&entry, &per_server);
            let unused_ms = now.saturating_sub(entry.last_used.load(Ordering::Relaxed));
            if entry.pool.status().size == 0 && unused_ms > c.pool_idle_timeout.as_millis() as u64 {
                idle_pools.push(*entry.key());
            }
        }
        for tenant in idle_pools {
            self.inner
                .pools
                .remove_if(&tenant, |_, e| e.pool.status().size == 0);
        }
    }

    /// Active pools per server, counted before a pass that resizes them: no second pass
    /// over the map while iterating it.
    fn active_per_server(&self, now: u64) -> std::collections::HashMap<i64, usize> {
        let mut per_server = std::collections::HashMap::new();
        for entry in self.inner.pools.iter() {
            if self.inner.is_active(&entry, now) {
                *per_server.entry(entry.server).or_default() += 1;
            }
        }
        per_server
    }

    /// Keeps a pool to this replica's part of its plan and its fair share of its
    /// server's budget.
    fn fit(&self, entry: &Entry, per_server: &std::collections::HashMap<i64, usize>) {
        let budget = self.budget(entry.server).limit.load(Ordering::SeqCst);
        let pools = per_server.get(&entry.server).copied().unwrap_or(1).max(1);
        let fair = self.plan_share(entry.plan_size).min(budget / pools).max(1);
        if entry.pool.status().max_size != fair {
            entry.pool.resize(fair);
        }
    }

    /// A pool's size: its plan's (this replica's part of it), but no more than an even
    /// share of its server's budget among the server's active pools (used in the last two seconds; at least one). When the budget is short, a busy
    /// tenant waits for its own connections instead of taking other tenants' (which
    /// would make every request open a connection).
    fn fair_size(&self, server: i64, plan_size: usize) -> usize {
        let budget = self.budget(server).limit.load(Ordering::SeqCst);
        let now = self.inner.now_ms();
        let pools = self
            .inner
            .pools
            .iter()
            .filter(|e| e.server == server && self.inner.is_active(e, now))
            .count()
            .max(1);
        plan_size.min(budget / pools).max(1)
    }

    /// Runs [`Pools::reap`] every `every` until the returned task is aborted.
    pub fn spawn_reaper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(inner) => Pools { inner }.reap(),
                    None => return,
                }
            }
        })
    }

    /// Budget, open connections and pools, per server.
    pub fn usage(&self) -> Vec<ServerUsage> {
        let mut out: Vec<ServerUsage> = self
            .inner
            .budgets
            .iter()
            .map(|b| ServerUsage {
                server: *b.key(),
                budget: b.limit.load(Ordering::SeqCst),
                open: b.open.load(Ordering::SeqCst),
                opened: b.opened.load(Ordering::Relaxed),
                evicted: b.evicted.load(Ordering::Relaxed),
                evicting: b.evicting.load(Ordering::SeqCst),
                waiting: b.waiting.load(Ordering::SeqCst),
                pools: self
                    .inner
                    .pools
                    .iter()
                    .filter(|e| e.server == *b.key())
                    .count(),
            })
            .collect();
        out.sort_by_key(|u| u.server);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Pools {
        let wait = Duration::from_secs(1);
        Pools::new(
            PoolConfig {
                wait_timeout: wait,
                connect_timeout: wait,
                idle_timeout: wait,
                pool_idle_timeout: wait,
                session_options: String::new(),
            },
            10,
        )
    }

    #[test]
    fn a_plan_pool_is_split_among_live_replicas_at_least_one_each() {
        let p = pools();
        assert_eq!((p.replicas(), p.plan_share(10)), (1, 10));
        p.set_replicas(2);
        assert_eq!(p.plan_share(10), 5);
        p.set_replicas(3);
        assert_eq!(p.plan_share(10), 3);
        p.set_replicas(12);
        assert_eq!(p.plan_share(10), 1, "one each beyond the pool size");
        assert_eq!(p.plan_share(0), 1);
        p.set_replicas(0);
        assert_eq!(
            (p.replicas(), p.plan_share(2)),
            (1, 2),
            "never below one replica"
        );
    }
}

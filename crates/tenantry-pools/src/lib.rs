//! Tenant connection pools.
//!
//! * One deadpool pool per tenant and worker thread ([`slots`]: a request takes a
//!   connection its own thread drives first), made on first use at its plan's size,
//!   connecting as the tenant's own role; what this replica may lend of it at once (its plan share
//!   among the live replicas, [`Pools::plan_share`], and its fair share of the server's
//!   budget) is a limit of its own that each [`Lease`] holds a permit of ([`lease`]);
//!   statements prepared once per connection. A connection that may carry session
//!   state ([`Conn::mark_dirty`]) is cleaned (`RESET ALL`, `DISCARD TEMP`, …) before its
//!   next use, so no session state passes from one request to the next.
//! * A **budget per server**: every connection of every tenant pool on a server holds a
//!   permit of that server's semaphore. When the budget is spent, an idle connection of
//!   the other pool on the server used least lately (a use count that ages with the
//!   server's traffic, then the last use) is closed to make room; if none is idle, the request waits up to the wait deadline and then fails as
//!   [`PoolError::Busy`] (the router answers 503 with Retry-After).
//! * Waiters get budget permits in **priority** order ([`Target::priority`], the plan's),
//!   a lower one deferring to higher ones for at most [`PoolConfig::priority_max_defer`],
//!   then served in arrival order ([`queue`]). A tenant's own waiters get its returned
//!   connections **by thread**: a waiter on the thread that drives the connection
//!   first, for at most [`PoolConfig::handover_max_defer`] ([`slots`]).
//! * The books balance on every path: each connection's permit, its `open` count and
//!   (if it was evicted) its `evicting` count come back exactly once, when the task
//!   driving it ends, however it ends; waiters uncount themselves when dropped.
//! * Idle connections are closed after `idle_timeout`, idle pools dropped after
//!   `pool_idle_timeout`: an idle tenant holds no connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use deadpool::managed;
use secrecy::{ExposeSecret, SecretString};

mod answer;
mod budget;
mod conn;
mod evict;
mod lease;
mod limit;
mod queue;
mod slots;
mod stream;
pub use budget::Budget;
pub use conn::{Conn, Manager};
pub use lease::{release, Lease};
use limit::Limit;
use slots::Slots;
use uuid::Uuid;

/// Timeouts and idle limits.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// How long a request waits for a connection before it is told to come back.
    pub wait_timeout: Duration,
    /// How long opening a connection to a tenant database may take.
    pub connect_timeout: Duration,
    /// How long a session waits for its server's next byte while it owes an answer;
    /// past it the server is taken as gone and the connection ends (see [`answer`]).
    /// Above the sessions' statement timeout, which a live server answers within.
    pub answer_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Pools unused for this long are dropped.
    pub pool_idle_timeout: Duration,
    /// Settings every tenant connection starts with (`-c name=value …`, libpq's
    /// `options`): start-up options outrank the role's and the database's own defaults,
    /// which a tenant can change, and `RESET` returns to them.
    pub session_options: String,
    /// Per tenant, one pool per thread slot ([`slots`]); 0: one per core, as the router
    /// runs a worker per core.
    pub thread_slots: usize,
    /// The longest a request waiting for a budget permit lets requests of a higher
    /// priority go first; past it, it is served in arrival order. Zero: arrival order.
    pub priority_max_defer: Duration,
    /// The longest a request waiting for one of its tenant's connections lets requests
    /// on the thread that drives a returned connection go first ([`slots`]); zero:
    /// arrival order. [`HANDOVER_MAX_DEFER`] in the router.
    pub handover_max_defer: Duration,
    /// The most sessions started at once on one server ([`Budget`]'s turns); 0: no
    /// limit.
    pub connects_at_once: usize,
}

impl Default for PoolConfig {
    /// Generous deadlines, idle connections kept a minute, no session options, one pool
    /// per core, arrival order on a server's budget, the router's handover bound.
    fn default() -> Self {
        Self {
            wait_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(60),
            session_options: String::new(),
            thread_slots: 0,
            priority_max_defer: Duration::ZERO,
            handover_max_defer: HANDOVER_MAX_DEFER,
            connects_at_once: 0,
        }
    }
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
    /// The plan's priority: when the server's budget is contended, waiters of a higher
    /// one get permits first (within [`PoolConfig::priority_max_defer`]).
    pub priority: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection within the wait deadline (the tenant's pool, or its server's budget, is full).
    #[error("no connection became free within the wait deadline")]
    Busy,
    /// The tenant's database did not accept a connection.
    #[error("the tenant database is unavailable: {0}")]
    Unavailable(String),
    /// The server refused the tenant's role or database itself (CONNECT revoked, the role
    /// unable to log in, its password not the one given, the database gone): what the
    /// control plane does to a tenant it suspends, deletes or moves, so the caller's
    /// route to it may be out of date.
    #[error("the tenant database refused the tenant: {0}")]
    Refused(String),
}

/// The SQLSTATEs of a server refusing a role or a database rather than being out of
/// reach: insufficient privilege (CONNECT revoked), invalid authorization (a role that
/// cannot log in), invalid password, and a database that does not exist.
const REFUSED: [&str; 4] = ["42501", "28000", "28P01", "3D000"];

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

/// A pooled connection; returned to its pool when dropped.
pub type Object = managed::Object<Manager>;

/// A pool used this recently counts as active: it keeps its share of its server's
/// budget. Short enough that a tenant whose traffic grows while the others went quiet
/// gets their share within a second; long enough to span a steady tenant's gaps.
const ACTIVE_MS: u64 = 1_000;
/// A pool at its size with a request waiting recomputes its share at most this often
/// (between the reaper's passes), so a grown share is taken when it is wanted.
const REFIT_MS: u64 = 50;

/// How long a request waiting for one of its tenant's connections lets requests on the
/// thread that drives a returned connection go first ([`slots`]), in the router. Above
/// a busy tenant's usual wait for its own connections (a millisecond or two when it
/// queues), so the threads keep to their own; short enough that a thread left with few
/// of the tenant's connections costs its requests little.
pub const HANDOVER_MAX_DEFER: Duration = Duration::from_millis(5);

/// A server's use counts are halved once its pools have served this many uses per
/// permit of its budget since the last halving.
const AGE_AFTER: u64 = 64;

/// What a reap pass counts of a server's pools.
#[derive(Default)]
struct Activity {
    active: usize,
    uses: u64,
}

struct Entry {
    /// When its size was last recomputed on demand (ms on the pools' clock).
    refitted: AtomicU64,
    pool: Arc<Slots>,
    generation: i64,
    server: i64,
    last_used: Arc<AtomicU64>,
    /// Requests lately: counted on every use, halved as the server serves more (a
    /// decaying count; see [`AGE_AFTER`]).
    uses: AtomicU64,
    /// The plan's pool size (the deadpool pool's, never resized): this replica's part
    /// of it is the most `size` may grow to.
    plan_size: usize,
    /// How many connections the pool may lend at once in this replica (see [`lease`]).
    size: Arc<Limit<usize>>,
}

impl Entry {
    /// Sets the pool's size in this replica; lowered, idle connections over it close now
    /// (those in use close as they come back).
    fn set_size(&self, size: usize) {
        if self.size.get() == size {
            return;
        }
        self.size.set(size);
        let status = self.pool.status();
        let lent = status.size.saturating_sub(status.available);
        let mut idle_kept = size.saturating_sub(lent);
        if status.available > idle_kept {
            self.pool.retain(|_, _| {
                let keep = idle_kept > 0;
                idle_kept = idle_kept.saturating_sub(1);
                keep
            });
        }
    }
}

struct Inner {
    config: PoolConfig,
    started: Instant,
    pools: DashMap<Uuid, Entry>,
    budgets: DashMap<i64, Arc<Budget>>,
    default_budget: usize,
    /// Live router replicas (at least 1), each holding pools of the same tenants.
    replicas: AtomicUsize,
    /// Woken when a budget is made at the default (see [`Pools::budget_wanted`]).
    budget_wanted: tokio::sync::Notify,
    /// Per server: the sum of its pools' use counts after their last halving.
    aged: std::sync::Mutex<HashMap<i64, u64>>,
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Used in the last [`ACTIVE_MS`]: counted when the budget is shared out.
    fn is_active(&self, entry: &Entry, now: u64) -> bool {
        now.saturating_sub(entry.last_used.load(Ordering::Relaxed)) < ACTIVE_MS
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
    /// Connections holding a permit whose session is still being opened.
    pub opening: usize,
    /// Requests waiting for a permit of this server's budget now.
    pub waiting: usize,
    /// Requests waiting for their turn to open a session on this server (before they
    /// look for a permit).
    pub waiting_to_open: usize,
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
                budget_wanted: tokio::sync::Notify::new(),
                aged: Default::default(),
            }),
        }
    }

    /// Sets how many connections this process may hold to `server`, across all tenants.
    /// Lowered, idle connections over it close at once (connections in use, as they come
    /// back): [`Pools::held`] falls to the new limit as soon as the requests in flight end.
    pub fn set_budget(&self, server: i64, limit: usize) {
        let budget = self.budget(server);
        budget.limit.set(limit);
        while budget.held() > limit && self.inner.evict_one_idle(server, Uuid::nil()) {}
    }

    /// This process's budget on `server`, if it has one yet.
    pub fn budget_limit(&self, server: i64) -> Option<usize> {
        self.inner.budgets.get(&server).map(|b| b.limit.get())
    }

    /// Resolves once a request needed a server this process has no budget for yet (its
    /// budget starts at the default until the next heartbeat sets it).
    pub async fn budget_wanted(&self) {
        self.inner.budget_wanted.notified().await
    }

    /// Connections to `server` that still hold a permit of its budget: open, or closing
    /// and not yet closed by the server.
    pub fn held(&self, server: i64) -> usize {
        self.inner
            .budgets
            .get(&server)
            .map_or(0, |b| b.open.load(Ordering::SeqCst))
    }

    /// Says how many router replicas live (each with its own `Pools`): a tenant's plan
    /// pool size is split among them ([`Pools::plan_share`]); pools made before take
    /// their new size at once.
    pub fn set_replicas(&self, live: usize) {
        let live = live.max(1);
        if self.inner.replicas.swap(live, Ordering::SeqCst) != live {
            // Every pool takes its new part now, not at the next reap: when a replica
            // joins, the connections it may open are given back at once.
            let now = self.inner.now_ms();
            let per_server = self.active_per_server(now);
            for entry in self.inner.pools.iter() {
                self.fit(&entry, &per_server, now);
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
            .or_insert_with(|| {
                self.inner.budget_wanted.notify_one();
                Arc::new(Budget::new(
                    self.inner.default_budget,
                    self.inner.config.connects_at_once,
                    self.inner.config.priority_max_defer,
                ))
            })
            .clone()
    }

    /// Asks the target's server to cancel what the session of `token` runs, on a
    /// connection of its own (as libpq's `PQcancel`), over TCP or the server's Unix
    /// socket as the target says. An error only means the statement runs on to its end or
    /// its timeout.
    pub async fn cancel(
        token: &tokio_postgres::CancelToken,
        target: &Target,
    ) -> std::io::Result<()> {
        let socket = stream::Socket::connect(&target.host, target.port).await?;
        token
            .cancel_query_raw(socket, tokio_postgres::NoTls)
            .await
            .map_err(std::io::Error::other)
    }

    /// A connection to the tenant's database, within the wait deadline.
    pub async fn get(&self, target: &Target) -> Result<Lease, PoolError> {
        let (pool, size) = self.pool_for(target)?;
        let permit = match size.try_take() {
            Some(p) => p,
            None => {
                let mine = pool.mine();
                let mut wait = size.wait(mine, Some(mine));
                // At its size: the share may have grown since the last reap (other
                // tenants went quiet); taken now rather than a second later.
                self.refit(target.tenant);
                let granted = wait.granted_within(self.inner.config.wait_timeout).await;
                drop(wait);
                granted.ok_or(PoolError::Busy)?
            }
        };
        let (slot, picked) = pool.pick();
        match picked.get().await {
            Ok(conn) => Ok(Lease::new(conn, permit, size, pool, slot)),
            Err(e) => {
                size.give_back(permit, Some(slot));
                Err(Self::pool_error(e))
            }
        }
    }

    fn pool_error(e: managed::PoolError<ConnError>) -> PoolError {
        match e {
            managed::PoolError::Backend(ConnError::Pg(e)) => {
                let why = tenantry_catalog::describe_pg_error(&e);
                match e.code() {
                    Some(code) if REFUSED.contains(&code.code()) => PoolError::Refused(why),
                    _ => PoolError::Unavailable(why),
                }
            }
            managed::PoolError::Backend(e @ (ConnError::Connect(_) | ConnError::Timeout)) => {
                PoolError::Unavailable(e.to_string())
            }
            managed::PoolError::Backend(ConnError::Budget)
            | managed::PoolError::Timeout(_)
            | managed::PoolError::Closed
            | managed::PoolError::NoRuntimeSpecified
            | managed::PoolError::PostCreateHook(_) => PoolError::Busy,
        }
    }

    /// The tenant's pool and its size in this replica.
    fn pool_for(&self, target: &Target) -> Result<(Arc<Slots>, Arc<Limit<usize>>), PoolError> {
        use dashmap::mapref::entry::Entry as Slot;
        let now = self.inner.now_ms();
        // Clone the pool out: no map guard is held across an await. A request that read
        // an older route uses the newer pool (never replaces it).
        if let Some(entry) = self.inner.pools.get(&target.tenant) {
            if entry.generation >= target.generation {
                entry.last_used.store(now, Ordering::Relaxed);
                entry.uses.fetch_add(1, Ordering::Relaxed);
                return Ok((entry.pool.clone(), entry.size.clone()));
            }
        }
        // Sized and built with no guard held (sizing reads the map).
        let size = Arc::new(Limit::new(
            self.fair_size(target.server, self.plan_share(target.max_size)),
            self.inner.config.handover_max_defer,
        ));
        let built = Arc::new(self.build(target)?);
        let entry = Entry {
            pool: built.clone(),
            size: size.clone(),
            generation: target.generation,
            server: target.server,
            last_used: Arc::new(AtomicU64::new(now)),
            refitted: AtomicU64::new(now),
            uses: AtomicU64::new(1),
            plan_size: target.max_size.max(1),
        };
        let (pool, replaced, inserted) = match self.inner.pools.entry(target.tenant) {
            // Another first request built one meanwhile: share it (ours was never used).
            Slot::Occupied(e) if e.get().generation >= target.generation => {
                e.get().last_used.store(now, Ordering::Relaxed);
                e.get().uses.fetch_add(1, Ordering::Relaxed);
                ((e.get().pool.clone(), e.get().size.clone()), None, false)
            }
            Slot::Occupied(mut e) => ((built, size), Some(e.insert(entry)), true),
            Slot::Vacant(e) => {
                e.insert(entry);
                ((built, size), None, true)
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

    /// Recomputes a pool's size now (at most every [`REFIT_MS`]), if that grows it.
    fn refit(&self, tenant: Uuid) {
        let now = self.inner.now_ms();
        let Some((server, plan_size, size)) = self.inner.pools.get(&tenant).and_then(|e| {
            let last = e.refitted.load(Ordering::Relaxed);
            (now.saturating_sub(last) >= REFIT_MS
                && e.refitted
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
            .then(|| (e.server, e.plan_size, e.size.clone()))
        }) else {
            return;
        };
        // Sized with no guard held (sizing reads the map).
        let fair = self.fair_size(server, self.plan_share(plan_size));
        if fair > size.get() {
            size.set(fair);
        }
    }

    /// A new pool became active on `server`: pools above the new even share give back
    /// their spare connections now rather than at the next reap, so the newcomer finds
    /// room without taking it from a pool that is at its share.
    fn shrink_to_fair(&self, server: i64) {
        let fair = self.fair_size(server, usize::MAX);
        for entry in self.inner.pools.iter() {
            if entry.server == server && entry.size.get() > fair {
                entry.set_size(fair);
            }
        }
    }

    /// The tenant's deadpool pools, one per thread slot ([`slots`]), each at its plan's
    /// full size: what this replica may use of them together is the entry's `size`.
    fn build(&self, target: &Target) -> Result<Slots, PoolError> {
        let c = &self.inner.config;
        let mut pg = tokio_postgres::Config::new();
        pg.dbname(&target.database)
            .user(&target.user)
            .password(target.password.expose_secret())
            .application_name("tenantry-router");
        if !c.session_options.is_empty() {
            pg.options(&c.session_options);
        }
        let manager = || Manager {
            config: pg.clone(),
            host: target.host.clone(),
            port: target.port,
            connect_timeout: c.connect_timeout,
            answer_timeout: c.answer_timeout,
            budget: self.budget(target.server),
            pools: Arc::downgrade(&self.inner),
            tenant: target.tenant,
            server: target.server,
            wait: c.wait_timeout,
            priority: target.priority,
        };
        let pools = (0..slots::count(c.thread_slots))
            .map(|_| {
                managed::Pool::builder(manager())
                    .max_size(target.max_size.max(1))
                    .runtime(deadpool::Runtime::Tokio1)
                    .wait_timeout(Some(c.wait_timeout))
                    .create_timeout(Some(c.wait_timeout + c.connect_timeout))
                    .recycle_timeout(Some(Duration::from_secs(2)))
                    .build()
                    .map_err(|e| PoolError::Unavailable(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Slots::new(pools))
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
        let aging = self.servers_to_age(&per_server);
        for entry in self.inner.pools.iter() {
            entry.pool.retain(|_, m| m.last_used() < c.idle_timeout);
            if aging.contains(&entry.server) {
                let _ = entry
                    .uses
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u / 2));
            }
            self.fit(&entry, &per_server, now);
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

    /// Per server: its active pools and the sum of its pools' use counts, counted before
    /// a pass that resizes them: no second pass over the map while iterating it.
    fn active_per_server(&self, now: u64) -> HashMap<i64, Activity> {
        let mut per_server: HashMap<i64, Activity> = HashMap::new();
        for entry in self.inner.pools.iter() {
            let seen = per_server.entry(entry.server).or_default();
            seen.uses += entry.uses.load(Ordering::Relaxed);
            if self.inner.is_active(&entry, now) {
                seen.active += 1;
            }
        }
        per_server
    }

    /// The servers whose use counts are halved in this pass: those that served
    /// [`AGE_AFTER`] uses per permit of their budget since their last halving. Counts
    /// age with the traffic, not with time (TinyLFU's rule): a quiet spell keeps what
    /// was learnt of which tenants come back.
    fn servers_to_age(&self, per_server: &HashMap<i64, Activity>) -> Vec<i64> {
        let mut aged = self.inner.aged.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (&server, seen) in per_server {
            let limit = self.budget(server).limit.get().max(1) as u64;
            let since = seen
                .uses
                .saturating_sub(aged.get(&server).copied().unwrap_or(0));
            if since >= AGE_AFTER * limit {
                aged.insert(server, seen.uses / 2);
                out.push(server);
            } else {
                // Pools dropped since lower the sum: start from what is left.
                let floor = aged.entry(server).or_default();
                *floor = (*floor).min(seen.uses);
            }
        }
        out
    }

    /// Keeps a pool to this replica's part of its plan and its fair share of its
    /// server's budget. A pool not used lately (not active) is only lowered (the plan
    /// share or the budget may have dropped): it grows again when it is next wanted
    /// ([`Pools::refit`]), to the share of the pools active then. Raised here, every
    /// quiet pool would be sized for the share of the few busy ones (the whole budget
    /// after a lull), and a burst over many of them would open connections past their
    /// share, each closing another tenant's.
    fn fit(&self, entry: &Entry, per_server: &HashMap<i64, Activity>, now: u64) {
        let budget = self.budget(entry.server).limit.get();
        let active = per_server.get(&entry.server).map_or(0, |s| s.active);
        let size = self
            .plan_share(entry.plan_size)
            .min(budget / active.max(1))
            .max(1);
        if size > entry.size.get() && !self.inner.is_active(entry, now) {
            return;
        }
        entry.set_size(size);
    }

    /// A pool's size: its plan's (this replica's part of it), but no more than an even
    /// share of its server's budget among the server's active pools (used in the last [`ACTIVE_MS`]; at least one). When the budget is short, a busy
    /// tenant waits for its own connections instead of taking other tenants' (which
    /// would make every request open a connection).
    fn fair_size(&self, server: i64, plan_size: usize) -> usize {
        let budget = self.budget(server).limit.get();
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

    /// Requests waiting for one of the tenant's connections in this process.
    pub fn waiting(&self, tenant: Uuid) -> usize {
        self.inner
            .pools
            .get(&tenant)
            .map_or(0, |e| e.size.waiting.load(Ordering::SeqCst))
    }

    /// Budget, open connections and pools, per server.
    pub fn usage(&self) -> Vec<ServerUsage> {
        let mut out: Vec<ServerUsage> = self
            .inner
            .budgets
            .iter()
            .map(|b| ServerUsage {
                server: *b.key(),
                budget: b.limit.get(),
                open: b.open.load(Ordering::SeqCst),
                opened: b.opened.load(Ordering::Relaxed),
                evicted: b.evicted.load(Ordering::Relaxed),
                evicting: b.evicting.load(Ordering::SeqCst),
                opening: b.opening.load(Ordering::SeqCst),
                waiting: b.limit.waiting.load(Ordering::SeqCst),
                waiting_to_open: b.waiting_for_turns(),
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
        Pools::new(PoolConfig::default(), 10)
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

//! Tenant slug → route (server, database, credentials, plan, state, generation), from the
//! catalog, cached.
//!
//! * Concurrent first requests for one tenant load it once (a per-slug load lock).
//! * The catalog's `tenantry_tenants` NOTIFY drops a changed tenant at once; a TTL is the
//!   fallback; after the listener reconnects, everything cached is re-read before it is
//!   used again (notifications may have been missed).
//! * **Stale if error.** A route past its TTL, or from before the listener reconnected, is
//!   re-read from the catalog; if the catalog cannot answer, the route is served as it was
//!   (for up to [`STALE_FOR`] past its TTL), so a catalog failover or outage costs the
//!   tenants a router knows nothing. A route a notification dropped is never served stale.
//! * A load that raced with an invalidation is served but not cached, so a stale value
//!   is never written back.
//! * Unknown tenants are remembered briefly (a negative cache).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tenantry_catalog::{Catalog, CatalogError, Sealed, Sealer};
use tenantry_pools::Target;
use tenantry_types::{Plan, TenantState};
use uuid::Uuid;

/// Where a tenant's requests go, and what its plan allows.
#[derive(Clone)]
pub struct Route {
    pub tenant: Uuid,
    pub slug: String,
    /// When this incarnation of the slug was created, in Unix seconds (rounded down).
    pub created_at_s: i64,
    pub state: TenantState,
    pub schema_version: i32,
    /// Where its connections go, as its role, and its plan's pool size and priority:
    /// built once per load, so a request clones nothing to ask for a connection.
    pub target: Target,
    pub plan: Plan,
    /// Whether a move is under way that the router must know of.
    pub moving: Moving,
}

/// A move of the tenant, as far as its requests are concerned (`tenants.moving`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moving {
    No,
    /// An offline move is copying the tenant: its writes are refused, reads go on.
    Offline,
    /// An online move is cutting over: the source takes nothing, the target not yet;
    /// requests wait for the flip (`router.cutover_hold_ms` at most).
    Cutover,
}

/// A live tenant's route by slug: the tenant's columns, then its plan's from
/// [`ROUTE_PLAN_AT`].
static ROUTE_QUERY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT t.id, t.slug, t.state, t.generation, t.schema_version, t.database_name,
                t.role_name, t.credentials, t.key_version, s.id, s.host, s.port,
                floor(extract(epoch FROM t.created_at))::int8, t.moving, {}
         FROM tenants t JOIN servers s ON s.id = t.server_id JOIN plans p ON p.name = t.plan
         WHERE t.slug = $1 AND t.state <> 'deleted'",
        tenantry_catalog::PLAN_COLUMNS
    )
});

/// The column of [`ROUTE_QUERY`] its plan's columns start at.
const ROUTE_PLAN_AT: usize = 14;

/// A cached answer: the route, or `None` for a slug no live tenant has; when it was
/// loaded, and under which listener session (`Resolver::session`).
#[derive(Clone)]
struct Entry {
    route: Option<Arc<Route>>,
    loaded: Instant,
    session: u64,
}

/// How long past its TTL a route is kept, to be served only while the catalog cannot
/// be reached.
pub const STALE_FOR: Duration = Duration::from_secs(600);

/// How often entries past any use are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How long a route's load may take before it counts as failed.
const LOAD_TIMEOUT: Duration = Duration::from_secs(2);

/// After a failed load, requests with a route to serve take it without loading for
/// this long.
const FAILED_LATELY: Duration = Duration::from_secs(1);

/// At most this many slugs are cached, and at most this many loads wait at once: both
/// maps are keyed by what tokens name, so both are bounded. (The routes live in a
/// sharded map, not an LRU: a hit is a shard's read lock and a clone, with no
/// bookkeeping that a read might have to pay for; lifetimes are checked on read and
/// swept every [`SWEEP_EVERY`].)
const CACHE_CAP: u64 = 200_000;
const LOADING_CAP: u64 = 10_000;

/// Counters for `/metrics`.
#[derive(Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Routes served past their freshness because the catalog could not be read.
    pub stale: AtomicU64,
}

pub struct Resolver {
    catalog: Catalog,
    sealer: Sealer,
    ttl: Duration,
    negative_ttl: Duration,
    cache: dashmap::DashMap<String, Entry>,
    /// One load at a time per slug; an entry left by a cancelled load expires.
    loading: moka::sync::Cache<String, Arc<tokio::sync::Mutex<()>>>,
    /// Grows with every invalidation; a load that saw it change is not cached.
    epoch: AtomicU64,
    /// Grows each time the listener listens again: entries of an earlier session are
    /// re-read before use.
    session: AtomicU64,
    /// When a load last failed, in ms since `started` (0: never).
    failed_at_ms: AtomicU64,
    started: Instant,
    pub stats: CacheStats,
}

impl Resolver {
    pub fn new(catalog: Catalog, sealer: Sealer, ttl: Duration, negative_ttl: Duration) -> Self {
        Self {
            catalog,
            sealer,
            ttl,
            negative_ttl,
            cache: dashmap::DashMap::new(),
            loading: moka::sync::Cache::builder()
                .max_capacity(LOADING_CAP)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            epoch: AtomicU64::new(0),
            session: AtomicU64::new(0),
            failed_at_ms: AtomicU64::new(0),
            started: Instant::now(),
            stats: CacheStats::default(),
        }
    }

    /// The cached entry and whether it is fresh; `None` past any use. No map guard
    /// outlives this call.
    fn cached(&self, slug: &str) -> Option<(Entry, bool)> {
        let entry = self.cache.get(slug)?.clone();
        let age = entry.loaded.elapsed();
        if !self.usable(&entry, age) {
            return None;
        }
        let fresh = entry.session == self.session.load(Ordering::Relaxed)
            && (entry.route.is_none() || age < self.ttl);
        Some((entry, fresh))
    }

    /// Whether an entry of this age may still be used: a route within its TTL and
    /// [`STALE_FOR`] after it, an unknown slug within `negative_ttl`.
    fn usable(&self, entry: &Entry, age: Duration) -> bool {
        if entry.route.is_some() {
            age < self.ttl + STALE_FOR
        } else {
            age < self.negative_ttl
        }
    }

    /// Drops the entries past any use; when the map is still full, an arbitrary tenth of
    /// it too (they are loaded again on their next request).
    fn sweep(&self) {
        self.cache.retain(|_, e| self.usable(e, e.loaded.elapsed()));
        if self.cache.len() as u64 >= CACHE_CAP {
            let victims: Vec<String> = self
                .cache
                .iter()
                .take(CACHE_CAP as usize / 10)
                .map(|e| e.key().clone())
                .collect();
            for slug in victims {
                self.cache.remove(&slug);
            }
        }
    }

    /// Sweeps the cache every [`SWEEP_EVERY`] until the task is aborted.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let resolver = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                resolver.sweep();
            }
        })
    }

    /// The tenant's route; `None` when no live tenant has that slug. A route that is no
    /// longer fresh is re-read, and served as it was if the catalog cannot answer.
    pub async fn resolve(&self, slug: &str) -> Result<Option<Arc<Route>>, CatalogError> {
        if let Some((hit, true)) = self.cached(slug) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit.route);
        }
        let lock = self
            .loading
            .get_with(slug.to_owned(), || Arc::new(tokio::sync::Mutex::new(())));
        let _loading = lock.lock().await;
        let stale = match self.cached(slug) {
            Some((hit, true)) => {
                // Another request loaded it while we waited.
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(hit.route);
            }
            Some((old, false)) => old.route,
            None => None,
        };
        // A load failed a moment ago: the catalog is out of reach, and a request that has
        // a route to serve does not wait for another load to fail.
        if stale.is_some() && self.failed_lately() {
            self.stats.stale.fetch_add(1, Ordering::Relaxed);
            return Ok(stale);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let epoch = self.epoch.load(Ordering::SeqCst);
        let session = self.session.load(Ordering::SeqCst);
        let loaded = Instant::now();
        let result = match tokio::time::timeout(LOAD_TIMEOUT, self.load(slug)).await {
            Ok(result) => result,
            Err(_) => Err(CatalogError::Unreachable(format!(
                "no answer within {} ms",
                LOAD_TIMEOUT.as_millis()
            ))),
        };
        let route = match result {
            Ok(route) => route.map(Arc::new),
            Err(e) => {
                self.failed_at_ms
                    .store(self.since_start_ms().max(1), Ordering::Relaxed);
                // Served stale only if no notification dropped the slug meanwhile.
                return match stale {
                    Some(route) if self.epoch.load(Ordering::SeqCst) == epoch => {
                        self.stats.stale.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "catalog unreadable; serving the route as cached");
                        Ok(Some(route))
                    }
                    _ => Err(e),
                };
            }
        };
        if self.cache.len() as u64 >= CACHE_CAP {
            self.sweep();
        }
        self.cache.insert(
            slug.to_owned(),
            Entry {
                route: route.clone(),
                loaded,
                session,
            },
        );
        // Inserted first, checked after: an invalidation at any point after this load
        // began either sees the entry (and removes it) or is seen here.
        if self.epoch.load(Ordering::SeqCst) != epoch {
            self.cache.remove(slug);
        }
        Ok(route)
    }

    fn since_start_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether a load failed within the last [`FAILED_LATELY`].
    fn failed_lately(&self) -> bool {
        let at = self.failed_at_ms.load(Ordering::Relaxed);
        at != 0 && self.since_start_ms().saturating_sub(at) < FAILED_LATELY.as_millis() as u64
    }

    pub fn invalidate(&self, slug: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.remove(slug);
    }

    /// Everything cached is re-read before its next use (served as it was only if the
    /// catalog cannot answer then).
    /// (A load under way keeps its earlier session: it is cached, but read again before
    /// its next use.)
    pub fn revalidate_all(&self) {
        self.session.fetch_add(1, Ordering::SeqCst);
    }

    async fn load(&self, slug: &str) -> Result<Option<Route>, CatalogError> {
        let client = self.catalog.client().await?;
        let statement = client.prepare_cached(&ROUTE_QUERY).await?;
        let Some(r) = client.query_opt(&statement, &[&slug]).await? else {
            return Ok(None);
        };
        let tenant: Uuid = r.get(0);
        let state: TenantState = match r.get::<_, String>(2).parse() {
            Ok(s) => s,
            Err(_) => return Ok(None),
        };
        let password = match r.get::<_, Option<Vec<u8>>>(7) {
            Some(bytes) => {
                let sealed = Sealed {
                    bytes,
                    key_version: r.get::<_, Option<i16>>(8).unwrap_or(0),
                };
                let plain = self.sealer.open(&sealed, &format!("tenant:{tenant}"))?;
                SecretString::from(String::from_utf8_lossy(&plain).into_owned())
            }
            None => SecretString::from(String::new()),
        };
        let plan = tenantry_catalog::plan_from_row(&r, ROUTE_PLAN_AT);
        Ok(Some(Route {
            tenant,
            slug: r.get(1),
            created_at_s: r.get(12),
            state,
            schema_version: r.get(4),
            target: Target {
                tenant,
                generation: r.get(3),
                server: r.get(9),
                host: r.get(10),
                port: r.get::<_, i32>(11) as u16,
                database: r.get(5),
                user: r.get(6),
                password,
                max_size: plan.pool_size as usize,
                priority: plan.priority,
            },
            plan,
            moving: match r.get::<_, Option<&str>>(13) {
                Some("offline") => Moving::Offline,
                Some("cutover") => Moving::Cutover,
                _ => Moving::No,
            },
        }))
    }

    /// Listens for tenant changes on the catalog until the task is aborted: each
    /// notification drops that slug; a lost connection is made again with backoff (reset
    /// once listening again), and everything cached is re-read once it listens again
    /// (until then, cached routes keep serving). (A changed tenant's pool is replaced when its
    /// next request brings a route of a newer generation.)
    /// The same connection listens on [`crate::replicas::BUDGET_CHANNEL`] and wakes
    /// `budget_called` for each call.
    pub fn spawn_listener(
        self: &Arc<Self>,
        url: SecretString,
        budget_called: Arc<tokio::sync::Notify>,
    ) -> tokio::task::JoinHandle<()> {
        let resolver = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut listened = false;
                let e = listen(&resolver, &url, &budget_called, &mut listened).await;
                tracing::warn!(error = %e, "tenant change listener lost the catalog; reconnecting");
                if listened {
                    backoff = Duration::from_millis(100);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }
}

/// The longest pause between two attempts to listen again: after a catalog failover,
/// tenant changes reach this router again at most this long after the new primary
/// takes connections (and everything cached is re-read then).
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Listens until the connection ends; returns why. `listened` is set once LISTEN took.
async fn listen(
    resolver: &Resolver,
    url: &SecretString,
    budget_called: &tokio::sync::Notify,
    listened: &mut bool,
) -> String {
    use secrecy::ExposeSecret;
    let Ok(mut config) = url.expose_secret().parse::<tokio_postgres::Config>() else {
        return "bad catalog URL".to_owned();
    };
    config.application_name("tenantry-router-listen");
    config.connect_timeout(Duration::from_secs(5));
    let (client, mut connection) = match config.connect(tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    let budget = n.channel() == crate::replicas::BUDGET_CHANNEL;
                    if tx.send((budget, n.payload().to_owned())).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    });
    let sql = format!(
        "LISTEN tenantry_tenants; LISTEN {}",
        crate::replicas::BUDGET_CHANNEL
    );
    if let Err(e) = client.batch_execute(&sql).await {
        driver.abort();
        return e.to_string();
    }
    *listened = true;
    // Anything may have changed while we were not listening.
    resolver.revalidate_all();
    // And the budgets may have been re-split.
    budget_called.notify_one();
    while let Some((budget, payload)) = rx.recv().await {
        if budget {
            budget_called.notify_one();
        } else {
            resolver.invalidate(&payload);
        }
    }
    driver.abort();
    "the catalog connection closed".into()
}

//! Tenant slug → route (server, database, credentials, plan, state, generation), from the
//! catalog, cached.
//!
//! * Concurrent first requests for one tenant load it once (a per-slug load lock).
//! * The catalog's `tenantry_tenants` NOTIFY drops a changed tenant at once; a TTL is the
//!   fallback; after the listener reconnects, everything is dropped (notifications may
//!   have been missed).
//! * A load that raced with an invalidation is served but not cached, so a stale value
//!   is never written back.
//! * Unknown tenants are remembered briefly (a negative cache).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tenantry_catalog::{Catalog, CatalogError, Sealed, Sealer};
use tenantry_types::{Agent, Plan, TenantState};
use uuid::Uuid;

/// Where a tenant's requests go, and what its plan allows.
#[derive(Clone)]
pub struct Route {
    pub tenant: Uuid,
    pub slug: String,
    /// When this incarnation of the slug was created, in Unix seconds (rounded down).
    pub created_at_s: i64,
    pub state: TenantState,
    pub generation: i64,
    pub schema_version: i32,
    pub server: i64,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub role: String,
    pub password: SecretString,
    pub plan: Plan,
    /// A move is copying the tenant offline, or cutting it over: its writes are
    /// refused, reads go on.
    pub moving: bool,
}

/// A cached answer: the route, or `None` for a slug no live tenant has.
type Cached = Option<Arc<Route>>;

/// Positive answers live `ttl`, negative ones `negative_ttl`.
struct Lifetimes {
    ttl: Duration,
    negative_ttl: Duration,
}

impl moka::Expiry<String, Cached> for Lifetimes {
    fn expire_after_create(&self, _: &String, value: &Cached, _: Instant) -> Option<Duration> {
        Some(if value.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        })
    }
}

/// At most this many slugs are cached, and at most this many loads wait at once: both
/// maps are keyed by what tokens name, so both are bounded.
const CACHE_CAP: u64 = 200_000;
const LOADING_CAP: u64 = 10_000;

/// Counters for `/metrics`.
#[derive(Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

pub struct Resolver {
    catalog: Catalog,
    sealer: Sealer,
    cache: moka::sync::Cache<String, Cached>,
    /// One load at a time per slug; an entry left by a cancelled load expires.
    loading: moka::sync::Cache<String, Arc<tokio::sync::Mutex<()>>>,
    /// Grows with every invalidation; a load that saw it change is not cached.
    epoch: AtomicU64,
    pub stats: CacheStats,
}

impl Resolver {
    pub fn new(catalog: Catalog, sealer: Sealer, ttl: Duration, negative_ttl: Duration) -> Self {
        Self {
            catalog,
            sealer,
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAP)
                .expire_after(Lifetimes { ttl, negative_ttl })
                .build(),
            loading: moka::sync::Cache::builder()
                .max_capacity(LOADING_CAP)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            epoch: AtomicU64::new(0),
            stats: CacheStats::default(),
        }
    }

    /// The cached answer, if fresh. No map guard outlives this call.
    pub fn cached(&self, slug: &str) -> Option<Option<Arc<Route>>> {
        self.cache.get(slug)
    }

    /// The tenant's route; `None` when no live tenant has that slug.
    pub async fn resolve(&self, slug: &str) -> Result<Option<Arc<Route>>, CatalogError> {
        if let Some(hit) = self.cached(slug) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let lock = self
            .loading
            .get_with(slug.to_owned(), || Arc::new(tokio::sync::Mutex::new(())));
        let _loading = lock.lock().await;
        if let Some(hit) = self.cached(slug) {
            // Another request loaded it while we waited.
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let epoch = self.epoch.load(Ordering::SeqCst);
        let route = self.load(slug).await?.map(Arc::new);
        if self.epoch.load(Ordering::SeqCst) == epoch {
            self.cache.insert(slug.to_owned(), route.clone());
        }
        Ok(route)
    }

    pub fn invalidate(&self, slug: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate(slug);
    }

    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
    }

    async fn load(&self, slug: &str) -> Result<Option<Route>, CatalogError> {
        let client = self.catalog.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT t.id, t.slug, t.state, t.generation, t.schema_version, t.database_name,
                        t.role_name, t.credentials, t.key_version, s.id, s.host, s.port,
                        p.name, p.tasks_per_month, p.requests_per_minute, p.agents, p.api_access,
                        p.pool_size, floor(extract(epoch FROM t.created_at))::int8,
                        p.price_cents, p.priority, t.moving IS NOT NULL
                 FROM tenants t JOIN servers s ON s.id = t.server_id JOIN plans p ON p.name = t.plan
                 WHERE t.slug = $1 AND t.state <> 'deleted'",
            )
            .await?;
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
        Ok(Some(Route {
            tenant,
            slug: r.get(1),
            created_at_s: r.get(18),
            state,
            generation: r.get(3),
            schema_version: r.get(4),
            database: r.get(5),
            role: r.get(6),
            server: r.get(9),
            host: r.get(10),
            port: r.get::<_, i32>(11) as u16,
            password,
            plan: Plan {
                name: r.get(12),
                tasks_per_month: r.get::<_, Option<i32>>(13).map(|n| n as u32),
                requests_per_minute: r.get::<_, i32>(14) as u32,
                agents: r
                    .get::<_, Vec<String>>(15)
                    .iter()
                    .filter_map(|a| a.parse::<Agent>().ok())
                    .collect(),
                api_access: r.get(16),
                pool_size: r.get::<_, i32>(17) as u32,
                price_cents: r.get::<_, i32>(19) as u32,
                priority: r.get::<_, i16>(20) as u8,
            },
            moving: r.get(21),
        }))
    }

    /// Listens for tenant changes on the catalog until the task is aborted: each
    /// notification drops that slug; a lost connection is made again with backoff (reset
    /// once listening again), and everything cached is dropped once it listens again
    /// (until then, cached routes keep serving within their TTL). (A changed tenant's pool is replaced when its
    /// next request brings a route of a newer generation.)
    pub fn spawn_listener(self: &Arc<Self>, url: SecretString) -> tokio::task::JoinHandle<()> {
        let resolver = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut listened = false;
                let e = listen(&resolver, &url, &mut listened).await;
                tracing::warn!(error = %e, "tenant change listener lost the catalog; reconnecting");
                if listened {
                    backoff = Duration::from_millis(100);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }
}

/// Listens until the connection ends; returns why. `listened` is set once LISTEN took.
async fn listen(resolver: &Resolver, url: &SecretString, listened: &mut bool) -> String {
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
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    });
    if let Err(e) = client.batch_execute("LISTEN tenantry_tenants").await {
        driver.abort();
        return e.to_string();
    }
    *listened = true;
    // Anything may have changed while we were not listening.
    resolver.invalidate_all();
    while let Some(slug) = rx.recv().await {
        resolver.invalidate(&slug);
    }
    driver.abort();
    "the catalog connection closed".into()
}

//! The catalog database: every server, plan, tenant, lifecycle step and migration run.
//!
//! * [`migrate`] applies `migrations/` (embedded at build time) under a session
//!   advisory lock, so any number of processes may run it at once.
//! * [`Catalog`] is a small connection pool over the catalog with the queries the
//!   rest of Tenantry needs.
//! * [`Sealer`] seals stored database credentials (AES-256-GCM, bound to their row).

mod crypto;
mod migrate;

pub use crypto::{SealError, Sealed, Sealer};
pub use migrate::{describe_pg_error, latest_version, migrate, MigrateReport};

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::{ExposeSecret, SecretString};
use tenantry_types::{Ident, Plan};

/// What went wrong with the catalog. Messages are for operators; the HTTP edge maps
/// these to stable codes and never shows the text.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the catalog URL is not valid: {0}")]
    BadUrl(String),
    #[error("cannot reach the catalog database: {0}")]
    Unreachable(String),
    #[error("catalog query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("catalog migration failed: {0}")]
    Migrate(String),
    #[error("the catalog is at schema version {have}, this build needs {want}: run `tenantry catalog migrate`")]
    NotMigrated { have: i32, want: i32 },
    #[error(transparent)]
    Seal(#[from] SealError),
}

impl From<deadpool_postgres::PoolError> for CatalogError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => {
                Self::Unreachable(migrate::describe_pg_error(&e))
            }
            other => Self::Unreachable(other.to_string()),
        }
    }
}

/// Parses a catalog (or server) URL without ever echoing it: it holds a password.
pub fn parse_url(url: &SecretString) -> Result<tokio_postgres::Config, CatalogError> {
    tokio_postgres::Config::from_str(url.expose_secret()).map_err(|_| {
        CatalogError::BadUrl("expected postgres://user:password@host:port/database".into())
    })
}

/// A pool of connections to the catalog database.
#[derive(Clone)]
pub struct Catalog {
    pool: Pool,
    config: tokio_postgres::Config,
    connect_timeout: Duration,
}

impl Catalog {
    /// A pool over `url`; connections are made on first use.
    pub fn new(
        url: &SecretString,
        max_size: usize,
        connect_timeout: Duration,
    ) -> Result<Self, CatalogError> {
        let mut config = parse_url(url)?;
        config.connect_timeout(connect_timeout);
        config.application_name("tenantry");
        Self::from_config(config, max_size, connect_timeout)
    }

    fn from_config(
        config: tokio_postgres::Config,
        max_size: usize,
        connect_timeout: Duration,
    ) -> Result<Self, CatalogError> {
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(connect_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .build()
            .map_err(|e| CatalogError::Unreachable(e.to_string()))?;
        Ok(Self {
            pool,
            config,
            connect_timeout,
        })
    }

    /// Another pool over the same catalog, for connections held a long time (locks),
    /// so that they never starve the queries that the holders themselves need.
    pub fn separate_pool(&self, max_size: usize) -> Result<Self, CatalogError> {
        Self::from_config(self.config.clone(), max_size, self.connect_timeout)
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, CatalogError> {
        Ok(self.pool.get().await?)
    }

    /// Ready means: reachable, and migrated to the version this build carries.
    pub async fn check_ready(&self) -> Result<(), CatalogError> {
        let client = self.client().await?;
        let have: i32 = client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM refinery_schema_history",
                &[],
            )
            .await
            .map(|row| row.get(0))
            .or_else(|e| match e.code() {
                Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(0),
                _ => Err(e),
            })?;
        let want = latest_version();
        if have < want {
            return Err(CatalogError::NotMigrated { have, want });
        }
        Ok(())
    }

    /// Writes the plan table (built-in plans with configured overrides) into the catalog.
    pub async fn sync_plans(&self, plans: &[Plan]) -> Result<(), CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for plan in plans {
            let agents: Vec<&str> = plan.agents.iter().map(|a| a.as_str()).collect();
            tx.execute(
                "INSERT INTO plans (name, tasks_per_month, requests_per_minute, agents, api_access, pool_size, price_cents, priority)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (name) DO UPDATE SET
                    tasks_per_month = excluded.tasks_per_month,
                    requests_per_minute = excluded.requests_per_minute,
                    agents = excluded.agents,
                    api_access = excluded.api_access,
                    pool_size = excluded.pool_size,
                    price_cents = excluded.price_cents,
                    priority = excluded.priority,
                    updated_at = now()
                 WHERE (plans.tasks_per_month, plans.requests_per_minute, plans.agents, plans.api_access, plans.pool_size, plans.price_cents, plans.priority)
                   IS DISTINCT FROM (excluded.tasks_per_month, excluded.requests_per_minute, excluded.agents, excluded.api_access, excluded.pool_size, excluded.price_cents, excluded.priority)",
                &[
                    &plan.name,
                    &plan.tasks_per_month.map(|n| n as i32),
                    &(plan.requests_per_minute as i32),
                    &agents,
                    &plan.api_access,
                    &(plan.pool_size as i32),
                    &(plan.price_cents as i32),
                    &i16::from(plan.priority),
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The plans as the catalog holds them.
    pub async fn plans(&self) -> Result<Vec<Plan>, CatalogError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {PLAN_COLUMNS} FROM plans p ORDER BY p.name"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| plan_from_row(r, 0)).collect())
    }
}

/// The columns a plan is read from, in the order [`plan_from_row`] takes them.
pub const PLAN_COLUMNS: &str =
    "p.name, p.tasks_per_month, p.requests_per_minute, p.agents, p.api_access, p.pool_size, p.price_cents, p.priority";

/// A plan from [`PLAN_COLUMNS`], selected from `plans p`, starting at column `first`.
pub fn plan_from_row(r: &tokio_postgres::Row, first: usize) -> Plan {
    Plan {
        name: r.get(first),
        tasks_per_month: r.get::<_, Option<i32>>(first + 1).map(|n| n as u32),
        requests_per_minute: r.get::<_, i32>(first + 2) as u32,
        agents: r
            .get::<_, Vec<String>>(first + 3)
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect(),
        api_access: r.get(first + 4),
        pool_size: r.get::<_, i32>(first + 5) as u32,
        price_cents: r.get::<_, i32>(first + 6) as u32,
        priority: r.get::<_, i16>(first + 7) as u8,
    }
}

/// Takes CONNECT from PUBLIC on `name` (the catalog database, when it shares a server
/// with tenant databases), so tenant roles cannot reach it.
pub async fn revoke_public_connect(
    admin_url: &SecretString,
    name: &Ident,
) -> Result<(), CatalogError> {
    let client = migrate::connect_once(admin_url).await?;
    client
        .batch_execute(&format!(
            "REVOKE CONNECT, TEMPORARY ON DATABASE {name} FROM PUBLIC"
        ))
        .await?;
    Ok(())
}

/// Creates `name` on the server behind `admin_url` unless it exists; true when created.
pub async fn ensure_database(admin_url: &SecretString, name: &Ident) -> Result<bool, CatalogError> {
    let client = migrate::connect_once(admin_url).await?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&name.as_str()],
        )
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    match client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
    {
        Ok(()) => Ok(true),
        // Someone else created it between our look and our create.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// A server as registered in the catalog, its admin password sealed.
#[derive(Debug, Clone)]
pub struct NewServer {
    pub name: tenantry_types::ServerName,
    pub host: String,
    pub port: u16,
    pub admin_user: String,
    pub admin_database: String,
    pub admin_password: SecretString,
    pub capacity: u32,
    pub max_connections: u32,
}

impl Catalog {
    /// Registers `server`, or updates its address and password when the name exists
    /// (what `tenantry dev` does each start: the embedded cluster's port may change).
    /// Placement settings (state, capacity) of an existing server are left alone.
    pub async fn upsert_server(
        &self,
        server: &NewServer,
        sealer: &Sealer,
    ) -> Result<i64, CatalogError> {
        let sealed = sealer.seal(
            server.admin_password.expose_secret().as_bytes(),
            &server_binding(&server.name),
        );
        let client = self.client().await?;
        let row = client
            .query_one(
                "INSERT INTO servers (name, host, port, admin_user, admin_database, admin_password,
                                      key_version, capacity, max_connections)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (name) DO UPDATE SET
                    host = excluded.host, port = excluded.port, admin_user = excluded.admin_user,
                    admin_database = excluded.admin_database,
                    admin_password = excluded.admin_password, key_version = excluded.key_version,
                    updated_at = now()
                 RETURNING id",
                &[
                    &server.name.as_str(),
                    &server.host,
                    &i32::from(server.port),
                    &server.admin_user,
                    &server.admin_database,
                    &sealed.bytes,
                    &sealed.key_version,
                    &(server.capacity as i32),
                    &(server.max_connections as i32),
                ],
            )
            .await?;
        Ok(row.get(0))
    }
}

/// The associated data that binds a server's sealed password to its row.
pub fn server_binding(name: &tenantry_types::ServerName) -> String {
    format!("server:{name}")
}

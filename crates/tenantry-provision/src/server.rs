//! Reaching registered servers: their rows (password opened), admin pools, one-off
//! connections, and the per-tenant lock.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use secrecy::{ExposeSecret, SecretString};
use tenantry_catalog::{server_binding, Catalog, Sealed, Sealer};
use tenantry_types::ServerName;
use uuid::Uuid;

use crate::error::describe;
use crate::ProvisionError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A registered server with its admin password opened.
#[derive(Clone)]
pub(crate) struct ServerRow {
    pub id: i64,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub admin_user: String,
    pub admin_database: String,
    pub password: SecretString,
}

pub(crate) const SERVER_COLUMNS: &str =
    "id, name, host, port, admin_user, admin_database, admin_password, key_version";

impl ServerRow {
    pub fn from_row(row: &tokio_postgres::Row, sealer: &Sealer) -> Result<Self, ProvisionError> {
        let name: String = row.get(1);
        let binding = ServerName::parse(&name)
            .map(|n| server_binding(&n))
            .map_err(|e| ProvisionError::BadInput(e.to_string()))?;
        let sealed = Sealed {
            bytes: row.get::<_, Option<Vec<u8>>>(6).unwrap_or_default(),
            key_version: row.get::<_, Option<i16>>(7).unwrap_or(0),
        };
        let password = sealer
            .open(&sealed, &binding)
            .map_err(tenantry_catalog::CatalogError::from)?;
        Ok(Self {
            id: row.get(0),
            host: row.get(2),
            port: row.get::<_, i32>(3) as u16,
            admin_user: row.get(4),
            admin_database: row.get(5),
            password: SecretString::from(String::from_utf8_lossy(&password).into_owned()),
            name,
        })
    }

    pub fn config(&self, database: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.admin_user)
            .password(self.password.expose_secret())
            .dbname(database)
            .application_name("tenantry-provision")
            .connect_timeout(CONNECT_TIMEOUT);
        c
    }

    /// A one-off admin connection to `database` on this server.
    pub async fn connect(&self, database: &str) -> Result<tokio_postgres::Client, ProvisionError> {
        connect(&self.config(database), &self.name).await
    }

    /// A one-off admin connection to a tenant's database with `search_path = pg_catalog`:
    /// nothing the tenant defined (a `public.format`, say) is found by a name in the
    /// admin's statements, which therefore qualify the tenant's own objects.
    pub async fn connect_tenant_db(
        &self,
        database: &str,
    ) -> Result<tokio_postgres::Client, ProvisionError> {
        let mut config = self.config(database);
        config.options("-c search_path=pg_catalog");
        connect(&config, &self.name).await
    }
}

pub(crate) async fn connect(
    config: &tokio_postgres::Config,
    server: &str,
) -> Result<tokio_postgres::Client, ProvisionError> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
        ProvisionError::ServerUnavailable {
            server: server.to_owned(),
            reason: describe(&e),
        }
    })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Small pools of admin connections to each server's admin database, made on first use.
#[derive(Clone, Default)]
pub(crate) struct AdminPools(Arc<DashMap<i64, (String, Pool)>>);

impl AdminPools {
    pub async fn get(&self, server: &ServerRow) -> Result<Object, ProvisionError> {
        // The pool is keyed by id; a changed address or password makes a new one.
        let fingerprint = format!(
            "{}:{}:{}:{}:{}",
            server.host,
            server.port,
            server.admin_user,
            server.admin_database,
            server.password.expose_secret()
        );
        let existing = self
            .0
            .get(&server.id)
            .filter(|entry| entry.0 == fingerprint)
            .map(|entry| entry.1.clone());
        let pool = match existing {
            Some(pool) => pool,
            None => {
                let manager = Manager::from_config(
                    server.config(&server.admin_database),
                    tokio_postgres::NoTls,
                    ManagerConfig {
                        recycling_method: RecyclingMethod::Fast,
                    },
                );
                let pool = Pool::builder(manager)
                    .max_size(4)
                    .runtime(Runtime::Tokio1)
                    .wait_timeout(Some(Duration::from_secs(30)))
                    .create_timeout(Some(CONNECT_TIMEOUT))
                    .recycle_timeout(Some(Duration::from_secs(2)))
                    .build()
                    .map_err(|e| ProvisionError::ServerUnavailable {
                        server: server.name.clone(),
                        reason: e.to_string(),
                    })?;
                self.0.insert(server.id, (fingerprint, pool.clone()));
                pool
            }
        };
        pool.get()
            .await
            .map_err(|e| ProvisionError::ServerUnavailable {
                server: server.name.clone(),
                reason: match e {
                    deadpool_postgres::PoolError::Backend(e) => describe(&e),
                    other => other.to_string(),
                },
            })
    }

    pub fn forget(&self, server_id: i64) {
        self.0.remove(&server_id);
    }
}

/// Holds a tenant's session advisory lock on a connection of the provisioner's lock
/// pool (kept apart from the catalog pool, so holders can always get the connections
/// their steps need). Dropping it releases the lock and returns the connection; when
/// that cannot be confirmed the connection is closed instead, which releases the lock
/// with the session. A crash closes it too.
pub(crate) struct TenantLock {
    client: Option<Object>,
    key: i64,
}

/// The whole id, folded to 64 bits: two tenants share a key with odds of 2^-64.
fn lock_key(tenant: Uuid) -> i64 {
    let (high, low) = tenant.as_u64_pair();
    (high ^ low.rotate_left(29)) as i64
}

const LOCK_WAIT: Duration = Duration::from_secs(60);

/// A connection that may hold a lock not yet handed to a [`TenantLock`]: if dropped
/// (an error, or the caller's future cancelled mid-query), it is closed, never pooled.
struct Pending(Option<Object>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
    }
}

impl TenantLock {
    /// Waits for the lock (up to a minute), polling with `pg_try_advisory_lock`, so no
    /// request is ever left waiting on the server.
    pub async fn acquire(locks: &Catalog, tenant: Uuid) -> Result<Self, ProvisionError> {
        let key = lock_key(tenant);
        let mut pending = Pending(Some(locks.client().await?));
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut pause = Duration::from_millis(5);
        loop {
            let got = match &pending.0 {
                Some(client) => client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                    .await?
                    .get::<_, bool>(0),
                None => false,
            };
            if got {
                return Ok(Self {
                    client: pending.0.take(),
                    key,
                });
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(ProvisionError::Conflict(format!(
                    "tenant {tenant} has been busy with another operation for a minute; try again later"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Takes the lock only if it is free.
    pub async fn try_acquire(
        locks: &Catalog,
        tenant: Uuid,
    ) -> Result<Option<Self>, ProvisionError> {
        let key = lock_key(tenant);
        let mut pending = Pending(Some(locks.client().await?));
        let got = match &pending.0 {
            Some(client) => client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await?
                .get::<_, bool>(0),
            None => false,
        };
        Ok(got.then(|| Self {
            client: pending.0.take(),
            key,
        }))
    }
}

impl Drop for TenantLock {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let key = self.key;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let released = client
                        .query_one("SELECT pg_advisory_unlock($1)", &[&key])
                        .await
                        .is_ok_and(|row| row.get::<_, bool>(0));
                    if !released {
                        drop(Object::take(client));
                    }
                });
            }
            Err(_) => drop(Object::take(client)),
        }
    }
}

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

/// Holds a tenant's session advisory lock on a pooled catalog connection. Dropping it
/// releases the lock and returns the connection to the pool; when that cannot be
/// confirmed, the connection is closed instead, which releases the lock with the
/// session. A crash closes it too.
pub(crate) struct TenantLock {
    client: Option<Object>,
    key: (i32, i32),
}

fn lock_key(tenant: Uuid) -> (i32, i32) {
    let bytes = tenant.as_bytes();
    // The low 4 bytes of a UUIDv7 are random; with a fixed class, collisions only serialise.
    let objid = i32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    (0x7465_6e74, objid)
}

const LOCK_WAIT: Duration = Duration::from_secs(60);

impl TenantLock {
    /// Waits for the lock (up to a minute).
    pub async fn acquire(catalog: &Catalog, tenant: Uuid) -> Result<Self, ProvisionError> {
        let client = catalog.client().await?;
        let key = lock_key(tenant);
        let locked = tokio::time::timeout(
            LOCK_WAIT,
            client.execute("SELECT pg_advisory_lock($1, $2)", &[&key.0, &key.1]),
        )
        .await;
        match locked {
            Ok(Ok(_)) => Ok(Self {
                client: Some(client),
                key,
            }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                // The request may still be queued on that session: close it.
                drop(Object::take(client));
                Err(ProvisionError::Conflict(format!(
                    "tenant {tenant} has been busy with another operation for a minute; try again later"
                )))
            }
        }
    }

    /// Takes the lock only if it is free.
    pub async fn try_acquire(
        catalog: &Catalog,
        tenant: Uuid,
    ) -> Result<Option<Self>, ProvisionError> {
        let client = catalog.client().await?;
        let key = lock_key(tenant);
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&key.0, &key.1])
            .await?
            .get(0);
        Ok(got.then_some(Self {
            client: Some(client),
            key,
        }))
    }
}

impl Drop for TenantLock {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let (class, obj) = self.key;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let released = client
                        .query_one("SELECT pg_advisory_unlock($1, $2)", &[&class, &obj])
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

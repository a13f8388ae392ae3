//! What the migration runner needs from the provisioner: admin connections to tenant
//! databases, and template databases brought to the templates' new files.

use std::sync::Arc;

use dashmap::DashMap;
use tenantry_migrate::runner::Connector;

use crate::server::{connect, ServerRow, TenantLock};
use crate::{ProvisionError, Provisioner};

/// Opens the runner's dedicated admin connections; each server's row (its password
/// opened) is read once.
pub struct FleetConnector {
    provisioner: Provisioner,
    servers: DashMap<i64, ServerRow>,
}

/// A tenant's lifecycle lock, held by the runner while it migrates the tenant: a
/// migration and a create, suspend, delete or reconcile never touch one tenant at once,
/// and no session in a tenant database can take it.
pub struct MigrationLock {
    _lock: TenantLock,
}

impl Connector for FleetConnector {
    type Lock = MigrationLock;

    async fn try_lock(&self, tenant: uuid::Uuid) -> Result<Option<MigrationLock>, String> {
        TenantLock::try_acquire(&self.provisioner.locks, tenant)
            .await
            .map(|lock| lock.map(|l| MigrationLock { _lock: l }))
            .map_err(|e| e.to_string())
    }

    async fn connect(
        &self,
        server: i64,
        database: &str,
        options: &str,
    ) -> Result<tokio_postgres::Client, String> {
        let row = self.server(server).await?;
        let mut config = row.config(database);
        config.application_name("tenantry-migrate").options(options);
        connect(&config, &row.name).await.map_err(|e| e.to_string())
    }

    async fn join_tenant_role(&self, server: i64, tenant: uuid::Uuid) -> Result<(), String> {
        let row = self.server(server).await?;
        let admin = self
            .provisioner
            .admin
            .get(&row)
            .await
            .map_err(|e| e.to_string())?;
        crate::templates::rejoin_role(&admin, &tenantry_types::TenantId(tenant).role_name())
            .await
            .map_err(|e| tenantry_catalog::describe_pg_error(&e))
    }

    async fn connect_as_tenant(
        &self,
        server: i64,
        tenant: uuid::Uuid,
        database: &str,
        options: &str,
    ) -> Result<tokio_postgres::Client, String> {
        let row = self.server(server).await?;
        let password = self
            .provisioner
            .tenant_password_by_id(tenant)
            .await
            .map_err(|e| e.to_string())?;
        let mut config = row.config(database);
        config
            .user(tenantry_types::TenantId(tenant).role_name().as_str())
            .password(secrecy::ExposeSecret::expose_secret(&password))
            .application_name("tenantry-migrate")
            .options(options);
        connect(&config, &row.name).await.map_err(|e| e.to_string())
    }
}

impl FleetConnector {
    async fn server(&self, server: i64) -> Result<ServerRow, String> {
        if let Some(row) = self.servers.get(&server) {
            return Ok(row.clone());
        }
        let row = self
            .provisioner
            .server_by_id(server)
            .await
            .map_err(|e| e.to_string())?;
        self.servers.insert(server, row.clone());
        Ok(row)
    }
}

impl Provisioner {
    /// A connector for [`tenantry_migrate::runner::run`].
    pub fn fleet_connector(&self) -> Arc<FleetConnector> {
        Arc::new(FleetConnector {
            provisioner: self.clone(),
            servers: DashMap::new(),
        })
    }

    /// Builds, on every server, the template databases of `templates` at their current
    /// files (a no-op where they exist), so tenants created from now on are born at the
    /// latest version. A server that cannot be reached is passed over (its tenants fail
    /// in the run, and its template is built at its next create); a template whose files
    /// fail to apply to an empty database is an error: the run must not start.
    pub async fn refresh_templates(&self, templates: &[String]) -> Result<(), ProvisionError> {
        let servers = self.all_servers().await?;
        for name in templates {
            let template = self.load_template(name)?;
            for server in &servers {
                match self.ensure_template(server, &template).await {
                    Ok(_) => self.drop_stale_templates(server, &template).await,
                    Err(e @ ProvisionError::ServerUnavailable { .. }) => {
                        tracing::warn!(server = %server.name, error = %e, "template not refreshed");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

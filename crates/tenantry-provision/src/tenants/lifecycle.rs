//! Suspend, resume, delete and purge.

use tenantry_types::TenantState;
use uuid::Uuid;

use super::role::ensure_role;
use super::{database_exists, invalid_state, TenantInfo, TenantRow};
use crate::server::{ServerRow, TenantLock};
use crate::{ProvisionError, Provisioner};

impl Provisioner {
    /// Makes the tenant unreachable: the catalog first (routers drop it at once through
    /// the NOTIFY), then CONNECT revoked and its sessions ended.
    pub async fn suspend_tenant(&self, slug: &str) -> Result<TenantInfo, ProvisionError> {
        let tenant = self.live_tenant(slug).await?;
        let _lock = TenantLock::acquire(&self.locks, tenant.info.id).await?;
        let tenant = self.tenant_by_id(tenant.info.id).await?;
        match tenant.state {
            TenantState::Suspended => {}
            TenantState::Ready => {
                self.set_state(
                    tenant.info.id,
                    TenantState::Suspended,
                    &[TenantState::Ready],
                )
                .await?
            }
            other => return Err(invalid_state(slug, other, "ready")),
        }
        self.lifecycle_step(&tenant, "suspend", "revoke", |server, t| async move {
            self.revoke_connect(&server, &t).await
        })
        .await?;
        Ok(self.tenant_by_id(tenant.info.id).await?.info)
    }

    /// Reachable again: CONNECT granted first, then the catalog says `ready`.
    pub async fn resume_tenant(&self, slug: &str) -> Result<TenantInfo, ProvisionError> {
        let tenant = self.live_tenant(slug).await?;
        let _lock = TenantLock::acquire(&self.locks, tenant.info.id).await?;
        let tenant = self.tenant_by_id(tenant.info.id).await?;
        match tenant.state {
            TenantState::Ready => return Ok(tenant.info),
            TenantState::Suspended => {}
            other => return Err(invalid_state(slug, other, "suspended")),
        }
        let password = self.ensure_credentials(&tenant).await?;
        let limit = self.role_connection_limit(&tenant.info.plan).await?;
        self.lifecycle_step(&tenant, "resume", "grant", |server, t| async move {
            let admin = self.admin.get(&server).await?;
            // The role as the control plane made it: whatever the tenant changed from its
            // own session (its password, its settings) is put back.
            ensure_role(&admin, &t.role, &password, limit, &self.opts)
                .await
                .map_err(|e| ProvisionError::server(&server.name, "restore the tenant role", &e))?;
            admin
                .batch_execute(&format!(
                    "GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}",
                    t.database, t.role
                ))
                .await
                .map_err(|e| ProvisionError::server(&server.name, "grant CONNECT", &e))
        })
        .await?;
        self.set_state(
            tenant.info.id,
            TenantState::Ready,
            &[TenantState::Suspended],
        )
        .await?;
        Ok(self.tenant_by_id(tenant.info.id).await?.info)
    }

    pub(crate) async fn revoke_connect(
        &self,
        server: &ServerRow,
        t: &TenantRow,
    ) -> Result<(), ProvisionError> {
        let admin = self.admin.get(server).await?;
        if !database_exists(&admin, &t.database)
            .await
            .map_err(|e| ProvisionError::server(&server.name, "look up the tenant database", &e))?
        {
            return Ok(());
        }
        admin
            .batch_execute(&format!(
                "REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM {role}, PUBLIC",
                db = t.database,
                role = t.role
            ))
            .await
            .map_err(|e| ProvisionError::server(&server.name, "revoke CONNECT", &e))?;
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&t.database.as_str()],
            )
            .await
            .map_err(|e| ProvisionError::server(&server.name, "end the tenant's sessions", &e))?;
        Ok(())
    }

    /// Soft delete: unreachable at once, data kept for the retention period
    /// (`provision.retention_hours`); `purge` drops it now.
    pub async fn delete_tenant(
        &self,
        slug: &str,
        purge: bool,
    ) -> Result<TenantInfo, ProvisionError> {
        let tenant = self.live_tenant(slug).await?;
        let id = tenant.info.id;
        {
            let _lock = TenantLock::acquire(&self.locks, id).await?;
            let tenant = self.tenant_by_id(id).await?;
            self.finish_delete(&tenant).await?;
        }
        if purge {
            self.purge_tenant(id).await?;
        }
        Ok(self.tenant_by_id(id).await?.info)
    }

    /// `ready|suspended|failed|deleting → deleted`; idempotent. Call under the tenant's lock.
    pub(crate) async fn finish_delete(&self, tenant: &TenantRow) -> Result<(), ProvisionError> {
        let id = tenant.info.id;
        match tenant.state {
            TenantState::Deleted => return Ok(()),
            TenantState::Ready
            | TenantState::Suspended
            | TenantState::Failed
            | TenantState::Deleting => {}
            other => {
                return Err(invalid_state(
                    &tenant.info.slug,
                    other,
                    "ready, suspended or failed",
                ))
            }
        }
        self.set_state(
            id,
            TenantState::Deleting,
            &[
                TenantState::Ready,
                TenantState::Suspended,
                TenantState::Failed,
                TenantState::Deleting,
            ],
        )
        .await?;
        self.lifecycle_step(tenant, "delete", "revoke", |server, t| async move {
            self.revoke_connect(&server, &t).await
        })
        .await?;
        let retention_s = self.opts.retention.as_secs_f64();
        let client = self.catalog.client().await?;
        client
            .execute(
                "UPDATE tenants SET state = 'deleted', deleted_at = now(),
                        purge_after = now() + make_interval(secs => $2),
                        generation = generation + 1, updated_at = now()
                 WHERE id = $1 AND state = 'deleting'",
                &[&id, &retention_s],
            )
            .await?;
        Ok(())
    }

    /// Drops a deleted tenant's database and role and destroys its credentials; the
    /// catalog row stays as a tombstone. Idempotent.
    pub(crate) async fn purge_tenant(&self, id: Uuid) -> Result<(), ProvisionError> {
        let _lock = TenantLock::acquire(&self.locks, id).await?;
        let tenant = self.tenant_by_id(id).await?;
        self.purge_locked(&tenant).await
    }

    /// [`Provisioner::purge_tenant`] for a caller that holds the tenant's lock.
    pub(crate) async fn purge_locked(&self, tenant: &TenantRow) -> Result<(), ProvisionError> {
        let id = tenant.info.id;
        if tenant.state != TenantState::Deleted {
            return Err(invalid_state(&tenant.info.slug, tenant.state, "deleted"));
        }
        if tenant.purged {
            return Ok(());
        }
        self.lifecycle_step(tenant, "purge", "drop", |server, t| async move {
            self.drop_database_and_role(&server, &t).await
        })
        .await?;
        let client = self.catalog.client().await?;
        client
            .execute(
                "UPDATE tenants SET credentials = NULL, key_version = NULL, purged_at = now(),
                        generation = generation + 1, updated_at = now()
                 WHERE id = $1",
                &[&id],
            )
            .await?;
        tracing::info!(tenant = %tenant.info.slug, db = %tenant.database.as_str(), "tenant purged");
        Ok(())
    }
}

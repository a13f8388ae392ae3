//! Plan changes. The catalog first, in one transaction (the plan, a new generation —
//! whose NOTIFY makes every router load the tenant's route again, with the new plan's
//! quota, rate, agents, SQL access and pool size — and a `plan_changes` row), then the
//! tenant role's connection limit. A crash between the two is finished by reconcile.

use tenantry_types::TenantState;
use uuid::Uuid;

use super::role::set_connection_limit;
use super::{invalid_state, TenantInfo, TenantRow};
use crate::server::{ServerRow, TenantLock};
use crate::{ProvisionError, Provisioner};

/// The ledger's name for a plan change (its steps: `catalog`, `role`).
pub(crate) const PLAN_CHANGE: &str = "set_plan";

/// Adds a tenant's `plan_changes` row (`from` is `None` at creation), in the caller's
/// transaction; `changed_at` is that transaction's time.
pub(super) async fn record_change(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: Uuid,
    from: Option<&str>,
    to: &str,
    changed_by: Option<&str>,
) -> Result<(), ProvisionError> {
    tx.execute(
        "INSERT INTO plan_changes (tenant_id, from_plan, to_plan, changed_by)
         VALUES ($1, $2, $3, $4)",
        &[&tenant, &from, &to, &changed_by],
    )
    .await?;
    Ok(())
}

impl Provisioner {
    /// Moves a ready or suspended tenant to `plan`, recording who asked (`changed_by`).
    /// The same plan again changes nothing and records nothing; an unknown plan is bad
    /// input naming the plans, checked before anything is written.
    pub async fn set_plan(
        &self,
        slug: &str,
        plan: &str,
        changed_by: &str,
    ) -> Result<TenantInfo, ProvisionError> {
        self.known_plan(plan).await?;
        let tenant = self.live_tenant(slug).await?;
        let id = tenant.info.id;
        let _lock = TenantLock::acquire(&self.locks, id).await?;
        let tenant = self.tenant_by_id(id).await?;
        if !matches!(tenant.state, TenantState::Ready | TenantState::Suspended) {
            return Err(invalid_state(slug, tenant.state, "ready or suspended"));
        }
        if tenant.info.plan == plan {
            return Ok(tenant.info);
        }
        let server_id = tenant
            .server_id
            .ok_or_else(|| ProvisionError::Conflict(format!("tenant {slug} has no server")))?;
        self.recorded(
            &tenant,
            server_id,
            PLAN_CHANGE,
            "catalog",
            self.change_plan_in_catalog(&tenant, plan, changed_by),
        )
        .await?;
        let server = self.server_by_id(server_id).await?;
        self.recorded(
            &tenant,
            server_id,
            PLAN_CHANGE,
            "role",
            self.apply_plan_limit(&server, &tenant, plan),
        )
        .await?;
        tracing::info!(tenant = %slug, from = %tenant.info.plan, to = %plan, by = %changed_by, "plan changed");
        Ok(self.tenant_by_id(id).await?.info)
    }

    /// The plan, a new generation and the `plan_changes` row, in one transaction.
    async fn change_plan_in_catalog(
        &self,
        tenant: &TenantRow,
        plan: &str,
        changed_by: &str,
    ) -> Result<(), ProvisionError> {
        let id = tenant.info.id;
        let mut client = self.catalog.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                "SELECT plan, state FROM tenants WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?;
        let from: String = row.get(0);
        let state: TenantState = row.get::<_, String>(1).parse().map_err(|e| {
            ProvisionError::BadInput(format!("catalog holds a bad tenant row: {e}"))
        })?;
        if !matches!(state, TenantState::Ready | TenantState::Suspended) {
            return Err(invalid_state(
                &tenant.info.slug,
                state,
                "ready or suspended",
            ));
        }
        if from == plan {
            return Ok(());
        }
        tx.execute(
            "UPDATE tenants SET plan = $2, generation = generation + 1, updated_at = now()
             WHERE id = $1",
            &[&id, &plan],
        )
        .await?;
        record_change(&tx, id, Some(&from), plan, Some(changed_by)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The tenant role's connection limit set to `plan`'s (the admin joins the role
    /// again first if the tenant took that away). Running it again is harmless.
    pub(crate) async fn apply_plan_limit(
        &self,
        server: &ServerRow,
        tenant: &TenantRow,
        plan: &str,
    ) -> Result<(), ProvisionError> {
        let limit = self.role_connection_limit(plan).await?;
        self.rejoin(server, tenant).await?;
        let admin = self.admin.get(server).await?;
        set_connection_limit(&admin, &tenant.role, limit)
            .await
            .map_err(|e| {
                ProvisionError::server(&server.name, "set the tenant role's connection limit", &e)
            })
    }
}

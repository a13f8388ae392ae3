//! The tenant lifecycle: what a tenant is in the catalog, and the steps shared by its
//! operations (`create.rs`; `lifecycle.rs`: suspend, resume, delete, purge; `export.rs`;
//! `role.rs`: the tenant's role and credentials; `move_*.rs`: moving it to another server).

mod create;
mod export;
mod lifecycle;
mod move_cleanup;
mod move_offline;
mod move_online;
mod move_plan;
mod plan;
mod role;

pub use move_plan::{MoveInfo, MoveTenant, StartedMove};
pub(crate) use plan::PLAN_CHANGE;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tenantry_catalog::Sealed;
use tenantry_types::{Ident, TenantState};
use uuid::Uuid;

use tracing::Instrument;

use crate::fault;
use crate::ledger;
use crate::server::ServerRow;
use crate::{ProvisionError, Provisioner};

/// `tenant create`'s input.
#[derive(Debug, Clone, Default)]
pub struct CreateTenant {
    pub slug: String,
    pub plan: Option<String>,
    pub template: Option<String>,
    pub server: Option<String>,
}

/// A tenant as `tenant show|list` and the admin API print it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TenantInfo {
    pub id: Uuid,
    pub slug: String,
    pub plan: String,
    pub template: String,
    pub server: Option<String>,
    pub database: String,
    pub state: String,
    pub schema_version: i32,
    pub created_at: DateTime<Utc>,
    pub generation: i64,
    /// Since when the tenant has its plan (its last `plan_changes` row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_since: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purge_after: Option<DateTime<Utc>>,
}

const TENANT_SELECT: &str =
    "SELECT t.id, t.slug, t.plan, t.template, s.name, t.database_name, t.state,
        t.schema_version, t.created_at, t.generation, t.failed_step, t.last_error, t.deleted_at,
        t.purge_after, t.server_id, t.role_name, t.credentials, t.key_version, t.purged_at,
        (SELECT max(c.changed_at) FROM plan_changes c WHERE c.tenant_id = t.id)
    FROM tenants t LEFT JOIN servers s ON s.id = t.server_id";

/// A tenant row with what the lifecycle needs beyond [`TenantInfo`].
#[derive(Clone)]
pub(crate) struct TenantRow {
    pub info: TenantInfo,
    pub state: TenantState,
    pub server_id: Option<i64>,
    pub database: Ident,
    pub role: Ident,
    pub credentials: Option<Sealed>,
    pub purged: bool,
}

impl TenantRow {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, ProvisionError> {
        let bad = |e: &dyn std::fmt::Display| {
            ProvisionError::BadInput(format!("catalog holds a bad tenant row: {e}"))
        };
        let state_text: String = r.get(6);
        let credentials = r.get::<_, Option<Vec<u8>>>(16).map(|bytes| Sealed {
            bytes,
            key_version: r.get::<_, Option<i16>>(17).unwrap_or(0),
        });
        Ok(Self {
            state: state_text.parse().map_err(|e| bad(&e))?,
            server_id: r.get(14),
            database: Ident::new(r.get::<_, String>(5)).map_err(|e| bad(&e))?,
            role: Ident::new(r.get::<_, String>(15)).map_err(|e| bad(&e))?,
            credentials,
            purged: r.get::<_, Option<DateTime<Utc>>>(18).is_some(),
            info: TenantInfo {
                id: r.get(0),
                slug: r.get(1),
                plan: r.get(2),
                template: r.get(3),
                server: r.get(4),
                database: r.get(5),
                state: state_text,
                schema_version: r.get(7),
                created_at: r.get(8),
                generation: r.get(9),
                plan_since: r.get(19),
                failed_step: r.get(10),
                last_error: r.get(11),
                deleted_at: r.get(12),
                purge_after: r.get(13),
            },
        })
    }
}

fn invalid_state(slug: &str, state: TenantState, wanted: &str) -> ProvisionError {
    ProvisionError::Conflict(format!(
        "tenant {slug} is {state}; it must be {wanted} for that"
    ))
}

impl Provisioner {
    // ----- reading -----

    /// The live tenant (not deleted) with `slug`.
    pub async fn show_tenant(&self, slug: &str) -> Result<TenantInfo, ProvisionError> {
        Ok(self.live_tenant(slug).await?.info)
    }

    /// Tenants, newest first, optionally in one state. Deleted tenants show only when asked for.
    pub async fn list_tenants(
        &self,
        state: Option<TenantState>,
    ) -> Result<Vec<TenantInfo>, ProvisionError> {
        let client = self.catalog.client().await?;
        let state = state.map(|s| s.as_str());
        let rows = client
            .query(
                &format!(
                    "{TENANT_SELECT} WHERE ($1::text IS NULL AND t.state <> 'deleted') OR t.state = $1
                     ORDER BY t.created_at DESC, t.id DESC"
                ),
                &[&state],
            )
            .await?;
        rows.iter()
            .map(|r| TenantRow::from_row(r).map(|t| t.info))
            .collect()
    }

    pub(crate) async fn live_tenant(&self, slug: &str) -> Result<TenantRow, ProvisionError> {
        self.find_live(slug).await?.ok_or_else(|| {
            ProvisionError::NotFound(format!(
                "tenant {slug:?} does not exist; `tenantry tenant list` shows the tenants"
            ))
        })
    }

    async fn find_live(&self, slug: &str) -> Result<Option<TenantRow>, ProvisionError> {
        let client = self.catalog.client().await?;
        let row = client
            .query_opt(
                &format!("{TENANT_SELECT} WHERE t.slug = $1 AND t.state <> 'deleted'"),
                &[&slug],
            )
            .await?;
        row.as_ref().map(TenantRow::from_row).transpose()
    }

    pub(crate) async fn tenant_by_id(&self, id: Uuid) -> Result<TenantRow, ProvisionError> {
        let client = self.catalog.client().await?;
        let row = client
            .query_opt(&format!("{TENANT_SELECT} WHERE t.id = $1"), &[&id])
            .await?
            .ok_or_else(|| {
                ProvisionError::NotFound(format!("tenant {id} is not in the catalog"))
            })?;
        TenantRow::from_row(&row)
    }

    /// Runs one lifecycle step: a `started` ledger row before it acts and `done` or
    /// `failed` after, fault points before and after (test builds), in a span carrying
    /// the tenant and its database.
    async fn recorded<T>(
        &self,
        tenant: &TenantRow,
        server_id: i64,
        kind: &'static str,
        name: &'static str,
        act: impl std::future::Future<Output = Result<T, ProvisionError>>,
    ) -> Result<T, ProvisionError> {
        let entry = ledger::start(
            &self.catalog,
            Some(tenant.info.id),
            Some(server_id),
            kind,
            name,
            json!({"slug": tenant.info.slug}),
        )
        .await?;
        let span = tracing::info_span!(
            "provision",
            tenant = %tenant.info.slug,
            db = %tenant.database.as_str(),
            op = kind,
            step = name
        );
        let result: Result<T, ProvisionError> = async {
            fault::point(&format!("{kind}.{name}.before"))?;
            let value = act.await?;
            fault::point(&format!("{kind}.{name}.after"))?;
            Ok(value)
        }
        .instrument(span)
        .await;
        match &result {
            Ok(_) => entry.done(&self.catalog).await?,
            Err(e) => entry.failed(&self.catalog, &e.to_string()).await,
        }
        result
    }

    pub(crate) async fn drop_database_and_role(
        &self,
        server: &ServerRow,
        tenant: &TenantRow,
    ) -> Result<(), ProvisionError> {
        let admin = self.admin.get(server).await?;
        // Separate statements: a multi-statement batch is one transaction, and DROP
        // DATABASE refuses to run inside one.
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                tenant.database
            ))
            .await
            .map_err(|e| ProvisionError::server(&server.name, "drop the tenant database", &e))?;
        admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {}", tenant.role))
            .await
            .map_err(|e| ProvisionError::server(&server.name, "drop the tenant role", &e))
    }

    async fn set_state(
        &self,
        id: Uuid,
        to: TenantState,
        from: &[TenantState],
    ) -> Result<(), ProvisionError> {
        let client = self.catalog.client().await?;
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let n = client
            .execute(
                "UPDATE tenants SET state = $2, generation = generation + 1, updated_at = now()
                 WHERE id = $1 AND state = ANY($3)",
                &[&id, &to.as_str(), &from],
            )
            .await?;
        if n == 0 {
            let t = self.tenant_by_id(id).await?;
            if t.state != to {
                return Err(invalid_state(&t.info.slug, t.state, &from.join(" or ")));
            }
        }
        Ok(())
    }

    /// A ledger-recorded step of a lifecycle operation other than create.
    async fn lifecycle_step<F, Fut>(
        &self,
        tenant: &TenantRow,
        kind: &'static str,
        name: &'static str,
        act: F,
    ) -> Result<(), ProvisionError>
    where
        F: FnOnce(ServerRow, TenantRow) -> Fut,
        Fut: std::future::Future<Output = Result<(), ProvisionError>>,
    {
        let Some(server_id) = tenant.server_id else {
            return Ok(());
        };
        let server = self.server_by_id(server_id).await?;
        self.recorded(tenant, server_id, kind, name, async {
            self.rejoin(&server, tenant).await?;
            act(server.clone(), tenant.clone()).await
        })
        .await
    }

    /// The admin a member of the tenant's role again, if the tenant took that away.
    pub(crate) async fn rejoin(
        &self,
        server: &ServerRow,
        tenant: &TenantRow,
    ) -> Result<(), ProvisionError> {
        let admin = self.admin.get(server).await?;
        crate::templates::rejoin_role(&admin, &tenant.role)
            .await
            .map_err(|e| ProvisionError::server(&server.name, "join the tenant role", &e))
    }
}

pub(crate) async fn database_exists(
    admin: &tokio_postgres::Client,
    db: &Ident,
) -> Result<bool, tokio_postgres::Error> {
    Ok(admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&db.as_str()],
        )
        .await?
        .is_some())
}

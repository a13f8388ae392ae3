//! The tenant lifecycle: create, suspend, resume, delete, purge, export.

use std::path::Path;

use chrono::{DateTime, Utc};
use rand::distributions::{Alphanumeric, DistString};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::json;
use tenantry_catalog::Sealed;
use tenantry_types::{sql_literal, Ident, Slug, TenantId, TenantState};
use uuid::Uuid;

use tracing::Instrument;

use crate::fault;
use crate::ledger;
use crate::server::{ServerRow, TenantLock};
use crate::servers::HOLDS_DATABASE;
use crate::templates::TEMPLATE_OWNER;
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
        t.purge_after, t.server_id, t.role_name, t.credentials, t.key_version, t.purged_at
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
                failed_step: r.get(10),
                last_error: r.get(11),
                deleted_at: r.get(12),
                purge_after: r.get(13),
            },
        })
    }
}

/// The binding of a tenant's sealed credentials to its row.
fn binding(id: Uuid) -> String {
    format!("tenant:{id}")
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

    // ----- create -----

    /// Creates many tenants, `creators` at a time (bulk onboarding, tests, benchmarks):
    /// `requests` in order, each as [`Provisioner::create_tenant`]. Stops at the first error.
    pub async fn create_many(
        &self,
        requests: Vec<CreateTenant>,
        creators: usize,
    ) -> Result<(), ProvisionError> {
        let queue = std::sync::Arc::new(std::sync::Mutex::new(requests.into_iter()));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..creators.max(1) {
            let (p, queue) = (self.clone(), queue.clone());
            tasks.spawn(async move {
                loop {
                    let next = queue
                        .lock()
                        .map_err(|_| ProvisionError::Internal("a creator panicked".into()))?
                        .next();
                    match next {
                        Some(req) => p.create_tenant(req).await.map(|_| ())?,
                        None => return Ok::<_, ProvisionError>(()),
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| ProvisionError::Internal(format!("a creator failed: {e}")))??;
        }
        Ok(())
    }

    /// Creates a tenant, or returns the existing one when the same slug comes again
    /// with the same options (`created` is false then). A different plan or template
    /// for an existing slug is a conflict.
    pub async fn create_tenant(
        &self,
        req: CreateTenant,
    ) -> Result<(TenantInfo, bool), ProvisionError> {
        let slug = Slug::parse(&req.slug).map_err(|e| ProvisionError::BadInput(e.to_string()))?;
        let plan = req.plan.clone().unwrap_or_else(|| "free".to_owned());
        let plans = self.catalog.plans().await?;
        if !plans.iter().any(|p| p.name == plan) {
            let names: Vec<_> = plans.iter().map(|p| p.name.as_str()).collect();
            return Err(ProvisionError::BadInput(format!(
                "unknown plan {plan:?}; choose one of: {}",
                names.join(", ")
            )));
        }
        let template_name = req
            .template
            .clone()
            .unwrap_or_else(|| self.opts.default_template.clone());
        self.load_template(&template_name)?;

        for _ in 0..3 {
            if let Some(existing) = self.find_live(slug.as_str()).await? {
                return self
                    .create_again(existing, &req, &plan, &template_name)
                    .await;
            }
            match self
                .insert_requested(&slug, &plan, &template_name, req.server.as_deref())
                .await?
            {
                Some(id) => {
                    let tenant = self.drive_create(id).await?;
                    return Ok((tenant, true));
                }
                // Another creator took the slug between our look and our insert: look again.
                None => continue,
            }
        }
        Err(ProvisionError::Conflict(format!(
            "tenant {slug} is being created by another process; try again"
        )))
    }

    async fn create_again(
        &self,
        existing: TenantRow,
        req: &CreateTenant,
        plan: &str,
        template: &str,
    ) -> Result<(TenantInfo, bool), ProvisionError> {
        let info = &existing.info;
        let mut differences = Vec::new();
        if info.plan != plan {
            differences.push(format!("plan {} (asked: {plan})", info.plan));
        }
        if info.template != template {
            differences.push(format!("template {} (asked: {template})", info.template));
        }
        if let Some(server) = &req.server {
            if info.server.as_deref() != Some(server.as_str()) {
                differences.push(format!(
                    "server {} (asked: {server})",
                    info.server.as_deref().unwrap_or("none")
                ));
            }
        }
        if !differences.is_empty() {
            return Err(ProvisionError::Conflict(format!(
                "tenant {} already exists with {}; use another slug, or change the plan explicitly",
                info.slug,
                differences.join(", ")
            )));
        }
        match existing.state {
            TenantState::Ready | TenantState::Suspended => Ok((existing.info, false)),
            TenantState::Requested | TenantState::Creating | TenantState::Failed => {
                // Finish what an earlier attempt began (a failed one starts over).
                let tenant = self.drive_create(info.id).await?;
                Ok((tenant, true))
            }
            TenantState::Deleting | TenantState::Deleted => {
                Err(invalid_state(&info.slug, existing.state, "live"))
            }
        }
    }

    /// Records the tenant as `requested`, placed on a server; `None` if the slug was
    /// taken meanwhile. Servers are probed before the placement transaction (which
    /// holds a catalog connection and the placement lock only for a few queries).
    async fn insert_requested(
        &self,
        slug: &Slug,
        plan: &str,
        template: &str,
        server: Option<&str>,
    ) -> Result<Option<Uuid>, ProvisionError> {
        for _ in 0..3 {
            let server_id = self.choose_server(server).await?;
            let id = TenantId::new();
            let mut client = self.catalog.client().await?;
            let tx = client.transaction().await?;
            // Placements take turns, so two creators never both fill a server's last slot.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('tenantry-placement'))",
                &[],
            )
            .await?;
            let still_fits: bool = tx
                .query_one(
                    &format!(
                        "SELECT s.state = 'active' AND s.capacity > count(t.id)
                         FROM servers s LEFT JOIN tenants t ON t.server_id = s.id AND {HOLDS_DATABASE}
                         WHERE s.id = $1 GROUP BY s.id"
                    ),
                    &[&server_id],
                )
                .await?
                .get(0);
            if !still_fits {
                // Filled or drained since we looked: choose again.
                continue;
            }
            let inserted = tx
                .execute(
                    "INSERT INTO tenants (id, slug, plan, template, server_id, database_name, role_name, state)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'requested')
                     ON CONFLICT (slug) WHERE state <> 'deleted' DO NOTHING",
                    &[
                        &id.0,
                        &slug.as_str(),
                        &plan,
                        &template,
                        &server_id,
                        &id.database_name().as_str(),
                        &id.role_name().as_str(),
                    ],
                )
                .await?;
            tx.commit().await?;
            return Ok((inserted == 1).then_some(id.0));
        }
        Err(ProvisionError::NoCapacity(
            "servers kept filling up while this tenant was placed; try again".into(),
        ))
    }

    /// The named server if it can take a tenant, or the active, reachable server with
    /// the most room.
    async fn choose_server(&self, server: Option<&str>) -> Result<i64, ProvisionError> {
        let client = self.catalog.client().await?;
        let candidates = client
            .query(
                &format!(
                    "SELECT s.id, s.name, s.state, s.capacity - count(t.id) AS free
                     FROM servers s LEFT JOIN tenants t ON t.server_id = s.id AND {HOLDS_DATABASE}
                     WHERE $1::text IS NULL OR s.name = $1
                     GROUP BY s.id ORDER BY free DESC, s.id"
                ),
                &[&server],
            )
            .await?;
        drop(client);
        if let Some(name) = server {
            let row = candidates.first().ok_or_else(|| {
                ProvisionError::BadInput(format!(
                    "server {name:?} is not registered; `tenantry server list` shows the servers"
                ))
            })?;
            if row.get::<_, String>(2) != "active" {
                return Err(ProvisionError::BadInput(format!(
                    "server {name} is draining and takes no new tenants; choose another --server, or leave it out"
                )));
            }
            if row.get::<_, i64>(3) <= 0 {
                return Err(ProvisionError::BadInput(format!(
                    "server {name} is full; choose another --server, or raise its capacity"
                )));
            }
            let id: i64 = row.get(0);
            self.check_reachable(id).await?;
            return Ok(id);
        }
        let mut down = Vec::new();
        for r in candidates
            .iter()
            .filter(|r| r.get::<_, String>(2) == "active" && r.get::<_, i64>(3) > 0)
        {
            // A server that does not answer is passed over, not failed on.
            match self.check_reachable(r.get(0)).await {
                Ok(()) => return Ok(r.get(0)),
                Err(e) => down.push(e.to_string()),
            }
        }
        Err(ProvisionError::NoCapacity(if candidates.is_empty() {
            "no server is registered; add one with `tenantry server add NAME --url postgres://…`"
                .into()
        } else if !down.is_empty() {
            format!("no server with room is reachable: {}", down.join("; "))
        } else {
            "every active server is full or draining; add a server or raise a capacity".into()
        }))
    }

    async fn check_reachable(&self, server_id: i64) -> Result<(), ProvisionError> {
        let server = self.server_by_id(server_id).await?;
        self.admin.get(&server).await.map(drop)
    }

    /// Runs (or resumes) the create steps of tenant `id` under its lock. On a returned
    /// error, what was made is undone and the tenant is `failed` with the step recorded.
    pub(crate) async fn drive_create(&self, id: Uuid) -> Result<TenantInfo, ProvisionError> {
        let _lock = TenantLock::acquire(&self.locks, id).await?;
        self.create_locked(id).await
    }

    /// [`Provisioner::drive_create`] for a caller that holds the tenant's lock.
    pub(crate) async fn create_locked(&self, id: Uuid) -> Result<TenantInfo, ProvisionError> {
        let tenant = self.tenant_by_id(id).await?;
        match tenant.state {
            TenantState::Ready | TenantState::Suspended => return Ok(tenant.info),
            TenantState::Requested | TenantState::Creating | TenantState::Failed => {}
            // Deleted (or being deleted) while this call waited for the lock: never undo
            // anything of a tenant that is not being created.
            other => return Err(invalid_state(&tenant.info.slug, other, "being created")),
        }
        let mut step_name = "start";
        let result = self.create_steps(&tenant, &mut step_name).await;
        match result {
            Ok(()) => Ok(self.tenant_by_id(id).await?.info),
            Err(e) => {
                tracing::warn!(tenant = %tenant.info.slug, step = step_name, error = %e, "tenant creation failed; undoing");
                self.undo_create(&tenant, step_name, &e.to_string()).await;
                Err(e)
            }
        }
    }

    async fn create_steps(
        &self,
        tenant: &TenantRow,
        step_name: &mut &'static str,
    ) -> Result<(), ProvisionError> {
        let id = tenant.info.id;
        let server_id = tenant.server_id.ok_or_else(|| {
            ProvisionError::Conflict(format!("tenant {} has no server", tenant.info.slug))
        })?;
        let server = self.server_by_id(server_id).await?;
        let template = self.load_template(&tenant.info.template)?;
        let plan_pool = self.plan_pool_size(&tenant.info.plan).await?;

        *step_name = "creating";
        self.step(tenant, &server, "creating", async {
            self.set_state(
                id,
                TenantState::Creating,
                &[
                    TenantState::Requested,
                    TenantState::Failed,
                    TenantState::Creating,
                ],
            )
            .await
        })
        .await?;

        *step_name = "template";
        let template_db = self
            .step(
                tenant,
                &server,
                "template",
                self.ensure_template(&server, &template),
            )
            .await?;

        *step_name = "credentials";
        let password = self
            .step(
                tenant,
                &server,
                "credentials",
                self.ensure_credentials(tenant),
            )
            .await?;

        *step_name = "role";
        self.step(tenant, &server, "role", async {
            let admin = self.admin.get(&server).await?;
            let limit = plan_pool + 2;
            ensure_role(&admin, &tenant.role, &password, limit, &self.opts)
                .await
                .map_err(|e| ProvisionError::server(&server.name, "create the tenant role", &e))
        })
        .await?;

        *step_name = "database";
        self.step(tenant, &server, "database", async {
            let admin = self.admin.get(&server).await?;
            let exists = database_exists(&admin, &tenant.database)
                .await
                .map_err(|e| {
                    ProvisionError::server(&server.name, "look up the tenant database", &e)
                })?;
            if !exists {
                let sql = format!(
                    "CREATE DATABASE {} TEMPLATE {} OWNER {} STRATEGY {}",
                    tenant.database,
                    template_db.database,
                    tenant.role,
                    self.opts.create_strategy.as_sql()
                );
                if let Err(e) = admin.batch_execute(&sql).await {
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_DATABASE) {
                        // The template went away behind our back: forget it, so the next
                        // attempt builds it again.
                        let catalog = self.catalog.client().await?;
                        catalog
                            .execute(
                                "DELETE FROM template_databases WHERE server_id = $1 AND database_name = $2",
                                &[&server.id, &template_db.database.as_str()],
                            )
                            .await?;
                    }
                    return Err(ProvisionError::server(&server.name, "create the tenant database", &e));
                }
            }
            Ok(())
        })
        .await?;

        *step_name = "grants";
        self.step(tenant, &server, "grants", async {
            let client = server.connect(tenant.database.as_str()).await?;
            let owner =
                Ident::new(TEMPLATE_OWNER).map_err(|e| ProvisionError::BadInput(e.to_string()))?;
            client
                .batch_execute(&format!(
                    "REASSIGN OWNED BY {owner} TO {role};
                     DROP OWNED BY {owner};
                     REVOKE ALL ON DATABASE {db} FROM PUBLIC;
                     REVOKE ALL ON SCHEMA public FROM PUBLIC;
                     GRANT USAGE, CREATE ON SCHEMA public TO {role};
                     GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}",
                    role = tenant.role,
                    db = tenant.database
                ))
                .await
                .map_err(|e| {
                    ProvisionError::server(&server.name, "hand the tenant its objects", &e)
                })
        })
        .await?;

        *step_name = "ready";
        self.step(tenant, &server, "ready", async {
            let client = self.catalog.client().await?;
            client
                .execute(
                    "UPDATE tenants SET state = 'ready', schema_version = $2, failed_step = NULL,
                            last_error = NULL, generation = generation + 1, updated_at = now()
                     WHERE id = $1",
                    &[&id, &template_db.version],
                )
                .await?;
            Ok(())
        })
        .await?;
        tracing::info!(tenant = %tenant.info.slug, db = %tenant.database.as_str(), server = %server.name, "tenant created");
        Ok(())
    }

    /// One step of creating a tenant; see [`Provisioner::recorded`].
    async fn step<T>(
        &self,
        tenant: &TenantRow,
        server: &ServerRow,
        name: &'static str,
        act: impl std::future::Future<Output = Result<T, ProvisionError>>,
    ) -> Result<T, ProvisionError> {
        self.recorded(tenant, server.id, "create", name, act).await
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

    async fn plan_pool_size(&self, plan: &str) -> Result<u32, ProvisionError> {
        Ok(self
            .catalog
            .plans()
            .await?
            .into_iter()
            .find(|p| p.name == plan)
            .map_or(2, |p| p.pool_size))
    }

    /// The tenant's password: sealed into the catalog before any role uses it, so a
    /// crash never loses it.
    async fn ensure_credentials(&self, tenant: &TenantRow) -> Result<SecretString, ProvisionError> {
        let id = tenant.info.id;
        if let Some(sealed) = &tenant.credentials {
            if let Ok(bytes) = self.sealer.open(sealed, &binding(id)) {
                return Ok(SecretString::from(
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
        let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 40);
        let sealed = self.sealer.seal(password.as_bytes(), &binding(id));
        let client = self.catalog.client().await?;
        client
            .execute(
                "UPDATE tenants SET credentials = $2, key_version = $3, updated_at = now() WHERE id = $1",
                &[&id, &sealed.bytes, &sealed.key_version],
            )
            .await?;
        Ok(SecretString::from(password))
    }

    /// A tenant's login password, by id (the migration runner logs in as the tenant).
    pub(crate) async fn tenant_password_by_id(
        &self,
        id: Uuid,
    ) -> Result<SecretString, ProvisionError> {
        let tenant = self.tenant_by_id(id).await?;
        let sealed = tenant.credentials.as_ref().ok_or_else(|| {
            ProvisionError::Conflict(format!("tenant {} has no credentials", tenant.info.slug))
        })?;
        let bytes = self.sealer.open(sealed, &binding(id)).map_err(|e| {
            ProvisionError::Conflict(format!("the tenant's credentials do not open: {e}"))
        })?;
        Ok(SecretString::from(
            String::from_utf8_lossy(&bytes).into_owned(),
        ))
    }

    /// The tenant's login password (for the router's pools and for tests).
    pub async fn tenant_password(&self, slug: &str) -> Result<SecretString, ProvisionError> {
        let tenant = self.live_tenant(slug).await?;
        let sealed = tenant
            .credentials
            .ok_or_else(|| ProvisionError::Conflict(format!("tenant {slug} has no credentials")))?;
        let bytes = self
            .sealer
            .open(&sealed, &binding(tenant.info.id))
            .map_err(tenantry_catalog::CatalogError::from)?;
        Ok(SecretString::from(
            String::from_utf8_lossy(&bytes).into_owned(),
        ))
    }

    /// Removes whatever a failed create made on the server, then marks the tenant
    /// `failed` with the step and error. If the server cannot be reached, the tenant
    /// stays `creating` for reconcile.
    pub(crate) async fn undo_create(&self, tenant: &TenantRow, step: &str, error: &str) {
        // A failure after the tenant became ready (recording the last step, say) leaves a
        // finished tenant: never take that apart. Reconcile closes its ledger rows.
        match self.tenant_by_id(tenant.info.id).await {
            Ok(now) if now.state == TenantState::Ready => return,
            _ => {}
        }
        let dropped = match tenant.server_id {
            Some(server_id) => match self.server_by_id(server_id).await {
                Ok(server) => self.drop_database_and_role(&server, tenant).await.is_ok(),
                Err(_) => false,
            },
            None => true,
        };
        let Ok(client) = self.catalog.client().await else {
            return;
        };
        let state = if dropped { "failed" } else { "creating" };
        let _ = client
            .execute(
                "UPDATE tenants SET state = $2, failed_step = $3, last_error = $4,
                        credentials = CASE WHEN $2 = 'failed' THEN NULL ELSE credentials END,
                        key_version = CASE WHEN $2 = 'failed' THEN NULL ELSE key_version END,
                        generation = generation + 1, updated_at = now()
                 WHERE id = $1 AND state IN ('requested', 'creating', 'failed')",
                &[&tenant.info.id, &state, &step, &error],
            )
            .await;
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

    // ----- suspend, resume -----

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
        let limit = self.plan_pool_size(&tenant.info.plan).await? + 2;
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

    // ----- delete, purge -----

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

    // ----- export -----

    /// Writes a `pg_dump` custom-format archive of the tenant's database to `out`
    /// (through a temporary file, renamed when complete).
    pub async fn export_tenant(&self, slug: &str, out: &Path) -> Result<u64, ProvisionError> {
        let tenant = self.live_tenant(slug).await?;
        if !matches!(tenant.state, TenantState::Ready | TenantState::Suspended) {
            return Err(invalid_state(slug, tenant.state, "ready or suspended"));
        }
        let server_id = tenant
            .server_id
            .ok_or_else(|| ProvisionError::Conflict(format!("tenant {slug} has no server")))?;
        let server = self.server_by_id(server_id).await?;
        // pg_dump reads as the admin, who must be a member of the tenant's role.
        self.rejoin(&server, &tenant).await?;
        let pg_dump = tenantry_embedded::PgBinaries::find()
            .map(|b| b.tool("pg_dump"))
            .unwrap_or_else(|_| "pg_dump".into());
        let tmp = out.with_extension(format!("partial-{}", std::process::id()));
        let output = tokio::process::Command::new(&pg_dump)
            .arg("--format=custom")
            .arg("--no-owner")
            .arg("--no-privileges")
            .arg("--file")
            .arg(&tmp)
            .arg("--host")
            .arg(&server.host)
            .arg("--port")
            .arg(server.port.to_string())
            .arg("--username")
            .arg(&server.admin_user)
            .arg("--dbname")
            .arg(tenant.database.as_str())
            // The password travels in the environment, never on a command line.
            .env("PGPASSWORD", server.password.expose_secret())
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                ProvisionError::Export(format!("cannot run {}: {e}", pg_dump.display()))
            })?;
        if !output.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(ProvisionError::Export(format!(
                "pg_dump exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        std::fs::rename(&tmp, out)
            .map_err(|e| ProvisionError::Export(format!("cannot write {}: {e}", out.display())))?;
        Ok(std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
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

/// PBKDF2 rounds in a tenant role's SCRAM verifier. Stretching slows down guessing a
/// weak password from a stolen verifier; a tenant password is 40 random alphanumerics
/// (238 bits), which no number of guesses reaches, so the rounds would only cost the
/// router: PostgreSQL's default of 4,096 is about 1.5 ms of router CPU per new
/// connection, paid again every time a tenant without an open connection is served.
pub const SCRAM_ITERATIONS: u32 = 32;

/// A SCRAM-SHA-256 verifier as PostgreSQL stores it (RFC 5802/7677):
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`. The password must need
/// no SASLprep (ASCII letters and digits, as [`Provisioner`] makes them).
pub fn scram_verifier(password: &str, iterations: u32) -> String {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use rand::RngCore;
    use sha2::{Digest, Sha256};
    type HmacSha256 = Hmac<Sha256>;
    let hmac = |key: &[u8], data: &[&[u8]]| -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        for d in data {
            mac.update(d);
        }
        mac.finalize().into_bytes().into()
    };
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    // PBKDF2-HMAC-SHA-256, one 32-byte block.
    let mut u = hmac(password.as_bytes(), &[&salt, &1u32.to_be_bytes()]);
    let mut salted = u;
    for _ in 1..iterations.max(1) {
        u = hmac(password.as_bytes(), &[&u]);
        for (s, x) in salted.iter_mut().zip(u) {
            *s ^= x;
        }
    }
    let client_key = hmac(&salted, &[b"Client Key"]);
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, &[b"Server Key"]);
    format!(
        "SCRAM-SHA-256${}:{}${}:{}",
        iterations.max(1),
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

/// Creates the tenant's login role, or brings an existing one back to the same settings
/// (every setting of its own removed first: a tenant may have added some).
/// The password is sent as a SCRAM-SHA-256 verifier computed here, so the clear text
/// never reaches the server (nor its logs).
async fn ensure_role(
    admin: &tokio_postgres::Client,
    role: &Ident,
    password: &SecretString,
    connection_limit: u32,
    opts: &crate::ProvisionOptions,
) -> Result<(), tokio_postgres::Error> {
    let verifier = scram_verifier(password.expose_secret(), SCRAM_ITERATIONS);
    let verifier = sql_literal(&verifier).unwrap_or_default();
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_roles WHERE rolname = $1",
            &[&role.as_str()],
        )
        .await?
        .is_some();
    let attributes = format!(
        "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION \
         CONNECTION LIMIT {connection_limit} PASSWORD {verifier}"
    );
    let create = if exists {
        // Only what a role can change of itself (its password) or that the control plane
        // changes (its limit): the superuser-only attributes cannot change, and a
        // non-superuser admin may not even name them.
        format!(
            "ALTER ROLE {role} WITH LOGIN CONNECTION LIMIT {connection_limit} PASSWORD {verifier}"
        )
    } else {
        format!("CREATE ROLE {role} WITH {attributes}")
    };
    admin
        .batch_execute(&format!(
            "{create};
             ALTER ROLE {role} RESET ALL;
             ALTER ROLE {role} SET statement_timeout = {st};
             ALTER ROLE {role} SET idle_in_transaction_session_timeout = {it}",
            st = opts.statement_timeout_ms,
            it = opts.idle_in_transaction_timeout_ms,
        ))
        .await?;
    // To make the role a database's owner and hand it the template's objects.
    crate::templates::join_role(admin, role).await
}

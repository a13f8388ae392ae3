//! Creating a tenant: placement, then the ledger-recorded steps from `creating` to `ready`.

use tenantry_types::{Ident, Slug, TenantId, TenantState};
use uuid::Uuid;

use super::role::ensure_role;
use super::{database_exists, invalid_state, CreateTenant, TenantInfo, TenantRow};
use crate::server::{ServerRow, TenantLock};
use crate::servers::HOLDS_DATABASE;
use crate::templates::TEMPLATE_OWNER;
use crate::{ProvisionError, Provisioner};

impl Provisioner {
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
        self.known_plan(&plan).await?;
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
                "tenant {} already exists with {}; use another slug (a plan is changed with `tenantry tenant set-plan`)",
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
            crate::servers::lock_placements(&tx).await?;
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
            if inserted == 1 {
                // The tenant's first plan, from its creation: a period's bill starts here.
                super::plan::record_change(&tx, id.0, None, plan, None).await?;
            }
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
        let limit = self.role_connection_limit(&tenant.info.plan).await?;

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
}

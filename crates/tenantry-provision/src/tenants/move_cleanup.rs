//! Undoing and finishing moves: the replication objects a move makes (publication and
//! slots on the source, subscription on the target) dropped from whichever side has
//! them; an unflipped move undone (the source gets the tenant's writes back, the target
//! loses the database and role); the source copies kept for retention purged when due.
//! Used when a move fails, and by `tenantry reconcile` after a crash.

use tenantry_types::{Ident, TenantState};
use uuid::Uuid;

use super::database_exists;
use super::move_plan::{replication_name, MovePlan};
use super::TenantRow;
use crate::server::{ServerRow, TenantLock};
use crate::{ProvisionError, Provisioner};

/// A move's row as reconcile reads it.
struct MoveRow {
    id: i64,
    source: Option<i64>,
    target: Option<i64>,
    status: String,
}

impl Provisioner {
    /// The move's unsubscribe step: see [`Provisioner::drop_replication_of`].
    pub(crate) async fn drop_replication(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        self.drop_replication_of(&plan.tenant, Some(&plan.source), Some(&plan.target))
            .await
    }

    /// Drops the move's subscription on the target (detached from its slot first, so it
    /// never needs the source), then every replication slot of the tenant database on
    /// the source (the subscription's and its table-sync ones) and the publication.
    /// Each part is looked up first: running it again is harmless.
    async fn drop_replication_of(
        &self,
        tenant: &TenantRow,
        source: Option<&ServerRow>,
        target: Option<&ServerRow>,
    ) -> Result<(), ProvisionError> {
        let name = replication_name(tenant.info.id);
        let db = &tenant.database;
        if let Some(target) = target {
            let admin = self.admin.get(target).await?;
            let there = database_exists(&admin, db)
                .await
                .map_err(|e| ProvisionError::server(&target.name, "look up the database", &e))?;
            if there {
                let client = target.connect_tenant_db(db.as_str()).await?;
                let sub = client
                    .query_opt(
                        "SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid =
                            (SELECT oid FROM pg_database WHERE datname = current_database())",
                        &[&name.as_str()],
                    )
                    .await
                    .map_err(|e| {
                        ProvisionError::server(&target.name, "look up the subscription", &e)
                    })?;
                if sub.is_some() {
                    for sql in [
                        format!("ALTER SUBSCRIPTION {name} DISABLE"),
                        format!("ALTER SUBSCRIPTION {name} SET (slot_name = NONE)"),
                        format!("DROP SUBSCRIPTION {name}"),
                    ] {
                        client.batch_execute(&sql).await.map_err(|e| {
                            ProvisionError::server(&target.name, "drop the subscription", &e)
                        })?;
                    }
                }
            }
        }
        let Some(source) = source else {
            return Ok(());
        };
        let admin = self.admin.get(source).await?;
        let err = |e: tokio_postgres::Error| {
            ProvisionError::server(&source.name, "drop the move's replication slots", &e)
        };
        for attempt in 0..50 {
            admin
                .execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                     WHERE database = $1 AND active_pid IS NOT NULL",
                    &[&db.as_str()],
                )
                .await
                .map_err(err)?;
            let left: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                    &[&db.as_str()],
                )
                .await
                .map_err(err)?
                .get(0);
            if left == 0 {
                break;
            }
            // A slot still held by a WAL sender that is ending is dropped next time round.
            let dropped = admin
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                     WHERE database = $1 AND active_pid IS NULL",
                    &[&db.as_str()],
                )
                .await;
            if let Err(e) = dropped {
                if attempt == 49 {
                    return Err(err(e));
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if database_exists(&admin, db).await.map_err(err)? {
            let client = source.connect_tenant_db(db.as_str()).await?;
            let published = client
                .query_opt(
                    "SELECT 1 FROM pg_publication WHERE pubname = $1",
                    &[&name.as_str()],
                )
                .await
                .map_err(|e| ProvisionError::server(&source.name, "look up the publication", &e))?;
            if published.is_some() {
                // An offline move leaves the source copy read-only by default.
                for sql in [
                    "SET default_transaction_read_only = off".to_owned(),
                    format!("DROP PUBLICATION IF EXISTS {name}"),
                ] {
                    client.batch_execute(&sql).await.map_err(|e| {
                        ProvisionError::server(&source.name, "drop the publication", &e)
                    })?;
                }
            }
        }
        Ok(())
    }

    /// After a failed move: undone at once if every server answers (status `undone`),
    /// else left `failed` for reconcile to finish undoing.
    pub(crate) async fn fail_move(&self, plan: &MovePlan, error: &str) {
        let _ = self.set_move(plan.id, "error = $2", error.to_owned()).await;
        let row = MoveRow {
            id: plan.id,
            source: Some(plan.source.id),
            target: Some(plan.target.id),
            status: "running".into(),
        };
        let status = match self.undo_move(&plan.tenant, &row).await {
            Ok(()) => "undone",
            Err(e) => {
                tracing::warn!(tenant = %plan.tenant.info.slug, error = %e, "the move's undo is unfinished; `tenantry reconcile` finishes it");
                "failed"
            }
        };
        let _ = self.set_move(plan.id, "status = $2", status).await;
        let _ = self
            .set_move(
                plan.id,
                "finished_at = coalesce(finished_at, $2)",
                chrono::Utc::now(),
            )
            .await;
        let _ = crate::ledger::close_interrupted(&self.catalog, plan.tenant.info.id).await;
    }

    /// Undoes a move that never flipped: the source gets the tenant back as it was
    /// (writable when the tenant is ready, `moving` cleared), then nothing of the move
    /// stays on either server.
    async fn undo_move(&self, tenant: &TenantRow, m: &MoveRow) -> Result<(), ProvisionError> {
        let now = self.tenant_by_id(tenant.info.id).await?;
        if now.server_id.is_some() && now.server_id == m.target {
            return Err(ProvisionError::Internal(
                "the tenant is on the move's target already; nothing to undo".into(),
            ));
        }
        let (source, target) = self.move_servers(m).await?;
        let client = self.catalog.client().await?;
        client
            .execute(
                "UPDATE tenants SET moving = NULL, generation = generation + 1, updated_at = now()
                 WHERE id = $1 AND moving IS NOT NULL",
                &[&tenant.info.id],
            )
            .await?;
        drop(client);
        if let Some(source) = &source {
            let admin = self.admin.get(source).await?;
            if database_exists(&admin, &tenant.database)
                .await
                .map_err(|e| ProvisionError::server(&source.name, "look up the database", &e))?
            {
                let mut sql = format!(
                    "ALTER DATABASE {} RESET default_transaction_read_only",
                    tenant.database
                );
                if now.state == TenantState::Ready {
                    sql.push_str(&format!(
                        "; GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}",
                        tenant.database, tenant.role
                    ));
                }
                admin.batch_execute(&sql).await.map_err(|e| {
                    ProvisionError::server(&source.name, "give the tenant its writes back", &e)
                })?;
            }
        }
        self.drop_replication_of(tenant, source.as_ref(), target.as_ref())
            .await?;
        if let Some(target) = &target {
            self.drop_database_and_role(target, tenant).await?;
        }
        let client = self.catalog.client().await?;
        client
            .execute(
                "UPDATE moves SET status = 'undone', finished_at = coalesce(finished_at, now()),
                        updated_at = now() WHERE id = $1",
                &[&m.id],
            )
            .await?;
        Ok(())
    }

    /// The move's source and target servers (`None` for one removed since).
    async fn move_servers(
        &self,
        m: &MoveRow,
    ) -> Result<(Option<ServerRow>, Option<ServerRow>), ProvisionError> {
        let mut found = [None, None];
        for (slot, id) in found.iter_mut().zip([m.source, m.target]) {
            if let Some(id) = id {
                *slot = Some(self.server_by_id(id).await?);
            }
        }
        let [source, target] = found;
        Ok((source, target))
    }

    /// Reconcile's part for a tenant (its lock held): a move a crash or an error left
    /// unfinished is undone; a finished one whose last steps were interrupted has its
    /// replication objects dropped and its source copy closed. Returns what it did.
    pub(crate) async fn reconcile_moves(
        &self,
        tenant: &TenantRow,
        dry_run: bool,
    ) -> Result<Option<String>, ProvisionError> {
        let client = self.catalog.client().await?;
        let rows = client
            .query(
                "SELECT id, source_server_id, target_server_id, status FROM moves
                 WHERE tenant_id = $1 AND (status IN ('running', 'failed')
                    OR (status = 'done' AND EXISTS (SELECT 1 FROM operations o
                        WHERE o.tenant_id = $1 AND o.kind = 'move'
                          AND o.status IN ('started', 'failed'))))
                 ORDER BY id DESC LIMIT 1",
                &[&tenant.info.id],
            )
            .await?;
        drop(client);
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let m = MoveRow {
            id: r.get(0),
            source: r.get(1),
            target: r.get(2),
            status: r.get(3),
        };
        if dry_run {
            return Ok(Some(format!("{} (move {})", tenant.info.slug, m.status)));
        }
        if m.status == "done" || (tenant.server_id.is_some() && tenant.server_id == m.target) {
            let (source, target) = self.move_servers(&m).await?;
            self.drop_replication_of(tenant, source.as_ref(), target.as_ref())
                .await?;
            if let Some(source) = &source {
                if tenant.server_id != Some(source.id) {
                    self.revoke_connect(source, tenant).await?;
                }
            }
            self.move_done(m.id).await?;
            return Ok(Some(format!("{} (move finished)", tenant.info.slug)));
        }
        self.undo_move(tenant, &m).await?;
        Ok(Some(format!("{} (move undone)", tenant.info.slug)))
    }

    /// Drops `tenant`'s retained copy on `server`, if it has one there (a move back to
    /// a server it left).
    pub(crate) async fn purge_retained_on(
        &self,
        tenant: Uuid,
        server: i64,
    ) -> Result<(), ProvisionError> {
        let client = self.catalog.client().await?;
        let rows = client
            .query(
                "SELECT id FROM retained_copies WHERE tenant_id = $1 AND server_id = $2 AND purged_at IS NULL",
                &[&tenant, &server],
            )
            .await?;
        drop(client);
        for r in rows {
            self.purge_copy(r.get(0)).await?;
        }
        Ok(())
    }

    /// Drops one retained copy's database and role, and marks it purged.
    async fn purge_copy(&self, id: i64) -> Result<(), ProvisionError> {
        let client = self.catalog.client().await?;
        let r = client
            .query_one(
                "SELECT c.server_id, c.database_name, c.role_name, t.server_id
                 FROM retained_copies c JOIN tenants t ON t.id = c.tenant_id WHERE c.id = $1",
                &[&id],
            )
            .await?;
        let (server_id, live_on): (i64, Option<i64>) = (r.get(0), r.get(3));
        if live_on != Some(server_id) {
            let bad = |e: tenantry_types::IdentError| ProvisionError::BadInput(e.to_string());
            let db = Ident::new(r.get::<_, String>(1)).map_err(bad)?;
            let role = Ident::new(r.get::<_, String>(2)).map_err(bad)?;
            let server = self.server_by_id(server_id).await?;
            let admin = self.admin.get(&server).await?;
            for (sql, what) in [
                (
                    format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                    "drop a retained copy",
                ),
                (
                    format!("DROP ROLE IF EXISTS {role}"),
                    "drop a retained copy's role",
                ),
            ] {
                admin
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| ProvisionError::server(&server.name, what, &e))?;
            }
        }
        client
            .execute(
                "UPDATE retained_copies SET purged_at = now() WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(())
    }

    /// Reconcile's purge of the source copies whose retention has passed; returns the
    /// slugs whose copies were purged.
    pub(crate) async fn purge_due_copies(
        &self,
        dry_run: bool,
        errors: &mut Vec<String>,
    ) -> Result<Vec<String>, ProvisionError> {
        let client = self.catalog.client().await?;
        let rows = client
            .query(
                "SELECT c.id, c.tenant_id, t.slug FROM retained_copies c JOIN tenants t ON t.id = c.tenant_id
                 WHERE c.purged_at IS NULL AND c.purge_after <= now() ORDER BY c.id",
                &[],
            )
            .await?;
        drop(client);
        let mut purged = Vec::new();
        for r in rows {
            let (id, tenant, slug): (i64, Uuid, String) = (r.get(0), r.get(1), r.get(2));
            if dry_run {
                purged.push(slug);
                continue;
            }
            let Some(_lock) = TenantLock::try_acquire(&self.locks, tenant).await? else {
                errors.push(format!(
                    "tenant {slug} is busy with another process; its source copy stays"
                ));
                continue;
            };
            match self.purge_copy(id).await {
                Ok(()) => purged.push(slug),
                Err(e) => errors.push(format!("tenant {slug}'s source copy: {e}")),
            }
        }
        Ok(purged)
    }
}

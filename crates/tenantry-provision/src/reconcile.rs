//! `tenantry reconcile`: finish or undo what a crash left half-done, purge tenants
//! whose retention has passed, and report orphans both ways.

use serde::Serialize;
use std::collections::HashSet;
use tenantry_types::TenantState;

use crate::server::TenantLock;
use crate::tenants::{TenantRow, PLAN_CHANGE};
use crate::{ledger, ProvisionError, Provisioner};

/// A database or role on a server that no tenant accounts for, or a tenant whose database is gone.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Orphan {
    pub server: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    pub dry_run: bool,
    /// Creations finished (slugs).
    pub finished: Vec<String>,
    /// Creations undone: the tenant is `failed`, nothing left on its server.
    pub undone: Vec<String>,
    /// Deletions finished.
    pub deleted: Vec<String>,
    /// Tenants purged because their retention passed (or a purge was interrupted).
    pub purged: Vec<String>,
    /// Plan changes finished: the tenant role's connection limit set to its plan's.
    pub plan_changes: Vec<String>,
    /// Moves a crash or an error left unfinished: undone (the tenant stays on its
    /// source), or, if they had flipped, their last steps finished.
    pub moves: Vec<String>,
    /// Tenants whose source copy (kept after a move) was purged, its retention passed.
    pub purged_copies: Vec<String>,
    /// Databases named like a tenant's with no tenant holding them.
    pub orphan_databases: Vec<Orphan>,
    /// Roles named like a tenant's with no tenant holding them.
    pub orphan_roles: Vec<Orphan>,
    /// Live tenants whose database is missing from their server.
    pub missing_databases: Vec<Orphan>,
    /// Tenants skipped because another process holds them, or that failed to reconcile.
    pub errors: Vec<String>,
}

impl ReconcileReport {
    /// Whether anything needs an operator.
    pub fn is_clean(&self) -> bool {
        self.orphan_databases.is_empty()
            && self.orphan_roles.is_empty()
            && self.missing_databases.is_empty()
            && self.errors.is_empty()
    }
}

impl Provisioner {
    pub async fn reconcile(&self, dry_run: bool) -> Result<ReconcileReport, ProvisionError> {
        let mut report = ReconcileReport {
            dry_run,
            ..Default::default()
        };
        let client = self.catalog.client().await?;
        // Tenants in a transient state, tenants with a ledger step that a crash left
        // `started` or an error left `failed`, and purges that are due.
        let rows = client
            .query(
                "SELECT DISTINCT t.id FROM tenants t
                 LEFT JOIN operations o ON o.tenant_id = t.id AND o.status IN ('started', 'failed')
                 WHERE t.state IN ('requested', 'creating', 'deleting')
                    OR o.id IS NOT NULL
                    OR EXISTS (SELECT 1 FROM moves m WHERE m.tenant_id = t.id
                               AND m.status IN ('running', 'failed'))
                    OR (t.state = 'deleted' AND t.purged_at IS NULL AND t.purge_after <= now())",
                &[],
            )
            .await?;
        drop(client);
        for row in rows {
            let id: uuid::Uuid = row.get(0);
            let Some(_lock) = TenantLock::try_acquire(&self.locks, id).await? else {
                report
                    .errors
                    .push(format!("tenant {id} is busy with another process; skipped"));
                continue;
            };
            let tenant = self.tenant_by_id(id).await?;
            if let Err(e) = self.reconcile_one(&tenant, dry_run, &mut report).await {
                report
                    .errors
                    .push(format!("tenant {}: {e}", tenant.info.slug));
            }
        }
        report.purged_copies = self.purge_due_copies(dry_run, &mut report.errors).await?;
        self.find_orphans(&mut report).await?;
        Ok(report)
    }

    async fn reconcile_one(
        &self,
        tenant: &TenantRow,
        dry_run: bool,
        report: &mut ReconcileReport,
    ) -> Result<(), ProvisionError> {
        let slug = tenant.info.slug.clone();
        let id = tenant.info.id;
        // A move first: undoing it gives the source back what the state's repair expects.
        if let Some(done) = self.reconcile_moves(tenant, dry_run).await? {
            report.moves.push(done);
        }
        let tenant = &self.tenant_by_id(id).await?;
        match tenant.state {
            TenantState::Requested | TenantState::Creating => {
                if dry_run {
                    report.finished.push(slug);
                    return Ok(());
                }
                match self.create_locked(id).await {
                    Ok(_) => report.finished.push(slug),
                    Err(e) => {
                        // Undone only if the undo reached the server; else it stays `creating`.
                        if self.tenant_by_id(id).await?.state == TenantState::Failed {
                            report.undone.push(slug);
                        } else {
                            report
                                .errors
                                .push(format!("tenant {slug}: {e}; left for the next reconcile"));
                        }
                    }
                }
            }
            TenantState::Failed => {
                // Nothing of a failed tenant may stay on its server.
                if !dry_run {
                    if let Some(server_id) = tenant.server_id {
                        let server = self.server_by_id(server_id).await?;
                        self.drop_database_and_role(&server, tenant).await?;
                    }
                }
            }
            TenantState::Deleting => {
                if !dry_run {
                    self.finish_delete(tenant).await?;
                }
                report.deleted.push(slug);
            }
            TenantState::Suspended => {
                // An interrupted suspend: CONNECT revoked and sessions ended, again.
                if !dry_run {
                    if let Some(server_id) = tenant.server_id {
                        let server = self.server_by_id(server_id).await?;
                        self.revoke_connect(&server, tenant).await?;
                    }
                }
            }
            TenantState::Ready => {
                // An interrupted resume left CONNECT granted or not: grant it.
                if !dry_run {
                    if let Some(server_id) = tenant.server_id {
                        let server = self.server_by_id(server_id).await?;
                        let admin = self.admin.get(&server).await?;
                        admin
                            .batch_execute(&format!(
                                "GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}",
                                tenant.database, tenant.role
                            ))
                            .await
                            .map_err(|e| {
                                ProvisionError::server(&server.name, "grant CONNECT", &e)
                            })?;
                    }
                }
            }
            TenantState::Deleted => {
                let due = tenant
                    .info
                    .purge_after
                    .is_some_and(|t| t <= chrono::Utc::now());
                // A purge once begun is finished, whatever the retention says.
                let begun = ledger::unfinished_kinds(&self.catalog, id)
                    .await?
                    .iter()
                    .any(|k| k == "purge");
                if (due || begun) && !tenant.purged {
                    if !dry_run {
                        self.purge_locked(tenant).await?;
                    }
                    report.purged.push(slug);
                }
            }
        }
        if matches!(tenant.state, TenantState::Ready | TenantState::Suspended)
            && ledger::unfinished_kinds(&self.catalog, id)
                .await?
                .iter()
                .any(|k| k == PLAN_CHANGE)
        {
            // An interrupted plan change: the catalog has the plan it has (the change
            // committed or not); the role's connection limit follows it.
            if !dry_run {
                if let Some(server_id) = tenant.server_id {
                    let server = self.server_by_id(server_id).await?;
                    self.apply_plan_limit(&server, tenant, &tenant.info.plan)
                        .await?;
                }
            }
            report.plan_changes.push(tenant.info.slug.clone());
        }
        if !dry_run {
            ledger::close_interrupted(&self.catalog, id).await?;
        }
        Ok(())
    }

    async fn find_orphans(&self, report: &mut ReconcileReport) -> Result<(), ProvisionError> {
        let catalog = self.catalog.client().await?;
        for server in self.all_servers().await? {
            // What should exist on this server: the databases and roles of tenants holding one.
            let rows = catalog
                .query(
                    "SELECT database_name, role_name, slug, state FROM tenants
                     WHERE server_id = $1 AND purged_at IS NULL AND state NOT IN ('failed', 'requested')
                     UNION ALL
                     SELECT c.database_name, c.role_name, t.slug, 'retained' FROM retained_copies c
                     JOIN tenants t ON t.id = c.tenant_id
                     WHERE c.server_id = $1 AND c.purged_at IS NULL
                     UNION ALL
                     SELECT t.database_name, t.role_name, t.slug, 'creating' FROM moves m
                     JOIN tenants t ON t.id = m.tenant_id
                     WHERE m.target_server_id = $1 AND m.status IN ('running', 'failed')",
                    &[&server.id],
                )
                .await?;
            let databases: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
            let roles: HashSet<String> = rows.iter().map(|r| r.get(1)).collect();
            let admin = match self.admin.get(&server).await {
                Ok(a) => a,
                Err(e) => {
                    report.errors.push(e.to_string());
                    continue;
                }
            };
            let present_dbs: HashSet<String> = admin
                .query(
                    "SELECT datname FROM pg_database WHERE datname ~ '^t_[0-9a-f]{32}$'",
                    &[],
                )
                .await
                .map_err(|e| ProvisionError::server(&server.name, "list databases", &e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let present_roles: HashSet<String> = admin
                .query(
                    "SELECT rolname FROM pg_roles WHERE rolname ~ '^tr_[0-9a-f]{32}$'",
                    &[],
                )
                .await
                .map_err(|e| ProvisionError::server(&server.name, "list roles", &e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let orphan = |name: &String| Orphan {
                server: server.name.clone(),
                name: name.clone(),
            };
            // Tenants mid-creation may own a role or database that is not yet accounted for;
            // those were handled above, so what remains is a real orphan.
            report
                .orphan_databases
                .extend(present_dbs.difference(&databases).map(orphan));
            report
                .orphan_roles
                .extend(present_roles.difference(&roles).map(orphan));
            for r in &rows {
                let db: String = r.get(0);
                let state: String = r.get(3);
                if state != "creating" && !present_dbs.contains(&db) {
                    report.missing_databases.push(Orphan {
                        server: server.name.clone(),
                        name: r.get(2),
                    });
                }
            }
        }
        for list in [
            &mut report.orphan_databases,
            &mut report.orphan_roles,
            &mut report.missing_databases,
        ] {
            list.sort_by(|a, b| (&a.server, &a.name).cmp(&(&b.server, &b.name)));
        }
        Ok(())
    }
}

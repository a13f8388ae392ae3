//! The runner's catalog writes: the run's row, each tenant's row of it, and the word
//! the runner gives before and after each file it commits in a tenant database.

use tenantry_catalog::Catalog;
use uuid::Uuid;

use super::schedule::Run;
use super::{Connector, RunError, RunOptions, RunReport, Target, TenantReport};
use crate::history;

/// The run's catalog row, held by a session lock on a connection of its own for as long
/// as the runner lives.
pub(super) struct RunRecord {
    client: deadpool_postgres::Object,
    run_id: Uuid,
}

fn run_lock(run_id: Uuid) -> String {
    format!("tenantry-migrate-run:{run_id}")
}

impl RunRecord {
    pub(super) async fn open(
        catalog: &Catalog,
        run_id: Uuid,
        opts: &RunOptions,
    ) -> Result<Self, RunError> {
        let client = catalog.client().await?;
        // Runs whose runner is gone (its lock is free) were interrupted.
        let running = client
            .query("SELECT id FROM migration_runs WHERE state = 'running'", &[])
            .await?;
        for row in running {
            let id: Uuid = row.get(0);
            let free: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtext($1))",
                    &[&run_lock(id)],
                )
                .await?
                .get(0);
            if free {
                client
                    .batch_execute(&format!(
                        "UPDATE migration_runs SET state = 'interrupted', finished_at = now() WHERE id = '{id}';
                         UPDATE migration_run_tenants SET status = 'failed', error = 'the run was interrupted', finished_at = now()
                          WHERE run_id = '{id}' AND status = 'running';
                         UPDATE migration_run_tenants SET status = 'skipped', finished_at = now()
                          WHERE run_id = '{id}' AND status = 'pending';"
                    ))
                    .await?;
                client
                    .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&run_lock(id)])
                    .await?;
                tracing::info!(run = %id, "an earlier run was interrupted; its unfinished tenants are picked up now");
            }
        }
        client
            .execute(
                "SELECT pg_advisory_lock(hashtext($1))",
                &[&run_lock(run_id)],
            )
            .await?;
        let options = serde_json::to_value(opts).unwrap_or_default();
        client
            .execute(
                "INSERT INTO migration_runs (id, state, options, started_by) VALUES ($1, 'running', $2, $3)",
                &[&run_id, &options, &opts.started_by],
            )
            .await?;
        Ok(Self { client, run_id })
    }

    pub(super) async fn close(self, report: &RunReport) -> Result<(), RunError> {
        let state = if report.cancelled {
            "cancelled"
        } else if report.succeeded() {
            "finished"
        } else {
            "failed"
        };
        let summary = serde_json::to_value(&report.summary).unwrap_or_default();
        self.client
            .execute(
                "UPDATE migration_runs SET state = $2, summary = $3, finished_at = now() WHERE id = $1",
                &[&self.run_id, &state, &summary],
            )
            .await?;
        self.client
            .execute(
                "UPDATE migration_run_tenants SET status = 'skipped', finished_at = now()
                 WHERE run_id = $1 AND status IN ('pending', 'running')",
                &[&self.run_id],
            )
            .await?;
        self.client
            .execute(
                "SELECT pg_advisory_unlock(hashtext($1))",
                &[&run_lock(self.run_id)],
            )
            .await?;
        Ok(())
    }
}

/// The run's row of a tenant being migrated now.
pub(super) async fn mark_running(
    catalog: &Catalog,
    run_id: Uuid,
    tenant: Uuid,
) -> Result<(), RunError> {
    catalog
        .client()
        .await?
        .execute(
            "UPDATE migration_run_tenants SET status = 'running' WHERE run_id = $1 AND tenant_id = $2",
            &[&run_id, &tenant],
        )
        .await?;
    Ok(())
}

impl<C: Connector> Run<C> {
    /// Writes a tenant's result to the run's row (its version is already in `tenants`,
    /// written file by file); then, once per template and version in a run, the record
    /// of applied files.
    pub(super) async fn record_result(
        &mut self,
        target: &Target,
        report: TenantReport,
    ) -> TenantReport {
        if self.opts.dry_run {
            return report;
        }
        let write = async {
            self.catalog
                .client()
                .await?
                .execute(
                    "UPDATE migration_run_tenants SET status = $4,
                         from_version = coalesce($5, from_version), to_version = $3,
                         duration_ms = $6, error = $7, finished_at = now()
                     WHERE run_id = $1 AND tenant_id = $2",
                    &[
                        &self.run_id,
                        &target.id,
                        &report.to_version,
                        &report.status,
                        &report.from_version,
                        &(report.duration_ms as i64),
                        &report.error,
                    ],
                )
                .await?;
            if let (Some(to), "ok") = (report.to_version, report.status.as_str()) {
                let key = (target.template.clone(), to);
                if !self.recorded.contains(&key) {
                    history::record(&self.catalog, &self.templates[&target.template], to).await?;
                    self.recorded.insert(key);
                }
            }
            Ok::<_, RunError>(())
        };
        if let Err(e) = write.await {
            tracing::warn!(tenant = %target.slug, error = %e, "could not record the tenant's result");
        }
        report
    }
}

/// What the catalog says of a tenant now, read under its lock.
pub(super) struct Recorded {
    /// Its recorded schema version.
    pub version: i32,
    /// The file (version, tenant-database transaction) a runner was committing when it
    /// last stopped without recording it, if any.
    pub intent: Option<(i32, i64)>,
    /// The server it lives on now (a move may have changed it since the run's plan).
    pub server_id: i64,
    pub server: String,
}

pub(super) async fn recorded(catalog: &Catalog, tenant: Uuid) -> Result<Recorded, RunError> {
    let row = catalog
        .client()
        .await?
        .query_one(
            "SELECT t.schema_version, i.version, i.xid, s.id, s.name
             FROM tenants t JOIN servers s ON s.id = t.server_id
             LEFT JOIN migration_intents i ON i.tenant_id = t.id
             WHERE t.id = $1",
            &[&tenant],
        )
        .await?;
    let intent = match (row.get::<_, Option<i32>>(1), row.get::<_, Option<i64>>(2)) {
        (Some(version), Some(xid)) => Some((version, xid)),
        _ => None,
    };
    Ok(Recorded {
        version: row.get(0),
        intent,
        server_id: row.get(3),
        server: row.get(4),
    })
}

/// Before a file's transaction commits: its version and transaction id.
pub(super) async fn intend(
    catalog: &Catalog,
    run_id: Uuid,
    tenant: Uuid,
    version: i32,
    xid: i64,
) -> Result<(), RunError> {
    catalog
        .client()
        .await?
        .execute(
            "INSERT INTO migration_intents (tenant_id, run_id, version, xid) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id) DO UPDATE SET run_id = $2, version = $3, xid = $4, created_at = now()",
            &[&tenant, &run_id, &version, &xid],
        )
        .await?;
    Ok(())
}

/// After it committed: the tenant's version (routers learn it through NOTIFY), and the
/// intent gone, in one statement.
pub(super) async fn confirm(catalog: &Catalog, tenant: Uuid, version: i32) -> Result<(), RunError> {
    catalog
        .client()
        .await?
        .execute(
            "WITH settled AS (DELETE FROM migration_intents WHERE tenant_id = $1)
             UPDATE tenants SET schema_version = $2, updated_at = now()
             WHERE id = $1 AND schema_version < $2",
            &[&tenant, &version],
        )
        .await?;
    Ok(())
}

/// An intent whose transaction never committed.
pub(super) async fn withdraw(catalog: &Catalog, tenant: Uuid) -> Result<(), RunError> {
    catalog
        .client()
        .await?
        .execute(
            "DELETE FROM migration_intents WHERE tenant_id = $1",
            &[&tenant],
        )
        .await?;
    Ok(())
}

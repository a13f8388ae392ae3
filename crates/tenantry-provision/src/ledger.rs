//! The operations ledger: a row before a step acts (`started`), updated after it
//! (`done` or `failed`). Rows left `started` are what a crash interrupted.

use serde_json::Value;
use tenantry_catalog::Catalog;
use uuid::Uuid;

use crate::ProvisionError;

/// One step's ledger row.
pub(crate) struct Step {
    id: i64,
}

pub(crate) async fn start(
    catalog: &Catalog,
    tenant: Option<Uuid>,
    server: Option<i64>,
    kind: &str,
    step: &str,
    detail: Value,
) -> Result<Step, ProvisionError> {
    let client = catalog.client().await?;
    let row = client
        .query_one(
            "INSERT INTO operations (tenant_id, server_id, kind, step, status, detail)
             VALUES ($1, $2, $3, $4, 'started', $5) RETURNING id",
            &[&tenant, &server, &kind, &step, &detail],
        )
        .await?;
    Ok(Step { id: row.get(0) })
}

impl Step {
    /// The ledger row's id.
    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    pub(crate) async fn done(self, catalog: &Catalog) -> Result<(), ProvisionError> {
        let client = catalog.client().await?;
        client
            .execute(
                "UPDATE operations SET status = 'done', finished_at = now() WHERE id = $1",
                &[&self.id],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn failed(self, catalog: &Catalog, error: &str) {
        if let Ok(client) = catalog.client().await {
            let _ = client
                .execute(
                    "UPDATE operations SET status = 'failed', error = $2, finished_at = now() WHERE id = $1",
                    &[&self.id, &error],
                )
                .await;
        }
    }
}

/// Marks `tenant`'s interrupted (`started`) and failed rows `reconciled`, once
/// reconcile has dealt with them; returns the kinds of operation they belonged to.
pub(crate) async fn close_interrupted(
    catalog: &Catalog,
    tenant: Uuid,
) -> Result<(), ProvisionError> {
    let client = catalog.client().await?;
    client
        .execute(
            "UPDATE operations SET status = 'reconciled', error = coalesce(error, 'interrupted'),
                    finished_at = coalesce(finished_at, now())
             WHERE tenant_id = $1 AND status IN ('started', 'failed')",
            &[&tenant],
        )
        .await?;
    Ok(())
}

/// The kinds of `tenant`'s operations that a crash or an error left unfinished.
pub(crate) async fn unfinished_kinds(
    catalog: &Catalog,
    tenant: Uuid,
) -> Result<Vec<String>, ProvisionError> {
    let client = catalog.client().await?;
    Ok(client
        .query(
            "SELECT DISTINCT kind FROM operations WHERE tenant_id = $1 AND status IN ('started', 'failed')",
            &[&tenant],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

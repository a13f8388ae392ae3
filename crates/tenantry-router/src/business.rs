//! The fleet's business figures for `/metrics`, read from the catalog by one task every
//! `router.business_refresh_s`, never per scrape: tenants by plan and state, tenants
//! created and deleted, plan changes up and down, monthly recurring revenue by plan, and
//! this month's tasks and cost by agent. Fleet-level only: a tenant is never a label.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tenantry_catalog::Catalog;

/// What the catalog said at the last look.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// (plan, state, tenants).
    pub tenants: Vec<(String, String, i64)>,
    /// Tenants ever created (that got past creating) and deleted.
    pub created: i64,
    pub deleted: i64,
    /// (direction `up`/`down`/`lateral` by price, changes).
    pub plan_changes: Vec<(String, i64)>,
    /// (plan, ready tenants × the plan's monthly price in cents).
    pub mrr_cents: Vec<(String, i64)>,
    /// (agent, tasks, cost in cents) this month, as the routers flushed them.
    pub tasks: Vec<(String, i64, i64)>,
}

#[derive(Default)]
pub struct Business {
    figures: RwLock<Option<Figures>>,
}

const READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Business {
    /// The last figures read; `None` before the first look succeeded.
    pub fn figures(&self) -> Option<Figures> {
        self.figures
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the figures once; on failure the last ones stay.
    pub async fn refresh(&self, catalog: &Catalog) {
        match tokio::time::timeout(READ_TIMEOUT, read(catalog)).await {
            Ok(Ok(f)) => *self.figures.write().unwrap_or_else(|e| e.into_inner()) = Some(f),
            Ok(Err(e)) => tracing::warn!(error = %e, "business figures not refreshed"),
            Err(_) => {
                tracing::warn!("business figures not refreshed: the catalog did not answer in time")
            }
        }
    }

    pub fn spawn(
        self: &Arc<Self>,
        catalog: Catalog,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.refresh(&catalog).await;
            }
        })
    }
}

async fn read(catalog: &Catalog) -> Result<Figures, tenantry_catalog::CatalogError> {
    let client = catalog.client().await?;
    let tenants = client
        .query(
            "SELECT plan, state, count(*) FROM tenants GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state NOT IN ('requested', 'creating', 'failed')),
                    count(*) FILTER (WHERE deleted_at IS NOT NULL)
             FROM tenants",
            &[],
        )
        .await?;
    let plan_changes = client
        .query(
            "SELECT CASE WHEN t.price_cents > f.price_cents THEN 'up'
                         WHEN t.price_cents < f.price_cents THEN 'down' ELSE 'lateral' END,
                    count(*)
             FROM plan_changes c
             JOIN plans f ON f.name = c.from_plan JOIN plans t ON t.name = c.to_plan
             GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mrr_cents = client
        .query(
            "SELECT p.name, (count(t.id) * p.price_cents)::bigint
             FROM plans p LEFT JOIN tenants t ON t.plan = p.name AND t.state = 'ready'
             GROUP BY p.name, p.price_cents ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let tasks = client
        .query(
            "SELECT agent, sum(tasks)::bigint, sum(cost_cents)::bigint FROM task_counts
             WHERE period = date_trunc('month', now() AT TIME ZONE 'UTC')::date
             GROUP BY agent ORDER BY agent",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    Ok(Figures {
        tenants,
        created: row.get(0),
        deleted: row.get(1),
        plan_changes,
        mrr_cents,
        tasks,
    })
}

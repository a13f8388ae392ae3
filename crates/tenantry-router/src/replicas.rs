//! Router replicas: each heartbeats into the catalog, and every server's connection
//! budget (its `max_connections`) is split evenly among the live ones.

use std::time::Duration;

use tenantry_catalog::Catalog;
use tenantry_pools::Pools;
use uuid::Uuid;

/// Heartbeats and re-splits budgets every `every` until the task is aborted; the
/// replica's row is removed when it stops cleanly (`deregister`).
pub fn spawn(
    catalog: Catalog,
    pools: Pools,
    id: Uuid,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = beat(&catalog, &pools, id, every).await {
                tracing::warn!(error = %e, "router heartbeat failed; keeping the current budgets");
            }
        }
    })
}

/// One heartbeat: this replica's row refreshed, dead ones removed, budgets set.
pub async fn beat(
    catalog: &Catalog,
    pools: &Pools,
    id: Uuid,
    every: Duration,
) -> Result<(), tenantry_catalog::CatalogError> {
    let client = catalog.client().await?;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "router".into());
    client
        .execute(
            "INSERT INTO router_replicas (id, host) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            &[&id, &host],
        )
        .await?;
    let stale = every.as_secs_f64() * 3.0;
    client
        .execute(
            "DELETE FROM router_replicas WHERE heartbeat_at < now() - make_interval(secs => $1)",
            &[&stale],
        )
        .await?;
    let live: i64 = client
        .query_one("SELECT count(*) FROM router_replicas", &[])
        .await?
        .get(0);
    let live = live.max(1) as usize;
    for row in client
        .query("SELECT id, max_connections FROM servers", &[])
        .await?
    {
        let max: i32 = row.get(1);
        pools.set_budget(row.get(0), (max as usize / live).max(1));
    }
    Ok(())
}

pub async fn deregister(catalog: &Catalog, id: Uuid) {
    if let Ok(client) = catalog.client().await {
        let _ = client
            .execute("DELETE FROM router_replicas WHERE id = $1", &[&id])
            .await;
    }
}

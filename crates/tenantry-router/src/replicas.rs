//! Router replicas: each heartbeats into the catalog, and every server's connection
//! budget (its `max_connections`), every tenant's pool size and every tenant's request
//! rate are split among the live ones.
//!
//! Each live replica takes `max_connections / (live + 1)`: one share is kept free for a
//! replica that joins. A newcomer takes its share at once, while the others shrink only
//! at their next heartbeat; with the spare share, n replicas plus one newcomer hold at
//! most n/(n+1) + 1/(n+2) < 1 of the budget, so a join never pushes a server over it.
//!
//! A tenant's pool on each replica is `max(1, plan pool size / live)`
//! ([`Pools::plan_share`]), and its rate `ceil(plan rate / live)` a minute: the role's
//! `CONNECTION LIMIT` (plan pool size + 2) holds the replicas' pools together while at
//! most pool size + 2 replicas live. A tenant meets the role's limit (SQLSTATE 53300)
//! beyond that, or for a heartbeat after a replica joins (the others shrink at their
//! next beat, and their reaper within a second): its requests wait for a connection
//! within `router.pool_wait_ms`, as for a full pool, and only then get 503.

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
        // The first beat was taken at start-up (`AppState::start`): the next is one period on.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
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
    // Set before the budgets: a budget read from /metrics says this count is in force.
    pools.set_replicas(live.max(1) as usize);
    // One share stays free for a replica that joins (see the module's notes).
    let shares = live.max(1) as usize + 1;
    for row in client
        .query("SELECT id, max_connections FROM servers", &[])
        .await?
    {
        let max: i32 = row.get(1);
        pools.set_budget(row.get(0), (max as usize / shares).max(1));
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

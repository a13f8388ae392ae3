//! Router replicas: each heartbeats into the catalog, and every server's connection
//! budget (its `max_connections`), every tenant's pool size and every tenant's request
//! rate are split among the live ones.
//!
//! **Budget leases.** A replica holds at most its lease's connections to a server, and
//! the leases on a server never add up past its `max_connections`:
//! - each heartbeat, a replica's fair share is `max_connections / live`; it raises its
//!   lease towards it only in a transaction holding the server row's lock, within what
//!   the other leases leave unclaimed, and raises its own budget only after that commits;
//! - above its share (a replica joined), it lowers its own budget first, closes its idle
//!   connections over it, and lowers its lease to the larger of the share and the
//!   connections it still holds (requests in flight); the rest follow at the next beat;
//! - a replica short of its share, or one that gave some back, says so on the catalog's
//!   `tenantry_budget` channel, and every replica beats at once: a joiner gets its share
//!   within milliseconds, not a heartbeat later;
//! - a stopped replica's row goes, and its leases with it (a replica that went quiet for
//!   three heartbeats too: its process is gone, and the server closed its sessions) —
//!   but a running replica judges the others dead only once its own beats have gone
//!   through without a break for a heartbeat and a half: after a catalog outage or
//!   failover every heartbeat is old, and the first replica back must not take the
//!   leases of the others, which are still serving and beat again within a heartbeat.
//!   A starting replica's first beat does judge (a restart after a crash must not wait
//!   for its dead predecessor's lease).
//!
//! A lone router therefore uses the whole budget, and a join or a death never takes the
//! sum of the replicas' connections past it (what a replica holds never exceeds its
//! lease). A replica cut off from the catalog keeps its budget (it goes on serving the
//! tenants it knows); if the others drop its row meanwhile, they may claim its lease
//! while it still holds connections, until it beats again and gives them back.
//!
//! A tenant's pool on each replica is `max(1, plan pool size / live)`
//! ([`Pools::plan_share`]), and its rate `ceil(plan rate / live)` a minute: the role's
//! `CONNECTION LIMIT` (plan pool size + 2) holds the replicas' pools together while at
//! most pool size + 2 replicas live. A tenant meets the role's limit (SQLSTATE 53300)
//! beyond that, or for a heartbeat after a replica joins (the others shrink at their
//! next beat, and their reaper within a second): its requests wait for a connection
//! within `router.pool_wait_ms`, as for a full pool, and only then get 503.

use std::sync::Arc;
use std::time::Duration;

use tenantry_catalog::Catalog;
use tenantry_pools::Pools;
use tokio::sync::Notify;
use uuid::Uuid;

/// The channel replicas call each other on about budgets.
pub const BUDGET_CHANNEL: &str = "tenantry_budget";

/// Heartbeats and re-splits budgets every `every`, and at once when another replica
/// calls on [`BUDGET_CHANNEL`] (`called`), when a request needs a server this replica
/// has no budget for yet, or (every 250 ms) while this replica is short of its share;
/// until the task is aborted. The replica's row is removed when it stops cleanly
/// (`deregister`).
pub fn spawn(
    catalog: Catalog,
    pools: Pools,
    id: Uuid,
    every: Duration,
    called: Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The first beat was taken at start-up (`AppState::start`).
        let mut next = tokio::time::Instant::now() + every;
        let mut last_call: Option<tokio::time::Instant> = None;
        // Since when this replica's beats have all gone through.
        let mut beating_since = Some(tokio::time::Instant::now());
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = called.notified() => {}
                _ = pools.budget_wanted() => {}
            }
            // A call to others when short, at most once a heartbeat: the shortfall
            // is theirs to give back, and asking again before they could is noise.
            let may_call = last_call.is_none_or(|t| t.elapsed() >= every);
            next = tokio::time::Instant::now() + every;
            let since = *beating_since.get_or_insert_with(tokio::time::Instant::now);
            let may_reap = since.elapsed() >= every * 3 / 2;
            match beat(&catalog, &pools, id, every, may_call, may_reap).await {
                Ok(beat) => {
                    if beat.called && beat.short {
                        last_call = Some(tokio::time::Instant::now());
                    }
                    if beat.short {
                        next = next.min(tokio::time::Instant::now() + SHORT_RETRY);
                    }
                }
                Err(e) => {
                    beating_since = None;
                    tracing::warn!(error = %e, "router heartbeat failed; keeping the current budgets");
                }
            }
        }
    })
}

/// While short of its share, a replica asks again this often.
const SHORT_RETRY: Duration = Duration::from_millis(250);

/// What one heartbeat found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Beat {
    /// Below its fair share on some server (the others hold the rest).
    pub short: bool,
    /// Gave part of a lease back.
    pub released: bool,
    /// Called on the other replicas.
    pub called: bool,
}

/// One heartbeat: this replica's row refreshed, dead ones removed, leases and budgets
/// set. `may_call`: whether a shortfall may be told to the others now; `may_reap`:
/// whether replicas silent for three heartbeats are removed (see the module's notes).
pub async fn beat(
    catalog: &Catalog,
    pools: &Pools,
    id: Uuid,
    every: Duration,
    may_call: bool,
    may_reap: bool,
) -> Result<Beat, tenantry_catalog::CatalogError> {
    let mut client = catalog.client().await?;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "router".into());
    client
        .execute(
            "INSERT INTO router_replicas (id, host) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            &[&id, &host],
        )
        .await?;
    if may_reap {
        let stale = every.as_secs_f64() * 3.0;
        client
            .execute(
                "DELETE FROM router_replicas WHERE heartbeat_at < now() - make_interval(secs => $1)",
                &[&stale],
            )
            .await?;
    }
    let live: i64 = client
        .query_one("SELECT count(*) FROM router_replicas", &[])
        .await?
        .get(0);
    let live = live.max(1) as usize;
    // Set before the budgets: a budget read from /metrics says this count is in force.
    pools.set_replicas(live);
    let servers: Vec<i64> = client
        .query("SELECT id FROM servers ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut beat = Beat::default();
    for server in servers {
        let (short, released) = lease(&mut client, pools, id, server, live).await?;
        beat.short |= short;
        beat.released |= released;
    }
    if beat.released || (beat.short && may_call) {
        client
            .execute("SELECT pg_notify($1, '')", &[&BUDGET_CHANNEL])
            .await?;
        beat.called = true;
    }
    Ok(beat)
}

/// Sets this replica's lease and budget on one server (see the module's notes);
/// whether it is short of its share, and whether it gave part of its lease back.
async fn lease(
    client: &mut tokio_postgres::Client,
    pools: &Pools,
    id: Uuid,
    server: i64,
    live: usize,
) -> Result<(bool, bool), tenantry_catalog::CatalogError> {
    let tx = client.transaction().await?;
    let Some(row) = tx
        .query_opt(
            "SELECT max_connections FROM servers WHERE id = $1 FOR UPDATE",
            &[&server],
        )
        .await?
    else {
        return Ok((false, false));
    };
    let max = row.get::<_, i32>(0).max(0) as usize;
    let row = tx
        .query_one(
            "SELECT coalesce(sum(connections) FILTER (WHERE replica_id <> $2), 0)::int8,
                    coalesce(max(connections) FILTER (WHERE replica_id = $2), 0)::int8
             FROM budget_leases WHERE server_id = $1",
            &[&server, &id],
        )
        .await?;
    let others = row.get::<_, i64>(0).max(0) as usize;
    let mine = row.get::<_, i64>(1).max(0) as usize;
    let share = max / live;
    let allowed = share.min(max.saturating_sub(others));
    // Lowered here first: the lease may only shrink to what this replica still holds.
    // (A server new to this replica starts at nothing until its lease is in.)
    match pools.budget_limit(server) {
        None => pools.set_budget(server, 0),
        Some(l) if allowed < l => pools.set_budget(server, allowed),
        Some(_) => {}
    }
    let lease = if allowed >= mine {
        allowed
    } else {
        allowed.max(pools.held(server).min(mine))
    };
    if lease != mine {
        tx.execute(
            "INSERT INTO budget_leases (replica_id, server_id, connections) VALUES ($1, $2, $3)
             ON CONFLICT (replica_id, server_id) DO UPDATE SET connections = excluded.connections",
            &[&id, &server, &(lease as i32)],
        )
        .await?;
    }
    tx.commit().await?;
    // Raised only once the lease that covers it is in the catalog.
    if pools.budget_limit(server).is_some_and(|l| allowed > l) {
        pools.set_budget(server, allowed);
    }
    Ok((allowed < share, lease < mine))
}

/// Gives every lease back as the replica stops: its connections are closed first (for
/// up to two seconds: requests in flight have ended by now), so no other replica claims
/// connections this one still holds; then its row (and its leases) go, and the others
/// are called to take them up.
pub async fn deregister(catalog: &Catalog, pools: &Pools, id: Uuid) {
    let servers: Vec<i64> = pools.usage().iter().map(|u| u.server).collect();
    for &server in &servers {
        pools.set_budget(server, 0);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while servers.iter().any(|&s| pools.held(s) > 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Ok(client) = catalog.client().await {
        let _ = client
            .execute("DELETE FROM router_replicas WHERE id = $1", &[&id])
            .await;
        let _ = client
            .execute("SELECT pg_notify($1, '')", &[&BUDGET_CHANNEL])
            .await;
    }
}

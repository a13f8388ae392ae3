//! Metering at the edge: API requests per (tenant, month, route template, status class)
//! and tasks per (tenant, month, agent) with their cost, counted in memory and added to
//! the catalog by one batched upsert per interval and once more at shutdown — never a
//! catalog write per request. A flush that fails keeps its counts for the next one.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use tenantry_catalog::Catalog;
use tenantry_metering::Period;
use uuid::Uuid;

type RequestKey = (Uuid, NaiveDate, &'static str, &'static str);
type TaskKey = (Uuid, NaiveDate, &'static str);

#[derive(Default)]
struct Counts {
    requests: HashMap<RequestKey, i64>,
    /// Tasks and their cost in cents.
    tasks: HashMap<TaskKey, (i64, i64)>,
}

impl Counts {
    fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.tasks.is_empty()
    }

    fn add(&mut self, other: Counts) {
        for (k, n) in other.requests {
            *self.requests.entry(k).or_default() += n;
        }
        for (k, (n, cost)) in other.tasks {
            let e = self.tasks.entry(k).or_default();
            e.0 += n;
            e.1 += cost;
        }
    }
}

/// This router's counts not yet in the catalog.
#[derive(Default)]
pub struct Meter {
    counts: Mutex<Counts>,
}

/// The tenant a request is billed to, once its token's tenant is resolved: set by
/// [`crate::tenant::TenantCtx`], read by the request's metrics middleware. A request
/// that resolves no tenant is billed to no one.
#[derive(Debug, Clone, Default)]
pub(crate) struct Billed(Rc<Cell<Option<Uuid>>>);

impl Billed {
    pub(crate) fn set(&self, tenant: Uuid) {
        self.0.set(Some(tenant));
    }

    pub(crate) fn get(&self) -> Option<Uuid> {
        self.0.get()
    }
}

fn status_class(status: u16) -> Option<&'static str> {
    Some(match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => return None,
    })
}

fn this_month() -> NaiveDate {
    Period::of(Utc::now()).first_day()
}

impl Meter {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One request of `tenant` on `route` (the route template) answered with `status`.
    pub fn request(&self, tenant: Uuid, route: &'static str, status: u16) {
        let Some(class) = status_class(status) else {
            return;
        };
        let key = (tenant, this_month(), route, class);
        *self.counts().requests.entry(key).or_default() += 1;
    }

    /// A task of `tenant`, committed.
    pub fn task(&self, tenant: Uuid, agent: &'static str, cost_cents: i64) {
        let mut counts = self.counts();
        let e = counts
            .tasks
            .entry((tenant, this_month(), agent))
            .or_default();
        e.0 += 1;
        e.1 += cost_cents;
    }

    /// Adds the counts to the catalog in one transaction. On failure they are kept (added
    /// back to what was counted meanwhile) for the next flush — unless the catalog says
    /// the transaction committed after all (its answer lost with the connection).
    pub async fn flush(&self, catalog: &Catalog) -> Result<(), tenantry_catalog::CatalogError> {
        let taken = std::mem::take(&mut *self.counts());
        if taken.is_empty() {
            return Ok(());
        }
        let mut xid = None;
        match write(catalog, &taken, &mut xid).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Some(xid) = xid {
                    if committed(catalog, xid).await {
                        tracing::info!("a usage flush whose answer was lost had committed");
                        return Ok(());
                    }
                }
                self.counts().add(taken);
                Err(e)
            }
        }
    }

    /// Flushes every `every` until `stop` says so, then once more.
    pub fn spawn_flusher(
        self: &std::sync::Arc<Self>,
        catalog: Catalog,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let meter = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                if let Err(e) = meter.flush(&catalog).await {
                    tracing::warn!(error = %e, "usage counts not flushed; kept for the next flush");
                }
            }
            if let Err(e) = meter.flush(&catalog).await {
                tracing::error!(error = %e, "usage counts could not be flushed at shutdown");
            }
        })
    }
}

/// One upsert per table, adding to what other routers (and earlier flushes) counted.
/// Counts of a tenant whose catalog row is gone are dropped (they bill no one).
/// `xid` is set to the transaction's id before it commits.
async fn write(
    catalog: &Catalog,
    counts: &Counts,
    xid: &mut Option<i64>,
) -> Result<(), tenantry_catalog::CatalogError> {
    let mut client = catalog.client().await?;
    let tx = client.transaction().await?;
    if !counts.requests.is_empty() {
        let (mut ids, mut periods, mut routes, mut classes, mut ns) =
            (vec![], vec![], vec![], vec![], vec![]);
        for ((id, period, route, class), n) in &counts.requests {
            ids.push(*id);
            periods.push(*period);
            routes.push(*route);
            classes.push(*class);
            ns.push(*n);
        }
        tx.execute(
            "INSERT INTO api_request_counts AS c (tenant_id, period, route, status_class, count)
             SELECT u.* FROM unnest($1::uuid[], $2::date[], $3::text[], $4::text[], $5::bigint[])
                 AS u(tenant_id, period, route, status_class, count)
             WHERE EXISTS (SELECT 1 FROM tenants t WHERE t.id = u.tenant_id)
             ON CONFLICT (tenant_id, period, route, status_class)
             DO UPDATE SET count = c.count + excluded.count, updated_at = now()",
            &[&ids, &periods, &routes, &classes, &ns],
        )
        .await?;
    }
    if !counts.tasks.is_empty() {
        let (mut ids, mut periods, mut agents, mut ns, mut costs) =
            (vec![], vec![], vec![], vec![], vec![]);
        for ((id, period, agent), (n, cost)) in &counts.tasks {
            ids.push(*id);
            periods.push(*period);
            agents.push(*agent);
            ns.push(*n);
            costs.push(*cost);
        }
        tx.execute(
            "INSERT INTO task_counts AS c (tenant_id, period, agent, tasks, cost_cents)
             SELECT u.* FROM unnest($1::uuid[], $2::date[], $3::text[], $4::bigint[], $5::bigint[])
                 AS u(tenant_id, period, agent, tasks, cost_cents)
             WHERE EXISTS (SELECT 1 FROM tenants t WHERE t.id = u.tenant_id)
             ON CONFLICT (tenant_id, period, agent)
             DO UPDATE SET tasks = c.tasks + excluded.tasks,
                           cost_cents = c.cost_cents + excluded.cost_cents, updated_at = now()",
            &[&ids, &periods, &agents, &ns, &costs],
        )
        .await?;
    }
    *xid = Some(
        tx.query_one("SELECT pg_current_xact_id()::text::int8", &[])
            .await?
            .get(0),
    );
    tx.commit().await?;
    Ok(())
}

/// Whether transaction `xid` committed, asked on another connection; `false` when the
/// catalog cannot say (the counts are then kept, and may be added twice).
async fn committed(catalog: &Catalog, xid: i64) -> bool {
    let Ok(client) = catalog.client().await else {
        return false;
    };
    client
        .query_one(
            "SELECT pg_xact_status($1::int8::text::xid8) IS NOT DISTINCT FROM 'committed'",
            &[&xid],
        )
        .await
        .is_ok_and(|r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_by_key_and_a_failed_flush_keeps_them() {
        let m = Meter::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        m.request(a, "/v1/tasks/{id}", 200);
        m.request(a, "/v1/tasks/{id}", 204);
        m.request(a, "/v1/tasks/{id}", 404);
        m.request(b, "/v1/tasks", 201);
        m.request(b, "/v1/tasks", 999);
        m.task(a, "codex", 10);
        m.task(a, "codex", 10);
        let taken = std::mem::take(&mut *m.counts());
        let month = this_month();
        assert_eq!(taken.requests[&(a, month, "/v1/tasks/{id}", "2xx")], 2);
        assert_eq!(taken.requests[&(a, month, "/v1/tasks/{id}", "4xx")], 1);
        assert_eq!(taken.requests.len(), 3);
        assert_eq!(taken.tasks[&(a, month, "codex")], (2, 20));
        // Counted meanwhile, then the failed batch comes back: nothing lost, nothing twice.
        m.task(a, "codex", 10);
        m.counts().add(taken);
        assert_eq!(m.counts().tasks[&(a, month, "codex")], (3, 30));
        assert_eq!(m.counts().requests.len(), 3);
    }
}

//! The export of a period: the catalog's counts (what routers flushed) and plan history,
//! and each live tenant's own count of its tasks, read from its database as the tenant's
//! login over the fleet's fan-out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tenantry_catalog::Catalog;
use tenantry_migrate::fanout::{FanOut, Limits};
use tenantry_migrate::runner::Connector;
use tenantry_types::Agent;
use uuid::Uuid;

use crate::record::{days, plan_seconds, Change};
use crate::{Meter, MeteringError, Period, Record};

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub period: Period,
    /// Tenant databases read at once, overall and on one server.
    pub concurrency: usize,
    pub per_server: usize,
}

impl ExportOptions {
    pub fn new(period: Period) -> Self {
        Self {
            period,
            concurrency: 32,
            per_server: 8,
        }
    }
}

/// A tenant whose database could not be read: none of its records are in the export,
/// so a later export (same keys) bills it once, in full.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TenantError {
    pub tenant_id: Uuid,
    pub slug: String,
    pub server: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Export {
    pub period: String,
    /// Tenants that existed in the period.
    pub tenants: usize,
    pub records: Vec<Record>,
    pub errors: Vec<TenantError>,
    #[serde(skip)]
    pub duration_ms: u64,
}

impl Export {
    pub fn complete(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A tenant of the period, as the catalog knows it.
#[derive(Debug, Clone)]
struct Tenant {
    id: Uuid,
    slug: String,
    plan: String,
    state: String,
    server_id: Option<i64>,
    server: String,
    database: String,
    created_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

/// Tasks and their cost, by agent.
type ByAgent = BTreeMap<String, (i64, i64)>;

/// The tenant's sessions read, never write, and give up rather than hold the export.
const TENANT_OPTIONS: &str =
    "-c default_transaction_read_only=on -c statement_timeout=10000 -c lock_timeout=2000";

/// Reads the period's usage. `Err` only when the catalog cannot be read; tenants whose
/// databases cannot be reached are in `errors`, and left out of `records`.
pub async fn export<C: Connector>(
    catalog: &Catalog,
    connector: Arc<C>,
    opts: &ExportOptions,
) -> Result<Export, MeteringError> {
    let started = Instant::now();
    let period = opts.period;
    let (start, end) = (period.start(), period.end());
    let client = catalog.client().await?;
    let tenants: Vec<Tenant> = client
        .query(
            "SELECT t.id, t.slug, t.plan, t.state, t.server_id, coalesce(s.name, ''),
                    t.database_name, t.created_at, t.deleted_at
             FROM tenants t LEFT JOIN servers s ON s.id = t.server_id
             WHERE t.created_at < $2 AND (t.deleted_at IS NULL OR t.deleted_at >= $1)
               AND t.state NOT IN ('requested', 'creating', 'failed')
             ORDER BY t.slug, t.created_at",
            &[&start, &end],
        )
        .await?
        .iter()
        .map(|r| Tenant {
            id: r.get(0),
            slug: r.get(1),
            plan: r.get(2),
            state: r.get(3),
            server_id: r.get(4),
            server: r.get(5),
            database: r.get(6),
            created_at: r.get(7),
            deleted_at: r.get(8),
        })
        .collect();
    let ids: Vec<Uuid> = tenants.iter().map(|t| t.id).collect();

    let mut changes: HashMap<Uuid, Vec<Change>> = HashMap::new();
    for r in client
        .query(
            "SELECT tenant_id, from_plan, to_plan, changed_at FROM plan_changes
             WHERE tenant_id = ANY($1) AND changed_at < $2 ORDER BY tenant_id, changed_at, id",
            &[&ids, &end],
        )
        .await?
    {
        changes.entry(r.get(0)).or_default().push(Change {
            from_plan: r.get(1),
            to_plan: r.get(2),
            at: r.get(3),
        });
    }
    let mut counted: HashMap<Uuid, ByAgent> = HashMap::new();
    for r in client
        .query(
            "SELECT tenant_id, agent, tasks, cost_cents FROM task_counts WHERE period = $1",
            &[&period.first_day()],
        )
        .await?
    {
        counted
            .entry(r.get(0))
            .or_default()
            .insert(r.get(1), (r.get(2), r.get(3)));
    }
    let mut requests: HashMap<Uuid, Vec<(String, String, i64)>> = HashMap::new();
    for r in client
        .query(
            "SELECT tenant_id, route, status_class, count FROM api_request_counts
             WHERE period = $1 ORDER BY route, status_class",
            &[&period.first_day()],
        )
        .await?
    {
        requests
            .entry(r.get(0))
            .or_default()
            .push((r.get(1), r.get(2), r.get(3)));
    }
    drop(client);

    // Each live tenant's own count, from its database. A suspended tenant's CONNECT is
    // revoked and a deleted one's database is going: theirs are the routers' counts.
    let own = read_tenants(&tenants, connector, opts).await;

    let mut records = Vec::new();
    let mut errors = Vec::new();
    for t in &tenants {
        let own = match own.get(&t.id) {
            Some(Err(error)) => {
                errors.push(TenantError {
                    tenant_id: t.id,
                    slug: t.slug.clone(),
                    server: t.server.clone(),
                    error: error.clone(),
                });
                continue;
            }
            Some(Ok(own)) => own.clone(),
            None => ByAgent::new(),
        };
        // Per agent, the larger of the routers' count and the tenant's own: a tenant
        // that edits its database cannot lower its bill, and what a crashed router never
        // flushed is still billed.
        let mut tasks = counted.remove(&t.id).unwrap_or_default();
        for (agent, (n, cost)) in own {
            let e = tasks.entry(agent).or_default();
            *e = (e.0.max(n), e.1.max(cost));
        }
        for (agent, (n, cost)) in &tasks {
            let dim = [("agent", agent.as_str())];
            if *n > 0 {
                records.push(Record::new(
                    t.id,
                    &t.slug,
                    period,
                    Meter::Tasks,
                    &dim,
                    (*n).into(),
                ));
            }
            if *cost > 0 {
                records.push(Record::new(
                    t.id,
                    &t.slug,
                    period,
                    Meter::TaskCostCents,
                    &dim,
                    (*cost).into(),
                ));
            }
        }
        for (route, class, n) in requests.remove(&t.id).unwrap_or_default() {
            if n > 0 {
                records.push(Record::new(
                    t.id,
                    &t.slug,
                    period,
                    Meter::ApiRequests,
                    &[("route", &route), ("status_class", &class)],
                    n.into(),
                ));
            }
        }
        // To the period's end unless deleted before: a month under way is billed for
        // the plan held now, as a subscription is, and two exports agree.
        let from = start.max(t.created_at);
        let to = end.min(t.deleted_at.unwrap_or(end));
        let history = changes.remove(&t.id).unwrap_or_default();
        for (plan, seconds) in plan_seconds(&history, &t.plan, from, to) {
            records.push(Record::new(
                t.id,
                &t.slug,
                period,
                Meter::PlanDays,
                &[("plan", &plan)],
                days(seconds),
            ));
        }
    }
    Ok(Export {
        period: period.to_string(),
        tenants: tenants.len(),
        records,
        errors,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Reads the ready tenants' own counts, `concurrency` at once and `per_server` per
/// server.
async fn read_tenants<C: Connector>(
    tenants: &[Tenant],
    connector: Arc<C>,
    opts: &ExportOptions,
) -> HashMap<Uuid, Result<ByAgent, String>> {
    let period = opts.period;
    let mut fan = FanOut::new(
        Limits {
            concurrency: opts.concurrency,
            per_server: opts.per_server,
        },
        move |t: Tenant| {
            let connector = connector.clone();
            async move { own_counts(connector.as_ref(), &t, period).await }
        },
    );
    for t in tenants {
        if let (Some(server), "ready") = (t.server_id, t.state.as_str()) {
            fan.push(t.clone(), server);
        }
    }
    let mut out = HashMap::new();
    while let Some((t, result)) = fan.next().await {
        let result = result.unwrap_or_else(|e| {
            tracing::error!(tenant = %t.slug, error = %e, "reading a tenant's usage panicked");
            Err("reading this tenant failed (a bug); see the log".into())
        });
        out.insert(t.id, result);
    }
    out
}

/// The tenant's tasks of the period by agent, read on a session of its own login role:
/// the database is the tenant's, and whatever it planted there (a view in place of
/// `tasks`, a function) runs with the tenant's rights only. What it returns can only
/// raise its bill (the routers' counts are the floor). A database that cannot be reached
/// is an error; one whose query fails (the tenant dropped or broke its table) counts
/// nothing.
async fn own_counts<C: Connector>(
    connector: &C,
    t: &Tenant,
    period: Period,
) -> Result<ByAgent, String> {
    let server = t.server_id.ok_or("the tenant has no server")?;
    let client = connector
        .connect_as_tenant(server, t.id, &t.database, TENANT_OPTIONS)
        .await
        .map_err(|e| format!("cannot reach the tenant's database: {e}"))?;
    let rows = match client
        .query(
            "SELECT agent::text, count(*)::bigint, coalesce(sum(cost_cents), 0)::bigint
             FROM tasks WHERE created_at >= $1 AND created_at < $2 GROUP BY 1",
            &[&period.start(), &period.end()],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) if e.is_closed() || e.as_db_error().is_none() => {
            return Err(format!(
                "lost the tenant's database: {}",
                tenantry_catalog::describe_pg_error(&e)
            ))
        }
        Err(e) => {
            tracing::warn!(tenant = %t.slug, error = %tenantry_catalog::describe_pg_error(&e), "the tenant's tasks could not be counted; its routers' counts are billed");
            return Ok(ByAgent::new());
        }
    };
    let mut out = ByAgent::new();
    for r in rows {
        let (Ok(Some(agent)), Ok(n), Ok(cost)) = (
            r.try_get::<_, Option<String>>(0),
            r.try_get::<_, i64>(1),
            r.try_get::<_, i64>(2),
        ) else {
            continue;
        };
        // Only agents the product has.
        if agent.parse::<Agent>().is_ok() {
            out.insert(agent, (n.max(0), cost.max(0)));
        }
    }
    Ok(out)
}

//! The admin API's read views of the fleet, for the operator console (and scripts): the
//! fleet's figures, tenants searched and paged with this month's counts, migration runs
//! with their per-tenant results, and the ledger's steps. Catalog reads only.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::edge::resource;
use actix_web::{web, HttpResponse};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::auth::AdminAuth;
use crate::error::{storable_opt, storable_text};
use crate::{ApiError, AppState, ErrorCode};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/admin/v1/fleet").route(web::get().to(fleet)));
    cfg.service(resource("/admin/v1/fleet/tenants").route(web::get().to(fleet_tenants)));
    cfg.service(resource("/admin/v1/migration-runs").route(web::get().to(migration_runs)));
    cfg.service(resource("/admin/v1/migration-runs/{id}").route(web::get().to(migration_run)));
    cfg.service(resource("/admin/v1/operations").route(web::get().to(operations)));
    cfg.service(resource("/admin/v1/operations/{id}").route(web::get().to(operation)));
}

/// Operation statuses the ledger writes (`operations.status`).
pub(crate) const OPERATION_STATUSES: [&str; 4] = ["started", "done", "failed", "reconciled"];

/// Page sizes of these views: 1 to `MAX_LIMIT`, default `DEFAULT_LIMIT`.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 200;

fn unavailable(e: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "admin view: the catalog did not answer");
    ApiError::new(
        ErrorCode::Unavailable,
        "the catalog cannot be read now; retry shortly",
    )
    .retry_after(2)
}

async fn query(
    state: &AppState,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, ApiError> {
    let client = state.catalog.client().await.map_err(|e| unavailable(&e))?;
    client.query(sql, params).await.map_err(|e| unavailable(&e))
}

fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    let limit = requested.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("limit must be 1 to {MAX_LIMIT}"),
        ))
    }
}

/// A cursor is the last item's sort key (`a|b`), base64url so it is opaque.
fn encode_cursor(a: &str, b: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{a}|{b}"))
}

fn decode_cursor<A: std::str::FromStr, B: std::str::FromStr>(
    text: Option<&str>,
) -> Result<Option<(A, B)>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    let bad = || {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "cursor is not one this API gave out",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (a, b) = raw.split_once('|').ok_or_else(bad)?;
    Ok(Some((
        a.parse().map_err(|_| bad())?,
        b.parse().map_err(|_| bad())?,
    )))
}

/// Rows past `limit` mean another page: the page is cut, and its last item's key given.
fn page<T: Serialize>(mut items: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(key)
    } else {
        None
    };
    Page { items, next_cursor }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

// ---- fleet ----

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct FleetServer {
    name: String,
    state: String,
    capacity: i32,
    max_connections: i32,
    /// Tenants whose database lives there (soft-deleted ones until purged).
    tenants: i64,
    /// Connections this router may hold to the server (its share of the budget).
    budget: Option<usize>,
    /// Connections this router holds to it now, and requests waiting for one.
    connections_in_use: Option<usize>,
    waiting: Option<usize>,
    /// Whether tenants can move off it online (logical replication): `yes`, `no: ` and
    /// what the server lacks (`wal_level`, a replication slot, a WAL sender), or
    /// `unknown: ` and why (the server did not answer).
    #[schema(example = "no: wal_level is replica, not logical")]
    logical_replication: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PlanRevenue {
    plan: String,
    price_cents: i32,
    ready_tenants: i64,
    monthly_cents: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Fleet {
    servers: Vec<FleetServer>,
    /// Tenants by state, then plan.
    #[schema(value_type = Object)]
    tenants: BTreeMap<String, BTreeMap<String, i64>>,
    /// Ready tenants × their plan's monthly price, per plan.
    revenue: Vec<PlanRevenue>,
    monthly_revenue_cents: i64,
    /// Live routers sharing each server's budget.
    routers: usize,
}

const FLEET_SERVERS: &str = "
    SELECT s.id, s.name, s.state, s.capacity, s.max_connections,
           count(t.id) FILTER (WHERE t.state <> 'failed' AND t.purged_at IS NULL)
    FROM servers s LEFT JOIN tenants t ON t.server_id = s.id
    GROUP BY s.id ORDER BY s.name";

const FLEET_TENANTS: &str = "SELECT state, plan, count(*) FROM tenants GROUP BY state, plan";

const FLEET_REVENUE: &str = "
    SELECT p.name, p.price_cents, count(t.id) FILTER (WHERE t.state = 'ready')
    FROM plans p LEFT JOIN tenants t ON t.plan = p.name
    GROUP BY p.name, p.price_cents, p.priority ORDER BY p.priority, p.name";

/// The fleet at a glance: servers, tenants by state and plan, monthly revenue.
#[utoipa::path(get, path = "/admin/v1/fleet", tag = "admin",
    responses((status = 200, body = Fleet), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse), (status = 503, description = "the catalog cannot be read", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn fleet(state: web::Data<AppState>, _: AdminAuth) -> Result<HttpResponse, ApiError> {
    let usage = state.pools.usage();
    let mut online = state
        .provisioner
        .online_move_capability(Duration::from_secs(2))
        .await
        .unwrap_or_default();
    let servers = query(&state, FLEET_SERVERS, &[])
        .await?
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let name: String = r.get(1);
            let used = usage.iter().find(|u| u.server == id);
            let logical_replication = match online.iter().position(|(n, _)| *n == name) {
                Some(i) => match online.swap_remove(i).1 {
                    Ok(None) => "yes".to_owned(),
                    Ok(Some(lacks)) => format!("no: {lacks}"),
                    Err(e) => {
                        tracing::warn!(server = %name, error = %e, "replication settings not read");
                        "unknown: the server did not answer".to_owned()
                    }
                },
                None => "unknown: the server was added meanwhile".to_owned(),
            };
            FleetServer {
                name,
                state: r.get(2),
                capacity: r.get(3),
                max_connections: r.get(4),
                tenants: r.get(5),
                budget: used.map(|u| u.budget),
                connections_in_use: used.map(|u| u.open),
                waiting: used.map(|u| u.waiting),
                logical_replication,
            }
        })
        .collect();
    let mut tenants: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for r in query(&state, FLEET_TENANTS, &[]).await? {
        tenants
            .entry(r.get(0))
            .or_default()
            .insert(r.get(1), r.get(2));
    }
    let revenue: Vec<PlanRevenue> = query(&state, FLEET_REVENUE, &[])
        .await?
        .iter()
        .map(|r| {
            let price_cents: i32 = r.get(1);
            let ready_tenants: i64 = r.get(2);
            PlanRevenue {
                plan: r.get(0),
                price_cents,
                ready_tenants,
                monthly_cents: ready_tenants * i64::from(price_cents),
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(Fleet {
        servers,
        tenants,
        monthly_revenue_cents: revenue.iter().map(|p| p.monthly_cents).sum(),
        revenue,
        routers: state.pools.replicas(),
    }))
}

// ---- tenants ----

#[derive(Debug, Deserialize)]
struct TenantsQuery {
    q: Option<String>,
    state: Option<String>,
    plan: Option<String>,
    server: Option<String>,
    schema_version: Option<i32>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TenantRow {
    id: Uuid,
    slug: String,
    plan: String,
    template: String,
    server: Option<String>,
    state: String,
    schema_version: i32,
    created_at: DateTime<Utc>,
    /// This month's (UTC) tasks and their cost, as routers have counted them into the
    /// catalog so far.
    tasks_this_month: i64,
    cost_cents_this_month: i64,
}

const TENANTS_PAGE: &str = "
    SELECT t.id, t.slug, t.plan, t.template, s.name, t.state, t.schema_version, t.created_at,
           coalesce(u.tasks, 0)::bigint, coalesce(u.cost_cents, 0)::bigint
    FROM tenants t
    LEFT JOIN servers s ON s.id = t.server_id
    LEFT JOIN LATERAL (
        SELECT sum(c.tasks) AS tasks, sum(c.cost_cents) AS cost_cents FROM task_counts c
        WHERE c.tenant_id = t.id
          AND c.period = date_trunc('month', now() AT TIME ZONE 'UTC')::date
    ) u ON true
    WHERE ($1::text IS NULL OR strpos(t.slug, $1) > 0)
      AND (CASE WHEN $2::text IS NULL THEN t.state <> 'deleted' ELSE t.state = $2 END)
      AND ($3::text IS NULL OR t.plan = $3)
      AND ($4::text IS NULL OR s.name = $4)
      AND ($5::int IS NULL OR t.schema_version = $5)
      AND ($6::text IS NULL OR (t.slug, t.id) > ($6, $7))
    ORDER BY t.slug, t.id
    LIMIT $8";

/// Tenants by slug (text within it), state (default: all but deleted), plan, server and
/// schema version, with this month's task counts from the catalog.
#[utoipa::path(get, path = "/admin/v1/fleet/tenants", tag = "admin",
    params(("q" = Option<String>, Query, max_length = 40, pattern = "^[a-z0-9-]*$", description = "text the slug contains"),
        ("state" = Option<crate::openapi::TenantStateName>, Query),
        ("plan" = Option<String>, Query, pattern = "^[a-z][a-z0-9-]{1,39}$"),
        ("server" = Option<String>, Query, pattern = "^[a-z][a-z0-9-]{0,39}$"),
        ("schema_version" = Option<i32>, Query, minimum = 0, maximum = 2147483647),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, min_length = 1, pattern = "^[A-Za-z0-9_-]+$", description = "a next_cursor this API gave out")),
    responses((status = 200, body = Page<TenantRow>), (status = 400, description = "a filter or cursor that cannot be", body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse), (status = 503, description = "the catalog cannot be read", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn fleet_tenants(
    state: web::Data<AppState>,
    _: AdminAuth,
    query_: web::Query<TenantsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query_.into_inner();
    let invalid = |m: &str| ApiError::new(ErrorCode::InvalidRequest, m.to_owned());
    storable_opt("q", q.q.as_deref())?;
    storable_opt("plan", q.plan.as_deref())?;
    storable_opt("server", q.server.as_deref())?;
    if q.q.as_deref().is_some_and(|t| {
        t.len() > 40
            || !t
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }) {
        return Err(invalid(
            "q is at most 40 of a-z, 0-9 and -, as slugs are made",
        ));
    }
    if let Some(s) = &q.state {
        s.parse::<tenantry_types::TenantState>()
            .map_err(|e| invalid(&e.to_string()))?;
    }
    if q.schema_version.is_some_and(|v| v < 0) {
        return Err(invalid("schema_version is 0 or more"));
    }
    let limit = limit(q.limit)?;
    let after: Option<(String, Uuid)> = decode_cursor(q.cursor.as_deref())?;
    if let Some((slug, _)) = &after {
        storable_text("cursor", slug)?;
    }
    let search = q.q.filter(|t| !t.is_empty());
    let rows = query(
        &state,
        TENANTS_PAGE,
        &[
            &search,
            &q.state,
            &q.plan,
            &q.server,
            &q.schema_version,
            &after.as_ref().map(|a| a.0.as_str()),
            &after.as_ref().map(|a| a.1).unwrap_or_default(),
            &(limit + 1),
        ],
    )
    .await?;
    let items = rows
        .iter()
        .map(|r| TenantRow {
            id: r.get(0),
            slug: r.get(1),
            plan: r.get(2),
            template: r.get(3),
            server: r.get(4),
            state: r.get(5),
            schema_version: r.get(6),
            created_at: r.get(7),
            tasks_this_month: r.get(8),
            cost_cents_this_month: r.get(9),
        })
        .collect();
    Ok(HttpResponse::Ok().json(page(items, limit, |t: &TenantRow| {
        encode_cursor(&t.slug, &t.id.to_string())
    })))
}

// ---- migration runs ----

#[derive(Debug, Deserialize)]
struct PageQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RunCounts {
    pending: i64,
    running: i64,
    ok: i64,
    failed: i64,
    skipped: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct MigrationRun {
    id: Uuid,
    /// running, finished, failed, cancelled or interrupted.
    state: String,
    dry_run: bool,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    /// Its tenants by status.
    tenants: RunCounts,
}

const RUNS: &str = "
    SELECT r.id, r.state, r.dry_run, r.started_at, r.finished_at,
           count(rt.run_id) FILTER (WHERE rt.status = 'pending'),
           count(rt.run_id) FILTER (WHERE rt.status = 'running'),
           count(rt.run_id) FILTER (WHERE rt.status = 'ok'),
           count(rt.run_id) FILTER (WHERE rt.status = 'failed'),
           count(rt.run_id) FILTER (WHERE rt.status = 'skipped')
    FROM migration_runs r LEFT JOIN migration_run_tenants rt ON rt.run_id = r.id
    WHERE ($1::uuid IS NULL OR r.id = $1)
      AND ($2::uuid IS NULL
           OR (r.started_at, r.id) < (SELECT c.started_at, c.id FROM migration_runs c WHERE c.id = $2))
    GROUP BY r.id
    ORDER BY r.started_at DESC, r.id DESC
    LIMIT $3";

fn run(r: &tokio_postgres::Row) -> MigrationRun {
    MigrationRun {
        id: r.get(0),
        state: r.get(1),
        dry_run: r.get(2),
        started_at: r.get(3),
        finished_at: r.get(4),
        tenants: RunCounts {
            pending: r.get(5),
            running: r.get(6),
            ok: r.get(7),
            failed: r.get(8),
            skipped: r.get(9),
        },
    }
}

/// Migration runs, latest first, with their tenants counted by status.
#[utoipa::path(get, path = "/admin/v1/migration-runs", tag = "admin",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, min_length = 1, pattern = "^[A-Za-z0-9_-]+$", description = "a next_cursor this API gave out")),
    responses((status = 200, body = Page<MigrationRun>), (status = 400, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse), (status = 503, description = "the catalog cannot be read", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn migration_runs(
    state: web::Data<AppState>,
    _: AdminAuth,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = limit(q.limit)?;
    // The cursor is the last run's id: the page goes on from where that run sorts.
    let after: Option<(Uuid, String)> = decode_cursor(q.cursor.as_deref())?;
    let rows = query(
        &state,
        RUNS,
        &[&None::<Uuid>, &after.map(|a| a.0), &(limit + 1)],
    )
    .await?;
    let items = rows.iter().map(run).collect();
    Ok(
        HttpResponse::Ok().json(page(items, limit, |r: &MigrationRun| {
            encode_cursor(&r.id.to_string(), "run")
        })),
    )
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RunTenant {
    slug: String,
    /// pending, running, ok, failed or skipped.
    status: String,
    from_version: Option<i32>,
    to_version: Option<i32>,
    duration_ms: Option<i64>,
    error: Option<String>,
    finished_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RunDetail {
    #[serde(flatten)]
    run: MigrationRun,
    /// Its tenants' results, by slug, a page at a time.
    results: Page<RunTenant>,
}

const RUN_TENANTS: &str = "
    SELECT t.slug, rt.status, rt.from_version, rt.to_version, rt.duration_ms, rt.error,
           rt.finished_at, t.id
    FROM migration_run_tenants rt JOIN tenants t ON t.id = rt.tenant_id
    WHERE rt.run_id = $1 AND ($2::text IS NULL OR (t.slug, t.id) > ($2, $3))
    ORDER BY t.slug, t.id
    LIMIT $4";

/// One migration run and its tenants' results (paged by slug).
#[utoipa::path(get, path = "/admin/v1/migration-runs/{id}", tag = "admin",
    params(("id" = Uuid, Path),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "results per page, 1 to 200, default 50"),
        ("cursor" = Option<String>, Query, min_length = 1, pattern = "^[A-Za-z0-9_-]+$", description = "a results.next_cursor this API gave out")),
    responses((status = 200, body = RunDetail), (status = 400, body = crate::openapi::ErrorResponse), (status = 404, description = "no such run", body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse), (status = 503, description = "the catalog cannot be read", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn migration_run(
    state: web::Data<AppState>,
    _: AdminAuth,
    id: web::Path<String>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::new(ErrorCode::NotFound, "no migration run with that id");
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let limit = limit(q.limit)?;
    let after: Option<(String, Uuid)> = decode_cursor(q.cursor.as_deref())?;
    if let Some((slug, _)) = &after {
        storable_text("cursor", slug)?;
    }
    let found = query(&state, RUNS, &[&Some(id), &None::<Uuid>, &1_i64]).await?;
    let run = found.first().map(run).ok_or_else(not_found)?;
    let rows = query(
        &state,
        RUN_TENANTS,
        &[
            &id,
            &after.as_ref().map(|a| a.0.as_str()),
            &after.as_ref().map(|a| a.1).unwrap_or_default(),
            &(limit + 1),
        ],
    )
    .await?;
    let keyed: Vec<(Uuid, RunTenant)> = rows
        .iter()
        .map(|r| {
            (
                r.get(7),
                RunTenant {
                    slug: r.get(0),
                    status: r.get(1),
                    from_version: r.get(2),
                    to_version: r.get(3),
                    duration_ms: r.get(4),
                    error: r.get(5),
                    finished_at: r.get(6),
                },
            )
        })
        .collect();
    let keyed = page(keyed, limit, |(id, t)| {
        encode_cursor(&t.slug, &id.to_string())
    });
    Ok(HttpResponse::Ok().json(RunDetail {
        run,
        results: Page {
            items: keyed.items.into_iter().map(|(_, t)| t).collect(),
            next_cursor: keyed.next_cursor,
        },
    }))
}

// ---- the ledger ----

#[derive(Debug, Deserialize)]
struct OperationsQuery {
    status: Option<String>,
    tenant: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Operation {
    id: i64,
    /// The tenant's slug, when the step is a tenant's.
    tenant: Option<String>,
    server: Option<String>,
    kind: String,
    step: String,
    /// started, done, failed or reconciled.
    status: String,
    error: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

fn operation_of(r: &tokio_postgres::Row) -> Operation {
    Operation {
        id: r.get(0),
        tenant: r.get(1),
        server: r.get(2),
        kind: r.get(3),
        step: r.get(4),
        status: r.get(5),
        error: r.get(6),
        started_at: r.get(7),
        finished_at: r.get(8),
    }
}

const OPERATIONS: &str = "
    SELECT o.id, t.slug, s.name, o.kind, o.step, o.status, o.error, o.started_at, o.finished_at
    FROM operations o
    LEFT JOIN tenants t ON t.id = o.tenant_id
    LEFT JOIN servers s ON s.id = o.server_id
    WHERE ($1::text IS NULL OR o.status = $1)
      AND ($2::text IS NULL OR t.slug = $2)
      AND ($3::bigint IS NULL OR o.id < $3)
    ORDER BY o.id DESC
    LIMIT $4";

/// The ledger's steps, latest first; `status=failed` for the failed ones.
#[utoipa::path(get, path = "/admin/v1/operations", tag = "admin",
    params(("status" = Option<crate::openapi::OperationStatus>, Query),
        ("tenant" = Option<String>, Query, pattern = "^[a-z][a-z0-9-]{1,39}$", description = "a tenant's slug"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, min_length = 1, pattern = "^[A-Za-z0-9_-]+$", description = "a next_cursor this API gave out")),
    responses((status = 200, body = Page<Operation>), (status = 400, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse), (status = 503, description = "the catalog cannot be read", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn operations(
    state: web::Data<AppState>,
    _: AdminAuth,
    q: web::Query<OperationsQuery>,
) -> Result<HttpResponse, ApiError> {
    if q.status
        .as_deref()
        .is_some_and(|s| !OPERATION_STATUSES.contains(&s))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "status must be started, done, failed or reconciled",
        ));
    }
    storable_opt("tenant", q.tenant.as_deref())?;
    let limit = limit(q.limit)?;
    let before: Option<(i64, i64)> = decode_cursor(q.cursor.as_deref())?;
    let rows = query(
        &state,
        OPERATIONS,
        &[&q.status, &q.tenant, &before.map(|b| b.0), &(limit + 1)],
    )
    .await?;
    let items = rows.iter().map(operation_of).collect();
    Ok(HttpResponse::Ok().json(page(items, limit, |o: &Operation| {
        encode_cursor(&o.id.to_string(), "0")
    })))
}

/// One ledger row; for a move's, the move's progress with it (`move`: phase, status,
/// bytes copied, replication lag).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct OperationDetail {
    #[serde(flatten)]
    operation: Operation,
    #[serde(rename = "move", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    moving: Option<tenantry_provision::MoveInfo>,
}

/// One step of the ledger by id, with a move's progress when it is a move's.
#[utoipa::path(get, path = "/admin/v1/operations/{id}", tag = "admin",
    params(("id" = i64, Path, minimum = 1, description = "a ledger id, e.g. the operation a move answered with")),
    responses((status = 200, body = OperationDetail), (status = 404, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse), (status = 503, description = "the catalog cannot be read", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn operation(
    state: web::Data<AppState>,
    _: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::new(ErrorCode::NotFound, "no operation with that id");
    let id: i64 = id.parse().map_err(|_| not_found())?;
    let rows = query(
        &state,
        "SELECT o.id, t.slug, s.name, o.kind, o.step, o.status, o.error, o.started_at, o.finished_at
         FROM operations o
         LEFT JOIN tenants t ON t.id = o.tenant_id
         LEFT JOIN servers s ON s.id = o.server_id
         WHERE o.id = $1",
        &[&id],
    )
    .await?;
    let r = rows.first().ok_or_else(not_found)?;
    let operation = operation_of(r);
    let moving = if operation.kind == "move" {
        state
            .provisioner
            .move_by_operation(id)
            .await
            .map_err(|e| unavailable(&e))?
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(OperationDetail { operation, moving }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_and_foreign_text_is_refused() {
        let id = Uuid::now_v7();
        let c = encode_cursor("acme-1", &id.to_string());
        let back: Option<(String, Uuid)> = decode_cursor(Some(&c)).unwrap();
        assert_eq!(back, Some(("acme-1".into(), id)));
        for bad in ["!!", "bm9waXBl", &encode_cursor("x", "not-a-uuid")] {
            let e = decode_cursor::<String, Uuid>(Some(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{bad}");
        }
        assert!(limit(Some(0)).is_err() && limit(Some(201)).is_err());
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
    }

    #[test]
    fn a_page_past_its_limit_names_its_last_item() {
        let p = page(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!((p.items, p.next_cursor), (vec![1, 2], Some("2".into())));
        let p = page(vec![1, 2], 2, |n| n.to_string());
        assert_eq!(p.next_cursor, None);
    }
}

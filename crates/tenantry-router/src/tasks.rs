//! The tenant API: tasks, usage, and the monthly quota.

use crate::edge::resource;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tenantry_types::Agent;
use uuid::Uuid;

use crate::auth::TenantAuth;
use crate::error::{storable_json, storable_text};
use crate::tenant::{db_error, TenantCtx};
use crate::{ApiError, AppState, ErrorCode};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/tasks")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    );
    cfg.service(
        resource("/v1/tasks/{id}")
            .route(web::get().to(get))
            .route(web::patch().to(update))
            .route(web::delete().to(delete)),
    );
    cfg.service(resource("/v1/usage").route(web::get().to(usage)));
}

/// The columns of a task, in the order `task()` reads them.
macro_rules! task_columns {
    () => {
        "id, user_id, agent, title, input, status, output, cost_cents, created_at, updated_at"
    };
}

// The statements are constants, prepared once per connection (`prepare_cached`).
const BY_ID: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = $1");
const BY_KEY: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE idempotency_key = $1"
);
const INSERT: &str = concat!(
    "INSERT INTO tasks (user_id, agent, title, input, cost_cents, idempotency_key)
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
    task_columns!()
);
const PAGE: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks
     WHERE ($1::text IS NULL OR status = $1)
       AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
     ORDER BY created_at DESC, id DESC LIMIT $4"
);
const UPDATE: &str = concat!(
    "UPDATE tasks SET status = coalesce($2, status),
            output = CASE WHEN $3 THEN $4 ELSE output END,
            updated_at = now()
     WHERE id = $1 RETURNING ",
    task_columns!()
);
pub(crate) const STATUSES: &[&str] = &["queued", "running", "done", "failed"];

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Task {
    pub id: Uuid,
    pub user_id: String,
    #[schema(value_type = crate::openapi::AgentName)]
    pub agent: String,
    pub title: String,
    #[schema(value_type = Option<Value>)]
    pub input: Option<Value>,
    #[schema(value_type = crate::openapi::TaskStatus)]
    pub status: String,
    #[schema(value_type = Option<Value>)]
    pub output: Option<Value>,
    pub cost_cents: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A task from its row. A value that cannot be read back (a jsonb number past f64's
/// range, written through /v1/sql) fails this request as an internal error, and never
/// panics a worker.
fn task(r: &tokio_postgres::Row) -> Result<Task, ApiError> {
    fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
        r: &'a tokio_postgres::Row,
        i: usize,
    ) -> Result<T, ApiError> {
        r.try_get(i).map_err(|e| ApiError::internal(&e))
    }
    Ok(Task {
        id: col(r, 0)?,
        user_id: col(r, 1)?,
        agent: col(r, 2)?,
        title: col(r, 3)?,
        input: col(r, 4)?,
        status: col(r, 5)?,
        output: col(r, 6)?,
        cost_cents: col(r, 7)?,
        created_at: col(r, 8)?,
        updated_at: col(r, 9)?,
    })
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::UnprocessableRequest, message)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    #[schema(value_type = crate::openapi::AgentName)]
    agent: String,
    /// 1 to 500 characters once leading and trailing whitespace is trimmed; no NUL.
    #[schema(
        min_length = 1,
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000]{0,498}[^\u0000\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    title: String,
    /// Any JSON value; no NUL (\u0000) in its strings or keys.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    input: Option<Value>,
}

#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = NewTask,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, pattern = r"^[!-~]([\t -~]*[!-~])?$",
        description = "a retry with the same key returns the same task; 1 to 200 visible ASCII characters")),
    responses((status = 201, body = Task), (status = 200, description = "an earlier task with this Idempotency-Key", body = Task),
    (status = 400, description = "not JSON, or text with NUL", body = crate::openapi::ErrorResponse),
    (status = 403, description = "the plan lacks the agent", body = crate::openapi::ErrorResponse),
    (status = 413, description = "body too large", body = crate::openapi::ErrorResponse),
    (status = 422, description = "invalid fields", body = crate::openapi::ErrorResponse),
    (status = 404, description = "unknown tenant or task", body = crate::openapi::ErrorResponse),
    (status = 423, description = "tenant suspended", body = crate::openapi::ErrorResponse),
    (status = 429, description = "rate limited or quota used", body = crate::openapi::ErrorResponse),
    (status = 503, description = "tenant database unavailable or busy", body = crate::openapi::ErrorResponse),
    (status = 401, description = "missing or invalid token", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn create(
    state: web::Data<AppState>,
    auth: TenantAuth,
    req: HttpRequest,
    body: web::Json<NewTask>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    storable_text("title", &body.title)?;
    if let Some(input) = &body.input {
        storable_json("input", input)?;
    }
    let meter = state.meter.clone();
    let ctx = TenantCtx::for_write(state, auth).await?;
    // The token's subject is stored as the task's user_id.
    storable_text("the token's sub claim", ctx.user())?;
    let agent: Agent = body
        .agent
        .parse()
        .map_err(|e: tenantry_types::UnknownState| invalid(e.to_string()))?;
    if !ctx.route.plan.allows(agent) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "the {} plan does not include the {} agent",
                ctx.route.plan.name,
                agent.as_str()
            ),
        ));
    }
    let title = body.title.trim();
    if title.is_empty() || title.chars().count() > 500 {
        return Err(invalid("title must be 1 to 500 characters"));
    }
    let key = match req.headers().get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 200)
                .ok_or_else(|| invalid("Idempotency-Key must be 1 to 200 visible characters"))?
                .to_owned(),
        ),
        None => None,
    };
    let cost = agent.cost_cents() as i32;
    let quota = ctx.route.plan.tasks_per_month;

    let mut conn = ctx.conn().await?;
    let tx = conn.transaction().await.map_err(db_error)?;
    if quota.is_some() || key.is_some() {
        // One creator at a time per tenant database: the quota count and the insert are
        // one atomic step, and a retried key is seen by the retry.
        tx.execute("SELECT pg_advisory_xact_lock(7411)", &[])
            .await
            .map_err(db_error)?;
    }
    if let Some(key) = &key {
        let st = tx.prepare_cached(BY_KEY).await.map_err(db_error)?;
        let existing = tx.query_opt(&st, &[key]).await.map_err(db_error)?;
        if let Some(row) = existing {
            return Ok(HttpResponse::Ok().json(task(&row)?));
        }
    }
    if let Some(limit) = quota {
        let used: i64 = tx
            .query_one(
                "SELECT count(*) FROM usage_logs
                 WHERE action = 'task.create' AND created_at >= date_trunc('month', now())",
                &[],
            )
            .await
            .map_err(db_error)?
            .get(0);
        if used >= i64::from(limit) {
            return Err(ApiError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "the {} plan allows {limit} tasks a month, and they are used",
                    ctx.route.plan.name
                ),
            ));
        }
    }
    let st = tx.prepare_cached(INSERT).await.map_err(db_error)?;
    let row = tx
        .query_one(
            &st,
            &[
                &ctx.user(),
                &agent.as_str(),
                &title,
                &body.input,
                &cost,
                &key,
            ],
        )
        .await
        .map_err(db_error)?;
    tx.execute(
        "INSERT INTO usage_logs (user_id, action, cost) VALUES ($1, 'task.create', $2)",
        &[&ctx.user(), &cost],
    )
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    // Counted once it is committed (a retried key above found its task: not counted).
    meter.task(ctx.route.tenant, agent.as_str(), i64::from(cost));
    Ok(HttpResponse::Created().json(task(&row)?))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Page {
    items: Vec<Task>,
    next_cursor: Option<String>,
}

fn encode_cursor(t: &Task) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}|{}",
        t.created_at.timestamp_micros(),
        t.id
    ))
}

fn decode_cursor(text: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (micros, id) = raw.split_once('|')?;
    // Earlier than any timestamptz PostgreSQL takes (it would fail the query): no task
    // has such a created_at. chrono's latest instant is within PostgreSQL's range.
    let micros = micros.parse().ok().filter(|m| *m >= PG_EARLIEST_MICROS)?;
    Some((DateTime::from_timestamp_micros(micros)?, id.parse().ok()?))
}

/// PostgreSQL's earliest timestamptz, 4714-11-24 00:00:00 BC UTC, in Unix microseconds.
const PG_EARLIEST_MICROS: i64 = -210_866_803_200_000_000;

#[utoipa::path(get, path = "/v1/tasks", tag = "tasks",
    params(("status" = Option<crate::openapi::TaskStatus>, Query),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 20"),
        ("cursor" = Option<String>, Query, min_length = 1, pattern = "^[A-Za-z0-9_-]+$", description = "a next_cursor this API gave out")),
    responses((status = 200, body = Page), (status = 400, body = crate::openapi::ErrorResponse),
    (status = 404, description = "unknown tenant or task", body = crate::openapi::ErrorResponse),
    (status = 423, description = "tenant suspended", body = crate::openapi::ErrorResponse),
    (status = 429, description = "rate limited or quota used", body = crate::openapi::ErrorResponse),
    (status = 503, description = "tenant database unavailable or busy", body = crate::openapi::ErrorResponse),
    (status = 401, description = "missing or invalid token", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn list(
    state: web::Data<AppState>,
    auth: TenantAuth,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let ctx = TenantCtx::new(state, auth).await?;
    let q = query.into_inner();
    if let Some(s) = &q.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "status must be queued, running, done or failed",
            ));
        }
    }
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "limit must be 1 to 100",
        ));
    }
    let after = match &q.cursor {
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "cursor is not one this API gave out",
            )
        })?),
        None => None,
    };
    let conn = ctx.conn().await?;
    let statement = conn.prepare_cached(PAGE).await.map_err(db_error)?;
    let rows = conn
        .query(
            &statement,
            &[
                &q.status,
                &after.map(|a| a.0),
                &after.map(|a| a.1).unwrap_or_default(),
                &(limit + 1),
            ],
        )
        .await
        .map_err(db_error)?;
    let mut items = rows.iter().map(task).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(encode_cursor)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}

fn task_id(path: &str) -> Result<Uuid, ApiError> {
    path.parse()
        .map_err(|_| ApiError::new(ErrorCode::NotFound, "no task with that id"))
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no task with that id")
}

#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = Uuid, Path)),
    responses((status = 200, body = Task),
    (status = 404, description = "unknown tenant or task", body = crate::openapi::ErrorResponse),
    (status = 423, description = "tenant suspended", body = crate::openapi::ErrorResponse),
    (status = 429, description = "rate limited or quota used", body = crate::openapi::ErrorResponse),
    (status = 503, description = "tenant database unavailable or busy", body = crate::openapi::ErrorResponse),
    (status = 401, description = "missing or invalid token", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn get(
    state: web::Data<AppState>,
    auth: TenantAuth,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = task_id(&path)?;
    let ctx = TenantCtx::new(state, auth).await?;
    let conn = ctx.conn().await?;
    let statement = conn.prepare_cached(BY_ID).await.map_err(db_error)?;
    let row = conn.query_opt(&statement, &[&id]).await.map_err(db_error)?;
    let row = row.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(task(&row)?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskUpdate {
    #[schema(value_type = Option<crate::openapi::TaskStatus>)]
    status: Option<String>,
    /// Any JSON value (null clears it); no NUL (\u0000) in its strings or keys.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Value>)]
    output: Option<Option<Value>>,
}

/// Tells a field sent as `null` from a field not sent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Value>>, D::Error> {
    Ok(Some(Option::<Value>::deserialize(d)?))
}

#[utoipa::path(patch, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = Uuid, Path)), request_body = TaskUpdate,
    responses((status = 200, body = Task),
    (status = 400, description = "not JSON, or text with NUL", body = crate::openapi::ErrorResponse),
    (status = 413, description = "body too large", body = crate::openapi::ErrorResponse),
    (status = 422, description = "invalid fields", body = crate::openapi::ErrorResponse),
    (status = 404, description = "unknown tenant or task", body = crate::openapi::ErrorResponse),
    (status = 423, description = "tenant suspended", body = crate::openapi::ErrorResponse),
    (status = 429, description = "rate limited or quota used", body = crate::openapi::ErrorResponse),
    (status = 503, description = "tenant database unavailable or busy", body = crate::openapi::ErrorResponse),
    (status = 401, description = "missing or invalid token", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn update(
    state: web::Data<AppState>,
    auth: TenantAuth,
    path: web::Path<String>,
    body: web::Json<TaskUpdate>,
) -> Result<HttpResponse, ApiError> {
    let id = task_id(&path)?;
    let body = body.into_inner();
    if let Some(s) = &body.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(invalid("status must be queued, running, done or failed"));
        }
    }
    if let Some(Some(output)) = &body.output {
        storable_json("output", output)?;
    }
    let ctx = TenantCtx::for_write(state, auth).await?;
    let conn = ctx.conn().await?;
    let set_output = body.output.is_some();
    let output = body.output.flatten();
    let st = conn.prepare_cached(UPDATE).await.map_err(db_error)?;
    let row = conn
        .query_opt(&st, &[&id, &body.status, &set_output, &output])
        .await
        .map_err(db_error)?;
    let row = row.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(task(&row)?))
}

#[utoipa::path(delete, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted"),
    (status = 404, description = "unknown tenant or task", body = crate::openapi::ErrorResponse),
    (status = 423, description = "tenant suspended", body = crate::openapi::ErrorResponse),
    (status = 429, description = "rate limited or quota used", body = crate::openapi::ErrorResponse),
    (status = 503, description = "tenant database unavailable or busy", body = crate::openapi::ErrorResponse),
    (status = 401, description = "missing or invalid token", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn delete(
    state: web::Data<AppState>,
    auth: TenantAuth,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = task_id(&path)?;
    let ctx = TenantCtx::for_write(state, auth).await?;
    let conn = ctx.conn().await?;
    let n = conn
        .execute("DELETE FROM tasks WHERE id = $1", &[&id])
        .await
        .map_err(db_error)?;
    if n == 0 {
        return Err(not_found());
    }
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Usage {
    plan: String,
    period: String,
    tasks_used: i64,
    tasks_quota: Option<u32>,
    cost_cents: i64,
    rate_limit_per_minute: u32,
}

#[utoipa::path(get, path = "/v1/usage", tag = "tasks", responses((status = 200, body = Usage),
    (status = 404, description = "unknown tenant or task", body = crate::openapi::ErrorResponse),
    (status = 423, description = "tenant suspended", body = crate::openapi::ErrorResponse),
    (status = 429, description = "rate limited or quota used", body = crate::openapi::ErrorResponse),
    (status = 503, description = "tenant database unavailable or busy", body = crate::openapi::ErrorResponse),
    (status = 401, description = "missing or invalid token", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn usage(state: web::Data<AppState>, auth: TenantAuth) -> Result<HttpResponse, ApiError> {
    let ctx = TenantCtx::new(state, auth).await?;
    let conn = ctx.conn().await?;
    let statement = conn
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE action = 'task.create'), coalesce(sum(cost), 0)::bigint
             FROM usage_logs WHERE created_at >= date_trunc('month', now())",
        )
        .await
        .map_err(db_error)?;
    let row = conn.query_one(&statement, &[]).await.map_err(db_error)?;
    let now = Utc::now();
    Ok(HttpResponse::Ok().json(Usage {
        plan: ctx.route.plan.name.clone(),
        period: format!("{:04}-{:02}", now.year(), now.month()),
        tasks_used: row.get(0),
        tasks_quota: ctx.route.plan.tasks_per_month,
        cost_cents: row.get(1),
        rate_limit_per_minute: ctx.route.plan.requests_per_minute,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let t = Task {
            id: Uuid::now_v7(),
            user_id: "u".into(),
            agent: "codex".into(),
            title: "t".into(),
            input: None,
            status: "queued".into(),
            output: None,
            cost_cents: 0,
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            updated_at: Utc::now(),
        };
        let c = encode_cursor(&t);
        assert_eq!(decode_cursor(&c), Some((t.created_at, t.id)));
        for bad in ["", "!!!", "bm90LWEtY3Vyc29y"] {
            assert_eq!(decode_cursor(bad), None);
        }
        let at = |micros: i64| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{micros}|{}", t.id))
        };
        assert_eq!(decode_cursor(&at(PG_EARLIEST_MICROS - 1)), None);
        assert!(decode_cursor(&at(PG_EARLIEST_MICROS)).is_some());
        assert!(decode_cursor(&at(DateTime::<Utc>::MAX_UTC.timestamp_micros())).is_some());
    }
}

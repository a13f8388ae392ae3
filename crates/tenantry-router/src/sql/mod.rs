//! `POST /v1/sql`: one statement in the tenant's own database, as the tenant's own role,
//! in a transaction with a statement timeout, at most `sql_row_cap` rows and
//! `sql_max_result_bytes` bytes back, values as JSON. For plans with `api_access` only.
//! Only statement kinds on the allow-list run ([`gate`]).

mod gate;
mod values;

use crate::edge::resource;
use actix_web::{web, HttpResponse};
use bytes::BytesMut;
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio_postgres::types::ToSql;

use crate::auth::TenantAuth;
use crate::tenant::{db_error, TenantCtx};
use crate::{ApiError, AppState, ErrorCode};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/sql").route(web::post().to(run)));
}

/// Limits of the SQL API.
#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    pub statement_timeout_ms: u64,
    pub row_cap: usize,
    /// The most result bytes (as JSON values) a request may bring back.
    pub max_result_bytes: usize,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Request {
    #[schema(min_length = 1, max_length = 100000)]
    sql: String,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    params: Vec<Value>,
}

/// The statement's own error, shown to its author (it is about their SQL), with its SQLSTATE.
fn statement_error(e: tokio_postgres::Error) -> ApiError {
    match e.as_db_error() {
        Some(db) if db.code() == &tokio_postgres::error::SqlState::QUERY_CANCELED => ApiError::new(
            ErrorCode::UnprocessableRequest,
            "the statement ran past its time limit and was cancelled",
        ),
        Some(db) => ApiError::new(
            ErrorCode::UnprocessableRequest,
            format!(
                "the statement failed ({}): {}",
                db.code().code(),
                db.message()
            ),
        ),
        None => db_error(e),
    }
}

#[utoipa::path(post, path = "/v1/sql", tag = "sql", request_body = Request,
    responses((status = 200, description = "columns, rows (JSON values), row_count, truncated", body = Object),
    (status = 400, description = "bad parameters, or text PostgreSQL cannot take (a NUL)", body = crate::openapi::ErrorResponse),
    (status = 403, description = "the plan has no SQL API, or the statement's kind is not run by it", body = crate::openapi::ErrorResponse),
    (status = 413, description = "the request body is too large", body = crate::openapi::ErrorResponse),
    (status = 422, description = "the statement failed, or its result is past sql_max_result_bytes (result_too_large)", body = crate::openapi::ErrorResponse),
    (status = 404, description = "unknown tenant or task", body = crate::openapi::ErrorResponse),
    (status = 423, description = "tenant suspended", body = crate::openapi::ErrorResponse),
    (status = 429, description = "rate limited or quota used", body = crate::openapi::ErrorResponse),
    (status = 503, description = "tenant database unavailable or busy", body = crate::openapi::ErrorResponse),
    (status = 401, description = "missing or invalid token", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn run(
    state: web::Data<AppState>,
    auth: TenantAuth,
    body: web::Json<Request>,
) -> Result<HttpResponse, ApiError> {
    let limits = state.sql;
    let req = body.into_inner();
    let ctx = TenantCtx::new(state, auth).await?;
    if !ctx.route.plan.api_access {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "the {} plan does not include the SQL API",
                ctx.route.plan.name
            ),
        ));
    }
    if req.sql.trim().is_empty() || req.sql.len() > 100_000 {
        return Err(ApiError::new(
            ErrorCode::UnprocessableRequest,
            "sql must be 1 to 100000 bytes",
        ));
    }
    if req.sql.contains('\0') {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "sql must not contain a NUL character",
        ));
    }
    gate::check(&req.sql).map_err(|refusal| match refusal {
        gate::Refusal::Kind(kind) => ApiError::new(
            ErrorCode::Forbidden,
            format!("the SQL API does not run {kind} statements"),
        ),
        gate::Refusal::Several => ApiError::new(
            ErrorCode::UnprocessableRequest,
            "send one statement per request",
        ),
        gate::Refusal::Unreadable(why) => ApiError::new(
            ErrorCode::UnprocessableRequest,
            format!("the SQL API runs only statements it can read and allows; this one it could not read: {why}"),
        ),
    })?;
    let mut conn = ctx.conn().await?;
    // Arbitrary SQL may leave session state (settings, advisory locks, temporary tables…).
    conn.mark_dirty();
    // A backstop under the count below: one huge row is cut off at the socket, before the
    // driver has read it whole (the connection is then closed).
    conn.cap_reads(Some(
        (limits.max_result_bytes as u64).saturating_mul(2) + 1024 * 1024,
    ));
    let result = execute(&mut conn, &ctx, &req, limits).await;
    conn.cap_reads(None);
    let capped = conn.reads_capped();
    // Cleaned now: a session lock or setting it took is let go at once, not when the
    // connection is next used.
    tokio::spawn(tenantry_pools::release(conn));
    if capped {
        return Err(too_large(limits));
    }
    let (columns, rows, truncated) = result?;
    Ok(HttpResponse::Ok().json(json!({
        "columns": columns,
        "rows": rows,
        "row_count": rows.len(),
        "truncated": truncated,
    })))
}

fn too_large(limits: SqlLimits) -> ApiError {
    ApiError::new(
        ErrorCode::ResultTooLarge,
        format!(
            "the result is larger than {} bytes; select fewer rows or columns (LIMIT, or a narrower query)",
            limits.max_result_bytes
        ),
    )
}

/// Roughly the bytes a value takes in the response.
fn json_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        other => other.to_string().len(),
    }
}

type Rows = (Vec<String>, Vec<Value>, bool);

async fn execute(
    conn: &mut tenantry_pools::Lease,
    ctx: &TenantCtx,
    req: &Request,
    limits: SqlLimits,
) -> Result<Rows, ApiError> {
    let cancel = conn.cancel_token();
    let tx = conn.transaction().await.map_err(db_error)?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}",
        limits.statement_timeout_ms
    ))
    .await
    .map_err(db_error)?;
    let statement = tx.prepare(&req.sql).await.map_err(statement_error)?;
    if statement.params().len() != req.params.len() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "the statement takes {} parameter(s), {} given",
                statement.params().len(),
                req.params.len()
            ),
        ));
    }
    let params: Vec<values::JsonParam> =
        req.params.iter().cloned().map(values::JsonParam).collect();
    // Bound here first, so that a parameter that does not fit its type is the caller's
    // error (400), not a failed connection.
    for (i, (param, ty)) in params.iter().zip(statement.params()).enumerate() {
        if let Err(e) = param.to_sql_checked(ty, &mut BytesMut::new()) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("parameter ${}: {e}", i + 1),
            ));
        }
    }
    let mut stream = Box::pin(
        tx.query_raw(&statement, params.iter())
            .await
            .map_err(statement_error)?,
    );
    let columns: Vec<String> = statement
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    let mut truncated = false;
    let mut too_big = false;
    while let Some(row) = stream.try_next().await.map_err(statement_error)? {
        if rows.len() == limits.row_cap {
            truncated = true;
            break;
        }
        let mut object = Map::new();
        for (i, name) in columns.iter().enumerate() {
            let cell: values::Cell = row.try_get(i).map_err(|e| {
                tracing::debug!(error = %e, column = %name, "a value without a JSON form");
                ApiError::new(
                    ErrorCode::UnprocessableRequest,
                    format!("a value of column {name:?} cannot be given as JSON; cast it to text"),
                )
            })?;
            bytes += name.len() + json_size(&cell.0);
            object.insert(name.clone(), cell.0);
        }
        if bytes > limits.max_result_bytes {
            too_big = true;
            break;
        }
        rows.push(Value::Object(object));
    }
    drop(stream);
    if too_big || truncated {
        // Rows past the cap are not read: the statement is cancelled rather than left to
        // send them, and its effects are not kept half-seen.
        cancel_statement(&cancel, ctx).await;
        tx.rollback().await.map_err(db_error)?;
        if too_big {
            return Err(too_large(limits));
        }
    } else {
        tx.commit().await.map_err(statement_error)?;
    }
    Ok((columns, rows, truncated))
}

/// Asks the server to cancel the connection's running statement (over TCP or the
/// server's Unix socket, as its connections go); a failure only means it runs on to its
/// end or its timeout.
async fn cancel_statement(token: &tokio_postgres::CancelToken, ctx: &TenantCtx) {
    let attempt = tenantry_pools::Pools::cancel(token, &ctx.route.target);
    match tokio::time::timeout(std::time::Duration::from_secs(2), attempt).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "cancel request failed"),
        Err(_) => tracing::debug!("cancel request timed out"),
    }
}

//! `POST /v1/sql`: one statement in the tenant's own database, as the tenant's own role,
//! in a transaction with a statement timeout, at most `sql_row_cap` rows back, values as
//! JSON. For plans with `api_access` only.

use std::error::Error;

use actix_web::{web, HttpResponse};
use bytes::BytesMut;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

use crate::auth::TenantAuth;
use crate::tenant::{db_error, TenantCtx};
use crate::{ApiError, AppState, ErrorCode};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/sql", web::post().to(run));
}

/// Limits of the SQL API.
#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    pub statement_timeout_ms: u64,
    pub row_cap: usize,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Request {
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
    (status = 403, description = "the plan has no SQL API", body = crate::openapi::ErrorResponse),
    (status = 422, description = "the statement failed", body = crate::openapi::ErrorResponse),
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
    let mut conn = ctx.conn().await?;
    // Arbitrary SQL may leave session state (SET, temporary tables, cursors…).
    conn.mark_dirty();
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
            ErrorCode::UnprocessableRequest,
            format!(
                "the statement takes {} parameter(s), {} given",
                statement.params().len(),
                req.params.len()
            ),
        ));
    }
    let params: Vec<JsonParam> = req.params.into_iter().map(JsonParam).collect();
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
    let mut truncated = false;
    while let Some(row) = stream.try_next().await.map_err(statement_error)? {
        if rows.len() == limits.row_cap {
            truncated = true;
            break;
        }
        let mut object = Map::new();
        for (i, name) in columns.iter().enumerate() {
            let cell: Cell = row.try_get(i).map_err(|e| ApiError::internal(&e))?;
            object.insert(name.clone(), cell.0);
        }
        rows.push(Value::Object(object));
    }
    drop(stream);
    if truncated {
        // Rows past the cap were not read: the statement's effects are not kept half-seen.
        tx.rollback().await.map_err(db_error)?;
    } else {
        tx.commit().await.map_err(statement_error)?;
    }
    Ok(HttpResponse::Ok().json(json!({
        "columns": columns,
        "rows": rows,
        "row_count": rows.len(),
        "truncated": truncated,
    })))
}

/// A JSON value bound to whatever type the statement's parameter has.
#[derive(Debug)]
struct JsonParam(Value);

type BoxError = Box<dyn Error + Sync + Send>;

impl ToSql for JsonParam {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let v = &self.0;
        if v.is_null() {
            return Ok(IsNull::Yes);
        }
        let wrong = || -> BoxError { format!("parameter of type {ty} cannot take {v}").into() };
        match *ty {
            Type::BOOL => v.as_bool().ok_or_else(wrong)?.to_sql(ty, out),
            Type::INT2 => i16::try_from(v.as_i64().ok_or_else(wrong)?)?.to_sql(ty, out),
            Type::INT4 => i32::try_from(v.as_i64().ok_or_else(wrong)?)?.to_sql(ty, out),
            Type::INT8 => v.as_i64().ok_or_else(wrong)?.to_sql(ty, out),
            Type::FLOAT4 => (v.as_f64().ok_or_else(wrong)? as f32).to_sql(ty, out),
            Type::FLOAT8 => v.as_f64().ok_or_else(wrong)?.to_sql(ty, out),
            Type::JSON | Type::JSONB => v.to_sql(ty, out),
            Type::UUID => v
                .as_str()
                .ok_or_else(wrong)?
                .parse::<uuid::Uuid>()?
                .to_sql(ty, out),
            Type::TIMESTAMPTZ => v
                .as_str()
                .ok_or_else(wrong)?
                .parse::<DateTime<Utc>>()?
                .to_sql(ty, out),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR | Type::UNKNOWN => match v {
                Value::String(s) => s.as_str().to_sql(&Type::TEXT, out),
                other => other.to_string().as_str().to_sql(&Type::TEXT, out),
            },
            _ => Err(format!(
                "parameters of type {ty} are not supported; cast it in SQL, e.g. $1::text::{ty}"
            )
            .into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Any column value as JSON; types without a JSON form come back as their type's name.
struct Cell(Value);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let v = match *ty {
            Type::BOOL => json!(bool::from_sql(ty, raw)?),
            Type::INT2 => json!(i16::from_sql(ty, raw)?),
            Type::INT4 => json!(i32::from_sql(ty, raw)?),
            Type::INT8 => json!(i64::from_sql(ty, raw)?),
            Type::OID => json!(u32::from_sql(ty, raw)?),
            Type::FLOAT4 => json!(f32::from_sql(ty, raw)?),
            Type::FLOAT8 => json!(f64::from_sql(ty, raw)?),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR | Type::UNKNOWN => {
                json!(<&str>::from_sql(ty, raw)?)
            }
            Type::JSON | Type::JSONB => Value::from_sql(ty, raw)?,
            Type::UUID => json!(uuid::Uuid::from_sql(ty, raw)?.to_string()),
            Type::TIMESTAMPTZ => json!(DateTime::<Utc>::from_sql(ty, raw)?.to_rfc3339()),
            Type::TIMESTAMP => json!(NaiveDateTime::from_sql(ty, raw)?.to_string()),
            Type::DATE => json!(NaiveDate::from_sql(ty, raw)?.to_string()),
            Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => {
                json!(Vec::<Option<String>>::from_sql(ty, raw)?)
            }
            Type::INT4_ARRAY => json!(Vec::<Option<i32>>::from_sql(ty, raw)?),
            Type::INT8_ARRAY => json!(Vec::<Option<i64>>::from_sql(ty, raw)?),
            _ => json!(format!("<{ty}>")),
        };
        Ok(Cell(v))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Cell(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

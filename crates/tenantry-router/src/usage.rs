//! `GET /admin/v1/usage`: a period's usage records (`tenantry_metering`), as `tenantry
//! usage export` writes them.

use crate::edge::resource;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use tenantry_metering::{ExportOptions, Format, MeteringError, Period};

use crate::auth::AdminAuth;
use crate::{ApiError, AppState, ErrorCode};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/admin/v1/usage").route(web::get().to(usage)));
}

#[derive(Debug, Deserialize)]
struct UsageQuery {
    period: String,
    format: Option<String>,
}

/// The header that counts the tenants left out (their databases could not be read).
const INCOMPLETE: &str = "Tenantry-Usage-Errors";

/// One record per tenant, meter and dimension, each with an idempotency key derived
/// from them. `json` lists the tenants that could not be read under `errors`; every
/// format leaves those tenants out entirely (and says how many in the
/// `Tenantry-Usage-Errors` header), so a later export bills them once.
#[utoipa::path(get, path = "/admin/v1/usage", tag = "admin",
    params(("period" = String, Query, pattern = r"^([2-9][0-9]{3})-(0[1-9]|1[0-2])$", description = "a month, YYYY-MM (UTC)"),
        ("format" = Option<crate::openapi::UsageFormat>, Query)),
    responses((status = 200, description = "the records in the format asked for: an object (json), an array of meter events (stripe), CSV text, or a batch of CloudEvents",
        content((Value = "application/json"), (String = "text/csv"), (Vec<Object> = "application/cloudevents-batch+json"))),
    (status = 400, description = "a bad period or format", body = crate::openapi::ErrorResponse),
    (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse),
    (status = 503, description = "the catalog cannot be read", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn usage(
    state: web::Data<AppState>,
    _: AdminAuth,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    let bad = |e: MeteringError| ApiError::new(ErrorCode::InvalidRequest, e.to_string());
    let period = Period::parse(&query.period).map_err(bad)?;
    let format = Format::parse(query.format.as_deref().unwrap_or("json")).map_err(bad)?;
    let export = tenantry_metering::export(
        state.provisioner.catalog(),
        state.provisioner.fleet_connector(),
        &ExportOptions::new(period),
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "usage export failed");
        ApiError::new(
            ErrorCode::Unavailable,
            "the catalog cannot be read now; retry shortly",
        )
        .retry_after(5)
    })?;
    for e in &export.errors {
        tracing::warn!(tenant = %e.slug, server = %e.server, error = %e.error, "usage not read");
    }
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((INCOMPLETE, export.errors.len().to_string()))
        .body(format.render(&export)))
}

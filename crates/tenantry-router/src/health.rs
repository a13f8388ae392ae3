use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;
use tenantry_catalog::CatalogError;

use crate::{ApiError, AppState, ErrorCode};

const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "the process answers", body = Object)))]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: the catalog answers and is migrated to this build's version.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "the catalog answers and is migrated", body = Object), (status = 503, body = crate::openapi::ErrorResponse)))]
async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let not_ready = |message: &str| ApiError::new(ErrorCode::NotReady, message).retry_after(1);
    match tokio::time::timeout(READY_TIMEOUT, state.catalog.check_ready()).await {
        Ok(Ok(())) => Ok(HttpResponse::Ok().json(json!({"status": "ready", "catalog": "ok"}))),
        Ok(Err(CatalogError::NotMigrated { .. })) => Err(not_ready(
            "the catalog is not migrated to this version; run `tenantry catalog migrate`",
        )),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: catalog check failed");
            Err(not_ready("the catalog database is unreachable"))
        }
        Err(_) => Err(not_ready("the catalog database did not answer in time")),
    }
}

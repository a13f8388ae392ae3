//! `/openapi.json`, generated from the handlers' own annotations.

use actix_web::HttpResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The shape of every error response.
#[derive(ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// A stable code: unauthorized, forbidden, tenant_not_found, not_found, conflict,
    /// tenant_suspended, quota_exceeded, rate_limited, payload_too_large,
    /// headers_too_large, invalid_request, tenant_unavailable, unavailable, not_ready, internal.
    pub code: String,
    pub message: String,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tenantry", description = "Database-per-tenant control plane: tenant API and admin API"),
    paths(
        crate::health::healthz,
        crate::health::readyz,
        crate::tasks::create,
        crate::tasks::list,
        crate::tasks::get,
        crate::tasks::update,
        crate::tasks::delete,
        crate::tasks::usage,
        crate::sql::run,
        crate::admin::create_tenant,
        crate::admin::list_tenants,
        crate::admin::show_tenant,
        crate::admin::delete_tenant,
        crate::admin::suspend_tenant,
        crate::admin::resume_tenant,
        crate::admin::export_tenant,
        crate::admin::list_servers,
        crate::admin::add_server,
        crate::admin::migrations,
    ),
    components(schemas(ErrorResponse, ErrorDetail)),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

pub(crate) async fn openapi() -> HttpResponse {
    match ApiDoc::openapi().to_json() {
        Ok(json) => HttpResponse::Ok()
            .content_type("application/json")
            .body(json),
        Err(e) => crate::ApiError::internal(&e).into(),
    }
}

impl From<crate::ApiError> for HttpResponse {
    fn from(e: crate::ApiError) -> Self {
        actix_web::ResponseError::error_response(&e)
    }
}

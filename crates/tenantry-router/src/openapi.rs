//! `/openapi.json`, generated from the handlers' own annotations.

use actix_web::HttpResponse;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

/// The shape of every error response.
#[derive(ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// A stable code: unauthorized, forbidden, tenant_not_found, not_found, conflict,
    /// tenant_suspended, tenant_moving, quota_exceeded, rate_limited, payload_too_large,
    /// headers_too_large, invalid_request, tenant_unavailable, unavailable, not_ready, internal.
    pub code: String,
    pub message: String,
}

/// A string schema that takes exactly `values`: the enums below are made from the lists
/// the handlers check against, so the document cannot drift from them.
fn one_of<'a>(description: &str, values: impl IntoIterator<Item = &'a str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(values))
        .into()
}

/// An agent a task runs on (`tenantry_types::AGENTS`).
pub struct AgentName;

impl PartialSchema for AgentName {
    fn schema() -> RefOr<Schema> {
        one_of(
            "an agent; the plan must include it (else 403)",
            tenantry_types::AGENTS.iter().map(|(a, _)| a.as_str()),
        )
    }
}

impl ToSchema for AgentName {}

/// A task's status (the statuses the tasks handlers accept).
pub struct TaskStatus;

impl PartialSchema for TaskStatus {
    fn schema() -> RefOr<Schema> {
        one_of("a task's status", crate::tasks::STATUSES.iter().copied())
    }
}

impl ToSchema for TaskStatus {}

/// A plan of the built-in plan table (`plans.*` may configure more).
pub struct PlanName;

impl PartialSchema for PlanName {
    fn schema() -> RefOr<Schema> {
        let plans = tenantry_types::Plan::defaults();
        one_of(
            "a plan: the built-in ones (a deployment may configure more in plans.*)",
            plans.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        )
    }
}

impl ToSchema for PlanName {}

/// A tenant's lifecycle state.
pub struct TenantStateName;

impl PartialSchema for TenantStateName {
    fn schema() -> RefOr<Schema> {
        one_of(
            "a tenant's lifecycle state",
            tenantry_types::TenantState::ALL.iter().map(|s| s.as_str()),
        )
    }
}

impl ToSchema for TenantStateName {}

/// A ledger step's status (`operations.status`).
pub struct OperationStatus;

impl PartialSchema for OperationStatus {
    fn schema() -> RefOr<Schema> {
        one_of(
            "a ledger step's status",
            crate::admin_views::OPERATION_STATUSES.iter().copied(),
        )
    }
}

impl ToSchema for OperationStatus {}

/// A format of the usage export (`tenantry_metering::Format::NAMES`).
pub struct UsageFormat;

impl PartialSchema for UsageFormat {
    fn schema() -> RefOr<Schema> {
        one_of(
            "json (default), csv, stripe (meter events) or cloudevents (OpenMeter)",
            tenantry_metering::Format::NAMES,
        )
    }
}

impl ToSchema for UsageFormat {}

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
        crate::admin::change_tenant,
        crate::admin::suspend_tenant,
        crate::admin::resume_tenant,
        crate::admin::move_tenant,
        crate::admin::export_tenant,
        crate::admin::list_servers,
        crate::admin::add_server,
        crate::admin::migrations,
        crate::usage::usage,
        crate::admin_views::fleet,
        crate::admin_views::fleet_tenants,
        crate::admin_views::migration_runs,
        crate::admin_views::migration_run,
        crate::admin_views::operations,
        crate::admin_views::operation,
        crate::console::index,
    ),
    components(schemas(ErrorResponse, ErrorDetail, AgentName, TaskStatus, PlanName, TenantStateName, OperationStatus, UsageFormat)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn param<'a>(doc: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
    }

    #[test]
    fn the_document_declares_what_the_handlers_enforce() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["AgentName"]["enum"],
            json!(["claude", "codex", "perplexity", "cursor", "opencode"])
        );
        assert_eq!(schemas["TaskStatus"]["enum"], json!(crate::tasks::STATUSES));
        assert_eq!(
            schemas["PlanName"]["enum"],
            json!(["free", "pro", "enterprise"])
        );
        assert_eq!(
            schemas["TenantStateName"]["enum"].as_array().unwrap().len(),
            tenantry_types::TenantState::ALL.len()
        );
        let title = &schemas["NewTask"]["properties"]["title"];
        assert_eq!(title["minLength"], 1);
        assert!(title["pattern"].as_str().unwrap().contains("{0,498}"));
        assert_eq!(
            schemas["NewTenant"]["properties"]["slug"]["pattern"],
            "^[a-z][a-z0-9-]{1,39}$"
        );
        assert_eq!(
            schemas["TenantChange"]["properties"]["plan"]["$ref"],
            "#/components/schemas/PlanName"
        );
        assert_eq!(
            schemas["NewServer"]["properties"]["capacity"]["maximum"],
            i32::MAX
        );
        let limit = &param(&doc, "/v1/tasks", "get", "limit")["schema"];
        assert_eq!(
            (&limit["minimum"], &limit["maximum"]),
            (&json!(1), &json!(100))
        );
        let id = &param(&doc, "/v1/tasks/{id}", "patch", "id")["schema"];
        assert_eq!(id["format"], "uuid");
        let key = &param(&doc, "/v1/tasks", "post", "Idempotency-Key")["schema"];
        assert_eq!(key["maxLength"], 200);
        assert_eq!(
            schemas["UsageFormat"]["enum"],
            json!(tenantry_metering::Format::NAMES)
        );
        let period = param(&doc, "/admin/v1/usage", "get", "period");
        assert_eq!(period["required"], true);
        // Years from 2000, months 01 to 12: what `Period::parse` takes.
        assert_eq!(
            period["schema"]["pattern"],
            r"^([2-9][0-9]{3})-(0[1-9]|1[0-2])$"
        );
        for (text, valid) in [
            ("2000-01", true),
            ("9999-12", true),
            ("1999-12", false),
            ("2026-13", false),
        ] {
            assert_eq!(
                tenantry_metering::Period::parse(text).is_ok(),
                valid,
                "{text}"
            );
        }
        // Every JSON body can be refused as malformed (400) or too large (413).
        for (path, method) in [
            ("/v1/tasks", "post"),
            ("/v1/tasks/{id}", "patch"),
            ("/admin/v1/tenants", "post"),
            ("/admin/v1/tenants/{slug}", "patch"),
            ("/admin/v1/servers", "post"),
        ] {
            let responses = &doc["paths"][path][method]["responses"];
            for status in ["400", "413", "422"] {
                assert!(responses[status].is_object(), "{method} {path} {status}");
            }
        }
    }
}

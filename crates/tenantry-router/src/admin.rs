//! The admin API: the provisioner's library behind HTTP, for programs. No lifecycle step
//! is implemented here.

use crate::edge::resource;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use tenantry_provision::{AddServer, CreateTenant, ErrorKind, ProvisionError};

use crate::auth::AdminAuth;
use crate::error::{storable_opt, storable_text};
use crate::{ApiError, AppState, ErrorCode};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/admin/v1/tenants")
            .route(web::post().to(create_tenant))
            .route(web::get().to(list_tenants)),
    );
    cfg.service(
        resource("/admin/v1/tenants/{slug}")
            .route(web::get().to(show_tenant))
            .route(web::delete().to(delete_tenant))
            .route(web::patch().to(change_tenant)),
    );
    cfg.service(resource("/admin/v1/tenants/{slug}/suspend").route(web::post().to(suspend_tenant)));
    cfg.service(resource("/admin/v1/tenants/{slug}/resume").route(web::post().to(resume_tenant)));
    cfg.service(resource("/admin/v1/tenants/{slug}/move").route(web::post().to(move_tenant)));
    cfg.service(resource("/admin/v1/tenants/{slug}/export").route(web::get().to(export_tenant)));
    cfg.service(
        resource("/admin/v1/servers")
            .route(web::get().to(list_servers))
            .route(web::post().to(add_server)),
    );
    cfg.service(resource("/admin/v1/migrations").route(web::get().to(migrations)));
}

/// A tenant slug from a path: text that cannot be a slug names no tenant (and never
/// reaches the catalog).
fn path_slug(path: &str) -> Result<&str, ApiError> {
    tenantry_types::Slug::parse(path)
        .map(|_| path)
        .map_err(|_| ApiError::new(ErrorCode::NotFound, "no tenant with that slug"))
}

/// The provisioner's errors as the API shows them; failures are logged, not shown.
fn api(e: ProvisionError) -> ApiError {
    match e.kind() {
        ErrorKind::BadInput => ApiError::new(ErrorCode::UnprocessableRequest, e.to_string()),
        ErrorKind::NotFound => ApiError::new(ErrorCode::NotFound, e.to_string()),
        ErrorKind::Conflict => ApiError::new(ErrorCode::Conflict, e.to_string()),
        ErrorKind::Unavailable => {
            tracing::warn!(error = %e, "admin request: a server is unavailable");
            ApiError::new(
                ErrorCode::Unavailable,
                "a database server is unavailable or full; retry later",
            )
            .retry_after(5)
        }
        ErrorKind::Failed => ApiError::internal(&e),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTenant {
    #[schema(pattern = "^[a-z][a-z0-9-]{1,39}$")]
    slug: String,
    #[schema(value_type = Option<crate::openapi::PlanName>)]
    plan: Option<String>,
    /// A folder of the templates directory; default `templates.default`.
    #[schema(pattern = "^[a-z][a-z0-9_]{0,29}$")]
    template: Option<String>,
    /// A registered server's name; default the one with the most room.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,39}$")]
    server: Option<String>,
}

#[utoipa::path(post, path = "/admin/v1/tenants", tag = "admin", request_body = NewTenant,
    responses((status = 201, description = "created", body = Object), (status = 200, description = "existing, same options", body = Object),
    (status = 400, description = "not JSON, or text with NUL", body = crate::openapi::ErrorResponse), (status = 413, description = "body too large", body = crate::openapi::ErrorResponse),
    (status = 409, body = crate::openapi::ErrorResponse), (status = 422, body = crate::openapi::ErrorResponse), (status = 503, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn create_tenant(
    state: web::Data<AppState>,
    _: AdminAuth,
    body: web::Json<NewTenant>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    storable_text("slug", &b.slug)?;
    storable_opt("plan", b.plan.as_deref())?;
    storable_opt("template", b.template.as_deref())?;
    storable_opt("server", b.server.as_deref())?;
    let (tenant, created) = state
        .provisioner
        .create_tenant(CreateTenant {
            slug: b.slug,
            plan: b.plan,
            template: b.template,
            server: b.server,
        })
        .await
        .map_err(api)?;
    Ok(if created {
        HttpResponse::Created().json(tenant)
    } else {
        HttpResponse::Ok().json(tenant)
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
}

#[utoipa::path(get, path = "/admin/v1/tenants", tag = "admin", params(("state" = Option<crate::openapi::TenantStateName>, Query)),
    responses((status = 200, body = Vec<Object>), (status = 400, description = "unknown state", body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn list_tenants(
    state: web::Data<AppState>,
    _: AdminAuth,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let wanted = match &query.state {
        Some(s) => Some(s.parse().map_err(|e: tenantry_types::UnknownState| {
            ApiError::new(ErrorCode::InvalidRequest, e.to_string())
        })?),
        None => None,
    };
    let tenants = state.provisioner.list_tenants(wanted).await.map_err(api)?;
    Ok(HttpResponse::Ok().json(tenants))
}

#[utoipa::path(get, path = "/admin/v1/tenants/{slug}", tag = "admin", params(("slug" = String, Path, pattern = "^[a-z][a-z0-9-]{1,39}$")),
    responses((status = 200, body = Object), (status = 404, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn show_tenant(
    state: web::Data<AppState>,
    _: AdminAuth,
    slug: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let t = state
        .provisioner
        .show_tenant(path_slug(&slug)?)
        .await
        .map_err(api)?;
    Ok(HttpResponse::Ok().json(t))
}

#[derive(Debug, Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

#[utoipa::path(delete, path = "/admin/v1/tenants/{slug}", tag = "admin", params(("slug" = String, Path, pattern = "^[a-z][a-z0-9-]{1,39}$"), ("purge" = Option<bool>, Query)),
    responses((status = 200, body = Object), (status = 400, description = "purge is not true or false", body = crate::openapi::ErrorResponse), (status = 409, description = "the tenant is in a state that cannot be deleted", body = crate::openapi::ErrorResponse), (status = 404, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn delete_tenant(
    state: web::Data<AppState>,
    _: AdminAuth,
    slug: web::Path<String>,
    query: web::Query<DeleteQuery>,
) -> Result<HttpResponse, ApiError> {
    let t = state
        .provisioner
        .delete_tenant(path_slug(&slug)?, query.purge)
        .await
        .map_err(api)?;
    Ok(HttpResponse::Ok().json(t))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantChange {
    /// The plan to move the tenant to; the same plan again changes nothing.
    #[schema(value_type = crate::openapi::PlanName)]
    plan: String,
}

/// A plan change: recorded with its time and the admin token's subject; every router
/// applies the new plan at the tenant's next request.
#[utoipa::path(patch, path = "/admin/v1/tenants/{slug}", tag = "admin", request_body = TenantChange, params(("slug" = String, Path, pattern = "^[a-z][a-z0-9-]{1,39}$")),
    responses((status = 200, body = Object), (status = 400, description = "not JSON, or text with NUL", body = crate::openapi::ErrorResponse), (status = 413, description = "body too large", body = crate::openapi::ErrorResponse),
    (status = 422, description = "unknown plan or field", body = crate::openapi::ErrorResponse), (status = 404, body = crate::openapi::ErrorResponse), (status = 409, description = "the tenant is not ready or suspended", body = crate::openapi::ErrorResponse), (status = 503, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn change_tenant(
    state: web::Data<AppState>,
    auth: AdminAuth,
    slug: web::Path<String>,
    body: web::Json<TenantChange>,
) -> Result<HttpResponse, ApiError> {
    let slug = path_slug(&slug)?;
    storable_text("plan", &body.plan)?;
    // The token's subject, as text the catalog can store.
    let by = format!("admin:{}", auth.claims.sub.replace('\0', ""));
    let t = state
        .provisioner
        .set_plan(slug, &body.plan, &by)
        .await
        .map_err(api)?;
    state.resolver.invalidate(slug);
    Ok(HttpResponse::Ok().json(t))
}

#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/suspend", tag = "admin", params(("slug" = String, Path, pattern = "^[a-z][a-z0-9-]{1,39}$")),
    responses((status = 200, body = Object), (status = 404, body = crate::openapi::ErrorResponse), (status = 409, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn suspend_tenant(
    state: web::Data<AppState>,
    _: AdminAuth,
    slug: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let t = state
        .provisioner
        .suspend_tenant(path_slug(&slug)?)
        .await
        .map_err(api)?;
    state.resolver.invalidate(&slug);
    Ok(HttpResponse::Ok().json(t))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MoveRequest {
    /// The target server's name.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,39}$")]
    to: String,
    /// Copy with pg_dump | pg_restore while writes are refused, even where the servers
    /// could replicate logically.
    #[serde(default)]
    offline: bool,
    /// How long the online cutover may block the tenant's writes; default 30.
    #[schema(minimum = 1, maximum = 3600)]
    cutover_timeout_s: Option<u64>,
}

/// Starts moving a tenant to another server and answers at once with the operation
/// whose progress `GET /admin/v1/operations/{id}` reports; the move runs in the background.
#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/move", tag = "admin", request_body = MoveRequest, params(("slug" = String, Path, pattern = "^[a-z][a-z0-9-]{1,39}$")),
    responses((status = 202, description = "the move started: {operation, move}", body = Object), (status = 400, description = "not JSON, or text with NUL", body = crate::openapi::ErrorResponse), (status = 413, description = "body too large", body = crate::openapi::ErrorResponse),
    (status = 422, description = "an unknown, draining or full server, the tenant's own, or a bad timeout", body = crate::openapi::ErrorResponse), (status = 404, body = crate::openapi::ErrorResponse), (status = 409, description = "the tenant is not ready or suspended, or busy", body = crate::openapi::ErrorResponse), (status = 503, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn move_tenant(
    state: web::Data<AppState>,
    _: AdminAuth,
    slug: web::Path<String>,
    body: web::Json<MoveRequest>,
) -> Result<HttpResponse, ApiError> {
    let slug = path_slug(&slug)?;
    storable_text("to", &body.to)?;
    let timeout = body.cutover_timeout_s.unwrap_or(30);
    let started = state
        .provisioner
        .start_move(tenantry_provision::MoveTenant {
            slug: slug.to_owned(),
            to: body.to.clone(),
            offline: body.offline,
            cutover_timeout: std::time::Duration::from_secs(timeout),
        })
        .await
        .map_err(api)?;
    let answer = serde_json::json!({"operation": started.info.operation, "move": started.info});
    let provisioner = state.provisioner.clone();
    // The move holds the tenant's lock; it runs on after this response (its outcome is
    // in the ledger and the operation).
    tokio::spawn(async move {
        if let Err(e) = provisioner.run_move(started).await {
            tracing::warn!(error = %e, "a move started over the admin API failed");
        }
    });
    Ok(HttpResponse::Accepted().json(answer))
}

#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/resume", tag = "admin", params(("slug" = String, Path, pattern = "^[a-z][a-z0-9-]{1,39}$")),
    responses((status = 200, body = Object), (status = 404, body = crate::openapi::ErrorResponse), (status = 409, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn resume_tenant(
    state: web::Data<AppState>,
    _: AdminAuth,
    slug: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let t = state
        .provisioner
        .resume_tenant(path_slug(&slug)?)
        .await
        .map_err(api)?;
    state.resolver.invalidate(&slug);
    Ok(HttpResponse::Ok().json(t))
}

/// The archive, streamed from a temporary file that is removed afterwards.
#[utoipa::path(get, path = "/admin/v1/tenants/{slug}/export", tag = "admin", params(("slug" = String, Path, pattern = "^[a-z][a-z0-9-]{1,39}$")),
    responses((status = 200, description = "a pg_dump custom-format archive", content_type = "application/octet-stream"), (status = 404, body = crate::openapi::ErrorResponse), (status = 409, description = "the tenant is not ready or suspended, or changed during the export", body = crate::openapi::ErrorResponse), (status = 503, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn export_tenant(
    state: web::Data<AppState>,
    _: AdminAuth,
    slug: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let before = state
        .provisioner
        .show_tenant(path_slug(&slug)?)
        .await
        .map_err(api)?;
    let dir = tempfile::tempdir().map_err(|e| ApiError::internal(&e))?;
    let path = dir.path().join("export.dump");
    if let Err(e) = state.provisioner.export_tenant(&slug, &path).await {
        return Err(export_failed(&state, &before, e).await);
    }
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(&e))?
        .len();
    let stream = tokio_util::io::ReaderStream::new(file);
    // The folder lives until the stream has been sent.
    let stream = futures_util::StreamExt::map(stream, move |chunk| {
        let _keep = &dir;
        chunk
    });
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{}.dump\"", slug.as_str()),
        ))
        .body(actix_web::body::SizedStream::new(size, stream)))
}

/// A suspend or delete ends the tenant's sessions, pg_dump's among them: an export that
/// failed while the tenant changed (its generation moved on, or it is gone) is a
/// conflict to retry, not an internal failure.
async fn export_failed(
    state: &AppState,
    before: &tenantry_provision::TenantInfo,
    e: ProvisionError,
) -> ApiError {
    if e.kind() == ErrorKind::Failed {
        let changed = state
            .provisioner
            .show_tenant(&before.slug)
            .await
            .map_or(true, |now| {
                now.id != before.id || now.generation != before.generation
            });
        if changed {
            tracing::warn!(error = %e, slug = %before.slug, "export ended by a lifecycle change");
            return ApiError::new(
                ErrorCode::Conflict,
                "the tenant was suspended, resumed or deleted during the export; retry it",
            );
        }
    }
    api(e)
}

#[utoipa::path(get, path = "/admin/v1/servers", tag = "admin", responses((status = 200, body = Vec<Object>), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn list_servers(state: web::Data<AppState>, _: AdminAuth) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.provisioner.list_servers().await.map_err(api)?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewServer {
    #[schema(pattern = "^[a-z][a-z0-9-]{0,39}$")]
    name: String,
    /// `postgres://user:password@host:port/database`, of a role that may create
    /// databases and roles.
    #[schema(min_length = 1, pattern = "^[^\\u0000]+$")]
    url: String,
    /// Tenants it may hold; default `provision.default_capacity`.
    #[schema(minimum = 1, maximum = 2147483647)]
    capacity: Option<u32>,
    /// Connections Tenantry may open to it; default (and at most) its own max_connections.
    #[schema(minimum = 1, maximum = 2147483647)]
    max_connections: Option<u32>,
}

#[utoipa::path(post, path = "/admin/v1/servers", tag = "admin", request_body = NewServer,
    responses((status = 201, body = Object), (status = 400, description = "not JSON, or text with NUL", body = crate::openapi::ErrorResponse), (status = 413, description = "body too large", body = crate::openapi::ErrorResponse), (status = 409, body = crate::openapi::ErrorResponse), (status = 422, body = crate::openapi::ErrorResponse), (status = 503, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn add_server(
    state: web::Data<AppState>,
    _: AdminAuth,
    body: web::Json<NewServer>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    storable_text("name", &b.name)?;
    storable_text("url", &b.url)?;
    // The catalog keeps them as integer (i32).
    for (field, value) in [
        ("capacity", b.capacity),
        ("max_connections", b.max_connections),
    ] {
        if value.is_some_and(|n| i32::try_from(n).is_err()) {
            return Err(ApiError::new(
                ErrorCode::UnprocessableRequest,
                format!("{field} must be at most {}", i32::MAX),
            ));
        }
    }
    let server = state
        .provisioner
        .add_server(AddServer {
            name: b.name,
            url: secrecy::SecretString::from(b.url),
            capacity: b.capacity,
            max_connections: b.max_connections,
        })
        .await
        .map_err(api)?;
    Ok(HttpResponse::Created().json(server))
}

/// Fleet schema status, as `tenantry migrate status` prints it: each template's latest
/// version (from this router's templates folder) and each live tenant's version and
/// last migration result.
#[utoipa::path(get, path = "/admin/v1/migrations", tag = "admin", responses((status = 200, body = Object), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse), (status = 503, description = "the catalog or the templates folder cannot be read", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn migrations(state: web::Data<AppState>, _: AdminAuth) -> Result<HttpResponse, ApiError> {
    let dir = &state.provisioner.options().templates_dir;
    let status = tenantry_migrate::fleet::status(state.provisioner.catalog(), dir)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "fleet status unavailable");
            ApiError::new(
                ErrorCode::Unavailable,
                "the fleet's status cannot be read now (catalog or templates folder); retry shortly",
            )
            .retry_after(5)
        })?;
    Ok(HttpResponse::Ok().json(status))
}

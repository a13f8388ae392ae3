//! The admin API: the provisioner's library behind HTTP, for programs. No lifecycle step
//! is implemented here.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use tenantry_provision::{AddServer, CreateTenant, ErrorKind, ProvisionError};

use crate::auth::AdminAuth;
use crate::{ApiError, AppState, ErrorCode};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/v1/tenants", web::post().to(create_tenant))
        .route("/admin/v1/tenants", web::get().to(list_tenants))
        .route("/admin/v1/tenants/{slug}", web::get().to(show_tenant))
        .route("/admin/v1/tenants/{slug}", web::delete().to(delete_tenant))
        .route(
            "/admin/v1/tenants/{slug}/suspend",
            web::post().to(suspend_tenant),
        )
        .route(
            "/admin/v1/tenants/{slug}/resume",
            web::post().to(resume_tenant),
        )
        .route(
            "/admin/v1/tenants/{slug}/export",
            web::get().to(export_tenant),
        )
        .route("/admin/v1/servers", web::get().to(list_servers))
        .route("/admin/v1/servers", web::post().to(add_server))
        .route("/admin/v1/migrations", web::get().to(migrations));
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
    slug: String,
    plan: Option<String>,
    template: Option<String>,
    server: Option<String>,
}

#[utoipa::path(post, path = "/admin/v1/tenants", tag = "admin", request_body = NewTenant,
    responses((status = 201, description = "created", body = Object), (status = 200, description = "existing, same options", body = Object),
    (status = 409, body = crate::openapi::ErrorResponse), (status = 422, body = crate::openapi::ErrorResponse), (status = 503, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)),
    security(("bearer" = [])))]
async fn create_tenant(
    state: web::Data<AppState>,
    _: AdminAuth,
    body: web::Json<NewTenant>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
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

#[utoipa::path(get, path = "/admin/v1/tenants", tag = "admin", params(("state" = Option<String>, Query)),
    responses((status = 200, body = Vec<Object>), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
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

#[utoipa::path(get, path = "/admin/v1/tenants/{slug}", tag = "admin", params(("slug" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn show_tenant(
    state: web::Data<AppState>,
    _: AdminAuth,
    slug: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let t = state.provisioner.show_tenant(&slug).await.map_err(api)?;
    Ok(HttpResponse::Ok().json(t))
}

#[derive(Debug, Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

#[utoipa::path(delete, path = "/admin/v1/tenants/{slug}", tag = "admin", params(("slug" = String, Path), ("purge" = Option<bool>, Query)),
    responses((status = 200, body = Object), (status = 404, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn delete_tenant(
    state: web::Data<AppState>,
    _: AdminAuth,
    slug: web::Path<String>,
    query: web::Query<DeleteQuery>,
) -> Result<HttpResponse, ApiError> {
    let t = state
        .provisioner
        .delete_tenant(&slug, query.purge)
        .await
        .map_err(api)?;
    Ok(HttpResponse::Ok().json(t))
}

#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/suspend", tag = "admin", params(("slug" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = crate::openapi::ErrorResponse), (status = 409, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn suspend_tenant(
    state: web::Data<AppState>,
    _: AdminAuth,
    slug: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let t = state.provisioner.suspend_tenant(&slug).await.map_err(api)?;
    state.resolver.invalidate(&slug);
    Ok(HttpResponse::Ok().json(t))
}

#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/resume", tag = "admin", params(("slug" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = crate::openapi::ErrorResponse), (status = 409, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn resume_tenant(
    state: web::Data<AppState>,
    _: AdminAuth,
    slug: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let t = state.provisioner.resume_tenant(&slug).await.map_err(api)?;
    state.resolver.invalidate(&slug);
    Ok(HttpResponse::Ok().json(t))
}

/// The archive, streamed from a temporary file that is removed afterwards.
#[utoipa::path(get, path = "/admin/v1/tenants/{slug}/export", tag = "admin", params(("slug" = String, Path)),
    responses((status = 200, description = "a pg_dump custom-format archive", content_type = "application/octet-stream"), (status = 404, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn export_tenant(
    state: web::Data<AppState>,
    _: AdminAuth,
    slug: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let dir = tempfile::tempdir().map_err(|e| ApiError::internal(&e))?;
    let path = dir.path().join("export.dump");
    state
        .provisioner
        .export_tenant(&slug, &path)
        .await
        .map_err(api)?;
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

#[utoipa::path(get, path = "/admin/v1/servers", tag = "admin", responses((status = 200, body = Vec<Object>), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn list_servers(state: web::Data<AppState>, _: AdminAuth) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.provisioner.list_servers().await.map_err(api)?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewServer {
    name: String,
    url: String,
    capacity: Option<u32>,
    max_connections: Option<u32>,
}

#[utoipa::path(post, path = "/admin/v1/servers", tag = "admin", request_body = NewServer,
    responses((status = 201, body = Object), (status = 409, body = crate::openapi::ErrorResponse), (status = 422, body = crate::openapi::ErrorResponse), (status = 503, body = crate::openapi::ErrorResponse), (status = 401, body = crate::openapi::ErrorResponse), (status = 403, description = "no admin scope", body = crate::openapi::ErrorResponse)), security(("bearer" = [])))]
async fn add_server(
    state: web::Data<AppState>,
    _: AdminAuth,
    body: web::Json<NewServer>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
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

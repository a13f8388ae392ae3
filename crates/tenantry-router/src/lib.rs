//! Tenantry's HTTP edge: the actix-web application, its one error-code registry
//! ([`ErrorCode`]), and health and readiness.
//!
//! Only this crate knows actix. Handlers return [`ApiError`]; nothing else reaches a
//! response body, so no driver text or internal detail can leak.

mod error;
mod health;

pub use error::{ApiError, ErrorCode};

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{dev::ServerHandle, web, App, HttpServer};
use tenantry_catalog::Catalog;

/// What the router needs to run.
#[derive(Clone)]
pub struct RouterOptions {
    pub bind: SocketAddr,
    pub max_body_bytes: usize,
    pub shutdown_timeout: Duration,
    /// Worker threads; `None` is one per core.
    pub workers: Option<usize>,
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub catalog: Catalog,
}

/// A started router: its bound address, a handle to stop it, and the future that
/// completes when it has stopped.
pub struct RunningRouter {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub server: actix_web::dev::Server,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}; choose another address with http.bind (TENANTRY__HTTP__BIND)")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds and starts the router. It does not listen for signals: the caller decides
/// when to stop it ([`ServerHandle::stop`] with `graceful = true` drains requests in flight).
pub fn start(opts: &RouterOptions, state: AppState) -> Result<RunningRouter, BindError> {
    let max_body = opts.max_body_bytes;
    let data = web::Data::new(state);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(error::json_config(max_body))
            .app_data(error::query_config())
            .app_data(error::path_config())
            .wrap(tracing_actix_web::TracingLogger::default())
            .configure(health::routes)
            .default_service(web::to(error::not_found))
    })
    .disable_signals()
    .shutdown_timeout(opts.shutdown_timeout.as_secs())
    .max_connection_rate(256);
    if let Some(workers) = opts.workers {
        server = server.workers(workers);
    }
    let server = server.bind(opts.bind).map_err(|source| BindError {
        addr: opts.bind,
        source,
    })?;
    let addr = server.addrs().first().copied().unwrap_or(opts.bind);
    let server = server.run();
    Ok(RunningRouter {
        addr,
        handle: server.handle(),
        server,
    })
}

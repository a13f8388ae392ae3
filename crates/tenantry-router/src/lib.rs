//! Tenantry's HTTP edge: the actix-web application, its one error-code registry
//! ([`ErrorCode`]), and health and readiness.
//!
//! Only this crate knows actix. Handlers return [`ApiError`]; nothing else reaches a
//! response body, so no driver text or internal detail can leak.

mod admin;
mod admin_views;
pub mod auth;
pub mod business;
mod console;
mod edge;
pub use edge::Drain;
mod error;
pub mod health;
mod meter;
mod metrics;
pub mod openapi;
pub mod replicas;
pub mod resolve;
mod sql;
mod tasks;
mod tenant;
mod usage;

pub use error::{ApiError, ErrorCode};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{dev::ServerHandle, web, App, HttpServer};
use secrecy::SecretString;
use tenantry_catalog::{Catalog, Sealer};
use tenantry_config::Settings;
use tenantry_pools::{PoolConfig, Pools};
use tenantry_provision::Provisioner;
use uuid::Uuid;

/// What the router needs to run.
#[derive(Clone)]
pub struct RouterOptions {
    pub bind: SocketAddr,
    pub max_body_bytes: usize,
    pub shutdown_timeout: Duration,
    /// Worker threads; `None` is one per core.
    pub workers: Option<usize>,
    /// `/metrics` on its own address (and not on `bind`).
    pub metrics_bind: Option<SocketAddr>,
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub catalog: Catalog,
    /// Tenant tokens (`auth.*`).
    pub auth: Arc<auth::Authenticator>,
    /// Admin tokens (`auth.admin.*`); `None` when no admin key is configured.
    pub admin_auth: Option<Arc<auth::Authenticator>>,
    pub resolver: Arc<resolve::Resolver>,
    pub pools: Pools,
    pub limits: Arc<tenant::RateLimits>,
    pub metrics: Arc<metrics::Metrics>,
    /// The catalog's readiness and figures, refreshed every second.
    pub probe: Arc<health::Probe>,
    pub provisioner: Provisioner,
    /// Requests and tasks counted for the catalog, flushed at a bounded rate.
    pub meter: Arc<meter::Meter>,
    /// The fleet's business figures, refreshed every `router.business_refresh_s`.
    pub business: Arc<business::Business>,
    pub min_schema_version: i32,
    /// How long a request waits for its tenant's cutover to end (`router.cutover_hold_ms`).
    pub cutover_hold: Duration,
    pub sql: sql::SqlLimits,
    /// The requests in flight, for a stop that lets them finish ([`edge::Drain::stop`]).
    pub drain: Arc<Drain>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Auth(#[from] auth::AuthSetupError),
    #[error(transparent)]
    Catalog(#[from] tenantry_catalog::CatalogError),
}

/// The router's background work: the tenant change listener, the route cache's
/// sweeper, the pool reaper, the
/// replica heartbeat, the usage flusher. [`Background::stop`] ends it, flushes the usage
/// counted since the last flush, and deregisters the replica.
pub struct Background {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    flusher: tokio::task::JoinHandle<()>,
    stop_flusher: tokio::sync::watch::Sender<bool>,
    catalog: Catalog,
    pools: Pools,
    replica: Uuid,
}

impl Background {
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        // Never aborted mid-flush: told to stop, it flushes once more and ends.
        let _ = self.stop_flusher.send(true);
        if let Err(e) = self.flusher.await {
            tracing::error!(error = %e, "the usage flusher failed");
        }
        replicas::deregister(&self.catalog, &self.pools, self.replica).await;
    }
}

impl AppState {
    /// Everything the router needs, from settings; starts its background work.
    pub async fn start(
        settings: &Settings,
        catalog: Catalog,
        catalog_url: SecretString,
        sealer: Sealer,
        provisioner: Provisioner,
    ) -> Result<(Self, Background), SetupError> {
        let r = &settings.router;
        let auth = auth::Authenticator::new(
            &settings.auth.issuer,
            &settings.auth.audience,
            settings.auth.hs256_secret.as_ref(),
            &settings.auth.public_keys,
        )?;
        let a = &settings.auth.admin;
        let admin_auth = if a.is_configured() {
            Some(Arc::new(auth::Authenticator::new(
                &a.issuer,
                &a.audience,
                a.hs256_secret.as_ref(),
                &a.public_keys,
            )?))
        } else {
            None
        };
        let resolver = Arc::new(resolve::Resolver::new(
            catalog.clone(),
            sealer,
            Duration::from_secs(r.cache_ttl_s),
            Duration::from_secs(r.negative_ttl_s),
        ));
        let pools = Pools::new(
            PoolConfig {
                wait_timeout: Duration::from_millis(r.pool_wait_ms),
                priority_max_defer: Duration::from_millis(r.priority_max_defer_ms),
                connect_timeout: Duration::from_millis(r.pool_connect_ms),
                // A live server answers within the statement timeout (it cancels the
                // statement then): past it and the time to connect, it is taken as gone.
                answer_timeout: Duration::from_millis(
                    settings
                        .provision
                        .statement_timeout_ms
                        .max(r.sql_statement_timeout_ms)
                        + r.pool_connect_ms,
                ),
                idle_timeout: Duration::from_secs(r.idle_timeout_s),
                pool_idle_timeout: Duration::from_secs(r.pool_idle_s),
                // The tenant role's own limits, as start-up options: a tenant that changes
                // its role's or database's settings does not change the router's sessions.
                thread_slots: 0,
                handover_max_defer: tenantry_pools::HANDOVER_MAX_DEFER,
                connects_at_once: r.connects_at_once,
                session_options: format!(
                    "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
                    settings.provision.statement_timeout_ms,
                    settings.provision.idle_in_transaction_timeout_ms
                ),
            },
            // Nothing on a server until this replica holds a lease on its budget.
            0,
        );
        let replica = Uuid::now_v7();
        let every = Duration::from_secs(r.heartbeat_s);
        // Budgets are known before the first request.
        replicas::beat(&catalog, &pools, replica, every, true, true).await?;
        let budget_called = Arc::new(tokio::sync::Notify::new());
        let limits = Arc::new(tenant::RateLimits::default());
        let probe = Arc::new(health::Probe::new());
        probe.refresh(&catalog).await;
        let meter = Arc::new(meter::Meter::default());
        let (stop_flusher, stopped) = tokio::sync::watch::channel(false);
        let flusher = meter.spawn_flusher(
            catalog.clone(),
            Duration::from_millis(r.usage_flush_ms),
            stopped,
        );
        let business = Arc::new(business::Business::default());
        let tasks = vec![
            resolver.spawn_listener(catalog_url, budget_called.clone()),
            resolver.spawn_sweeper(),
            probe.spawn(catalog.clone(), Duration::from_secs(1)),
            business.spawn(catalog.clone(), Duration::from_secs(r.business_refresh_s)),
            pools.spawn_reaper(Duration::from_secs(1)),
            replicas::spawn(
                catalog.clone(),
                pools.clone(),
                replica,
                every,
                budget_called,
            ),
            {
                let limits = limits.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(tenant::SHRINK_EVERY);
                    loop {
                        tick.tick().await;
                        limits.shrink();
                    }
                })
            },
        ];
        let state = Self {
            catalog: catalog.clone(),
            auth: Arc::new(auth),
            admin_auth,
            resolver,
            pools,
            limits,
            metrics: Arc::new(metrics::Metrics::new()),
            probe,
            provisioner,
            meter,
            business,
            min_schema_version: r.min_schema_version,
            cutover_hold: Duration::from_millis(r.cutover_hold_ms),
            sql: sql::SqlLimits {
                statement_timeout_ms: r.sql_statement_timeout_ms,
                row_cap: r.sql_row_cap,
                max_result_bytes: r.sql_max_result_bytes,
            },
            drain: Arc::default(),
        };
        let background_pools = state.pools.clone();
        Ok((
            state,
            Background {
                tasks,
                flusher,
                stop_flusher,
                catalog,
                pools: background_pools,
                replica,
            },
        ))
    }
}

/// A started router: its bound address, a handle to stop it, and the future that
/// completes when it has stopped.
pub struct RunningRouter {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub server: actix_web::dev::Server,
    /// The `/metrics` server, when it has an address of its own.
    pub metrics: Option<(SocketAddr, actix_web::dev::Server)>,
    /// Its requests in flight: [`Drain::stop`] stops it once they are answered.
    pub drain: Arc<Drain>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}; choose another address with http.bind (TENANTRY__HTTP__BIND)")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds and starts the router. It does not listen for signals: the caller decides
/// when to stop it ([`Drain::stop`] lets the requests in flight finish first).
pub fn start(opts: &RouterOptions, state: AppState) -> Result<RunningRouter, BindError> {
    let max_body = opts.max_body_bytes;
    let drain = state.drain.clone();
    let data = web::Data::new(state);
    let metrics_apart = opts.metrics_bind.is_some();
    let metrics = match opts.metrics_bind {
        Some(addr) => {
            let data = data.clone();
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .service(edge::resource("/metrics").route(web::get().to(metrics::metrics)))
                    .default_service(web::to(error::not_found))
            })
            .disable_signals()
            .workers(1)
            .bind(addr)
            .map_err(|source| BindError { addr, source })?;
            let bound = server.addrs().first().copied().unwrap_or(addr);
            Some((bound, server.run()))
        }
        None => None,
    };
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(error::json_config(max_body))
            .app_data(error::query_config())
            .app_data(error::path_config())
            .wrap(edge::Edge)
            .configure(health::routes)
            .configure(|cfg| {
                if !metrics_apart {
                    cfg.service(edge::resource("/metrics").route(web::get().to(metrics::metrics)));
                }
            })
            .service(edge::resource("/openapi.json").route(web::get().to(openapi::openapi)))
            .configure(tasks::routes)
            .configure(sql::routes)
            .configure(admin::routes)
            .configure(admin_views::routes)
            .configure(console::routes)
            .configure(usage::routes)
            .default_service(web::to(error::not_found))
    })
    .disable_signals()
    // Longer than the idle timeouts of common load balancers (60 s), so the router is not
    // the side that closes a kept-alive connection as a request arrives on it.
    .keep_alive(Duration::from_secs(75))
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
        metrics,
        drain,
    })
}

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use tenantry_catalog::Catalog;
use tenantry_config::Settings;
use tenantry_provision::Provisioner;
use tenantry_router::{AppState, RouterOptions};

use crate::exit::CliError;

#[derive(Debug, clap::Args)]
pub struct Opts {}

pub async fn run(_opts: Opts, settings: Settings) -> Result<(), CliError> {
    let url = crate::context::catalog_url(&settings)?;
    let catalog = prepare_catalog(&url, &settings).await?;
    let provisioner = crate::context::provisioner_over(&settings, &catalog)?;
    reconcile_at_start(&provisioner).await;
    serve_until_signal(&settings, catalog, url, provisioner, |addr| {
        tracing::info!(%addr, "router listening");
        // The address actually bound: with `http.bind` port 0 only this line tells it.
        println!("Router listening on http://{addr}");
    })
    .await
}

/// Migrates the catalog, opens its pool and writes the configured plan table into it.
pub async fn prepare_catalog(url: &SecretString, settings: &Settings) -> Result<Catalog, CliError> {
    let report = tenantry_catalog::migrate(url)
        .await
        .context("migrate the catalog")?;
    tracing::info!(
        version = report.version,
        applied = report.applied.len(),
        "catalog migrated"
    );
    let catalog = Catalog::new(
        url,
        settings.catalog.pool_size,
        Duration::from_millis(settings.catalog.connect_timeout_ms),
    )?;
    let plans = settings.plans().map_err(CliError::usage)?;
    catalog
        .sync_plans(&plans)
        .await
        .context("write the plan table")?;
    Ok(catalog)
}

/// Finishes or undoes what a crash left half-done before serving; problems are logged,
/// not fatal (the operator's `tenantry reconcile` shows them in full).
pub async fn reconcile_at_start(provisioner: &Provisioner) {
    match provisioner.reconcile(false).await {
        Ok(report) if report.is_clean() => {
            tracing::info!(
                finished = report.finished.len(),
                undone = report.undone.len(),
                purged = report.purged.len(),
                "reconciled at start"
            );
        }
        Ok(report) => tracing::warn!(
            orphan_databases = report.orphan_databases.len(),
            orphan_roles = report.orphan_roles.len(),
            missing_databases = report.missing_databases.len(),
            errors = ?report.errors,
            "reconcile at start left work for an operator; run `tenantry reconcile`"
        ),
        Err(e) => tracing::warn!(error = %e, "reconcile at start failed"),
    }
}

/// Runs the router until SIGINT or SIGTERM, then drains requests in flight and returns.
pub async fn serve_until_signal(
    settings: &Settings,
    catalog: Catalog,
    catalog_url: SecretString,
    provisioner: Provisioner,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), CliError> {
    let opts = RouterOptions {
        bind: settings.http.bind,
        max_body_bytes: settings.http.max_body_bytes,
        shutdown_timeout: Duration::from_secs(settings.http.shutdown_timeout_s),
        workers: None,
        metrics_bind: settings.http.metrics_bind,
    };
    let sealer = crate::context::sealer(settings)?;
    let (state, background) = AppState::start(settings, catalog, catalog_url, sealer, provisioner)
        .await
        .map_err(|e| match e {
            tenantry_router::SetupError::Auth(e) => CliError::usage(e),
            other => CliError::failed(other),
        })?;
    let router = tenantry_router::start(&opts, state)?;
    // Caught before anyone is told we listen: one who then signals gets the drain.
    let stop = shutdown_signal();
    on_listening(router.addr);
    let metrics = router.metrics.map(|(addr, server)| {
        println!("Metrics on http://{addr}/metrics");
        let handle = server.handle();
        tokio::spawn(server);
        handle
    });
    let (handle, drain) = (router.handle.clone(), router.drain.clone());
    let mut server = tokio::spawn(router.server);
    let result = tokio::select! {
        signal = stop => {
            tracing::info!(signal, in_flight = drain.in_flight(), "shutting down: draining requests in flight");
            drain.stop(&handle, opts.shutdown_timeout).await;
            let _ = server.await;
            Ok(())
        }
        ended = &mut server => {
            ended
                .context("the router task failed")
                .and_then(|r| r.context("the router stopped"))
                .map_err(CliError::failed)
        }
    };
    if let Some(metrics) = metrics {
        metrics.stop(true).await;
    }
    background.stop().await;
    result
}

/// Catches SIGINT (Ctrl-C) and SIGTERM from now on (until then, either ends the process
/// on the spot); the future waits for the first and returns its name.
pub fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let catch = |kind: SignalKind, name: &str| {
        signal(kind)
            .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for {name}"))
            .ok()
    };
    let term = catch(SignalKind::terminate(), "SIGTERM");
    let int = catch(SignalKind::interrupt(), "SIGINT");
    async move {
        async fn next(signal: Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(term) => "SIGTERM",
            _ = next(int) => "SIGINT",
        }
    }
}

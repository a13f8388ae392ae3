//! `tenantry`: the router, the provisioner and the migration runner in one binary.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 bad usage or bad input.

mod commands;
mod context;
mod exit;
mod logging;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::exit::CliError;
use crate::output::Output;

#[derive(Debug, Parser)]
#[command(
    name = "tenantry",
    version,
    about = "A control plane for database-per-tenant PostgreSQL SaaS"
)]
struct Cli {
    /// One more configuration file, over config/default.toml and config/$TENANTRY_ENV.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Where tenant templates are read from (overrides templates.dir).
    #[arg(long, global = true, value_name = "DIR")]
    templates: Option<PathBuf>,

    /// How commands that print data print it.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything locally: a private PostgreSQL cluster under ./.tenantry, the
    /// catalog, and the router on 127.0.0.1:8080, until Ctrl-C.
    Dev(commands::dev::Opts),
    /// Run the router and admin API against the configured catalog (catalog.url).
    Serve(commands::serve::Opts),
    /// Manage the catalog database.
    #[command(subcommand)]
    Catalog(commands::catalog::Command),
    /// Register and manage the PostgreSQL servers that hold tenant databases.
    #[command(subcommand)]
    Server(commands::server::Command),
    /// Create and manage tenants.
    #[command(subcommand)]
    Tenant(commands::tenant::Command),
    /// Finish or undo half-done work, purge expired tenants, report orphans.
    Reconcile(commands::reconcile::Opts),
    /// Schema changes across the fleet: what is pending, where each tenant stands.
    #[command(subcommand)]
    Migrate(commands::migrate::Command),
    /// Usage per tenant and month, for billing.
    #[command(subcommand)]
    Usage(commands::usage::Command),
    /// Sign tokens for development and tests.
    #[command(subcommand)]
    Token(commands::token::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut settings = match tenantry_config::load(&tenantry_config::LoadOptions::from_process(
        cli.config.clone(),
    )) {
        Ok(s) => s,
        Err(e) => return CliError::usage(e).report(),
    };
    // --templates overrides templates.dir for every command (serve and dev included).
    if let Some(dir) = cli.templates.clone() {
        settings.templates.dir = dir;
    }
    if let Err(e) = logging::init(&settings) {
        return CliError::usage(e).report();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return CliError::failed(anyhow::anyhow!("start the async runtime: {e}")).report()
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(opts) => commands::dev::run(opts, settings).await,
            Command::Serve(opts) => commands::serve::run(opts, settings).await,
            Command::Catalog(cmd) => commands::catalog::run(cmd, settings, cli.output).await,
            Command::Server(cmd) => commands::server::run(cmd, settings, cli.output).await,
            Command::Tenant(cmd) => commands::tenant::run(cmd, settings, cli.output).await,
            Command::Token(cmd) => commands::token::run(cmd, settings, cli.output).await,
            Command::Migrate(cmd) => commands::migrate::run(cmd, settings, cli.output).await,
            Command::Usage(cmd) => commands::usage::run(cmd, settings).await,
            Command::Reconcile(opts) => commands::reconcile::run(opts, settings, cli.output).await,
        }
    });
    // Do not wait for lingering blocking tasks (a connection attempt, say) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

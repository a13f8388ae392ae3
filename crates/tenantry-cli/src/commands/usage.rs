use std::path::PathBuf;

use tenantry_config::Settings;
use tenantry_metering::{ExportOptions, Format, Period};

use crate::exit::CliError;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// A month's usage: one record per tenant and meter (tasks and task_cost_cents by
    /// agent, api_requests by route and status class, plan_days by plan), each with an
    /// idempotency key derived from them. Tenants whose databases cannot be read are
    /// named on stderr and left out (exit 1); the rest are exported.
    Export(ExportArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Json,
    Csv,
    /// Stripe meter events.
    Stripe,
    /// CloudEvents, as OpenMeter ingests them.
    Cloudevents,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The month, YYYY-MM (UTC).
    #[arg(long, value_name = "YYYY-MM")]
    period: String,
    #[arg(long, value_enum, default_value_t = FormatArg::Json)]
    format: FormatArg,
    /// Write to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Tenant databases read at once.
    #[arg(long, value_name = "N", default_value_t = 32)]
    concurrency: usize,
    /// Tenant databases read at once on one server.
    #[arg(long, value_name = "N", default_value_t = 8)]
    per_server: usize,
}

pub async fn run(cmd: Command, settings: Settings) -> Result<(), CliError> {
    let Command::Export(args) = cmd;
    let period = Period::parse(&args.period).map_err(CliError::usage)?;
    if args.concurrency == 0 || args.per_server == 0 {
        return Err(CliError::usage(anyhow::anyhow!(
            "--concurrency and --per-server must be at least 1"
        )));
    }
    let format = match args.format {
        FormatArg::Json => Format::Json,
        FormatArg::Csv => Format::Csv,
        FormatArg::Stripe => Format::Stripe,
        FormatArg::Cloudevents => Format::CloudEvents,
    };
    let provisioner = crate::context::provisioner(&settings).await?;
    let opts = ExportOptions {
        concurrency: args.concurrency,
        per_server: args.per_server,
        ..ExportOptions::new(period)
    };
    let export =
        tenantry_metering::export(provisioner.catalog(), provisioner.fleet_connector(), &opts)
            .await
            .map_err(CliError::failed)?;
    let text = format.render(&export);
    match &args.out {
        Some(path) => std::fs::write(path, text).map_err(|e| {
            CliError::failed(anyhow::anyhow!("cannot write {}: {e}", path.display()))
        })?,
        None => print!("{text}"),
    }
    for e in &export.errors {
        eprintln!(
            "error: tenant {} (server {}) not exported: {}",
            e.slug, e.server, e.error
        );
    }
    eprintln!(
        "{} records of {} tenants for {} in {} ms{}",
        export.records.len(),
        export.tenants - export.errors.len(),
        export.period,
        export.duration_ms,
        if export.complete() {
            String::new()
        } else {
            format!(
                "; {} tenants left out: export again once their servers answer (the same keys bill them once)",
                export.errors.len()
            )
        }
    );
    if export.complete() {
        Ok(())
    } else {
        Err(CliError::failed(anyhow::anyhow!(
            "{} tenants could not be read",
            export.errors.len()
        )))
    }
}

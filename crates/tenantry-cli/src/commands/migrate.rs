use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tenantry_migrate::runner::{self, OnError, Progress, RunError, RunOptions, RunReport};

use tenantry_config::Settings;
use tenantry_migrate::fleet::{self, FleetError};

use crate::exit::CliError;
use crate::output::{table, Output};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// What each tenant lacks, from its recorded schema version to its template's latest.
    Plan,
    /// Applies the templates' new migrations to every tenant (exit 1 if any tenant failed).
    Run(RunArgs),
    /// Every tenant's schema version and last migration result.
    Status,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OnErrorArg {
    /// Start no more tenants after the first failure.
    Halt,
    /// Go on (until --max-failures).
    Continue,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Tenants migrated at once (default: migrate.concurrency).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Tenants migrated at once on one server (default: migrate.per_server).
    #[arg(long, value_name = "N")]
    per_server: Option<usize>,
    /// Migrate N tenants first; if any fails, stop before the rest.
    #[arg(long, value_name = "N", default_value_t = 0)]
    canary: usize,
    /// What a failure does to the rest of the run.
    #[arg(long, value_enum, default_value_t = OnErrorArg::Halt)]
    on_error: OnErrorArg,
    /// With --on-error continue: stop after N failures.
    #[arg(long, value_name = "N")]
    max_failures: Option<usize>,
    /// Run each tenant's pending migrations in a transaction that is rolled back.
    #[arg(long)]
    dry_run: bool,
    /// Only these tenants.
    #[arg(long = "tenant", value_name = "SLUG", num_args = 1..)]
    tenants: Vec<String>,
    /// Also write a JUnit XML report (one test case per tenant) to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

fn fleet_error(e: FleetError) -> CliError {
    match e {
        FleetError::Template(e) if e.is_bad_input() => CliError::usage(e),
        other => CliError::failed(other),
    }
}

pub async fn run(cmd: Command, settings: Settings, output: Output) -> Result<(), CliError> {
    let provisioner = crate::context::provisioner(&settings).await?;
    let catalog = provisioner.catalog();
    let dir = provisioner.options().templates_dir.clone();
    match cmd {
        Command::Plan => {
            let plan = fleet::plan(catalog, &dir).await.map_err(fleet_error)?;
            output.print(&plan, || {
                if plan.pending.is_empty() {
                    return "every tenant is at its template's latest version\n".to_owned();
                }
                let rows: Vec<Vec<String>> = plan
                    .pending
                    .iter()
                    .map(|p| {
                        vec![
                            p.slug.clone(),
                            format!("{} → {}", p.from_version, p.to_version),
                            p.migrations.join(", "),
                        ]
                    })
                    .collect();
                table(&["SLUG", "VERSION", "PENDING"], &rows)
            });
        }
        Command::Run(args) => return migrate_run(&provisioner, &settings, output, args).await,
        Command::Status => {
            let status = fleet::status(catalog, &dir).await.map_err(fleet_error)?;
            output.print(&status, || {
                let mut text = String::new();
                for (template, version) in &status.latest {
                    text.push_str(&format!("template {template}: latest version {version}\n"));
                }
                let rows: Vec<Vec<String>> = status
                    .tenants
                    .iter()
                    .map(|t| {
                        vec![
                            t.slug.clone(),
                            t.template.clone(),
                            t.schema_version.to_string(),
                            t.status.clone(),
                            t.error.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                text.push_str(&table(
                    &["SLUG", "TEMPLATE", "VERSION", "STATUS", "ERROR"],
                    &rows,
                ));
                text
            });
        }
    }
    Ok(())
}

async fn migrate_run(
    provisioner: &tenantry_provision::Provisioner,
    settings: &Settings,
    output: Output,
    args: RunArgs,
) -> Result<(), CliError> {
    if args.max_failures.is_some() && matches!(args.on_error, OnErrorArg::Halt) {
        return Err(CliError::usage(anyhow::anyhow!(
            "--max-failures goes with --on-error continue (halt stops at the first failure)"
        )));
    }
    let m = &settings.migrate;
    let opts = RunOptions {
        concurrency: args.concurrency.unwrap_or(m.concurrency),
        per_server: args.per_server.unwrap_or(m.per_server),
        canary: args.canary,
        on_error: match args.on_error {
            OnErrorArg::Halt => OnError::Halt,
            OnErrorArg::Continue => OnError::Continue,
        },
        max_failures: args.max_failures,
        tenants: args.tenants,
        dry_run: args.dry_run,
        lock_timeout: Duration::from_millis(m.lock_timeout_ms),
        statement_timeout: Duration::from_millis(m.statement_timeout_ms),
        lock_retries: m.lock_retries,
        started_by: format!(
            "{}@{}",
            std::env::var("USER").unwrap_or_else(|_| "tenantry".into()),
            std::process::id()
        ),
        ..RunOptions::default()
    };
    let catalog = provisioner.catalog();
    let dir = provisioner.options().templates_dir.clone();
    if !opts.dry_run {
        // Template databases first: from here on, new tenants are born at the latest
        // version, and files that fail on an empty database stop the run before any tenant.
        let names = fleet::templates_in_use(catalog)
            .await
            .map_err(fleet_error)?;
        provisioner
            .refresh_templates(&names)
            .await
            .map_err(|e| match e.kind() {
                tenantry_provision::ErrorKind::BadInput => CliError::usage(e),
                _ => CliError::failed(anyhow::anyhow!(
                    "{e}; no tenant was migrated: fix the migration and run again"
                )),
            })?;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tenants  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if !std::io::stderr().is_terminal() || matches!(output, Output::Json) {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let failures = std::sync::atomic::AtomicUsize::new(0);
    let progress = |p: Progress<'_>| match p {
        Progress::Total(n) => bar.set_length(n as u64),
        Progress::Done(t) => {
            if t.status == "failed" {
                let n = failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                bar.set_message(format!("{n} failed (last: {})", t.slug));
            }
            bar.inc(1);
        }
    };
    // SIGINT or SIGTERM (a CI job's timeout, an operator's Ctrl-C): stop starting
    // tenants, let those in progress finish, report; a second signal quits at once.
    let cancel = opts.cancel.clone();
    let signals = tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        for n in 0.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n > 0 {
                eprintln!("stopping now; the next run finishes what this one left");
                std::process::exit(130);
            }
            eprintln!(
                "stopping: the tenants in progress finish, no other starts (again to quit now)"
            );
            cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let report = runner::run(
        catalog,
        &dir,
        provisioner.fleet_connector(),
        opts,
        &progress,
    )
    .await
    .map_err(|e| match e {
        RunError::BadInput(_) | RunError::Template(_) => CliError::usage(e),
        RunError::Catalog(_) => CliError::failed(e),
    })?;
    signals.abort();
    bar.finish_and_clear();
    if let Some(path) = &args.junit {
        std::fs::write(path, junit(&report)).map_err(|e| {
            CliError::failed(anyhow::anyhow!("cannot write {}: {e}", path.display()))
        })?;
    }
    output.print(&report, || run_table(&report));
    if report.succeeded() {
        Ok(())
    } else {
        Err(CliError::failed(anyhow::anyhow!(
            "{}",
            report.halted.clone().unwrap_or_else(|| format!(
                "{} tenant(s) failed; fix the cause and run again (finished tenants are skipped)",
                report.summary.failed
            ))
        )))
    }
}

fn run_table(report: &RunReport) -> String {
    let s = &report.summary;
    let mut text = format!(
        "{}run {}: {} ok, {} failed, {} skipped, {} already up to date ({:.1} s)\n",
        if report.dry_run { "dry " } else { "" },
        report.run_id,
        s.ok,
        s.failed,
        s.skipped,
        s.up_to_date,
        report.duration_ms as f64 / 1000.0
    );
    let rows: Vec<Vec<String>> = report
        .tenants
        .iter()
        .filter(|t| t.status != "ok" || !t.repaired.is_empty() || report.tenants.len() <= 50)
        .map(|t| {
            vec![
                t.slug.clone(),
                t.status.clone(),
                match (t.from_version, t.to_version) {
                    (Some(a), Some(b)) => format!("{a} → {b}"),
                    _ => String::new(),
                },
                match (&t.error, t.repaired.is_empty()) {
                    (Some(e), _) => e.clone(),
                    (None, false) => format!("history repaired: {}", t.repaired.join("; ")),
                    (None, true) => String::new(),
                },
            ]
        })
        .collect();
    if !rows.is_empty() {
        text.push_str(&table(&["SLUG", "STATUS", "VERSION", "ERROR"], &rows));
    }
    text
}

/// The report as JUnit XML: a test case per tenant, failed and skipped ones marked.
fn junit(report: &RunReport) -> String {
    fn esc(s: &str) -> String {
        s.chars()
            .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
            .map(|c| match c {
                '&' => "&amp;".to_owned(),
                '<' => "&lt;".to_owned(),
                '>' => "&gt;".to_owned(),
                '"' => "&quot;".to_owned(),
                '\'' => "&apos;".to_owned(),
                c => c.to_string(),
            })
            .collect()
    }
    let s = &report.summary;
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"tenantry migrate run {}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" errors=\"0\" time=\"{:.3}\">\n",
        report.run_id,
        report.tenants.len(),
        s.failed,
        s.skipped,
        report.duration_ms as f64 / 1000.0
    );
    for t in &report.tenants {
        xml.push_str(&format!(
            "    <testcase classname=\"{}.{}\" name=\"{}\" time=\"{:.3}\"",
            esc(&t.template),
            esc(&t.server),
            esc(&t.slug),
            t.duration_ms as f64 / 1000.0
        ));
        match t.status.as_str() {
            "failed" => {
                let error = t.error.clone().unwrap_or_default();
                xml.push_str(&format!(
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    esc(&error),
                    esc(&error)
                ));
            }
            "skipped" => xml.push_str(">\n      <skipped/>\n    </testcase>\n"),
            _ => xml.push_str("/>\n"),
        }
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

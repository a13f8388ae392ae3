use std::path::PathBuf;

use tenantry_config::Settings;
use tenantry_migrate::fleet::{self, FleetError};
use tenantry_migrate::TemplateError;

use crate::exit::CliError;
use crate::output::{table, Output};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// What each tenant lacks, from its recorded schema version to its template's latest.
    Plan,
    /// Every tenant's schema version and last migration result.
    Status,
}

fn fleet_error(e: FleetError) -> CliError {
    match e {
        FleetError::Template(
            e @ (TemplateError::NotFound { .. }
            | TemplateError::BadName(_)
            | TemplateError::BadFile { .. }
            | TemplateError::Empty { .. }
            | TemplateError::DuplicateVersion { .. }),
        ) => CliError::usage(e),
        other => CliError::failed(other),
    }
}

pub async fn run(
    cmd: Command,
    settings: Settings,
    output: Output,
    templates: Option<PathBuf>,
) -> Result<(), CliError> {
    let provisioner = crate::context::provisioner(&settings, templates).await?;
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

use serde::Serialize;
use tenantry_config::Settings;

use crate::exit::CliError;
use crate::output::Output;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Apply the catalog migrations this build carries (idempotent; safe to run from
    /// several processes at once).
    Migrate,
}

#[derive(Serialize)]
struct Report {
    applied: Vec<String>,
    version: i32,
}

pub async fn run(cmd: Command, settings: Settings, output: Output) -> Result<(), CliError> {
    match cmd {
        Command::Migrate => {
            let url = crate::context::catalog_url(&settings)?;
            let report = tenantry_catalog::migrate(&url).await?;
            let report = Report {
                applied: report.applied,
                version: report.version,
            };
            output.print(&report, || {
                if report.applied.is_empty() {
                    format!("catalog is up to date at version {}\n", report.version)
                } else {
                    let mut text = String::new();
                    for name in &report.applied {
                        text.push_str(&format!("applied {name}\n"));
                    }
                    text.push_str(&format!("catalog is at version {}\n", report.version));
                    text
                }
            });
            Ok(())
        }
    }
}

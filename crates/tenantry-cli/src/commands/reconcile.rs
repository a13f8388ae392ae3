use tenantry_config::Settings;
use tenantry_provision::{Orphan, ReconcileReport};

use crate::exit::CliError;
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub struct Opts {
    /// Say what would be done, and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Exit 0 when everything is consistent afterwards, 1 when orphans or errors remain.
pub async fn run(opts: Opts, settings: Settings, output: Output) -> Result<(), CliError> {
    let p = crate::context::provisioner(&settings).await?;
    let report = p.reconcile(opts.dry_run).await?;
    output.print(&report, || describe(&report));
    if report.is_clean() {
        Ok(())
    } else {
        Err(CliError::failed(anyhow::anyhow!(
            "reconcile left work for an operator: {} orphan database(s), {} orphan role(s), \
             {} missing database(s), {} error(s)",
            report.orphan_databases.len(),
            report.orphan_roles.len(),
            report.missing_databases.len(),
            report.errors.len()
        )))
    }
}

fn describe(r: &ReconcileReport) -> String {
    let verb = if r.dry_run { "would be " } else { "" };
    let mut out = String::new();
    for (what, list) in [
        ("creations finished", &r.finished),
        ("creations undone", &r.undone),
        ("deletions finished", &r.deleted),
        ("purged", &r.purged),
        ("plan changes finished", &r.plan_changes),
    ] {
        if !list.is_empty() {
            out.push_str(&format!("{verb}{what}: {}\n", list.join(", ")));
        }
    }
    let orphans = |list: &[Orphan]| {
        list.iter()
            .map(|o| format!("{}:{}", o.server, o.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (what, list) in [
        (
            "orphan databases (no tenant holds them; not dropped)",
            &r.orphan_databases,
        ),
        (
            "orphan roles (no tenant holds them; not dropped)",
            &r.orphan_roles,
        ),
        ("tenants whose database is missing", &r.missing_databases),
    ] {
        if !list.is_empty() {
            out.push_str(&format!("{what}: {}\n", orphans(list)));
        }
    }
    for e in &r.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    if out.is_empty() {
        out.push_str("nothing to reconcile\n");
    }
    out
}

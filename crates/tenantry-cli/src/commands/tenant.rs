use std::path::PathBuf;

use tenantry_config::Settings;
use tenantry_provision::{CreateTenant, TenantInfo};
use tenantry_types::TenantState;

use crate::exit::CliError;
use crate::output::{table, Output};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a tenant (idempotent: the same slug and options again return the same tenant).
    Create {
        slug: String,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        template: Option<String>,
        /// Place it on this server instead of the one with the most room.
        #[arg(long)]
        server: Option<String>,
    },
    /// Tenants, newest first (deleted ones only with --state deleted).
    List {
        #[arg(long, value_parser = parse_state)]
        state: Option<TenantState>,
    },
    /// One tenant.
    Show { slug: String },
    /// Cut a tenant off: its sessions end, new ones are refused, routers drop it.
    Suspend { slug: String },
    /// Let a suspended tenant back in.
    Resume { slug: String },
    /// Move a ready or suspended tenant to another plan (recorded with its time, for
    /// proration); every router applies it at the tenant's next request.
    SetPlan { slug: String, plan: String },
    /// Soft delete: unreachable at once, data kept for provision.retention_hours.
    Delete {
        slug: String,
        /// Drop its database and role now.
        #[arg(long)]
        purge: bool,
    },
    /// Write a pg_dump custom-format archive of the tenant's database.
    Export {
        slug: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn parse_state(s: &str) -> Result<TenantState, String> {
    s.parse()
        .map_err(|e: tenantry_types::UnknownState| e.to_string())
}

pub async fn run(cmd: Command, settings: Settings, output: Output) -> Result<(), CliError> {
    let p = crate::context::provisioner(&settings).await?;
    let tenant = match cmd {
        Command::Create {
            slug,
            plan,
            template,
            server,
        } => {
            let (tenant, created) = p
                .create_tenant(CreateTenant {
                    slug,
                    plan,
                    template,
                    server,
                })
                .await?;
            if !created {
                eprintln!("tenant {} already exists with these options", tenant.slug);
            }
            tenant
        }
        Command::List { state } => {
            let tenants = p.list_tenants(state).await?;
            output.print(&tenants, || tenants_table(&tenants));
            return Ok(());
        }
        Command::Show { slug } => p.show_tenant(&slug).await?,
        Command::Suspend { slug } => p.suspend_tenant(&slug).await?,
        Command::Resume { slug } => p.resume_tenant(&slug).await?,
        Command::SetPlan { slug, plan } => p.set_plan(&slug, &plan, &changed_by()).await?,
        Command::Delete { slug, purge } => p.delete_tenant(&slug, purge).await?,
        Command::Export { slug, out } => {
            let bytes = p.export_tenant(&slug, &out).await?;
            let report = serde_json::json!({"slug": slug, "file": out, "bytes": bytes});
            output.print(&report, || {
                format!("exported {slug} to {} ({bytes} bytes)\n", out.display())
            });
            return Ok(());
        }
    };
    output.print(&tenant, || tenants_table(std::slice::from_ref(&tenant)));
    Ok(())
}

/// Who a plan change from the command line is recorded as: `cli:` and the user.
fn changed_by() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_default();
    format!("cli:{user}")
}

fn tenants_table(tenants: &[TenantInfo]) -> String {
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            vec![
                t.slug.clone(),
                t.state.clone(),
                t.plan.clone(),
                t.server.clone().unwrap_or_default(),
                format!("{}@{}", t.template, t.schema_version),
                t.database.clone(),
                t.created_at.format("%Y-%m-%d %H:%M").to_string(),
            ]
        })
        .collect();
    table(
        &[
            "SLUG", "STATE", "PLAN", "SERVER", "SCHEMA", "DATABASE", "CREATED",
        ],
        &rows,
    )
}

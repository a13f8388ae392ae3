use std::path::PathBuf;

use tenantry_config::Settings;
use tenantry_provision::{CreateTenant, MoveInfo, MoveTenant, Provisioner, TenantInfo};
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
    /// Move a ready or suspended tenant to another server: online with logical
    /// replication (writes pause only for the cutover), or offline where the servers
    /// cannot replicate or --offline asks (writes refused while pg_dump | pg_restore copies).
    Move {
        slug: String,
        /// The target server.
        #[arg(long)]
        to: String,
        #[arg(long)]
        offline: bool,
        /// How long the online cutover may block the tenant's writes (e.g. 30s, 2m).
        #[arg(long, value_parser = parse_seconds, default_value = "30s")]
        cutover_timeout: std::time::Duration,
    },
    /// Write a pg_dump custom-format archive of the tenant's database.
    Export {
        slug: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `30s`, `2m`, `1h` or a bare number of seconds.
pub(crate) fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 2m or 1h"))?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?} is not a duration like 30s, 2m or 1h")),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(factor)))
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
        Command::Show { slug } => {
            let tenant = p.show_tenant(&slug).await?;
            let last_move = p.last_move(&slug).await?;
            let mut value = serde_json::to_value(&tenant).map_err(anyhow::Error::from)?;
            if let Some(m) = &last_move {
                value["last_move"] = serde_json::to_value(m).map_err(anyhow::Error::from)?;
            }
            output.print(&value, || {
                let mut text = tenants_table(std::slice::from_ref(&tenant));
                if let Some(m) = &last_move {
                    text.push_str(&format!("last move: {}\n", move_line(m)));
                }
                text
            });
            return Ok(());
        }
        Command::Move {
            slug,
            to,
            offline,
            cutover_timeout,
        } => {
            let moved = run_move(
                &p,
                MoveTenant {
                    slug,
                    to,
                    offline,
                    cutover_timeout,
                },
            )
            .await?;
            output.print(&moved, || format!("{}\n", move_line(&moved)));
            return Ok(());
        }
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

/// Runs a move in the foreground, printing its phase and progress to stderr as it goes.
async fn run_move(p: &Provisioner, req: MoveTenant) -> Result<MoveInfo, CliError> {
    let started = p.start_move(req).await?;
    let operation = started.info.operation;
    eprintln!(
        "moving {} from {} to {} ({}), operation {operation}",
        started.info.tenant,
        started.info.from.as_deref().unwrap_or("?"),
        started.info.to.as_deref().unwrap_or("?"),
        started.info.mode
    );
    let runner = p.clone();
    let mut task = tokio::spawn(async move { runner.run_move(started).await });
    let mut last = String::new();
    loop {
        tokio::select! {
            done = &mut task => return Ok(done??),
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                if let Ok(Some(m)) = p.move_by_operation(operation).await {
                    let line = move_line(&m);
                    if line != last {
                        eprintln!("  {line}");
                        last = line;
                    }
                }
            }
        }
    }
}

fn move_line(m: &MoveInfo) -> String {
    let mb = |b: Option<i64>| b.map_or("?".to_owned(), |b| format!("{:.1} MB", b as f64 / 1e6));
    let mut line = format!(
        "{} {} -> {} {}: {} at {}, {} of {} copied, lag {}",
        m.tenant,
        m.from.as_deref().unwrap_or("?"),
        m.to.as_deref().unwrap_or("?"),
        m.mode,
        m.status,
        m.phase,
        mb(m.bytes_copied),
        mb(m.bytes_total),
        m.lag_bytes.map_or("?".to_owned(), |l| format!("{l} B")),
    );
    if let Some(e) = &m.error {
        line.push_str(&format!(" ({e})"));
    }
    line
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

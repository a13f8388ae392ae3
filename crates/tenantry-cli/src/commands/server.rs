use secrecy::SecretString;
use tenantry_config::Settings;
use tenantry_provision::{AddServer, ServerInfo};

use crate::exit::CliError;
use crate::output::{table, Output};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Register a PostgreSQL server for tenant databases (its role must be able to
    /// create databases and roles).
    Add {
        name: String,
        /// postgres://user:password@host:port/database of an admin role.
        #[arg(long)]
        url: String,
        /// How many tenant databases it may hold (default: provision.default_capacity).
        #[arg(long)]
        capacity: Option<u32>,
        /// Connections Tenantry may open to it (default: its max_connections less reserved and 10 spare).
        #[arg(long)]
        max_connections: Option<u32>,
    },
    /// All registered servers.
    List,
    /// One server.
    Show { name: String },
    /// Stop placing new tenants on a server; its tenants stay.
    Drain { name: String },
    /// Place new tenants on a drained server again.
    Activate { name: String },
    /// Unregister a server that holds no tenant database.
    Remove { name: String },
    /// Drain a server, then move every tenant off it (online where the servers can
    /// replicate) to the active servers with room, fewest tenants first; then `remove`
    /// succeeds. Exit 1 if a tenant could not be moved (a rerun moves what is left).
    Evacuate {
        name: String,
        /// Moves at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// How long each online cutover may block a tenant's writes (e.g. 30s, 2m).
        #[arg(long, value_parser = super::tenant::parse_seconds, default_value = "30s")]
        cutover_timeout: std::time::Duration,
    },
}

pub async fn run(cmd: Command, settings: Settings, output: Output) -> Result<(), CliError> {
    let p = crate::context::provisioner(&settings).await?;
    let info = match cmd {
        Command::Add {
            name,
            url,
            capacity,
            max_connections,
        } => {
            p.add_server(AddServer {
                name,
                url: SecretString::from(url),
                capacity,
                max_connections,
            })
            .await?
        }
        Command::List => {
            let servers = p.list_servers().await?;
            output.print(&servers, || servers_table(&servers));
            return Ok(());
        }
        Command::Show { name } => p.show_server(&name).await?,
        Command::Drain { name } => p.drain_server(&name).await?,
        Command::Activate { name } => p.activate_server(&name).await?,
        Command::Evacuate {
            name,
            concurrency,
            cutover_timeout,
        } => return evacuate(&p, name, concurrency, cutover_timeout, output).await,
        Command::Remove { name } => {
            p.remove_server(&name).await?;
            output.print(&serde_json::json!({"removed": name}), || {
                format!("server {name} removed\n")
            });
            return Ok(());
        }
    };
    output.print(&info, || {
        let mut text = servers_table(std::slice::from_ref(&info));
        if let Some(online) = &info.online_moves {
            text.push_str(&format!("online moves: {online}\n"));
        }
        text
    });
    Ok(())
}

async fn evacuate(
    p: &tenantry_provision::Provisioner,
    server: String,
    concurrency: usize,
    cutover_timeout: std::time::Duration,
    output: Output,
) -> Result<(), CliError> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use std::io::IsTerminal;
    use tenantry_provision::{Evacuate, EvacuationProgress};
    if concurrency == 0 {
        return Err(CliError::usage(anyhow::anyhow!(
            "--concurrency must be at least 1"
        )));
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tenants moved  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if !std::io::stderr().is_terminal() || matches!(output, Output::Json) {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let report = p
        .evacuate_server(
            Evacuate {
                server,
                concurrency,
                cutover_timeout,
            },
            |progress| match progress {
                EvacuationProgress::Total(n) => bar.set_length(n as u64),
                EvacuationProgress::Done(t) => {
                    if t.status != "moved" {
                        bar.set_message(format!("{} failed", t.tenant));
                    }
                    bar.inc(1);
                }
            },
        )
        .await?;
    bar.finish_and_clear();
    output.print(&report, || {
        let rows: Vec<Vec<String>> = report
            .tenants
            .iter()
            .map(|t| {
                vec![
                    t.tenant.clone(),
                    t.to.clone().unwrap_or_default(),
                    t.status.clone(),
                    format!("{:.1}s", t.seconds),
                    t.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        format!(
            "{}{} moved, {} failed off {} in {:.1} s\n",
            table(&["TENANT", "TO", "STATUS", "TIME", "ERROR"], &rows),
            report.moved,
            report.failed,
            report.server,
            report.seconds
        )
    });
    if report.failed > 0 {
        return Err(CliError::failed(anyhow::anyhow!(
            "{} tenants could not be moved off {}; run the evacuation again to move them",
            report.failed,
            report.server
        )));
    }
    Ok(())
}

fn servers_table(servers: &[ServerInfo]) -> String {
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.state.clone(),
                format!("{}/{}", s.tenants, s.capacity),
                s.max_connections.to_string(),
                format!("{}:{}", s.host, s.port),
            ]
        })
        .collect();
    table(&["NAME", "STATE", "TENANTS", "MAX_CONN", "ADDRESS"], &rows)
}

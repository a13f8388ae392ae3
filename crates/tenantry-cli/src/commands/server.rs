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
        Command::Remove { name } => {
            p.remove_server(&name).await?;
            output.print(&serde_json::json!({"removed": name}), || {
                format!("server {name} removed\n")
            });
            return Ok(());
        }
    };
    output.print(&info, || servers_table(std::slice::from_ref(&info)));
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

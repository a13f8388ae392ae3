use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use secrecy::SecretString;
use tenantry_catalog::NewServer;
use tenantry_config::Settings;
use tenantry_embedded::{Cluster, ClusterOptions, Durability, OnExit};
use tenantry_types::Ident;

use crate::exit::CliError;

use crate::context::DEV_CATALOG_DB as CATALOG_DB;
/// Connections of the embedded cluster, and the share tenants may use.
const MAX_CONNECTIONS: u32 = 200;
const TENANT_CONNECTIONS: u32 = 150;

#[derive(Debug, clap::Args)]
pub struct Opts {
    /// Where the private cluster lives (default: dev.data_dir, ./.tenantry).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

pub async fn run(opts: Opts, settings: Settings) -> Result<(), CliError> {
    let dir = opts
        .data_dir
        .unwrap_or_else(|| settings.dev.data_dir.clone());
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let _lock = lock(&dir)?;

    let fresh = !Cluster::is_initialised(&dir);
    if fresh {
        eprintln!(
            "Creating a private PostgreSQL cluster in {} (first run only)…",
            dir.display()
        );
    }
    let mut cluster = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(
            move || -> Result<Cluster, tenantry_embedded::ClusterError> {
                let mut opts = ClusterOptions::new(dir);
                opts.durability = Durability::Durable;
                opts.on_exit = OnExit::Stop;
                opts.max_connections = MAX_CONNECTIONS;
                let mut cluster = Cluster::open(opts)?;
                cluster.start()?;
                Ok(cluster)
            },
        )
        .await
        .context("start the embedded cluster")??
    };
    // From here on, `cluster` stops the server when dropped, whatever happens.
    let result = serve(&settings, &cluster).await;
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .context("stop the embedded cluster")??;
    eprintln!("PostgreSQL stopped. Bye.");
    result
}

async fn serve(settings: &Settings, cluster: &Cluster) -> Result<(), CliError> {
    let admin_url = SecretString::from(cluster.url("postgres"));
    let catalog_db = Ident::new(CATALOG_DB).context("catalog database name")?;
    tenantry_catalog::ensure_database(&admin_url, &catalog_db).await?;
    let url = SecretString::from(cluster.url(CATALOG_DB));
    let catalog = super::serve::prepare_catalog(&url, settings).await?;

    catalog
        .upsert_server(
            &NewServer {
                name: "local".parse().context("server name")?,
                host: cluster.host().to_owned(),
                port: cluster.port(),
                admin_user: cluster.superuser().to_owned(),
                admin_database: "postgres".to_owned(),
                admin_password: cluster.password().clone(),
                capacity: 1000,
                max_connections: TENANT_CONNECTIONS,
            },
            &crate::context::sealer(settings)?,
        )
        .await
        .context("register the embedded cluster as server `local`")?;
    // Tenant roles on this cluster reach their own database, not the catalog or `postgres`.
    tenantry_catalog::revoke_public_connect(&admin_url, &catalog_db).await?;
    let provisioner = crate::context::provisioner_over(settings, &catalog)?;
    super::serve::reconcile_at_start(&provisioner).await;

    // A tenant to try things with, made on the first run and found on the next, on
    // whatever plan it was moved to since (a create on pro would refuse another plan).
    provisioner.lock_down_server("local").await?;
    let found = provisioner
        .show_tenant("demo")
        .await
        .ok()
        .filter(|t| t.state == "ready" || t.state == "suspended");
    let demo = match found {
        Some(demo) => demo,
        None => {
            let (demo, created) = provisioner
                .create_tenant(tenantry_provision::CreateTenant {
                    slug: "demo".into(),
                    plan: Some("pro".into()),
                    ..Default::default()
                })
                .await
                .context("create the demo tenant")?;
            if created {
                eprintln!(
                    "Created tenant `demo` ({}, database {}).",
                    demo.plan, demo.database
                );
            }
            demo
        }
    };
    let token = super::token::issue(
        settings,
        "demo",
        demo.id,
        "dev-user",
        None,
        Duration::from_secs(24 * 3600),
    )?;

    super::serve::serve_until_signal(settings, catalog, url, provisioner, |addr| {
        print_banner(cluster, addr, &demo.plan, &token);
    })
    .await
}

fn print_banner(cluster: &Cluster, addr: std::net::SocketAddr, plan: &str, token: &str) {
    let root = cluster.root().display();
    let auth = format!("-H 'Authorization: Bearer {token}'");
    println!(
        "\nTenantry is running (dev).\n\
         \n  router      http://{addr}\
         \n  console     http://{addr}/admin/  (sign in with an admin token: cargo run -- token issue --admin --sub you)\
         \n  catalog     postgres://{user}@{host}:{port}/{CATALOG_DB}  (password in {root}/superuser.password)\
         \n  server      `local`: the embedded cluster, data in {root}/data, log in {root}/postgres.log\
         \n  tenant      `demo` (plan {plan}); a token for it, valid 24 h:\
         \n\n{token}\
         \n\nTry:\
         \n  curl -s http://{addr}/readyz\
         \n  curl -s {auth} -H 'Content-Type: application/json' -d '{{\"agent\": \"claude\", \"title\": \"Write a haiku\"}}' http://{addr}/v1/tasks\
         \n  curl -s {auth} http://{addr}/v1/tasks\
         \n  curl -s {auth} http://{addr}/v1/usage\
         \n\nCtrl-C stops the router and the cluster.\n",
        user = cluster.superuser(),
        host = cluster.host(),
        port = cluster.port(),
    );
}

/// One `tenantry dev` per folder: a second one would fight over the cluster.
fn lock(dir: &Path) -> Result<Flock<File>, CliError> {
    let path = dir.join("dev.lock");
    let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        CliError::failed(anyhow::anyhow!(
            "another `tenantry dev` is already running on {}; stop it first (Ctrl-C in its terminal)",
            dir.display()
        ))
    })
}

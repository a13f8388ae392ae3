//! A catalog and several real PostgreSQL servers for provisioning tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tenantry_catalog::{Catalog, Sealer};
use tenantry_config::CreateStrategy;
use tenantry_provision::{AddServer, ProvisionOptions, Provisioner};
use tenantry_testkit::TestCluster;

pub struct Fleet {
    pub servers: Vec<TestCluster>,
    pub catalog_url: SecretString,
    pub provisioner: Provisioner,
}

pub fn templates_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tenant-templates")
}

pub fn options() -> ProvisionOptions {
    ProvisionOptions {
        templates_dir: templates_dir(),
        default_template: "tasks".into(),
        retention: Duration::from_secs(7 * 24 * 3600),
        statement_timeout_ms: 30_000,
        idle_in_transaction_timeout_ms: 60_000,
        create_strategy: CreateStrategy::WalLog,
        default_capacity: 100,
    }
}

impl Fleet {
    /// `n` servers `s1`…`sn`, each its own cluster; the catalog lives on the first.
    pub async fn new(n: usize) -> Self {
        Self::with_options(n, options()).await
    }

    pub async fn with_options(n: usize, opts: ProvisionOptions) -> Self {
        let servers: Vec<TestCluster> = (0..n).map(|_| TestCluster::start()).collect();
        servers[0].create_database("catalog").await;
        let catalog_url = SecretString::from(servers[0].url("catalog"));
        tenantry_catalog::migrate(&catalog_url).await.unwrap();
        let catalog = Catalog::new(&catalog_url, 8, Duration::from_secs(5)).unwrap();
        let provisioner = Provisioner::new(catalog, Sealer::new(1, &[42; 32]), opts).unwrap();
        for (i, pg) in servers.iter().enumerate() {
            provisioner
                .add_server(AddServer {
                    name: format!("s{}", i + 1),
                    url: SecretString::from(pg.url("postgres")),
                    capacity: None,
                    max_connections: None,
                })
                .await
                .unwrap();
        }
        Self {
            servers,
            catalog_url,
            provisioner,
        }
    }

    /// The cluster behind server `sN`; servers that tests register under other names
    /// are on the first cluster.
    pub fn server(&self, name: &str) -> &TestCluster {
        let i = name
            .strip_prefix('s')
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(1);
        &self.servers[i - 1]
    }

    /// Connects to `database` on `server` as `user`.
    pub async fn connect_as(
        &self,
        server: &str,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let pg = self.server(server);
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(pg.port())
            .user(user)
            .password(password)
            .dbname(database)
            .connect_timeout(Duration::from_secs(5));
        let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Connects as the tenant itself, with its own credentials.
    pub async fn connect_tenant(
        &self,
        slug: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let t = self.provisioner.show_tenant(slug).await.unwrap();
        let password = self.provisioner.tenant_password(slug).await.unwrap();
        let role = format!("tr_{}", t.id.simple());
        self.connect_as(
            t.server.as_deref().unwrap(),
            &role,
            password.expose_secret(),
            &t.database,
        )
        .await
    }

    pub async fn catalog(&self) -> tokio_postgres::Client {
        self.servers[0].connect("catalog").await
    }

    /// Tenant-named databases and roles on every server, as (server, name).
    pub async fn tenant_objects(&self) -> (Vec<(String, String)>, Vec<(String, String)>) {
        let mut dbs = Vec::new();
        let mut roles = Vec::new();
        for (i, pg) in self.servers.iter().enumerate() {
            let name = format!("s{}", i + 1);
            let c = pg.connect("postgres").await;
            for r in c
                .query(
                    "SELECT datname FROM pg_database WHERE datname ~ '^t_[0-9a-f]{32}$'",
                    &[],
                )
                .await
                .unwrap()
            {
                dbs.push((name.clone(), r.get(0)));
            }
            for r in c
                .query(
                    "SELECT rolname FROM pg_roles WHERE rolname ~ '^tr_[0-9a-f]{32}$'",
                    &[],
                )
                .await
                .unwrap()
            {
                roles.push((name.clone(), r.get(0)));
            }
        }
        (dbs, roles)
    }
}

use secrecy::SecretString;
use tenantry_catalog::{ensure_database, latest_version, migrate, Catalog, CatalogError};
use tenantry_testkit::TestCluster;
use tenantry_types::{Ident, Plan};

async fn fresh_catalog(pg: &TestCluster, name: &str) -> SecretString {
    pg.create_database(name).await;
    SecretString::from(pg.url(name))
}

fn catalog(url: &SecretString) -> Catalog {
    Catalog::new(url, 2, std::time::Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn migrates_a_fresh_catalog_then_finds_nothing_to_do() {
    let pg = TestCluster::shared();
    let url = fresh_catalog(pg, "cat_twice").await;
    let cat = catalog(&url);
    assert!(matches!(
        cat.check_ready().await,
        Err(CatalogError::NotMigrated { have: 0, .. })
    ));

    let first = migrate(&url).await.unwrap();
    assert_eq!(
        first.applied.first().map(String::as_str),
        Some("V1__catalog")
    );
    assert_eq!(first.version, latest_version());
    cat.check_ready().await.unwrap();

    let second = migrate(&url).await.unwrap();
    assert!(second.applied.is_empty(), "{second:?}");
    assert_eq!(second.version, first.version);

    // Seeded with the contract's plan table.
    let plans = cat.plans().await.unwrap();
    let mut expected = Plan::defaults();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(plans, expected);
}

#[tokio::test]
async fn concurrent_migrations_apply_each_version_once() {
    let pg = TestCluster::shared();
    let url = fresh_catalog(pg, "cat_concurrent").await;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { migrate(&url).await })
        })
        .collect();
    let mut applied = 0;
    for run in runs {
        applied += run.await.unwrap().unwrap().applied.len();
    }
    assert_eq!(
        applied as i32,
        latest_version(),
        "each migration applied exactly once"
    );
    let client = pg.connect("cat_concurrent").await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as i32, latest_version());
}

#[tokio::test]
async fn plan_overrides_are_written_and_rewritten() {
    let pg = TestCluster::shared();
    let url = fresh_catalog(pg, "cat_plans").await;
    migrate(&url).await.unwrap();
    let cat = catalog(&url);
    let mut plans = Plan::defaults();
    plans[0].tasks_per_month = Some(25);
    plans.push(Plan {
        name: "team".into(),
        tasks_per_month: None,
        requests_per_minute: 100,
        agents: vec![tenantry_types::Agent::Codex],
        api_access: true,
        pool_size: 3,
        price_cents: 4900,
        priority: 1,
    });
    cat.sync_plans(&plans).await.unwrap();
    cat.sync_plans(&plans).await.unwrap();
    let stored = cat.plans().await.unwrap();
    assert_eq!(stored.len(), 4);
    let free = stored.iter().find(|p| p.name == "free").unwrap();
    assert_eq!(free.tasks_per_month, Some(25));
    assert!(stored.iter().any(|p| p == &plans[3]));
}

#[tokio::test]
async fn unreachable_catalog_is_reported_as_such() {
    let port = tenantry_embedded_port();
    let url = SecretString::from(format!("postgres://x:y@127.0.0.1:{port}/nothing"));
    assert!(matches!(
        migrate(&url).await,
        Err(CatalogError::Unreachable(_))
    ));
    assert!(matches!(
        catalog(&url).check_ready().await,
        Err(CatalogError::Unreachable(_))
    ));
    let bad = SecretString::from("mysql://nope".to_owned());
    assert!(matches!(migrate(&bad).await, Err(CatalogError::BadUrl(_))));
}

/// A loopback port with nothing listening on it.
fn tenantry_embedded_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn ensure_database_is_idempotent_and_quotes_names() {
    let pg = TestCluster::shared();
    let admin = SecretString::from(pg.url("postgres"));
    let name = Ident::new("odd \"name\"; drop").unwrap();
    assert!(ensure_database(&admin, &name).await.unwrap());
    assert!(!ensure_database(&admin, &name).await.unwrap());
    let client = pg.connect("postgres").await;
    let found = client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&name.as_str()],
        )
        .await
        .unwrap();
    assert!(found.is_some());
}

#[tokio::test]
async fn servers_are_registered_with_sealed_passwords() {
    use tenantry_catalog::{server_binding, NewServer, Sealed, Sealer};
    let pg = TestCluster::shared();
    let url = fresh_catalog(pg, "cat_servers").await;
    migrate(&url).await.unwrap();
    let cat = catalog(&url);
    let sealer = Sealer::new(1, &[9; 32]);
    let mut server = NewServer {
        name: "local".parse().unwrap(),
        host: "127.0.0.1".into(),
        port: 5432,
        admin_user: "tenantry".into(),
        admin_database: "postgres".into(),
        admin_password: SecretString::from("pw-one".to_owned()),
        capacity: 100,
        max_connections: 50,
    };
    let id = cat.upsert_server(&server, &sealer).await.unwrap();
    server.port = 5433;
    server.admin_password = SecretString::from("pw-two".to_owned());
    assert_eq!(cat.upsert_server(&server, &sealer).await.unwrap(), id);

    let client = pg.connect("cat_servers").await;
    let row = client
        .query_one(
            "SELECT port, admin_password, key_version FROM servers WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 5433);
    let sealed = Sealed {
        bytes: row.get(1),
        key_version: row.get(2),
    };
    assert!(!sealed.bytes.windows(6).any(|w| w == b"pw-two"));
    assert_eq!(
        sealer.open(&sealed, &server_binding(&server.name)).unwrap(),
        b"pw-two"
    );
}

//! Deleting, purging, exporting, and what bad input and failing servers leave behind.

mod support;

use secrecy::SecretString;
use support::Fleet;
use tenantry_provision::{AddServer, CreateTenant, ErrorKind};
use tenantry_types::TenantState;

fn create(slug: &str) -> CreateTenant {
    CreateTenant {
        slug: slug.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn soft_delete_keeps_data_until_purge_and_purge_leaves_nothing() {
    let fleet = Fleet::new(1).await;
    let p = &fleet.provisioner;
    let (t, _) = p.create_tenant(create("gone")).await.unwrap();
    let session = fleet.connect_tenant("gone").await.unwrap();
    session
        .execute(
            "INSERT INTO tasks (user_id, agent, title) VALUES ('u', 'opencode', 'keep me')",
            &[],
        )
        .await
        .unwrap();

    let deleted = p.delete_tenant("gone", false).await.unwrap();
    assert_eq!(deleted.state, "deleted");
    let retention = deleted.purge_after.unwrap() - deleted.deleted_at.unwrap();
    assert_eq!(retention.num_hours(), 7 * 24);
    assert!(
        session.query_one("SELECT 1", &[]).await.is_err(),
        "unreachable at once"
    );
    assert!(
        p.show_tenant("gone").await.is_err(),
        "no longer a live tenant"
    );
    let (dbs, roles) = fleet.tenant_objects().await;
    assert_eq!(
        (dbs.len(), roles.len()),
        (1, 1),
        "data kept during retention"
    );

    // Retention passes: reconcile purges.
    let catalog = fleet.catalog().await;
    catalog
        .execute(
            "UPDATE tenants SET purge_after = now() - interval '1 minute' WHERE id = $1",
            &[&t.id],
        )
        .await
        .unwrap();
    let report = p.reconcile(false).await.unwrap();
    assert_eq!(report.purged, ["gone"]);
    assert!(report.is_clean(), "{report:?}");
    let (dbs, roles) = fleet.tenant_objects().await;
    assert!(dbs.is_empty() && roles.is_empty(), "{dbs:?} {roles:?}");
    let row = catalog
        .query_one(
            "SELECT state, credentials IS NULL, purged_at IS NOT NULL FROM tenants WHERE id = $1",
            &[&t.id],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "deleted",
        "the row stays as a tombstone"
    );
    assert!(row.get::<_, bool>(1) && row.get::<_, bool>(2));

    // The slug is free again: a new tenant, a new id.
    let (again, created) = p.create_tenant(create("gone")).await.unwrap();
    assert!(created && again.id != t.id);

    // --purge: at once.
    p.delete_tenant("gone", true).await.unwrap();
    let (dbs, roles) = fleet.tenant_objects().await;
    assert!(dbs.is_empty() && roles.is_empty());
    let deleted = p.list_tenants(Some(TenantState::Deleted)).await.unwrap();
    assert_eq!(deleted.len(), 2);
}

#[tokio::test]
async fn an_export_restores_into_an_empty_database() {
    let fleet = Fleet::new(1).await;
    let p = &fleet.provisioner;
    p.create_tenant(create("exported")).await.unwrap();
    let session = fleet.connect_tenant("exported").await.unwrap();
    for i in 0..5 {
        session
            .execute(
                "INSERT INTO tasks (user_id, agent, title, input) VALUES ('u', 'opencode', $1, '{\"n\": 1}')",
                &[&format!("task {i}")],
            )
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("exported.dump");
    let size = p.export_tenant("exported", &archive).await.unwrap();
    assert!(size > 0 && archive.exists());
    assert!(!dir.path().join("exported.partial").exists());

    let pg = fleet.server("s1");
    pg.create_database("restored").await;
    let status = std::process::Command::new(pg.binaries().tool("pg_restore"))
        .args([
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--host",
            "127.0.0.1",
            "--port",
        ])
        .arg(pg.port().to_string())
        .args(["--username", pg.superuser(), "--dbname", "restored"])
        .arg(&archive)
        .env(
            "PGPASSWORD",
            secrecy::ExposeSecret::expose_secret(pg.password()),
        )
        .status()
        .unwrap();
    assert!(status.success());
    let restored = pg.connect("restored").await;
    let n: i64 = restored
        .query_one("SELECT count(*) FROM tasks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    // Its data and nothing else: no other database's tables came along.
    let tables: i64 = restored
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 3, "tasks, usage_logs, refinery_schema_history");

    let e = p.export_tenant("nobody", &archive).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn bad_input_is_refused_and_creates_nothing() {
    let mut fleet = Fleet::new(2).await;
    let p = fleet.provisioner.clone();
    for (req, kind, says) in [
        (create("Bad Slug"), ErrorKind::BadInput, "tenant slug"),
        (create("x"), ErrorKind::BadInput, "tenant slug"),
        (
            CreateTenant {
                slug: "planless".into(),
                plan: Some("gold".into()),
                ..Default::default()
            },
            ErrorKind::BadInput,
            "unknown plan \"gold\"; choose one of: enterprise, free, pro",
        ),
        (
            CreateTenant {
                slug: "no-template".into(),
                template: Some("nosuch".into()),
                ..Default::default()
            },
            ErrorKind::BadInput,
            "template \"nosuch\" not found",
        ),
        (
            CreateTenant {
                slug: "sneaky".into(),
                template: Some("../../etc".into()),
                ..Default::default()
            },
            ErrorKind::BadInput,
            "template name",
        ),
        (
            CreateTenant {
                slug: "no-server".into(),
                server: Some("s9".into()),
                ..Default::default()
            },
            ErrorKind::BadInput,
            "server \"s9\" is not registered",
        ),
    ] {
        let e = p.create_tenant(req.clone()).await.unwrap_err();
        assert_eq!(e.kind(), kind, "{req:?}: {e}");
        assert!(e.to_string().contains(says), "{req:?}: {e}");
    }

    // A server that is down: named, it fails (exit 1); unnamed, placement passes it over.
    fleet.servers[1].stop_server();
    let e = p
        .create_tenant(CreateTenant {
            slug: "on-down".into(),
            server: Some("s2".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("server s2 is unavailable"), "{e}");
    for i in 0..3 {
        let (t, _) = p.create_tenant(create(&format!("up-{i}"))).await.unwrap();
        assert_eq!(t.server.as_deref(), Some("s1"));
    }
    fleet.servers[1].restart_server();

    // Nothing from the refused requests anywhere.
    let catalog = fleet.catalog().await;
    let states: Vec<String> = catalog
        .query("SELECT slug FROM tenants ORDER BY slug", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(states, ["up-0", "up-1", "up-2"]);
    let (dbs, roles) = fleet.tenant_objects().await;
    assert_eq!((dbs.len(), roles.len()), (3, 3));
    let report = p.reconcile(true).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test]
async fn servers_are_checked_before_they_are_registered_and_removed_only_when_empty() {
    let fleet = Fleet::new(1).await;
    let p = &fleet.provisioner;
    let pg = fleet.server("s1");
    let add = |name: &str, url: String| AddServer {
        name: name.into(),
        url: SecretString::from(url),
        capacity: Some(10),
        max_connections: Some(20),
    };
    // Unreachable.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = p
        .add_server(add(
            "down",
            format!("postgres://u:p@127.0.0.1:{port}/postgres"),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    // A role that may not create databases.
    let admin = pg.connect("postgres").await;
    admin
        .batch_execute(
            "CREATE ROLE weak LOGIN PASSWORD 'weak-pw'; GRANT CONNECT ON DATABASE postgres TO weak",
        )
        .await
        .unwrap();
    let e = p
        .add_server(add(
            "weak",
            format!("postgres://weak:weak-pw@127.0.0.1:{}/postgres", pg.port()),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput);
    assert!(e.to_string().contains("CREATEDB CREATEROLE"), "{e}");
    // Bad names and URLs, and more connections than the server has.
    for (name, url, says) in [
        ("Bad Name", pg.url("postgres"), "server name"),
        ("ok", "mysql://x".to_owned(), "--url"),
        (
            "ok",
            format!(
                "postgres://{}@127.0.0.1:{}/postgres",
                pg.superuser(),
                pg.port()
            ),
            "password",
        ),
    ] {
        let e = p.add_server(add(name, url)).await.unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
    }
    let mut too_many = add("greedy", pg.url("postgres"));
    too_many.max_connections = Some(100_000);
    assert!(p
        .add_server(too_many)
        .await
        .unwrap_err()
        .to_string()
        .contains("max_connections"));
    // The same name twice.
    let e = p
        .add_server(add("s1", pg.url("postgres")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(p.list_servers().await.unwrap().len(), 1);

    // Remove: refused while a tenant lives there; afterwards it goes with its templates.
    let second = p.add_server(add("two", pg.url("postgres"))).await.unwrap();
    assert_eq!(
        (second.capacity, second.max_connections, second.tenants),
        (10, 20, 0)
    );
    p.create_tenant(CreateTenant {
        slug: "lodger".into(),
        server: Some("two".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = p.remove_server("two").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("drain it first"), "{e}");
    p.drain_server("two").await.unwrap();
    let e = p.remove_server("two").await.unwrap_err();
    assert!(
        e.to_string().contains("still holds 1 tenant database"),
        "{e}"
    );
    p.delete_tenant("lodger", true).await.unwrap();
    p.remove_server("two").await.unwrap();
    assert!(p.show_server("two").await.is_err());
    assert_eq!(
        p.remove_server("two").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn server_add_is_refused_while_public_may_still_connect_to_shared_databases() {
    let fleet = Fleet::new(1).await;
    let p = &fleet.provisioner;
    // A server of its own, untouched by any lock-down, whose admin does not own
    // `postgres` or `template1`: its revokes are skipped with a mere warning.
    let pg = tenantry_testkit::TestCluster::start();
    let superuser = pg.connect("postgres").await;
    superuser
        .batch_execute(
            "CREATE ROLE provisioner LOGIN CREATEDB CREATEROLE PASSWORD 'prov-pw';
             GRANT CONNECT ON DATABASE postgres TO provisioner",
        )
        .await
        .unwrap();
    let add = || AddServer {
        name: "limited".into(),
        url: SecretString::from(format!(
            "postgres://provisioner:prov-pw@127.0.0.1:{}/postgres",
            pg.port()
        )),
        capacity: None,
        max_connections: Some(20),
    };
    let e = p.add_server(add()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput, "{e}");
    let message = e.to_string();
    for says in [
        "REVOKE CONNECT ON DATABASE \"postgres\" FROM PUBLIC;",
        "REVOKE CONNECT ON DATABASE \"template1\" FROM PUBLIC;",
        "role \"provisioner\" does not own",
        "superuser",
    ] {
        assert!(message.contains(says), "{says:?} not in: {message}");
    }
    // Nothing registered.
    assert!(matches!(
        p.show_server("limited").await.unwrap_err().kind(),
        ErrorKind::NotFound
    ));
    let names: Vec<String> = p
        .list_servers()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["s1"]);

    // The owner closes one of them: the other is still named, alone.
    superuser
        .batch_execute("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")
        .await
        .unwrap();
    let message = p.add_server(add()).await.unwrap_err().to_string();
    assert!(message.contains("\"template1\""), "{message}");
    assert!(!message.contains("\"postgres\" FROM PUBLIC"), "{message}");

    // Both closed, as the message says: the server is added.
    superuser
        .batch_execute("REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;")
        .await
        .unwrap();
    let added = p.add_server(add()).await.unwrap();
    assert_eq!(added.name, "limited");
    let public_may_connect: i64 = superuser
        .query_one(
            "SELECT count(*) FROM pg_database
             WHERE datname IN ('postgres', 'template1')
               AND has_database_privilege('public', datname, 'CONNECT')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(public_may_connect, 0);
}

#[tokio::test]
async fn reconcile_reports_orphans_both_ways() {
    let fleet = Fleet::new(1).await;
    let p = &fleet.provisioner;
    let (t, _) = p.create_tenant(create("lost")).await.unwrap();
    let admin = fleet.server("s1").connect("postgres").await;
    // A database and a role nobody accounts for…
    let stray = format!("t_{}", uuid::Uuid::now_v7().simple());
    let stray_role = format!("tr_{}", uuid::Uuid::now_v7().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {stray}"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE ROLE {stray_role}"))
        .await
        .unwrap();
    // …and a live tenant whose database vanished.
    admin
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", t.database))
        .await
        .unwrap();
    let report = p.reconcile(false).await.unwrap();
    assert_eq!(
        report
            .orphan_databases
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        [stray.as_str()]
    );
    assert_eq!(
        report
            .orphan_roles
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        [stray_role.as_str()]
    );
    assert_eq!(
        report
            .missing_databases
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["lost"]
    );
    assert!(!report.is_clean());
    // Reported, not dropped: an orphan may be somebody's data.
    let (dbs, _) = fleet.tenant_objects().await;
    assert!(dbs.iter().any(|(_, d)| d == &stray));
}

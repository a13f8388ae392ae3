mod support;

use std::collections::HashMap;

use secrecy::ExposeSecret;
use support::Fleet;
use tenantry_provision::{CreateTenant, ErrorKind};

fn create(slug: &str) -> CreateTenant {
    CreateTenant {
        slug: slug.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_is_idempotent_and_the_tenant_owns_a_working_database() {
    let fleet = Fleet::new(1).await;
    let p = &fleet.provisioner;
    let (acme, created) = p.create_tenant(create("acme")).await.unwrap();
    assert!(created);
    assert_eq!(acme.state, "ready");
    assert_eq!(acme.plan, "free");
    assert_eq!(acme.template, "tasks");
    assert_eq!(acme.server.as_deref(), Some("s1"));
    assert_eq!(acme.schema_version, 1);
    assert_eq!(acme.database, format!("t_{}", acme.id.simple()));

    let (again, created) = p.create_tenant(create("acme")).await.unwrap();
    assert!(!created);
    assert_eq!(again.id, acme.id);

    let e = p
        .create_tenant(CreateTenant {
            slug: "acme".into(),
            plan: Some("pro".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("plan free (asked: pro)"), "{e}");

    // The tenant's own role uses its database, and owns its tables.
    let tenant = fleet.connect_tenant("acme").await.unwrap();
    tenant
        .execute(
            "INSERT INTO tasks (user_id, agent, title) VALUES ('u1', 'opencode', 'hello')",
            &[],
        )
        .await
        .unwrap();
    let n: i64 = tenant
        .query_one("SELECT count(*) FROM tasks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let owners: Vec<String> = tenant
        .query(
            "SELECT DISTINCT tableowner::text FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, [format!("tr_{}", acme.id.simple())]);

    // The role is as narrow as promised, and its password never reached the server in clear.
    let admin = fleet.server("s1").connect("postgres").await;
    let role = admin
        .query_one(
            "SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolbypassrls, r.rolconnlimit,
                    a.rolpassword, r.rolconfig
             FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = $1",
            &[&format!("tr_{}", acme.id.simple())],
        )
        .await
        .unwrap();
    assert!(
        !role.get::<_, bool>(0)
            && !role.get::<_, bool>(1)
            && !role.get::<_, bool>(2)
            && !role.get::<_, bool>(3)
    );
    assert_eq!(role.get::<_, i32>(4), 2 + 2, "free plan pool size + 2");
    assert!(role.get::<_, String>(5).starts_with("SCRAM-SHA-256$"));
    let config: Vec<String> = role.get(6);
    assert!(
        config.iter().any(|c| c.starts_with("statement_timeout=")),
        "{config:?}"
    );
    assert!(config
        .iter()
        .any(|c| c.starts_with("idle_in_transaction_session_timeout=")));

    // The stored credentials are sealed.
    let catalog = fleet.catalog().await;
    let sealed: Vec<u8> = catalog
        .query_one("SELECT credentials FROM tenants WHERE id = $1", &[&acme.id])
        .await
        .unwrap()
        .get(0);
    let password = p.tenant_password("acme").await.unwrap();
    assert!(!sealed
        .windows(password.expose_secret().len())
        .any(|w| w == password.expose_secret().as_bytes()));
    // Every step is in the ledger, done.
    let steps: Vec<(String, String)> = catalog
        .query(
            "SELECT step, status FROM operations WHERE tenant_id = $1 ORDER BY id",
            &[&acme.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = steps.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "creating",
            "template",
            "credentials",
            "role",
            "database",
            "grants",
            "ready"
        ]
    );
    assert!(steps.iter().all(|(_, status)| status == "done"));
}

#[tokio::test]
async fn placement_spreads_and_respects_drain_and_capacity() {
    let fleet = Fleet::new(3).await;
    let p = &fleet.provisioner;
    let catalog = fleet.catalog().await;
    catalog
        .execute("UPDATE servers SET capacity = 2 WHERE name = 's3'", &[])
        .await
        .unwrap();
    let mut placed: HashMap<String, usize> = HashMap::new();
    for i in 0..6 {
        let (t, _) = p
            .create_tenant(create(&format!("spread-{i}")))
            .await
            .unwrap();
        *placed.entry(t.server.unwrap()).or_default() += 1;
    }
    // Most free capacity first: s1 and s2 (100 each) take turns, s3 (2) takes none yet.
    assert_eq!(placed.get("s1"), Some(&3));
    assert_eq!(placed.get("s2"), Some(&3));

    p.drain_server("s1").await.unwrap();
    for i in 0..4 {
        let (t, _) = p
            .create_tenant(create(&format!("after-drain-{i}")))
            .await
            .unwrap();
        assert_ne!(
            t.server.as_deref(),
            Some("s1"),
            "a drained server took a tenant"
        );
    }
    let e = p
        .create_tenant(CreateTenant {
            slug: "on-drained".into(),
            server: Some("s1".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput);
    assert!(e.to_string().contains("draining"), "{e}");

    // s3 fills at 2.
    for i in 0..2 {
        p.create_tenant(CreateTenant {
            slug: format!("fill-{i}"),
            server: Some("s3".into()),
            ..Default::default()
        })
        .await
        .ok();
    }
    let e = p
        .create_tenant(CreateTenant {
            slug: "too-many".into(),
            server: Some("s3".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("full"), "{e}");
    assert_eq!(p.show_server("s3").await.unwrap().tenants, 2);

    // Nothing anywhere: no capacity at all.
    catalog
        .execute("UPDATE servers SET state = 'draining'", &[])
        .await
        .unwrap();
    let e = p.create_tenant(create("nowhere")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(p.show_tenant("nowhere").await.is_err(), "nothing recorded");
}

#[tokio::test]
async fn each_tenant_reaches_its_own_database_and_no_other() {
    let fleet = Fleet::new(2).await;
    let p = &fleet.provisioner;
    let slugs = ["iso-a", "iso-b", "iso-c", "iso-d", "iso-e", "iso-f"];
    for slug in slugs {
        p.create_tenant(create(slug)).await.unwrap();
    }
    let mut tenants = Vec::new();
    for slug in slugs {
        let t = p.show_tenant(slug).await.unwrap();
        let password = p.tenant_password(slug).await.unwrap();
        tenants.push((t, password));
    }
    let mut attempts = 0;
    let mut successes = 0;
    for (a, password) in &tenants {
        let role = format!("tr_{}", a.id.simple());
        // Its own database: yes.
        fleet
            .connect_as(
                a.server.as_deref().unwrap(),
                &role,
                password.expose_secret(),
                &a.database,
            )
            .await
            .unwrap();
        for (b, _) in &tenants {
            if a.id == b.id {
                continue;
            }
            attempts += 1;
            if fleet
                .connect_as(
                    b.server.as_deref().unwrap(),
                    &role,
                    password.expose_secret(),
                    &b.database,
                )
                .await
                .is_ok()
            {
                successes += 1;
            }
        }
    }
    // Nor the server's shared databases.
    for (t, password) in &tenants {
        let role = format!("tr_{}", t.id.simple());
        for db in ["postgres", "template1"] {
            attempts += 1;
            if fleet
                .connect_as(
                    t.server.as_deref().unwrap(),
                    &role,
                    password.expose_secret(),
                    db,
                )
                .await
                .is_ok()
            {
                successes += 1;
            }
        }
    }
    assert_eq!(attempts, 6 * 5 + 6 * 2);
    assert_eq!(
        successes, 0,
        "a tenant role reached another tenant's database"
    );

    // PUBLIC connects to none: an ordinary login role on each server.
    for (i, pg) in fleet.servers.iter().enumerate() {
        let admin = pg.connect("postgres").await;
        admin
            .batch_execute("CREATE ROLE outsider LOGIN PASSWORD 'outsider-pw'")
            .await
            .unwrap();
        for (t, _) in &tenants {
            if t.server.as_deref() == Some(&format!("s{}", i + 1)) {
                let r = fleet
                    .connect_as(
                        &format!("s{}", i + 1),
                        "outsider",
                        "outsider-pw",
                        &t.database,
                    )
                    .await;
                assert!(r.is_err(), "PUBLIC reached {}", t.database);
            }
        }
    }
}

#[tokio::test]
async fn suspend_cuts_off_at_once_and_resume_restores() {
    let fleet = Fleet::new(1).await;
    let p = &fleet.provisioner;
    let (t, _) = p.create_tenant(create("sleepy")).await.unwrap();

    // A router's view: LISTEN on the catalog.
    let (listener, mut conn) =
        tokio_postgres::connect(fleet.catalog_url.expose_secret(), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| conn.poll_message(cx))
            .await
            .transpose()
            .transpose()
        {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    listener
        .batch_execute("LISTEN tenantry_tenants")
        .await
        .unwrap();

    let session = fleet.connect_tenant("sleepy").await.unwrap();
    let suspended = p.suspend_tenant("sleepy").await.unwrap();
    assert_eq!(suspended.state, "suspended");
    assert!(suspended.generation > t.generation);
    let note = tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv())
        .await
        .expect("a NOTIFY within 2 s")
        .unwrap();
    assert_eq!(note, "sleepy");
    assert!(
        session.query_one("SELECT 1", &[]).await.is_err(),
        "the open session was ended"
    );
    assert!(
        fleet.connect_tenant("sleepy").await.is_err(),
        "a new session is refused"
    );
    // Idempotent.
    p.suspend_tenant("sleepy").await.unwrap();

    let resumed = p.resume_tenant("sleepy").await.unwrap();
    assert_eq!(resumed.state, "ready");
    fleet.connect_tenant("sleepy").await.unwrap();
    assert_eq!(p.resume_tenant("sleepy").await.unwrap().state, "ready");
}

#[tokio::test]
async fn a_non_superuser_admin_with_createdb_createrole_provisions_too() {
    let fleet = Fleet::new(1).await;
    let p = &fleet.provisioner;
    let pg = fleet.server("s1");
    let admin = pg.connect("postgres").await;
    admin
        .batch_execute(
            "CREATE ROLE provisioner LOGIN CREATEDB CREATEROLE PASSWORD 'prov-pw';
             GRANT CONNECT ON DATABASE postgres TO provisioner",
        )
        .await
        .unwrap();
    p.add_server(tenantry_provision::AddServer {
        name: "limited".into(),
        url: secrecy::SecretString::from(format!(
            "postgres://provisioner:prov-pw@127.0.0.1:{}/postgres",
            pg.port()
        )),
        capacity: None,
        max_connections: Some(20),
    })
    .await
    .unwrap();
    let (t, _) = p
        .create_tenant(CreateTenant {
            slug: "modest".into(),
            server: Some("limited".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(t.state, "ready");
    let session = fleet.connect_tenant("modest").await.unwrap();
    session
        .execute(
            "INSERT INTO tasks (user_id, agent, title) VALUES ('u', 'opencode', 'x')",
            &[],
        )
        .await
        .unwrap();
    p.suspend_tenant("modest").await.unwrap();
    assert!(fleet.connect_tenant("modest").await.is_err());
    p.resume_tenant("modest").await.unwrap();
    p.delete_tenant("modest", true).await.unwrap();
    let (dbs, roles) = fleet.tenant_objects().await;
    assert!(dbs.is_empty() && roles.is_empty(), "{dbs:?} {roles:?}");
}

//! `tenantry migrate run` against tenants that act from their own session (their own
//! role, as with a leaked password or the router's `/v1/sql`): what they write in their
//! database never moves their recorded version, and nothing they hold stalls the run.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::{Deployment, Running};
use uuid::Uuid;

/// A deployment with `n` tenants (`t000`…) and a copy of the templates folder.
struct Fleet {
    d: Deployment,
    templates: PathBuf,
}

impl Fleet {
    async fn new(n: usize) -> Self {
        let d = Deployment::new().await;
        d.provisioner()
            .await
            .create_many(
                (0..n)
                    .map(|i| tenantry_provision::CreateTenant {
                        slug: format!("t{i:03}"),
                        ..Default::default()
                    })
                    .collect(),
                2,
            )
            .await
            .unwrap();
        tenant_locks_released(&d).await;
        let templates = d.home.path().join("templates");
        let (from, to) = (
            support::templates_dir().join("tasks"),
            templates.join("tasks"),
        );
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        Self { d, templates }
    }

    fn write(&self, file: &str, sql: &str) {
        std::fs::write(self.templates.join("tasks").join(file), sql).unwrap();
    }

    /// `tenantry --templates … --output json migrate run …`.
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut all = vec![
            "--templates",
            self.templates.to_str().unwrap(),
            "--output",
            "json",
            "migrate",
            "run",
        ];
        all.extend_from_slice(args);
        self.d.cmd(&all)
    }

    /// (id, database) of a tenant.
    async fn tenant(&self, slug: &str) -> (Uuid, String) {
        let row = self
            .d
            .catalog()
            .await
            .query_one(
                "SELECT id, database_name FROM tenants WHERE slug = $1",
                &[&slug],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }

    /// A connection to `slug`'s database as its own role.
    async fn as_tenant(&self, slug: &str) -> tokio_postgres::Client {
        let (id, database) = self.tenant(slug).await;
        self.d.connect_tenant(id, &database).await.unwrap()
    }

    /// A superuser connection to `slug`'s database.
    async fn db(&self, slug: &str) -> tokio_postgres::Client {
        self.d.pg.connect(&self.tenant(slug).await.1).await
    }

    /// The recorded schema version of every tenant, by slug.
    async fn versions(&self) -> Vec<(String, i32)> {
        self.d
            .catalog()
            .await
            .query(
                "SELECT slug, schema_version FROM tenants ORDER BY slug",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    async fn history(&self, slug: &str) -> Vec<i32> {
        self.db(slug)
            .await
            .query(
                "SELECT version FROM refinery_schema_history ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Whether `slug`'s `tasks` table has `column`.
    async fn has_column(&self, slug: &str, column: &str) -> bool {
        self.db(slug)
            .await
            .query_one(
                "SELECT count(*) FROM information_schema.columns
                 WHERE table_name = 'tasks' AND column_name = $1",
                &[&column],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    }
}

fn report_of<'a>(report: &'a Value, slug: &str) -> &'a Value {
    report["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["slug"] == slug)
        .unwrap_or_else(|| panic!("{slug} not in {report}"))
}

#[tokio::test]
async fn history_rows_a_tenant_writes_never_move_its_recorded_version() {
    let f = Fleet::new(4).await;
    f.write("V2__tags.sql", "ALTER TABLE tasks ADD COLUMN tags text[];");
    f.write("V3__notes.sql", "ALTER TABLE tasks ADD COLUMN notes text;");
    let files = tenantry_migrate::Template::load(&f.templates, "tasks")
        .unwrap()
        .applied_form()
        .unwrap();
    let forge = |version: i32| {
        let file = files.iter().find(|a| a.version == version).unwrap();
        let label = file.name.split_once("__").unwrap().1.to_owned();
        (label, file.checksum.clone())
    };

    // t001 claims V2 and V3 ran (exact names and checksums): the runner would skip them.
    let t001 = f.as_tenant("t001").await;
    for version in [2, 3] {
        let (name, checksum) = forge(version);
        t001.execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES ($1, $2, '2026-01-01T00:00:00Z', $3)",
            &[&version, &name, &checksum],
        )
        .await
        .unwrap();
    }
    // t002 claims a version no file has; t003 forgets V1, so that it would run again.
    f.as_tenant("t002")
        .await
        .batch_execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES (9, 'later', '2026-01-01T00:00:00Z', '1')",
        )
        .await
        .unwrap();
    f.as_tenant("t003")
        .await
        .batch_execute("DELETE FROM refinery_schema_history")
        .await
        .unwrap();

    let out = f.command(&["--on-error", "continue"]).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Each tenant is either migrated for real or reported failed with a reason.
    for slug in ["t000", "t001", "t002", "t003"] {
        let t = report_of(&report, slug);
        assert!(
            t["status"] == "ok" || t["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{slug}: {t} ({stderr})"
        );
    }
    // What the catalog claims ran, did run: V2 and V3 are real where it says 3.
    for (slug, version) in f.versions().await {
        assert!(version == 1 || version == 3, "{slug} at {version}");
        if version == 3 {
            assert!(
                f.has_column(&slug, "tags").await && f.has_column(&slug, "notes").await,
                "{slug} is recorded at version 3, but V2/V3 never ran"
            );
        }
    }
    // The runner takes history back from the tenant: every tenant migrated for real.
    assert_eq!(out.status.code(), Some(0), "{report} {stderr}");
    for slug in ["t000", "t001", "t002", "t003"] {
        assert_eq!(report_of(&report, slug)["status"], "ok", "{report}");
        assert_eq!(f.history(slug).await, [1, 2, 3], "{slug}");
        assert!(f.has_column(slug, "notes").await, "{slug}");
    }
    assert!(f.versions().await.iter().all(|(_, v)| *v == 3));
    let t001 = report_of(&report, "t001");
    assert_eq!(t001["from_version"], 1, "{t001}");
    assert_eq!(
        t001["applied"],
        serde_json::json!(["V2__tags", "V3__notes"]),
        "{t001}"
    );
}

#[tokio::test]
async fn a_tenant_holding_the_runners_lock_key_does_not_stall_the_run() {
    let f = Fleet::new(3).await;
    f.write("V2__tags.sql", "ALTER TABLE tasks ADD COLUMN tags text[];");
    // t001 takes the key every runner used to take in its database, and never lets go.
    let holder = f.as_tenant("t001").await;
    let held: bool = holder
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('tenantry-migrate'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(held);

    let run = Running::spawn(f.command(&["--on-error", "continue"]));
    let (status, stdout, stderr) = run.wait(Duration::from_secs(90));
    let report: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    for slug in ["t000", "t002"] {
        assert_eq!(
            report_of(&report, slug)["status"],
            "ok",
            "{report} {stderr}"
        );
        assert!(f.has_column(slug, "tags").await, "{slug}");
    }
    // The tenant's lock is not the runner's: t001 is migrated too.
    assert!(status.success(), "{report} {stderr}");
    assert_eq!(report_of(&report, "t001")["status"], "ok", "{report}");
    assert!(f.has_column("t001", "tags").await);
    assert!(f.versions().await.iter().all(|(_, v)| *v == 2));
    // Still held by the tenant's session, which the runner never touched.
    let still: i64 = holder
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(still, 1);
}

#[tokio::test]
async fn a_file_a_dead_runner_committed_is_confirmed_and_a_forged_one_is_applied() {
    let f = Fleet::new(3).await;
    f.write("V2__tags.sql", "ALTER TABLE tasks ADD COLUMN tags text[];");
    let (name, checksum) = {
        let files = tenantry_migrate::Template::load(&f.templates, "tasks")
            .unwrap()
            .applied_form()
            .unwrap();
        let v2 = files.into_iter().find(|a| a.version == 2).unwrap();
        (v2.name.split_once("__").unwrap().1.to_owned(), v2.checksum)
    };
    let catalog = f.d.catalog().await;
    let intend = |slug: &'static str, xid: i64| {
        let catalog = &catalog;
        async move {
            catalog
                .execute(
                    "INSERT INTO migration_intents (tenant_id, run_id, version, xid)
                     SELECT id, gen_random_uuid(), 2, $2 FROM tenants WHERE slug = $1",
                    &[&slug, &xid],
                )
                .await
                .unwrap();
        }
    };
    // t001: a runner committed V2 (file and history row in one transaction), gave its
    // word first, and died before the catalog took the version.
    let db = f.db("t001").await;
    db.batch_execute("BEGIN").await.unwrap();
    db.execute(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
         VALUES (2, $1, '2026-01-01T00:00:00Z', $2)",
        &[&name, &checksum],
    )
    .await
    .unwrap();
    db.batch_execute("ALTER TABLE tasks ADD COLUMN tags text[]")
        .await
        .unwrap();
    let xid: i64 = db
        .query_one("SELECT pg_current_xact_id()::text::int8", &[])
        .await
        .unwrap()
        .get(0);
    intend("t001", xid).await;
    db.batch_execute("COMMIT").await.unwrap();
    // t002: the runner's transaction never committed; the tenant then writes the row
    // itself, exactly as the runner would have.
    let db = f.db("t002").await;
    db.batch_execute("BEGIN").await.unwrap();
    let xid: i64 = db
        .query_one("SELECT pg_current_xact_id()::text::int8", &[])
        .await
        .unwrap()
        .get(0);
    intend("t002", xid).await;
    db.batch_execute("ROLLBACK").await.unwrap();
    f.as_tenant("t002")
        .await
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES (2, $1, '2026-01-01T00:00:00Z', $2)",
            &[&name, &checksum],
        )
        .await
        .unwrap();

    let out = f.command(&[]).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // t001's V2 is confirmed, not applied twice; t002's is applied for real.
    assert_eq!(report_of(&report, "t001")["applied"], serde_json::json!([]));
    for slug in ["t000", "t002"] {
        assert_eq!(
            report_of(&report, slug)["applied"],
            serde_json::json!(["V2__tags"]),
            "{report}"
        );
    }
    assert!(
        report_of(&report, "t002")["repaired"].is_array(),
        "{report}"
    );
    for slug in ["t000", "t001", "t002"] {
        assert!(f.has_column(slug, "tags").await, "{slug}");
        assert_eq!(f.history(slug).await, [1, 2], "{slug}");
    }
    assert!(f.versions().await.iter().all(|(_, v)| *v == 2));
    let left: i64 = catalog
        .query_one("SELECT count(*) FROM migration_intents", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

/// Waits until the test's provisioner has released its tenant locks (it does so on its
/// runtime, which a test blocked on the binary does not drive; a migration waits for a
/// tenant's lock).
async fn tenant_locks_released(d: &Deployment) {
    let catalog = d.catalog().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while catalog
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
             WHERE l.locktype = 'advisory' AND d.datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "tenant locks still held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn what_a_tenant_planted_runs_as_the_tenant_during_its_migration_never_as_the_admin() {
    let f = Fleet::new(2).await;
    f.write("V2__tags.sql", "ALTER TABLE tasks ADD COLUMN tags text[];\nINSERT INTO tasks (user_id, agent, title) VALUES ('m', 'opencode', 'from a migration');");
    // t000 plants a trigger on its own table, fired by the migration's write: it leaves
    // the tenant's role (RESET ROLE) and tries what only the admin may do.
    f.as_tenant("t000")
        .await
        .batch_execute(
            "CREATE FUNCTION climb() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               RESET ROLE;
               CREATE ROLE escalated LOGIN SUPERUSER;
               RETURN NEW;
             END $$;
             CREATE TRIGGER climb BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION climb();",
        )
        .await
        .unwrap();
    // t001 is suspended: its migration still runs, and it stays unreachable.
    let out = f.d.run(&["tenant", "suspend", "t001"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = f.command(&["--on-error", "continue"]).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let climbed: i64 =
        f.d.pg
            .connect("postgres")
            .await
            .query_one(
                "SELECT count(*) FROM pg_roles WHERE rolname = 'escalated'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(
        climbed, 0,
        "a tenant's trigger acted as the admin: {report}"
    );
    // The planted trigger failed the tenant's own migration, with PostgreSQL's reason.
    let t000 = report_of(&report, "t000");
    assert_eq!(t000["status"], "failed", "{t000}");
    assert!(
        t000["error"].as_str().unwrap_or_default().contains("42501"),
        "{t000}"
    );
    // The suspended tenant was migrated, and its CONNECT taken back.
    let t001 = report_of(&report, "t001");
    assert_eq!(t001["status"], "ok", "{t001}");
    assert!(f.has_column("t001", "tags").await);
    let (id, database) = f.tenant("t001").await;
    assert!(
        f.d.connect_tenant(id, &database).await.is_err(),
        "a suspended tenant could connect after its migration"
    );
}

//! `tenantry migrate run` end to end: the real binary against a catalog and two real
//! PostgreSQL servers holding over a hundred tenant databases.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Deployment, Running};

const TENANTS: usize = 104;

/// A deployment with a second server and `n` tenants spread over both, and a copy of
/// the templates folder that the test adds files to.
struct Fleet {
    d: Deployment,
    _second: tenantry_testkit::TestCluster,
    templates: PathBuf,
}

impl Fleet {
    async fn new(n: usize) -> Self {
        let d = Deployment::new().await;
        let second = tenantry_testkit::TestCluster::start();
        let url = second.url("postgres");
        let out = d.run(&["server", "add", "s2", "--url", &url]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let provisioner = d.provisioner().await;
        provisioner
            .create_many(
                (0..n)
                    .map(|i| tenantry_provision::CreateTenant {
                        slug: format!("t{i:03}"),
                        ..Default::default()
                    })
                    .collect(),
                4,
            )
            .await
            .unwrap();
        tenant_locks_released(&d).await;
        let templates = d.home.path().join("templates");
        support::copy_dir(
            &support::templates_dir().join("tasks"),
            &templates.join("tasks"),
        );
        Self {
            d,
            _second: second,
            templates,
        }
    }

    fn write(&self, file: &str, sql: &str) {
        std::fs::write(self.templates.join("tasks").join(file), sql).unwrap();
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.templates.join("tasks").join(file)).unwrap();
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["--templates", self.templates.to_str().unwrap()];
        all.extend_from_slice(args);
        all
    }

    /// `migrate run` with `args`, JSON output; asserts the exit code.
    fn migrate(&self, args: &[&str], code: i32) -> Value {
        let mut all = vec!["migrate", "run"];
        all.extend_from_slice(args);
        self.d.json(&self.args(&all), code)
    }

    /// Each tenant's (slug, recorded schema version, database, server port).
    async fn tenants(&self) -> Vec<(String, i32, String, i32)> {
        self.d
            .catalog()
            .await
            .query(
                "SELECT t.slug, t.schema_version, t.database_name, s.port FROM tenants t
                 JOIN servers s ON s.id = t.server_id WHERE t.state = 'ready' ORDER BY t.slug",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    /// A superuser connection to a tenant's database.
    async fn db(&self, slug: &str) -> tokio_postgres::Client {
        let tenant = self
            .tenants()
            .await
            .into_iter()
            .find(|t| t.0 == slug)
            .unwrap();
        self.connect(&tenant).await
    }

    /// A superuser connection to the database of a tenant as [`Fleet::tenants`] lists it.
    async fn connect(
        &self,
        (_, _, database, port): &(String, i32, String, i32),
    ) -> tokio_postgres::Client {
        let pg = if *port == i32::from(self.d.pg.port()) {
            &self.d.pg
        } else {
            &self._second
        };
        pg.connect(database).await
    }

    /// Every tenant database's refinery history: (slug, versions applied, in order).
    async fn histories(&self) -> Vec<(String, Vec<i32>)> {
        let mut out = Vec::new();
        for tenant in self.tenants().await {
            let db = self.connect(&tenant).await;
            let slug = tenant.0;
            let versions: Vec<i32> = db
                .query(
                    "SELECT version FROM refinery_schema_history ORDER BY version",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            out.push((slug, versions));
        }
        out
    }

    /// Puts a row in `slug` that the `no_poison` migration refuses.
    async fn poison(&self, slug: &str, poisoned: bool) {
        let db = self.db(slug).await;
        if poisoned {
            db.execute(
                "INSERT INTO tasks (id, user_id, agent, title) VALUES (gen_random_uuid(), 'u', 'claude', 'poison')",
                &[],
            )
            .await
            .unwrap();
        } else {
            db.execute("DELETE FROM tasks WHERE title = 'poison'", &[])
                .await
                .unwrap();
        }
    }
}

fn count(report: &Value, status: &str) -> usize {
    report["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == status)
        .count()
}

const NO_POISON: &str = "ALTER TABLE tasks ADD CONSTRAINT no_poison CHECK (title <> 'poison');";

#[tokio::test]
async fn failures_under_each_policy_then_a_rerun_converges() {
    let f = Fleet::new(TENANTS).await;
    f.write("V2__no_poison.sql", NO_POISON);
    f.poison("t001", true).await;
    f.poison("t060", true).await;

    // halt: the first failure stops the run; tenants not started are skipped.
    let halt = f.migrate(&["--concurrency", "2"], 1);
    assert_eq!(
        halt["summary"]["ok"].as_u64().unwrap() as usize
            + halt["summary"]["failed"].as_u64().unwrap() as usize
            + halt["summary"]["skipped"].as_u64().unwrap() as usize,
        TENANTS
    );
    assert!(count(&halt, "skipped") > 0, "{halt}");
    assert!(halt["halted"].as_str().unwrap().contains("halt"));
    let failed: Vec<&Value> = halt["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{halt}");
    assert_eq!(failed[0]["slug"], "t001");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.contains("V2__no_poison") && error.contains("no_poison"),
        "{error}"
    );
    assert_eq!(failed[0]["from_version"], 1);
    assert_eq!(failed[0]["to_version"], 1);

    // continue with a cap: stops at the cap.
    let capped = f.migrate(&["--on-error", "continue", "--max-failures", "1"], 1);
    assert_eq!(capped["summary"]["failed"], 1, "{capped}");
    assert!(capped["halted"]
        .as_str()
        .unwrap()
        .contains("--max-failures 1"));

    // continue: every tenant but the two poisoned ones, plus a JUnit report.
    let junit = f.d.home.path().join("junit.xml");
    let cont = f.migrate(
        &["--on-error", "continue", "--junit", junit.to_str().unwrap()],
        1,
    );
    assert_eq!(cont["summary"]["failed"], 2, "{cont}");
    assert_eq!(cont["summary"]["skipped"], 0);
    assert!(cont["halted"].is_null());
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(
        xml.matches("<testcase ").count(),
        cont["tenants"].as_array().unwrap().len()
    );
    assert_eq!(xml.matches("<failure ").count(), 2);
    assert!(xml.contains("name=\"t060\""));
    let behind: Vec<String> = f
        .tenants()
        .await
        .into_iter()
        .filter(|t| t.1 != 2)
        .map(|t| t.0)
        .collect();
    assert_eq!(behind, ["t001", "t060"]);
    let status = f.d.json(&f.args(&["migrate", "status"]), 0);
    let t060 = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["slug"] == "t060")
        .unwrap();
    assert_eq!(t060["status"], "failed");
    assert!(t060["error"].as_str().unwrap().contains("no_poison"));

    // The cause fixed, a rerun converges and migrates only what was left.
    f.poison("t001", false).await;
    f.poison("t060", false).await;
    let rerun = f.migrate(&[], 0);
    assert_eq!(rerun["summary"]["ok"], 2, "{rerun}");
    assert_eq!(rerun["summary"]["up_to_date"], TENANTS as u64 - 2);
    let again = f.migrate(&[], 0);
    assert_eq!(again["tenants"], serde_json::json!([]));
    for (slug, versions) in f.histories().await {
        assert_eq!(versions, [1, 2], "{slug}");
    }
    assert!(f.tenants().await.iter().all(|t| t.1 == 2));
}

#[tokio::test]
async fn two_runners_at_once_apply_each_migration_once_and_finish_the_fleet() {
    let f = Fleet::new(TENANTS).await;
    f.write(
        "V2__slow_tags.sql",
        "SELECT pg_sleep(0.02); ALTER TABLE tasks ADD COLUMN tags text[];",
    );
    let spawn = || {
        let all = f.args(&["--output", "json", "migrate", "run", "--concurrency", "4"]);

        Running::spawn(f.d.cmd(&all))
    };
    let (a, b) = (spawn(), spawn());
    let (sa, outa, erra) = a.wait(Duration::from_secs(120));
    let (sb, outb, errb) = b.wait(Duration::from_secs(120));
    assert!(sa.success(), "{erra}");
    assert!(sb.success(), "{errb}");
    let (ra, rb): (Value, Value) = (
        serde_json::from_str(&outa).unwrap(),
        serde_json::from_str(&outb).unwrap(),
    );
    // Together they cover the fleet; a tenant one of them applied, the other found done.
    let applied = |r: &Value| -> Vec<String> {
        r["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| !t["applied"].as_array().unwrap().is_empty())
            .map(|t| t["slug"].as_str().unwrap().to_owned())
            .collect()
    };
    let (aa, ab) = (applied(&ra), applied(&rb));
    assert_eq!(
        aa.len() + ab.len(),
        TENANTS,
        "each tenant applied by exactly one runner"
    );
    assert!(aa.iter().all(|s| !ab.contains(s)));
    for (slug, versions) in f.histories().await {
        assert_eq!(versions, [1, 2], "{slug}: one history row per version");
    }
    assert!(f.tenants().await.iter().all(|t| t.1 == 2));
}

#[tokio::test]
async fn a_run_killed_mid_way_is_finished_by_the_next() {
    let f = Fleet::new(TENANTS).await;
    f.write(
        "V2__slow_tags.sql",
        "SELECT pg_sleep(0.05); ALTER TABLE tasks ADD COLUMN tags text[];",
    );
    let all = f.args(&["migrate", "run", "--concurrency", "2"]);

    let run = Running::spawn(f.d.cmd(&all));
    let catalog = f.d.catalog().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = catalog
            .query_one("SELECT count(*) FROM tenants WHERE schema_version = 2", &[])
            .await
            .unwrap()
            .get(0);
        if done >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "the run made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.signal("KILL");
    let _ = run.wait(Duration::from_secs(10));

    let rerun = f.migrate(&[], 0);
    assert!(
        rerun["summary"]["up_to_date"].as_u64().unwrap() >= 10,
        "finished tenants are skipped: {}",
        rerun["summary"]
    );
    for (slug, versions) in f.histories().await {
        assert_eq!(versions, [1, 2], "{slug}");
    }
    assert!(f.tenants().await.iter().all(|t| t.1 == 2));
    let states: Vec<String> = catalog
        .query("SELECT state FROM migration_runs ORDER BY started_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(states, ["interrupted", "finished"]);
}

#[tokio::test]
async fn changed_and_missing_files_are_refused_with_nothing_applied() {
    let f = Fleet::new(TENANTS).await;
    f.write("V2__tags.sql", "ALTER TABLE tasks ADD COLUMN tags text[];");
    f.migrate(&[], 0);

    // V2 edited after it was applied, and a new V3: refused by name, V3 applied nowhere.
    f.write(
        "V2__tags.sql",
        "ALTER TABLE tasks ADD COLUMN tags text[] NOT NULL DEFAULT '{}';",
    );
    f.write("V3__notes.sql", "ALTER TABLE tasks ADD COLUMN notes text;");
    let all = f.args(&["migrate", "run"]);

    let out = f.d.run(&all);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("V2__tags.sql") && stderr.contains("changed"),
        "{stderr}"
    );
    // A new tenant is not built from the changed files either.
    let create = f.args(&["tenant", "create", "newcomer"]);

    assert_eq!(f.d.run(&create).status.code(), Some(2));

    // V2 removed: refused as missing.
    f.remove("V2__tags.sql");
    let out = f.d.run(&all);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("V2__tags.sql") && stderr.contains("no longer"),
        "{stderr}"
    );

    for (slug, versions) in f.histories().await {
        assert_eq!(versions, [1, 2], "{slug}: nothing applied");
    }
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_reports_what_would_fail() {
    let f = Fleet::new(TENANTS).await;
    f.write("V2__no_poison.sql", NO_POISON);
    f.poison("t042", true).await;
    let dry = f.migrate(&["--dry-run", "--on-error", "continue"], 1);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["summary"]["failed"], 1, "{dry}");
    assert_eq!(dry["summary"]["ok"], TENANTS as u64 - 1);
    let t042 = dry["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["slug"] == "t042")
        .unwrap();
    assert!(t042["error"].as_str().unwrap().contains("would fail"));
    for (slug, versions) in f.histories().await {
        assert_eq!(versions, [1], "{slug}");
    }
    assert!(f.tenants().await.iter().all(|t| t.1 == 1));
    let db = f.db("t007").await;
    let constraints: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conname = 'no_poison'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(constraints, 0);
    let runs: i64 =
        f.d.catalog()
            .await
            .query_one("SELECT count(*) FROM migration_runs", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(runs, 0, "a dry run records nothing");
}

#[tokio::test]
async fn a_failing_canary_stops_the_run_before_the_rest() {
    let f = Fleet::new(TENANTS).await;
    f.write("V2__no_poison.sql", NO_POISON);
    f.poison("t000", true).await;
    let report = f.migrate(&["--canary", "3", "--on-error", "continue"], 1);
    assert!(
        report["halted"].as_str().unwrap().contains("canary"),
        "{report}"
    );
    assert_eq!(report["summary"]["failed"], 1);
    assert_eq!(report["summary"]["ok"], 2);
    assert_eq!(report["summary"]["skipped"], TENANTS as u64 - 3);
    let at_two = f.tenants().await.iter().filter(|t| t.1 == 2).count();
    assert_eq!(at_two, 2);
}

#[tokio::test]
async fn a_tenant_created_during_a_run_ends_at_the_latest_version() {
    let f = Fleet::new(TENANTS).await;
    f.write(
        "V2__slow_tags.sql",
        "SELECT pg_sleep(0.03); ALTER TABLE tasks ADD COLUMN tags text[];",
    );
    let all = f.args(&["--output", "json", "migrate", "run", "--concurrency", "2"]);

    let run = Running::spawn(f.d.cmd(&all));
    let catalog = f.d.catalog().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while catalog
        .query_one("SELECT count(*) FROM tenants WHERE schema_version = 2", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        < 5
    {
        assert!(Instant::now() < deadline, "the run made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One born from the old files (a provisioner that has not been given the new ones),
    // one from the new.
    f.d.json(&["tenant", "create", "old-files"], 0);
    let create = f.args(&["--output", "json", "tenant", "create", "new-files"]);

    let out = f.d.run(&create);
    assert!(out.status.success());
    let (status, stdout, stderr) = run.wait(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["summary"]["failed"], 0);
    let tenants = f.tenants().await;
    for slug in ["old-files", "new-files"] {
        let t = tenants.iter().find(|t| t.0 == slug).unwrap();
        assert_eq!(t.1, 2, "{slug} is at the latest version");
    }
    for (slug, versions) in f.histories().await {
        assert_eq!(versions, [1, 2], "{slug}");
    }
}

#[tokio::test]
async fn routers_learn_new_versions_and_hold_back_tenants_below_the_minimum() {
    let f = Fleet::new(4).await;
    let router =
        f.d.serve(&[("TENANTRY__ROUTER__MIN_SCHEMA_VERSION", "2")])
            .await;
    let http = reqwest::Client::new();
    let get = || {
        http.get(format!("{}/v1/tasks", router.base))
            .bearer_auth(support::token("t001", None))
            .send()
    };
    let r = get().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tenant_unavailable");

    f.write("V2__tags.sql", "ALTER TABLE tasks ADD COLUMN tags text[];");
    f.migrate(&[], 0);
    // The catalog's NOTIFY reaches the router: served within a second or so.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if get().await.unwrap().status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router never learnt the new version"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The admin API's fleet status is `migrate status`'s. (This router reads the
    // repository's templates, whose latest is 1: the tenants are past it.)
    let status: Value = http
        .get(format!("{}/admin/v1/migrations", router.base))
        .bearer_auth(support::admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["latest"]["tasks"], 1, "{status}");
    let tenants = status["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 4);
    assert!(tenants.iter().all(|t| t["schema_version"] == 2), "{status}");
}

#[tokio::test]
async fn a_migration_that_waits_for_a_lock_is_retried_with_backoff() {
    let f = Fleet::new(6).await;
    f.write("V2__tags.sql", "ALTER TABLE tasks ADD COLUMN tags text[];");
    // A long transaction holds the table of t002: the ALTER gives up after 100 ms.
    let holder = f.db("t002").await;
    holder
        .batch_execute("BEGIN; LOCK TABLE tasks IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let mut cmd = f.d.cmd(&f.args(&["--output", "json", "migrate", "run"]));
    cmd.env("TENANTRY__MIGRATE__LOCK_TIMEOUT_MS", "100");
    let run = Running::spawn(cmd);
    // Released while the runner is backing off: the retry gets through.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let (status, stdout, stderr) = run.wait(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["summary"]["ok"], 6, "{report}");
    for (slug, versions) in f.histories().await {
        assert_eq!(versions, [1, 2], "{slug}");
    }

    // A lock never released: the tenant fails after its retries, naming the lock.
    f.write("V3__notes.sql", "ALTER TABLE tasks ADD COLUMN notes text;");
    holder
        .batch_execute("BEGIN; LOCK TABLE tasks IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let mut cmd = f.d.cmd(&f.args(&[
        "--output",
        "json",
        "migrate",
        "run",
        "--on-error",
        "continue",
    ]));
    cmd.env("TENANTRY__MIGRATE__LOCK_TIMEOUT_MS", "100")
        .env("TENANTRY__MIGRATE__LOCK_RETRIES", "1");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["summary"]["failed"], 1, "{report}");
    let t002 = report["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["slug"] == "t002")
        .unwrap();
    let error = t002["error"].as_str().unwrap();
    assert!(
        error.contains("lock") && error.contains("after 1 retries"),
        "{error}"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn a_tenants_own_functions_never_run_as_the_admin_during_a_migration() {
    let f = Fleet::new(2).await;
    let row =
        f.d.catalog()
            .await
            .query_one(
                "SELECT id, database_name, role_name FROM tenants WHERE slug = 't001'",
                &[],
            )
            .await
            .unwrap();
    let (id, database, role): (uuid::Uuid, String, String) = (row.get(0), row.get(1), row.get(2));
    // The tenant plants a function that an unqualified call from the admin's session
    // would pick (int4 matches hashtext()'s result exactly; pg_catalog's takes int8).
    let tenant = f.d.connect_tenant(id, &database).await.unwrap();
    tenant
        .batch_execute(&format!(
            "CREATE FUNCTION public.pg_try_advisory_lock(integer) RETURNS boolean
               LANGUAGE sql AS $$ ALTER ROLE {role} SUPERUSER; SELECT true $$"
        ))
        .await
        .unwrap();
    f.write("V2__tags.sql", "ALTER TABLE tasks ADD COLUMN tags text[];");
    f.migrate(&[], 0);
    let superuser: bool =
        f.d.pg
            .connect("postgres")
            .await
            .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .unwrap()
            .get(0);
    assert!(
        !superuser,
        "the tenant's function ran with the admin's rights"
    );
    for (slug, versions) in f.histories().await {
        assert_eq!(versions, [1, 2], "{slug}");
    }
}

#[tokio::test]
async fn a_signal_stops_the_run_after_the_tenants_in_progress() {
    let f = Fleet::new(TENANTS).await;
    f.write(
        "V2__slow_tags.sql",
        "SELECT pg_sleep(0.05); ALTER TABLE tasks ADD COLUMN tags text[];",
    );
    let run = Running::spawn(f.d.cmd(&f.args(&[
        "--output",
        "json",
        "migrate",
        "run",
        "--concurrency",
        "2",
    ])));
    let catalog = f.d.catalog().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while catalog
        .query_one("SELECT count(*) FROM tenants WHERE schema_version = 2", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        < 6
    {
        assert!(Instant::now() < deadline, "the run made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.signal("TERM");
    let (status, stdout, stderr) = run.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["cancelled"], true, "{report}");
    assert_eq!(report["summary"]["failed"], 0);
    let skipped = report["summary"]["skipped"].as_u64().unwrap();
    assert!(skipped > 0, "{report}");
    // Every tenant it started, it finished; none is half-migrated.
    let at_two = f.tenants().await.iter().filter(|t| t.1 == 2).count() as u64;
    assert_eq!(at_two, report["summary"]["ok"].as_u64().unwrap());
    let state: String = catalog
        .query_one("SELECT state FROM migration_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "cancelled");
    f.migrate(&[], 0);
    for (slug, versions) in f.histories().await {
        assert_eq!(versions, [1, 2], "{slug}");
    }
}

#[tokio::test]
async fn a_file_that_fails_on_an_empty_database_stops_the_run_before_any_tenant() {
    let f = Fleet::new(4).await;
    let templates_before: i64 =
        f.d.catalog()
            .await
            .query_one("SELECT count(*) FROM template_databases", &[])
            .await
            .unwrap()
            .get(0);
    f.write(
        "V2__broken.sql",
        "ALTER TABLE no_such_table ADD COLUMN x int;",
    );
    let out = f.d.run(&f.args(&["migrate", "run"]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no tenant was migrated") && stderr.contains("no_such_table"),
        "{stderr}"
    );
    for (slug, versions) in f.histories().await {
        assert_eq!(versions, [1], "{slug}");
    }
    let catalog = f.d.catalog().await;
    let templates_after: i64 = catalog
        .query_one("SELECT count(*) FROM template_databases", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        templates_after, templates_before,
        "no template of the broken files"
    );
    let runs: i64 = catalog
        .query_one("SELECT count(*) FROM migration_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 0);
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

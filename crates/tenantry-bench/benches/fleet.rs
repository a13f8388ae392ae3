//! The fleet migration runner: 1,000 tenants × one metadata-only migration, Tenantry's
//! runner (the library `tenantry migrate run` calls: templates refreshed, then the run)
//! against the loop many teams run today — `psql -f` once per tenant database, one after
//! another — in the same process, on the same server and tenants. Also: the most
//! connections the runner held on the server at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use tenantry_bench::{Deployment, Ratio, Report, Summary};
use tenantry_migrate::runner::{self, RunOptions};
use tenantry_provision::{CreateTenant, Provisioner};
use tenantry_testkit::TestCluster;

const TENANTS: usize = 1000;
const CONCURRENCY: usize = 8;

async fn setup(pg: &TestCluster) -> (Provisioner, tempfile::TempDir) {
    // A templates folder of our own, to add the migration to.
    let templates = tempfile::tempdir().unwrap();
    let source = tenantry_bench::templates_dir().join("tasks");
    std::fs::create_dir_all(templates.path().join("tasks")).unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            templates.path().join("tasks").join(entry.file_name()),
        )
        .unwrap();
    }
    let provisioner = Deployment::new(pg, &[], templates.path().to_owned(), 150)
        .await
        .provisioner;
    eprintln!("creating {TENANTS} tenants…");
    provisioner
        .create_many(
            (0..TENANTS)
                .map(|i| CreateTenant {
                    slug: format!("t{i:04}"),
                    ..Default::default()
                })
                .collect(),
            4,
        )
        .await
        .unwrap();
    (provisioner, templates)
}

/// Samples the server's connections named `application` every 10 ms until stopped.
async fn sample_peak(
    pg: &TestCluster,
    application: &'static str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<i64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let client = pg.connect("postgres").await;
    let flag = stop.clone();
    let handle = tokio::spawn(async move {
        let mut peak = 0i64;
        while !flag.load(Ordering::Relaxed) {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&application],
                )
                .await
                .unwrap()
                .get(0);
            peak = peak.max(n);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peak
    });
    (stop, handle)
}

async fn run() -> Report {
    let pg = TestCluster::start();
    let (provisioner, templates) = setup(&pg).await;
    let databases: Vec<String> = provisioner
        .list_tenants(None)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.database)
        .collect();
    assert_eq!(databases.len(), TENANTS);

    // The loop: the same kind of change, with psql, one database after another.
    let psql = tenantry_embedded::PgBinaries::find().unwrap().tool("psql");
    let file = templates.path().join("loop.sql");
    std::fs::write(&file, "ALTER TABLE tasks ADD COLUMN tag_loop text;\n").unwrap();
    eprintln!("the psql loop…");
    let (stop, peak_loop) = sample_peak(&pg, "psql").await;
    let started = Instant::now();
    let mut loop_samples = Vec::with_capacity(TENANTS);
    for db in &databases {
        let t = Instant::now();
        let status = tokio::process::Command::new(&psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &pg.port().to_string(),
                "-U",
                pg.superuser(),
                "-d",
                db,
                "-f",
            ])
            .arg(&file)
            .env("PGPASSWORD", pg.password().expose_secret())
            .status()
            .await
            .unwrap();
        assert!(status.success());
        loop_samples.push(t.elapsed());
    }
    let loop_wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let loop_peak = peak_loop.await.unwrap();

    // Tenantry: a new file in the templates folder, then what `migrate run` does.
    std::fs::write(
        templates.path().join("tasks/V2__tag.sql"),
        "ALTER TABLE tasks ADD COLUMN tag text;\n",
    )
    .unwrap();
    eprintln!("tenantry migrate run…");
    let (stop, peak_runner) = sample_peak(&pg, "tenantry-migrate").await;
    let started = Instant::now();
    provisioner
        .refresh_templates(&["tasks".to_owned()])
        .await
        .unwrap();
    let templates_ready = started.elapsed();
    let report = runner::run(
        provisioner.catalog(),
        templates.path(),
        provisioner.fleet_connector(),
        RunOptions {
            concurrency: CONCURRENCY,
            per_server: CONCURRENCY,
            ..RunOptions::default()
        },
        &|_| {},
    )
    .await
    .unwrap();
    let runner_wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let runner_peak = peak_runner.await.unwrap();
    assert_eq!(report.summary.ok, TENANTS, "{:?}", report.summary);
    let runner_samples: Vec<Duration> = report
        .tenants
        .iter()
        .map(|t| Duration::from_millis(t.duration_ms))
        .collect();

    let psql_loop = Summary::new(
        "psql -f, one tenant after another",
        &loop_samples,
        loop_wall,
    );
    let tenantry = Summary::new(
        format!("tenantry migrate run, concurrency {CONCURRENCY}"),
        &runner_samples,
        runner_wall,
    );
    Report {
        name: "fleet".into(),
        notes: vec![
            format!("{TENANTS} tenant databases on one throwaway server (2 cores); the migration adds a nullable column (metadata only)"),
            format!(
                "tenantry: {:.1} s for the fleet (goal ≤ 10 s), of which {:.2} s building the new template database; peak {runner_peak} runner connections on the server (goal ≤ 8)",
                runner_wall.as_secs_f64(),
                templates_ready.as_secs_f64()
            ),
            format!(
                "psql loop: {:.1} s; peak {loop_peak} psql connection(s)",
                loop_wall.as_secs_f64()
            ),
            "per tenant: a psql process from start to exit; tenantry's time from a tenant's start to its result (connect, lock, refinery, catalog)".into(),
        ],
        scenarios: vec![psql_loop, tenantry],
        ratios: vec![Ratio {
            name: "psql loop time / tenantry time".into(),
            value: loop_wall.as_secs_f64() / runner_wall.as_secs_f64(),
            meaning: "goal ≥ 3".into(),
            ..Default::default()
        }],
    }
}

fn main() {
    tenantry_bench::main(run());
}

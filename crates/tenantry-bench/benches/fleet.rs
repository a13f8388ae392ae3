//! The fleet migration runner: `migrate run` over 1,500 real tenant databases with three
//! servers in parallel. Three throwaway clusters, 500 tenants on each, one metadata-only
//! migration: Tenantry's runner (the library `tenantry migrate run` calls: templates
//! refreshed, then the run, `migrate.per_server` tenants at once on each server) against
//! the loop many teams run today — `psql -f` once per tenant database, one after another —
//! in the same process, over the same 1,500 databases. Printed: tenants per second of
//! both and the speed-up, the most runner connections each server held at once, and when
//! each server had runner sessions (the three spans overlap when the servers were worked
//! on at once). Every tenant is checked afterwards, in the catalog and in its own
//! database: the bench panics if any did not reach the new version.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tenantry_bench::{spread, Deployment, Ratio, Report, Summary};
use tenantry_migrate::runner::{self, RunOptions};
use tenantry_provision::{AddServer, CreateTenant, Provisioner};
use tenantry_testkit::TestCluster;

/// The registered servers, one throwaway cluster each (`bench` also holds the catalog).
const SERVERS: [&str; 3] = ["bench", "b", "c"];
const PER_SERVER: usize = 500;
const TENANTS: usize = PER_SERVER * SERVERS.len();
/// Tenants created at once (two per server).
const CREATORS: usize = 6;
/// The version the runner's migration brings every tenant to.
const NEW_VERSION: i32 = 2;

/// The provisioner with the three servers registered and the tenants created, spread
/// evenly; the templates folder the migration is added to; how long creation took.
async fn setup(clusters: &[TestCluster]) -> (Deployment, tempfile::TempDir, Duration) {
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
    let d = Deployment::new(&clusters[0], &[], templates.path().to_owned(), 150).await;
    for (name, pg) in SERVERS.iter().zip(clusters).skip(1) {
        d.provisioner
            .add_server(AddServer {
                name: (*name).into(),
                url: SecretString::from(pg.url("postgres")),
                capacity: Some(5000),
                max_connections: Some(150),
            })
            .await
            .unwrap();
    }
    eprintln!("creating {TENANTS} tenants, {PER_SERVER} on each server…");
    let started = Instant::now();
    d.provisioner
        .create_many(
            (0..TENANTS)
                .map(|i| CreateTenant {
                    slug: format!("t{i:04}"),
                    server: Some(SERVERS[i % SERVERS.len()].into()),
                    ..Default::default()
                })
                .collect(),
            CREATORS,
        )
        .await
        .unwrap();
    let created = started.elapsed();
    eprintln!("created in {:.0} s", created.as_secs_f64());
    (d, templates, created)
}

/// One server while a phase ran: the most sessions it had at once, and the first and
/// last sample (since the phase began) that saw any.
#[derive(Debug, Clone, Copy, Default)]
struct Busy {
    peak: i64,
    first: Option<Duration>,
    last: Option<Duration>,
}

#[derive(Debug, Default)]
struct Sampled {
    servers: Vec<Busy>,
    samples: usize,
    /// Samples in which every server had sessions.
    all_busy: usize,
}

impl Sampled {
    /// When every server had sessions: from the last first sighting to the first last one.
    fn overlap(&self) -> Option<(Duration, Duration)> {
        let from = self.servers.iter().map(|b| b.first).max()??;
        let to = self.servers.iter().map(|b| b.last).min()??;
        (from <= to).then_some((from, to))
    }
}

/// Samples each server's sessions named `application`, one server after another with a
/// 10 ms pause between rounds, until stopped.
struct Watch {
    since: Instant,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Sampled>,
}

impl Watch {
    async fn start(clusters: &[TestCluster], application: &'static str) -> Self {
        let mut clients = Vec::new();
        for pg in clusters {
            clients.push(pg.connect("postgres").await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let since = Instant::now();
        let task = tokio::spawn(async move {
            let mut seen = Sampled {
                servers: vec![Busy::default(); clients.len()],
                ..Sampled::default()
            };
            while !flag.load(Ordering::Relaxed) {
                let mut busy_now = 0;
                for (client, busy) in clients.iter().zip(&mut seen.servers) {
                    let n: i64 = client
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                            &[&application],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    if n > 0 {
                        let at = since.elapsed();
                        busy.first.get_or_insert(at);
                        busy.last = Some(at);
                        busy_now += 1;
                    }
                    busy.peak = busy.peak.max(n);
                }
                seen.samples += 1;
                if busy_now == clients.len() {
                    seen.all_busy += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        });
        Self { since, stop, task }
    }

    async fn finish(self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Each tenant's database and the index of its server's cluster, by slug.
async fn databases(provisioner: &Provisioner) -> Vec<(String, String, usize)> {
    let mut all: Vec<(String, String, usize)> = provisioner
        .list_tenants(None)
        .await
        .unwrap()
        .into_iter()
        .map(|t| {
            let server = t.server.as_deref().unwrap_or_default();
            let i = SERVERS.iter().position(|s| *s == server).unwrap();
            (t.slug, t.database, i)
        })
        .collect();
    all.sort();
    assert_eq!(all.len(), TENANTS);
    for i in 0..SERVERS.len() {
        assert_eq!(all.iter().filter(|t| t.2 == i).count(), PER_SERVER);
    }
    all
}

/// Every tenant at [`NEW_VERSION`] in the catalog, and in its database: the version in
/// its `refinery_schema_history`, the runner's column and the loop's. Panics naming
/// those that are not.
async fn check_every_tenant(
    provisioner: &Provisioner,
    clusters: &[TestCluster],
    tenants: &[(String, String, usize)],
) {
    let behind: Vec<String> = provisioner
        .list_tenants(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.schema_version != NEW_VERSION || t.state != "ready")
        .map(|t| format!("{} ({}, version {})", t.slug, t.state, t.schema_version))
        .collect();
    let wrong: Vec<String> = futures_util::stream::iter(tenants)
        .map(|(slug, db, i)| async move {
            let (client, conn) =
                match tokio_postgres::connect(&clusters[*i].url(db), tokio_postgres::NoTls).await {
                    Ok(c) => c,
                    Err(e) => return Some(format!("{slug}: {e}")),
                };
            tokio::spawn(conn);
            let found = client
                .query_one(
                    "SELECT (SELECT max(version) FROM refinery_schema_history),
                            (SELECT count(*) FROM pg_attribute WHERE attrelid = 'tasks'::regclass
                               AND attname IN ('tag', 'tag_loop') AND NOT attisdropped)",
                    &[],
                )
                .await
                .map(|r| (r.get::<_, Option<i32>>(0), r.get::<_, i64>(1)));
            match found {
                Ok((Some(NEW_VERSION), 2)) => None,
                Ok((version, columns)) => Some(format!(
                    "{slug}: history at {version:?}, {columns} of the 2 new columns"
                )),
                Err(e) => Some(format!("{slug}: {e}")),
            }
        })
        .buffer_unordered(6)
        .filter_map(|w| async move { w })
        .collect()
        .await;
    assert!(
        behind.is_empty() && wrong.is_empty(),
        "not every tenant reached version {NEW_VERSION}: {} behind in the catalog ({}), {} in their databases ({})",
        behind.len(),
        behind.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
        wrong.len(),
        wrong.iter().take(10).cloned().collect::<Vec<_>>().join("; ")
    );
}

/// Each server's span of sessions, as `name first–last s`.
fn spans(sampled: &Sampled) -> String {
    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    SERVERS
        .iter()
        .zip(&sampled.servers)
        .map(|(name, b)| format!("{name} {:.2}–{:.2} s", secs(b.first), secs(b.last)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn peaks(sampled: &Sampled) -> String {
    SERVERS
        .iter()
        .zip(&sampled.servers)
        .map(|(name, b)| format!("{name} {}", b.peak))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn run() -> Report {
    let bench_started = Instant::now();
    let clusters: Vec<TestCluster> = SERVERS.iter().map(|_| TestCluster::start()).collect();
    let (d, templates, created) = setup(&clusters).await;
    let provisioner = &d.provisioner;
    let tenants = databases(provisioner).await;

    // The loop: the same kind of change, with psql, one database after another.
    let psql = tenantry_embedded::PgBinaries::find().unwrap().tool("psql");
    let file = templates.path().join("loop.sql");
    std::fs::write(&file, "ALTER TABLE tasks ADD COLUMN tag_loop text;\n").unwrap();
    eprintln!("the psql loop…");
    let watch = Watch::start(&clusters, "psql").await;
    let started = watch.since;
    let mut loop_samples = Vec::with_capacity(TENANTS);
    for (_, db, i) in &tenants {
        let pg = &clusters[*i];
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
        assert!(status.success(), "psql failed on {db}");
        loop_samples.push(t.elapsed());
    }
    let loop_wall = started.elapsed();
    let loop_seen = watch.finish().await;

    // Tenantry: a new file in the templates folder, then what `migrate run` does, with
    // the default per-server cap on each of the three servers at once.
    std::fs::write(
        templates.path().join("tasks/V2__tag.sql"),
        "ALTER TABLE tasks ADD COLUMN tag text;\n",
    )
    .unwrap();
    let per_server = d.settings.migrate.per_server;
    let concurrency = per_server * SERVERS.len();
    eprintln!("tenantry migrate run…");
    let watch = Watch::start(&clusters, "tenantry-migrate").await;
    let started = watch.since;
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
            concurrency,
            per_server,
            ..RunOptions::default()
        },
        &|_| {},
    )
    .await
    .unwrap();
    let runner_wall = started.elapsed();
    let runner_seen = watch.finish().await;
    assert!(
        report.succeeded() && report.summary.ok == TENANTS,
        "the run did not migrate every tenant: {:?}, halted: {:?}",
        report.summary,
        report.halted
    );
    eprintln!("checking every tenant, in the catalog and in its database…");
    let checking = Instant::now();
    check_every_tenant(provisioner, &clusters, &tenants).await;
    let checked = checking.elapsed();

    let ms = |t: &runner::TenantReport| Duration::from_millis(t.duration_ms);
    let runner_samples: Vec<Duration> = report.tenants.iter().map(ms).collect();
    let psql_loop = Summary::new(
        "psql -f, one tenant after another",
        &loop_samples,
        loop_wall,
    );
    let tenantry = Summary::new(
        format!("tenantry migrate run, {per_server} per server"),
        &runner_samples,
        runner_wall,
    );
    // Each server's share: its tenants over the span it had runner sessions.
    let mut scenarios = vec![psql_loop.clone(), tenantry.clone()];
    let mut server_rates = Vec::new();
    for (name, busy) in SERVERS.iter().zip(&runner_seen.servers) {
        let samples: Vec<Duration> = report
            .tenants
            .iter()
            .filter(|t| t.server == *name)
            .map(ms)
            .collect();
        let span = busy.last.unwrap_or_default() - busy.first.unwrap_or_default();
        let s = Summary::new(format!("  of which on server {name}"), &samples, span);
        server_rates.push(s.per_second);
        scenarios.push(s);
    }
    assert!(
        runner_seen.servers.iter().all(|b| b.peak > 0),
        "a server never had runner sessions: {}",
        peaks(&runner_seen)
    );
    let overlap = runner_seen.overlap().map_or("never".into(), |(a, b)| {
        format!(
            "{:.2}–{:.2} s ({:.0}% of the run)",
            a.as_secs_f64(),
            b.as_secs_f64(),
            (b - a).as_secs_f64() / runner_wall.as_secs_f64() * 100.0
        )
    });
    let speedup = tenantry.per_second / psql_loop.per_second;
    let total = bench_started.elapsed();
    Report {
        name: "fleet".into(),
        notes: vec![
            format!(
                "{TENANTS} tenant databases, {PER_SERVER} on each of {} throwaway clusters on this machine (2 cores, shared), created in {:.0} s ({CREATORS} creators); the migration adds a nullable column (metadata only)",
                SERVERS.len(),
                created.as_secs_f64()
            ),
            format!(
                "tenantry: {:.1} s for the fleet, {:.1} tenants/s, of which {:.2} s building the new template database on the three servers; concurrency {concurrency}, {per_server} per server (migrate.per_server)",
                runner_wall.as_secs_f64(),
                tenantry.per_second,
                templates_ready.as_secs_f64()
            ),
            format!(
                "tenantry: peak runner connections per server (an admin and a tenant session per tenant): {}",
                peaks(&runner_seen)
            ),
            format!(
                "tenantry: runner sessions seen (since the run began) on {}; all three at once {overlap}, in {} of {} samples; per server {} tenants/s",
                spans(&runner_seen),
                runner_seen.all_busy,
                runner_seen.samples,
                spread(&mut server_rates)
            ),
            format!(
                "psql loop: {:.1} s, {:.1} tenants/s; peak psql connections per server: {}",
                loop_wall.as_secs_f64(),
                psql_loop.per_second,
                peaks(&loop_seen)
            ),
            format!(
                "checked: every tenant at version {NEW_VERSION} in the catalog and in its refinery_schema_history, with both columns ({:.1} s)",
                checked.as_secs_f64()
            ),
            format!(
                "the whole bench: {:.0} s (clusters, creation, loop, run, checks)",
                total.as_secs_f64()
            ),
            "per tenant: a psql process from start to exit; tenantry's time from a tenant's start to its result (lock, connect, refinery, catalog)".into(),
        ],
        scenarios,
        ratios: vec![Ratio {
            name: "tenantry / psql loop (tenants per second)".into(),
            value: speedup,
            meaning: "goal ≥ 3".into(),
            ..Default::default()
        }],
    }
}

fn main() {
    tenantry_bench::main(run());
}

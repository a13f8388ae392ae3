//! Provisioning: tenants per second and latency with 1 and 4 concurrent creators, a
//! clone from the template against create-then-migrate, WAL_LOG against FILE_COPY, and
//! purge — all in one run, on one durable cluster (fsync on) that the run starts itself.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tenantry_bench::{Ratio, Report, Summary};
use tenantry_catalog::{Catalog, Sealer};
use tenantry_config::CreateStrategy;
use tenantry_migrate::Template;
use tenantry_provision::{AddServer, CreateTenant, ProvisionOptions, Provisioner};
use tenantry_testkit::TestCluster;

const SEQUENTIAL: usize = 40;
const CONCURRENT: usize = 4;
const PER_CREATOR: usize = 20;
const CLONES: usize = 20;

fn templates_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tenant-templates")
}

fn options(strategy: CreateStrategy) -> ProvisionOptions {
    ProvisionOptions {
        templates_dir: templates_dir(),
        default_template: "tasks".into(),
        retention: Duration::from_secs(3600),
        statement_timeout_ms: 30_000,
        idle_in_transaction_timeout_ms: 60_000,
        create_strategy: strategy,
        default_capacity: 100_000,
    }
}

async fn create_many(p: &Provisioner, prefix: &str, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        p.create_tenant(CreateTenant {
            slug: format!("{prefix}-{i}"),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create {prefix}-{i}: {e}"));
        samples.push(start.elapsed());
    }
    samples
}

async fn timed<F: std::future::Future<Output = ()>>(
    n: usize,
    mut f: impl FnMut(usize) -> F,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        f(i).await;
        samples.push(start.elapsed());
    }
    samples
}

/// Every scenario on one cluster; `label` goes into each scenario's name.
async fn run_on(pg: &TestCluster, label: &str) -> (Vec<Summary>, Vec<Ratio>, String) {
    pg.create_database("catalog").await;
    let catalog_url = SecretString::from(pg.url("catalog"));
    tenantry_catalog::migrate(&catalog_url).await.unwrap();
    let catalog = Catalog::new(&catalog_url, 16, Duration::from_secs(5)).unwrap();
    let sealer = Sealer::new(1, &[7; 32]);
    let wal = Provisioner::new(
        catalog.clone(),
        sealer.clone(),
        options(CreateStrategy::WalLog),
    )
    .unwrap();
    let file = Provisioner::new(catalog, sealer, options(CreateStrategy::FileCopy)).unwrap();
    wal.add_server(AddServer {
        name: "bench".into(),
        url: SecretString::from(pg.url("postgres")),
        capacity: None,
        max_connections: None,
    })
    .await
    .unwrap();
    // The first create builds the template database: not part of any figure.
    create_many(&wal, "warmup", 1).await;

    let mut scenarios = Vec::new();

    // 1 creator.
    let start = Instant::now();
    let seq = create_many(&wal, "seq", SEQUENTIAL).await;
    scenarios.push(Summary::new(
        format!("{} [{label}]", "create, 1 creator (WAL_LOG)"),
        &seq,
        start.elapsed(),
    ));

    // Where a create spends its time, from the ledger's own timestamps.
    let steps = pg
        .connect("catalog")
        .await
        .query(
            "SELECT step, avg(extract(epoch FROM finished_at - started_at) * 1000)::float8
             FROM operations o JOIN tenants t ON t.id = o.tenant_id
             WHERE o.kind = 'create' AND t.slug LIKE 'seq-%' GROUP BY step ORDER BY min(o.id)",
            &[],
        )
        .await
        .unwrap();
    let breakdown: Vec<String> = steps
        .iter()
        .map(|r| format!("{} {:.1}", r.get::<_, String>(0), r.get::<_, f64>(1)))
        .collect();
    let step_note = format!(
        "mean ms per create step, 1 creator: {}",
        breakdown.join(", ")
    );

    // 4 creators at once.
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|c| {
            let p = wal.clone();
            tokio::spawn(async move { create_many(&p, &format!("par{c}"), PER_CREATOR).await })
        })
        .collect();
    let mut par = Vec::new();
    for t in tasks {
        par.extend(t.await.unwrap());
    }
    scenarios.push(Summary::new(
        format!("{} [{label}]", "create, 4 creators (WAL_LOG)"),
        &par,
        start.elapsed(),
    ));

    // The same, cloning with FILE_COPY.
    let start = Instant::now();
    let seq_file = create_many(&file, "fseq", SEQUENTIAL / 2).await;
    scenarios.push(Summary::new(
        format!("{} [{label}]", "create, 1 creator (FILE_COPY)"),
        &seq_file,
        start.elapsed(),
    ));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|c| {
            let p = file.clone();
            tokio::spawn(async move { create_many(&p, &format!("fpar{c}"), PER_CREATOR / 2).await })
        })
        .collect();
    let mut par_file = Vec::new();
    for t in tasks {
        par_file.extend(t.await.unwrap());
    }
    scenarios.push(Summary::new(
        format!("{} [{label}]", "create, 4 creators (FILE_COPY)"),
        &par_file,
        start.elapsed(),
    ));

    // The database step alone: a clone of the template against a new database that
    // replays the template's migrations.
    let admin = pg.connect("postgres").await;
    let template_db: String = pg
        .connect("catalog")
        .await
        .query_one("SELECT database_name FROM template_databases", &[])
        .await
        .unwrap()
        .get(0);
    let template = Template::load(&templates_dir(), "tasks").unwrap();
    let clone_wal = {
        let start = Instant::now();
        let s = timed(CLONES, |i| {
            let (admin, tpl) = (&admin, &template_db);
            async move {
                admin
                    .batch_execute(&format!(
                        "CREATE DATABASE clone_w{i} TEMPLATE {tpl} STRATEGY WAL_LOG"
                    ))
                    .await
                    .unwrap();
            }
        })
        .await;
        Summary::new(
            format!("{} [{label}]", "database: clone template (WAL_LOG)"),
            &s,
            start.elapsed(),
        )
    };
    let clone_file = {
        let start = Instant::now();
        let s = timed(CLONES, |i| {
            let (admin, tpl) = (&admin, &template_db);
            async move {
                admin
                    .batch_execute(&format!(
                        "CREATE DATABASE clone_f{i} TEMPLATE {tpl} STRATEGY FILE_COPY"
                    ))
                    .await
                    .unwrap();
            }
        })
        .await;
        Summary::new(
            format!("{} [{label}]", "database: clone template (FILE_COPY)"),
            &s,
            start.elapsed(),
        )
    };
    let replay = {
        let start = Instant::now();
        let s = timed(CLONES, |i| {
            let (admin, pg, template) = (&admin, &pg, &template);
            async move {
                admin
                    .batch_execute(&format!("CREATE DATABASE replay_{i}"))
                    .await
                    .unwrap();
                let mut client = pg.connect(&format!("replay_{i}")).await;
                template.apply(&mut client).await.unwrap();
            }
        })
        .await;
        Summary::new(
            format!("{} [{label}]", "database: create, then replay migrations"),
            &s,
            start.elapsed(),
        )
    };

    // The same comparison for a larger schema (30 migrations: a table and two indexes
    // each), where replaying costs more and a clone stays as it was.
    let wide_dir = std::env::temp_dir().join(format!(
        "tenantry-bench-wide-{}-{label}",
        std::process::id()
    ));
    let wide = {
        let dir = wide_dir.join("wide");
        std::fs::create_dir_all(&dir).unwrap();
        for v in 1..=30 {
            std::fs::write(
                dir.join(format!("V{v}__table_{v}.sql")),
                format!(
                    "CREATE TABLE t{v} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), owner text NOT NULL,
                        body jsonb, state text NOT NULL DEFAULT 'new', created_at timestamptz NOT NULL DEFAULT now());
                     CREATE INDEX t{v}_owner ON t{v} (owner, created_at DESC);
                     CREATE INDEX t{v}_state ON t{v} (state) WHERE state <> 'done';"
                ),
            )
            .unwrap();
        }
        Template::load(&wide_dir, "wide").unwrap()
    };
    admin
        .batch_execute("CREATE DATABASE wide_template")
        .await
        .unwrap();
    wide.apply(&mut pg.connect("wide_template").await)
        .await
        .unwrap();
    let wide_clone = {
        let start = Instant::now();
        let s = timed(CLONES, |i| {
            let admin = &admin;
            async move {
                admin
                    .batch_execute(&format!(
                        "CREATE DATABASE wide_c{i} TEMPLATE wide_template STRATEGY WAL_LOG"
                    ))
                    .await
                    .unwrap();
            }
        })
        .await;
        Summary::new(
            format!("{} [{label}]", "30-migration schema: clone (WAL_LOG)"),
            &s,
            start.elapsed(),
        )
    };
    let wide_replay = {
        let start = Instant::now();
        let s = timed(CLONES, |i| {
            let (admin, pg, wide) = (&admin, &pg, &wide);
            async move {
                admin
                    .batch_execute(&format!("CREATE DATABASE wide_r{i}"))
                    .await
                    .unwrap();
                let mut client = pg.connect(&format!("wide_r{i}")).await;
                wide.apply(&mut client).await.unwrap();
            }
        })
        .await;
        Summary::new(
            format!("{} [{label}]", "30-migration schema: create, then replay"),
            &s,
            start.elapsed(),
        )
    };
    let _ = std::fs::remove_dir_all(&wide_dir);

    // Purge.
    let start = Instant::now();
    let purge = timed(SEQUENTIAL, |i| {
        let p = &wal;
        async move {
            p.delete_tenant(&format!("seq-{i}"), true).await.unwrap();
        }
    })
    .await;
    let purge = Summary::new(
        format!("{} [{label}]", "delete --purge, 1 at a time"),
        &purge,
        start.elapsed(),
    );

    let ratios = vec![
        Ratio {
            name: format!("replay p50 / clone p50, tasks [{label}]"),
            value: replay.p50_ms / clone_wal.p50_ms,
            meaning: "how much faster a clone is than replaying migrations".into(),
            ..Default::default()
        },
        Ratio {
            name: format!("replay p50 / clone p50, 30 migr. [{label}]"),
            value: wide_replay.p50_ms / wide_clone.p50_ms,
            meaning: "the same for a larger schema".into(),
            ..Default::default()
        },
        Ratio {
            name: format!("FILE_COPY p50 / WAL_LOG p50 [{label}]"),
            value: clone_file.p50_ms / clone_wal.p50_ms,
            meaning: "above 1: WAL_LOG clones faster".into(),
            ..Default::default()
        },
        Ratio {
            name: format!("4 creators / 1 creator, per s [{label}]"),
            value: scenarios[1].per_second / scenarios[0].per_second,
            meaning: "how well creation scales with concurrency".into(),
            ..Default::default()
        },
    ];
    scenarios.extend([
        clone_wal,
        clone_file,
        replay,
        wide_clone,
        wide_replay,
        purge,
    ]);
    (scenarios, ratios, format!("[{label}] {step_note}"))
}

async fn run() -> Report {
    let mut notes = vec![
        "each scenario runs on a cluster this run starts: [throwaway] as the tests use (fsync off), \
         [durable] with fsync and full-page writes on, as in production"
            .to_owned(),
        "tenants use the template `tasks`; creates and purges go through the provisioner library \
         (the admin API's path), not the CLI"
            .to_owned(),
    ];
    let mut scenarios = Vec::new();
    let mut ratios = Vec::new();
    for (label, pg) in [
        ("throwaway", TestCluster::start()),
        ("durable", TestCluster::start_durable()),
    ] {
        let (s, r, note) = run_on(&pg, label).await;
        scenarios.extend(s);
        ratios.extend(r);
        notes.push(note);
    }
    Report {
        name: "provision".into(),
        notes,
        scenarios,
        ratios,
    }
}

fn main() {
    tenantry_bench::main(run());
}

//! The catalog fails over on PostgreSQL's own streaming replication: routers and the CLI
//! are given both hosts (`target_session_attrs=read-write`, as libpq takes them), the
//! primary crashes under load, and the standby is promoted.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::routers::{bearer, budget};
use support::{admin_token, token, Deployment};
use tenantry_testkit::TestCluster;

/// Asks `ask` until it says yes, up to `within`; how long it took.
async fn until<F, Fut>(what: &str, within: Duration, mut ask: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !ask().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn status(http: &reqwest::Client, url: &str, auth: &str) -> Option<StatusCode> {
    http.get(url)
        .header("authorization", auth)
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

/// The catalog on a primary with a synchronous streaming standby (a commit is
/// acknowledged once the standby has it: a failover loses none), named together in the
/// catalog URL; tenants on a server of their own (`d.pg`).
async fn catalog_with_standby() -> (TestCluster, TestCluster, Deployment) {
    let primary = TestCluster::start();
    primary.create_database("catalog").await;
    let standby = primary.standby();
    // The test kit's clusters turn synchronous_commit off for speed: the catalog's
    // sessions turn it back on, and wait for the standby.
    let admin = primary.connect("postgres").await;
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
        "SELECT pg_reload_conf()",
        "ALTER DATABASE catalog SET synchronous_commit = 'on'",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let password = secrecy::ExposeSecret::expose_secret(primary.password()).to_owned();
    let catalog_url = format!(
        "postgres://{}:{password}@127.0.0.1:{},127.0.0.1:{}/catalog?target_session_attrs=read-write",
        primary.superuser(),
        primary.port(),
        standby.port()
    );
    let d = Deployment::with(TestCluster::start(), catalog_url).await;
    (primary, standby, d)
}

#[tokio::test]
async fn routers_and_the_cli_ride_out_a_catalog_failover() {
    let (mut primary, standby, d) = catalog_with_standby().await;
    for slug in ["warm-0", "warm-1", "warm-2", "cold-0", "later"] {
        d.json(&["tenant", "create", slug, "--plan", "enterprise"], 0);
    }
    let vars = [("TENANTRY__ROUTER__HEARTBEAT_S", "1")];
    let routers = [d.serve(&vars).await, d.serve(&vars).await];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let warm: Vec<String> = (0..3)
        .map(|i| bearer(&token(&format!("warm-{i}"), None)))
        .collect();
    for r in &routers {
        for t in &warm {
            let url = format!("{}/v1/tasks?limit=1", r.base);
            assert_eq!(status(&http, &url, t).await, Some(StatusCode::OK));
        }
    }

    // Steady load on the warm tenants, through both routers, all along: four requests
    // a second per tenant and router, within enterprise's rate (600 a minute, split).
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = (0..6)
        .map(|c| {
            let (http, stop, served, failures) =
                (http.clone(), stop.clone(), served.clone(), failures.clone());
            let url = format!("{}/v1/tasks?limit=1", routers[c % 2].base);
            let auth = warm[c % 3].clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match http.get(&url).header("authorization", &auth).send().await {
                        Ok(r) if r.status() == StatusCode::OK => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => {
                            let status = r.status();
                            let body = r.text().await.unwrap_or_default();
                            failures.lock().unwrap().push((Some(status), body));
                        }
                        Err(e) => failures.lock().unwrap().push((None, e.to_string())),
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        })
        .collect();
    // Each router's budget on the tenants' server, sampled all along: both keep half of
    // it. (The outage outlasts three heartbeats: whichever router reaches the new
    // primary first must not take the other, silent as long, for dead.)
    let mut shares = Vec::new();
    for r in &routers {
        shares.push(budget(&r.base).await.expect("a budget"));
    }
    assert_eq!(shares[0], shares[1]);
    let budgets = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stop, budgets) = (stop.clone(), budgets.clone());
        let bases: Vec<String> = routers.iter().map(|r| r.base.clone()).collect();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for base in &bases {
                    if let Some(b) = budget(base).await {
                        budgets.lock().unwrap().push(b);
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The primary crashes; the standby is promoted 3.5 s later.
    primary.crash_server();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    standby.promote().await;
    let promoted = Instant::now();

    // A tenant no router has seen, the admin API and the CLI work again.
    let cold = bearer(&token("cold-0", None));
    let mut cold_after = Duration::ZERO;
    for r in &routers {
        let url = format!("{}/v1/tasks?limit=1", r.base);
        until(
            "an uncached tenant is served",
            Duration::from_secs(30),
            || async { status(&http, &url, &cold).await == Some(StatusCode::OK) },
        )
        .await;
        cold_after = promoted.elapsed();
    }
    let admin = bearer(&admin_token());
    let admin_url = format!("{}/admin/v1/tenants/later", routers[0].base);
    until("the admin API answers", Duration::from_secs(30), || async {
        status(&http, &admin_url, &admin).await == Some(StatusCode::OK)
    })
    .await;
    let admin_after = promoted.elapsed();
    until("the CLI answers", Duration::from_secs(30), || async {
        d.run(&["tenant", "show", "later"]).status.success()
    })
    .await;
    let cli_after = promoted.elapsed();

    // A suspend after the failover reaches every router through LISTEN on the new primary.
    d.json(&["tenant", "suspend", "warm-2"], 0);
    let suspended = Instant::now();
    for r in &routers {
        let url = format!("{}/v1/tasks?limit=1", r.base);
        until(
            "the suspend reaches the router",
            Duration::from_secs(30),
            || async { status(&http, &url, &warm[2]).await == Some(StatusCode::LOCKED) },
        )
        .await;
    }
    let suspend_after = suspended.elapsed();
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    sampler.await.unwrap();
    let budgets = budgets.lock().unwrap();
    assert!(
        budgets.iter().all(|&b| b == shares[0]),
        "a router's budget left its half ({}) during the failover: {budgets:?}",
        shares[0]
    );
    eprintln!(
        "after the promotion: an uncached tenant served by both routers {cold_after:?}, the admin API {admin_after:?}, the CLI {cli_after:?}; a suspend reached both routers in {suspend_after:?}; {} requests to warm tenants served",
        served.load(Ordering::SeqCst)
    );
    // Warm tenants were served throughout, with no error; only warm-2's own requests
    // after its suspend may be 423.
    let failures = failures.lock().unwrap();
    assert!(
        failures.iter().all(|(s, _)| *s == Some(StatusCode::LOCKED)),
        "warm tenants saw errors during the failover: {failures:?}"
    );
    assert!(served.load(Ordering::SeqCst) > 30);
}

/// A migration run cut off by the catalog's failover is finished by running it again:
/// every tenant ends at the new version once, whatever the lost primary had recorded.
#[tokio::test]
async fn a_migration_run_cut_off_by_a_failover_is_finished_by_the_next() {
    let (mut primary, standby, d) = catalog_with_standby().await;
    let tenants = 24;
    d.provisioner()
        .await
        .create_many(
            (0..tenants)
                .map(|i| tenantry_provision::CreateTenant {
                    slug: format!("m{i:02}"),
                    ..Default::default()
                })
                .collect(),
            4,
        )
        .await
        .unwrap();
    let templates = d.templates_with(&[(
        "V2__slow_tags.sql",
        "SELECT pg_sleep(0.1); ALTER TABLE tasks ADD COLUMN tags text[];",
    )]);
    let run = support::Running::spawn(d.cmd(&[
        "--templates",
        templates.to_str().unwrap(),
        "migrate",
        "run",
        "--concurrency",
        "2",
    ]));
    let catalog = primary.connect("catalog").await;
    until(
        "the run makes progress",
        Duration::from_secs(60),
        || async {
            let done: i64 = catalog
                .query_one("SELECT count(*) FROM tenants WHERE schema_version = 2", &[])
                .await
                .unwrap()
                .get(0);
            done >= 4
        },
    )
    .await;
    drop(catalog);
    primary.crash_server();
    let (status, _, _) = run.wait(Duration::from_secs(60));
    assert!(!status.success(), "a run that lost its catalog says so");
    standby.promote().await;

    let rerun = d.json(
        &["--templates", templates.to_str().unwrap(), "migrate", "run"],
        0,
    );
    assert_eq!(rerun["summary"]["failed"], 0, "{}", rerun["summary"]);
    let catalog = standby.connect("catalog").await;
    let rows = catalog
        .query(
            "SELECT slug, schema_version, database_name FROM tenants ORDER BY slug",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), tenants);
    for row in rows {
        let (slug, version, database): (String, i32, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(version, 2, "{slug}");
        let history: Vec<i32> =
            d.pg.connect(&database)
                .await
                .query(
                    "SELECT version FROM refinery_schema_history ORDER BY version",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
        assert_eq!(history, [1, 2], "{slug}: applied once");
    }
}

/// A catalog outage longer than the route cache's TTL costs the tenants a router knows
/// nothing (their routes are served as cached while the catalog cannot be read); a
/// tenant it does not know gets 503; once the catalog is back, every cached route is
/// read again, so a change made after the outage reaches the router.
#[tokio::test]
async fn cached_tenants_outlive_their_ttl_while_the_catalog_is_down() {
    let mut catalog = TestCluster::start();
    catalog.create_database("catalog").await;
    let password = secrecy::ExposeSecret::expose_secret(catalog.password()).to_owned();
    let catalog_url = format!(
        "postgres://{}:{password}@127.0.0.1:{}/catalog",
        catalog.superuser(),
        catalog.port()
    );
    let d = Deployment::with(TestCluster::start(), catalog_url).await;
    for slug in ["warm", "cold"] {
        d.json(&["tenant", "create", slug, "--plan", "enterprise"], 0);
    }
    let router = d
        .serve(&[
            ("TENANTRY__ROUTER__CACHE_TTL_S", "1"),
            ("TENANTRY__ROUTER__HEARTBEAT_S", "1"),
        ])
        .await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/tasks?limit=1", router.base);
    let (warm, cold) = (bearer(&token("warm", None)), bearer(&token("cold", None)));
    assert_eq!(status(&http, &url, &warm).await, Some(StatusCode::OK));

    catalog.stop_server();
    // Three TTLs later, the warm tenant is still served, again and again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..5 {
        let answer = http
            .get(&url)
            .header("authorization", &warm)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        assert_eq!(status, StatusCode::OK, "{}", answer.text().await.unwrap());
    }
    let answer = http
        .get(&url)
        .header("authorization", &cold)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tenant_unavailable", "{body}");

    catalog.restart_server();
    until(
        "the cold tenant is served",
        Duration::from_secs(30),
        || async { status(&http, &url, &cold).await == Some(StatusCode::OK) },
    )
    .await;
    d.json(&["tenant", "suspend", "warm"], 0);
    until(
        "the suspend reaches the router",
        Duration::from_secs(10),
        || async { status(&http, &url, &warm).await == Some(StatusCode::LOCKED) },
    )
    .await;
}

/// Two moves under way when the catalog's primary crashes: one process rides the
/// failover out and finishes on the promoted standby; the other is killed while the
/// catalog is down, and `reconcile` undoes its move, which then runs again to the end.
/// Both tenants end on their targets with every row, and no replication slot,
/// publication or subscription is left anywhere.
#[tokio::test]
async fn moves_cut_off_by_a_failover_are_finished_by_themselves_or_by_reconcile_and_a_rerun() {
    use support::moves::{contents, fill, leftovers, server_of, tenant_id};
    let (mut primary, standby, d) = catalog_with_standby().await;
    let s2 = d.second_server();
    let s3 = TestCluster::start();
    assert!(d
        .run(&["server", "add", "s3", "--url", &s3.url("postgres")])
        .status
        .success());
    let mut before = Vec::new();
    for slug in ["rider", "cut"] {
        assert!(d
            .run(&["tenant", "create", slug, "--plan", "pro", "--server", "s1"])
            .status
            .success());
        fill(&d, slug, 200).await;
        let (_, db) = tenant_id(&d, slug).await;
        before.push(contents(&d.pg, &db).await);
    }

    // Both moves stall before their copy (their subscriptions made); the catalog's
    // primary crashes meanwhile, `cut`'s process is killed while the catalog is down, and
    // the standby is promoted; then `rider` goes on.
    let release = d.home.path().join("release-moves");
    let spawn = |slug: &str, to: &str| {
        let mut cmd = d.cmd(&["tenant", "move", slug, "--to", to]);
        cmd.env("TENANTRY_FAULT", "move.copy.before=hold")
            .env("TENANTRY_FAULT_RELEASE", &release);
        support::Running::spawn(cmd)
    };
    let rider = spawn("rider", "s2");
    let cut = spawn("cut", "s3");
    // Held: the copy step's ledger row is written just before the hold (the move's
    // phase, a query earlier).
    until(
        "both moves reach their copy",
        Duration::from_secs(30),
        || async {
            d.catalog()
                .await
                .query_one(
                    "SELECT count(*) FROM operations
                     WHERE kind = 'move' AND step = 'copy' AND status = 'started'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 2
        },
    )
    .await;
    primary.crash_server();
    cut.signal("KILL");
    let _ = cut.wait(Duration::from_secs(30));
    standby.promote().await;
    std::fs::write(&release, "").unwrap();
    let (status, stdout, stderr) = rider.wait(Duration::from_secs(120));
    assert!(status.success(), "{stdout} {stderr}");

    let report = d.json(&["reconcile"], 0);
    assert_eq!(report["moves"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(server_of(&d, "cut").await, "s1", "{report}");
    let moved = d.json(&["tenant", "move", "cut", "--to", "s3"], 0);
    assert_eq!(moved["status"], "done", "{moved}");

    for ((slug, target), before) in [("rider", &s2), ("cut", &s3)].into_iter().zip(&before) {
        assert_eq!(
            server_of(&d, slug).await,
            if slug == "rider" { "s2" } else { "s3" }
        );
        let (_, db) = tenant_id(&d, slug).await;
        let after = contents(target, &db).await;
        assert_eq!(
            (after.0, after.1, &after.2),
            (before.0, before.1, &before.2),
            "{slug}"
        );
    }
    let open: i64 = d
        .catalog()
        .await
        .query_one(
            "SELECT count(*) FROM moves WHERE status IN ('running', 'failed')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0, "a move left open");
    for (name, cluster) in [("s1", &d.pg), ("s2", &s2), ("s3", &s3)] {
        let (replication, _, _) = leftovers(cluster).await;
        assert!(replication.is_empty(), "{name}: {replication:?}");
    }
}

/// A catalog that takes connections and never answers (a hung primary, a partition that
/// drops packets): a route past its TTL is re-read for at most 2 s, then served as
/// cached, and the next requests take it at once. The client's 10 s timeout is the
/// deadline: without the bound on the re-read, the request waits for the catalog forever.
#[tokio::test]
async fn cached_tenants_are_served_when_the_catalog_stops_answering() {
    use tenantry_testkit::proxy::{Fault, FaultProxy};
    let catalog = TestCluster::start();
    catalog.create_database("catalog").await;
    let proxy = FaultProxy::start(("127.0.0.1", catalog.port())).unwrap();
    let password = secrecy::ExposeSecret::expose_secret(catalog.password()).to_owned();
    let catalog_url = format!(
        "postgres://{}:{password}@127.0.0.1:{}/catalog",
        catalog.superuser(),
        proxy.port()
    );
    let d = Deployment::with(TestCluster::start(), catalog_url).await;
    d.json(&["tenant", "create", "warm", "--plan", "enterprise"], 0);
    let router = d.serve(&[("TENANTRY__ROUTER__CACHE_TTL_S", "1")]).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("{}/v1/tasks?limit=1", router.base);
    let warm = bearer(&token("warm", None));
    assert_eq!(status(&http, &url, &warm).await, Some(StatusCode::OK));

    proxy.set(Fault::Blackhole);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut took = Vec::new();
    for _ in 0..5 {
        let asked = Instant::now();
        assert_eq!(status(&http, &url, &warm).await, Some(StatusCode::OK));
        took.push(asked.elapsed());
    }
    eprintln!("requests while the catalog does not answer took {took:?}");
    proxy.set(Fault::PassThrough);
}

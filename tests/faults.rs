//! A faulty tenant server over real HTTP: server `s2` is registered in the catalog at a
//! fault-injecting proxy's port, `s1` directly. Whatever the proxy does to `s2`'s
//! traffic, only `s2`'s tenants see errors (503 `tenant_unavailable`, within the
//! deadlines, never a hang), `s1`'s tenants are served throughout, and once the fault is
//! lifted `s2` is served again with its whole budget.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::routers::bearer;
use support::{token, Deployment};
use tenantry_testkit::proxy::{Fault, FaultProxy};

/// The router's deadlines here: a permit within 1 s, a connection within 1.5 s (a
/// SCRAM exchange alone can take hundreds of milliseconds in a debug build on a loaded
/// 2-core machine), an answer within the statement timeout (2.5 s) plus the connect time.
const VARS: [(&str, &str); 6] = [
    ("TENANTRY__ROUTER__POOL_WAIT_MS", "1000"),
    ("TENANTRY__ROUTER__POOL_CONNECT_MS", "1500"),
    ("TENANTRY__ROUTER__PRIORITY_MAX_DEFER_MS", "100"),
    ("TENANTRY__ROUTER__IDLE_TIMEOUT_S", "1"),
    ("TENANTRY__ROUTER__SQL_STATEMENT_TIMEOUT_MS", "2500"),
    ("TENANTRY__PROVISION__STATEMENT_TIMEOUT_MS", "2500"),
];
/// The longest answer that is not a hang: the three deadlines above with a generous
/// margin for a loaded machine.
const NO_HANG: Duration = Duration::from_secs(12);
const SHAKY: usize = 4;

/// One `GET /v1/tasks`: its status, error code and time; panics if no answer comes
/// before [`NO_HANG`].
async fn tasks(http: &reqwest::Client, base: &str, auth: &str) -> (StatusCode, String, Duration) {
    let started = Instant::now();
    let resp = http
        .get(format!("{base}/v1/tasks"))
        .header("authorization", auth)
        .timeout(NO_HANG)
        .send()
        .await
        .unwrap_or_else(|e| panic!("no answer within {NO_HANG:?}: {e}"));
    let status = resp.status();
    let retry_after = resp.headers().contains_key("retry-after");
    let body: Value = resp.json().await.unwrap_or_default();
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        assert!(retry_after, "a 503 says when to come back");
    }
    (status, code, started.elapsed())
}

/// A kind of `s2`'s books from the router's `/metrics`.
async fn books(base: &str, server: i64, kind: &str) -> i64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = format!("tenantry_server_connections{{kind=\"{kind}\",server=\"{server}\"}}");
    text.lines()
        .find(|l| l.starts_with(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {label} in\n{text}"))
}

/// A second server, `s2`, registered in the catalog at a fault-injecting proxy's port
/// with `max_connections` connections; its id.
async fn server_behind_proxy(
    d: &Deployment,
    max_connections: usize,
) -> (tenantry_testkit::TestCluster, FaultProxy, i64) {
    let second = tenantry_testkit::TestCluster::start();
    let proxy = FaultProxy::start(("127.0.0.1", second.port())).unwrap();
    let via_proxy = second.url("postgres").replace(
        &format!(":{}/", second.port()),
        &format!(":{}/", proxy.port()),
    );
    assert!(d
        .run(&["server", "add", "s2", "--url", &via_proxy])
        .status
        .success());
    let s2: i64 = d
        .catalog()
        .await
        .query_one(
            "UPDATE servers SET max_connections = $1 WHERE name = 's2' RETURNING id",
            &[&(max_connections as i32)],
        )
        .await
        .unwrap()
        .get(0);
    (second, proxy, s2)
}

fn create(slug: String, server: &str) -> tenantry_provision::CreateTenant {
    tenantry_provision::CreateTenant {
        slug,
        plan: Some("enterprise".into()),
        server: Some(server.into()),
        ..Default::default()
    }
}

fn p99(mut l: Vec<Duration>) -> Duration {
    l.sort();
    l.get((l.len() * 99 / 100).min(l.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_server_costs_only_its_own_tenants_and_comes_back_whole() {
    let d = Deployment::new().await;
    let (_second, proxy, s2) = server_behind_proxy(&d, SHAKY).await;
    let mut wanted: Vec<_> = (0..3)
        .map(|i| create(format!("steady-{i}"), "s1"))
        .collect();
    wanted.extend((0..SHAKY).map(|i| create(format!("shaky-{i}"), "s2")));
    d.provisioner().await.create_many(wanted, 4).await.unwrap();
    let r = d.serve(&VARS).await;
    let http = reqwest::Client::new();
    let steady: Vec<String> = (0..3)
        .map(|i| bearer(&token(&format!("steady-{i}"), None)))
        .collect();
    let shaky: Vec<String> = (0..SHAKY)
        .map(|i| bearer(&token(&format!("shaky-{i}"), None)))
        .collect();
    for auth in steady.iter().chain(&shaky) {
        assert_eq!(tasks(&http, &r.base, auth).await.0, StatusCode::OK);
    }

    // Steady traffic on s1's tenants, one client each, below their plan's rate.
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = steady
        .iter()
        .cloned()
        .map(|auth| {
            let (http, base) = (http.clone(), r.base.clone());
            let (latencies, failures) = (latencies.clone(), failures.clone());
            tokio::spawn(async move {
                loop {
                    let (status, code, took) = tasks(&http, &base, &auth).await;
                    if status == StatusCode::OK {
                        latencies.lock().unwrap().push(took);
                    } else {
                        failures.lock().unwrap().push((status, code));
                    }
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            })
        })
        .collect();
    let phase = || std::mem::take(&mut *latencies.lock().unwrap());

    let lag = Duration::from_millis(150);
    let faults = [
        (Fault::Latency { up: lag, down: lag }, false),
        (Fault::Reset { after_bytes: 0 }, true),
        (Fault::Blackhole, true),
        (Fault::Refuse, false),
    ];
    let mut figures = Vec::new();
    for (fault, all_fail) in faults {
        phase();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = phase();
        // A statement is running on s2 when the fault starts.
        let in_flight = {
            let req = http
                .post(format!("{}/v1/sql", r.base))
                .header("authorization", &shaky[0])
                .json(&json!({"sql": "select pg_sleep(0.8)"}))
                .timeout(NO_HANG)
                .send();
            tokio::spawn(async move { req.await.map(|resp| resp.status()) })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.set(fault);
        let (mut answers, ends) = (Vec::new(), Instant::now() + Duration::from_secs(3));
        while Instant::now() < ends {
            let round = shaky.iter().map(|auth| tasks(&http, &r.base, auth));
            answers.extend(futures_util::future::join_all(round).await);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let during = phase();
        let in_flight = in_flight
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{fault:?}: the statement in flight hung: {e}"));
        proxy.set(Fault::PassThrough);
        let lifted = Instant::now();
        for auth in &shaky {
            while tasks(&http, &r.base, auth).await.0 != StatusCode::OK {
                assert!(
                    lifted.elapsed() < Duration::from_secs(20),
                    "{fault:?}: s2 not served again"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let back = lifted.elapsed();

        let failed = answers
            .iter()
            .filter(|(s, _, _)| *s != StatusCode::OK)
            .count();
        let slowest = answers.iter().map(|(_, _, t)| *t).max().unwrap_or_default();
        let (p_before, p_during) = (p99(before.clone()), p99(during.clone()));
        let line = format!(
            "{fault:?}: statement in flight {in_flight}; s2 {failed}/{} answers 503, slowest {slowest:?}; s1 p99 before {p_before:?} \
             ({} requests), during {p_during:?} ({}), ratio {:.2}; s2 served again {back:?} after the lift",
            answers.len(),
            before.len(),
            during.len(),
            p_during.as_secs_f64() / p_before.as_secs_f64().max(1e-6),
        );
        eprintln!("{line}");
        figures.push(line);
        for (status, code, _) in &answers {
            assert!(
                *status == StatusCode::OK
                    || (*status == StatusCode::SERVICE_UNAVAILABLE && code == "tenant_unavailable"),
                "{fault:?}: {status} {code}"
            );
        }
        if all_fail {
            assert_eq!(failed, answers.len(), "{fault:?}: {answers:?}");
            assert_eq!(in_flight, StatusCode::SERVICE_UNAVAILABLE, "{fault:?}");
        } else {
            assert_eq!(
                in_flight,
                StatusCode::OK,
                "{fault:?}: an open session goes on"
            );
        }
        assert!(!before.is_empty() && !during.is_empty(), "{fault:?}");
        let failures = failures.lock().unwrap().clone();
        assert!(failures.is_empty(), "{fault:?}: s1 failed: {failures:?}");
    }
    for l in load {
        l.abort();
    }

    // Idle, the router holds nothing on s2 and nobody waits; then its whole budget is
    // had at once: as many one-connection requests as the budget, all at the same time,
    // each holding its connection longer than the permit wait (a permit missing would
    // show as a 503).
    let budget = books(&r.base, s2, "budget").await;
    assert_eq!(
        budget, SHAKY as i64,
        "a lone router leases the whole budget"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (open, waiting, evicting, opening, to_open) = (
            books(&r.base, s2, "open").await,
            books(&r.base, s2, "waiting").await,
            books(&r.base, s2, "evicting").await,
            books(&r.base, s2, "opening").await,
            books(&r.base, s2, "waiting_to_open").await,
        );
        if (open, waiting, evicting, opening, to_open) == (0, 0, 0, 0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "s2's books never settled: open {open}, waiting {waiting}, evicting {evicting}, opening {opening}, waiting to open {to_open}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let burst = shaky.iter().map(|auth| {
        http.post(format!("{}/v1/sql", r.base))
            .header("authorization", auth)
            .json(&json!({"sql": "select pg_sleep(1.5)"}))
            .timeout(NO_HANG)
            .send()
    });
    for resp in futures_util::future::join_all(burst).await {
        let resp = resp.expect("an answer");
        assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
    }
    eprintln!("figures:\n{}", figures.join("\n"));
}

/// The sessions in `database` on `pg` that run `like`.
async fn sessions_running(pg: &tenantry_testkit::TestCluster, database: &str, like: &str) -> i64 {
    pg.connect("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND query LIKE $2 AND pid <> pg_backend_pid()",
            &[&database, &like],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_cut_off_mid_file_is_reported_never_half_recorded_and_a_rerun_finishes_it() {
    let d = Deployment::new().await;
    let (second, proxy, _) = server_behind_proxy(&d, 20).await;
    let wanted = vec![create("cut".into(), "s2"), create("calm".into(), "s1")];
    d.provisioner().await.create_many(wanted, 2).await.unwrap();
    let templates = d.home.path().join("templates");
    let tasks_dir = templates.join("tasks");
    std::fs::create_dir_all(&tasks_dir).unwrap();
    for entry in std::fs::read_dir(support::templates_dir().join("tasks")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tasks_dir.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        tasks_dir.join("V2__slow.sql"),
        "CREATE TABLE half_a (id int); SELECT pg_sleep(2); CREATE TABLE half_b (id int);",
    )
    .unwrap();
    let run = || {
        d.cmd(&[
            "--templates",
            templates.to_str().unwrap(),
            "--output",
            "json",
            "migrate",
            "run",
            "--on-error",
            "continue",
        ])
    };
    let database: String = d
        .catalog()
        .await
        .query_one("SELECT database_name FROM tenants WHERE slug = 'cut'", &[])
        .await
        .unwrap()
        .get(0);
    let state = || async {
        let catalog = d.catalog().await;
        let recorded: i32 = catalog
            .query_one("SELECT schema_version FROM tenants WHERE slug = 'cut'", &[])
            .await
            .unwrap()
            .get(0);
        let row = second
            .connect(&database)
            .await
            .query_one(
                "SELECT ARRAY(SELECT version FROM refinery_schema_history ORDER BY version),
                        ARRAY(SELECT relname::text FROM pg_class
                              WHERE relname IN ('half_a', 'half_b') ORDER BY relname)",
                &[],
            )
            .await
            .unwrap();
        let (history, tables): (Vec<i32>, Vec<String>) = (row.get(0), row.get(1));
        (recorded, history, tables)
    };

    // The run is cut off while `cut`'s file sleeps between its two statements.
    let running = support::Running::spawn(run());
    let deadline = Instant::now() + Duration::from_secs(60);
    while sessions_running(&second, &database, "%pg_sleep(2)%").await == 0 {
        assert!(Instant::now() < deadline, "the file never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set(Fault::Reset { after_bytes: 0 });
    let started = Instant::now();
    let (status, out, err) = running.wait(Duration::from_secs(60));
    eprintln!(
        "the cut-off run ended {:?} after the reset: {status}",
        started.elapsed()
    );
    proxy.set(Fault::PassThrough);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}\n{err}"));
    let of = |slug: &str| {
        report["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["slug"] == slug)
            .cloned()
            .unwrap_or_else(|| panic!("{slug} not in {report}"))
    };
    let (cut, calm) = (of("cut"), of("calm"));
    eprintln!("cut: {cut}");
    assert_eq!(calm["status"], "ok", "the other server's tenant: {calm}");
    assert_ne!(cut["status"], "ok", "{cut}");
    assert!(
        cut["error"].as_str().is_some_and(|e| !e.is_empty()),
        "reported with a reason: {cut}"
    );
    assert!(!status.success(), "a failed tenant fails the run");

    // Once the server has ended the orphaned session (its transaction rolled back), the
    // catalog, the history and the schema agree: the file did not happen.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sessions_running(&second, &database, "%pg_sleep(2)%").await > 0 {
        assert!(
            Instant::now() < deadline,
            "the orphaned session never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state().await, (1, vec![1], vec![]), "nothing half-recorded");

    // A rerun finishes it.
    let out = support::output(run());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        state().await,
        (2, vec![1, 2], vec!["half_a".into(), "half_b".into()])
    );
}

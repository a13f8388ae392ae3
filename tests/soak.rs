//! `make soak`: two routers, two servers, 300 tenants, mixed traffic with churn
//! (creates, suspends, resumes, deletes, plan changes, a migration run) for
//! `SOAK_MINUTES` (default 10). Every 10 s it records each router's RSS and open file
//! descriptors, catalog and server connections, p99 per route and errors; at the end it
//! checks that RSS after warm-up grew ≤ 10 %, that no 5xx but the documented 503 was
//! answered, that no server's budget was ever exceeded and that every acknowledged
//! write is in its tenant's database. It writes `target/soak/report.json` and
//! `target/soak/chart.svg`. Not part of `make test` (ignored there).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::chart::{Panel, Series};
use support::routers::bearer;
use support::{token, Deployment, Router};
use tenantry_testkit::TestCluster;
use uuid::Uuid;

const TENANTS: usize = 300;
const CLIENTS: usize = 12;
const SAMPLE: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: i32 = 40;
const ROUTES: [&str; 3] = ["GET /v1/tasks", "POST /v1/tasks", "GET /v1/tasks/{id}"];

/// A tenant the load may address.
#[derive(Clone)]
struct Tenant {
    slug: String,
    auth: String,
}

/// What the load saw in one sampling window.
#[derive(Default)]
struct Window {
    latencies: HashMap<&'static str, Vec<f64>>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
}

#[derive(Default)]
struct Shared {
    live: Vec<Tenant>,
    suspended: Vec<Tenant>,
    deleted: Vec<String>,
    /// Acknowledged writes (201) per tenant.
    acked: HashMap<String, Vec<Uuid>>,
    window: Window,
    /// Every status ever answered, and the error codes of 5xx.
    statuses: BTreeMap<u16, u64>,
    server_errors: BTreeMap<String, u64>,
}

/// A cheap deterministic generator, one per client.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

fn minutes() -> f64 {
    std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10.0)
}

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// Resident memory (MB) and open file descriptors of a process.
fn rss_and_fds(pid: u32) -> (f64, f64) {
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss_kb / 1024.0, fds as f64)
}

fn p99(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 * 0.99).ceil() as usize).clamp(1, values.len()) - 1]
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.map_or(-1, |r| r.get(0))
}

/// One request of the mix: a page of tasks (60 %), a new task (25 %), or one
/// acknowledged task (15 %).
async fn one_request(
    http: &reqwest::Client,
    base: &str,
    t: &Tenant,
    shared: &Mutex<Shared>,
    rng: &mut Lcg,
) {
    let pick = rng.next(100);
    let known = {
        let s = shared.lock().unwrap();
        s.acked.get(&t.slug).and_then(|ids| ids.last().copied())
    };
    let (route, request) = match (pick, known) {
        (0..=59, _) | (85.., None) => (ROUTES[0], http.get(format!("{base}/v1/tasks?limit=5"))),
        (60..=84, _) => (
            ROUTES[1],
            http.post(format!("{base}/v1/tasks")).json(
                &json!({"agent": "opencode", "title": "soak", "input": {"n": rng.next(1000)}}),
            ),
        ),
        (_, Some(id)) => (ROUTES[2], http.get(format!("{base}/v1/tasks/{id}"))),
    };
    let started = Instant::now();
    let sent = request.header("authorization", &t.auth).send().await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut s = shared.lock().unwrap();
    let Ok(resp) = sent else {
        s.window.transport_errors += 1;
        return;
    };
    let status = resp.status().as_u16();
    drop(s);
    let body: Value = resp.json().await.unwrap_or_default();
    let mut s = shared.lock().unwrap();
    s.window.latencies.entry(route).or_default().push(ms);
    *s.window.statuses.entry(status).or_default() += 1;
    *s.statuses.entry(status).or_default() += 1;
    if status >= 500 {
        let code = body["error"]["code"].as_str().unwrap_or("-").to_owned();
        *s.server_errors
            .entry(format!("{status} {code} {route}"))
            .or_default() += 1;
    }
    if status == 201 {
        if let Some(id) = body["id"].as_str().and_then(|i| i.parse().ok()) {
            s.acked.entry(t.slug.clone()).or_default().push(id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the soak: `make soak` runs it (SOAK_MINUTES, default 10)"]
async fn soak() {
    let run_for = Duration::from_secs_f64(minutes() * 60.0);
    let warm_up = (run_for / 5).max(Duration::from_secs(60)).min(run_for / 2);
    let d = Deployment::new().await;
    let second = TestCluster::start();
    d.json(
        &["server", "add", "s2", "--url", &second.url("postgres")],
        0,
    );
    let catalog = d.catalog().await;
    catalog
        .execute(
            "UPDATE servers SET max_connections = $1",
            &[&MAX_CONNECTIONS],
        )
        .await
        .unwrap();
    let p = d.provisioner().await;
    let plans = ["free", "pro", "enterprise"];
    p.create_many(
        (0..TENANTS)
            .map(|i| tenantry_provision::CreateTenant {
                slug: format!("s{i}"),
                plan: Some(plans[i % 3].into()),
                ..Default::default()
            })
            .collect(),
        4,
    )
    .await
    .unwrap();
    let shared = Arc::new(Mutex::new(Shared {
        live: (0..TENANTS)
            .map(|i| Tenant {
                slug: format!("s{i}"),
                auth: bearer(&token(&format!("s{i}"), None)),
            })
            .collect(),
        ..Default::default()
    }));
    let vars = [("TENANTRY__ROUTER__HEARTBEAT_S", "1")];
    let routers: Vec<Router> = vec![d.serve(&vars).await, d.serve(&vars).await];
    let bases: Vec<String> = routers.iter().map(|r| r.base.clone()).collect();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    // The load.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (shared, stop, bases) = (shared.clone(), stop.clone(), bases.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let mut rng = Lcg(c as u64 + 1);
                while !stop.load(Ordering::SeqCst) {
                    let tenant = {
                        let s = shared.lock().unwrap();
                        s.live[rng.next(s.live.len())].clone()
                    };
                    let base = &bases[rng.next(bases.len())];
                    one_request(&http, base, &tenant, &shared, &mut rng).await;
                }
            })
        })
        .collect();

    // The budget, watched closely: router sessions per server, at the peak.
    let peaks: Arc<[AtomicI64; 2]> = Arc::new([AtomicI64::new(0), AtomicI64::new(0)]);
    let watcher = {
        let (stop, peaks) = (stop.clone(), peaks.clone());
        let admins = [
            d.pg.connect("postgres").await,
            second.connect("postgres").await,
        ];
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for (i, admin) in admins.iter().enumerate() {
                    let n = count(admin, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantry-router'").await;
                    peaks[i].fetch_max(n, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Churn: a lifecycle step every 3 s (create, suspend, resume, delete, plan change or
    // online move), and one migration run at 40 % of the soak.
    let churn = {
        let (shared, stop) = (shared.clone(), stop.clone());
        let p = d.provisioner().await;
        tokio::spawn(async move {
            let mut rng = Lcg(99);
            let mut made = TENANTS;
            let mut steps: BTreeMap<&'static str, u64> = BTreeMap::new();
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let step = ["create", "suspend", "resume", "delete", "plan", "move"][rng.next(6)];
                let victim = {
                    let s = shared.lock().unwrap();
                    s.live[rng.next(s.live.len())].clone()
                };
                let ok = match step {
                    "create" => {
                        let slug = format!("n{made}");
                        made += 1;
                        let r = p
                            .create_tenant(tenantry_provision::CreateTenant {
                                slug: slug.clone(),
                                plan: Some("enterprise".into()),
                                ..Default::default()
                            })
                            .await;
                        if r.is_ok() {
                            let auth = bearer(&token(&slug, None));
                            shared.lock().unwrap().live.push(Tenant { slug, auth });
                        }
                        r.is_ok()
                    }
                    "suspend" => {
                        let r = p.suspend_tenant(&victim.slug).await.is_ok();
                        if r {
                            let mut s = shared.lock().unwrap();
                            s.live.retain(|t| t.slug != victim.slug);
                            s.suspended.push(victim);
                        }
                        r
                    }
                    "resume" => {
                        let back = shared.lock().unwrap().suspended.pop();
                        match back {
                            Some(t) => {
                                let r = p.resume_tenant(&t.slug).await.is_ok();
                                shared.lock().unwrap().live.push(t);
                                r
                            }
                            None => true,
                        }
                    }
                    "delete" => {
                        shared
                            .lock()
                            .unwrap()
                            .live
                            .retain(|t| t.slug != victim.slug);
                        let r = p.delete_tenant(&victim.slug, false).await.is_ok();
                        shared.lock().unwrap().deleted.push(victim.slug);
                        r
                    }
                    "move" => {
                        // Online, to the other server, while the routers serve it.
                        match p.show_tenant(&victim.slug).await {
                            Ok(t) => p
                                .move_tenant(tenantry_provision::MoveTenant {
                                    slug: victim.slug.clone(),
                                    to: if t.server.as_deref() == Some("s2") {
                                        "s1".into()
                                    } else {
                                        "s2".into()
                                    },
                                    offline: false,
                                    cutover_timeout: Duration::from_secs(30),
                                })
                                .await
                                .is_ok(),
                            Err(_) => false,
                        }
                    }
                    _ => p
                        .set_plan(
                            &victim.slug,
                            ["free", "pro", "enterprise"][rng.next(3)],
                            "soak",
                        )
                        .await
                        .is_ok(),
                };
                *steps.entry(if ok { step } else { "failed" }).or_default() += 1;
            }
            steps
        })
    };
    let templates = d.templates_with(&[(
        "V2__soak_tags.sql",
        "ALTER TABLE tasks ADD COLUMN soak_tags text[];",
    )]);
    let mut migration: Option<support::Running> = None;
    let mut migration_exit = None;

    // Sampling.
    let admins = [
        d.pg.connect("postgres").await,
        second.connect("postgres").await,
    ];
    let mut samples: Vec<Value> = Vec::new();
    while started.elapsed() < run_for {
        tokio::time::sleep(SAMPLE.min(run_for.saturating_sub(started.elapsed()))).await;
        if migration.is_none() && started.elapsed() >= run_for * 2 / 5 {
            migration = Some(support::Running::spawn(d.cmd(&[
                "--templates",
                templates.to_str().unwrap(),
                "migrate",
                "run",
            ])));
        }
        if let Some(run) = migration.as_mut() {
            if migration_exit.is_none() {
                migration_exit = run.child.try_wait().unwrap().map(|s| s.code());
            }
        }
        let window = std::mem::take(&mut shared.lock().unwrap().window);
        let mut latencies = window.latencies;
        let mut row = json!({
            "t_s": started.elapsed().as_secs_f64().round(),
            "statuses": window.statuses,
            "transport_errors": window.transport_errors,
            "catalog_connections": count(&catalog, "SELECT count(*) FROM pg_stat_activity WHERE datname = 'catalog'").await,
            "server_connections": [
                count(&admins[0], "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantry-router'").await,
                count(&admins[1], "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantry-router'").await,
            ],
        });
        for (i, r) in routers.iter().enumerate() {
            let (rss, fds) = rss_and_fds(r.process.child.id());
            row[format!("router{}_rss_mb", i + 1)] = json!(rss);
            row[format!("router{}_fds", i + 1)] = json!(fds);
        }
        for route in ROUTES {
            let v = latencies.get_mut(route).map_or(0.0, |l| p99(l));
            row[format!("p99_ms {route}")] = json!(v);
        }
        eprintln!("soak {row}");
        samples.push(row);
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    watcher.await.unwrap();
    let steps = churn.await.unwrap();
    if let Some(run) = migration.take() {
        let (status, _, stderr) = run.wait(Duration::from_secs(300));
        assert!(status.success(), "the migration run failed: {stderr}");
        migration_exit = Some(status.code());
    }

    // Every acknowledged write of a tenant that was not deleted is in its database.
    let s = std::mem::take(&mut *shared.lock().unwrap());
    let mut acked_total = 0;
    let mut missing = Vec::new();
    for (slug, ids) in &s.acked {
        if s.deleted.contains(slug) {
            continue;
        }
        let row = catalog
            .query_one(
                "SELECT t.database_name, s.port FROM tenants t JOIN servers s ON s.id = t.server_id
                 WHERE t.slug = $1 AND t.state <> 'deleted'",
                &[slug],
            )
            .await
            .unwrap();
        let (database, port): (String, i32) = (row.get(0), row.get(1));
        let pg = if port == i32::from(d.pg.port()) {
            &d.pg
        } else {
            &second
        };
        let found: i64 = pg
            .connect(&database)
            .await
            .query_one("SELECT count(*) FROM tasks WHERE id = ANY($1)", &[ids])
            .await
            .unwrap()
            .get(0);
        acked_total += ids.len();
        if found as usize != ids.len() {
            missing.push((slug.clone(), ids.len() - found as usize));
        }
    }

    // RSS after warm-up: the first sample past it against the last.
    let warm = samples
        .iter()
        .find(|r| r["t_s"].as_f64().unwrap() >= warm_up.as_secs_f64())
        .unwrap_or(&samples[0]);
    let last = samples.last().unwrap();
    let growth: Vec<f64> = (1..=routers.len())
        .map(|i| {
            let key = format!("router{i}_rss_mb");
            last[&key].as_f64().unwrap() / warm[&key].as_f64().unwrap().max(1e-9) - 1.0
        })
        .collect();
    let peaks = [
        peaks[0].load(Ordering::SeqCst),
        peaks[1].load(Ordering::SeqCst),
    ];
    let report = json!({
        "minutes": minutes(),
        "tenants": TENANTS,
        "clients": CLIENTS,
        "max_connections_per_server": MAX_CONNECTIONS,
        "peak_router_sessions_per_server": peaks,
        "rss_growth_after_warm_up": growth,
        "warm_up_s": warm_up.as_secs(),
        "statuses": s.statuses,
        "server_errors": s.server_errors,
        "churn_steps": steps,
        "migration_exit": migration_exit,
        "acknowledged_writes": acked_total,
        "missing_writes": missing,
        "samples": samples,
    });
    let dir = target_dir().join("soak");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("chart.svg"), chart(&samples, routers.len())).unwrap();
    eprintln!(
        "soak: {:.1} min, statuses {:?}, 5xx {:?}, peak router sessions per server {peaks:?} (budget {MAX_CONNECTIONS}), RSS growth after warm-up {growth:?}, churn {steps:?}, {acked_total} acknowledged writes, missing {missing:?}; report in {}",
        minutes(),
        s.statuses,
        s.server_errors,
        dir.display()
    );
    assert!(
        missing.is_empty(),
        "acknowledged writes missing: {missing:?}"
    );
    assert!(
        s.server_errors.keys().all(|k| k.starts_with("503 ")),
        "5xx other than 503: {:?}",
        s.server_errors
    );
    assert!(
        peaks.iter().all(|p| *p <= i64::from(MAX_CONNECTIONS)),
        "a server's budget was exceeded: {peaks:?}"
    );
    assert!(
        growth.iter().all(|g| *g <= 0.10),
        "router RSS grew more than 10 % after warm-up: {growth:?}"
    );
}

fn chart(samples: &[Value], routers: usize) -> String {
    let series = |name: String, key: &dyn Fn(&Value) -> f64| Series {
        name,
        points: samples
            .iter()
            .map(|r| (r["t_s"].as_f64().unwrap(), key(r)))
            .collect(),
    };
    let per_router = |what: &str| -> Vec<Series> {
        (1..=routers)
            .map(|i| {
                let key = format!("router{i}_{what}");
                series(format!("router {i}"), &move |r| {
                    r[&key].as_f64().unwrap_or(0.0)
                })
            })
            .collect()
    };
    let panels = vec![
        Panel {
            title: "router RSS".into(),
            unit: "MB".into(),
            series: per_router("rss_mb"),
        },
        Panel {
            title: "router open files".into(),
            unit: "fds".into(),
            series: per_router("fds"),
        },
        Panel {
            title: "connections".into(),
            unit: "sessions".into(),
            series: vec![
                series("catalog".into(), &|r| {
                    r["catalog_connections"].as_f64().unwrap_or(0.0)
                }),
                series("server 1 (routers)".into(), &|r| {
                    r["server_connections"][0].as_f64().unwrap_or(0.0)
                }),
                series("server 2 (routers)".into(), &|r| {
                    r["server_connections"][1].as_f64().unwrap_or(0.0)
                }),
            ],
        },
        Panel {
            title: "p99 per route".into(),
            unit: "ms".into(),
            series: ROUTES
                .iter()
                .map(|route| {
                    let key = format!("p99_ms {route}");
                    series((*route).into(), &move |r| r[&key].as_f64().unwrap_or(0.0))
                })
                .collect(),
        },
        Panel {
            title: "errors".into(),
            unit: "per 10 s".into(),
            series: vec![
                series("503".into(), &|r| {
                    r["statuses"]["503"].as_f64().unwrap_or(0.0)
                }),
                series("other 5xx".into(), &|r| {
                    r["statuses"].as_object().map_or(0.0, |m| {
                        m.iter()
                            .filter(|(k, _)| k.starts_with('5') && *k != "503")
                            .map(|(_, v)| v.as_f64().unwrap_or(0.0))
                            .sum()
                    })
                }),
                series("transport".into(), &|r| {
                    r["transport_errors"].as_f64().unwrap_or(0.0)
                }),
            ],
        },
    ];
    support::chart::svg("tenantry soak", &panels)
}

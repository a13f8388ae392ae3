//! The router's hot path: `GET /v1/tasks/{id}` over real HTTP, against a baseline run in
//! the same process — a bare actix-web + deadpool handler running the same query on one
//! database. Scenarios: 1 tenant; 100 tenants; 1,000 tenants with Zipf-skewed traffic
//! under a 64-connection budget. Also: the cache-hit resolution path (micro-benchmark)
//! and a cold tenant's first request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use tenantry_bench::{Deployment, Ratio, Report, Summary};
use tenantry_provision::CreateTenant;
use tenantry_router::auth::{issue_hs256, Claims};
use tenantry_router::{AppState, RouterOptions};
use tenantry_testkit::TestCluster;
use uuid::Uuid;

const TENANTS: usize = 1000;
const RUN: Duration = Duration::from_secs(5);
/// Every scenario (the baseline's too) runs this long before it is measured: pools fill
/// and connections open, so the figures are the steady state.
const WARM_UP: Duration = Duration::from_secs(1);
/// The baseline and the 1-tenant scenario alternate in this many rounds of `RUN / ROUNDS`.
const ROUNDS: usize = 3;
const CLIENTS: usize = 32;
const WORKERS: usize = 2;

struct Tenant {
    token: String,
    task: Uuid,
    database: String,
    role: String,
    password: String,
}

/// Requests `GET {base}{path}` from `CLIENTS` concurrent clients for `RUN`, choosing the
/// request with `pick`; returns the latencies of successful requests and the failures.
/// One measured run: latencies of the successful requests, failures, the most
/// connections seen on the server, and the measured wall time.
#[derive(Default)]
struct Run {
    samples: Vec<Duration>,
    failed: usize,
    peak: i64,
    wall: Duration,
    /// Router connections opened, and idle ones evicted, in the measured time.
    opened: u64,
    evicted: u64,
}

impl Run {
    fn add(&mut self, other: Run) {
        self.samples.extend(other.samples);
        self.failed += other.failed;
        self.peak = self.peak.max(other.peak);
        self.wall += other.wall;
        self.opened += other.opened;
        self.evicted += other.evicted;
    }

    fn summary(&self, name: &str) -> Summary {
        Summary::new(name, &self.samples, self.wall)
    }
}

async fn load(
    name: &str,
    run_for: Duration,
    requests: Arc<Vec<(String, String)>>,
    pick: Arc<dyn Fn(usize) -> usize + Send + Sync>,
    pg: &TestCluster,
    churn: &(dyn Fn() -> (u64, u64) + Sync),
) -> Run {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let (client, conn) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        tokio::spawn(async move {
            let mut peak = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name IN ('tenantry-router', 'bench-baseline')",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                peak = peak.max(n);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    eprintln!("{name}…");
    let warm = Instant::now();
    let started = warm + WARM_UP;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (http, requests, pick) = (http.clone(), requests.clone(), pick.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut failed = 0usize;
                let mut reasons: Vec<String> = Vec::new();
                let mut i = c * 7919;
                loop {
                    let t = Instant::now();
                    if t >= started + run_for {
                        break;
                    }
                    let (url, auth) = &requests[pick(i)];
                    i += 1;
                    let outcome = match http.get(url).header("authorization", auth).send().await {
                        Ok(r) if r.status().is_success() => None,
                        Ok(r) => Some(format!("HTTP {}", r.status().as_u16())),
                        Err(e) => Some(format!("transport error: {e}")),
                    };
                    match outcome {
                        // Failures count during the warm-up too.
                        Some(why) => {
                            failed += 1;
                            if reasons.len() < 3 && !reasons.contains(&why) {
                                reasons.push(why);
                            }
                        }
                        None if t >= started => samples.push(t.elapsed()),
                        None => {}
                    }
                }
                (samples, failed, reasons)
            })
        })
        .collect();
    tokio::time::sleep_until(started.into()).await;
    let churn_before = churn();
    let mut samples = Vec::new();
    let mut failed = 0;
    let mut reasons: Vec<String> = Vec::new();
    for c in clients {
        let (s, f, r) = c.await.unwrap();
        samples.extend(s);
        failed += f;
        for why in r {
            if !reasons.contains(&why) {
                reasons.push(why);
            }
        }
    }
    if !reasons.is_empty() {
        eprintln!("{name}: {failed} failed requests: {}", reasons.join("; "));
    }
    let wall = Instant::now().saturating_duration_since(started);
    stop.store(true, Ordering::Relaxed);
    let churn_after = churn();
    let peak = sampler.await.unwrap();
    Run {
        samples,
        failed,
        peak,
        wall,
        opened: churn_after.0 - churn_before.0,
        evicted: churn_after.1 - churn_before.1,
    }
}

/// Zipf(s = 1.1) over `n` items: item k is chosen with weight 1/k^s.
fn zipf(n: usize) -> Arc<dyn Fn(usize) -> usize + Send + Sync> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(1.1)).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cdf.push(acc);
    }
    Arc::new(move |i: usize| {
        // A cheap deterministic hash of i into [0, 1).
        let x = (i as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(17) as f64
            / u64::MAX as f64;
        cdf.partition_point(|c| *c < x).min(cdf.len() - 1)
    })
}

/// The share of Zipf(1.1) traffic over `n` items that goes to the `k` most popular: the
/// best hit rate any cache of `k` connections can have.
fn zipf_top_share(n: usize, k: usize) -> f64 {
    let w = |i: usize| 1.0 / (i as f64).powf(1.1);
    (1..=k).map(w).sum::<f64>() / (1..=n).map(w).sum::<f64>()
}

/// How many new tenant connections (open, authenticate, run the scenario's query, close)
/// the server completes per second, `parallel` at a time over distinct tenant databases:
/// what a request that finds no open connection costs.
async fn connection_opens(
    pg: &TestCluster,
    targets: Vec<(String, String, String, Uuid)>,
    parallel: usize,
    run_for: Duration,
) -> (f64, Vec<Duration>) {
    let targets = Arc::new(targets);
    let started = Instant::now();
    let workers: Vec<_> = (0..parallel)
        .map(|w| {
            let targets = targets.clone();
            let port = pg.port();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut i = w;
                while started.elapsed() < run_for {
                    let (database, role, password, task) = &targets[i % targets.len()];
                    i += parallel;
                    let t = Instant::now();
                    let mut config = tokio_postgres::Config::new();
                    config
                        .host("127.0.0.1")
                        .port(port)
                        .dbname(database)
                        .user(role)
                        .password(password);
                    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
                    let driver = tokio::spawn(conn);
                    let st = client
                        .prepare("SELECT id, user_id, agent, title, input, status, output, cost_cents, created_at, updated_at FROM tasks WHERE id = $1")
                        .await
                        .unwrap();
                    client.query_opt(&st, &[task]).await.unwrap();
                    drop(client);
                    let _ = driver.await;
                    samples.push(t.elapsed());
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await.unwrap());
    }
    let per_second = samples.len() as f64 / started.elapsed().as_secs_f64();
    (per_second, samples)
}

async fn baseline(pg: &TestCluster, database: &str) -> (actix_web::dev::ServerHandle, String) {
    let mut cfg = deadpool_postgres::Config::new();
    cfg.host = Some("127.0.0.1".into());
    cfg.port = Some(pg.port());
    cfg.user = Some(pg.superuser().into());
    cfg.password = Some(secrecy::ExposeSecret::expose_secret(pg.password()).to_owned());
    cfg.dbname = Some(database.into());
    cfg.application_name = Some("bench-baseline".into());
    cfg.pool = Some(deadpool_postgres::PoolConfig::new(10));
    let pool = cfg
        .create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )
        .unwrap();
    async fn get(pool: web::Data<deadpool_postgres::Pool>, id: web::Path<Uuid>) -> HttpResponse {
        let client = pool.get().await.unwrap();
        let st = client
            .prepare_cached(
                "SELECT id, user_id, agent, title, input, status, output, cost_cents, created_at, updated_at
                 FROM tasks WHERE id = $1",
            )
            .await
            .unwrap();
        match client.query_opt(&st, &[&id.into_inner()]).await.unwrap() {
            Some(r) => HttpResponse::Ok().json(serde_json::json!({
                "id": r.get::<_, Uuid>(0), "user_id": r.get::<_, String>(1), "agent": r.get::<_, String>(2),
                "title": r.get::<_, String>(3), "input": r.get::<_, Option<serde_json::Value>>(4),
                "status": r.get::<_, String>(5), "output": r.get::<_, Option<serde_json::Value>>(6),
                "cost_cents": r.get::<_, i32>(7),
                "created_at": r.get::<_, chrono::DateTime<chrono::Utc>>(8),
                "updated_at": r.get::<_, chrono::DateTime<chrono::Utc>>(9),
            })),
            None => HttpResponse::NotFound().finish(),
        }
    }
    let data = web::Data::new(pool);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/tasks/{id}", web::get().to(get))
    })
    .workers(WORKERS)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (handle, format!("http://{addr}"))
}

async fn run() -> Report {
    let pg = TestCluster::start();
    // A lone router leases the server's whole budget: 100 here, for the 1 and 100
    // tenant scenarios (as many as tenants); 64 for the 1,000-tenant one (set below).
    let Deployment {
        settings,
        catalog_url,
        catalog,
        sealer,
        provisioner,
    } = Deployment::new(
        &pg,
        &[
            ("TENANTRY__HTTP__BIND", "127.0.0.1:0"),
            (
                "TENANTRY__PLANS__ENTERPRISE__REQUESTS_PER_MINUTE",
                "100000000",
            ),
            ("TENANTRY__ROUTER__POOL_WAIT_MS", "5000"),
            ("TENANTRY__ROUTER__HEARTBEAT_S", "1"),
            ("TENANTRY__ROUTER__IDLE_TIMEOUT_S", "2"),
        ],
        tenantry_bench::templates_dir(),
        100,
    )
    .await;

    eprintln!("creating {TENANTS} tenants…");
    provisioner
        .create_many(
            (0..TENANTS)
                .map(|i| CreateTenant {
                    slug: format!("t{i}"),
                    plan: Some("enterprise".into()),
                    ..Default::default()
                })
                .collect(),
            4,
        )
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let secret = settings.auth.hs256_secret.clone().unwrap();
    let mut tenants = Vec::new();
    for i in 0..TENANTS {
        let info = provisioner.show_tenant(&format!("t{i}")).await.unwrap();
        let task = Uuid::now_v7();
        let client = pg.connect(&info.database).await;
        client
            .execute(
                "INSERT INTO tasks (id, user_id, agent, title) VALUES ($1, 'bench', 'claude', 'a task')",
                &[&task],
            )
            .await
            .unwrap();
        let token = issue_hs256(
            &secret,
            &Claims {
                sub: "bench".into(),
                tenant: Some(format!("t{i}")),
                exp: now + 3600,
                iss: settings.auth.issuer.clone(),
                aud: settings.auth.audience.clone(),
                nbf: None,
                iat: Some(now),
                scope: None,
                tenant_id: None,
            },
        )
        .unwrap();
        let password = provisioner.tenant_password(&format!("t{i}")).await.unwrap();
        tenants.push(Tenant {
            token: format!("Bearer {token}"),
            task,
            database: info.database,
            role: format!("tr_{}", info.id.simple()),
            password: secrecy::ExposeSecret::expose_secret(&password).to_owned(),
        });
    }

    // The baseline: one database, no tenancy; it gets the same requests, token included.
    let (baseline_handle, baseline_base) = baseline(&pg, &tenants[0].database).await;
    let base_requests = Arc::new(vec![(
        format!("{baseline_base}/tasks/{}", tenants[0].task),
        tenants[0].token.clone(),
    )]);

    let (state, background) = AppState::start(
        &settings,
        catalog.clone(),
        catalog_url.clone(),
        sealer,
        provisioner.clone(),
    )
    .await
    .unwrap();
    let resolver = state.resolver.clone();
    let pools = state.pools.clone();
    // Connections opened and evicted so far (summed over servers).
    let churn = move || {
        pools
            .usage()
            .iter()
            .fold((0, 0), |(o, e), u| (o + u.opened, e + u.evicted))
    };
    let router = tenantry_router::start(
        &RouterOptions {
            bind: "127.0.0.1:0".parse().unwrap(),
            max_body_bytes: 262_144,
            shutdown_timeout: Duration::from_secs(5),
            workers: Some(WORKERS),
            metrics_bind: None,
        },
        state,
    )
    .unwrap();
    let handle = router.handle.clone();
    tokio::spawn(router.server);
    let base_url = format!("http://{}", router.addr);
    let requests: Arc<Vec<(String, String)>> = Arc::new(
        tenants
            .iter()
            .map(|t| (format!("{base_url}/v1/tasks/{}", t.task), t.token.clone()))
            .collect(),
    );

    // The cold first request of tenants nobody has asked for yet (the last 50).
    let http = reqwest::Client::new();
    let mut cold = Vec::new();
    for (url, auth) in requests.iter().skip(TENANTS - 50) {
        let t = Instant::now();
        let r = http
            .get(url)
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        cold.push(t.elapsed());
    }
    let cold = Summary::new("cold tenant: first request", &cold, Duration::ZERO);
    // Let those pools go quiet, so the next scenario's pool gets the budget's full share.
    tokio::time::sleep(Duration::from_millis(3500)).await;

    // The baseline and the 1-tenant scenario take turns, so a drift of this shared
    // machine (autovacuum visiting the new databases, say) weighs on both alike.
    let mut base = Run::default();
    let mut one = Run::default();
    for _ in 0..ROUNDS {
        base.add(
            load(
                "baseline: actix + deadpool, 1 database",
                RUN / ROUNDS as u32,
                base_requests.clone(),
                Arc::new(|_| 0),
                &pg,
                &|| (0, 0),
            )
            .await,
        );
        one.add(
            load(
                "tenantry: 1 tenant",
                RUN / ROUNDS as u32,
                requests.clone(),
                Arc::new(|_| 0),
                &pg,
                &churn,
            )
            .await,
        );
    }
    baseline_handle.stop(true).await;
    let hundred = load(
        "tenantry: 100 tenants, uniform",
        RUN,
        requests.clone(),
        Arc::new(|i| (i * 37) % 100),
        &pg,
        &churn,
    )
    .await;
    catalog
        .client()
        .await
        .unwrap()
        .execute("UPDATE servers SET max_connections = 64", &[])
        .await
        .unwrap();
    // The next heartbeat (every second here) shrinks the budget to 64, and the idle
    // connections of the earlier scenarios close (idle timeout 2 s here).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let thousand = load(
        "tenantry: 1,000 tenants, Zipf 1.1, budget 64",
        RUN,
        requests.clone(),
        zipf(TENANTS),
        &pg,
        &churn,
    )
    .await;

    // What a request without an open connection costs, and so the most any router
    // could serve in the 1,000-tenant scenario: even a perfect cache of 64 connections
    // (the 64 most popular tenants) opens one for every request to the others.
    let (opens_per_s, open_samples) = connection_opens(
        &pg,
        tenants[100..]
            .iter()
            .map(|t| {
                (
                    t.database.clone(),
                    t.role.clone(),
                    t.password.clone(),
                    t.task,
                )
            })
            .collect(),
        8,
        Duration::from_secs(3),
    )
    .await;
    let opens = Summary::new(
        "new tenant connection + first query (8 at a time)",
        &open_samples,
        Duration::ZERO,
    );
    let miss = 1.0 - zipf_top_share(TENANTS, 64);
    let ceiling = opens_per_s / miss;

    // The resolution path on a cache hit, without HTTP.
    let mut hits = Vec::with_capacity(100_000);
    for i in 0..100_000 {
        let slug = format!("t{}", i % 100);
        let t = Instant::now();
        let route = resolver.resolve(&slug).await.unwrap();
        hits.push(t.elapsed());
        assert!(route.is_some());
    }
    let mut hit = Summary::new("resolution, cache hit (no HTTP)", &hits, Duration::ZERO);
    // In microseconds: the table shows ms.
    hit.scenario.push_str(" [µs in notes]");

    handle.stop(true).await;
    background.stop().await;

    let notes = vec![
        format!(
            "{CLIENTS} concurrent HTTP clients (reqwest, keep-alive) in this process, {WORKERS} server workers, {} s per scenario after {} s of warm-up (the baseline and 1 tenant in {ROUNDS} alternating rounds), one throwaway cluster",
            RUN.as_secs(),
            WARM_UP.as_secs()
        ),
        format!(
            "failed requests: baseline {}, 1 tenant {}, 100 tenants {}, 1,000 Zipf {}",
            base.failed, one.failed, hundred.failed, thousand.failed
        ),
        format!(
            "peak connections on the server (pg_stat_activity): baseline {}, 1 tenant {}, 100 tenants {} (budget 100), 1,000 Zipf {} (budget 64)",
            base.peak, one.peak, hundred.peak, thousand.peak
        ),
        format!(
            "router connections opened / idle ones evicted in the measured time: 1 tenant {} / {}; 100 tenants {} / {}; 1,000 Zipf {} / {} ({:.0}% of its requests opened one)",
            one.opened, one.evicted, hundred.opened, hundred.evicted, thousand.opened, thousand.evicted,
            100.0 * thousand.opened as f64 / thousand.samples.len().max(1) as f64
        ),
        format!(
            "a new tenant connection (open, SCRAM, first query, close), 8 at a time: {opens_per_s:.0}/s; Zipf 1.1 over {TENANTS} tenants sends {:.1}% of requests outside the 64 most popular, so even a perfect cache opens a connection for those: at most {ceiling:.0} req/s ({:.3}× the baseline)",
            miss * 100.0,
            ceiling / base.samples.len().max(1) as f64 * base.wall.as_secs_f64()
        ),
        format!(
            "cache-hit resolution: p50 {:.2} µs, p99 {:.2} µs, max {:.1} µs over 100,000 calls",
            hit.p50_ms * 1000.0,
            hit.p99_ms * 1000.0,
            hit.max_ms * 1000.0
        ),
    ];
    let base = base.summary("baseline: actix + deadpool, 1 database");
    let one = one.summary("tenantry: 1 tenant");
    let hundred = hundred.summary("tenantry: 100 tenants, uniform");
    let thousand = thousand.summary("tenantry: 1,000 tenants, Zipf 1.1, budget 64");
    let ratios = vec![
        Ratio {
            name: "1 tenant / baseline (req/s)".into(),
            value: one.per_second / base.per_second,
            meaning: "goal ≥ 0.9".into(),
        },
        Ratio {
            name: "100 tenants / baseline (req/s)".into(),
            value: hundred.per_second / base.per_second,
            meaning: "goal ≥ 0.8".into(),
        },
        Ratio {
            name: "1,000 Zipf / baseline (req/s)".into(),
            value: thousand.per_second / base.per_second,
            meaning: "goal ≥ 0.6".into(),
        },
        Ratio {
            name: "1,000 Zipf ceiling / baseline (req/s)".into(),
            value: ceiling / base.per_second,
            meaning: "the most a perfect 64-connection cache could do here".into(),
        },
    ];
    Report {
        name: "router".into(),
        notes,
        scenarios: vec![base, one, hundred, thousand, cold, opens, hit],
        ratios,
    }
}

fn main() {
    tenantry_bench::main(run());
}

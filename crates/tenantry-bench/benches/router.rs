//! The router's hot path: `GET /v1/tasks/{id}` over real HTTP, against a baseline run in
//! the same process — a bare actix-web + deadpool handler running the same query on one
//! database. Scenarios: 1 tenant; 100 tenants; 1,000 tenants with Zipf-skewed traffic
//! under a 64-connection budget. Also: the cache-hit resolution path (micro-benchmark)
//! and a cold tenant's first request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use secrecy::SecretString;
use tenantry_bench::{Ratio, Report, Summary};
use tenantry_catalog::{Catalog, Sealer};
use tenantry_provision::{AddServer, CreateTenant, ProvisionOptions, Provisioner};
use tenantry_router::auth::{issue_hs256, Claims};
use tenantry_router::{AppState, RouterOptions};
use tenantry_testkit::TestCluster;
use uuid::Uuid;

const TENANTS: usize = 1000;
const RUN: Duration = Duration::from_secs(5);
const CLIENTS: usize = 32;
const WORKERS: usize = 2;

struct Tenant {
    token: String,
    task: Uuid,
    database: String,
}

/// Requests `GET {base}{path}` from `CLIENTS` concurrent clients for `RUN`, choosing the
/// request with `pick`; returns the latencies of successful requests and the failures.
async fn load(
    name: String,
    requests: Arc<Vec<(String, String)>>,
    pick: Arc<dyn Fn(usize) -> usize + Send + Sync>,
    pg: &TestCluster,
) -> (Summary, usize, i64) {
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
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (http, requests, pick) = (http.clone(), requests.clone(), pick.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut failed = 0usize;
                let mut i = c * 7919;
                while started.elapsed() < RUN {
                    let (url, auth) = &requests[pick(i)];
                    i += 1;
                    let t = Instant::now();
                    let ok = http
                        .get(url)
                        .header("authorization", auth)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if ok {
                        samples.push(t.elapsed());
                    } else {
                        failed += 1;
                    }
                }
                (samples, failed)
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut failed = 0;
    for c in clients {
        let (s, f) = c.await.unwrap();
        samples.extend(s);
        failed += f;
    }
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    (Summary::new(name, &samples, wall), failed, peak)
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
    pg.create_database("catalog").await;
    let catalog_url = SecretString::from(pg.url("catalog"));
    tenantry_catalog::migrate(&catalog_url).await.unwrap();
    let catalog = Catalog::new(&catalog_url, 16, Duration::from_secs(5)).unwrap();
    let settings = {
        let vars: HashMap<String, String> = [
            ("TENANTRY__CATALOG__URL", pg.url("catalog")),
            ("TENANTRY__HTTP__BIND", "127.0.0.1:0".into()),
            (
                "TENANTRY__PLANS__ENTERPRISE__REQUESTS_PER_MINUTE",
                "100000000".into(),
            ),
            ("TENANTRY__ROUTER__POOL_WAIT_MS", "5000".into()),
            ("TENANTRY__ROUTER__HEARTBEAT_S", "1".into()),
            ("TENANTRY__ROUTER__IDLE_TIMEOUT_S", "2".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        tenantry_config::load(&tenantry_config::LoadOptions {
            env: Some("test".into()),
            config_dir: Some("/nonexistent".into()),
            extra_file: None,
            vars: Some(vars),
        })
        .unwrap()
    };
    catalog
        .sync_plans(&settings.plans().unwrap())
        .await
        .unwrap();
    let sealer = Sealer::new(1, &settings.master_key().unwrap().0);
    let mut opts = ProvisionOptions::from_settings(&settings);
    opts.templates_dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tenant-templates");
    let provisioner = Provisioner::new(catalog.clone(), sealer.clone(), opts).unwrap();
    provisioner
        .add_server(AddServer {
            name: "bench".into(),
            url: SecretString::from(pg.url("postgres")),
            capacity: Some(5000),
            // The router's budget is max_connections / (live + 1): 100 here, for the 1 and
            // 100 tenant scenarios; 64 for the 1,000-tenant one (set below).
            max_connections: Some(200),
        })
        .await
        .unwrap();

    eprintln!("creating {TENANTS} tenants…");
    let creators: Vec<_> = (0..4)
        .map(|c| {
            let p = provisioner.clone();
            tokio::spawn(async move {
                for i in (c..TENANTS).step_by(4) {
                    p.create_tenant(CreateTenant {
                        slug: format!("t{i}"),
                        plan: Some("enterprise".into()),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for c in creators {
        c.await.unwrap();
    }
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
            },
        )
        .unwrap();
        tenants.push(Tenant {
            token: format!("Bearer {token}"),
            task,
            database: info.database,
        });
    }

    // The baseline: one database, no tenancy.
    let (baseline_handle, baseline_base) = baseline(&pg, &tenants[0].database).await;
    let base_requests = Arc::new(vec![(
        format!("{baseline_base}/tasks/{}", tenants[0].task),
        String::new(),
    )]);
    let (base, base_failed, base_peak) = load(
        "baseline: actix + deadpool, 1 database".into(),
        base_requests,
        Arc::new(|_| 0),
        &pg,
    )
    .await;
    baseline_handle.stop(true).await;

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
    let router = tenantry_router::start(
        &RouterOptions {
            bind: "127.0.0.1:0".parse().unwrap(),
            max_body_bytes: 262_144,
            shutdown_timeout: Duration::from_secs(5),
            workers: Some(WORKERS),
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

    let (one, one_failed, one_peak) = load(
        "tenantry: 1 tenant".into(),
        requests.clone(),
        Arc::new(|_| 0),
        &pg,
    )
    .await;
    let (hundred, hundred_failed, hundred_peak) = load(
        "tenantry: 100 tenants, uniform".into(),
        requests.clone(),
        Arc::new(|i| (i * 37) % 100),
        &pg,
    )
    .await;
    catalog
        .client()
        .await
        .unwrap()
        .execute("UPDATE servers SET max_connections = 128", &[])
        .await
        .unwrap();
    // The next heartbeat (every second here) shrinks the budget to 64, and the idle
    // connections of the earlier scenarios close (idle timeout 2 s here).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (thousand, thousand_failed, thousand_peak) = load(
        "tenantry: 1,000 tenants, Zipf 1.1, budget 64".into(),
        requests.clone(),
        zipf(TENANTS),
        &pg,
    )
    .await;

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
            "{CLIENTS} concurrent HTTP clients (reqwest, keep-alive) in this process, {WORKERS} server workers, {} s per scenario, one throwaway cluster",
            RUN.as_secs()
        ),
        format!(
            "failed requests: baseline {base_failed}, 1 tenant {one_failed}, 100 tenants {hundred_failed}, 1,000 Zipf {thousand_failed}"
        ),
        format!(
            "peak connections on the server (pg_stat_activity): baseline {base_peak}, 1 tenant {one_peak}, 100 tenants {hundred_peak} (budget 100), 1,000 Zipf {thousand_peak} (budget 64)"
        ),
        format!(
            "cache-hit resolution: p50 {:.2} µs, p99 {:.2} µs, max {:.1} µs over 100,000 calls",
            hit.p50_ms * 1000.0,
            hit.p99_ms * 1000.0,
            hit.max_ms * 1000.0
        ),
    ];
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
    ];
    Report {
        name: "router".into(),
        notes,
        scenarios: vec![base, one, hundred, thousand, cold, hit],
        ratios,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(run());
    report.print_and_save();
}

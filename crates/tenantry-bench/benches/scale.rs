//! The control plane at 100,000 catalog tenants (rows only: their databases do not exist;
//! a load test of the catalog, the resolver, the admin API and the runner's plan):
//! - the admin API's tenant list, page by page (`limit`/`cursor`), first and deep pages;
//! - `tenant list` (every live tenant, as the CLI prints them);
//! - `migrate plan` over every tenant;
//! - the resolver: cache-hit resolution with 1 and with 100,000 tenants cached, and the
//!   router memory each cached idle tenant costs (RSS before and after resolving all).
//!
//! Goals: a page under 100 ms, `migrate plan` ≤ 2 s, ≤ 10 KB per cached idle tenant,
//! resolution p99 the same at 1 and 100,000 tenants. Beside the resolver, the same
//! lookups in a bare `HashMap` of 1 and of 100,000 keys, in alternating rounds: at
//! 100,000 keys a lookup leaves the CPU's caches, whatever the map.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tenantry_bench::{spread, Deployment, Ratio, Report, Summary};
use tenantry_router::auth::{issue_hs256, Claims};
use tenantry_testkit::TestCluster;
use uuid::Uuid;

const TENANTS: usize = 100_000;
const BATCH: usize = 10_000;
const PAGES: usize = 30;

/// This process's resident memory, in bytes.
fn rss() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        * 1024.0
}

/// Resolution of cache hits over `slugs`, 100,000 calls.
async fn hits(resolver: &tenantry_router::resolve::Resolver, slugs: &[String]) -> Summary {
    let mut samples = Vec::with_capacity(100_000);
    for i in 0..100_000 {
        let slug = &slugs[(i * 7919) % slugs.len()];
        let t = Instant::now();
        let route = resolver.resolve(slug).await.unwrap();
        samples.push(t.elapsed());
        assert!(route.is_some());
    }
    Summary::new("", &samples, Duration::ZERO)
}

/// The same lookups in a bare `HashMap` of the same keys, an `Arc` cloned per hit: what
/// the memory hierarchy alone costs at that size.
fn bare(slugs: &[String]) -> Summary {
    let map: std::collections::HashMap<String, std::sync::Arc<String>> = slugs
        .iter()
        .map(|s| (s.clone(), std::sync::Arc::new(s.clone())))
        .collect();
    let mut samples = Vec::with_capacity(100_000);
    for i in 0..100_000 {
        let slug = &slugs[(i * 7919) % slugs.len()];
        let t = Instant::now();
        let hit = map.get(slug.as_str()).cloned();
        samples.push(t.elapsed());
        assert!(std::hint::black_box(hit).is_some());
    }
    Summary::new("", &samples, Duration::ZERO)
}

/// Rounds of cache-hit resolution, alternating with the bare map.
const HIT_ROUNDS: usize = 5;

async fn run() -> Report {
    let pg = TestCluster::start();
    let d = Deployment::new(
        &pg,
        &[("TENANTRY__HTTP__BIND", "127.0.0.1:0")],
        tenantry_bench::templates_dir(),
        100,
    )
    .await;
    let client = d.catalog.client().await.unwrap();
    let server: i64 = client
        .query_one("SELECT id FROM servers", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!("writing {TENANTS} catalog tenants…");
    let mut slugs = Vec::with_capacity(TENANTS);
    for start in (0..TENANTS).step_by(BATCH) {
        let mut ids = Vec::with_capacity(BATCH);
        let mut batch_slugs = Vec::with_capacity(BATCH);
        let mut sealed = Vec::with_capacity(BATCH);
        for i in start..(start + BATCH).min(TENANTS) {
            let id = Uuid::now_v7();
            let s = d
                .sealer
                .seal(b"not a real password", &format!("tenant:{id}"));
            ids.push(id);
            batch_slugs.push(format!("x{i:06}"));
            sealed.push(s.bytes);
        }
        client
            .execute(
                "INSERT INTO tenants (id, slug, plan, template, server_id, database_name, role_name,
                                      state, schema_version, credentials, key_version)
                 SELECT id, slug, 'free', 'tasks', $4, 't_' || replace(id::text, '-', ''),
                        'tr_' || replace(id::text, '-', ''), 'ready', 1, c, 1
                 FROM unnest($1::uuid[], $2::text[], $3::bytea[]) AS u(id, slug, c)",
                &[&ids, &batch_slugs, &sealed, &server],
            )
            .await
            .unwrap();
        slugs.extend(batch_slugs);
    }
    client.batch_execute("ANALYZE").await.unwrap();

    let router = d.serve(2).await;
    let resolver = router.resolver.clone();
    let base = router.base();

    // Resolution: one tenant cached, then all of them.
    let one = hits(&resolver, &slugs[..1]).await;
    let before = rss();
    let loaded = Instant::now();
    let resolver2 = resolver.clone();
    futures_util::stream::iter(slugs.clone())
        .map(|slug| {
            let resolver = resolver2.clone();
            async move { resolver.resolve(&slug).await.unwrap() }
        })
        .buffer_unordered(16)
        .for_each(|r| {
            assert!(r.is_some());
            async {}
        })
        .await;
    let load_time = loaded.elapsed();
    let after = rss();
    let per_tenant = (after - before) / TENANTS as f64;
    // Rounds: the resolver with 1 and with every tenant looked up, and a bare map of 1
    // and of every key, alternating.
    let (mut one_p99, mut all_p99, mut bare_one_p99, mut bare_all_p99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut all = hits(&resolver, &slugs).await;
    for _ in 0..HIT_ROUNDS {
        one_p99.push(hits(&resolver, &slugs[..1]).await.p99_ms * 1000.0);
        all = hits(&resolver, &slugs).await;
        all_p99.push(all.p99_ms * 1000.0);
        bare_one_p99.push(bare(&slugs[..1]).p99_ms * 1000.0);
        bare_all_p99.push(bare(&slugs).p99_ms * 1000.0);
    }
    let per_round = |a: &[f64], b: &[f64]| -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| x / y.max(1e-6)).collect()
    };

    // The admin API's tenant pages: the first, then following the cursor deep in.
    let admin = &d.settings.auth.admin;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = issue_hs256(
        admin.hs256_secret.as_ref().unwrap(),
        &Claims {
            sub: "bench".into(),
            tenant: None,
            exp: now + 3600,
            iss: admin.issuer.clone(),
            aud: admin.audience.clone(),
            nbf: None,
            iat: Some(now),
            scope: Some("admin".into()),
            tenant_id: None,
        },
    )
    .unwrap();
    let http = reqwest::Client::new();
    // One page untimed: the router's catalog connections open.
    http.get(format!("{base}/admin/v1/fleet/tenants?limit=100"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..PAGES {
        let mut url = format!("{base}/admin/v1/fleet/tenants?limit=100");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let t = Instant::now();
        let page: serde_json::Value = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages.push(t.elapsed());
        assert_eq!(page["items"].as_array().map(Vec::len), Some(100));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    let mut searched = Vec::new();
    for i in 0..PAGES {
        let t = Instant::now();
        let r = http
            .get(format!(
                "{base}/admin/v1/fleet/tenants?limit=100&q=x0{}",
                i % 10
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        searched.push(t.elapsed());
    }
    let pages = Summary::new("admin tenant list, a page of 100", &pages, Duration::ZERO);
    let searched = Summary::new(
        "admin tenant list, searched, a page",
        &searched,
        Duration::ZERO,
    );

    // `migrate plan` and `tenant list` over every tenant (after the memory figures: the
    // lists they read would blur them).
    let mut plan_times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let plan = tenantry_migrate::fleet::plan(&d.catalog, &tenantry_bench::templates_dir())
            .await
            .unwrap();
        plan_times.push(t.elapsed());
        assert_eq!(
            plan.pending.len(),
            0,
            "every tenant is at the template's version"
        );
    }
    let plan = Summary::new("migrate plan, 100,000 tenants", &plan_times, Duration::ZERO);
    let mut list_times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let all = d.provisioner.list_tenants(None).await.unwrap();
        list_times.push(t.elapsed());
        assert_eq!(all.len(), TENANTS);
    }
    let list = Summary::new("tenant list, 100,000 tenants", &list_times, Duration::ZERO);

    router.stop().await;

    Report {
        name: "scale".into(),
        notes: vec![
            format!("{TENANTS} tenants in the catalog (rows only, one server), one throwaway cluster; times over real HTTP where it is the admin API"),
            format!(
                "resolving all {TENANTS} tenants from the catalog (16 at a time) took {:.1} s; RSS {:.1} MB before, {:.1} MB after: {:.0} bytes per cached idle tenant (goal ≤ 10,240)",
                load_time.as_secs_f64(),
                before / 1e6,
                after / 1e6,
                per_tenant
            ),
            format!(
                "cache-hit resolution, first round: 1 tenant cached p50 {:.2} µs, p99 {:.2} µs; {TENANTS} cached p50 {:.2} µs, p99 {:.2} µs",
                one.p50_ms * 1000.0,
                one.p99_ms * 1000.0,
                all.p50_ms * 1000.0,
                all.p99_ms * 1000.0
            ),
            format!(
                "cache-hit resolution p99 over {HIT_ROUNDS} rounds (median [range], µs): 1 cached {}, {TENANTS} cached {}; a bare HashMap lookup of 1 key {}, of {TENANTS} keys {}",
                spread(&mut one_p99.clone()),
                spread(&mut all_p99.clone()),
                spread(&mut bare_one_p99.clone()),
                spread(&mut bare_all_p99.clone())
            ),
        ],
        scenarios: vec![pages.clone(), searched.clone(), plan.clone(), list.clone()],
        ratios: vec![
            Ratio {
                name: "admin tenant page p99 (ms)".into(),
                value: pages.p99_ms,
                meaning: "goal < 100 ms".into(),
                ..Default::default()
            },
            Ratio {
                name: "migrate plan, median (s)".into(),
                value: plan.p50_ms / 1000.0,
                meaning: "goal ≤ 2 s".into(),
                ..Default::default()
            },
            Ratio {
                name: "bytes per cached idle tenant (KB)".into(),
                value: per_tenant / 1024.0,
                meaning: "goal ≤ 10 KB".into(),
                ..Default::default()
            },
            Ratio::of_rounds(
                "resolution p99, 100,000 / 1 cached",
                &per_round(&all_p99, &one_p99),
                "goal: unchanged (about 1)",
            ),
            Ratio::of_rounds(
                "bare HashMap p99, 100,000 / 1 key",
                &per_round(&bare_all_p99, &bare_one_p99),
                "what the memory hierarchy alone costs",
            ),
            Ratio::of_rounds(
                "resolution p99 / bare HashMap p99, 100,000",
                &per_round(&all_p99, &bare_all_p99),
                "the resolver's own cost at that size",
            ),
        ],
    }
}

fn main() {
    tenantry_bench::main(run());
}

//! The router's hot path: `GET /v1/tasks/{id}` over real HTTP, against a baseline run in
//! the same process — a bare actix-web + deadpool handler running the same query on one
//! database ([`baseline`]; also over 100 databases, the most any router could serve
//! there). Scenarios: 1 tenant; 100 tenants; 1,000 tenants with Zipf-skewed traffic
//! under a 64-connection budget, against its ceiling and against the ideal, with and
//! without HTTP ([`ideal`]). Also: the cache-hit resolution path (micro-benchmark)
//! and a cold tenant's first request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantry_bench::{spread, Deployment, Ratio, Report, Summary};
use tenantry_provision::CreateTenant;
use tenantry_router::auth::{issue_hs256, Claims};
use tenantry_testkit::TestCluster;
use uuid::Uuid;

#[path = "router/baseline.rs"]
mod baseline;
#[path = "router/cold.rs"]
mod cold;
#[path = "router/cpu.rs"]
mod cpu;
#[path = "router/ideal.rs"]
mod ideal;
#[path = "router/load.rs"]
mod load;
#[path = "router/misses.rs"]
mod misses;

use cold::{timed_get, Parts};
use load::{load, sampler, Run};
use misses::{connection_opens, permits_in_transit, zipf, zipf_top_share, zipf_top_share_mean};

/// The scenario's query, as the router's `GET /v1/tasks/{id}` runs it: the bare handlers,
/// the cold parts and the open loop run the same.
const TASK_BY_ID: &str = "SELECT id, user_id, agent, title, input, status, output, cost_cents, created_at, updated_at FROM tasks WHERE id = $1";
const TENANTS: usize = 1000;
/// Every scenario (the baseline's too) runs this long before it is measured: pools fill
/// and connections open, so the figures are the steady state.
const WARM_UP: Duration = Duration::from_secs(1);
/// The 1-tenant and 100-tenant scenarios, the baseline and the bare handler run in this
/// many rounds of `ROUND`, alternating: on a noisy day of the VM a single 2 s round of
/// them ranged 0.54–0.90× the baseline, and a median of nine moves less than one of five.
const ROUNDS: usize = 9;
/// The 1,000-tenant scenario, its open loops and its ideals run in this many rounds of
/// `ZIPF_ROUND`.
const ZIPF_ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_secs(2);
/// The 1,000-tenant rounds (the router's, the open loops', the ideals') are longer: a
/// 2 s round of that scenario serves under two thousand requests on this machine, three
/// in ten of them misses that queue for a turn (up to about 140 ms at the p99), so each
/// round weighs a few hundred misses; at 6 s, three times as many.
const ZIPF_ROUND: Duration = Duration::from_secs(6);
/// Cold first requests: this many runs over this many tenants each; 5 × 19 = 95 stay
/// within the budget of 100, so none of them waits for another tenant's connection to
/// close (that case is measured apart, over `COLD_FULL` more).
const COLD_RUNS: usize = 5;
const COLD_PER_RUN: usize = 19;
/// Cold first requests at a full budget: each closes another tenant's idle connection
/// before it opens its own.
const COLD_FULL: usize = 25;
/// The budget of the 1- and 100-tenant scenarios (and of the cold requests).
const BUDGET: usize = 100;
/// The budget of the 1,000-tenant scenario.
const ZIPF_BUDGET: usize = 64;
const CLIENTS: usize = 32;
/// The sessions a scenario's peak counts: the router's, or a bare handler's.
const ROUTER_APP: &str = "tenantry-router";
const BASELINE_APP: &str = "bench-baseline";
const BARE_APP: &str = "bench-bare-100";
const WORKERS: usize = 2;

struct Tenant {
    token: String,
    task: Uuid,
    database: String,
    role: String,
    password: String,
}

/// Each run's figure, in run order, as "1.0, 2.0, …" (ms).
fn in_order(values: &[f64]) -> String {
    values
        .iter()
        .map(|ms| format!("{ms:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

async fn run() -> Report {
    // Room for the router's 100 tenant connections, the bare handler's 100 and the rest.
    let pg = TestCluster::start_with_unix_socket_and_max_connections(300);
    // A lone router leases the server's whole budget: 100 here, for the 1 and 100
    // tenant scenarios (as many as tenants); 64 for the 1,000-tenant one (set below).
    let d = Deployment::new(
        &pg,
        &[
            ("TENANTRY__HTTP__BIND", "127.0.0.1:0"),
            (
                "TENANTRY__PLANS__ENTERPRISE__REQUESTS_PER_MINUTE",
                "100000000",
            ),
            ("TENANTRY__ROUTER__POOL_WAIT_MS", "5000"),
            ("TENANTRY__ROUTER__HEARTBEAT_S", "1"),
        ],
        tenantry_bench::templates_dir(),
        BUDGET as u32,
    )
    .await;
    let (settings, provisioner) = (&d.settings, &d.provisioner);

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
    let (baseline_handle, baseline_base) =
        baseline::one_database(&pg, &tenants[0].database, BASELINE_APP);
    let base_requests = Arc::new(vec![(
        format!("{baseline_base}/tasks/{}", tenants[0].task),
        tenants[0].token.clone(),
    )]);
    // The bare handler over the 100-tenant scenario's databases, a connection each, as
    // the tenant's role. Its connections stay open between its turns, as the router's
    // do: each turn measures serving, not opening 100 sessions.
    let bare_pools: Vec<_> = tenants[..100]
        .iter()
        .map(|t| baseline::pool(&pg, &t.database, (&t.role, &t.password), 1, BARE_APP))
        .collect();
    let (bare_handle, bare_base) = baseline::databases(bare_pools.clone());
    let bare_requests = Arc::new(
        tenants[..100]
            .iter()
            .enumerate()
            .map(|(n, t)| (format!("{bare_base}/tasks/{n}/{}", t.task), t.token.clone()))
            .collect::<Vec<_>>(),
    );

    let router = d.serve(WORKERS).await;
    let resolver = router.resolver.clone();
    let pools = router.pools.clone();
    // Connections opened and evicted so far (summed over servers).
    let churn = move || {
        pools
            .usage()
            .iter()
            .fold((0, 0), |(o, e), u| (o + u.opened, e + u.evicted))
    };
    let base_url = router.base();
    let requests: Arc<Vec<(String, String)>> = Arc::new(
        tenants
            .iter()
            .map(|t| (format!("{base_url}/v1/tasks/{}", t.task), t.token.clone()))
            .collect(),
    );

    // Cold first requests: five runs, each over tenants nobody has asked for yet, each
    // followed by the same over as many other cold tenants with no router: the parts of
    // a cold request timed one by one, and the server's own share of it.
    let http = reqwest::Client::new();
    let mut cold = Vec::new();
    let (mut cold_p99, mut alone_p99, mut over_alone) = (Vec::new(), Vec::new(), Vec::new());
    let mut parts = Parts::default();
    let parts_first = TENANTS - 2 * COLD_RUNS * COLD_PER_RUN;
    for run in 0..COLD_RUNS {
        let first = TENANTS - COLD_RUNS * COLD_PER_RUN + run * COLD_PER_RUN;
        let mut samples = Vec::new();
        for (url, auth) in &requests[first..first + COLD_PER_RUN] {
            samples.push(timed_get(&http, url, auth).await);
        }
        let p99 = Summary::new("", &samples, Duration::ZERO).p99_ms;
        cold_p99.push(p99);
        cold.extend(samples);
        let first = parts_first + run * COLD_PER_RUN;
        let run_parts =
            Parts::measure(&pg, &resolver, &tenants[first..first + COLD_PER_RUN], first).await;
        let alone = Summary::new("", &run_parts.server_alone(), Duration::ZERO).p99_ms;
        alone_p99.push(alone);
        over_alone.push(p99 / alone);
        parts.add(run_parts);
    }
    let cold = Summary::new("cold tenant: first request", &cold, Duration::ZERO);
    let alone = Summary::new(
        "cold tenant, the server alone: TCP, start-up, first query",
        &parts.server_alone(),
        Duration::ZERO,
    );
    // Cold requests once the budget is full (the first few fill it, unmeasured): each
    // waits for an idle connection of another tenant to close.
    let fill = BUDGET.saturating_sub(COLD_RUNS * COLD_PER_RUN);
    let full_first = parts_first - fill - COLD_FULL;
    let mut at_full = Vec::new();
    for (k, (url, auth)) in requests[full_first..parts_first].iter().enumerate() {
        let took = timed_get(&http, url, auth).await;
        if k >= fill {
            at_full.push(took);
        }
    }
    let cold_full = Summary::new(
        "cold tenant at a full budget: first request",
        &at_full,
        Duration::ZERO,
    );
    // Let those pools go quiet, so the next scenario's pool gets the budget's full share.
    tokio::time::sleep(Duration::from_millis(3500)).await;

    // The baseline, 1 tenant and 100 tenants take turns, round after round, so a drift
    // of this shared machine (autovacuum visiting the new databases, say) weighs on all.
    let (mut base, mut one, mut hundred) = (Run::default(), Run::default(), Run::default());
    let mut bare = Run::default();
    let (mut one_ratios, mut hundred_ratios) = (Vec::new(), Vec::new());
    let (mut bare_ratios, mut hundred_bare_ratios) = (Vec::new(), Vec::new());
    let mut one_rates = Vec::new();
    for _ in 0..ROUNDS {
        let b = load(
            "baseline: actix + deadpool, 1 database",
            ROUND,
            base_requests.clone(),
            Arc::new(|_| 0),
            &pg,
            &|| (0, 0),
            Some(BASELINE_APP),
        )
        .await;
        let o = load(
            "tenantry: 1 tenant",
            ROUND,
            requests.clone(),
            Arc::new(|_| 0),
            &pg,
            &churn,
            Some(ROUTER_APP),
        )
        .await;
        let h = load(
            "tenantry: 100 tenants, uniform",
            ROUND,
            requests.clone(),
            Arc::new(|i| (i * 37) % 100),
            &pg,
            &churn,
            Some(ROUTER_APP),
        )
        .await;
        let spread_out = load(
            "baseline: actix + deadpool, 100 databases",
            ROUND,
            bare_requests.clone(),
            Arc::new(|i| (i * 37) % 100),
            &pg,
            &|| (0, 0),
            Some(BARE_APP),
        )
        .await;
        one_ratios.push(o.per_second() / b.per_second());
        one_rates.push(o.per_second());
        hundred_ratios.push(h.per_second() / b.per_second());
        bare_ratios.push(spread_out.per_second() / b.per_second());
        hundred_bare_ratios.push(h.per_second() / spread_out.per_second());
        base.add(b);
        one.add(o);
        hundred.add(h);
        bare.add(spread_out);
    }
    baseline_handle.stop(true).await;
    bare_handle.stop(true).await;
    for pool in &bare_pools {
        pool.close();
    }
    d.catalog
        .client()
        .await
        .unwrap()
        .execute(
            "UPDATE servers SET max_connections = $1",
            &[&(ZIPF_BUDGET as i32)],
        )
        .await
        .unwrap();
    // The next heartbeat (every second here) shrinks the budget to 64, closing idle
    // connections over it. (Idle connections otherwise live the default 60 s: the
    // rounds' turns do not close them.)
    tokio::time::sleep(Duration::from_millis(3500)).await;

    // The 1,000-tenant scenario and its ceiling take turns: what a request without an
    // open connection costs, and so the most any router could serve here. Even a
    // perfect cache of 64 connections (the 64 most popular tenants) opens one for every
    // request to the others.
    let miss = 1.0 - zipf_top_share(TENANTS, ZIPF_BUDGET);
    // The ideal: the same traffic with no router and no HTTP, a connection kept for each
    // of the 64 most popular tenants and the misses opened 8 at a time beyond the budget.
    let everyone: Arc<Vec<ideal::Target>> = Arc::new(
        tenants
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
    );
    // The open loop's tenants: none of the 100-tenant scenario's, which are open.
    let targets = everyone[100..].to_vec();
    let kept = Arc::new(ideal::Kept::open(&pg, &everyone[..ZIPF_BUDGET]).await);
    // The ideal behind a bare actix handler, for the same clients as the router's; and
    // within the router's budget: as many opened at a time as it has turns, the rest
    // of the budget kept.
    let turns = settings.router.connects_at_once;
    let behind_http = |keep, parallel| {
        let (handle, base) =
            ideal::over_http(&pg, (kept.clone(), keep), everyone.clone(), parallel);
        let requests: Arc<Vec<(String, String)>> = Arc::new(
            tenants
                .iter()
                .enumerate()
                .map(|(k, t)| (format!("{base}/tasks/{k}/{}", t.task), t.token.clone()))
                .collect(),
        );
        (handle, requests)
    };
    let (ideal_handle, ideal_requests) = behind_http(ZIPF_BUDGET, 8);
    let (within_handle, within_requests) = behind_http(ZIPF_BUDGET - turns, turns);
    // The same within the budget at other numbers of turns: whether another split of the
    // budget between connections kept and turns to open serves more.
    let mut other_turns: Vec<_> = [2, 8]
        .into_iter()
        .filter(|&t| t != turns)
        .map(|t| (t, behind_http(ZIPF_BUDGET - t, t), Vec::new()))
        .collect();
    let (mut over_http, mut within) = (Run::default(), Run::default());
    let (mut over_http_ratios, mut http_cost_ratios) = (Vec::new(), Vec::new());
    let (mut within_ratios, mut budget_cost_ratios) = (Vec::new(), Vec::new());
    let mut within_ceiling_ratios = Vec::new();
    let (mut ideal_rates, mut ideal_ceiling_ratios, mut ideal_ratios) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut ideal_cpu = Vec::new();
    let mut thousand = Run::default();
    let (mut open_samples, mut open_rates) = (Vec::new(), Vec::new());
    let mut socket_rates = Vec::new();
    let (mut ceiling_ratios, mut miss_ratios) = (Vec::new(), Vec::new());
    let mut open_ratios = Vec::new();
    // A hit costs what a request of the 1-tenant scenario does: with the misses at the
    // measured open rate, the most the machine could serve.
    let hit_rate = median(&one_rates);
    let mut cpu_ratios = Vec::new();
    let (mut in_transit, mut kept_miss_ratios) = (Vec::new(), Vec::new());
    for _ in 0..ZIPF_ROUNDS {
        let transit = tokio::spawn(permits_in_transit(
            router.pools.clone(),
            WARM_UP,
            ZIPF_ROUND,
        ));
        let z = load(
            "tenantry: 1,000 tenants, Zipf 1.1, budget 64",
            ZIPF_ROUND,
            requests.clone(),
            zipf(TENANTS),
            &pg,
            &churn,
            Some(ROUTER_APP),
        )
        .await;
        // The rounds outside `load` pay for its sampler's queries as its rounds do.
        let sessions = sampler(&pg, None).await;
        let (rate, samples) = connection_opens(&pg, false, targets.clone(), 8, ZIPF_ROUND).await;
        let (socket_rate, _) = connection_opens(&pg, true, targets.clone(), 8, ZIPF_ROUND).await;
        eprintln!("the ideal: 1,000 Zipf without a router…");
        let (best, cpu) = ideal::serve(&pg, &kept, &everyone, zipf(TENANTS), 8, ZIPF_ROUND).await;
        sessions.stop().await;
        ideal_cpu.push(cpu);
        ideal_rates.push(best);
        ideal_ceiling_ratios.push(best / (rate / miss));
        ideal_ratios.push(z.per_second() / best);
        let h = load(
            "the ideal over HTTP",
            ZIPF_ROUND,
            ideal_requests.clone(),
            zipf(TENANTS),
            &pg,
            &|| (0, 0),
            None,
        )
        .await;
        let w = load(
            "the ideal over HTTP, within the budget",
            ZIPF_ROUND,
            within_requests.clone(),
            zipf(TENANTS),
            &pg,
            &|| (0, 0),
            None,
        )
        .await;
        over_http_ratios.push(z.per_second() / h.per_second());
        http_cost_ratios.push(h.per_second() / best);
        within_ratios.push(z.per_second() / w.per_second());
        within_ceiling_ratios.push(w.per_second() / (rate / miss));
        for (t, (_, requests), ratios) in &mut other_turns {
            let o = load(
                &format!("the ideal over HTTP, within the budget, {t} at a time"),
                ZIPF_ROUND,
                requests.clone(),
                zipf(TENANTS),
                &pg,
                &|| (0, 0),
                None,
            )
            .await;
            ratios.push(o.per_second() / (rate / miss));
        }
        budget_cost_ratios.push(w.per_second() / h.per_second());
        over_http.add(h);
        within.add(w);
        socket_rates.push(socket_rate);
        ceiling_ratios.push(z.per_second() / (rate / miss));
        cpu_ratios.push(z.per_second() * (miss / rate + (1.0 - miss) / hit_rate));
        let opened_share = z.opened as f64 / z.samples.len().max(1) as f64;
        miss_ratios.push(opened_share / miss);
        let transit = transit.await.unwrap();
        let kept = (ZIPF_BUDGET as f64 - transit).max(1.0);
        kept_miss_ratios.push(opened_share / (1.0 - zipf_top_share_mean(TENANTS, kept)));
        in_transit.push(transit);
        open_ratios.push(z.opened as f64 / z.wall.as_secs_f64().max(1e-9) / rate);
        open_rates.push(rate);
        open_samples.extend(samples);
        thousand.add(z);
    }
    ideal_handle.stop(true).await;
    within_handle.stop(true).await;
    for (_, (handle, _), _) in &other_turns {
        handle.stop(true).await;
    }
    drop(kept);
    let opens = Summary::new(
        "new tenant connection + first query (8 at a time)",
        &open_samples,
        Duration::ZERO,
    );

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

    router.stop().await;

    let notes = vec![
        format!(
            "{CLIENTS} concurrent HTTP clients (reqwest, keep-alive) in this process, {WORKERS} server workers, one throwaway cluster; {ROUNDS} alternating rounds of {} s per scenario, each after {} s of warm-up: baseline, 1 tenant, 100 tenants (budget 100), the bare handler over the 100 tenants' databases; then {ZIPF_ROUNDS} rounds of {} s: 1,000 Zipf (budget 64), the connection-open rate and the ideal",
            ROUND.as_secs(),
            WARM_UP.as_secs(),
            ZIPF_ROUND.as_secs()
        ),
        format!(
            "failed requests: baseline {}, 1 tenant {}, 100 tenants {}, 1,000 Zipf {}",
            base.failed, one.failed, hundred.failed, thousand.failed
        ),
        format!(
            "peak sessions on the server (pg_stat_activity, each scenario's own): baseline {}, 1 tenant {}, 100 tenants {} (budget 100), bare handler over 100 databases {}, 1,000 Zipf {} (budget 64)",
            base.peak, one.peak, hundred.peak, bare.peak, thousand.peak
        ),
        format!(
            "router connections opened / idle ones evicted in the measured time: 1 tenant {} / {}; 100 tenants {} / {}; 1,000 Zipf {} / {} ({:.1}% of its requests opened one; a perfect cache of 64: {:.1}%)",
            one.opened, one.evicted, hundred.opened, hundred.evicted, thousand.opened, thousand.evicted,
            100.0 * thousand.opened as f64 / thousand.samples.len().max(1) as f64,
            miss * 100.0
        ),
        format!(
            "1,000 Zipf: budget permits held by connections being opened or closed, mean per round {} of {ZIPF_BUDGET}; a perfect cache of the rest would open one for {:.1}% of requests (at the median)",
            spread(&mut in_transit.clone()),
            100.0 * (1.0 - zipf_top_share_mean(TENANTS, ZIPF_BUDGET as f64 - median(&in_transit)))
        ),
        format!(
            "a new tenant connection (open, SCRAM, first query, close), 8 at a time: {} per s per round, median [range]; the 1,000-tenant ceiling is that rate / {:.3} (the share of Zipf 1.1 requests outside the 64 most popular tenants)",
            spread(&mut open_rates.clone()),
            miss
        ),
        format!(
            "the same over the server's Unix socket: {} per s per round; ceilings (median): TCP {:.0} req/s, Unix socket {:.0} req/s",
            spread(&mut socket_rates.clone()),
            median(&open_rates) / miss,
            median(&socket_rates) / miss
        ),
        format!(
            "the ideal (the same Zipf traffic from {CLIENTS} loops in this process, no HTTP, no router; a connection kept for each of the {ZIPF_BUDGET} most popular tenants, every other request on a connection of its own opened 8 at a time beyond the budget): {} req/s per round",
            spread(&mut ideal_rates.clone())
        ),
        format!(
            "the machine's CPU in the measured time (median of rounds): baseline {}; 1 tenant {}; 100 tenants {}; bare handler over 100 databases {}; 1,000 Zipf {}; the ideal {}; the ideal over HTTP {}; within the budget {}",
            cpu::Round::describe(&base.cpu),
            cpu::Round::describe(&one.cpu),
            cpu::Round::describe(&hundred.cpu),
            cpu::Round::describe(&bare.cpu),
            cpu::Round::describe(&thousand.cpu),
            cpu::Round::describe(&ideal_cpu),
            cpu::Round::describe(&over_http.cpu),
            cpu::Round::describe(&within.cpu)
        ),
        format!(
            "cold first request: p99 per run (of {COLD_PER_RUN} tenants) {}; the median of {COLD_RUNS} runs is the figure; in run order {}",
            spread(&mut cold_p99.clone()),
            in_order(&cold_p99)
        ),
        format!(
            "cold first request at a full budget (each closes another tenant's idle connection first): p50 {:.1} ms, p99 {:.1} ms of {COLD_FULL}",
            cold_full.p50_ms, cold_full.p99_ms
        ),
        format!(
            "where a cold request's time goes (median [p99] of {} cold tenants, each part alone): {}",
            COLD_RUNS * COLD_PER_RUN,
            parts.describe()
        ),
        format!(
            "cold first request with no router (TCP, start-up + SCRAM, first query): p99 per run {}; in run order {}",
            spread(&mut alone_p99.clone()),
            in_order(&alone_p99)
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
    let bare = bare.summary("baseline: actix + deadpool, 100 databases");
    let thousand = thousand.summary("tenantry: 1,000 tenants, Zipf 1.1, budget 64");
    let over_http = over_http.summary("the ideal over HTTP: 1,000 Zipf, a bare handler");
    let within = within.summary(&format!(
        "the ideal over HTTP within the budget ({} kept, {turns} at a time)",
        ZIPF_BUDGET - turns
    ));
    let mut ratios = vec![
        Ratio::of_rounds(
            "1 tenant / baseline (req/s)",
            &one_ratios,
            "goal ≥ 1.0",
        ),
        Ratio::of_rounds(
            "100 tenants / baseline (req/s)",
            &hundred_ratios,
            "goal ≥ 0.9",
        ),
        Ratio::of_rounds(
            "bare handler, 100 databases / baseline",
            &bare_ratios,
            "the same handler, a connection per database: what spreading the queries over 100 databases and backends costs the machine",
        ),
        Ratio::of_rounds(
            "100 tenants / bare handler, 100 databases",
            &hundred_bare_ratios,
            "the router against the most any router could serve over those databases",
        ),
        Ratio::of_rounds(
            "1,000 Zipf / its ceiling (req/s)",
            &ceiling_ratios,
            "goal ≥ 0.9: the ceiling is what a perfect 64-connection cache could serve at the measured open rate",
        ),
        Ratio::of_rounds(
            "the ideal over HTTP within the budget / the ceiling",
            &within_ceiling_ratios,
            "the most a router behind HTTP and within the budget could serve of the ceiling: a cache that knows the popular tenants beforehand, behind a bare handler, kept to the router's budget and turns",
        ),
    ];
    ratios.extend(other_turns.iter().map(|(t, _, rounds)| {
        Ratio::of_rounds(
            format!(
                "the same, {t} at a time ({} kept) / the ceiling",
                ZIPF_BUDGET - t
            ),
            rounds,
            "the bounded ideal with another split of the budget between connections kept and turns to open",
        )
    }));
    ratios.extend([
        Ratio::of_rounds(
            "the ideal / the ceiling",
            &ideal_ceiling_ratios,
            "what no router at all serves of the ceiling: the hits are not free",
        ),
        Ratio::of_rounds(
            "1,000 Zipf / the ideal",
            &ideal_ratios,
            "the router and its HTTP against the ideal, which keeps more open than the budget allows",
        ),
        Ratio::of_rounds(
            "the ideal over HTTP / the ideal",
            &http_cost_ratios,
            "the same ideal behind a bare actix handler, for the same 32 HTTP clients: what HTTP alone costs it",
        ),
        Ratio::of_rounds(
            "1,000 Zipf / the ideal over HTTP",
            &over_http_ratios,
            "the router against the ideal behind the same HTTP: what the router's own work, its budget and its turns cost",
        ),
        Ratio::of_rounds(
            "the ideal over HTTP within the budget / over it",
            &budget_cost_ratios,
            "the ideal over HTTP kept to the router's budget: the budget less its turns kept open, as many opened at a time as it has turns",
        ),
        Ratio::of_rounds(
            "1,000 Zipf / the ideal over HTTP within the budget",
            &within_ratios,
            "the router against a cache that knows the popular tenants beforehand, in the same budget and turns: what the router's own work costs",
        ),
        Ratio::of_rounds(
            "1,000 Zipf / its ceiling with the hits' cost",
            &cpu_ratios,
            "the hits served at the 1-tenant rate, the misses at the open rate: 1 / (m / opens + (1 - m) / hits)",
        ),
        Ratio::of_rounds(
            "1,000 Zipf: opened / a perfect cache's misses",
            &miss_ratios,
            "goal ≤ 1.15",
        ),
        Ratio::of_rounds(
            "1,000 Zipf: opened / a perfect cache of what can stay open",
            &kept_miss_ratios,
            "the same against a perfect cache of the budget less the permits held by connections being opened or closed (mean per round in the notes): no router can keep those open",
        ),
        Ratio::of_rounds(
            "1,000 Zipf: opens per s / the measured open rate",
            &open_ratios,
            "the ceiling ratio is about this over the misses ratio: the rest of the CPU serves the hits, and a backend that served many queries costs more to end than one that served one",
        ),
        Ratio::of_rounds(
            "cold first request p99 (per run)",
            &cold_p99,
            "goal ≤ 10 ms (a median of runs, not a ratio)",
        )
        .in_unit("ms"),
        Ratio::of_rounds(
            "cold first request p99, the server alone (per run)",
            &alone_p99,
            "the same p99 with no router, HTTP or catalog: the server's TCP connect, start-up and first query, on as many other cold tenants after each run",
        )
        .in_unit("ms"),
        Ratio::of_rounds(
            "cold first request p99 / the server alone's",
            &over_alone,
            "per run: what the router adds to the server's own cold start",
        ),
    ]);
    Report {
        name: "router".into(),
        notes,
        scenarios: vec![
            base, one, hundred, bare, thousand, over_http, within, cold, alone, cold_full, opens,
            hit,
        ],
        ratios,
    }
}

fn main() {
    tenantry_bench::main(run());
}

//! Priority processing: tenants of the three plans under a contended connection budget,
//! each request taking a connection from its tenant's pool (`tenantry_pools`, as the
//! router does) and running a query. With priority (the default deferral bound) and
//! without it (arrival order), in alternating rounds in the same process, each round on
//! fresh pools; p50 and p99 per plan, with the median and range of the rounds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use tenantry_bench::{spread, Deployment, Ratio, Report, Summary};
use tenantry_pools::{PoolConfig, Pools, Target};
use tenantry_provision::CreateTenant;
use tenantry_testkit::TestCluster;

const PLANS: [&str; 3] = ["free", "pro", "enterprise"];
/// Tenants of each plan.
const PER_PLAN: usize = 30;
/// The server's budget: far fewer connections than tenants, so most requests wait for a
/// permit (another tenant's idle connection closed to make room).
const BUDGET: usize = 16;
const CLIENTS: usize = 32;
const ROUNDS: usize = 3;
const RUN: Duration = Duration::from_secs(3);
const WARM_UP: Duration = Duration::from_secs(1);

/// One round's latencies, per plan, and the requests that got no connection.
struct Round {
    samples: BTreeMap<&'static str, Vec<Duration>>,
    failed: usize,
    wall: Duration,
}

async fn round(targets: Arc<Vec<(&'static str, Target)>>, max_defer: Duration) -> Round {
    let pools = Pools::new(
        PoolConfig {
            priority_max_defer: max_defer,
            ..PoolConfig::default()
        },
        BUDGET,
    );
    pools.set_budget(1, BUDGET);
    let started = Instant::now() + WARM_UP;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (pools, targets) = (pools.clone(), targets.clone());
            tokio::spawn(async move {
                let mut samples: Vec<(&'static str, Duration)> = Vec::new();
                let mut failed = 0;
                let mut i = c * 7919;
                loop {
                    let t = Instant::now();
                    if t >= started + RUN {
                        break;
                    }
                    // Uniform over the tenants, in a fixed pseudo-random order.
                    let pick = (i as u64)
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        .rotate_left(17);
                    i += 1;
                    let (plan, target) = &targets[(pick % targets.len() as u64) as usize];
                    match pools.get(target).await {
                        Ok(conn) => {
                            conn.query_one("SELECT count(*) FROM tasks", &[])
                                .await
                                .unwrap();
                            drop(conn);
                            if t >= started {
                                samples.push((plan, t.elapsed()));
                            }
                        }
                        Err(_) => failed += 1,
                    }
                }
                (samples, failed)
            })
        })
        .collect();
    let mut out = Round {
        samples: BTreeMap::new(),
        failed: 0,
        wall: Duration::ZERO,
    };
    for c in clients {
        let (samples, failed) = c.await.unwrap();
        for (plan, d) in samples {
            out.samples.entry(plan).or_default().push(d);
        }
        out.failed += failed;
    }
    out.wall = Instant::now().saturating_duration_since(started);
    // The round's connections close with its pools.
    for (_, t) in targets.iter() {
        pools.drop_tenant(t.tenant);
    }
    out
}

/// One mode's figures for one plan: every sample, and each round's p50 and p99.
#[derive(Default)]
struct Figures {
    samples: Vec<Duration>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

async fn run() -> Report {
    let pg = TestCluster::start();
    let deployment = Deployment::new(&pg, &[], tenantry_bench::templates_dir(), 200).await;
    let provisioner = &deployment.provisioner;
    let plans = deployment.settings.plans().expect("plans");
    let max_defer = Duration::from_millis(deployment.settings.router.priority_max_defer_ms);

    let slugs: Vec<(&'static str, String)> = (0..PER_PLAN * PLANS.len())
        .map(|i| (PLANS[i % PLANS.len()], format!("p{i}")))
        .collect();
    eprintln!("creating {} tenants…", slugs.len());
    provisioner
        .create_many(
            slugs
                .iter()
                .map(|(plan, slug)| CreateTenant {
                    slug: slug.clone(),
                    plan: Some((*plan).into()),
                    ..Default::default()
                })
                .collect(),
            4,
        )
        .await
        .unwrap();
    let mut targets = Vec::new();
    for (plan, slug) in &slugs {
        let info = provisioner.show_tenant(slug).await.unwrap();
        let password = provisioner.tenant_password(slug).await.unwrap();
        let plan_row = plans.iter().find(|p| p.name == *plan).unwrap();
        targets.push((
            *plan,
            Target {
                tenant: info.id,
                generation: info.generation,
                server: 1,
                host: "127.0.0.1".into(),
                port: pg.port(),
                database: info.database,
                user: format!("tr_{}", info.id.simple()),
                password: secrecy::SecretString::from(password.expose_secret().to_owned()),
                max_size: plan_row.pool_size as usize,
                priority: plan_row.priority,
            },
        ));
    }
    let targets = Arc::new(targets);

    let modes = [("priority", max_defer), ("arrival order", Duration::ZERO)];
    let mut figures: BTreeMap<(usize, &str), Figures> = BTreeMap::new();
    let mut failed = [0usize; 2];
    let mut wall = [Duration::ZERO; 2];
    for r in 0..ROUNDS {
        for (m, (name, defer)) in modes.iter().enumerate() {
            eprintln!("round {}: {name}…", r + 1);
            let round = round(targets.clone(), *defer).await;
            failed[m] += round.failed;
            wall[m] += round.wall;
            for (plan, samples) in round.samples {
                let s = Summary::new("", &samples, round.wall);
                let f = figures.entry((m, plan)).or_default();
                f.p50.push(s.p50_ms);
                f.p99.push(s.p99_ms);
                f.samples.extend(samples);
            }
        }
    }

    let mut scenarios = Vec::new();
    let mut notes = vec![
        format!(
            "{} tenants ({PER_PLAN} per plan), uniform traffic from {CLIENTS} concurrent clients, a budget of {BUDGET} connections; each request takes a connection from its tenant's pool and runs a query; {ROUNDS} rounds of {} s per mode (after {} s of warm-up), alternating, each on fresh pools",
            slugs.len(),
            RUN.as_secs(),
            WARM_UP.as_secs()
        ),
        format!(
            "priority: plans' priorities, a lower one deferring at most {} ms (router.priority_max_defer_ms); arrival order: the bound 0",
            max_defer.as_millis()
        ),
        format!(
            "requests without a connection within 5 s: priority {}, arrival order {}",
            failed[0], failed[1]
        ),
        "per round, median [range] of the rounds:".into(),
    ];
    let mut p99 = BTreeMap::new();
    for (m, (name, _)) in modes.iter().enumerate() {
        for plan in PLANS {
            let label = format!("{name}: {plan}");
            let f = figures.get_mut(&(m, plan)).unwrap();
            let s = Summary::new(&label, &f.samples, wall[m]);
            p99.insert((m, plan), s.p99_ms);
            scenarios.push(s);
            notes.push(format!(
                "  {label:<26} p50 {} ms, p99 {} ms",
                spread(&mut f.p50),
                spread(&mut f.p99)
            ));
        }
    }
    let ratios = PLANS
        .iter()
        .map(|plan| Ratio {
            name: format!("{plan} p99: priority / arrival order"),
            value: p99[&(0, *plan)] / p99[&(1, *plan)],
            meaning: match *plan {
                "free" => "above 1: free waits longer, bounded by the deferral",
                _ => "below 1: served ahead of lower plans",
            }
            .into(),
            ..Default::default()
        })
        .collect();
    Report {
        name: "priority".into(),
        notes,
        scenarios,
        ratios,
    }
}

fn main() {
    tenantry_bench::main(run());
}

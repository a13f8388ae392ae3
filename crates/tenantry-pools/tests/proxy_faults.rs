//! A faulty tenant server, behind a fault-injecting proxy (a real TCP hop), next to a
//! healthy one: only the faulty server's tenants see errors, and they get them within
//! the deadlines, never a hang; the healthy server's tenants are served throughout; once
//! the fault is lifted, service returns and the faulty server's whole budget can be had.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tenantry_pools::{PoolConfig, Pools, ServerUsage, Target};
use tenantry_testkit::proxy::{Fault, FaultProxy};
use tenantry_testkit::TestCluster;

mod support;
use support::{numbered, request};

// Generous: a connection's SCRAM exchange alone can take hundreds of milliseconds in a
// debug build on a loaded 2-core machine, and a healthy server must never miss them.
const WAIT: Duration = Duration::from_secs(1);
const CONNECT: Duration = Duration::from_millis(1_500);
/// Above the sessions' statement timeout (1.5 s).
const ANSWER: Duration = Duration::from_millis(2_500);
/// How long any request may take at most before it counts as a hang: the pool's wait,
/// connect and answer deadlines, plus a generous margin for a loaded machine.
const NO_HANG: Duration = Duration::from_secs(8);
const BUDGET: usize = 4;
const SICK: i64 = 1;
const WELL: i64 = 2;

fn config() -> PoolConfig {
    PoolConfig {
        wait_timeout: WAIT,
        connect_timeout: CONNECT,
        answer_timeout: ANSWER,
        idle_timeout: Duration::from_secs(1),
        session_options: "-c statement_timeout=1500".into(),
        ..PoolConfig::default()
    }
}

fn usage(pools: &Pools, server: i64) -> ServerUsage {
    pools
        .usage()
        .into_iter()
        .find(|u| u.server == server)
        .unwrap()
}

/// A request that must answer, one way or the other, within [`NO_HANG`].
async fn answered(pools: &Pools, target: &Target) -> (Result<(), String>, Duration) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(NO_HANG, request(pools, target))
        .await
        .unwrap_or_else(|_| panic!("a request to {} hung past {NO_HANG:?}", target.user));
    (outcome, started.elapsed())
}

/// Steady traffic on the healthy server's tenants, its latencies collected per phase.
struct Load {
    latencies: Arc<Mutex<Vec<Duration>>>,
    errors: Arc<Mutex<Vec<String>>>,
    served: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(pools: &Pools, well: &[Target]) -> Self {
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::new(AtomicU64::new(0));
        let workers = (0..3)
            .map(|w| {
                let (pools, well) = (pools.clone(), well.to_vec());
                let (latencies, errors, served) =
                    (latencies.clone(), errors.clone(), served.clone());
                tokio::spawn(async move {
                    for i in w.. {
                        let started = Instant::now();
                        match request(&pools, &well[i % well.len()]).await {
                            Ok(()) => {
                                latencies.lock().unwrap().push(started.elapsed());
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => errors.lock().unwrap().push(e),
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Self {
            latencies,
            errors,
            served,
            workers,
        }
    }

    /// The p99 of the latencies since the last call, and how many there were.
    fn phase(&self) -> (Duration, usize) {
        let mut l = std::mem::take(&mut *self.latencies.lock().unwrap());
        l.sort();
        let p99 = l
            .get((l.len() * 99 / 100).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default();
        (p99, l.len())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for w in &self.workers {
            w.abort();
        }
    }
}

/// Waits until the server's books satisfy `check`.
async fn settle(pools: &Pools, server: i64, what: &str, check: impl Fn(&ServerUsage) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check(&usage(pools, server)) {
        assert!(
            Instant::now() < deadline,
            "{what}: {:?}",
            usage(pools, server)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the sick server's tenants must see during the fault (beyond answers in time).
#[derive(Debug, PartialEq)]
enum Sick {
    /// Every request fails.
    AllFail,
    /// Some do (those that need a new connection, say).
    SomeFail,
    /// Answers, whichever they are.
    Answered,
}

/// Runs `fault` on the sick server under load on the well one.
async fn contained(fault: Fault, expect: Sick) {
    let (sick_pg, well_pg) = (TestCluster::start(), TestCluster::start());
    let proxy = FaultProxy::start(("127.0.0.1", sick_pg.port())).unwrap();
    let mut sick = numbered(&sick_pg, "s", BUDGET + 2).await;
    for t in &mut sick {
        t.port = proxy.port();
        t.server = SICK;
    }
    let mut well = numbered(&well_pg, "w", BUDGET).await;
    for t in &mut well {
        t.server = WELL;
    }
    let pools = Pools::new(config(), BUDGET);
    let _reaper = pools.spawn_reaper(Duration::from_millis(200));

    let load = Load::start(&pools, &well);
    // The first second opens the well server's connections: not the steady state.
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.phase();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (before, n_before) = load.phase();

    // Every sick tenant but the last two has a warm connection when the fault starts,
    // and the first is in the middle of a query.
    for t in &sick[..BUDGET - 2] {
        answered(&pools, t).await.0.unwrap();
    }
    let in_flight = {
        let (pools, t) = (pools.clone(), sick[0].clone());
        tokio::spawn(async move {
            let conn = pools.get(&t).await.map_err(|e| e.to_string())?;
            let started = Instant::now();
            let query = conn.batch_execute("SELECT pg_sleep(1)");
            match tokio::time::timeout(NO_HANG + Duration::from_secs(1), query).await {
                Ok(done) => done.map_err(|e| e.to_string()),
                Err(_) => panic!("a query in flight hung past {:?}", started.elapsed()),
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(fault);
    let mut outcomes = Vec::new();
    // The most connections seen being opened at once on the sick server.
    let mut opening = 0;
    let fault_ends = Instant::now() + Duration::from_secs(3);
    while Instant::now() < fault_ends {
        // Every sick tenant at once, more than the budget: the requests that wait for a
        // permit wait behind the ones the fault holds up.
        let tasks: Vec<_> = sick
            .iter()
            .cloned()
            .map(|t| {
                let pools = pools.clone();
                tokio::spawn(async move { answered(&pools, &t).await })
            })
            .collect();
        if matches!(fault, Fault::Blackhole) {
            // Their connects hang until the connect deadline: each holds a permit.
            tokio::time::sleep(Duration::from_millis(200)).await;
            opening = opening.max(usage(&pools, SICK).opening);
        }
        for task in tasks {
            outcomes.push(task.await.expect("a sick request answered in time"));
        }
        // Clients that fail fast come back at a client's pace, not in a hot loop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let in_flight = in_flight
        .await
        .expect("the query in flight answered in time");
    let (during, n_during) = load.phase();

    proxy.set(Fault::PassThrough);
    let lifted = Instant::now();
    let mut back = Duration::ZERO;
    for t in &sick {
        loop {
            if answered(&pools, t).await.0.is_ok() {
                break;
            }
            assert!(
                lifted.elapsed() < Duration::from_secs(15),
                "{} never served again: {:?}",
                t.user,
                usage(&pools, SICK)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        back = back.max(lifted.elapsed());
    }
    let (after, n_after) = load.phase();
    let errors = load.errors.lock().unwrap().clone();
    let served = load.served.load(Ordering::Relaxed);
    drop(load);

    let failed = outcomes.iter().filter(|(o, _)| o.is_err()).count();
    let slowest = outcomes.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let ratio = during.as_secs_f64() / before.as_secs_f64().max(1e-6);
    eprintln!(
        "{fault:?}: sick {failed}/{} failed, slowest answer {slowest:?}; well p99 before {before:?} \
         ({n_before}), during {during:?} ({n_during}), ratio {ratio:.2}, after {after:?} ({n_after}); \
         sick served again {back:?} after the fault was lifted",
        outcomes.len()
    );
    let sample: Vec<_> = outcomes
        .iter()
        .filter_map(|(o, _)| o.clone().err())
        .take(3)
        .collect();
    eprintln!("  sick errors, e.g. {sample:?}; the query in flight: {in_flight:?}");

    // The healthy server's tenants never saw an error and were served in every phase.
    assert!(errors.is_empty(), "the well server failed: {errors:?}");
    assert!(n_before > 0 && n_during > 0 && n_after > 0 && served > 0);
    assert!(!outcomes.is_empty());
    if matches!(fault, Fault::Blackhole) {
        assert!(
            (1..=BUDGET).contains(&opening),
            "connections being opened: {opening}"
        );
    }
    match expect {
        Sick::AllFail => {
            assert_eq!(failed, outcomes.len(), "{outcomes:?}");
            assert!(in_flight.is_err(), "the query in flight failed");
        }
        Sick::SomeFail => assert!(failed > 0, "{outcomes:?}"),
        Sick::Answered => {}
    }

    // Nothing leaked: idle, the sick server's books settle to nothing.
    settle(&pools, SICK, "the sick server's books settle", |u| {
        u.open == 0 && u.evicting == 0 && u.waiting == 0 && u.opening == 0
    })
    .await;
    // And its whole budget can be held at once, by as many tenants.
    whole_budget(&pools, &sick[..BUDGET]).await;
}

/// Holds one connection for each of `targets` at once, every one of them queried.
async fn whole_budget(pools: &Pools, targets: &[Target]) {
    let barrier = Arc::new(tokio::sync::Barrier::new(targets.len()));
    let tasks: Vec<_> = targets
        .iter()
        .cloned()
        .map(|t| {
            let (pools, barrier) = (pools.clone(), barrier.clone());
            tokio::spawn(async move {
                let conn = pools.get(&t).await.map_err(|e| e.to_string())?;
                conn.query_one("SELECT 1", &[])
                    .await
                    .map_err(|e| e.to_string())?;
                // Everyone holds theirs at the same moment.
                tokio::time::timeout(NO_HANG, barrier.wait())
                    .await
                    .map_err(|_| "the others never came".to_owned())?;
                Ok::<_, String>(())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    assert!(
        outcomes.iter().all(Result::is_ok),
        "{outcomes:?}: {:?}",
        usage(pools, SICK)
    );
    let u = usage(pools, SICK);
    assert!(u.open <= BUDGET && u.waiting == 0, "{u:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_on_one_server_slows_only_its_tenants() {
    let lag = Duration::from_millis(150);
    contained(Fault::Latency { up: lag, down: lag }, Sick::Answered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_mid_stream_fail_only_that_servers_tenants() {
    // Open sessions die at the switch (one in the middle of a query), new ones at once.
    contained(Fault::Reset { after_bytes: 0 }, Sick::AllFail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_server_fails_its_tenants_in_time_never_a_hang() {
    contained(Fault::Blackhole, Sick::AllFail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_fail_only_that_servers_tenants() {
    contained(Fault::Refuse, Sick::SomeFail).await;
}

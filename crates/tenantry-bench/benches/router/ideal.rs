//! The most any router could serve of the 1,000-tenant Zipf traffic on this machine,
//! measured rather than computed: no HTTP, no router, and a cache better than a budget
//! allows — a connection kept open for each of the `kept` most popular tenants, and every
//! request to another one served on a connection of its own, opened, queried and closed,
//! `parallel` at a time, on top of those.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantry_testkit::TestCluster;
use tokio::sync::Semaphore;

pub use super::misses::Target;

/// The kept connections of [`serve`], opened once for all its rounds.
pub struct Kept {
    clients: Vec<(tokio_postgres::Client, tokio_postgres::Statement)>,
}

async fn open(pg: &TestCluster, (database, role, password, _): &Target) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(pg.port())
        .dbname(database)
        .user(role)
        .password(password);
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

impl Kept {
    /// A connection each, the scenario's query prepared, for `targets` (the most popular
    /// first).
    pub async fn open(pg: &TestCluster, targets: &[Target]) -> Self {
        let mut clients = Vec::new();
        for t in targets {
            let client = open(pg, t).await;
            let st = client.prepare(super::TASK_BY_ID).await.unwrap();
            clients.push((client, st));
        }
        Kept { clients }
    }
}

/// Requests per second that ended inside `run_for`, and the machine's CPU then, (after the scenarios' warm-up),
/// served by as many concurrent loops as the scenarios have HTTP clients, each choosing
/// its tenant with `pick` among `targets` (the Zipf order, the most popular first) as
/// the clients do: a tenant with a connection in `kept` is served on it (concurrent requests pipelined on it); any other opens a
/// connection, runs the query and closes it, at most `parallel` at a time.
pub async fn serve(
    pg: &TestCluster,
    kept: &Arc<Kept>,
    targets: &Arc<Vec<Target>>,
    pick: Arc<dyn Fn(usize) -> usize + Send + Sync>,
    parallel: usize,
    run_for: Duration,
) -> (f64, super::cpu::Round) {
    let opens = Arc::new(Semaphore::new(parallel));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now() + super::WARM_UP;
    let ends = started + run_for;
    let loops: Vec<_> = (0..super::CLIENTS)
        .map(|c| {
            let (kept, targets, pick) = (kept.clone(), targets.clone(), pick.clone());
            let (opens, stop) = (opens.clone(), stop.clone());
            let (host, port) = ("127.0.0.1", pg.port());
            tokio::spawn(async move {
                let mut served = 0usize;
                let mut i = c * 7919;
                while !stop.load(Ordering::Relaxed) {
                    let k = pick(i);
                    i += 1;
                    let task = &targets[k].3;
                    if let Some((client, st)) = kept.clients.get(k) {
                        client.query_opt(st, &[task]).await.unwrap();
                    } else {
                        let _turn = opens.acquire().await.unwrap();
                        super::misses::one_shot(host, port, &targets[k]).await;
                    }
                    let done = Instant::now();
                    if done >= started && done < ends {
                        served += 1;
                    }
                }
                served
            })
        })
        .collect();
    tokio::time::sleep_until(started.into()).await;
    let clock = super::cpu::Clock::now();
    tokio::time::sleep_until(ends.into()).await;
    let cpu = clock.shares();
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for l in loops {
        served += l.await.unwrap();
    }
    // What ended inside the window, as the router's scenarios count it.
    let cpu = super::cpu::Round::new(cpu, run_for, served);
    (served as f64 / run_for.as_secs_f64(), cpu)
}

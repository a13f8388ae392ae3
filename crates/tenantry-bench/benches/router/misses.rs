//! What a request that finds no open connection costs, and how many such requests a
//! cache of connections must have: Zipf traffic, the share of it a perfect cache keeps,
//! the budget permits no open connection holds, and the server's rate of new tenant
//! connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantry_testkit::TestCluster;
use uuid::Uuid;

/// The weight of the `k`th most popular item (from 1) under Zipf(s = 1.1): 1/k^s.
fn zipf_weight(k: usize) -> f64 {
    1.0 / (k as f64).powf(1.1)
}

/// Zipf(s = 1.1) over `n` items: item k is chosen with weight [`zipf_weight`].
pub fn zipf(n: usize) -> Arc<dyn Fn(usize) -> usize + Send + Sync> {
    let weights: Vec<f64> = (1..=n).map(zipf_weight).collect();
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
pub fn zipf_top_share(n: usize, k: usize) -> f64 {
    (1..=k).map(zipf_weight).sum::<f64>() / (1..=n).map(zipf_weight).sum::<f64>()
}

/// [`zipf_top_share`] for a cache of `k` connections on average, `k` between two counts.
pub fn zipf_top_share_mean(n: usize, k: f64) -> f64 {
    let (low, high) = (k.floor() as usize, k.ceil() as usize);
    let part = k - k.floor();
    zipf_top_share(n, low) * (1.0 - part) + zipf_top_share(n, high) * part
}

/// The mean count of budget permits no open connection holds, over the `window` that
/// starts `after` from now, summed over servers and sampled every 5 ms: connections
/// being opened and evicted ones not yet closed. Whatever the cache policy, a request
/// that finds no open connection holds one of these while the server starts its
/// session, so the connections that can stay open are the budget less these.
pub async fn permits_in_transit(
    pools: tenantry_pools::Pools,
    after: Duration,
    window: Duration,
) -> f64 {
    tokio::time::sleep(after).await;
    let ends = Instant::now() + window;
    let (mut sum, mut samples) = (0usize, 0usize);
    while Instant::now() < ends {
        sum += pools
            .usage()
            .iter()
            .map(|u| u.opening + u.evicting)
            .sum::<usize>();
        samples += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sum as f64 / samples.max(1) as f64
}

/// One tenant as a bare client reaches it: database, role, password, its task.
pub type Target = (String, String, String, Uuid);

/// A connection to the tenant's database as its role, and the task driving it (which
/// ends once the client is dropped and the server has closed its side).
pub async fn connect(
    host: &str,
    port: u16,
    (database, role, password, _): &Target,
) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .dbname(database)
        .user(role)
        .password(password);
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, driver)
}

/// A request with no open connection, as a bare client serves it: opens a connection to
/// the tenant's database as its role, runs the scenario's query and closes it, until the
/// server has closed its side.
pub async fn one_shot(host: &str, port: u16, target: &Target) -> Option<tokio_postgres::Row> {
    let (client, driver) = connect(host, port, target).await;
    let st = client.prepare(super::TASK_BY_ID).await.unwrap();
    let row = client.query_opt(&st, &[&target.3]).await.unwrap();
    drop(client);
    let _ = driver.await;
    row
}

/// How many new tenant connections (open, authenticate, run the scenario's query, close)
/// the server completes per second, `parallel` at a time over distinct tenant databases:
/// what a request that finds no open connection costs. Over TCP, or over the server's
/// Unix socket (`socket`). Counted as the router's scenarios are: what ends inside
/// `run_for`, after a short warm-up (the first `parallel` all start at once).
pub async fn connection_opens(
    pg: &TestCluster,
    socket: bool,
    targets: Vec<Target>,
    parallel: usize,
    run_for: Duration,
) -> (f64, Vec<Duration>) {
    let targets = Arc::new(targets);
    let started = Instant::now() + Duration::from_millis(250);
    let ends = started + run_for;
    let workers: Vec<_> = (0..parallel)
        .map(|w| {
            let targets = targets.clone();
            let port = pg.port();
            let host = match pg.socket_dir() {
                Some(dir) if socket => dir.display().to_string(),
                _ => "127.0.0.1".to_owned(),
            };
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut i = w;
                while Instant::now() < ends {
                    let target = &targets[i % targets.len()];
                    i += parallel;
                    let t = Instant::now();
                    one_shot(&host, port, target).await;
                    let done = Instant::now();
                    if done >= started && done < ends {
                        samples.push(done - t);
                    }
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await.unwrap());
    }
    let per_second = samples.len() as f64 / run_for.as_secs_f64();
    (per_second, samples)
}

//! The budget's books balance when the server ends connections on its own
//! (`pg_terminate_backend`, a restart): afterwards every permit can be had again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tenantry_pools::{PoolConfig, PoolError, Pools, Target};
use tenantry_testkit::TestCluster;
use uuid::Uuid;

mod support;
use support::{numbered, settle, usage};

fn config() -> PoolConfig {
    PoolConfig {
        wait_timeout: Duration::from_millis(300),
        ..PoolConfig::default()
    }
}

/// Ends the router's backends of `role` (all roles when `None`) server-side.
async fn terminate(admin: &tokio_postgres::Client, role: Option<&str>) -> i64 {
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'tenantry-router' AND ($1::text IS NULL OR usename = $1)",
            &[&role],
        )
        .await
        .unwrap()
        .len() as i64
}

/// Holds one connection for each of `budget` distinct tenants at once: every permit can
/// be had (idle connections of other tenants are evicted to make room).
async fn whole_budget_available(pools: &Pools, targets: &[Target], budget: usize) {
    let mut held = Vec::new();
    for t in targets.iter().rev().take(budget) {
        let c = pools
            .get(t)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}; {:?}", t.user, usage(pools)));
        c.query_one("SELECT 1", &[]).await.unwrap();
        held.push(c);
    }
    assert_eq!(usage(pools).open, budget);
}

#[tokio::test]
async fn an_idle_connection_killed_server_side_and_then_evicted_costs_nothing() {
    let pg = TestCluster::start();
    let admin = pg.connect("postgres").await;
    let t = numbered(&pg, "f", 5).await;
    let pools = Pools::new(config(), 2);

    let a = pools.get(&t[0]).await.unwrap();
    {
        let b = pools.get(&t[1]).await.unwrap();
        b.query_one("SELECT 1", &[]).await.unwrap();
    }
    // f1's idle connection dies on the server: its permit comes back, but the
    // connection still sits idle in f1's pool.
    assert_eq!(terminate(&admin, Some("f1")).await, 1);
    settle(&pools, "the dead connection's permit is back", |u| {
        u.open == 1
    })
    .await;
    let c = pools.get(&t[2]).await.unwrap();
    // The budget is spent by live connections in use: the only idle one is dead, and
    // choosing it frees nothing, so the next tenant is told to come back.
    assert!(matches!(pools.get(&t[3]).await, Err(PoolError::Busy)));
    let u = usage(&pools);
    assert_eq!((u.evicting, u.waiting, u.evicted), (0, 0, 0), "{u:?}");

    // Once a live connection is idle, a waiter evicts it (a leaked count would stop it).
    drop(c);
    let d = pools.get(&t[3]).await.unwrap();
    d.query_one("SELECT 1", &[]).await.unwrap();
    settle(&pools, "the eviction is uncounted", |u| {
        u.evicting == 0 && u.waiting == 0 && u.evicted == 1
    })
    .await;
    drop((a, d));
    whole_budget_available(&pools, &t, 2).await;

    // The server restarts: every idle connection dies at once. Live ones in use spend
    // the budget; the dead idle ones are chosen for eviction, cleared, and count for
    // nothing; then the whole budget is there again.
    let mut pg = pg;
    let port = pg.port();
    let evicted = usage(&pools).evicted;
    pg.stop_server();
    pg.restart_server();
    assert_eq!(pg.port(), port, "the cluster came back on another port");
    settle(&pools, "every permit is back", |u| u.open == 0).await;
    let held = [
        pools.get(&t[0]).await.unwrap(),
        pools.get(&t[1]).await.unwrap(),
    ];
    assert!(matches!(pools.get(&t[2]).await, Err(PoolError::Busy)));
    let u = usage(&pools);
    assert_eq!((u.evicting, u.waiting, u.evicted), (0, 0, evicted), "{u:?}");
    drop(held);
    whole_budget_available(&pools, &t, 2).await;
    settle(&pools, "the evictions are uncounted", |u| {
        u.evicting == 0 && u.waiting == 0
    })
    .await;
}

/// A small deterministic generator, seeded per run (the seed is printed on failure).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_with_backends_killed_at_random_the_books_balance() {
    let pg = TestCluster::start();
    let tenants_n = 10;
    let budget = 4;
    let t = Arc::new(numbered(&pg, "f", tenants_n).await);
    let pools = Pools::new(config(), budget);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));

    let mut workers = Vec::new();
    for w in 0..12u64 {
        let (pools, t, stop, served) = (pools.clone(), t.clone(), stop.clone(), served.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(seed.wrapping_mul(w + 1) | 1);
            while !stop.load(Ordering::Relaxed) {
                // Skewed: the first tenants are asked for most.
                let bound = rng.below(tenants_n as u64) + 1;
                let i = rng.below(bound) as usize;
                let sleep_ms = rng.below(30);
                // Busy, unavailable and killed sessions are all expected here.
                if let Ok(c) = pools.get(&t[i]).await {
                    let sql = format!("SELECT pg_sleep({})", sleep_ms as f64 / 1000.0);
                    if c.batch_execute(&sql).await.is_ok() {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
            }
        }));
    }
    let killer = {
        let stop = stop.clone();
        let admin = pg.connect("postgres").await;
        tokio::spawn(async move {
            let mut rng = Rng(seed.rotate_left(17) | 1);
            let mut killed = 0;
            while !stop.load(Ordering::Relaxed) {
                // Mostly idle sessions (those are the ones chosen for eviction), some busy.
                let state = if rng.below(4) == 0 { "active" } else { "idle" };
                killed += admin
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE application_name = 'tenantry-router' AND state = $1
                         ORDER BY random() LIMIT 1",
                        &[&state],
                    )
                    .await
                    .unwrap()
                    .len();
                tokio::time::sleep(Duration::from_millis(rng.below(40) + 10)).await;
            }
            killed
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let killed = killer.await.unwrap();
    let u = usage(&pools);
    eprintln!(
        "served {}, killed {killed}, {u:?}",
        served.load(Ordering::Relaxed)
    );
    assert!(killed >= 3 && u.evicted > 0, "the test did not bite: {u:?}");

    settle(&pools, "no waiter, no eviction pending", |u| {
        u.waiting == 0 && u.evicting == 0 && u.opening == 0 && u.open <= budget
    })
    .await;
    // Every permit can be had at once by tenants that hold nothing yet.
    whole_budget_available(&pools, &t, budget).await;
    let u = usage(&pools);
    assert_eq!((u.evicting, u.waiting, u.opening), (0, 0, 0), "{u:?}");
}

#[tokio::test]
async fn a_role_at_its_connection_limit_is_waited_for_not_an_error() {
    let pg = TestCluster::start();
    let t = numbered(&pg, "f", 1).await;
    pg.connect("postgres")
        .await
        .batch_execute("ALTER ROLE f0 CONNECTION LIMIT 1")
        .await
        .unwrap();
    // Another replica holds the role's only connection.
    let url = format!("postgres://f0:pw@127.0.0.1:{}/f0", pg.port());
    let (other, driver) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(driver);

    // Never freed: busy once the wait deadline passes (503 with Retry-After), not
    // unavailable at once.
    let pools = Pools::new(config(), 4);
    match pools.get(&t[0]).await {
        Err(PoolError::Busy) => {}
        Err(e) => panic!("expected busy, got {e}"),
        Ok(_) => panic!("the role's limit was passed"),
    }

    // Freed during the wait: the connection comes.
    let pools = Pools::new(
        PoolConfig {
            wait_timeout: Duration::from_secs(5),
            ..config()
        },
        4,
    );
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(other);
        let _ = driver.await;
    });
    let c = pools.get(&t[0]).await.unwrap();
    c.query_one("SELECT 1", &[]).await.unwrap();
    let u = usage(&pools);
    assert_eq!((u.open, u.waiting, u.evicting), (1, 0, 0), "{u:?}");
}

/// A server that accepts TCP connections and never says a word.
async fn silent_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

#[tokio::test]
async fn cancelled_and_timed_out_requests_give_everything_back() {
    let port = silent_server().await;
    let target = |i: usize| Target {
        tenant: Uuid::now_v7(),
        generation: 1,
        server: 1,
        host: "127.0.0.1".into(),
        port,
        database: format!("d{i}"),
        user: format!("u{i}"),
        password: SecretString::from("pw".to_owned()),
        max_size: 2,
        priority: 0,
    };
    let pools = Pools::new(
        PoolConfig {
            wait_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_millis(500),
            ..config()
        },
        1,
    );
    pools.set_budget(1, 1);
    // One request holds the only permit while its server says nothing; ten more wait.
    let first = {
        let (pools, t) = (pools.clone(), target(0));
        tokio::spawn(async move { pools.get(&t).await.map(|_| ()) })
    };
    settle(&pools, "the first holds the permit", |u| u.open == 1).await;
    let waiters: Vec<_> = (1..=10)
        .map(|i| {
            let (pools, t) = (pools.clone(), target(i));
            tokio::spawn(async move { pools.get(&t).await.map(|_| ()) })
        })
        .collect();
    settle(&pools, "ten wait", |u| u.waiting == 10).await;
    // Cancelled while waiting, and while connecting: nothing stays counted.
    for w in &waiters {
        w.abort();
    }
    first.abort();
    settle(&pools, "all given back", |u| u.waiting == 0 && u.open == 0).await;

    // A connection attempt that times out gives its permit back too: the next request
    // gets the permit at once and times out in the same way, not waiting for a permit.
    for i in 11..13 {
        let started = Instant::now();
        match pools.get(&target(i)).await {
            Err(PoolError::Unavailable(_)) => {}
            other => panic!("expected a timeout, got {:?}", other.map(|_| ())),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let u = usage(&pools);
    assert_eq!((u.open, u.waiting, u.evicting), (0, 0, 0), "{u:?}");
}

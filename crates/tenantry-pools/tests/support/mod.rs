//! What the pools' tests share: their settings, tenants (a role and a database each) on
//! a real server, and the server's books.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use secrecy::SecretString;
use tenantry_pools::{PoolConfig, Pools, ServerUsage, Target};
use tenantry_testkit::TestCluster;
use uuid::Uuid;

/// A role and a database per name (both so named, password `pw`), on server 1; each
/// target carries its priority.
pub async fn tenants(pg: &TestCluster, names: &[(&str, u8)]) -> Vec<Target> {
    let admin = pg.connect("postgres").await;
    let mut out = Vec::new();
    for &(name, priority) in names {
        for sql in [
            format!("CREATE ROLE {name} LOGIN PASSWORD 'pw'"),
            format!("CREATE DATABASE {name} OWNER {name}"),
        ] {
            admin.batch_execute(&sql).await.unwrap();
        }
        out.push(Target {
            tenant: Uuid::now_v7(),
            generation: 1,
            server: 1,
            host: "127.0.0.1".into(),
            port: pg.port(),
            database: name.into(),
            user: name.into(),
            password: SecretString::from("pw".to_owned()),
            max_size: 2,
            priority,
        });
    }
    out
}

/// `n` tenants `{prefix}0`, `{prefix}1`, …, of priority 0.
pub async fn numbered(pg: &TestCluster, prefix: &str, n: usize) -> Vec<Target> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let names: Vec<(&str, u8)> = names.iter().map(|n| (n.as_str(), 0)).collect();
    tenants(pg, &names).await
}

/// A tenant of two connections, and pools with one per thread for two threads (each
/// running its own single-threaded runtime, as a router worker does), set up as
/// `config` says beyond that.
pub fn two_threads(pg: &TestCluster, name: &str, config: PoolConfig) -> (Target, Pools) {
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut target = setup.block_on(numbered(pg, name, 1)).remove(0);
    target.max_size = 2;
    let pools = Pools::new(
        PoolConfig {
            thread_slots: 2,
            ..config
        },
        10,
    );
    (target, pools)
}

/// One request: a connection and a query. `Err` says why it failed.
pub async fn request(pools: &Pools, target: &Target) -> Result<(), String> {
    let conn = pools.get(target).await.map_err(|e| e.to_string())?;
    conn.query_one("SELECT 1", &[])
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A connection of the target's, and the backend serving it.
pub async fn backend(pools: &Pools, target: &Target) -> (i32, tenantry_pools::Lease) {
    let conn = pools.get(target).await.unwrap();
    let pid: i32 = conn
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    (pid, conn)
}

/// Runs `work` on a thread of its own, in a single-threaded runtime of its own, as a
/// router worker runs its requests.
pub fn worker_thread<T, F>(work: impl FnOnce() -> F + Send + 'static) -> std::thread::JoinHandle<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work())
    })
}

/// On one of [`two_threads`]' threads: opens a connection while the other thread holds
/// its own (the `first` thread opens first), so that each thread drives one; returns
/// once both hold theirs.
pub async fn own_connection(
    pools: &Pools,
    target: &Target,
    barrier: &tokio::sync::Barrier,
    first: bool,
) -> (i32, tenantry_pools::Lease) {
    if !first {
        barrier.wait().await;
    }
    let own = backend(pools, target).await;
    if first {
        barrier.wait().await;
    }
    barrier.wait().await;
    own
}

/// Server 1's books.
pub fn usage(pools: &Pools) -> ServerUsage {
    pools.usage().into_iter().find(|u| u.server == 1).unwrap()
}

/// Waits until `check` holds for server 1's books (kept once it is first asked for).
pub async fn settle(pools: &Pools, what: &str, check: impl Fn(&ServerUsage) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let books = || pools.usage().into_iter().find(|u| u.server == 1);
    while !books().is_some_and(|u| check(&u)) {
        assert!(Instant::now() < deadline, "{what}: {:?}", books());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

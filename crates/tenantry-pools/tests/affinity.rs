//! Connections stay with the thread that drives them, against a real server: two
//! threads, each with its own single-threaded runtime as a router worker has, share one
//! tenant's pool; each then takes its own thread's idle connection, not the other's
//! (whose every query would wake the other thread twice).
//! (Alone in its file: threads are given their slots as they first take a connection.)

use std::sync::Arc;
use std::time::Duration;

use tenantry_pools::{PoolConfig, Pools, Target};
use tenantry_testkit::TestCluster;
use tokio::sync::Barrier;

mod support;
use support::{backend, own_connection, two_threads, worker_thread};

/// One worker thread: opens its own connection while the other thread holds its own,
/// then takes a connection `rounds` times; the backends it was given.
fn worker(
    pools: Pools,
    target: Target,
    barrier: Arc<Barrier>,
    first: bool,
    rounds: usize,
) -> std::thread::JoinHandle<(i32, Vec<i32>)> {
    worker_thread(move || async move {
        let (own, conn) = own_connection(&pools, &target, &barrier, first).await;
        drop(conn);
        barrier.wait().await;
        let mut seen = Vec::new();
        for _ in 0..rounds {
            let (pid, conn) = backend(&pools, &target).await;
            seen.push(pid);
            drop(conn);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        // The other thread's connection is driven here: keep driving it until the
        // other thread is done with it.
        barrier.wait().await;
        (own, seen)
    })
}

#[test]
fn each_worker_thread_takes_the_idle_connection_it_drives() {
    let pg = TestCluster::start();
    let (target, pools) = two_threads(&pg, "aff", PoolConfig::default());
    let barrier = Arc::new(Barrier::new(2));
    let a = worker(pools.clone(), target.clone(), barrier.clone(), true, 50);
    let b = worker(pools.clone(), target.clone(), barrier, false, 50);
    let (a_own, a_seen) = a.join().unwrap();
    let (b_own, b_seen) = b.join().unwrap();
    assert_ne!(a_own, b_own, "one connection per thread");
    assert!(
        a_seen.iter().all(|p| *p == a_own) && b_seen.iter().all(|p| *p == b_own),
        "each thread on its own connection: a {a_own} {a_seen:?}, b {b_own} {b_seen:?}"
    );
    assert_eq!(
        pools.usage()[0].opened,
        2,
        "no connection opened past the two"
    );
}

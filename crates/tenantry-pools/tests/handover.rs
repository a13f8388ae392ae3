//! A returned connection goes to a request waiting on the thread that drives it, against
//! a real server: two threads, each with its own single-threaded runtime as a router
//! worker has, each holding one of a tenant's two connections, each with a request
//! waiting for one (the other thread's waiting longer). When a thread gives its
//! connection back, its own waiter is handed it, not the earlier waiter on the other
//! thread (whose every query on it would wake this thread twice); with the bound at
//! zero, the earlier waiter is served first, as in plain arrival order.
//! (Alone in its file, one test: threads are given their slots as they first take a
//! connection.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantry_pools::{PoolConfig, Pools};
use tenantry_testkit::TestCluster;
use tokio::sync::Barrier;
use uuid::Uuid;

mod support;
use support::{backend, own_connection, two_threads, worker_thread};

/// Waits until `n` requests wait for the tenant's connections.
async fn waiting(pools: &Pools, tenant: Uuid, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pools.waiting(tenant) != n {
        assert!(Instant::now() < deadline, "never {n} waiting");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Which backend each thread's own connection is, and which backend each thread's
/// waiter was given: `[(a's own, a's waiter's), (b's own, b's waiter's)]`.
fn run(max_defer: Duration) -> [(i32, i32); 2] {
    let pg = TestCluster::start();
    let (target, pools) = two_threads(
        &pg,
        "hand",
        PoolConfig {
            handover_max_defer: max_defer,
            ..PoolConfig::default()
        },
    );
    let barrier = Arc::new(Barrier::new(2));
    let thread = |first: bool| {
        let (pools, target, barrier) = (pools.clone(), target.clone(), barrier.clone());
        worker_thread(move || async move {
            let tenant = target.tenant;
            let (own, conn) = own_connection(&pools, &target, &barrier, first).await;
            // The second thread's request waits first, then the first thread's.
            let waiter = {
                let (pools, target) = (pools.clone(), target.clone());
                move || tokio::spawn(async move { backend(&pools, &target).await })
            };
            let mine = if first {
                barrier.wait().await;
                let mine = waiter();
                waiting(&pools, tenant, 2).await;
                mine
            } else {
                let mine = waiter();
                waiting(&pools, tenant, 1).await;
                barrier.wait().await;
                mine
            };
            barrier.wait().await;
            // The first thread gives its connection back, and one waiter is served;
            // then the second thread gives its connection back.
            if first {
                drop(conn);
                waiting(&pools, tenant, 1).await;
                barrier.wait().await;
            } else {
                barrier.wait().await;
                drop(conn);
            }
            // Each keeps what its waiter was given until both are served, and drives
            // its own connection for the other until then.
            let (given, lease) = mine.await.unwrap();
            barrier.wait().await;
            drop(lease);
            (own, given)
        })
    };
    let a = thread(true);
    let b = thread(false);
    let a = a.join().unwrap();
    let b = b.join().unwrap();
    assert_ne!(a.0, b.0, "one connection per thread");
    assert_eq!(
        pools.usage()[0].opened,
        2,
        "no connection opened past the two"
    );
    [a, b]
}

/// Both in one test, one after the other: threads are given their slots in turn.
#[test]
fn a_returned_connection_goes_to_a_waiter_on_the_thread_that_drives_it() {
    let [(a_own, a_given), (b_own, b_given)] = run(Duration::from_secs(60));
    assert_eq!(
        (a_given, b_given),
        (a_own, b_own),
        "each thread's waiter on its own thread's connection"
    );

    // With no bound: arrival order.
    let [(a_own, a_given), (b_own, b_given)] = run(Duration::ZERO);
    assert_eq!(
        (b_given, a_given),
        (a_own, b_own),
        "the second thread's waiter, earlier, on the first thread's connection"
    );
}

//! Priority when a server's budget is contended, against a real server: waiters of a
//! higher plan priority get permits first, a lower one defers to them only for a bound,
//! and a waiter that leaves holds nobody up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenantry_pools::{Lease, PoolConfig, Pools, Target};
use tenantry_testkit::TestCluster;

mod support;
use support::{settle, tenants};

const FREE: u8 = 0;
const PRO: u8 = 1;
const ENTERPRISE: u8 = 2;

/// One connection for the whole server.
fn pools(wait: Duration, max_defer: Duration) -> Pools {
    let pools = Pools::new(
        PoolConfig {
            wait_timeout: wait,
            priority_max_defer: max_defer,
            ..PoolConfig::default()
        },
        1,
    );
    pools.set_budget(1, 1);
    pools
}

type Log = Arc<Mutex<Vec<String>>>;

/// Runs a query on the connection and closes it: its permit comes back (to the next
/// waiter) as soon as the server has closed it.
async fn use_and_close(conn: Lease) {
    conn.query_one("SELECT 1", &[]).await.unwrap();
    conn.close();
}

/// A request for `target` in a task: once it has its connection, it writes `name` to
/// `log`, then uses and closes the connection.
fn request(pools: &Pools, target: &Target, name: &str, log: &Log) -> tokio::task::JoinHandle<bool> {
    let (pools, target, name, log) = (pools.clone(), target.clone(), name.to_owned(), log.clone());
    tokio::spawn(async move {
        let Ok(conn) = pools.get(&target).await else {
            return false;
        };
        log.lock().unwrap().push(name);
        use_and_close(conn).await;
        true
    })
}

/// The budget held by `holder`'s connection; free, pro and enterprise requests queued in
/// that order; the holder's connection released: the order they were served in.
async fn served_order(max_defer: Duration) -> Vec<String> {
    let pg = TestCluster::start();
    let t = tenants(
        &pg,
        &[
            ("holder", FREE),
            ("free", FREE),
            ("pro", PRO),
            ("enterprise", ENTERPRISE),
        ],
    )
    .await;
    let pools = pools(Duration::from_secs(20), max_defer);
    let held: Lease = pools.get(&t[0]).await.unwrap();
    let log = Log::default();
    let mut queued = Vec::new();
    for (n, target) in t[1..].iter().enumerate() {
        queued.push(request(&pools, target, &target.user, &log));
        settle(&pools, "queued in arrival order", |u| u.waiting == n + 1).await;
    }
    held.close();
    for q in queued {
        assert!(q.await.unwrap(), "every waiter is served");
    }
    settle(&pools, "the books balance", |u| {
        u.waiting == 0 && u.evicting == 0 && u.open == 0
    })
    .await;
    let order = log.lock().unwrap().clone();
    order
}

#[tokio::test]
async fn a_contended_budget_serves_enterprise_then_pro_then_free() {
    assert_eq!(
        served_order(Duration::from_secs(10)).await,
        ["enterprise", "pro", "free"]
    );
}

#[tokio::test]
async fn without_a_deferral_bound_waiters_are_served_in_arrival_order() {
    assert_eq!(
        served_order(Duration::ZERO).await,
        ["free", "pro", "enterprise"]
    );
}

/// A free request waits while enterprise requests keep coming, each for its own tenant
/// (so each needs the one permit in turn): whether the free one was served, and how many
/// enterprise requests were served while it waited.
async fn free_under_a_stream_of_enterprise(wait: Duration, max_defer: Duration) -> (bool, usize) {
    let pg = TestCluster::start();
    let names: Vec<String> = (0..4).map(|i| format!("ent{i}")).collect();
    let mut spec: Vec<(&str, u8)> = names.iter().map(|n| (n.as_str(), ENTERPRISE)).collect();
    spec.push(("free", FREE));
    let t = tenants(&pg, &spec).await;
    let pools = pools(wait, max_defer);
    let log = Log::default();
    // Four enterprise clients, each asking again as soon as it was served: at least
    // three of them wait at any time.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = t[..4]
        .iter()
        .map(|target| {
            let (pools, target, log, stop) =
                (pools.clone(), target.clone(), log.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Ok(conn) = pools.get(&target).await {
                        log.lock().unwrap().push("enterprise".to_owned());
                        use_and_close(conn).await;
                    }
                }
            })
        })
        .collect();
    settle(&pools, "the enterprise stream contends", |u| u.waiting >= 3).await;
    let joined = log.lock().unwrap().len();
    let free = request(&pools, &t[4], "free", &log).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let log = log.lock().unwrap();
    let served_while_waiting = log[joined..]
        .iter()
        .take_while(|n| *n == "enterprise")
        .count();
    (free, served_while_waiting)
}

#[tokio::test]
async fn a_free_request_is_served_under_a_steady_stream_of_enterprise_ones() {
    // It defers to them for 300 ms at most, well within its 5 s deadline.
    let (served, deferred_to) =
        free_under_a_stream_of_enterprise(Duration::from_secs(5), Duration::from_millis(300)).await;
    assert!(served, "the free request starved");
    assert!(
        deferred_to > 0,
        "the enterprise requests went first meanwhile"
    );
}

#[tokio::test]
async fn a_bound_past_the_deadline_would_let_free_starve() {
    // What the bound prevents (and why the setting must be below the wait): deferring
    // past its deadline, the free request is never served.
    let (served, _) =
        free_under_a_stream_of_enterprise(Duration::from_secs(1), Duration::from_secs(60)).await;
    assert!(!served, "served although higher priorities kept waiting");
}

#[tokio::test]
async fn a_cancelled_enterprise_waiter_does_not_hold_up_the_others() {
    let pg = TestCluster::start();
    let t = tenants(
        &pg,
        &[("holder", FREE), ("free", FREE), ("enterprise", ENTERPRISE)],
    )
    .await;
    let pools = pools(Duration::from_secs(20), Duration::from_secs(10));
    let held = pools.get(&t[0]).await.unwrap();
    let log = Log::default();
    let free = request(&pools, &t[1], "free", &log);
    settle(&pools, "free waits", |u| u.waiting == 1).await;
    let enterprise = request(&pools, &t[2], "enterprise", &log);
    settle(&pools, "enterprise waits", |u| u.waiting == 2).await;
    enterprise.abort();
    settle(&pools, "enterprise gone", |u| u.waiting == 1).await;
    held.close();
    assert!(free.await.unwrap(), "the free request is served");
    assert!(enterprise.await.unwrap_err().is_cancelled());
    assert_eq!(*log.lock().unwrap(), ["free"]);
    settle(&pools, "the books balance", |u| {
        u.waiting == 0 && u.evicting == 0 && u.open == 0
    })
    .await;
}

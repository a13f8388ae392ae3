//! The per-server budget, eviction and reaping against a real server.

use std::time::Duration;

use tenantry_pools::{PoolConfig, PoolError, Pools};
use tenantry_testkit::TestCluster;

mod support;
use support::numbered;

fn config() -> PoolConfig {
    PoolConfig {
        wait_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_millis(400),
        pool_idle_timeout: Duration::from_millis(400),
        ..PoolConfig::default()
    }
}

async fn backends(pg: &TestCluster) -> i64 {
    let admin = pg.connect("postgres").await;
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantry-router'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_budget_caps_connections_across_tenants_and_idle_ones_make_room() {
    let pg = TestCluster::start();
    let targets = numbered(&pg, "r", 6).await;
    let pools = Pools::new(config(), 3);

    // Three tenants hold one connection each: the budget is spent.
    let mut held = Vec::new();
    for t in &targets[..3] {
        held.push(pools.get(t).await.unwrap());
    }
    assert_eq!(backends(&pg).await, 3);
    // A fourth waits for the deadline, then is told to come back: nothing idle to evict.
    let started = std::time::Instant::now();
    assert!(matches!(pools.get(&targets[3]).await, Err(PoolError::Busy)));
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(backends(&pg).await, 3, "never above the budget");

    // One is released: it stays open but idle, and the next tenant evicts it.
    held.pop();
    let c = pools.get(&targets[4]).await.unwrap();
    c.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(pools.usage()[0].open, 3);
    assert!(backends(&pg).await <= 3);
    drop(c);
    drop(held);

    // Idle connections close, idle pools go.
    tokio::time::sleep(Duration::from_millis(600)).await;
    pools.reap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    pools.reap();
    let usage = pools.usage();
    assert_eq!((usage[0].open, usage[0].pools), (0, 0), "{usage:?}");
    assert_eq!(backends(&pg).await, 0, "an idle tenant holds no connection");
}

#[tokio::test]
async fn a_raised_or_lowered_budget_takes_effect() {
    let pg = TestCluster::start();
    let targets = numbered(&pg, "r", 4).await;
    let pools = Pools::new(config(), 1);
    let a = pools.get(&targets[0]).await.unwrap();
    assert!(matches!(pools.get(&targets[1]).await, Err(PoolError::Busy)));
    pools.set_budget(1, 3);
    let b = pools.get(&targets[1]).await.unwrap();
    let c = pools.get(&targets[2]).await.unwrap();
    // Lowered below what is open: nothing new until enough have closed.
    pools.set_budget(1, 1);
    drop((b, c));
    pools.drop_tenant(targets[1].tenant);
    pools.drop_tenant(targets[2].tenant);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(pools.get(&targets[3]).await, Err(PoolError::Busy)));
    drop(a);
    pools.drop_tenant(targets[0].tenant);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let d = pools.get(&targets[3]).await.unwrap();
    d.query_one("SELECT 1", &[]).await.unwrap();
}

#[tokio::test]
async fn sessions_leave_no_state_and_a_dead_database_is_unavailable() {
    let mut pg = TestCluster::start();
    let targets = numbered(&pg, "r", 1).await;
    let pools = Pools::new(config(), 2);
    let mut t = targets[0].clone();
    t.max_size = 1;
    {
        let mut c = pools.get(&t).await.unwrap();
        c.mark_dirty();
        c.batch_execute("SET application_name = 'dirty'; CREATE TEMP TABLE scratch (x int)")
            .await
            .unwrap();
    }
    let c = pools.get(&t).await.unwrap();
    let name: String = c
        .query_one("SHOW application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "tenantry-router", "session settings were reset");
    assert!(
        c.query("SELECT * FROM scratch", &[]).await.is_err(),
        "temp tables were discarded"
    );
    drop(c);

    pg.stop_server();
    pools.drop_tenant(t.tenant);
    match pools.get(&t).await {
        Err(PoolError::Unavailable(_)) | Err(PoolError::Busy) => {}
        Err(PoolError::Refused(why)) => panic!("a stopped server is not a refusal: {why}"),
        Ok(_) => panic!("a stopped server gave a connection"),
    }
}

/// Which tenant roles hold a router connection now.
async fn holders(pg: &TestCluster) -> Vec<String> {
    let admin = pg.connect("postgres").await;
    let mut users: Vec<String> = admin
        .query(
            "SELECT usename::text FROM pg_stat_activity WHERE application_name = 'tenantry-router'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    users.sort();
    users
}

#[tokio::test]
async fn under_pressure_the_rarely_used_tenant_makes_room_not_the_busy_one() {
    let pg = TestCluster::start();
    let targets = numbered(&pg, "r", 3).await;
    let pools = Pools::new(config(), 2);
    // r0 is busy (many requests), r1 was seen once, but more recently.
    for _ in 0..20 {
        let c = pools.get(&targets[0]).await.unwrap();
        c.query_one("SELECT 1", &[]).await.unwrap();
    }
    let c = pools.get(&targets[1]).await.unwrap();
    c.query_one("SELECT 1", &[]).await.unwrap();
    drop(c);
    assert_eq!(holders(&pg).await, ["r0", "r1"]);
    // The budget (2) is spent: a third tenant takes r1's idle connection, not r0's.
    let c = pools.get(&targets[2]).await.unwrap();
    c.query_one("SELECT 1", &[]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while holders(&pg).await != ["r0", "r2"] {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            holders(&pg).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pool lowered while it held fewer connections than its old size lends no more than
/// its new size: no connection past it is opened (to be closed again on its return).
/// Then lowered while its connections are in use, it closes the ones over its new size
/// as they come back, and keeps the rest.
#[tokio::test]
async fn a_lowered_pool_size_holds_whatever_the_pool_held_before() {
    let pg = TestCluster::start();
    let mut t = numbered(&pg, "s", 1).await.remove(0);
    t.max_size = 4;
    let pools = Pools::new(config(), 10);

    // Used once at its full size (4), then lowered to 1 (four replicas) with one idle
    // connection in it.
    drop(pools.get(&t).await.unwrap());
    pools.set_replicas(4);
    let held = pools.get(&t).await.unwrap();
    assert!(
        matches!(pools.get(&t).await, Err(PoolError::Busy)),
        "a second connection past the lowered size"
    );
    assert_eq!((pools.usage()[0].open, backends(&pg).await), (1, 1));
    drop(held);

    // Raised to 4 (one replica): four lent at once; lowered to 2 while they are out.
    pools.set_replicas(1);
    let mut out = Vec::new();
    for _ in 0..4 {
        out.push(pools.get(&t).await.unwrap());
    }
    assert_eq!(pools.usage()[0].open, 4);
    pools.set_replicas(2);
    drop(out);
    settle_open(&pools, 2).await;
    assert_eq!(backends(&pg).await, 2, "the two over the size closed");
    let a = pools.get(&t).await.unwrap();
    let b = pools.get(&t).await.unwrap();
    assert!(matches!(pools.get(&t).await, Err(PoolError::Busy)));
    drop((a, b));
    assert_eq!(pools.usage()[0].opened, 4, "the kept ones were reused");
}

async fn settle_open(pools: &Pools, open: usize) {
    support::settle(pools, "open connections", |u| u.open == open).await;
}

/// Two tenants whose plans' pools are 4: as large as the budgets of the share tests.
async fn two_of_size_4(pg: &TestCluster, prefix: &str) -> Vec<tenantry_pools::Target> {
    let mut targets = numbered(pg, prefix, 2).await;
    for t in &mut targets {
        t.max_size = 4;
    }
    targets
}

#[tokio::test]
async fn a_busy_tenant_takes_the_share_of_tenants_gone_quiet_when_it_needs_it() {
    let pg = TestCluster::start();
    let targets = two_of_size_4(&pg, "q").await;
    let (a, b) = (&targets[0], &targets[1]);
    // No reaper: only a request at its pool's size recomputes the share.
    let pools = Pools::new(config(), 4);
    let first = pools.get(a).await.unwrap();
    drop(pools.get(b).await.unwrap());
    // Both active: half the budget each.
    let second = pools.get(a).await.unwrap();
    assert!(
        matches!(pools.get(a).await, Err(PoolError::Busy)),
        "a third connection while the other tenant keeps its share"
    );
    // The other tenant goes quiet: the next request past the share takes its part.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut held = vec![first, second];
    for n in 3..=4 {
        held.push(
            pools
                .get(a)
                .await
                .unwrap_or_else(|e| panic!("connection {n} of the whole budget: {e}")),
        );
    }
    assert_eq!(backends(&pg).await, 4);
    assert!(
        matches!(pools.get(a).await, Err(PoolError::Busy)),
        "never past the budget"
    );
}

/// A reap raises only the pools used lately: a pool gone quiet keeps its size while
/// another is busy, rather than taking the busy one's share, and grows when it is next
/// wanted, to the share of the pools active then.
#[tokio::test]
async fn a_quiet_pool_is_not_raised_to_a_busy_ones_share() {
    let pg = TestCluster::start();
    let targets = two_of_size_4(&pg, "z").await;
    let (a, b) = (&targets[0], &targets[1]);
    // Idle connections kept: only the sizes change in this test.
    let pools = Pools::new(
        PoolConfig {
            idle_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(60),
            ..config()
        },
        4,
    );
    // Both in use: half the budget each. b keeps two idle connections, a one.
    drop(pools.get(a).await.unwrap());
    let held = (pools.get(b).await.unwrap(), pools.get(b).await.unwrap());
    drop(held);
    assert_eq!(backends(&pg).await, 3);

    // Both go quiet; then a is busy again, and a reap gives it the whole budget.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    drop(pools.get(a).await.unwrap());
    pools.reap();
    // b, quiet at the reap, kept its size (2): a third request waits while a is active,
    // although the budget has a permit free (a's share).
    let held = (pools.get(b).await.unwrap(), pools.get(b).await.unwrap());
    assert!(
        matches!(pools.get(b).await, Err(PoolError::Busy)),
        "a quiet pool was raised to the busy one's share"
    );
    assert_eq!(backends(&pg).await, 3);

    // a goes quiet: b's next request past its size takes the share of the one active
    // pool now, its own.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let third = pools.get(b).await.expect("grown when wanted");
    assert_eq!(backends(&pg).await, 4);
    drop((held, third));
}

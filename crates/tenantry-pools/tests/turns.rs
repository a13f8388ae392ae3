//! Turns to open a session (`PoolConfig::connects_at_once`), against a real server: no
//! more sessions are started on a server at once than its turns, the requests past them
//! wait their turn holding no permit of the budget (and are told to come back if their
//! deadline passes first), and a tenant that the server keeps turning away (its role at
//! its connection limit) does not hold up the others.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tenantry_pools::{PoolConfig, PoolError, Pools};
use tenantry_testkit::proxy::{Fault, FaultProxy};
use tenantry_testkit::TestCluster;

mod support;
use support::{numbered, request, settle, usage};

#[tokio::test]
async fn at_most_so_many_sessions_start_at_once_and_the_rest_wait_their_turn() {
    let pg = TestCluster::start();
    // Every byte to the server is held 150 ms: a session takes several round trips to
    // start, so the requests pile up behind their turns.
    let proxy = FaultProxy::start(("127.0.0.1", pg.port())).unwrap();
    proxy.set(Fault::Latency {
        up: Duration::from_millis(150),
        down: Duration::ZERO,
    });
    let mut targets = numbered(&pg, "q", 6).await;
    for t in &mut targets {
        t.port = proxy.port();
    }
    let pools = Pools::new(
        PoolConfig {
            wait_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            connects_at_once: 2,
            ..PoolConfig::default()
        },
        10,
    );
    // The most sessions seen being started at once, sampled while the requests run.
    let most_opening = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (pools, most) = (pools.clone(), most_opening.clone());
        tokio::spawn(async move {
            loop {
                if let Some(u) = pools.usage().into_iter().find(|u| u.server == 1) {
                    most.fetch_max(u.opening, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let requests: Vec<_> = targets
        .iter()
        .map(|t| {
            let (pools, t) = (pools.clone(), t.clone());
            tokio::spawn(async move { request(&pools, &t).await })
        })
        .collect();
    // Two sessions starting, four requests waiting for their turn, and only the two
    // starting hold permits of the budget.
    settle(&pools, "two starting, four waiting their turn", |u| {
        u.opening == 2 && u.waiting_to_open == 4 && u.open == 2
    })
    .await;
    for r in requests {
        r.await.unwrap().unwrap();
    }
    sampler.abort();
    assert_eq!(most_opening.load(Ordering::SeqCst), 2);
    let u = usage(&pools);
    assert_eq!((u.opened, u.opening, u.waiting_to_open), (6, 0, 0), "{u:?}");
}

#[tokio::test]
async fn a_request_still_waiting_for_its_turn_at_its_deadline_is_told_to_come_back() {
    let pg = TestCluster::start();
    // The server swallows connects: the one turn stays taken until its connect times out.
    let proxy = FaultProxy::start(("127.0.0.1", pg.port())).unwrap();
    proxy.set(Fault::Blackhole);
    let mut targets = numbered(&pg, "d", 2).await;
    for t in &mut targets {
        t.port = proxy.port();
    }
    let pools = Pools::new(
        PoolConfig {
            wait_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(2),
            connects_at_once: 1,
            ..PoolConfig::default()
        },
        10,
    );
    let first = {
        let (pools, t) = (pools.clone(), targets[0].clone());
        tokio::spawn(async move { pools.get(&t).await.map(drop) })
    };
    settle(&pools, "the turn taken", |u| u.opening == 1).await;
    // Never got a turn: busy (503, come back shortly), with nothing of the server held.
    assert!(matches!(pools.get(&targets[1]).await, Err(PoolError::Busy)));
    assert!(matches!(
        first.await.unwrap(),
        Err(PoolError::Unavailable(_))
    ));
    let u = usage(&pools);
    assert_eq!(
        (u.open, u.opening, u.waiting, u.waiting_to_open),
        (0, 0, 0, 0),
        "{u:?}"
    );
}

#[tokio::test]
async fn a_tenant_turned_away_by_the_server_does_not_hold_up_the_others() {
    let pg = TestCluster::start();
    let targets = numbered(&pg, "w", 2).await;
    let (full, other) = (&targets[0], &targets[1]);
    // `full`'s role may have one session, and has it: the server answers its pool with
    // "too many connections" (53300), which the pool asks again until its deadline.
    let admin = pg.connect("postgres").await;
    admin
        .batch_execute(&format!("ALTER ROLE {} CONNECTION LIMIT 1", full.user))
        .await
        .unwrap();
    let (holder, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user={} password=pw dbname={}",
            pg.port(),
            full.user,
            full.database
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let held = tokio::spawn(conn);
    // One turn on the server: the retrying tenant must not keep it between its tries.
    let pools = Pools::new(
        PoolConfig {
            wait_timeout: Duration::from_secs(20),
            connects_at_once: 1,
            ..PoolConfig::default()
        },
        10,
    );
    let turned_away = {
        let (pools, full) = (pools.clone(), full.clone());
        tokio::spawn(async move { request(&pools, &full).await })
    };
    // It holds a permit and is opening: trying, and turned away, again and again.
    settle(&pools, "the tenant at its limit trying", |u| {
        u.opened == 1 && u.opening == 1
    })
    .await;
    request(&pools, other).await.unwrap();
    assert!(
        !turned_away.is_finished(),
        "the other tenant was served only after the turned-away one gave up"
    );
    // Its role's session ends: its next try gets in.
    drop(holder);
    held.await.unwrap().unwrap();
    turned_away.await.unwrap().unwrap();
}

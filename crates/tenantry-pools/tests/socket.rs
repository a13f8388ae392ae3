//! A server reached over its Unix socket: its tenants' connections go through the
//! socket, and so does a request to cancel one of their statements.

use std::time::Duration;

use tenantry_pools::{PoolConfig, Pools, Target};
use tenantry_testkit::TestCluster;

mod support;
use support::numbered;

#[tokio::test]
async fn a_statement_on_a_socket_server_is_cancelled_through_the_socket() {
    let pg = TestCluster::start_with_unix_socket();
    let dir = pg.socket_dir().unwrap();
    let target = Target {
        host: dir.display().to_string(),
        ..numbered(&pg, "sock", 1).await.remove(0)
    };
    // The answer deadline well past the statement's wait for its cancel.
    let pools = Pools::new(
        PoolConfig {
            answer_timeout: Duration::from_secs(120),
            ..PoolConfig::default()
        },
        4,
    );
    let conn = pools.get(&target).await.unwrap();
    let over_socket: bool = conn
        .query_one(
            "SELECT client_addr IS NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(over_socket, "the session came through the Unix socket");

    let token = conn.cancel_token();
    let running = tokio::spawn(async move {
        let outcome = conn.simple_query("SELECT pg_sleep(600)").await;
        outcome.map(|_| ()).map_err(|e| e.code().cloned())
    });
    // Cancelled once the server runs it.
    let admin = pg.connect("postgres").await;
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Pools::cancel(&token, &target)
        .await
        .expect("the cancel request reaches the server through its socket");
    let outcome = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the statement ends when cancelled")
        .unwrap();
    assert_eq!(
        outcome,
        Err(Some(tokio_postgres::error::SqlState::QUERY_CANCELED))
    );
}

//! Two router replicas (`tenantry serve` processes) over one catalog: together they keep
//! within a tenant's role connection limit and its plan's request rate.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::routers::{
    bearer, peak_sessions, sleepers, two_routers, wait_until_both_see_two, VARS,
};
use support::{token, Deployment};

async fn create_tenant(d: &Deployment, slug: &str, plan: &str) {
    let out = d.run(&["tenant", "create", slug, "--plan", plan]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn two_routers_keep_a_busy_tenant_within_its_role_connection_limit() {
    let d = Deployment::new().await;
    create_tenant(&d, "busy", "enterprise").await;
    let limit: i32 =
        d.pg.connect("postgres")
            .await
            .query_one(
                "SELECT rolconnlimit FROM pg_roles r JOIN pg_database b ON b.datdba = r.oid
             WHERE b.datname LIKE 't\\_%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(limit, 12, "enterprise: pool 10 + 2");
    let auth = bearer(&token("busy", None));

    // Router one alone warms the tenant's pool to the plan's 10 connections; once a
    // second router lives, it must give half of them back.
    let one = d.serve(&VARS).await;
    let warm = sleepers(&[&one.base], &auth, 10).await;
    assert!(warm.iter().all(|(s, _)| *s == StatusCode::OK), "{warm:?}");
    d.catalog()
        .await
        .execute("UPDATE servers SET max_connections = 60", &[])
        .await
        .unwrap();
    let two = d.serve(&VARS).await;
    wait_until_both_see_two([&one, &two]).await;

    // 20 concurrent one-second statements over both: each router holds at most 5
    // connections (10 of the role's 12); the others queue rather than fail.
    let (peak, results) =
        peak_sessions(&d, "busy", sleepers(&[&one.base, &two.base], &auth, 20)).await;
    let failed: Vec<_> = results
        .iter()
        .filter(|(s, _)| *s != StatusCode::OK)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 20 failed: {failed:?}",
        failed.len()
    );
    eprintln!("peak sessions of the tenant's role under 20 statements over two routers: {peak}");
    assert!(
        peak <= 10,
        "two routers hold at most 5 connections each for the tenant, not {peak}"
    );
}

#[tokio::test]
async fn two_routers_share_a_tenants_request_rate() {
    let d = Deployment::new().await;
    create_tenant(&d, "thrifty", "free").await;
    let (one, two) = two_routers(&d).await;
    let http = reqwest::Client::new();
    let auth = bearer(&token("thrifty", None));
    // Free: 5 requests a minute. Each of the 2 replicas allows ceil(5 / 2) = 3, so
    // together at least the plan's 5 and at most 5 + (2 - 1) = 6 in a burst; one replica
    // regains a request only every 20 s, longer than this loop takes.
    let started = Instant::now();
    let mut ok = [0; 2];
    for _ in 0..10 {
        for (i, r) in [&one, &two].into_iter().enumerate() {
            let status = http
                .get(format!("{}/v1/usage", r.base))
                .header("authorization", &auth)
                .send()
                .await
                .unwrap()
                .status();
            match status {
                StatusCode::OK => ok[i] += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "too slow to measure"
    );
    let total = ok[0] + ok[1];
    assert!((5..=6).contains(&total), "2xx per router: {ok:?}");
}

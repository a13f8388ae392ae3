//! Two router replicas (`tenantry serve` processes) over one catalog: together they keep
//! within a tenant's role connection limit and its plan's request rate.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use support::{token, Deployment, Router};

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn create_tenant(d: &Deployment, slug: &str, plan: &str) {
    let out = d.run(&["tenant", "create", slug, "--plan", plan]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fast heartbeats; requests may queue for their tenant's connections.
const VARS: [(&str, &str); 2] = [
    ("TENANTRY__ROUTER__HEARTBEAT_S", "1"),
    ("TENANTRY__ROUTER__POOL_WAIT_MS", "20000"),
];

/// The budget a router gives server `s1`, from its `/metrics`.
async fn budget(base: &str) -> Option<i64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("tenantry_server_connections{") && l.contains("kind=\"budget\""))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// The server's `max_connections` is set to 60, and each router gives it
/// `60 / (live + 1)`: a budget of 20 says the router's last heartbeat counted 2 live
/// replicas (the same beat sets the count that splits pools and rates).
async fn wait_until_both_see_two(routers: [&Router; 2]) {
    for r in routers {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now = budget(&r.base).await;
            if now == Some(20) {
                break;
            }
            assert!(Instant::now() < deadline, "budget {now:?}, expected 20");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn two_routers(d: &Deployment) -> (Router, Router) {
    d.catalog()
        .await
        .execute("UPDATE servers SET max_connections = 60", &[])
        .await
        .unwrap();
    let one = d.serve(&VARS).await;
    let two = d.serve(&VARS).await;
    wait_until_both_see_two([&one, &two]).await;
    (one, two)
}

/// `n` concurrent one-second statements, spread evenly over the routers; their statuses
/// and error codes.
async fn sleepers(routers: &[&str], auth: &str, n: usize) -> Vec<(StatusCode, String)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let calls = (0..n).map(|i| {
        let (http, url) = (
            http.clone(),
            format!("{}/v1/sql", routers[i % routers.len()]),
        );
        async move {
            let resp = http
                .post(url)
                .header("authorization", auth)
                .json(&json!({"sql": "select pg_sleep(1)"}))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            (
                status,
                body["error"]["code"].as_str().unwrap_or("").to_owned(),
            )
        }
    });
    futures_util::future::join_all(calls).await
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
    let started = Instant::now();
    let results = sleepers(&[&one.base, &two.base], &auth, 20).await;
    let failed: Vec<_> = results
        .iter()
        .filter(|(s, _)| *s != StatusCode::OK)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 20 failed: {failed:?}",
        failed.len()
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "20 one-second statements on 10 connections take two rounds"
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

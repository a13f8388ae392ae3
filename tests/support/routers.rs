//! Several `tenantry serve` replicas over one catalog, and requests spread over them.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tenantry_testkit::{SessionPeak, Sessions};

use super::{Deployment, Router};

pub fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Fast heartbeats; requests may queue for their tenant's connections.
pub const VARS: [(&str, &str); 2] = [
    ("TENANTRY__ROUTER__HEARTBEAT_S", "1"),
    ("TENANTRY__ROUTER__POOL_WAIT_MS", "20000"),
];

/// The budget a router gives server `s1`, from its `/metrics`.
pub async fn budget(base: &str) -> Option<i64> {
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

/// The server's `max_connections` is set to 60, and each router leases `60 / live` of
/// it: a budget of 30 says the router's last heartbeat counted 2 live replicas (the
/// same beat sets the count that splits pools and rates).
pub async fn wait_until_both_see_two(routers: [&Router; 2]) {
    for r in routers {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now = budget(&r.base).await;
            if now == Some(30) {
                break;
            }
            assert!(Instant::now() < deadline, "budget {now:?}, expected 30");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub async fn two_routers(d: &Deployment) -> (Router, Router) {
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
pub async fn sleepers(routers: &[&str], auth: &str, n: usize) -> Vec<(StatusCode, String)> {
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

/// The live tenant's role name.
pub async fn role_of(d: &Deployment, slug: &str) -> String {
    d.catalog()
        .await
        .query_one(
            "SELECT role_name FROM tenants WHERE slug = $1 AND state <> 'deleted'",
            &[&slug],
        )
        .await
        .unwrap()
        .get(0)
}

/// The most sessions of `role` the server had at once while `work` ran.
pub async fn peak_sessions<T>(
    d: &Deployment,
    slug: &str,
    work: impl std::future::Future<Output = T>,
) -> (i64, T) {
    let role = role_of(d, slug).await;
    let sampler =
        SessionPeak::start(&d.pg, Sessions::OfRole(role), Duration::from_millis(20)).await;
    let out = work.await;
    (sampler.stop().await, out)
}

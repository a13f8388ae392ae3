//! Priority processing over real HTTP: a router whose budget for its server is one
//! connection, held by a long statement; free, pro and enterprise requests queue behind
//! it in that order, and are served enterprise, pro, free.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use support::{token, Deployment};

/// Waits until the server runs a statement whose text starts with `prefix`.
async fn running(d: &Deployment, prefix: &str) {
    let admin = d.pg.connect("postgres").await;
    let active =
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1 || '%'";
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while admin
            .query_one(active, &[&prefix])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "{prefix}… never ran");
}

#[tokio::test]
async fn a_contended_budget_serves_enterprise_then_pro_then_free_over_http() {
    let d = Deployment::new().await;
    for (slug, plan) in [
        ("holder", "enterprise"),
        ("free-one", "free"),
        ("pro-one", "pro"),
        ("ent-one", "enterprise"),
    ] {
        d.json(&["tenant", "create", slug, "--plan", plan], 0);
    }
    // A lone router leases the whole budget: one connection.
    d.catalog()
        .await
        .execute("UPDATE servers SET max_connections = 1", &[])
        .await
        .unwrap();
    let r = d
        .serve(&[
            ("TENANTRY__ROUTER__POOL_WAIT_MS", "20000"),
            // Longer than the holder holds: no waiter is past the bound meanwhile.
            ("TENANTRY__ROUTER__PRIORITY_MAX_DEFER_MS", "10000"),
        ])
        .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    let holder = {
        let (http, url) = (http.clone(), format!("{}/v1/sql", r.base));
        let auth = format!("Bearer {}", token("holder", None));
        tokio::spawn(async move {
            http.post(url)
                .header("authorization", auth)
                .json(&json!({"sql": "SELECT pg_sleep(3)"}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    running(&d, "SELECT pg_sleep").await;

    // Each waits for the one connection; they arrive free, pro, enterprise.
    let mut waiting = Vec::new();
    for slug in ["free-one", "pro-one", "ent-one"] {
        let (http, url) = (http.clone(), format!("{}/v1/tasks", r.base));
        let auth = format!("Bearer {}", token(slug, None));
        waiting.push(tokio::spawn(async move {
            let resp = http
                .post(url)
                .header("authorization", auth)
                .json(&json!({"agent": "opencode", "title": "queued"}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201, "{slug}");
            let task: serde_json::Value = resp.json().await.unwrap();
            let at: DateTime<Utc> = task["created_at"].as_str().unwrap().parse().unwrap();
            (at, slug)
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(holder.await.unwrap(), 200);
    let mut served = Vec::new();
    for w in waiting {
        served.push(w.await.unwrap());
    }
    // A task's created_at is its transaction's start, on the one server's clock: after
    // its request got the connection, which the one before it had given back.
    served.sort();
    let order: Vec<&str> = served.iter().map(|(_, slug)| *slug).collect();
    assert_eq!(order, ["ent-one", "pro-one", "free-one"]);
}

//! Routers in a fleet over real HTTP, as `tenantry serve` processes against real
//! clusters: a second router hearing of a suspend, a stopped server costing only its own
//! tenants, and a shutdown draining the requests in flight.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::routers::bearer;
use support::{token, wait_for_answer, Deployment};

#[tokio::test]
async fn a_suspend_is_seen_by_a_second_router_within_a_second() {
    let d = Deployment::new().await;
    d.create_tenant("sleepy", "pro");
    let one = d.serve(&[]).await;
    let two = d.serve(&[]).await;
    let http = reqwest::Client::new();
    let t = bearer(&token("sleepy", None));
    // Router two has the tenant cached.
    for _ in 0..2 {
        assert_eq!(
            http.get(format!("{}/v1/usage", two.base))
                .header("authorization", &t)
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    let admin = bearer(&support::admin_token());
    let started = Instant::now();
    let resp = http
        .post(format!("{}/admin/v1/tenants/sleepy/suspend", one.base))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let usage_two = format!("{}/v1/usage", two.base);
    wait_for_answer(
        &http,
        &usage_two,
        &t,
        StatusCode::LOCKED,
        started + Duration::from_secs(1),
        "router two still served a suspended tenant",
    )
    .await;
    let resp = http
        .post(format!("{}/admin/v1/tenants/sleepy/resume", one.base))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    support::wait_for_status(
        &format!("{}/healthz", two.base),
        200,
        Duration::from_secs(2),
    )
    .await;
    wait_for_answer(
        &http,
        &usage_two,
        &t,
        StatusCode::OK,
        Instant::now() + Duration::from_secs(2),
        "router two did not see the resume",
    )
    .await;

    // The listeners lose their catalog connection: they LISTEN again, and a later
    // suspend still reaches router two quickly.
    let catalog = d.catalog().await;
    let killed: i64 = catalog
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'tenantry-router-listen') k",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 2, "one listener per router");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let back: i64 = catalog
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantry-router-listen'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if back == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the listeners did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(d.run(&["tenant", "suspend", "sleepy"]).status.success());
    wait_for_answer(
        &http,
        &usage_two,
        &t,
        StatusCode::LOCKED,
        Instant::now() + Duration::from_secs(1),
        "a suspend after the reconnect was missed",
    )
    .await;

    // The admin API creates (201, then 200 for the same slug) through the provisioner.
    let body = json!({"slug": "via-api", "plan": "free"});
    let created = http
        .post(format!("{}/admin/v1/tenants", one.base))
        .header("authorization", &admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let again = http
        .post(format!("{}/admin/v1/tenants", one.base))
        .header("authorization", &admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let conflict = http
        .post(format!("{}/admin/v1/tenants", one.base))
        .header("authorization", &admin)
        .json(&json!({"slug": "via-api", "plan": "pro"}))
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let bad = http
        .post(format!("{}/admin/v1/tenants", one.base))
        .header("authorization", &admin)
        .json(&json!({"slug": "Bad!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let export = http
        .get(format!("{}/admin/v1/tenants/via-api/export", one.base))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), StatusCode::OK);
    assert!(export.bytes().await.unwrap().starts_with(b"PGDMP"));
}

#[tokio::test]
async fn a_stopped_server_costs_only_its_own_tenants() {
    let d = Deployment::new().await;
    let mut second = tenantry_testkit::TestCluster::start();
    let url = second.url("postgres");
    assert!(d
        .run(&["server", "add", "s2", "--url", &url])
        .status
        .success());
    assert!(d
        .run(&[
            "tenant",
            "create",
            "steady",
            "--server",
            "s1",
            "--plan",
            "enterprise"
        ])
        .status
        .success());
    assert!(d
        .run(&[
            "tenant",
            "create",
            "shaky",
            "--server",
            "s2",
            "--plan",
            "enterprise"
        ])
        .status
        .success());
    let r = d
        .serve(&[
            ("TENANTRY__ROUTER__POOL_WAIT_MS", "500"),
            ("TENANTRY__ROUTER__PRIORITY_MAX_DEFER_MS", "100"),
            ("TENANTRY__ROUTER__POOL_CONNECT_MS", "500"),
        ])
        .await;
    let http = reqwest::Client::new();
    let (steady, shaky) = (
        bearer(&token("steady", Some("x"))),
        bearer(&token("shaky", None)),
    );
    for t in [&steady, &shaky] {
        assert_eq!(
            http.get(format!("{}/v1/tasks", r.base))
                .header("authorization", t)
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    second.stop_server();
    let started = Instant::now();
    let resp = http
        .get(format!("{}/v1/tasks", r.base))
        .header("authorization", &shaky)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered within the wait deadline"
    );
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "tenant_unavailable"
    );
    for _ in 0..5 {
        assert_eq!(
            http.get(format!("{}/v1/tasks", r.base))
                .header("authorization", &steady)
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    second.restart_server();
    wait_for_answer(
        &http,
        &format!("{}/v1/tasks", r.base),
        &shaky,
        StatusCode::OK,
        Instant::now() + Duration::from_secs(10),
        "the tenant did not recover with its server",
    )
    .await;
    drop(r);
    d.pg.connect("postgres").await;
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    let d = Deployment::new().await;
    d.create_tenant("patient", "enterprise");
    let r = d.serve(&[]).await;
    let t = bearer(&token("patient", None));
    // A first request, on an HTTP connection of its own (so one worker), opens the
    // tenant's database connection on that worker's thread, then leaves it idle. The slow
    // request comes on a second HTTP connection, which the router hands to its other
    // worker: it takes that idle connection rather than open one. Asked to stop, the
    // first worker has nothing in flight, yet the connection it drives must outlive it.
    let first = reqwest::Client::new()
        .get(format!("{}/v1/tasks", r.base))
        .header("authorization", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let http = reqwest::Client::new();
    let slow = {
        let (http, url, t) = (http.clone(), format!("{}/v1/sql", r.base), t.clone());
        tokio::spawn(async move {
            http.post(url)
                .header("authorization", t)
                .json(&json!({"sql": "SELECT pg_sleep(1.5) IS NULL AS slept"}))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    r.process.signal("TERM");
    let resp = slow
        .await
        .unwrap()
        .expect("the request in flight was answered");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["rows"][0]["slept"], false);
    let (status, _, stderr) = r.process.wait(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
}

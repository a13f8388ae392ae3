//! The catalog fails over on PostgreSQL's own streaming replication: routers and the CLI
//! are given both hosts (`target_session_attrs=read-write`, as libpq takes them), the
//! primary crashes under load, and the standby is promoted.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::routers::bearer;
use support::{admin_token, token, Deployment};
use tenantry_testkit::TestCluster;

/// Asks `ask` until it says yes, up to `within`; how long it took.
async fn until<F, Fut>(what: &str, within: Duration, mut ask: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !ask().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn status(http: &reqwest::Client, url: &str, auth: &str) -> Option<StatusCode> {
    http.get(url)
        .header("authorization", auth)
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

#[tokio::test]
async fn routers_and_the_cli_ride_out_a_catalog_failover() {
    // The catalog on a primary with a streaming standby; tenants on a server of their own.
    let mut primary = TestCluster::start();
    primary.create_database("catalog").await;
    let standby = primary.standby();
    let servers = TestCluster::start();
    let password = secrecy::ExposeSecret::expose_secret(primary.password()).to_owned();
    let catalog_url = format!(
        "postgres://{}:{password}@127.0.0.1:{},127.0.0.1:{}/catalog?target_session_attrs=read-write",
        primary.superuser(),
        primary.port(),
        standby.port()
    );
    let d = Deployment::with(servers, catalog_url).await;
    for slug in ["warm-0", "warm-1", "warm-2", "cold-0", "later"] {
        d.json(&["tenant", "create", slug, "--plan", "enterprise"], 0);
    }
    let vars = [("TENANTRY__ROUTER__HEARTBEAT_S", "1")];
    let routers = [d.serve(&vars).await, d.serve(&vars).await];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let warm: Vec<String> = (0..3)
        .map(|i| bearer(&token(&format!("warm-{i}"), None)))
        .collect();
    for r in &routers {
        for t in &warm {
            let url = format!("{}/v1/tasks?limit=1", r.base);
            assert_eq!(status(&http, &url, t).await, Some(StatusCode::OK));
        }
    }

    // Steady load on the warm tenants, through both routers, all along: four requests
    // a second per tenant and router, within enterprise's rate (600 a minute, split).
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = (0..6)
        .map(|c| {
            let (http, stop, served, failures) =
                (http.clone(), stop.clone(), served.clone(), failures.clone());
            let url = format!("{}/v1/tasks?limit=1", routers[c % 2].base);
            let auth = warm[c % 3].clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match status(&http, &url, &auth).await {
                        Some(StatusCode::OK) => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        other => failures.lock().unwrap().push(other),
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The primary crashes; the standby is promoted a second later.
    primary.crash_server();
    tokio::time::sleep(Duration::from_secs(1)).await;
    standby.promote().await;
    let promoted = Instant::now();

    // A tenant no router has seen, the admin API and the CLI work again.
    let cold = bearer(&token("cold-0", None));
    let mut cold_after = Duration::ZERO;
    for r in &routers {
        let url = format!("{}/v1/tasks?limit=1", r.base);
        until(
            "an uncached tenant is served",
            Duration::from_secs(30),
            || async { status(&http, &url, &cold).await == Some(StatusCode::OK) },
        )
        .await;
        cold_after = promoted.elapsed();
    }
    let admin = bearer(&admin_token());
    let admin_url = format!("{}/admin/v1/tenants/later", routers[0].base);
    until("the admin API answers", Duration::from_secs(30), || async {
        status(&http, &admin_url, &admin).await == Some(StatusCode::OK)
    })
    .await;
    let admin_after = promoted.elapsed();
    until("the CLI answers", Duration::from_secs(30), || async {
        d.run(&["tenant", "show", "later"]).status.success()
    })
    .await;
    let cli_after = promoted.elapsed();

    // A suspend after the failover reaches every router through LISTEN on the new primary.
    d.json(&["tenant", "suspend", "warm-2"], 0);
    let suspended = Instant::now();
    for r in &routers {
        let url = format!("{}/v1/tasks?limit=1", r.base);
        until(
            "the suspend reaches the router",
            Duration::from_secs(30),
            || async { status(&http, &url, &warm[2]).await == Some(StatusCode::LOCKED) },
        )
        .await;
    }
    let suspend_after = suspended.elapsed();
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    eprintln!(
        "after the promotion: an uncached tenant served by both routers {cold_after:?}, the admin API {admin_after:?}, the CLI {cli_after:?}; a suspend reached both routers in {suspend_after:?}; {} requests to warm tenants served",
        served.load(Ordering::SeqCst)
    );
    // Warm tenants were served throughout, with no error; only warm-2's own requests
    // after its suspend may be 423.
    let failures = failures.lock().unwrap();
    assert!(
        failures.iter().all(|s| *s == Some(StatusCode::LOCKED)),
        "warm tenants saw errors during the failover: {failures:?}"
    );
    assert!(served.load(Ordering::SeqCst) > 30);
}

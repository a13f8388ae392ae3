//! Two router replicas (`tenantry serve` processes) over one catalog: together they keep
//! within a tenant's role connection limit and its plan's request rate.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::routers::{
    bearer, budget, peak_sessions, sleepers, two_routers, wait_until_both_see_two, VARS,
};
use support::{token, Deployment};

#[tokio::test]
async fn two_routers_keep_a_busy_tenant_within_its_role_connection_limit() {
    let d = Deployment::new().await;
    d.create_tenant("busy", "enterprise");
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
    d.create_tenant("thrifty", "free");
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

/// The most router sessions seen over `secs` seconds.
async fn peak_for(admin: &tokio_postgres::Client, secs: u64) -> i64 {
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        peak = peak.max(router_sessions(admin).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peak
}

/// Router connections to the server now (tenant sessions only).
async fn router_sessions(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantry-router'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// A lone router leases the whole budget and uses it under load; routers joining (two,
/// then three) and leaving (a clean stop, then a kill) under the same load never take the
/// server's router sessions past it; alone again, the router takes the whole budget back.
#[tokio::test]
async fn a_lone_router_uses_the_whole_budget_and_joins_and_leaves_never_pass_it() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    const BUDGET: i64 = 20;
    let d = Deployment::new().await;
    // Four enterprise tenants: each pool may take a fair quarter of a lone router's
    // budget (5 of its plan's 10), so 40 clients can fill all of it.
    d.enterprise_tenants(4).await;
    d.catalog()
        .await
        .execute(
            "UPDATE servers SET max_connections = $1",
            &[&(BUDGET as i32)],
        )
        .await
        .unwrap();
    let one = d.serve(&VARS).await;
    let tokens: Vec<String> = (0..4)
        .map(|i| bearer(&token(&format!("load-{i}"), None)))
        .collect();

    // The routers taking requests now; clients spread over them.
    let live = Arc::new(Mutex::new(vec![one.base.clone()]));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..40)
        .map(|c| {
            let (live, stop, served, tokens) =
                (live.clone(), stop.clone(), served.clone(), tokens.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let mut i = c;
                while !stop.load(Ordering::SeqCst) {
                    let base = {
                        let live = live.lock().unwrap();
                        live[i % live.len()].clone()
                    };
                    i += 1;
                    let sent = http
                        .post(format!("{base}/v1/sql"))
                        .header("authorization", &tokens[c % tokens.len()])
                        .json(&serde_json::json!({"sql": "select pg_sleep(0.2)"}))
                        .send()
                        .await;
                    // A router that was just taken out of the list may refuse the
                    // connection: the request goes to another one.
                    let Ok(resp) = sent else { continue };
                    assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
                    served.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    let admin = d.pg.connect("postgres").await;
    let alone = peak_for(&admin, 4).await;
    assert!(
        (BUDGET * 95 / 100..=BUDGET).contains(&alone),
        "a lone router under load held {alone} of {BUDGET}"
    );

    let watch = {
        let url = d.pg.url("postgres");
        let stop = stop.clone();
        tokio::spawn(async move {
            let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(router_sessions(&admin).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        })
    };
    let two = d.serve(&VARS).await;
    live.lock().unwrap().push(two.base.clone());
    let three = d.serve(&VARS).await;
    live.lock().unwrap().push(three.base.clone());
    let three_up = peak_for(&admin, 3).await;
    // Back to one: a clean stop, then a kill.
    live.lock().unwrap().retain(|b| *b != three.base);
    three.process.signal("TERM");
    let (status, _, stderr) = three.process.wait(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    live.lock().unwrap().retain(|b| *b != two.base);
    two.process.signal("KILL");
    let _ = two.process.wait(Duration::from_secs(30));
    // The killed router's lease goes after three heartbeats (1 s each here).
    let deadline = Instant::now() + Duration::from_secs(10);
    while budget(&one.base).await != Some(BUDGET) {
        assert!(
            Instant::now() < deadline,
            "the lone router never got the budget back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alone_again = peak_for(&admin, 3).await;
    stop.store(true, Ordering::SeqCst);
    let overall = watch.await.unwrap();
    for c in clients {
        c.await.unwrap();
    }
    eprintln!(
        "router sessions at the peak: alone {alone}, with three {three_up}, alone again {alone_again}, throughout {overall} (budget {BUDGET}); {} statements served",
        served.load(Ordering::SeqCst)
    );
    assert!(
        overall <= BUDGET,
        "{overall} sessions, over the budget of {BUDGET}"
    );
    assert!(
        alone_again >= BUDGET * 95 / 100,
        "alone again, the router held {alone_again} of {BUDGET}"
    );
}

//! Servers' connection budgets over real HTTP: many tenants under load never pass a
//! server's budget, a dead router's lease returns to the living, and a server on the
//! router's host is reached over its Unix socket.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use support::routers::{bearer, budget};
use support::{token, Deployment};
use tenantry_testkit::{SessionPeak, Sessions};

#[tokio::test]
async fn many_tenants_under_load_never_exceed_the_connection_budget() {
    let d = Deployment::new().await;
    let catalog = d.catalog().await;
    catalog
        .execute("UPDATE servers SET max_connections = 24", &[])
        .await
        .unwrap();
    let tenants = 500;
    d.enterprise_tenants(tenants).await;
    let fast = [
        ("TENANTRY__ROUTER__IDLE_TIMEOUT_S", "1"),
        ("TENANTRY__ROUTER__POOL_WAIT_MS", "3000"),
    ];
    let one = d.serve(&fast).await;
    let two = d.serve(&fast).await;
    let bases = [one.base.clone(), two.base.clone()];
    let tokens: Vec<String> = (0..tenants)
        .map(|i| bearer(&token(&format!("load-{i}"), None)))
        .collect();

    let sampler = SessionPeak::start(
        &d.pg,
        Sessions::Named("tenantry-router".into()),
        Duration::from_millis(25),
    )
    .await;
    let http = reqwest::Client::new();
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let (http, bases, tokens) = (http.clone(), bases.clone(), tokens.clone());
            tokio::spawn(async move {
                let mut ok = 0;
                let until = Instant::now() + Duration::from_secs(6);
                let mut i = w * 7;
                while Instant::now() < until {
                    let url = format!("{}/v1/tasks?limit=1", bases[i % 2]);
                    let token = &tokens[(i * 31) % tokens.len()];
                    // A keep-alive connection may close just as a request is sent on it
                    // (a race in every HTTP/1.1 client): a GET is retried once, as clients do.
                    let resp = match http.get(&url).header("authorization", token).send().await {
                        Ok(r) => r,
                        Err(_) => http
                            .get(&url)
                            .header("authorization", token)
                            .send()
                            .await
                            .unwrap(),
                    };
                    let status = resp.status();
                    assert!(
                        status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
                        "{status}"
                    );
                    ok += usize::from(status == StatusCode::OK);
                    i += 1;
                }
                ok
            })
        })
        .collect();
    let mut served = 0;
    for w in workers {
        served += w.await.unwrap();
    }
    let peak = sampler.stop().await;
    // Each router's lease is half of 24 (two live replicas).
    for base in &bases {
        let m = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            m.contains("tenantry_server_connections{kind=\"budget\",server=\"1\"} 12"),
            "{m}"
        );
    }
    assert!(served > 50, "only {served} requests were served");
    assert!(
        peak <= 24,
        "{peak} connections at the peak, over the budget of 24"
    );
    assert!(peak >= 4, "the load used the budget ({peak})");
}

/// Waits until `base`'s budget for the server is `want`.
async fn wait_for_budget(base: &str, want: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = budget(base).await;
        if now == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "budget {now:?}, expected {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server of 60 connections, and one router on it (1 s heartbeats) holding them all.
async fn a_lone_router() -> (Deployment, support::Router) {
    let d = Deployment::new().await;
    d.catalog()
        .await
        .execute("UPDATE servers SET max_connections = 60", &[])
        .await
        .unwrap();
    let one = d.serve(&BEAT).await;
    wait_for_budget(&one.base, 60, Duration::from_secs(5)).await;
    (d, one)
}

const BEAT: [(&str, &str); 1] = [("TENANTRY__ROUTER__HEARTBEAT_S", "1")];

#[tokio::test]
async fn a_dead_routers_share_of_the_budget_returns_to_the_living() {
    // Alone: the whole budget.
    let (d, one) = a_lone_router().await;
    // A joiner is given half, at once (not a heartbeat later): the other hands it back.
    let two = d.serve(&BEAT).await;
    wait_for_budget(&one.base, 30, Duration::from_secs(5)).await;
    wait_for_budget(&two.base, 30, Duration::from_secs(5)).await;
    // Killed: no goodbye; its heartbeat goes stale (3 beats), its lease goes with its
    // row, and the living take it up.
    two.process.signal("KILL");
    wait_for_budget(&one.base, 60, Duration::from_secs(8)).await;
}

/// A lone router killed and started again (a crash, then a restart) has the whole
/// budget from its first beat: its dead predecessor's lease does not hold it back for
/// heartbeats (1 s each here).
#[tokio::test]
async fn a_lone_router_restarted_after_a_crash_has_the_whole_budget_at_once() {
    let (d, first) = a_lone_router().await;
    first.process.signal("KILL");
    // Past three heartbeats, the predecessor's row is stale.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let again = d.serve(&BEAT).await;
    assert_eq!(budget(&again.base).await, Some(60));
}

/// A server on the router's host can be reached over its Unix socket: registered with
/// `host=/folder`, its tenants are provisioned, migrated and served through the socket.
#[tokio::test]
async fn a_server_registered_by_its_unix_socket_is_served_through_it() {
    let d = Deployment::new().await;
    let local = tenantry_testkit::TestCluster::start_with_unix_socket();
    let dir = local.socket_dir().unwrap();
    let password = secrecy::ExposeSecret::expose_secret(local.password()).to_owned();
    let url = format!(
        "postgres://{}:{password}@/postgres?host={}&port={}",
        local.superuser(),
        dir.display(),
        local.port()
    );
    d.json(&["server", "add", "sock", "--url", &url], 0);
    d.json(&["server", "drain", "s1"], 0);
    let t = d.json(&["tenant", "create", "local", "--plan", "enterprise"], 0);
    assert_eq!(t["server"], "sock");
    let r = d.serve(&[]).await;
    let http = reqwest::Client::new();
    let auth = bearer(&token("local", None));
    let created = http
        .post(format!("{}/v1/tasks", r.base))
        .header("authorization", &auth)
        .json(&json!({"agent": "opencode", "title": "over the socket"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let sessions = local
        .connect("postgres")
        .await
        .query(
            "SELECT client_addr IS NULL FROM pg_stat_activity WHERE application_name = 'tenantry-router'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        !sessions.is_empty(),
        "the router holds a session on the server"
    );
    assert!(
        sessions.iter().all(|s| s.get::<_, bool>(0)),
        "every router session came through the Unix socket"
    );
}

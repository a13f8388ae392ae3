//! The router over real HTTP, as `tenantry serve` processes against real clusters.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::routers::bearer;
use support::{token, Deployment};

#[tokio::test]
async fn tokens_inputs_and_errors_over_http() {
    let d = Deployment::new().await;
    d.create_tenant("acme", "pro");
    let r = d.serve(&[]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/tasks", r.base);

    // No token, garbage, a token for a tenant that does not exist.
    for auth in [
        None,
        Some("Bearer nope".to_owned()),
        Some("Basic dXNlcjpwdw==".to_owned()),
    ] {
        let mut req = http.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let ghost = http
        .get(&url)
        .header("authorization", bearer(&token("ghost", None)))
        .send()
        .await
        .unwrap();
    assert_eq!(ghost.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        ghost.json::<Value>().await.unwrap()["error"]["code"],
        "tenant_not_found"
    );
    // The admin API wants scope admin.
    let no_admin = http
        .get(format!("{}/admin/v1/tenants", r.base))
        .header("authorization", bearer(&token("acme", None)))
        .send()
        .await
        .unwrap();
    assert_eq!(no_admin.status(), StatusCode::FORBIDDEN);

    let t = bearer(&token("acme", None));
    // Malformed JSON, missing fields, an unknown agent, an oversized body.
    let cases: Vec<(String, &str, StatusCode)> = vec![
        (
            "{not json".into(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"agent": "claude"}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"agent": "gpt", "title": "x"}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"agent": "claude", "title": ""}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"agent": "claude", "title": "x", "input": "y".repeat(300_000)}).to_string(),
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "agent=claude".into(),
            "application/x-www-form-urlencoded",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (body, ctype, status) in cases {
        let resp = http
            .post(&url)
            .header("authorization", &t)
            .header("content-type", ctype)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{}", &body[..body.len().min(60)]);
        let text = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert!(v["error"]["code"].is_string(), "{text}");
        assert!(
            !text.contains("serde") && !text.contains("tokio") && !text.contains("SQLSTATE"),
            "{text}"
        );
    }
    // Bad ids and cursors.
    let bad_id = http
        .get(format!("{url}/not-a-uuid"))
        .header("authorization", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_id.status(), StatusCode::NOT_FOUND);
    let bad_cursor = http
        .get(format!("{url}?cursor=zzz"))
        .header("authorization", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_cursor.status(), StatusCode::BAD_REQUEST);
    let bad_limit = http
        .get(format!("{url}?limit=1000"))
        .header("authorization", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_limit.status(), StatusCode::BAD_REQUEST);
    // Oversized headers are refused, not served.
    let huge = http
        .get(&url)
        .header("authorization", &t)
        .header("x-padding", "p".repeat(64 * 1024))
        .send()
        .await;
    let huge = huge.unwrap();
    assert_eq!(huge.status(), StatusCode::from_u16(431).unwrap());
    assert_eq!(
        huge.json::<Value>().await.unwrap()["error"]["code"],
        "headers_too_large"
    );
    // Still healthy after all that.
    assert_eq!(
        http.get(&url)
            .header("authorization", &t)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // The whole task life, with cursor pagination.
    let mut ids = Vec::new();
    for i in 0..5 {
        let resp = http
            .post(&url)
            .header("authorization", &t)
            .json(&json!({"agent": "codex", "title": format!("task {i}"), "input": {"n": i}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let task: Value = resp.json().await.unwrap();
        assert_eq!(task["cost_cents"], 30);
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut u = format!("{url}?limit=2");
        if let Some(c) = &cursor {
            u.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http
            .get(&u)
            .header("authorization", &t)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let patched: Value = http
        .patch(format!("{url}/{}", ids[0]))
        .header("authorization", &t)
        .json(&json!({"status": "done", "output": {"ok": true}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            patched["status"].as_str(),
            patched["output"]["ok"].as_bool()
        ),
        (Some("done"), Some(true))
    );
    let done: Value = http
        .get(format!("{url}?status=done"))
        .header("authorization", &t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        http.delete(format!("{url}/{}", ids[0]))
            .header("authorization", &t)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        http.get(format!("{url}/{}", ids[0]))
            .header("authorization", &t)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let usage: Value = http
        .get(format!("{}/v1/usage", r.base))
        .header("authorization", &t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["plan"], "pro");
    assert_eq!(usage["tasks_used"], 5);
    assert_eq!(usage["tasks_quota"], 100);
    assert_eq!(usage["cost_cents"], 150);
    assert_eq!(usage["rate_limit_per_minute"], 60);

    // Idempotency-Key: a retry finds the task, and is not counted again.
    for _ in 0..2 {
        let resp = http
            .post(&url)
            .header("authorization", &t)
            .header("idempotency-key", "retry-me")
            .json(&json!({"agent": "codex", "title": "once"}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }
    let usage: Value = http
        .get(format!("{}/v1/usage", r.base))
        .header("authorization", &t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["tasks_used"], 6);

    // The OpenAPI document covers every route the router serves.
    let doc: Value = http
        .get(format!("{}/openapi.json", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/admin/",
            "/admin/v1/fleet",
            "/admin/v1/fleet/tenants",
            "/admin/v1/migration-runs",
            "/admin/v1/migration-runs/{id}",
            "/admin/v1/migrations",
            "/admin/v1/operations",
            "/admin/v1/operations/{id}",
            "/admin/v1/servers",
            "/admin/v1/tenants",
            "/admin/v1/tenants/{slug}",
            "/admin/v1/tenants/{slug}/export",
            "/admin/v1/tenants/{slug}/move",
            "/admin/v1/tenants/{slug}/resume",
            "/admin/v1/tenants/{slug}/suspend",
            "/admin/v1/usage",
            "/healthz",
            "/readyz",
            "/v1/sql",
            "/v1/tasks",
            "/v1/tasks/{id}",
            "/v1/usage",
        ]
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["Task"].is_object());

    // A path no route has, and a method a route does not take: 404 in the error shape,
    // labelled `unmatched`, never with a value from the request.
    for (method, path) in [
        (reqwest::Method::GET, "/no-such-route-7f3a".to_owned()),
        (reqwest::Method::PUT, format!("/v1/tasks/{}", ids[0])),
    ] {
        let resp = http
            .request(method, format!("{}{path}", r.base))
            .header("authorization", &t)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }

    let metrics = http
        .get(format!("{}/metrics", r.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tenantry_http_requests_total{route=\"/v1/tasks/{id}\",status=\"404\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tenantry_http_requests_total{route=\"unmatched\",status=\"404\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tenantry_http_request_duration_seconds_count{route=\"/v1/tasks\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("no-such-route") && !metrics.contains(ids[0].as_str()));
    assert!(metrics.contains("tenantry_tenants{state=\"ready\"} 1"));
}

#[tokio::test]
async fn plans_forbid_agents_and_the_quota_admits_exactly_its_count() {
    let d = Deployment::new().await;
    let config = d.home.path().join("burst.toml");
    std::fs::write(
        &config,
        "[plans.burst]\ntasks_per_month = 10\nrequests_per_minute = 100000\nagents = [\"opencode\"]\napi_access = false\npool_size = 5\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let r = {
        let mut cmd = d.cmd(&["--config", &config, "serve"]);
        cmd.env("TENANTRY__HTTP__BIND", "127.0.0.1:0");
        let mut process = support::Running::spawn(cmd);
        let base = process.router_url(Duration::from_secs(60)).await;
        support::wait_for_status(&format!("{base}/readyz"), 200, Duration::from_secs(60)).await;
        support::Router { process, base }
    };
    d.create_tenant("bursty", "burst");
    d.create_tenant("freebie", "free");
    let http = reqwest::Client::new();
    let url = format!("{}/v1/tasks", r.base);

    let forbidden = http
        .post(&url)
        .header("authorization", bearer(&token("freebie", None)))
        .json(&json!({"agent": "claude", "title": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);

    let t = bearer(&token("bursty", None));
    let attempts: Vec<_> = (0..50)
        .map(|i| {
            let (http, url, t) = (http.clone(), url.clone(), t.clone());
            tokio::spawn(async move {
                http.post(&url)
                    .header("authorization", t)
                    .json(&json!({"agent": "opencode", "title": format!("t{i}")}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut created = 0;
    let mut refused = 0;
    for a in attempts {
        match a.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 10, "exactly the quota is admitted");
    assert!(refused >= 1);
    let usage: Value = http
        .get(format!("{}/v1/usage", r.base))
        .header("authorization", &t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["tasks_used"], 10);

    // The free plan's 5 requests a minute: the sixth is rate limited, with Retry-After.
    let f = bearer(&token("freebie", None));
    let mut limited = None;
    for _ in 0..8 {
        let resp = http
            .get(format!("{}/v1/usage", r.base))
            .header("authorization", &f)
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(resp);
            break;
        }
    }
    let limited = limited.expect("the free plan is rate limited");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(
        limited.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );
}

#[tokio::test]
async fn a_token_for_one_tenant_never_reaches_another() {
    let d = Deployment::new().await;
    d.create_tenant("alpha", "enterprise");
    d.create_tenant("beta", "enterprise");
    let r = d.serve(&[]).await;
    let http = reqwest::Client::new();
    let (a, b) = (bearer(&token("alpha", None)), bearer(&token("beta", None)));
    let url = format!("{}/v1/tasks", r.base);
    let task: Value = http
        .post(&url)
        .header("authorization", &a)
        .json(&json!({"agent": "claude", "title": "alpha's secret"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = task["id"].as_str().unwrap();
    let listed: Value = http
        .get(&url)
        .header("authorization", &b)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]));
    for req in [
        http.get(format!("{url}/{id}")),
        http.patch(format!("{url}/{id}"))
            .json(&json!({"status": "done"})),
        http.delete(format!("{url}/{id}")),
    ] {
        assert_eq!(
            req.header("authorization", &b)
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::NOT_FOUND
        );
    }
    // /v1/sql runs in the token's tenant's own database, as its own role.
    let who: Value = http
        .post(format!("{}/v1/sql", r.base))
        .header("authorization", &b)
        .json(&json!({"sql": "SELECT current_database() AS db, current_user AS who, (SELECT count(*) FROM tasks) AS n"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let beta = d.json(&["tenant", "show", "beta"], 0);
    assert_eq!(who["rows"][0]["db"], beta["database"]);
    assert_eq!(who["rows"][0]["n"], 0);
    let alpha = d.json(&["tenant", "show", "alpha"], 0);
    let sneak = http
        .post(format!("{}/v1/sql", r.base))
        .header("authorization", &b)
        .json(&json!({"sql": format!("SELECT * FROM dblink('dbname={}', 'SELECT title FROM tasks') AS t(title text)", alpha["database"].as_str().unwrap())}))
        .send()
        .await
        .unwrap();
    assert!(sneak.status().is_client_error(), "{}", sneak.status());
    // Session state set through /v1/sql (SET itself is refused; a function is not) does
    // not follow the connection to the next request.
    let set = http
        .post(format!("{}/v1/sql", r.base))
        .header("authorization", &b)
        .json(&json!({"sql": "SELECT set_config('search_path', 'nowhere', false)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    for _ in 0..5 {
        let listed = http
            .get(&url)
            .header("authorization", &b)
            .send()
            .await
            .unwrap();
        assert_eq!(
            listed.status(),
            StatusCode::OK,
            "search_path leaked into a later request"
        );
    }
    let params: Value = http
        .post(format!("{}/v1/sql", r.base))
        .header("authorization", &b)
        .json(&json!({"sql": "SELECT $1::int + 1 AS n, $2::text AS t, $3::jsonb AS j", "params": [41, "x", {"k": [1]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        params["rows"][0],
        json!({"n": 42, "t": "x", "j": {"k": [1]}})
    );
    // Still alpha's, untouched.
    let mine: Value = http
        .get(format!("{url}/{id}"))
        .header("authorization", &a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["status"], "queued");
}

//! Metering: requests and tasks counted by real routers over real HTTP, flushed to the
//! catalog at shutdown, exported per tenant and month in every format by `tenantry usage
//! export` and `GET /admin/v1/usage`; a server that is down; the business series of
//! `/metrics`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{admin_token, token, Deployment, Router};
use tenantry_types::Agent;

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn create_tenant(d: &Deployment, args: &[&str]) {
    let mut all = vec!["tenant", "create"];
    all.extend_from_slice(args);
    let out = d.run(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn tenant_id(d: &Deployment, slug: &str) -> uuid::Uuid {
    d.catalog()
        .await
        .query_one(
            "SELECT id FROM tenants WHERE slug = $1 AND state <> 'deleted'",
            &[&slug],
        )
        .await
        .unwrap()
        .get(0)
}

fn this_month() -> String {
    chrono::Utc::now().format("%Y-%m").to_string()
}

/// Stops a router with SIGTERM (the graceful path, which flushes) and waits for it.
fn stop(router: Router) {
    router.process.signal("TERM");
    let (status, _, err) = router.process.wait(Duration::from_secs(30));
    assert!(status.success(), "{err}");
}

/// `usage export` with `args`; its exit code, stdout and stderr.
fn export(d: &Deployment, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["usage", "export"];
    all.extend_from_slice(args);
    let out = d.run(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (slug, meter, dimensions as `k=v` joined by `,`) → value.
fn values(records: &Value) -> BTreeMap<(String, String, String), Value> {
    records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let dims: Vec<String> = r["dimensions"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                .collect();
            (
                (
                    r["slug"].as_str().unwrap().to_owned(),
                    r["meter"].as_str().unwrap().to_owned(),
                    dims.join(","),
                ),
                r["value"].clone(),
            )
        })
        .collect()
}

fn keys(items: &Value, field: &str) -> BTreeSet<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[field].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_is_billed_per_tenant_in_every_format_once_and_survives_restarts() {
    let d = Deployment::new().await;
    create_tenant(&d, &["acme", "--plan", "pro"]);
    create_tenant(&d, &["bigco", "--plan", "enterprise"]);
    let http = reqwest::Client::new();
    let acme = bearer(&token("acme", None));
    let bigco = bearer(&token("bigco", None));
    // Counts reach the catalog only when a router stops: no timed flush in this test.
    let vars = [("TENANTRY__ROUTER__USAGE_FLUSH_MS", "600000")];

    let router = d.serve(&vars).await;
    let base = router.base.clone();
    let post = |auth: &str, agent: &str, key: Option<&str>| {
        let mut req = http
            .post(format!("{base}/v1/tasks"))
            .header("Authorization", auth)
            .json(&json!({"agent": agent, "title": "t"}));
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        req.send()
    };
    let first = post(&acme, "codex", Some("k1")).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    // A retry of the same key finds its task: a request, not a task.
    assert_eq!(
        post(&acme, "codex", Some("k1")).await.unwrap().status(),
        200
    );
    assert_eq!(post(&acme, "codex", None).await.unwrap().status(), 201);
    assert_eq!(post(&acme, "claude", None).await.unwrap().status(), 201);
    for (id, status) in [
        (first["id"].as_str().unwrap().to_owned(), 200),
        (first["id"].as_str().unwrap().to_owned(), 200),
        (uuid::Uuid::now_v7().to_string(), 404),
    ] {
        let r = http
            .get(format!("{base}/v1/tasks/{id}"))
            .header("Authorization", &acme)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
    }
    // No tenant resolved: billed to no one.
    let r = http
        .post(format!("{base}/v1/tasks"))
        .header("Authorization", "Bearer not-a-token")
        .json(&json!({"agent": "codex", "title": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // bigco makes a task, then erases every trace of it from its own database.
    assert_eq!(
        post(&bigco, "perplexity", None).await.unwrap().status(),
        201
    );
    for sql in ["DELETE FROM usage_logs", "DELETE FROM tasks"] {
        let r = http
            .post(format!("{base}/v1/sql"))
            .header("Authorization", &bigco)
            .json(&json!({ "sql": sql }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    stop(router);

    // A second router's counts add to the first's.
    let router = d.serve(&vars).await;
    let r = http
        .get(format!("{}/v1/usage", router.base))
        .header("Authorization", &acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stop(router);

    let period = this_month();
    let (code, out, err) = export(&d, &["--period", &period]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["period"], period.as_str());
    assert_eq!(doc["errors"], json!([]));
    assert_eq!(doc["tenants"], 2);
    let v = values(&doc["records"]);
    let get = |slug: &str, meter: &str, dims: &str| {
        v.get(&(slug.into(), meter.into(), dims.into()))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let cost = |a: Agent| i64::from(a.cost_cents());
    assert_eq!(get("acme", "tasks", "agent=codex"), 2);
    assert_eq!(get("acme", "tasks", "agent=claude"), 1);
    assert_eq!(
        get("acme", "task_cost_cents", "agent=codex"),
        2 * cost(Agent::Codex)
    );
    assert_eq!(
        get("acme", "task_cost_cents", "agent=claude"),
        cost(Agent::Claude)
    );
    let requests = |slug: &str, route: &str, class: &str| {
        get(
            slug,
            "api_requests",
            &format!("route={route},status_class={class}"),
        )
    };
    assert_eq!(requests("acme", "/v1/tasks", "2xx"), 4);
    assert_eq!(requests("acme", "/v1/tasks", "4xx"), Value::Null);
    assert_eq!(requests("acme", "/v1/tasks/{id}", "2xx"), 2);
    assert_eq!(requests("acme", "/v1/tasks/{id}", "4xx"), 1);
    assert_eq!(requests("acme", "/v1/usage", "2xx"), 1);
    // What bigco erased from its database is still billed (the routers' counts).
    assert_eq!(get("bigco", "tasks", "agent=perplexity"), 1);
    assert_eq!(
        get("bigco", "task_cost_cents", "agent=perplexity"),
        cost(Agent::Perplexity)
    );
    assert_eq!(requests("bigco", "/v1/sql", "2xx"), 2);
    assert_eq!(requests("bigco", "/v1/tasks", "2xx"), 1);
    assert!(get("acme", "plan_days", "plan=pro").as_f64().unwrap() > 0.0);
    assert!(
        v.keys().all(|(_, _, dims)| !dims.contains("unmatched")),
        "{v:?}"
    );

    // Run again: the same records, the same keys.
    let (code, again, err) = export(&d, &["--period", &period]);
    assert_eq!(code, 0, "{err}");
    let again: Value = serde_json::from_str(&again).unwrap();
    let json_keys = keys(&doc["records"], "idempotency_key");
    assert_eq!(json_keys.len(), doc["records"].as_array().unwrap().len());
    assert_eq!(keys(&again["records"], "idempotency_key"), json_keys);
    assert_eq!(values(&again["records"]), v);

    // Stripe meter events and CloudEvents carry the same keys, twice alike.
    let file = d.home.path().join("stripe.json");
    for _ in 0..2 {
        let (code, _, err) = export(
            &d,
            &[
                "--period",
                &period,
                "--format",
                "stripe",
                "--out",
                file.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{err}");
        let events: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(keys(&events, "identifier"), json_keys);
        let acme_id = tenant_id(&d, "acme").await.to_string();
        let e = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| {
                e["event_name"] == "tenantry_tasks"
                    && e["payload"]["stripe_customer_id"] == acme_id.as_str()
                    && e["payload"]["agent"] == "codex"
            })
            .unwrap();
        assert_eq!(e["payload"]["value"], "2");
        assert!(e["timestamp"].as_i64().unwrap() > 0);
    }
    for _ in 0..2 {
        let (code, out, err) = export(&d, &["--period", &period, "--format", "cloudevents"]);
        assert_eq!(code, 0, "{err}");
        let events: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(keys(&events, "id"), json_keys);
        for e in events.as_array().unwrap() {
            assert_eq!(e["specversion"], "1.0");
            assert_eq!(e["source"], "tenantry");
            for field in ["type", "subject", "time"] {
                assert!(e[field].as_str().is_some_and(|s| !s.is_empty()), "{e}");
            }
            assert!(e["data"]["value"].is_number(), "{e}");
        }
    }
    let (code, out, err) = export(&d, &["--period", &period, "--format", "csv"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "idempotency_key,tenant_id,slug,period,meter,agent,route,status_class,plan,value"
    );
    assert_eq!(lines.len(), json_keys.len() + 1);
    assert!(lines
        .iter()
        .any(|l| l.contains(",acme,") && l.contains(",api_requests,,/v1/tasks/{id},4xx,,1")));

    // Plan days prorated over plan changes, in a month of our choosing: acme on free
    // from 1 September 2025, on pro from 11 October.
    let catalog = d.catalog().await;
    let acme_id = tenant_id(&d, "acme").await;
    catalog
        .execute(
            "UPDATE tenants SET created_at = '2025-09-01T00:00:00Z' WHERE id = $1",
            &[&acme_id],
        )
        .await
        .unwrap();
    catalog
        .execute(
            "INSERT INTO plan_changes (tenant_id, from_plan, to_plan, changed_at) VALUES
                 ($1, NULL, 'free', '2025-09-01T00:00:00Z'),
                 ($1, 'free', 'pro', '2025-10-11T00:00:00Z')",
            &[&acme_id],
        )
        .await
        .unwrap();
    let (code, out, err) = export(&d, &["--period", "2025-10"]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["tenants"], 1, "bigco did not exist in October 2025");
    let v = values(&doc["records"]);
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(
        v[&("acme".into(), "plan_days".into(), "plan=free".into())],
        10
    );
    assert_eq!(
        v[&("acme".into(), "plan_days".into(), "plan=pro".into())],
        21
    );

    // Bad input: exit 2, a clear message.
    for bad in ["2025-13", "October", "2025-10-01"] {
        let (code, _, err) = export(&d, &["--period", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("YYYY-MM"), "{err}");
    }

    // The admin API gives what the command gives.
    let router = d.serve(&vars).await;
    let admin = bearer(&admin_token());
    let r = http
        .get(format!("{}/admin/v1/usage?period=2025-10", router.base))
        .header("Authorization", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["tenantry-usage-errors"], "0");
    let api: Value = r.json().await.unwrap();
    assert_eq!(api["records"], doc["records"]);
    let r = http
        .get(format!(
            "{}/admin/v1/usage?period={period}&format=cloudevents",
            router.base
        ))
        .header("Authorization", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/cloudevents-batch+json"
    );
    let events: Value = r.json().await.unwrap();
    assert_eq!(keys(&events, "id"), json_keys);
    for query in ["period=2025-13", "period=2025-10&format=xml", ""] {
        let r = http
            .get(format!("{}/admin/v1/usage?{query}", router.base))
            .header("Authorization", &admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{query}");
    }
    // A tenant's token is no admin's.
    let r = http
        .get(format!("{}/admin/v1/usage?period=2025-10", router.base))
        .header("Authorization", &acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_is_down_is_reported_and_the_rest_exported() {
    let d = Deployment::new().await;
    let mut far = tenantry_testkit::TestCluster::start();
    let out = d.run(&["server", "add", "s2", "--url", &far.url("postgres")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    create_tenant(&d, &["near", "--server", "s1"]);
    create_tenant(&d, &["away", "--server", "s2"]);
    let period = this_month();
    let catalog = d.catalog().await;
    for slug in ["near", "away"] {
        let id = tenant_id(&d, slug).await;
        catalog
            .execute(
                "INSERT INTO task_counts (tenant_id, period, agent, tasks, cost_cents)
                 VALUES ($1, date_trunc('month', now() AT TIME ZONE 'UTC')::date, 'opencode', 3, 30)",
                &[&id],
            )
            .await
            .unwrap();
    }

    far.stop_server();
    let file = d.home.path().join("usage.json");
    let (code, _, err) = export(&d, &["--period", &period, "--out", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("away") && err.contains("s2"), "{err}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let slugs: BTreeSet<&str> = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, BTreeSet::from(["near"]));
    assert_eq!(doc["errors"][0]["slug"], "away");
    assert_eq!(doc["errors"][0]["server"], "s2");
    let near_keys = keys(&doc["records"], "idempotency_key");

    // Once it is back, the next export has both, with the same keys for `near`.
    far.restart_server();
    let (code, out, err) = export(&d, &["--period", &period]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let v = values(&doc["records"]);
    assert_eq!(
        v[&("away".into(), "tasks".into(), "agent=opencode".into())],
        3
    );
    assert_eq!(
        v[&("near".into(), "tasks".into(), "agent=opencode".into())],
        3
    );
    assert!(near_keys.is_subset(&keys(&doc["records"], "idempotency_key")));
}

/// The value of the series `name{labels}` in a `/metrics` text.
fn series(text: &str, name_and_labels: &str) -> Option<i64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_the_fleets_business_and_never_a_tenant() {
    let d = Deployment::new().await;
    create_tenant(&d, &["alpha", "--plan", "pro"]);
    create_tenant(&d, &["bravo", "--plan", "pro"]);
    create_tenant(&d, &["charlie", "--plan", "free"]);
    let catalog = d.catalog().await;
    let (bravo, charlie) = (tenant_id(&d, "bravo").await, tenant_id(&d, "charlie").await);
    catalog
        .execute(
            "INSERT INTO plan_changes (tenant_id, from_plan, to_plan) VALUES
                 ($1, 'free', 'pro'), ($2, 'pro', 'free')",
            &[&bravo, &charlie],
        )
        .await
        .unwrap();
    let router = d
        .serve(&[
            ("TENANTRY__ROUTER__USAGE_FLUSH_MS", "100"),
            ("TENANTRY__ROUTER__BUSINESS_REFRESH_S", "1"),
        ])
        .await;
    let http = reqwest::Client::new();
    let alpha = bearer(&token("alpha", None));
    for _ in 0..2 {
        let r = http
            .post(format!("{}/v1/tasks", router.base))
            .header("Authorization", &alpha)
            .json(&json!({"agent": "codex", "title": "t"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // Flushed within 100 ms, read by the next refresh (every second).
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = http
            .get(format!("{}/metrics", router.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if series(&text, r#"tenantry_tasks_month{agent="codex"}"#) == Some(2) {
            break text;
        }
        assert!(Instant::now() < deadline, "no task series:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let codex = i64::from(Agent::Codex.cost_cents());
    for (name, value) in [
        (
            r#"tenantry_task_cost_cents_month{agent="codex"}"#,
            2 * codex,
        ),
        (r#"tenantry_mrr_cents{plan="pro"}"#, 2 * 1900),
        (r#"tenantry_mrr_cents{plan="free"}"#, 0),
        (r#"tenantry_mrr_cents{plan="enterprise"}"#, 0),
        (r#"tenantry_tenants_by_plan{plan="pro",state="ready"}"#, 2),
        (r#"tenantry_tenants_by_plan{plan="free",state="ready"}"#, 1),
        (r#"tenantry_plan_changes{direction="up"}"#, 1),
        (r#"tenantry_plan_changes{direction="down"}"#, 1),
        (r#"tenantry_tenants_lifecycle{event="created"}"#, 3),
        (r#"tenantry_tenants_lifecycle{event="deleted"}"#, 0),
    ] {
        assert_eq!(series(&text, name), Some(value), "{name}\n{text}");
    }
    // Fleet-level only: no tenant label, no tenant's slug or id anywhere.
    assert!(
        !text.contains("tenant=") && !text.contains("tenant_id="),
        "{text}"
    );
    for slug in ["alpha", "bravo", "charlie"] {
        assert!(!text.contains(slug), "{slug} in\n{text}");
        assert!(
            !text.contains(&tenant_id(&d, slug).await.simple().to_string()),
            "{text}"
        );
    }
}

/// Tasks in the catalog's `task_counts`, all tenants and agents.
async fn counted(catalog: &tokio_postgres::Client) -> i64 {
    catalog
        .query_one(
            "SELECT coalesce(sum(tasks), 0)::bigint FROM task_counts",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flush_the_catalog_refuses_keeps_its_counts_for_the_next_one() {
    let d = Deployment::new().await;
    create_tenant(&d, &["acme", "--plan", "pro"]);
    let catalog = d.catalog().await;
    // Every flush fails while this trigger stands.
    catalog
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON task_counts
                 FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .unwrap();
    let router = d
        .serve(&[("TENANTRY__ROUTER__USAGE_FLUSH_MS", "100")])
        .await;
    let http = reqwest::Client::new();
    let acme = bearer(&token("acme", None));
    let mut created = 0;
    for agent in ["codex", "codex", "claude"] {
        let r = http
            .post(format!("{}/v1/tasks", router.base))
            .header("Authorization", &acme)
            .json(&json!({"agent": agent, "title": "t"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        created += 1;
        // Some flushes fail between the tasks.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        counted(&catalog).await,
        0,
        "the trigger refused every flush"
    );
    catalog
        .batch_execute("DROP TRIGGER refuse ON task_counts")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while counted(&catalog).await < created {
        assert!(
            Instant::now() < deadline,
            "the kept counts were never flushed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Later flushes (and the last, at shutdown) add nothing twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(router);
    let rows = catalog
        .query(
            "SELECT agent, tasks, cost_cents FROM task_counts ORDER BY agent",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let cost = |a: Agent| i64::from(a.cost_cents());
    assert_eq!(
        got,
        vec![
            ("claude".into(), 1, cost(Agent::Claude)),
            ("codex".into(), 2, 2 * cost(Agent::Codex)),
        ]
    );
}

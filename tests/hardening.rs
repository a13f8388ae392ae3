//! A hostile tenant, a stale token or one heavy query never reaches past its walls:
//! attacks over real HTTP against `tenantry serve` processes and real clusters.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{admin_token, now_s, token, Deployment};

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn error_of(resp: reqwest::Response) -> (StatusCode, String, String) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// A token signed by hand with the tenants' secret.
fn signed(claims: Value) -> String {
    let s = support::test_settings();
    let secret = s.auth.hs256_secret.unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(
            secrecy::ExposeSecret::expose_secret(&secret).as_bytes(),
        ),
    )
    .unwrap()
}

#[tokio::test]
async fn a_token_reaches_one_tenant_incarnation_never_a_later_one() {
    let d = Deployment::new().await;
    ok(d.run(&["tenant", "create", "acme", "--plan", "pro"]));
    let r = d.serve(&[]).await;
    let http = reqwest::Client::new();
    let tasks = format!("{}/v1/tasks", r.base);

    // `token issue` binds the token to the tenant's id; a slug-only token to its iat.
    let by_id = ok(d.run(&["token", "issue", "--tenant", "acme", "--sub", "u1"]));
    let by_iat = token("acme", None);
    for t in [&by_id, &by_iat] {
        let resp = http
            .post(&tasks)
            .header("authorization", bearer(t))
            .json(&json!({"agent": "claude", "title": "the first customer's"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }

    // The slug is deleted and taken again by another customer, a second later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ok(d.run(&["tenant", "delete", "acme", "--purge"]));
    ok(d.run(&["tenant", "create", "acme", "--plan", "pro"]));

    for (name, t) in [("bound to the id", &by_id), ("slug-only", &by_iat)] {
        for req in [
            http.get(&tasks),
            http.post(&tasks)
                .json(&json!({"agent": "claude", "title": "stale"})),
        ] {
            let (status, code, message) =
                error_of(req.header("authorization", bearer(t)).send().await.unwrap()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {message}");
            assert_eq!(code, "unauthorized");
            assert!(message.contains("earlier tenant"), "{name}: {message}");
        }
    }
    // A slug-only token without iat can never be told apart: refused, saying why.
    let undated = signed(json!({
        "sub": "u", "tenant": "acme", "exp": now_s() + 600,
        "iss": "tenantry", "aud": "tenantry-api",
    }));
    let (status, _, message) = error_of(
        http.get(&tasks)
            .header("authorization", bearer(&undated))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(message.contains("neither tenant_id nor iat"), "{message}");

    // A tenant claim that is no slug (a NUL in it) names no tenant: 401 before any lookup.
    let nul = signed(json!({
        "sub": "u", "tenant": "ac\u{0}me", "exp": now_s() + 600, "iat": now_s(),
        "iss": "tenantry", "aud": "tenantry-api",
    }));
    let (status, code, _) = error_of(
        http.get(&tasks)
            .header("authorization", bearer(&nul))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );

    // The new customer's own tokens work, and see none of the first customer's tasks.
    for t in [
        ok(d.run(&["token", "issue", "--tenant", "acme", "--sub", "u2"])),
        token("acme", None),
    ] {
        let resp = http
            .get(&tasks)
            .header("authorization", bearer(&t))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["items"].as_array().unwrap().len(), 0, "{body}");
    }
    // A token for a tenant that does not exist cannot be issued by the CLI.
    let out = d.run(&["token", "issue", "--tenant", "ghost", "--sub", "u"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn admin_tokens_come_from_their_own_trust_root() {
    let d = Deployment::new().await;
    ok(d.run(&["tenant", "create", "acme", "--plan", "enterprise"]));
    let r = d.serve(&[]).await;
    let http = reqwest::Client::new();
    let admin_url = format!("{}/admin/v1/tenants", r.base);

    // A tenant token with scope admin — as a customer-facing identity provider might
    // sign — is not an admin token.
    for scope in [Some("admin"), Some("read admin write"), None] {
        let (status, code, message) = error_of(
            http.get(&admin_url)
                .header("authorization", bearer(&token("acme", scope)))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{scope:?}: {message}");
        assert_eq!(code, "forbidden");
        assert!(message.contains("tenant token"), "{message}");
    }
    // Admin claims (issuer, audience, scope) signed with the tenants' key: 401.
    let forged = signed(json!({
        "sub": "evil", "exp": now_s() + 600, "iat": now_s(),
        "iss": "tenantry-admin", "aud": "tenantry-admin-api", "scope": "admin",
    }));
    let resp = http
        .get(&admin_url)
        .header("authorization", bearer(&forged))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // `token issue --admin` and the admin root's own tokens open the admin API.
    let cli_admin = ok(d.run(&["token", "issue", "--admin", "--sub", "ops"]));
    for t in [cli_admin.clone(), admin_token()] {
        let resp = http
            .get(&admin_url)
            .header("authorization", bearer(&t))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    // An admin token is nobody's tenant token.
    let resp = http
        .get(format!("{}/v1/tasks", r.base))
        .header("authorization", bearer(&cli_admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // --admin and --tenant do not mix.
    let out = d.run(&[
        "token", "issue", "--admin", "--tenant", "acme", "--sub", "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

async fn sql(http: &reqwest::Client, base: &str, auth: &str, sql: &str) -> (StatusCode, Value) {
    let resp = http
        .post(format!("{base}/v1/sql"))
        .header("authorization", auth)
        .json(&json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_sql_api_refuses_what_would_reach_past_the_tenant() {
    let d = Deployment::new().await;
    ok(d.run(&["tenant", "create", "ent", "--plan", "enterprise"]));
    let r = d.serve(&[]).await;
    let http = reqwest::Client::new();
    let auth = bearer(&token("ent", None));
    let shown = d.json(&["tenant", "show", "ent"], 0);
    let role = format!("tr_{}", shown["id"].as_str().unwrap().replace('-', ""));

    for (statement, kind) in [
        ("ALTER ROLE CURRENT_USER PASSWORD 'mine'", "ALTER ROLE"),
        (
            "ALTER ROLE CURRENT_USER SET statement_timeout = 0",
            "ALTER ROLE",
        ),
        ("PREPARE s1 AS SELECT 1", "PREPARE"),
        ("DEALLOCATE ALL", "DEALLOCATE"),
        ("SET statement_timeout = 0", "SET"),
        ("LISTEN anything", "LISTEN"),
        ("BEGIN", "START TRANSACTION"),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
            "CREATE FUNCTION",
        ),
        ("CREATE ROLE evil LOGIN", "CREATE ROLE"),
    ] {
        let (status, body) = sql(&http, &r.base, &auth, statement).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{statement}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(kind), "{statement}: {message}");
    }
    // A role grant is past the parser: refused unread, never run.
    let (status, body) = sql(
        &http,
        &r.base,
        &auth,
        &format!("REVOKE {role} FROM postgres"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = sql(&http, &r.base, &auth, "SELECT 1; SELECT 2").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Session state taken through functions is let go when the request ends: an advisory
    // lock (a migration runner's key, say) and a setting.
    let (status, body) = sql(
        &http,
        &r.base,
        &auth,
        "SELECT pg_advisory_lock(42) IS NULL AS locked, set_config('search_path', 'nowhere', false) AS p",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let superuser = d.pg.connect(shown["database"].as_str().unwrap()).await;
    let mut free = false;
    for _ in 0..50 {
        free = superuser
            .query_one("SELECT pg_try_advisory_lock(42)", &[])
            .await
            .unwrap()
            .get(0);
        if free {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(free, "the tenant's session lock outlived its request");
    // After the refused DEALLOCATE ALL and the rest, every request is served as before.
    for _ in 0..6 {
        let resp = http
            .post(format!("{}/v1/tasks", r.base))
            .header("authorization", &auth)
            .json(&json!({"agent": "claude", "title": "still fine"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    // A value without a JSON form is the statement's problem (422), not the router's.
    let (status, body) = sql(&http, &r.base, &auth, "SELECT '1e400'::jsonb AS j").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("\"j\""),
        "{body}"
    );
    // Parameter errors are the caller's (400), never 503.
    for (statement, params) in [
        ("SELECT $1::int AS n", json!(["not a number"])),
        ("SELECT $1::int AS n", json!([1, 2])),
        ("SELECT $1::uuid AS n", json!(["nope"])),
    ] {
        let resp = http
            .post(format!("{}/v1/sql", r.base))
            .header("authorization", &auth)
            .json(&json!({"sql": statement, "params": params}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::BAD_REQUEST,
            "{statement} {params}"
        );
        assert!(resp.headers().get("retry-after").is_none());
    }
}

/// The router process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn one_query_cannot_exhaust_the_router() {
    let d = Deployment::new().await;
    ok(d.run(&["tenant", "create", "heavy", "--plan", "enterprise"]));
    ok(d.run(&["tenant", "create", "calm", "--plan", "enterprise"]));
    let r = d.serve(&[]).await;
    let pid = r.process.child.id();
    let http = reqwest::Client::new();
    let heavy = bearer(&token("heavy", None));
    let calm = bearer(&token("calm", None));
    let before = rss_kib(pid);

    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // 8 at once, each 200 MB of result (1,000 rows of 200 kB), and one row of 100 MB.
    let mut heavy_requests = Vec::new();
    for i in 0..9 {
        let statement = if i < 8 {
            "select repeat('x', 200000) as x from generate_series(1, 1000)"
        } else {
            "select repeat('x', 100000000) as x"
        };
        let (http, base, auth) = (http.clone(), r.base.clone(), heavy.clone());
        heavy_requests.push(tokio::spawn(async move {
            sql(&http, &base, &auth, statement).await
        }));
    }
    // Meanwhile another tenant is served.
    let mut calm_served = 0;
    while !heavy_requests.iter().all(|h| h.is_finished()) {
        let resp = http
            .get(format!("{}/v1/tasks", r.base))
            .header("authorization", &calm)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        calm_served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for h in heavy_requests {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "result_too_large", "{body}");
    }
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "router RSS: {} MiB before, {} MiB at the peak of 9 over-cap results (8 MiB cap); \
         {calm_served} requests of another tenant served meanwhile",
        before / 1024,
        peak / 1024
    );
    // Unbounded, the same load held 1.6 GB. Each request may hold at most twice the cap
    // (8 MiB) in rows and JSON: 9 × 16 MiB over the start.
    assert!(
        peak < before + 9 * 16 * 1024 + 64 * 1024,
        "router RSS grew from {before} KiB to {peak} KiB"
    );
    assert!(calm_served > 0);
    // The heavy tenant is served again, under the cap.
    let (status, body) = sql(
        &http,
        &r.base,
        &heavy,
        "select repeat('x', 1000) as x from generate_series(1, 10)",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["row_count"], 10);
}

#[tokio::test]
async fn a_tenant_with_its_password_cannot_take_itself_out_of_the_control_planes_hands() {
    let d = Deployment::new().await;
    // A server whose admin is not a superuser (CREATEDB CREATEROLE), as on managed services.
    let superuser = d.pg.connect("postgres").await;
    superuser
        .batch_execute(
            "CREATE ROLE ops LOGIN CREATEDB CREATEROLE PASSWORD 'ops-password';
             GRANT CONNECT ON DATABASE postgres TO ops;
             REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
             REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;",
        )
        .await
        .unwrap();
    let url = format!(
        "postgres://ops:ops-password@127.0.0.1:{}/postgres",
        d.pg.port()
    );
    ok(d.run(&["server", "add", "limited", "--url", &url]));
    ok(d.run(&[
        "tenant",
        "create",
        "rogue",
        "--plan",
        "enterprise",
        "--server",
        "limited",
    ]));
    let shown = d.json(&["tenant", "show", "rogue"], 0);
    let id: uuid::Uuid = shown["id"].as_str().unwrap().parse().unwrap();
    let database = shown["database"].as_str().unwrap().to_owned();
    let role = format!("tr_{}", id.simple());

    // As its own role: it takes the admin's membership away, lifts its limits on its role
    // and its database, and changes its password.
    let own = d.connect_tenant(id, &database).await.unwrap();
    // PostgreSQL 15 before its later minor releases let a role administer itself (this
    // one may refuse); either way the admin loses its membership here, as on such a server.
    let self_revoke = own.batch_execute(&format!("REVOKE {role} FROM ops")).await;
    eprintln!(
        "the tenant's own REVOKE of the admin's membership: {}",
        match &self_revoke {
            Ok(()) => "allowed by this server".to_owned(),
            Err(e) => format!("refused by this server ({e})"),
        }
    );
    if self_revoke.is_err() {
        superuser
            .batch_execute(&format!("REVOKE {role} FROM ops"))
            .await
            .unwrap();
    }
    own.batch_execute(&format!(
        "ALTER ROLE CURRENT_USER SET statement_timeout = 0;
         ALTER ROLE CURRENT_USER SET idle_in_transaction_session_timeout = 0;
         ALTER DATABASE {database} SET statement_timeout = 0;"
    ))
    .await
    .unwrap();
    let member: bool = superuser
        .query_one("SELECT pg_has_role('ops', $1, 'MEMBER')", &[&role.as_str()])
        .await
        .unwrap()
        .get(0);
    assert!(!member, "the admin is still a member of the tenant role");

    // The router's sessions keep the control plane's limits.
    let r = d.serve(&[]).await;
    let http = reqwest::Client::new();
    let auth = bearer(&token("rogue", None));
    let (status, body) = sql(
        &http,
        &r.base,
        &auth,
        "SELECT name, reset_val FROM pg_settings WHERE name IN ('statement_timeout', 'idle_in_transaction_session_timeout') ORDER BY name",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"][0]["reset_val"], "60000", "{body}");
    assert_eq!(body["rows"][1]["reset_val"], "30000", "{body}");

    own.batch_execute("ALTER ROLE CURRENT_USER PASSWORD 'only-i-know-this-now'")
        .await
        .unwrap();
    drop(own);

    // Every lifecycle operation still works; resume puts the role back as it was made.
    ok(d.run(&["tenant", "suspend", "rogue"]));
    let resp = http
        .get(format!("{}/v1/tasks", r.base))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::LOCKED);
    ok(d.run(&["tenant", "resume", "rogue"]));
    let mut served = false;
    for _ in 0..40 {
        let resp = http
            .get(format!("{}/v1/tasks", r.base))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::OK {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the tenant was not served again after resume");
    let settings: Vec<String> = superuser
        .query(
            "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = $1",
            &[&role.as_str()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        settings.contains(&"statement_timeout=30000".to_owned())
            && settings.contains(&"idle_in_transaction_session_timeout=60000".to_owned()),
        "{settings:?}"
    );
    let out = d.home.path().join("rogue.dump");
    ok(d.run(&["tenant", "export", "rogue", "--out", out.to_str().unwrap()]));
    ok(d.run(&["tenant", "delete", "rogue", "--purge"]));
    let left: i64 = superuser
        .query_one(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname = $1) + (SELECT count(*) FROM pg_roles WHERE rolname = $2)",
            &[&database.as_str(), &role.as_str()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the tenant's database or role was left behind");
}

#[tokio::test]
async fn unauthenticated_endpoints_cost_the_catalog_nothing() {
    let d = Deployment::new().await;
    let r = d
        .serve(&[("TENANTRY__HTTP__METRICS_BIND", "127.0.0.1:0")])
        .await;
    let http = reqwest::Client::new();
    let catalog = d.catalog().await;
    let transactions = || async {
        catalog
            .query_one(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    // /metrics lives on its own address, and not on the API's.
    let (out, _) = r.process.output_so_far();
    let metrics = out
        .lines()
        .find_map(|l| l.strip_prefix("Metrics on "))
        .expect("the metrics address is printed")
        .trim()
        .to_owned();
    assert_eq!(
        http.get(format!("{}/metrics", r.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let text = http
        .get(&metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("tenantry_http_request_duration_seconds"),
        "{text}"
    );

    // A flood of probes and scrapes: the catalog sees the probe's once-a-second look,
    // not one transaction per call.
    let before = transactions().await;
    let started = std::time::Instant::now();
    let mut calls = Vec::new();
    for i in 0..600 {
        let url = if i % 2 == 0 {
            format!("{}/readyz", r.base)
        } else {
            metrics.clone()
        };
        let http = http.clone();
        calls.push(tokio::spawn(async move {
            http.get(url).send().await.unwrap().status()
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), StatusCode::OK);
    }
    // Backends report their counts when idle, within ten seconds.
    tokio::time::sleep(Duration::from_secs(11)).await;
    catalog
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    let seconds = started.elapsed().as_secs() + 1;
    let spent = transactions().await - before;
    eprintln!("600 probes and scrapes in {seconds} s: {spent} catalog transactions");
    // The probe's looks, heartbeats and the rest of the router's background work, about
    // 7 a second here; one per call would be at least 600.
    assert!(
        spent < 300,
        "{spent} catalog transactions for 600 unauthenticated calls"
    );
}

/// A request whose session the server ends under it (a suspend, a delete, a restart,
/// `pg_terminate_backend`) is told to come back (503 with Retry-After), never 500: the
/// soak met one such 500 when a tenant was suspended while its request ran.
#[tokio::test]
async fn a_session_ended_under_a_request_is_503_not_500() {
    let d = Deployment::new().await;
    let t = d.json(&["tenant", "create", "ended", "--plan", "enterprise"], 0);
    let r = d.serve(&[]).await;
    let database = t["database"].as_str().unwrap().to_owned();
    // A lock holds the request's query until its session is ended.
    let locker = d.pg.connect(&database).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let request = {
        let (http, url, auth) = (
            http.clone(),
            format!("{}/v1/tasks?limit=1", r.base),
            bearer(&token("ended", None)),
        );
        tokio::spawn(async move { http.get(url).header("authorization", auth).send().await })
    };
    let admin = d.pg.connect("postgres").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ended: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = 'tenantry-router' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if ended > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the request never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = request.await.unwrap().unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    let (status, code, _) = error_of(resp).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "tenant_unavailable")
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
}

/// A tenant suspended before the router has heard of it (its change's NOTIFY still on
/// its way, or lost with the catalog's connection): its server refuses the tenant's role,
/// and the router reads the route again and answers as the tenant stands, 423, not a 503
/// that would have the client retry a tenant that will not come back by itself (a
/// deleted one, 404). A tenant its server refuses while the catalog says it is ready gets
/// 503, as an outage would.
#[tokio::test]
async fn a_suspend_the_router_has_not_heard_of_is_423_not_503() {
    let d = Deployment::new().await;
    let slugs = ["racing", "gone", "refused"];
    for slug in slugs {
        ok(d.run(&["tenant", "create", slug, "--plan", "pro"]));
    }
    let router = d.serve(&[]).await;
    // The router listens for tenant changes before it caches the routes below (routes
    // cached before it listens are read again once it does).
    let catalog = d.catalog().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while catalog
        .query_opt(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'tenantry-router-listen'
             AND query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the router never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/tasks?limit=1", router.base);
    let get = |slug: &str| {
        http.get(&url)
            .header("authorization", bearer(&token(slug, None)))
            .send()
    };
    // All served: their routes cached, an idle connection in each pool.
    for slug in slugs {
        assert_eq!(get(slug).await.unwrap().status(), StatusCode::OK);
    }

    // A suspend and a delete, with the catalog's trigger held back: no router is told.
    catalog
        .batch_execute(
            "SET session_replication_role = replica;
             UPDATE tenants SET state = 'suspended' WHERE slug = 'racing';
             UPDATE tenants SET state = 'deleted' WHERE slug = 'gone';",
        )
        .await
        .unwrap();
    // What both do on the tenant's server, done to all three: CONNECT revoked, the
    // tenant's sessions ended.
    let admin = d.pg.connect("postgres").await;
    for slug in slugs {
        let row = catalog
            .query_one(
                "SELECT database_name, role_name FROM tenants WHERE slug = $1",
                &[&slug],
            )
            .await
            .unwrap();
        let (database, role): (String, String) = (row.get(0), row.get(1));
        admin
            .batch_execute(&format!(
                "REVOKE CONNECT, TEMPORARY ON DATABASE \"{database}\" FROM \"{role}\", PUBLIC"
            ))
            .await
            .unwrap();
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&database],
            )
            .await
            .unwrap();
    }
    let (status, code, _) = error_of(get("racing").await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::LOCKED, "tenant_suspended")
    );
    let (status, code, _) = error_of(get("gone").await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "tenant_not_found")
    );
    // The catalog says `refused` is ready: its server's refusal is the server's trouble.
    let resp = get("refused").await.unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    let (status, code, message) = error_of(resp).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "tenant_unavailable"),
        "{message}"
    );
}

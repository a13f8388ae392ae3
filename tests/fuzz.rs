//! Bad text and schema-driven fuzzing, over real HTTP against `tenantry serve` on real
//! clusters: text PostgreSQL cannot store is refused with 400 before any database work,
//! and schemathesis, driven by the router's own `/openapi.json`, finds no 5xx.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{Deployment, Router};

/// The enterprise tenant the fuzzer's tenant token names (enterprise: `/v1/sql` is open).
const TENANT: &str = "fuzz";

/// What makes `tenantry token issue` sign an admin token. Admin tokens may soon come from
/// their own trust root (`--admin`); then this is the one line to change.
const ADMIN_TOKEN_ARGS: &[&str] = &["--admin"];

/// Rate limits raised for the run, so that a fuzzer is never answered 429 for its pace.
const RAISED_LIMITS: &[(&str, &str)] = &[
    (
        "TENANTRY__PLANS__ENTERPRISE__REQUESTS_PER_MINUTE",
        "1000000",
    ),
    ("TENANTRY__PLANS__PRO__REQUESTS_PER_MINUTE", "1000000"),
    ("TENANTRY__PLANS__FREE__REQUESTS_PER_MINUTE", "1000000"),
];

/// A deployment with the enterprise tenant [`TENANT`] and its router.
async fn deployment() -> (Deployment, Router) {
    let d = Deployment::new().await;
    let out = d.run(&["tenant", "create", TENANT, "--plan", "enterprise"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = d.serve(RAISED_LIMITS).await;
    (d, r)
}

/// A token from `tenantry token issue`, as an operator would make one.
fn issue_token(d: &Deployment, sub: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "issue", "--sub", sub];
    if extra.is_empty() {
        args.extend_from_slice(&["--tenant", TENANT]);
    }
    args.extend_from_slice(extra);
    d.json(&args, 0)["token"].as_str().unwrap().to_owned()
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// Sends `body` (as JSON) and returns the status and the JSON answer (`null` if none).
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Asserts a 400 `invalid_request` whose message names `field`.
#[track_caller]
fn assert_refused(answer: &(StatusCode, Value), field: &str) {
    let (status, body) = answer;
    assert_eq!(*status, StatusCode::BAD_REQUEST, "{field}: {body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(field), "{field}: {message}");
    assert!(message.contains("NUL"), "{message}");
}

#[tokio::test]
async fn nul_in_task_text_and_json_is_400_naming_the_field() {
    let (d, r) = deployment().await;
    let c = Client {
        http: reqwest::Client::new(),
        base: r.base.clone(),
        token: issue_token(&d, "user", &[]),
    };
    let (status, task) = c
        .send(
            Method::POST,
            "/v1/tasks",
            Some(json!({"agent": "codex", "title": "a task"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let task_path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());

    // The fuzzer's finding, exactly: a NUL in a key of `output`.
    let answer = c
        .send(
            Method::PATCH,
            &task_path,
            Some(json!({"output": {"\u{85}\u{0};": ""}})),
        )
        .await;
    assert_refused(&answer, "output");
    // Nested at any depth, in keys and in values; with a valid status beside it, which
    // must not be applied either (nothing reaches the database).
    for output in [
        json!({"a": {"b": [1, {"c\u{0}": true}]}}),
        json!({"a": [[["x\u{0}y"]]]}),
        json!("\u{0}"),
    ] {
        let answer = c
            .send(
                Method::PATCH,
                &task_path,
                Some(json!({"status": "done", "output": output})),
            )
            .await;
        assert_refused(&answer, "output");
    }
    let (_, unchanged) = c.send(Method::GET, &task_path, None).await;
    assert_eq!(
        (&unchanged["status"], &unchanged["output"]),
        (&json!("queued"), &Value::Null)
    );

    for (body, field) in [
        (json!({"agent": "codex", "title": "a\u{0}b"}), "title"),
        (
            json!({"agent": "codex", "title": "t", "input": {"k": ["v\u{0}"]}}),
            "input",
        ),
        (
            json!({"agent": "codex", "title": "t", "input": {"k\u{0}": 1}}),
            "input",
        ),
    ] {
        let answer = c.send(Method::POST, "/v1/tasks", Some(body)).await;
        assert_refused(&answer, field);
    }
    // None of them was created or counted.
    let (_, usage) = c.send(Method::GET, "/v1/usage", None).await;
    assert_eq!(usage["tasks_used"], 1, "{usage}");

    // Other unusual text is stored as sent.
    let text = "\u{85}\u{1};\u{feff}\u{10ffff}";
    let (status, task) = c
        .send(
            Method::PATCH,
            &task_path,
            Some(json!({"output": {text: text}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["output"][text], text);
}

#[tokio::test]
async fn numbers_at_the_edge_of_f64_come_back_as_sent() {
    let (d, r) = deployment().await;
    let c = Client {
        http: reqwest::Client::new(),
        base: r.base.clone(),
        token: issue_token(&d, "user", &[]),
    };
    // The fuzzer's finding: f64::MAX in `input` was stored, and reading it back (as
    // jsonb's exact decimal) overflowed and panicked the worker.
    let edge = json!([
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        5e-324,
        1.7976931348623157e308,
        123456789012345678901234567890.0,
        u64::MAX,
        i64::MIN
    ]);
    let (status, task) = c
        .send(
            Method::POST,
            "/v1/tasks",
            Some(json!({"agent": "codex", "title": "edge", "input": {"n": edge}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    assert_eq!(task["input"]["n"], edge);
    let path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());
    let (status, patched) = c
        .send(Method::PATCH, &path, Some(json!({"output": edge})))
        .await;
    assert_eq!((status, &patched["output"]), (StatusCode::OK, &edge));
    let (status, got) = c.send(Method::GET, &path, None).await;
    assert_eq!((status, &got["input"]["n"]), (StatusCode::OK, &edge));
    let (status, page) = c.send(Method::GET, "/v1/tasks", None).await;
    assert_eq!(
        (status, &page["items"][0]["output"]),
        (StatusCode::OK, &edge)
    );
}

#[tokio::test]
async fn a_cursor_outside_postgres_time_is_400_not_500() {
    let (d, r) = deployment().await;
    let c = Client {
        http: reqwest::Client::new(),
        base: r.base.clone(),
        token: issue_token(&d, "user", &[]),
    };
    // Cursors are base64url of "<created_at in Unix µs>|<id>".
    // "-8334601228800000000|0192f3c4-…": year -262143 (chrono's earliest), before
    // PostgreSQL's 4714 BC, so the query failed.
    let before_postgres =
        "LTgzMzQ2MDEyMjg4MDAwMDAwMDB8MDE5MmYzYzQtMDAwMC03MDAwLTgwMDAtMDAwMDAwMDAwMDAw";
    let (status, body) = c
        .send(
            Method::GET,
            &format!("/v1/tasks?cursor={before_postgres}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    // "8210266876799999999|…": the latest chrono has, still a time PostgreSQL takes.
    let latest = "ODIxMDI2Njg3Njc5OTk5OTk5OXwwMTkyZjNjNC0wMDAwLTcwMDAtODAwMC0wMDAwMDAwMDAwMDA";
    let (status, body) = c
        .send(Method::GET, &format!("/v1/tasks?cursor={latest}"), None)
        .await;
    assert_eq!((status, &body["items"]), (StatusCode::OK, &json!([])));
}

#[tokio::test]
async fn nul_in_admin_bodies_is_400_and_in_slugs_404() {
    let (d, r) = deployment().await;
    let c = Client {
        http: reqwest::Client::new(),
        base: r.base.clone(),
        token: issue_token(&d, "admin", ADMIN_TOKEN_ARGS),
    };
    for (body, field) in [
        (json!({"slug": "nul-server", "server": "s\u{0}"}), "server"),
        (json!({"slug": "nul-plan", "plan": "pro\u{0}"}), "plan"),
        (
            json!({"slug": "nul-template", "template": "tasks\u{0}"}),
            "template",
        ),
        (json!({"slug": "nul\u{0}"}), "slug"),
    ] {
        let answer = c.send(Method::POST, "/admin/v1/tenants", Some(body)).await;
        assert_refused(&answer, field);
    }
    for (body, field) in [
        (
            json!({"name": "s2", "url": "postgres://u\u{0}:p@127.0.0.1:1/db"}),
            "url",
        ),
        (
            json!({"name": "s\u{0}", "url": "postgres://u:p@127.0.0.1:1/db"}),
            "name",
        ),
    ] {
        let answer = c.send(Method::POST, "/admin/v1/servers", Some(body)).await;
        assert_refused(&answer, field);
    }
    // A path that cannot be a slug names no tenant.
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = c.send(method, "/admin/v1/tenants/a%00b", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    for action in ["suspend", "resume"] {
        let path = format!("/admin/v1/tenants/a%00b/{action}");
        let (status, body) = c.send(Method::POST, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    let (status, _) = c
        .send(Method::GET, "/admin/v1/tenants/a%00b/export", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The tenant is still there and served.
    let (status, body) = c
        .send(Method::GET, &format!("/admin/v1/tenants/{TENANT}"), None)
        .await;
    assert_eq!((status, &body["state"]), (StatusCode::OK, &json!("ready")));
}

#[tokio::test]
async fn an_export_ended_by_a_suspend_is_409_not_500() {
    let (d, r) = deployment().await;
    // Enough data that pg_dump is still at work when the suspend ends its session.
    let info = d.json(&["tenant", "show", TENANT], 0);
    let id: uuid::Uuid = info["id"].as_str().unwrap().parse().unwrap();
    let database = info["database"].as_str().unwrap().to_owned();
    let db = d.connect_tenant(id, &database).await.unwrap();
    let admin = d.pg.connect("postgres").await;
    db.batch_execute(
        "CREATE TABLE bulk AS
         SELECT g, repeat(md5(g::text), 8) AS pad FROM generate_series(1, 150000) g",
    )
    .await
    .unwrap();
    drop(db);
    let c = Client {
        http: reqwest::Client::new(),
        base: r.base.clone(),
        token: issue_token(&d, "admin", ADMIN_TOKEN_ARGS),
    };
    let tenant = format!("/admin/v1/tenants/{TENANT}");
    let mut answers = Vec::new();
    for _ in 0..3 {
        let export = tokio::spawn({
            let c = c.clone();
            let path = format!("{tenant}/export");
            async move { c.send(Method::GET, &path, None).await }
        });
        // The suspend goes in once pg_dump is at work on the tenant's database.
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            let dumping: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = $1 AND application_name = 'pg_dump'",
                    &[&database],
                )
                .await
                .unwrap()
                .get(0);
            if dumping > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (status, body) = c
            .send(Method::POST, &format!("{tenant}/suspend"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = export.await.unwrap();
        let (resumed, _) = c
            .send(Method::POST, &format!("{tenant}/resume"), None)
            .await;
        assert_eq!(resumed, StatusCode::OK);
        assert!(
            status == StatusCode::OK || status == StatusCode::CONFLICT,
            "{status}: {body}"
        );
        answers.push(status);
        if status == StatusCode::CONFLICT {
            assert_eq!(body["error"]["code"], "conflict", "{body}");
            return;
        }
    }
    panic!("no export was ended by a suspend (answers {answers:?}): make the table bigger");
}

/// The schemathesis command: `$TENANTRY_SCHEMATHESIS`, or the one `make prerequisites`
/// installs into the repository's `.venv-fuzz`.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("TENANTRY_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-fuzz/bin/schemathesis")
        });
    assert!(
        path.is_file(),
        "schemathesis is not installed at {}: run `make prerequisites` (it installs the \
         version pinned in requirements-fuzz.txt into .venv-fuzz/), or set \
         TENANTRY_SCHEMATHESIS to a schemathesis command",
        path.display()
    );
    path
}

/// Where the router's log is written once the runs are done (the support module
/// collects it as the router runs, so it never stalls on a full pipe).
fn log_path() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-router.log")
}

/// Runs schemathesis against the router's own `/openapi.json` for the operations whose
/// path matches `paths`, with `token`, for at most `seconds`; its report if a check failed.
fn fuzz(r: &Router, log: &Path, token: &str, paths: &str, seconds: u32) -> Result<(), String> {
    let reports = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/schemathesis.toml");
    let work = tempfile::tempdir().unwrap();
    // A fixed seed by default; TENANTRY_FUZZ_SEED=<n> explores other inputs.
    let seed = std::env::var("TENANTRY_FUZZ_SEED").unwrap_or_else(|_| "7411".into());
    let started = Instant::now();
    let out = Command::new(schemathesis())
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(&config)
        .args([
            "run",
            &format!("{}/openapi.json", r.base),
            "--header",
            &format!("Authorization: Bearer {token}"),
            "--include-path-regex",
            paths,
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "40",
            "--max-time",
            &seconds.to_string(),
            "--request-timeout",
            "10",
            // One worker: Python 3.11's ast.parse, which hypothesis calls to describe
            // its strategies, is not thread-safe ("AST constructor recursion depth
            // mismatch" as an error of the run, seen with two).
            "--workers",
            "1",
            "--seed",
            &seed,
            "--suppress-health-check",
            "all",
            "--continue-on-failure",
            "--report",
            "junit",
        ])
        .arg("--report-dir")
        .arg(&reports)
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "schemathesis on {paths} took {:.1} s:\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "schemathesis found failures on {paths} ({}):\n{stdout}\n{stderr}\nthe router's log: {}",
        out.status,
        log.display()
    ))
}

#[tokio::test]
async fn schemathesis_finds_no_server_error() {
    // Fail before any set-up when the fuzzer is missing.
    schemathesis();
    let (d, r) = deployment().await;
    let log = log_path();
    let tenant = issue_token(&d, "fuzzer", &[]);
    let admin = issue_token(&d, "fuzzer-admin", ADMIN_TOKEN_ARGS);
    // The tenant API first: the admin run may suspend or delete tenants.
    let tenant_run = fuzz(&r, &log, &tenant, "^/(v1/|healthz|readyz)", 30);
    let admin_run = fuzz(&r, &log, &admin, "^/admin/", 20);
    let _ = std::fs::write(&log, r.process.output_so_far().1);
    for run in [tenant_run, admin_run] {
        run.unwrap_or_else(|report| panic!("{report}"));
    }
    // The router is still up and ready afterwards.
    let resp = reqwest::Client::new()
        .get(format!("{}/readyz", r.base))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(support::process_alive(r.process.child.id()));
}

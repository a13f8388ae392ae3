//! Plan changes over real HTTP, with two routers on one catalog: both follow a tenant's
//! new plan (quota, rate, agents, `/v1/sql`, pool size), the tenant role's connection
//! limit follows it, and every change is recorded with its time, for proration.

mod support;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::routers::{bearer, peak_sessions, role_of, sleepers, two_routers};
use support::{admin_token, token, Deployment};

/// How long a router may take to apply a plan change before the test gives up. The
/// contract says within a second; the deadline is generous so that a loaded machine
/// shows as a printed time, not as a failure.
const DEADLINE: Duration = Duration::from_secs(30);

/// One `plan_changes` row: from, to, when, by whom.
type Change = (Option<String>, String, DateTime<Utc>, Option<String>);

async fn plan_changes(d: &Deployment, slug: &str) -> Vec<Change> {
    d.catalog()
        .await
        .query(
            "SELECT c.from_plan, c.to_plan, c.changed_at, c.changed_by
             FROM plan_changes c JOIN tenants t ON t.id = c.tenant_id
             WHERE t.slug = $1 AND t.state <> 'deleted' ORDER BY c.id",
            &[&slug],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// The plans a tenant went through: `[(from, to)]`, checking that each change starts
/// from the plan the one before ended on and comes no earlier.
fn chain(changes: &[Change]) -> Vec<(Option<&str>, &str)> {
    for pair in changes.windows(2) {
        assert_eq!(
            pair[1].0.as_deref(),
            Some(pair[0].1.as_str()),
            "{changes:?}"
        );
        assert!(pair[1].2 >= pair[0].2, "out of order: {changes:?}");
    }
    changes
        .iter()
        .map(|(from, to, _, _)| (from.as_deref(), to.as_str()))
        .collect()
}

/// The tenant role's connection limit, as PostgreSQL has it.
async fn role_limit(d: &Deployment, slug: &str) -> i32 {
    let role = role_of(d, slug).await;
    d.pg.connect("postgres")
        .await
        .query_one(
            "SELECT rolconnlimit FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

/// A client with one token.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    auth: String,
}

impl Api {
    fn new(token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            auth: bearer(token),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, url)
            .header("authorization", &self.auth);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, url: String) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, url, None).await
    }

    async fn post(&self, url: String, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, url, Some(body)).await
    }

    async fn patch(&self, url: String, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::PATCH, url, Some(body)).await
    }
}

/// What `/v1/usage` on `base` says of the plan: its name, monthly quota and rate.
async fn usage_plan(api: &Api, base: &str) -> (Value, Value, Value) {
    let (status, usage) = api.get(format!("{base}/v1/usage")).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    let field = |name: &str| usage[name].clone();
    (
        field("plan"),
        field("tasks_quota"),
        field("rate_limit_per_minute"),
    )
}

/// Asserts an answer is the error `code` with `status`; returns its message.
fn refused(answer: &(StatusCode, Value), status: StatusCode, code: &str) -> String {
    let (got, body) = answer;
    assert_eq!(
        (*got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The three plans and `asked` all named in `message`.
fn names_the_plans(message: &str, asked: &str) {
    for word in [asked, "free", "pro", "enterprise"] {
        assert!(message.contains(word), "{message}");
    }
}

/// Asks `base` with `ask` until `done` says the answer shows the change; returns how
/// long that took. Answers of the plan before are expected meanwhile, and so are 429s
/// (the plan before may be out of requests); anything else fails the test.
async fn until_applied<F, D>(base: &str, mut ask: F, done: D) -> Duration
where
    F: AsyncFnMut(&str) -> (StatusCode, Value),
    D: Fn(StatusCode, &Value) -> bool,
{
    let started = Instant::now();
    loop {
        let (status, body) = ask(base).await;
        if done(status, &body) {
            return started.elapsed();
        }
        assert!(
            matches!(
                status,
                StatusCode::OK | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
            ),
            "{base}: {status} {body}"
        );
        assert!(
            started.elapsed() < DEADLINE,
            "{base} still answers {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_upgrade_reaches_both_routers_and_the_role() {
    let d = Deployment::new().await;
    let created = d.json(&["tenant", "create", "grow"], 0);
    assert_eq!(created["plan"], "free");
    let (one, two) = two_routers(&d).await;
    let routers = [one.base.as_str(), two.base.as_str()];
    let api = Api::new(&token("grow", None));
    let select = || json!({"sql": "select 1"});

    // Free, seen by both routers (2 of the 3 requests a minute each router allows it).
    for base in routers {
        refused(
            &api.post(format!("{base}/v1/sql"), select()).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        assert_eq!(
            usage_plan(&api, base).await,
            (json!("free"), json!(10), json!(5))
        );
    }
    assert_eq!(role_limit(&d, "grow").await, 4, "free: pool 2 + 2");

    let changed = d.json(&["tenant", "set-plan", "grow", "enterprise"], 0);
    assert_eq!(changed["plan"], "enterprise");
    assert!(changed["plan_since"].is_string(), "{changed}");
    let shown = d.json(&["tenant", "show", "grow"], 0);
    assert_eq!(
        (&shown["plan"], &shown["plan_since"]),
        (&json!("enterprise"), &changed["plan_since"])
    );

    // Both routers let it use /v1/sql, without a restart.
    let took = futures_util::future::join_all(routers.map(|base| {
        let api = api.clone();
        until_applied(
            base,
            async move |base: &str| api.post(format!("{base}/v1/sql"), select()).await,
            |status, _| status == StatusCode::OK,
        )
    }))
    .await;
    eprintln!(
        "/v1/sql allowed after set-plan returned: router one {:?}, router two {:?}",
        took[0], took[1]
    );
    for base in routers {
        assert_eq!(
            usage_plan(&api, base).await,
            (json!("enterprise"), Value::Null, json!(600))
        );
    }

    // The role and the pools follow: 10 concurrent one-second statements over the two
    // routers hold more sessions at once than free's limit of 4 would let in.
    assert_eq!(role_limit(&d, "grow").await, 12, "enterprise: pool 10 + 2");
    let (peak, results) = peak_sessions(&d, "grow", sleepers(&routers, &api.auth, 10)).await;
    assert!(
        results.iter().all(|(s, _)| *s == StatusCode::OK),
        "{results:?}"
    );
    eprintln!("peak sessions of the tenant's role under 10 concurrent statements: {peak}");
    assert!(
        peak > 4,
        "the pools stayed at free's size: {peak} sessions at most"
    );

    // The same plan again is no change; an unknown plan is bad input, nothing recorded.
    let again = d.json(&["tenant", "set-plan", "grow", "enterprise"], 0);
    assert_eq!(again["plan"], "enterprise");
    let out = d.run(&["tenant", "set-plan", "grow", "gold"]);
    assert_eq!(out.status.code(), Some(2));
    names_the_plans(&String::from_utf8_lossy(&out.stderr), "gold");
    let out = d.run(&["tenant", "set-plan", "nobody", "pro"]);
    assert_eq!(out.status.code(), Some(2), "an unknown tenant");

    let changes = plan_changes(&d, "grow").await;
    assert_eq!(
        chain(&changes),
        [(None, "free"), (Some("free"), "enterprise")]
    );
    assert!(
        changes[1]
            .3
            .as_deref()
            .is_some_and(|by| by.starts_with("cli:")),
        "{changes:?}"
    );
    assert_eq!(
        shown["plan_since"]
            .as_str()
            .map(|s| s.parse::<DateTime<Utc>>().unwrap()),
        Some(changes[1].2)
    );
    assert_eq!(d.json(&["tenant", "show", "grow"], 0)["plan"], "enterprise");
}

#[tokio::test]
async fn a_downgrade_keeps_existing_tasks_and_limits_new_ones() {
    let d = Deployment::new().await;
    d.json(&["tenant", "create", "shrink", "--plan", "enterprise"], 0);
    let (one, two) = two_routers(&d).await;
    let (one, two) = (one.base.as_str(), two.base.as_str());
    let api = Api::new(&token("shrink", None));
    let admin = Api::new(&admin_token());
    let tenant = |base: &str| format!("{base}/admin/v1/tenants/shrink");
    let task = |agent: &str, title: &str| json!({"agent": agent, "title": title});

    // Eleven tasks this month on enterprise, one of them on claude.
    let (status, claude) = api
        .post(format!("{one}/v1/tasks"), task("claude", "review"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{claude}");
    for i in 0..10 {
        let (status, body) = api
            .post(
                format!("{one}/v1/tasks"),
                task("opencode", &format!("t{i}")),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    // Refused, and nothing recorded: a tenant token, an unknown plan, an unknown field,
    // an unknown tenant.
    refused(
        &api.patch(tenant(one), json!({"plan": "free"})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let unknown = admin.patch(tenant(one), json!({"plan": "gold"})).await;
    names_the_plans(
        &refused(
            &unknown,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        "gold",
    );
    let extra = admin
        .patch(tenant(one), json!({"plan": "free", "owner": "x"}))
        .await;
    refused(&extra, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    let nobody = admin
        .patch(
            format!("{one}/admin/v1/tenants/nobody"),
            json!({"plan": "free"}),
        )
        .await;
    refused(&nobody, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        chain(&plan_changes(&d, "shrink").await),
        [(None, "enterprise")]
    );
    assert_eq!(
        d.json(&["tenant", "show", "shrink"], 0)["plan"],
        "enterprise"
    );

    let (status, changed) = admin.patch(tenant(two), json!({"plan": "free"})).await;
    assert_eq!(
        (status, &changed["plan"]),
        (StatusCode::OK, &json!("free")),
        "{changed}"
    );

    // Both routers apply free: one request of its 3 a minute on each.
    for base in [one, two] {
        let took = until_applied(
            base,
            async |base: &str| api.get(format!("{base}/v1/usage")).await,
            |status, usage| status == StatusCode::OK && usage["plan"] == "free",
        )
        .await;
        eprintln!("{base}: free applied {took:?} after PATCH returned");
    }
    let (_, usage) = api.get(format!("{two}/v1/usage")).await;
    assert_eq!(
        (
            &usage["tasks_used"],
            &usage["tasks_quota"],
            &usage["rate_limit_per_minute"]
        ),
        (&json!(11), &json!(10), &json!(5)),
        "{usage}"
    );

    // Existing tasks stay readable; new ones follow free's agents and quota.
    let id = claude["id"].as_str().unwrap();
    let (status, kept) = api.get(format!("{one}/v1/tasks/{id}")).await;
    assert_eq!(
        (status, &kept["agent"]),
        (StatusCode::OK, &json!("claude")),
        "{kept}"
    );
    let more = api
        .post(format!("{one}/v1/tasks"), task("claude", "more"))
        .await;
    refused(&more, StatusCode::FORBIDDEN, "forbidden");
    let more = api
        .post(format!("{two}/v1/tasks"), task("opencode", "more"))
        .await;
    refused(&more, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded");

    assert_eq!(role_limit(&d, "shrink").await, 4, "free: pool 2 + 2");

    // The same plan again answers the tenant and records nothing.
    let (status, same) = admin.patch(tenant(one), json!({"plan": "free"})).await;
    assert_eq!(
        (status, &same["plan"]),
        (StatusCode::OK, &json!("free")),
        "{same}"
    );
    let changes = plan_changes(&d, "shrink").await;
    assert_eq!(
        chain(&changes),
        [(None, "enterprise"), (Some("enterprise"), "free")]
    );
    assert_eq!(changes[1].3.as_deref(), Some("admin:operator"));

    // A suspended tenant changes plan too; a deleted one is gone.
    d.json(&["tenant", "suspend", "shrink"], 0);
    let (status, body) = admin.patch(tenant(one), json!({"plan": "pro"})).await;
    assert_eq!(
        (status, &body["plan"], &body["state"]),
        (StatusCode::OK, &json!("pro"), &json!("suspended")),
        "{body}"
    );
    assert_eq!(role_limit(&d, "shrink").await, 7, "pro: pool 5 + 2");
    assert_eq!(
        chain(&plan_changes(&d, "shrink").await),
        [
            (None, "enterprise"),
            (Some("enterprise"), "free"),
            (Some("free"), "pro")
        ]
    );
    d.json(&["tenant", "delete", "shrink"], 0);
    let out = d.run(&["tenant", "set-plan", "shrink", "enterprise"]);
    assert_eq!(out.status.code(), Some(2));
}

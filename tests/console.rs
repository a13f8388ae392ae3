//! The operator console in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver) with fantoccini, against `tenantry serve` over a real
//! catalog and server. Screenshots of each view go to `target/console/`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::{Deployment, Router};

const WAIT: Duration = Duration::from_secs(30);

/// A program on `PATH` (or the path in `var`).
fn program(var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{name} not found: run `make prerequisites` (Debian: apt-get install chromium chromium-driver), or set {var}")
        })
}

/// chromedriver on a port of its own and a headless Chromium session with a fresh
/// profile; both end when dropped.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let driver_bin = program("TENANTRY_CHROMEDRIVER", "chromedriver");
        let chromium = program("TENANTRY_CHROMIUM", "chromium");
        let profile = tempfile::tempdir().unwrap();
        let http = reqwest::Client::new();
        // The port is picked free and may be taken before chromedriver binds it: then
        // chromedriver exits, and another port is tried.
        for _ in 0..5 {
            let port = support::free_port();
            let mut driver = Command::new(&driver_bin)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver");
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + WAIT;
            let mut up = false;
            while Instant::now() < deadline && driver.try_wait().unwrap().is_none() {
                if http
                    .get(format!("{url}/status"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !up {
                let _ = driver.kill();
                let _ = driver.wait();
                continue;
            }
            let mut caps = serde_json::Map::new();
            caps.insert(
                "goog:chromeOptions".into(),
                json!({
                    "binary": chromium,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--window-size=1360,900",
                        format!("--user-data-dir={}", profile.path().display()),
                    ],
                }),
            );
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let client = ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&url)
                .await
                .expect("a Chromium session through chromedriver");
            return Self {
                client,
                driver,
                _profile: profile,
            };
        }
        panic!("chromedriver did not start on any of 5 ports");
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits until `script` (a function body) returns true in the page.
    async fn until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.js(script).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.js("return document.body.innerText").await;
                panic!("the console did not show {what} within {WAIT:?}; it shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn select(&self, css: &str, value: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("{css} = {value}: {e}"));
    }

    async fn sign_in(&self, base: &str, token: &str) {
        self.client.goto(&format!("{base}/admin/")).await.unwrap();
        let field = self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Id("token"))
            .await
            .unwrap();
        field.send_keys(token).await.unwrap();
        self.click("#sign-in-button").await;
    }

    async fn screenshot(&self, name: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

async fn started() -> (Deployment, Router) {
    let d = Deployment::new().await;
    for (slug, plan) in [
        ("acme", "pro"),
        ("acme-labs", "free"),
        ("globex", "enterprise"),
    ] {
        d.json(&["tenant", "create", slug, "--plan", plan], 0);
    }
    let router = d.serve(&[]).await;
    (d, router)
}

/// A script that is true when the tenants table lists exactly `slugs`, in order.
fn listed(slugs: &[&str]) -> String {
    format!(
        "return JSON.stringify([...document.querySelectorAll('#tenants tbody tr')] \
           .map(r => r.dataset.slug)) === '{}'",
        serde_json::to_string(slugs).unwrap()
    )
}

/// `GET /v1/usage` of `slug` as its own API answers it.
async fn usage(base: &str, slug: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/usage"))
        .bearer_auth(support::token(slug, None))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_the_fleet_from_the_console() {
    let (d, router) = started().await;
    let base = router.base.clone();
    let b = Browser::start().await;
    b.sign_in(&base, &support::admin_token()).await;

    // Fleet: servers, tenants by state and plan, revenue (pro $19 + enterprise $99).
    b.until(
        "the fleet",
        "return document.querySelector('#fleet-servers tbody tr') !== null",
    )
    .await;
    assert_eq!(b.text("#fleet-revenue").await, "$118.00");
    let server = b.text("#fleet-servers tbody tr").await;
    assert!(
        server.contains("s1") && server.contains("3 / ") && server.contains("logical replication"),
        "{server}"
    );
    let plans = b.text("#fleet-tenants tbody").await;
    for plan in ["free", "pro", "enterprise"] {
        assert!(plans.contains(plan), "{plans}");
    }
    b.screenshot("fleet").await;

    // A task for acme, which this month's usage shows.
    let created = reqwest::Client::new()
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(support::token("acme", None))
        .json(&json!({"agent": "claude", "title": "a haiku"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // Tenants: search by slug.
    b.click("#nav-tenants").await;
    b.until(
        "the tenants",
        "return document.querySelectorAll('#tenants tbody tr').length === 3",
    )
    .await;
    b.client
        .find(Locator::Id("filter-q"))
        .await
        .unwrap()
        .send_keys("acme")
        .await
        .unwrap();
    b.click("#filter-apply").await;
    b.until(
        "the tenants whose slug has acme",
        &listed(&["acme", "acme-labs"]),
    )
    .await;
    b.select("#filter-plan", "pro").await;
    b.click("#filter-apply").await;
    b.until("acme alone", &listed(&["acme"])).await;
    // Its tasks and cost this month, as the routers count them (claude: 50 cents): the
    // operator searches again until the router's next flush has reached the catalog.
    b.until(
        "acme's usage",
        "const row = document.querySelector('tr[data-slug=\"acme\"]'); \
         const shown = row !== null \
           && row.querySelector('[data-usage=tasks]').textContent === '1' \
           && row.querySelector('[data-usage=cost]').textContent === '$0.50'; \
         if (!shown) document.getElementById('filter-apply').click(); \
         return shown;",
    )
    .await;
    b.screenshot("tenants").await;
    // Any plan again, so that acme stays listed as its plan changes.
    b.select("#filter-plan", "").await;
    b.click("#filter-apply").await;
    b.until("both acme tenants", &listed(&["acme", "acme-labs"]))
        .await;

    // Suspend: its API answers 423; resume: it serves again.
    assert_eq!(usage(&base, "acme").await.0, 200);
    b.click(r#"tr[data-slug="acme"] button[data-action="suspend"]"#)
        .await;
    b.until(
        "acme suspended",
        "return document.querySelector('tr[data-slug=\"acme\"] .state-suspended') !== null",
    )
    .await;
    let (status, body) = usage(&base, "acme").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (423, &json!("tenant_suspended"))
    );
    b.click(r#"tr[data-slug="acme"] button[data-action="resume"]"#)
        .await;
    b.until(
        "acme ready",
        "return document.querySelector('tr[data-slug=\"acme\"] .state-ready') !== null",
    )
    .await;
    assert_eq!(usage(&base, "acme").await.0, 200);

    // Change plan: the row shows it, and the tenant's own /v1/usage follows.
    b.select(
        r#"tr[data-slug="acme"] select[data-action="plan"]"#,
        "enterprise",
    )
    .await;
    b.click(r#"tr[data-slug="acme"] button[data-action="change-plan"]"#)
        .await;
    b.until(
        "acme on enterprise",
        "const plan = document.querySelector('tr[data-slug=\"acme\"] td:nth-child(3)'); \
         return plan !== null && plan.textContent === 'enterprise'",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, u) = usage(&base, "acme").await;
        if u["plan"] == "enterprise" {
            break;
        }
        assert!(Instant::now() < deadline, "/v1/usage still says {u}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Export: the archive comes through fetch, with the token in a header.
    b.click(r#"tr[data-slug="acme"] button[data-action="export"]"#)
        .await;
    b.until(
        "the export's size",
        "return /Exported acme: [1-9][0-9]* bytes/.test(document.getElementById('notice').textContent)",
    )
    .await;

    // Migrations: the view, open before a run starts, follows it to its end.
    b.click("#nav-migrations").await;
    b.until(
        "the migrations view",
        "return !document.getElementById('view-migrations').hidden",
    )
    .await;
    let templates = d.home.path().join("templates");
    copy_dir(
        &support::templates_dir().join("tasks"),
        &templates.join("tasks"),
    );
    std::fs::write(
        templates.join("tasks/V2__labels.sql"),
        "CREATE TABLE labels (id bigint PRIMARY KEY, name text NOT NULL);",
    )
    .unwrap();
    let run = d.json(
        &["--templates", templates.to_str().unwrap(), "migrate", "run"],
        0,
    );
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    b.until(
        "the run finished, with its tenants ok",
        &format!(
            "const row = document.querySelector('#runs tr[data-run=\"{run_id}\"]'); \
             const results = document.querySelectorAll('#run-tenants tbody tr'); \
             return row !== null && row.dataset.state === 'finished' && results.length === 3 \
               && [...results].every(r => r.textContent.includes('ok'))"
        ),
    )
    .await;
    assert_eq!(b.text("#run-id").await, run_id);
    b.screenshot("migrations").await;

    // Operations: the ledger's steps, the suspend and resume among them.
    b.click("#nav-operations").await;
    b.until(
        "the ledger",
        "const t = document.querySelector('#operations tbody').textContent; \
         return t.includes('suspend') && t.includes('resume')",
    )
    .await;
    b.screenshot("operations").await;

    // The token went nowhere but a header and sessionStorage.
    let token = support::admin_token();
    let seen = b
        .js("return { url: location.href, local: localStorage.length, \
             urls: performance.getEntriesByType('resource').map(e => e.name) }")
        .await;
    assert_eq!(seen["local"], 0);
    let signed = &token[..token.rfind('.').unwrap()];
    for url in std::iter::once(&seen["url"]).chain(seen["urls"].as_array().unwrap()) {
        assert!(!url.as_str().unwrap().contains(signed), "{url}");
    }
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_keeps_its_token_to_itself_and_shows_values_as_text() {
    let (d, router) = started().await;
    let base = router.base.clone();

    // Its responses: a strict policy, no sniffing, no framing.
    let http = reqwest::Client::new();
    for path in ["/admin/", "/admin/console.js", "/admin/console.css"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(h.contains_key("cache-control"), "{path}");
    }

    // A hostile text in a field the console shows (a ledger step's error).
    let hostile = "<img src=x onerror=\"window.__pwned=1\"><b>bold</b>";
    d.catalog()
        .await
        .execute(
            "INSERT INTO operations (tenant_id, kind, step, status, error, finished_at)
             SELECT id, 'create', 'database', 'failed', $1, now() FROM tenants WHERE slug = 'acme'",
            &[&hostile],
        )
        .await
        .unwrap();

    let b = Browser::start().await;
    // A tenant's token is refused (403): the sign-in stays, saying why.
    b.sign_in(&base, &support::token("acme", Some("admin")))
        .await;
    b.until(
        "the sign-in refused",
        "return document.getElementById('sign-in-error').textContent.length > 0 \
           && !document.getElementById('sign-in').hidden \
           && sessionStorage.length === 0",
    )
    .await;

    let token = support::admin_token();
    b.sign_in(&base, &token).await;
    b.until(
        "the fleet",
        "return !document.getElementById('view-fleet').hidden",
    )
    .await;
    b.client
        .goto(&format!("{base}/admin/#operations"))
        .await
        .unwrap();
    b.until(
        "the failed step",
        "return document.querySelector('#operations tbody td.wrap') !== null \
           && document.querySelector('#operations tbody').textContent.includes('onerror')",
    )
    .await;
    let shown = b
        .js(
            "const td = [...document.querySelectorAll('#operations tbody td.wrap')] \
               .find(td => td.textContent.includes('onerror')); \
             return { text: td.textContent, elements: td.querySelectorAll('*').length, \
                      images: document.images.length, pwned: window.__pwned === 1 }",
        )
        .await;
    assert_eq!(
        shown,
        json!({"text": hostile, "elements": 0, "images": 0, "pwned": false})
    );

    // The token is in sessionStorage only, never in the address.
    let kept = b
        .js(
            "return { session: sessionStorage.getItem('tenantry.admin_token'), \
                      local: localStorage.length, url: location.href }",
        )
        .await;
    assert_eq!(kept["session"], json!(token));
    assert_eq!(kept["local"], 0);
    assert!(!kept["url"].as_str().unwrap().contains(&token));

    // A token that stops working (here: replaced by one that is no token) signs out.
    b.js("sessionStorage.setItem('tenantry.admin_token', 'not-a-token'); return true")
        .await;
    b.click("#nav-fleet").await;
    b.until(
        "the sign-in again",
        "return !document.getElementById('sign-in').hidden \
           && document.getElementById('nav').hidden && sessionStorage.length === 0",
    )
    .await;

    // Sign out clears it.
    b.sign_in(&base, &token).await;
    b.until(
        "the console",
        "return !document.getElementById('sign-out').hidden",
    )
    .await;
    b.click("#sign-out").await;
    b.until(
        "signed out",
        "return !document.getElementById('sign-in').hidden && sessionStorage.length === 0",
    )
    .await;
    b.close().await;
}

/// `GET path` with `token` (none: no header): status and JSON body.
async fn get(base: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The page after `page` of `path` (which has a query string already).
async fn after(base: &str, path: &str, page: &Value, token: Option<&str>) -> Value {
    let cursor = page["next_cursor"].as_str().expect("a next page");
    get(base, &format!("{path}&cursor={cursor}"), token).await.1
}

fn slugs(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slug"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_views_filter_page_and_refuse_what_cannot_be() {
    let (d, router) = started().await;
    let base = router.base.as_str();
    let admin = support::admin_token();
    let a = Some(admin.as_str());

    // Only the admin trust root reads them.
    assert_eq!(get(base, "/admin/v1/fleet", None).await.0, 401);
    let tenant = support::token("acme", Some("admin"));
    assert_eq!(get(base, "/admin/v1/fleet", Some(&tenant)).await.0, 403);

    let (status, fleet) = get(base, "/admin/v1/fleet", a).await;
    assert_eq!(status, 200);
    assert_eq!(fleet["monthly_revenue_cents"], 1900 + 9900);
    assert_eq!(
        fleet["tenants"]["ready"],
        json!({"enterprise": 1, "free": 1, "pro": 1})
    );
    assert_eq!(fleet["servers"][0]["name"], "s1");
    assert_eq!(fleet["servers"][0]["tenants"], 3);
    // Online moves: what the server itself says of its replication settings.
    let wal_level: String =
        d.pg.connect("postgres")
            .await
            .query_one("SHOW wal_level", &[])
            .await
            .unwrap()
            .get(0);
    let online = fleet["servers"][0]["logical_replication"].as_str().unwrap();
    if wal_level == "logical" {
        assert_eq!(online, "yes");
    } else {
        assert!(
            online.starts_with(&format!("no: wal_level is {wal_level}, not logical")),
            "{online}"
        );
    }

    // Tenants: filters, and pages that follow on by cursor.
    let page = get(base, "/admin/v1/fleet/tenants?limit=2", a).await.1;
    assert_eq!(slugs(&page), ["acme", "acme-labs"]);
    let next = after(base, "/admin/v1/fleet/tenants?limit=2", &page, a).await;
    assert_eq!(slugs(&next), ["globex"]);
    assert_eq!(next["next_cursor"], Value::Null);
    for (filter, expected) in [
        ("q=acme", vec!["acme", "acme-labs"]),
        ("plan=free", vec!["acme-labs"]),
        (
            "server=s1&schema_version=1",
            vec!["acme", "acme-labs", "globex"],
        ),
        ("schema_version=7", vec![]),
        ("state=suspended", vec![]),
    ] {
        let page = get(base, &format!("/admin/v1/fleet/tenants?{filter}"), a)
            .await
            .1;
        assert_eq!(slugs(&page), expected, "{filter}");
    }
    let acme = &get(base, "/admin/v1/fleet/tenants?q=acme&plan=pro", a)
        .await
        .1["items"][0];
    assert_eq!(
        (&acme["tasks_this_month"], &acme["cost_cents_this_month"]),
        (&json!(0), &json!(0))
    );
    for bad in [
        "/admin/v1/fleet/tenants?limit=0",
        "/admin/v1/fleet/tenants?cursor=bm9wZQ",
        "/admin/v1/fleet/tenants?state=asleep",
        "/admin/v1/fleet/tenants?q=ACME",
        "/admin/v1/fleet/tenants?schema_version=-1",
        "/admin/v1/operations?status=lost",
        "/admin/v1/migration-runs?limit=201",
        "/admin/v1/migration-runs?cursor=!!",
    ] {
        let (status, body) = get(base, bad, a).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_request")),
            "{bad}"
        );
    }

    // The ledger: latest first, by status and tenant, paged.
    let ops = get(base, "/admin/v1/operations?tenant=acme&limit=3", a)
        .await
        .1;
    let ids: Vec<i64> = ops["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_i64().unwrap())
        .collect();
    assert!(
        ids.len() == 3 && ids.windows(2).all(|w| w[0] > w[1]),
        "{ops}"
    );
    assert!(ops["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["tenant"] == "acme"));
    let more = after(base, "/admin/v1/operations?tenant=acme&limit=3", &ops, a).await;
    assert!(more["items"][0]["id"].as_i64().unwrap() < ids[2]);
    assert_eq!(
        get(base, "/admin/v1/operations?status=failed", a).await.1["items"],
        json!([])
    );

    // Migration runs: two, latest first, one per page; a run's results by slug.
    let templates = d.home.path().join("templates");
    copy_dir(
        &support::templates_dir().join("tasks"),
        &templates.join("tasks"),
    );
    let mut runs = vec![];
    for (file, sql) in [
        (
            "V2__labels.sql",
            "CREATE TABLE labels (id bigint PRIMARY KEY);",
        ),
        (
            "V3__notes.sql",
            "CREATE TABLE notes (id bigint PRIMARY KEY);",
        ),
    ] {
        std::fs::write(templates.join("tasks").join(file), sql).unwrap();
        let run = d.json(
            &["--templates", templates.to_str().unwrap(), "migrate", "run"],
            0,
        );
        runs.push(run["run_id"].as_str().unwrap().to_owned());
    }
    let first = get(base, "/admin/v1/migration-runs?limit=1", a).await.1;
    assert_eq!(first["items"][0]["id"], json!(runs[1]));
    assert_eq!(first["items"][0]["state"], "finished");
    assert_eq!(first["items"][0]["tenants"]["ok"], 3);
    let second = after(base, "/admin/v1/migration-runs?limit=1", &first, a).await;
    assert_eq!(second["items"][0]["id"], json!(runs[0]));
    assert_eq!(second["next_cursor"], Value::Null);
    let run = get(
        base,
        &format!("/admin/v1/migration-runs/{}?limit=2", runs[0]),
        a,
    )
    .await
    .1;
    assert_eq!(run["id"], json!(runs[0]));
    let results = &run["results"];
    assert_eq!(
        results["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (&t["slug"], &t["status"], &t["to_version"]))
            .collect::<Vec<_>>(),
        [
            (&json!("acme"), &json!("ok"), &json!(2)),
            (&json!("acme-labs"), &json!("ok"), &json!(2))
        ]
    );
    let path = format!("/admin/v1/migration-runs/{}?limit=2", runs[0]);
    let rest = after(base, &path, results, a).await;
    assert_eq!(rest["results"]["items"][0]["slug"], "globex");
    for missing in [
        format!("/admin/v1/migration-runs/{}", uuid::Uuid::nil()),
        "/admin/v1/migration-runs/not-a-run".to_owned(),
    ] {
        assert_eq!(get(base, &missing, a).await.0, 404, "{missing}");
    }
}

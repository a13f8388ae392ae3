//! `tenantry serve` and `tenantry catalog migrate` against real throwaway clusters.

mod support;

use std::time::Duration;

use support::{free_port, output, tenantry, wait_for_status, Running};
use tenantry_testkit::TestCluster;

async fn catalog_url(pg: &TestCluster, name: &str) -> String {
    pg.create_database(name).await;
    pg.url(name)
}

#[tokio::test]
async fn serve_reports_readiness_as_the_catalog_comes_and_goes() {
    let mut pg = TestCluster::start();
    let url = catalog_url(&pg, "catalog").await;
    let home = tempfile::tempdir().unwrap();
    let mut cmd = tenantry(home.path(), "test");
    cmd.arg("serve")
        .env("TENANTRY__CATALOG__URL", &url)
        .env("TENANTRY__HTTP__BIND", "127.0.0.1:0");
    let mut serve = Running::spawn(cmd);
    let base = serve.router_url(Duration::from_secs(60)).await;
    wait_for_status(&format!("{base}/readyz"), 200, Duration::from_secs(60)).await;

    // Unknown routes answer in the error shape.
    let response = reqwest::get(format!("{base}/v0/nothing")).await.unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    // The catalog goes away: not ready, with no driver text; alive all along.
    pg.stop_server();
    let body = wait_for_status(&format!("{base}/readyz"), 503, Duration::from_secs(30)).await;
    assert_eq!(body["error"]["code"], "not_ready");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("error") && !message.contains("127.0.0.1"),
        "{message}"
    );
    wait_for_status(&format!("{base}/healthz"), 200, Duration::from_secs(5)).await;

    // And comes back.
    pg.restart_server();
    wait_for_status(&format!("{base}/readyz"), 200, Duration::from_secs(30)).await;

    serve.signal("TERM");
    let (status, _, stderr) = serve.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?} {stderr}");
}

#[tokio::test]
async fn catalog_migrate_from_two_processes_at_once() {
    let pg = TestCluster::start();
    let url = catalog_url(&pg, "catalog").await;
    let home = tempfile::tempdir().unwrap();
    let runs: Vec<Running> = (0..2)
        .map(|_| {
            let mut cmd = tenantry(home.path(), "test");
            cmd.args(["--output", "json", "catalog", "migrate"])
                .env("TENANTRY__CATALOG__URL", &url);
            Running::spawn(cmd)
        })
        .collect();
    let mut applied = 0;
    for run in runs {
        let (status, stdout, stderr) = run.wait(Duration::from_secs(60));
        assert!(status.success(), "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        applied += report["applied"].as_array().unwrap().len();
        assert_eq!(report["version"], tenantry_catalog::latest_version());
    }
    assert_eq!(applied as i32, tenantry_catalog::latest_version());
    let client = pg.connect("catalog").await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as i32, tenantry_catalog::latest_version());

    // And once more, as a table: nothing to do.
    let mut cmd = tenantry(home.path(), "test");
    cmd.args(["catalog", "migrate"])
        .env("TENANTRY__CATALOG__URL", &url);
    let out = output(cmd);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let home = tempfile::tempdir().unwrap();
    for (vars, env, expected) in [
        (vec![], "test", "catalog.url is not set"),
        (
            vec![("TENANTRY__HTTP__BIND", "nowhere")],
            "test",
            "http.bind",
        ),
        (
            vec![("TENANTRY__SECRETS__MASTER_KEY", "short")],
            "test",
            "secrets.master_key",
        ),
        (
            vec![
                ("TENANTRY__CATALOG__URL", "postgres://u:p@127.0.0.1:1/c"),
                (
                    "TENANTRY__SECRETS__MASTER_KEY",
                    "cHJvZHVjdGlvbi1rZXktMzItYnl0ZXMtbG9uZy0tLS0=",
                ),
                (
                    "TENANTRY__AUTH__HS256_SECRET",
                    "dev-only-insecure-hs256-secret-change-me-0000",
                ),
            ],
            "production",
            "public development secret",
        ),
    ] {
        let mut cmd = tenantry(home.path(), env);
        cmd.arg("serve");
        for (k, v) in &vars {
            cmd.env(k, v);
        }
        let out = output(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{vars:?}: {stderr}");
        assert!(stderr.contains(expected), "{vars:?}: {stderr}");
        assert!(
            !stderr.contains("dev-only-insecure"),
            "a secret was printed: {stderr}"
        );
    }
    let mut cmd = tenantry(home.path(), "test");
    cmd.args(["catalog", "migrate", "--bogus"]);
    assert_eq!(output(cmd).status.code(), Some(2));
    let mut cmd = tenantry(home.path(), "test");
    cmd.args(["--config", "/nonexistent.toml", "catalog", "migrate"]);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
}

#[test]
fn an_unreachable_catalog_or_busy_port_exits_1() {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = tenantry(home.path(), "test");
    cmd.args(["catalog", "migrate"]).env(
        "TENANTRY__CATALOG__URL",
        format!("postgres://u:p@127.0.0.1:{}/c", free_port()),
    );
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the catalog"));
}

#[tokio::test]
async fn serve_on_a_busy_port_exits_1_with_the_reason() {
    let pg = TestCluster::start();
    let url = catalog_url(&pg, "catalog").await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut cmd = tenantry(home.path(), "test");
    cmd.arg("serve").env("TENANTRY__CATALOG__URL", &url).env(
        "TENANTRY__HTTP__BIND",
        busy.local_addr().unwrap().to_string(),
    );
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"));
}

//! `tenantry dev`: the embedded cluster comes up, serves, is reused, and stops cleanly.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{process_alive, tenantry, wait_for_status, Running};

fn postmaster_pid(data_dir: &Path) -> u32 {
    let text = std::fs::read_to_string(data_dir.join("data/postmaster.pid")).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
}

/// `tenantry dev` in `cwd`, its router on a port it binds itself (port 0: a port picked
/// here and bound there later could be taken meanwhile by another test's cluster or
/// router), and the router's base URL, read from its banner.
async fn dev(cwd: &Path, timeout: Duration) -> (Running, String) {
    let mut cmd = tenantry(cwd, "dev");
    cmd.arg("dev").env("TENANTRY__HTTP__BIND", "127.0.0.1:0");
    let mut running = Running::spawn(cmd);
    let base = running.router_url(timeout).await;
    (running, base)
}

async fn catalog_client(data_dir: &Path) -> tokio_postgres::Client {
    let password = std::fs::read_to_string(data_dir.join("superuser.password")).unwrap();
    let cluster: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data_dir.join("cluster.json")).unwrap())
            .unwrap();
    let url = format!(
        "postgres://tenantry:{}@127.0.0.1:{}/tenantry",
        password.trim(),
        cluster["port"]
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn dev_comes_up_is_reused_and_leaves_no_postgres_behind() {
    let home = tempfile::tempdir().unwrap();
    let data_dir = home.path().join(".tenantry");

    // First run: initdb, catalog, router.
    let (first, base) = dev(home.path(), Duration::from_secs(120)).await;
    let ready = wait_for_status(&format!("{base}/readyz"), 200, Duration::from_secs(30)).await;
    assert_eq!(ready["status"], "ready");
    let health = wait_for_status(&format!("{base}/healthz"), 200, Duration::from_secs(5)).await;
    assert_eq!(health["status"], "ok");
    // The banner names the operator console, which answers there.
    let console = format!("{base}/admin/");
    assert!(first.output_so_far().0.contains(&console));
    let page = reqwest::get(&console).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Tenantry console"));
    let pid = postmaster_pid(&data_dir);
    assert!(process_alive(pid));
    {
        let client = catalog_client(&data_dir).await;
        let rows = client
            .query("SELECT name, state FROM servers", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<_, String>(0), "local");
        let plans: i64 = client
            .query_one("SELECT count(*) FROM plans", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(plans, 3);
        let demo = client
            .query_one("SELECT state, plan FROM tenants WHERE slug = 'demo'", &[])
            .await
            .unwrap();
        assert_eq!(demo.get::<_, String>(0), "ready");
        assert_eq!(demo.get::<_, String>(1), "pro");
    }
    // Other commands find the running dev cluster's catalog by themselves.
    let mut show = tenantry(home.path(), "dev");
    show.args(["--output", "json", "tenant", "show", "demo"]);
    let out = support::output(show);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let demo: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(demo["server"], "local");
    // An operator moves `demo` to another plan; the next run finds it there.
    let mut set_plan = tenantry(home.path(), "dev");
    set_plan.args(["tenant", "set-plan", "demo", "enterprise"]);
    let out = support::output(set_plan);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A second `tenantry dev` on the same folder refuses, and harms nothing.
    let mut second = tenantry(home.path(), "dev");
    second.arg("dev").env("TENANTRY__HTTP__BIND", "127.0.0.1:0");
    let out = support::output(second);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    assert!(process_alive(pid));

    // SIGTERM: the router drains, the cluster stops, exit 0.
    first.signal("TERM");
    let (status, stdout, _) = first.wait(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    assert!(
        stdout.contains(&format!("curl -s {base}/readyz")),
        "{stdout}"
    );
    assert!(!process_alive(pid), "postgres {pid} outlived tenantry dev");

    // Second run: the same cluster, no initdb; Ctrl-C (SIGINT) stops it as well.
    let initialised = std::fs::metadata(data_dir.join("data/PG_VERSION"))
        .unwrap()
        .modified()
        .unwrap();
    let (again, base) = dev(home.path(), Duration::from_secs(60)).await;
    wait_for_status(&format!("{base}/readyz"), 200, Duration::from_secs(30)).await;
    assert_eq!(
        std::fs::metadata(data_dir.join("data/PG_VERSION"))
            .unwrap()
            .modified()
            .unwrap(),
        initialised,
        "the cluster was made again instead of reused"
    );
    let pid = postmaster_pid(&data_dir);
    {
        let client = catalog_client(&data_dir).await;
        let servers: i64 = client
            .query_one("SELECT count(*) FROM servers", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(servers, 1, "`local` is registered once, not once per run");
        let tenants: i64 = client
            .query_one("SELECT count(*) FROM tenants", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(tenants, 1, "`demo` is created once");
    }
    let (banner, _) = again.output_so_far();
    assert!(banner.contains("`demo` (plan enterprise)"), "{banner}");
    again.signal("INT");
    let (status, _, _) = again.wait(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    assert!(!process_alive(pid));
}

#[tokio::test]
async fn a_killed_dev_leaves_no_postgres_and_starts_again() {
    let home = tempfile::tempdir().unwrap();
    let data_dir = home.path().join(".tenantry");
    let (first, base) = dev(home.path(), Duration::from_secs(120)).await;
    wait_for_status(&format!("{base}/readyz"), 200, Duration::from_secs(30)).await;
    let pid = postmaster_pid(&data_dir);
    first.signal("KILL");
    let _ = first.wait(Duration::from_secs(10));
    // The cluster's watchdog stops the orphaned server.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while process_alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "postgres {pid} outlived a killed tenantry dev"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (again, base) = dev(home.path(), Duration::from_secs(60)).await;
    wait_for_status(&format!("{base}/readyz"), 200, Duration::from_secs(30)).await;
    let pid = postmaster_pid(&data_dir);
    again.signal("TERM");
    assert!(again.wait(Duration::from_secs(60)).0.success());
    assert!(!process_alive(pid));
}

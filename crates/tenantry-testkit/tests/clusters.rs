//! The test kit's own promises: several clusters at once, and nothing left behind,
//! however the test that owned a cluster ends.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tenantry_testkit::TestCluster;

fn process_alive(pid: u32) -> bool {
    // A zombie still answers kill(0); look at its state too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn several_clusters_run_at_once_and_vanish_when_dropped() {
    let a = TestCluster::start();
    let b = TestCluster::start();
    assert_ne!(a.port(), b.port());
    for cluster in [&a, &b] {
        let client = cluster.connect("postgres").await;
        let row = client.query_one("SHOW port", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), cluster.port().to_string());
        let fsync: String = client.query_one("SHOW fsync", &[]).await.unwrap().get(0);
        assert_eq!(fsync, "off");
    }
    let (pid, root) = (a.server_pid().unwrap(), a.root().to_owned());
    assert!(process_alive(pid));
    drop(a);
    assert!(!process_alive(pid), "postgres {pid} still runs after drop");
    assert!(!root.exists(), "{} still exists after drop", root.display());
    // The other one is untouched.
    b.connect("postgres").await;
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let pg = TestCluster::start();
    let url = format!(
        "postgres://{}:wrong@127.0.0.1:{}/postgres",
        pg.superuser(),
        pg.port()
    );
    let err = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .err()
        .expect("a wrong password must not connect");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{err:?}"
    );
}

/// Runs this very test binary as a child that starts a cluster and then dies the way
/// `mode` says; returns what the child reported: its cluster's server pid and folder.
fn child_that_dies(mode: &str) -> (u32, PathBuf) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
        .env("TESTKIT_CHILD_MODE", mode)
        .env("TESTKIT_CHILD_REPORT", report.path())
        .status()
        .unwrap();
    assert!(!status.success(), "the child was meant to die ({mode})");
    let text = std::fs::read_to_string(report.path()).unwrap();
    let (pid, root) = text
        .split_once(' ')
        .unwrap_or_else(|| panic!("child ({mode}) reported nothing"));
    (pid.parse().unwrap(), PathBuf::from(root))
}

/// The child side of [`child_that_dies`]; run directly (no child mode set), it checks
/// that starting a cluster and reporting it works.
#[test]
fn child_role() {
    let pg = TestCluster::start();
    let line = format!("{} {}", pg.server_pid().unwrap(), pg.root().display());
    assert!(pg.root().join("data/PG_VERSION").exists());
    let Ok(mode) = std::env::var("TESTKIT_CHILD_MODE") else {
        return;
    };
    std::fs::write(std::env::var("TESTKIT_CHILD_REPORT").unwrap(), line).unwrap();
    match mode.as_str() {
        "panic" => panic!("the child panics on purpose"),
        "exit" => std::process::exit(3),
        "kill" => {
            let _ = nix_kill_self();
            unreachable!("SIGKILL returned")
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn nix_kill_self() -> std::io::Result<()> {
    Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status()?;
    std::thread::sleep(Duration::from_secs(10));
    Ok(())
}

#[test]
fn nothing_is_left_behind_by_a_panicking_test() {
    let (pid, root) = child_that_dies("panic");
    wait_until("the server stops", || !process_alive(pid));
    wait_until("the folder is gone", || !root.exists());
}

#[test]
fn nothing_is_left_behind_by_a_process_that_exits() {
    let (pid, root) = child_that_dies("exit");
    wait_until("the server stops", || !process_alive(pid));
    wait_until("the folder is gone", || !root.exists());
}

#[test]
fn nothing_is_left_behind_by_a_killed_process() {
    let (pid, root) = child_that_dies("kill");
    wait_until("the server stops", || !process_alive(pid));
    wait_until("the folder is gone", || !root.exists());
}

#[tokio::test]
async fn a_stopped_server_restarts_with_its_data() {
    let mut pg = TestCluster::start();
    pg.create_database("keepme").await;
    pg.stop_server();
    assert!(pg.server_pid().is_none());
    pg.restart_server();
    pg.connect("keepme").await;
}

/// A standby follows its primary through PostgreSQL's streaming replication, and once
/// promoted after the primary crashed, takes writes with everything committed before.
#[tokio::test]
async fn a_standby_follows_and_takes_over_when_promoted() {
    let mut primary = TestCluster::start();
    let p = primary.connect("postgres").await;
    p.batch_execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let standby = standby_caught_up(&primary, &p).await;
    let s = standby.connect("postgres").await;
    let in_recovery: bool = s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery);
    assert!(
        s.batch_execute("INSERT INTO t VALUES (2)").await.is_err(),
        "read-only"
    );
    p.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    wait_for_rows(&s, 2).await;
    drop(p);
    primary.crash_server();
    standby.promote().await;
    s.batch_execute("INSERT INTO t VALUES (3)").await.unwrap();
    wait_for_rows(&s, 3).await;
}

async fn standby_caught_up(primary: &TestCluster, p: &tokio_postgres::Client) -> TestCluster {
    let standby = primary.standby();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let streaming: i64 = p
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if streaming == 1 {
            return standby;
        }
        assert!(std::time::Instant::now() < deadline, "never streaming");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn wait_for_rows(c: &tokio_postgres::Client, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let rows: i64 = c
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        if rows == n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{rows} rows, not {n}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

//! `tenantry server …`, `tenantry tenant …` and `tenantry reconcile` as an operator runs them.

mod support;

use support::Deployment;

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn an_operator_runs_a_tenant_through_its_life() {
    let d = Deployment::new().await;

    let servers = d.json(&["server", "list"], 0);
    let s1 = &servers.as_array().unwrap()[0];
    for key in ["name", "state", "capacity", "max_connections", "tenants"] {
        assert!(s1.get(key).is_some(), "server JSON lacks {key}: {s1}");
    }
    assert_eq!(s1["name"], "s1");
    assert_eq!(s1["tenants"], 0);
    // `server show` says whether tenants can move on and off it online.
    let shown = d.json(&["server", "show", "s1"], 0);
    assert_eq!(shown["online_moves"], "yes", "{shown}");
    let text = String::from_utf8(d.run(&["server", "show", "s1"]).stdout).unwrap();
    assert!(text.contains("online moves: yes"), "{text}");

    let acme = d.json(&["tenant", "create", "acme", "--plan", "pro"], 0);
    for key in [
        "id",
        "slug",
        "plan",
        "template",
        "server",
        "database",
        "state",
        "schema_version",
        "created_at",
    ] {
        assert!(acme.get(key).is_some(), "tenant JSON lacks {key}: {acme}");
    }
    assert_eq!(acme["state"], "ready");
    assert_eq!(acme["plan"], "pro");
    assert_eq!(acme["server"], "s1");
    // Idempotent; a different plan is bad input.
    let again = d.json(&["tenant", "create", "acme", "--plan", "pro"], 0);
    assert_eq!(again["id"], acme["id"]);
    let out = d.run(&["tenant", "create", "acme", "--plan", "enterprise"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists with plan pro"));

    let listed = d.json(&["tenant", "list"], 0);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(keys(&listed[0]), keys(&acme));
    let table = d.run(&["tenant", "list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.starts_with("SLUG") && text.contains("acme") && text.contains("ready"),
        "{text}"
    );

    assert_eq!(
        d.json(&["tenant", "suspend", "acme"], 0)["state"],
        "suspended"
    );
    assert_eq!(d.json(&["tenant", "show", "acme"], 0)["state"], "suspended");
    assert_eq!(d.json(&["tenant", "resume", "acme"], 0)["state"], "ready");

    let archive = d.home.path().join("acme.dump");
    let export = d.json(
        &[
            "tenant",
            "export",
            "acme",
            "--out",
            archive.to_str().unwrap(),
        ],
        0,
    );
    assert!(export["bytes"].as_u64().unwrap() > 0 && archive.exists());

    let deleted = d.json(&["tenant", "delete", "acme"], 0);
    assert_eq!(deleted["state"], "deleted");
    assert!(deleted["purge_after"].is_string());
    assert_eq!(d.run(&["tenant", "show", "acme"]).status.code(), Some(2));
    assert_eq!(
        d.json(&["tenant", "list", "--state", "deleted"], 0)
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let report = d.json(&["reconcile", "--dry-run"], 0);
    assert_eq!(report["dry_run"], true);
    let report = d.json(&["reconcile"], 0);
    assert!(report["orphan_databases"].as_array().unwrap().is_empty());

    // Purge, then the server can go.
    d.json(&["tenant", "create", "brief"], 0);
    d.json(&["tenant", "delete", "brief", "--purge"], 0);
    assert_eq!(
        d.run(&["server", "remove", "s1"]).status.code(),
        Some(2),
        "acme's data is still kept"
    );
    let catalog = d.catalog().await;
    catalog
        .execute(
            "UPDATE tenants SET purge_after = now() WHERE slug = 'acme'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        d.json(&["reconcile"], 0)["purged"],
        serde_json::json!(["acme"])
    );
    assert_eq!(
        d.run(&["server", "remove", "s1"]).status.code(),
        Some(2),
        "not drained"
    );
    d.json(&["server", "drain", "s1"], 0);
    assert_eq!(d.json(&["server", "remove", "s1"], 0)["removed"], "s1");
}

#[tokio::test]
async fn bad_input_exits_2_and_failures_exit_1() {
    let d = Deployment::new().await;
    for (args, code, says) in [
        (vec!["tenant", "create", "Bad_Slug"], 2, "tenant slug"),
        (
            vec!["tenant", "create", "ok-slug", "--plan", "gold"],
            2,
            "unknown plan",
        ),
        (
            vec!["tenant", "create", "ok-slug", "--template", "nope"],
            2,
            "template \"nope\" not found",
        ),
        (
            vec!["tenant", "create", "ok-slug", "--server", "s9"],
            2,
            "not registered",
        ),
        (vec!["tenant", "show", "ghost"], 2, "does not exist"),
        (
            vec!["tenant", "list", "--state", "sleeping"],
            2,
            "unknown tenant state",
        ),
        (vec!["tenant", "resume", "ghost"], 2, "does not exist"),
        (vec!["server", "show", "s9"], 2, "not registered"),
        (
            vec![
                "server",
                "add",
                "Bad Name",
                "--url",
                "postgres://a:b@127.0.0.1/x",
            ],
            2,
            "server name",
        ),
        (
            vec![
                "server",
                "add",
                "s2",
                "--url",
                "postgres://a:b@127.0.0.1:1/x",
            ],
            1,
            "unavailable",
        ),
    ] {
        let out = d.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    d.json(&["server", "drain", "s1"], 0);
    let out = d.run(&["tenant", "create", "late", "--server", "s1"]);
    assert_eq!(out.status.code(), Some(2));
    let out = d.run(&["tenant", "create", "late"]);
    assert_eq!(out.status.code(), Some(1), "no server has room");
    assert!(String::from_utf8_lossy(&out.stderr).contains("full or draining"));
    // None of it created anything.
    let catalog = d.catalog().await;
    let n: i64 = catalog
        .query_one("SELECT count(*) FROM tenants", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn migrate_plan_and_status_show_what_the_fleet_lacks() {
    let d = Deployment::new().await;
    d.json(&["tenant", "create", "early"], 0);
    d.json(&["tenant", "create", "later"], 0);
    let plan = d.json(&["migrate", "plan"], 0);
    assert_eq!(plan, serde_json::json!({"pending": []}));
    let status = d.json(&["migrate", "status"], 0);
    assert_eq!(status["latest"], serde_json::json!({"tasks": 1}));
    assert!(status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["status"] == "up_to_date"));

    // A release adds a migration file: no rebuild, just --templates.
    let templates = d.templates_with(&[(
        "V2__task_tags.sql",
        "ALTER TABLE tasks ADD COLUMN tags text[] NOT NULL DEFAULT '{}';",
    )]);
    let dir = templates.to_str().unwrap();
    let plan = d.json(&["--templates", dir, "migrate", "plan"], 0);
    let pending = plan["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(
        pending[0],
        serde_json::json!({"slug": "early", "from_version": 1, "to_version": 2, "migrations": ["V2__task_tags"]})
    );
    let status = d.json(&["--templates", dir, "migrate", "status"], 0);
    assert_eq!(status["latest"], serde_json::json!({"tasks": 2}));
    for t in status["tenants"].as_array().unwrap() {
        assert_eq!(t["status"], "behind");
        assert_eq!(t["schema_version"], 1);
        for key in ["slug", "template", "schema_version", "status", "error"] {
            assert!(t.get(key).is_some(), "{key} missing: {t}");
        }
    }
    let table = d.run(&["--templates", dir, "migrate", "plan"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("1 → 2"));
    // A broken templates folder is bad input.
    let out = d.run(&["--templates", "/nonexistent", "migrate", "plan"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("template \"tasks\" not found"));
}

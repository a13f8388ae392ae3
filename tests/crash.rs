//! The crash matrix: a failure at every lifecycle step — a returned error, a panic, and a
//! process exit — then `tenantry reconcile`, then proof that nothing is orphaned, nothing
//! is stuck, and every ready tenant works. Moves too: killed before and after each of
//! their steps, no replication slot, publication, subscription, database or role left.

mod support;

use std::collections::BTreeSet;

use serde_json::{json, Value};
use support::moves::{fill, leftovers, server_of, tenant_id, two_servers};
use support::Deployment;

const CREATE_STEPS: &[&str] = &[
    "creating",
    "template",
    "credentials",
    "role",
    "database",
    "grants",
    "ready",
];
const OTHER_POINTS: &[(&str, &str)] = &[
    ("suspend", "suspend.revoke"),
    ("resume", "resume.grant"),
    ("delete", "delete.revoke"),
    ("purge", "purge.drop"),
    ("set_plan", "set_plan.catalog"),
    ("set_plan", "set_plan.role"),
];

async fn crash_matrix(mode: &str) {
    let d = Deployment::new().await;
    // One tenant that no fault touches: whatever happens around it, it must keep working.
    assert!(d.run(&["tenant", "create", "control"]).status.success());
    let mut slugs = vec!["control".to_owned()];

    for step in CREATE_STEPS {
        for when in ["before", "after"] {
            let slug = format!("c-{step}-{when}");
            let mut cmd = d.cmd(&["tenant", "create", &slug]);
            cmd.env("TENANTRY_FAULT", format!("create.{step}.{when}={mode}"));
            let out = cmd.output().unwrap();
            assert!(!out.status.success(), "{slug}: the fault did not fire");
            slugs.push(slug);
        }
    }
    for (op, point) in OTHER_POINTS {
        for when in ["before", "after"] {
            let slug = format!("o-{}-{when}", point.replace(['.', '_'], "-"));
            assert!(d.run(&["tenant", "create", &slug]).status.success());
            let args: Vec<&str> = match *op {
                "suspend" => vec!["tenant", "suspend", &slug],
                "set_plan" => vec!["tenant", "set-plan", &slug, "enterprise"],
                "resume" => {
                    assert!(d.run(&["tenant", "suspend", &slug]).status.success());
                    vec!["tenant", "resume", &slug]
                }
                "delete" => vec!["tenant", "delete", &slug],
                _ => vec!["tenant", "delete", &slug, "--purge"],
            };
            let mut cmd = d.cmd(&args);
            cmd.env("TENANTRY_FAULT", format!("{point}.{when}={mode}"));
            let out = cmd.output().unwrap();
            assert!(!out.status.success(), "{slug}: the fault did not fire");
            slugs.push(slug);
        }
    }

    let out = d.run(&["--output", "json", "reconcile"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second pass finds nothing left to do.
    let again = d.json(&["reconcile"], 0);
    for key in ["finished", "undone", "deleted", "purged", "errors"] {
        assert_eq!(
            again[key],
            serde_json::json!([]),
            "second reconcile: {again}"
        );
    }

    let catalog = d.catalog().await;
    let stuck: i64 = catalog
        .query_one(
            "SELECT count(*) FROM tenants WHERE state IN ('requested', 'creating', 'deleting')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stuck, 0, "tenants stuck in a transient state");
    let open: i64 = catalog
        .query_one(
            "SELECT count(*) FROM operations WHERE status IN ('started', 'failed')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0, "ledger steps left open");

    // 0 orphans: exactly the databases and roles of tenants that hold one exist.
    let expected: std::collections::BTreeSet<String> = catalog
        .query(
            "SELECT database_name FROM tenants WHERE state IN ('ready', 'suspended', 'deleted') AND purged_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let admin = d.pg.connect("postgres").await;
    let present: std::collections::BTreeSet<String> = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname ~ '^t_[0-9a-f]{32}$'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(present, expected, "orphan or missing databases");
    let roles: std::collections::BTreeSet<String> = admin
        .query(
            "SELECT rolname FROM pg_roles WHERE rolname ~ '^tr_[0-9a-f]{32}$'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0).replacen("tr_", "t_", 1))
        .collect();
    assert_eq!(roles, expected, "orphan or missing roles");

    // Every ready tenant is usable, with its own credentials; suspended ones are shut.
    let rows = catalog
        .query("SELECT id, database_name, state, slug FROM tenants", &[])
        .await
        .unwrap();
    let mut ready = 0;
    for r in &rows {
        let (id, db, state, slug): (uuid::Uuid, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        match state.as_str() {
            "ready" => {
                ready += 1;
                let client = d
                    .connect_tenant(id, &db)
                    .await
                    .unwrap_or_else(|e| panic!("ready tenant {slug} is not usable: {e}"));
                client
                    .execute(
                        "INSERT INTO tasks (user_id, agent, title) VALUES ('u', 'opencode', 't')",
                        &[],
                    )
                    .await
                    .unwrap();
            }
            "suspended" => assert!(
                d.connect_tenant(id, &db).await.is_err(),
                "{slug} is suspended but reachable"
            ),
            "failed" | "deleted" => {}
            other => panic!("{slug} is {other}"),
        }
    }
    assert!(ready >= 1, "the control tenant is ready");

    // Every live tenant's role allows what its plan says (pool size + 2), and its plan
    // history ends on the plan it has.
    let live = catalog
        .query(
            "SELECT t.slug, t.role_name, p.pool_size + 2,
                    (SELECT c.to_plan FROM plan_changes c WHERE c.tenant_id = t.id
                     ORDER BY c.id DESC LIMIT 1) = t.plan
             FROM tenants t JOIN plans p ON p.name = t.plan WHERE t.state IN ('ready', 'suspended')",
            &[],
        )
        .await
        .unwrap();
    for r in &live {
        let (slug, role, limit, history): (String, String, i32, Option<bool>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let actual: i32 = admin
            .query_one(
                "SELECT rolconnlimit FROM pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(actual, limit, "{slug}: its role's connection limit");
        assert_eq!(history, Some(true), "{slug}: its plan history");
    }
    // Every outcome is one of the two the lifecycle allows: finished or cleanly undone.
    assert_eq!(rows.len(), slugs.len());
}

#[tokio::test]
async fn crash_matrix_returned_errors() {
    crash_matrix("error").await;
}

#[tokio::test]
async fn crash_matrix_panics() {
    crash_matrix("panic").await;
}

#[tokio::test]
async fn crash_matrix_process_exits() {
    crash_matrix("exit").await;
}

/// A move's ledger steps, online, in order.
const ONLINE_STEPS: &[&str] = &[
    "role",
    "database",
    "schema",
    "publication",
    "subscription",
    "copy",
    "indexes",
    "block",
    "catch_up",
    "sequences",
    "unsubscribe",
    "grants",
    "flip",
    "retire",
];

/// The crash matrix of moves: a move killed (process exit) before and after each step,
/// and one failing with an error at some, then `tenantry reconcile`. Moves killed before
/// the flip committed are undone (the tenant on s1), later ones finished (on s2); either
/// way no slot, publication, subscription, database or role is left that should not
/// be, and every tenant works where the catalog says it is.
#[tokio::test]
async fn a_move_killed_at_any_step_is_finished_or_undone_by_reconcile() {
    let (d, s2) = two_servers().await;
    let mut expected_on_s2 = BTreeSet::new();
    let mut slugs = Vec::new();
    for (i, step) in ONLINE_STEPS.iter().enumerate() {
        for when in ["before", "after"] {
            let slug = format!("m-{}-{when}", step.replace('_', "-"));
            assert!(d
                .run(&["tenant", "create", &slug, "--server", "s1"])
                .status
                .success());
            fill(&d, &slug, 20).await;
            let mut cmd = d.cmd(&["tenant", "move", &slug, "--to", "s2"]);
            cmd.env("TENANTRY_FAULT", format!("move.{step}.{when}=exit"));
            let out = cmd.output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(86),
                "{slug}: the fault did not fire"
            );
            // Reconciled after each crash: a crashed move's subscription keeps one of the
            // target's few logical replication workers until then.
            let report = d.json(&["reconcile"], 0);
            assert_eq!(
                report["moves"].as_array().unwrap().len(),
                1,
                "{slug}: {report}"
            );
            let flipped =
                ONLINE_STEPS[..i].contains(&"flip") || (*step == "flip" && when == "after");
            if flipped {
                expected_on_s2.insert(slug.clone());
            }
            slugs.push(slug);
        }
    }
    // Offline moves killed around their own steps: `moving` cleared and the source
    // writable again when undone.
    for (point, flipped) in [
        ("block.after", false),
        ("copy.before", false),
        ("copy.after", false),
        ("flip.after", true),
    ] {
        let slug = format!("off-{}", point.replace(['.', '_'], "-"));
        assert!(d
            .run(&["tenant", "create", &slug, "--server", "s1"])
            .status
            .success());
        fill(&d, &slug, 20).await;
        let mut cmd = d.cmd(&["tenant", "move", &slug, "--to", "s2", "--offline"]);
        cmd.env("TENANTRY_FAULT", format!("move.{point}=exit"));
        assert_eq!(cmd.output().unwrap().status.code(), Some(86), "{slug}");
        let out = d.run(&["--output", "json", "reconcile"]);
        assert!(
            out.status.success(),
            "{slug}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            report["moves"].as_array().unwrap().len(),
            1,
            "{slug}: {report}"
        );
        if flipped {
            expected_on_s2.insert(slug.clone());
        }
        slugs.push(slug);
    }
    let moving: i64 = d
        .catalog()
        .await
        .query_one("SELECT count(*) FROM tenants WHERE moving IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(moving, 0, "a tenant still refuses writes");
    // An error (not a crash) is undone at once, by the move itself.
    for step in ["subscription", "catch_up", "sequences"] {
        let slug = format!("e-{}", step.replace('_', "-"));
        assert!(d
            .run(&["tenant", "create", &slug, "--server", "s1"])
            .status
            .success());
        let mut cmd = d.cmd(&["--output", "json", "tenant", "move", &slug, "--to", "s2"]);
        cmd.env("TENANTRY_FAULT", format!("move.{step}.after=error"));
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{slug}");
        let shown = d.json(&["tenant", "show", &slug], 0);
        assert_eq!(shown["last_move"]["status"], "undone", "{shown}");
        assert!(shown["last_move"]["error"]
            .as_str()
            .unwrap()
            .contains("injected"));
        slugs.push(slug);
    }

    let again = d.json(&["reconcile"], 0);
    assert_eq!(again["moves"], json!([]), "second reconcile: {again}");
    assert_eq!(again["errors"], json!([]), "second reconcile: {again}");
    assert_eq!(again["orphan_databases"], json!([]), "{again}");
    assert_eq!(again["orphan_roles"], json!([]), "{again}");

    let catalog = d.catalog().await;
    let open: i64 = catalog
        .query_one(
            "SELECT (SELECT count(*) FROM operations WHERE status IN ('started', 'failed'))
                  + (SELECT count(*) FROM moves WHERE status IN ('running', 'failed'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0, "ledger steps or moves left open");

    let mut on_s2 = BTreeSet::new();
    let mut s2_dbs = BTreeSet::new();
    let mut s1_dbs = BTreeSet::new();
    for slug in &slugs {
        let (id, db) = tenant_id(&d, slug).await;
        s1_dbs.insert(db.clone());
        let port = if server_of(&d, slug).await == "s2" {
            on_s2.insert(slug.clone());
            s2_dbs.insert(db.clone());
            s2.port()
        } else {
            d.pg.port()
        };
        let c = d
            .connect_tenant_on(port, id, &db)
            .await
            .unwrap_or_else(|e| panic!("{slug} is not usable where the catalog says: {e}"));
        c.execute(
            "INSERT INTO tasks (user_id, agent, title) VALUES ('u', 'opencode', 'after')",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{slug} cannot write: {e}"));
    }
    assert_eq!(on_s2, expected_on_s2);
    // No replication object anywhere; s2 holds exactly the moved tenants, s1 every
    // tenant (the moved ones as source copies kept for the retention).
    let (rep1, dbs1, roles1) = leftovers(&d.pg).await;
    let (rep2, dbs2, roles2) = leftovers(&s2).await;
    assert!(rep1.is_empty(), "s1: {rep1:?}");
    assert!(rep2.is_empty(), "s2: {rep2:?}");
    assert_eq!(dbs2, s2_dbs);
    assert_eq!(dbs1, s1_dbs);
    let as_roles = |dbs: &BTreeSet<String>| -> BTreeSet<String> {
        dbs.iter().map(|db| db.replacen("t_", "tr_", 1)).collect()
    };
    assert_eq!(roles2, as_roles(&s2_dbs));
    assert_eq!(roles1, as_roles(&s1_dbs));
}

//! Moving tenants between servers (`tenant move`, `POST /admin/v1/tenants/{slug}/move`),
//! with two real clusters as two servers: every row and sequence arrives, the router
//! serves the tenant from the target afterwards, refused moves make nothing, a migration
//! run waits for a move. (A move killed at any step: the crash matrix, `tests/crash.rs`.)

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::moves::{contents, fill, leftovers, names, server_of, tenant_id, two_servers};
use support::routers::bearer;
use support::{admin_token, token};

#[tokio::test]
async fn an_online_move_brings_every_row_and_the_router_serves_it_from_the_target() {
    let (d, s2) = two_servers().await;
    assert!(d
        .run(&[
            "tenant",
            "create",
            "acme",
            "--plan",
            "enterprise",
            "--server",
            "s1"
        ])
        .status
        .success());
    fill(&d, "acme", 500).await;
    let (_, db) = tenant_id(&d, "acme").await;
    let before = contents(&d.pg, &db).await;

    let moved = d.json(&["tenant", "move", "acme", "--to", "s2"], 0);
    assert_eq!(moved["status"], "done", "{moved}");
    assert_eq!(moved["mode"], "online", "{moved}");
    assert_eq!(moved["to"], "s2");
    assert!(moved["bytes_total"].as_i64().unwrap() > 0, "{moved}");
    assert_eq!(server_of(&d, "acme").await, "s2");

    // Every row, the keyless table's updates and deletes, the sequence past its last value.
    let after = contents(&s2, &db).await;
    assert_eq!(
        (after.0, after.1, &after.2),
        (before.0, before.1, &before.2)
    );
    assert!(after.3 >= before.3, "sequence {} < {}", after.3, before.3);
    // Every index and constraint, though the secondary indexes were built after the copy.
    let indexes = "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'";
    let on_source = names(&d.pg.connect(&db).await, indexes).await;
    assert!(on_source.len() >= 4, "{on_source:?}");
    assert_eq!(names(&s2.connect(&db).await, indexes).await, on_source);
    let constraints = "SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
                       WHERE connamespace = 'public'::regnamespace";
    assert_eq!(
        names(&s2.connect(&db).await, constraints).await,
        names(&d.pg.connect(&db).await, constraints).await
    );

    // Nothing of the replication is left; the source copy stays for the retention.
    assert!(
        leftovers(&s2).await.0.is_empty(),
        "{:?}",
        leftovers(&s2).await
    );
    let (rep, dbs, _) = leftovers(&d.pg).await;
    assert!(rep.is_empty(), "{rep:?}");
    assert!(dbs.contains(&db), "the source copy is kept");

    // tenant show tells of the move.
    let shown = d.json(&["tenant", "show", "acme"], 0);
    assert_eq!(shown["server"], "s2");
    assert_eq!(shown["last_move"]["status"], "done", "{shown}");

    // The router serves the tenant from s2: its tasks, and a new one lands there.
    let r = d.serve(&[]).await;
    let http = reqwest::Client::new();
    let t = bearer(&token("acme", None));
    let list = http
        .get(format!("{}/v1/tasks?limit=100", r.base))
        .header("authorization", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    let created = http
        .post(format!("{}/v1/tasks", r.base))
        .header("authorization", &t)
        .json(&json!({"agent": "claude", "title": "after the move"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let on_target: i64 = s2
        .connect(&db)
        .await
        .query_one(
            "SELECT count(*) FROM tasks WHERE title = 'after the move'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_target, 1);
}

/// Polls `GET /admin/v1/operations/{id}` until the move is no longer running.
async fn wait_for_move(base: &str, operation: i64) -> Value {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let resp = http
            .get(format!("{base}/admin/v1/operations/{operation}"))
            .header("authorization", bearer(&admin_token()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["kind"], "move", "{body}");
        if body["move"]["status"] != "running" {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the move never ended: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_suspended_tenant_moves_over_the_admin_api_and_stays_suspended() {
    let (d, s2) = two_servers().await;
    assert!(d
        .run(&["tenant", "create", "sleepy", "--server", "s1"])
        .status
        .success());
    fill(&d, "sleepy", 100).await;
    assert!(d.run(&["tenant", "suspend", "sleepy"]).status.success());
    let (id, db) = tenant_id(&d, "sleepy").await;
    let before = contents(&d.pg, &db).await;

    let r = d.serve(&[]).await;
    let http = reqwest::Client::new();
    let admin = bearer(&admin_token());
    let resp = http
        .post(format!("{}/admin/v1/tenants/sleepy/move", r.base))
        .header("authorization", &admin)
        .json(&json!({"to": "s2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let started: Value = resp.json().await.unwrap();
    let operation = started["operation"].as_i64().unwrap();
    let done = wait_for_move(&r.base, operation).await;
    assert_eq!(done["move"]["status"], "done", "{done}");
    assert_eq!(done["move"]["phase"], "done");
    assert_eq!(done["move"]["to"], "s2");
    assert!(done["move"]["bytes_copied"].as_i64().unwrap() > 0, "{done}");

    assert_eq!(server_of(&d, "sleepy").await, "s2");
    let after = contents(&s2, &db).await;
    assert_eq!(
        (after.0, after.1, &after.2),
        (before.0, before.1, &before.2)
    );
    // Still suspended: the router says so, and the tenant's role cannot reach its new database.
    let state = d.json(&["tenant", "show", "sleepy"], 0);
    assert_eq!(state["state"], "suspended");
    let tasks = http
        .get(format!("{}/v1/tasks", r.base))
        .header("authorization", bearer(&token("sleepy", None)))
        .send()
        .await
        .unwrap();
    assert_eq!(tasks.status(), StatusCode::LOCKED);
    let can_connect: bool = s2
        .connect("postgres")
        .await
        .query_one(
            "SELECT has_database_privilege($1, $2, 'CONNECT')",
            &[&format!("tr_{}", id.simple()), &db],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !can_connect,
        "a suspended tenant's role reaches its moved database"
    );
    // Resumed, it works from s2 (once the resume's NOTIFY has reached the router).
    assert!(d.run(&["tenant", "resume", "sleepy"]).status.success());
    let resumed = std::time::Instant::now();
    loop {
        let resp = http
            .post(format!("{}/v1/tasks", r.base))
            .header("authorization", bearer(&token("sleepy", None)))
            .json(&json!({"agent": "opencode", "title": "back"}))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::CREATED {
            break;
        }
        assert_eq!(resp.status(), StatusCode::LOCKED);
        assert!(
            resumed.elapsed() < Duration::from_secs(5),
            "the resume never reached the router"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn moves_to_a_draining_full_same_or_unknown_server_are_refused_and_make_nothing() {
    let (d, s2) = two_servers().await;
    assert!(d
        .run(&["tenant", "create", "stay", "--server", "s1"])
        .status
        .success());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["tenant", "move", "stay", "--to", "s1"],
            "already on server s1",
        ),
        (
            vec!["tenant", "move", "stay", "--to", "nowhere"],
            "not registered",
        ),
        (
            vec!["tenant", "move", "ghost", "--to", "s2"],
            "does not exist",
        ),
        (
            vec![
                "tenant",
                "move",
                "stay",
                "--to",
                "s2",
                "--cutover-timeout",
                "0s",
            ],
            "cutover timeout",
        ),
    ];
    for (args, why) in &cases {
        let out = d.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }
    assert!(d.run(&["server", "drain", "s2"]).status.success());
    let out = d.run(&["tenant", "move", "stay", "--to", "s2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("draining"));
    d.catalog()
        .await
        .execute(
            "UPDATE servers SET state = 'active', capacity = 1 WHERE name = 's2'",
            &[],
        )
        .await
        .unwrap();
    assert!(d
        .run(&["tenant", "create", "filler", "--server", "s2"])
        .status
        .success());
    let out = d.run(&["tenant", "move", "stay", "--to", "s2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("full"));

    // Over HTTP: the same reasons, as 4xx.
    let r = d.serve(&[]).await;
    let http = reqwest::Client::new();
    for (body, status) in [
        (json!({"to": "s2"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"to": "s1"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"to": "nowhere"}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"to": "s2", "cutover_timeout_s": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"server": "s2"}), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let resp = http
            .post(format!("{}/admin/v1/tenants/stay/move", r.base))
            .header("authorization", bearer(&admin_token()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{body}");
    }
    let ghost = http
        .post(format!("{}/admin/v1/tenants/ghost/move", r.base))
        .header("authorization", bearer(&admin_token()))
        .json(&json!({"to": "s2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ghost.status(), StatusCode::NOT_FOUND);

    // Nothing was made: no move recorded, only the filler's database on s2.
    let moves: i64 = d
        .catalog()
        .await
        .query_one("SELECT count(*) FROM moves", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(moves, 0);
    let (rep, dbs, _) = leftovers(&s2).await;
    assert!(rep.is_empty(), "{rep:?}");
    let (_, filler_db) = tenant_id(&d, "filler").await;
    assert_eq!(dbs, BTreeSet::from([filler_db]));
    assert_eq!(server_of(&d, "stay").await, "s1");
}

#[tokio::test]
async fn an_offline_move_refuses_writes_while_it_copies_and_brings_everything() {
    let (d, s2) = two_servers().await;
    assert!(d
        .run(&["tenant", "create", "quiet", "--plan", "pro", "--server", "s1"])
        .status
        .success());
    fill(&d, "quiet", 300).await;
    let (_, db) = tenant_id(&d, "quiet").await;
    let before = contents(&d.pg, &db).await;
    let r = d.serve(&[]).await;
    let http = reqwest::Client::new();
    let t = bearer(&token("quiet", None));

    // Stopped just before the copy: writes are refused with Retry-After, reads go on.
    let mut cmd = d.cmd(&["tenant", "move", "quiet", "--to", "s2", "--offline"]);
    cmd.env("TENANTRY_FAULT", "move.copy.before=exit");
    assert!(!cmd.output().unwrap().status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let resp = http
            .post(format!("{}/v1/tasks", r.base))
            .header("authorization", &t)
            .json(&json!({"agent": "claude", "title": "during"}))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            break resp;
        }
        assert!(std::time::Instant::now() < deadline, "writes never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused.headers().get("retry-after").is_some());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tenant_moving");
    let read = http
        .get(format!("{}/v1/tasks", r.base))
        .header("authorization", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);

    // Reconcile undoes it: writes back on s1, nothing on s2.
    let report = d.json(&["reconcile"], 0);
    assert_eq!(report["moves"].as_array().unwrap().len(), 1, "{report}");
    let (rep, dbs, roles) = leftovers(&s2).await;
    assert!(
        rep.is_empty() && dbs.is_empty() && roles.is_empty(),
        "{rep:?} {dbs:?} {roles:?}"
    );
    assert_eq!(server_of(&d, "quiet").await, "s1");

    // Now the whole offline move.
    let moved = d.json(&["tenant", "move", "quiet", "--to", "s2", "--offline"], 0);
    assert_eq!(moved["status"], "done", "{moved}");
    assert_eq!(moved["mode"], "offline");
    assert!(moved["bytes_copied"].as_i64().unwrap() > 0);
    let after = contents(&s2, &db).await;
    assert_eq!(
        (after.0, after.1, &after.2),
        (before.0, before.1, &before.2)
    );
    assert!(after.3 >= before.3);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let resp = http
            .post(format!("{}/v1/tasks", r.base))
            .header("authorization", &t)
            .json(&json!({"agent": "claude", "title": "after"}))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::CREATED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "writes never came back: {}",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_target: i64 = s2
        .connect(&db)
        .await
        .query_one("SELECT count(*) FROM tasks WHERE title = 'after'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_target, 1);
}

/// Source copies are kept for the retention, then purged by reconcile; `server remove`
/// of the source is not held back by them.
#[tokio::test]
async fn source_copies_are_purged_when_due_and_never_hold_a_server_back() {
    let (d, s2) = two_servers().await;
    for slug in ["one", "two"] {
        assert!(d
            .run(&["tenant", "create", slug, "--server", "s2"])
            .status
            .success());
        assert_eq!(
            d.json(&["tenant", "move", slug, "--to", "s1"], 0)["status"],
            "done"
        );
    }
    let (_, db_one) = tenant_id(&d, "one").await;
    assert!(leftovers(&s2).await.1.contains(&db_one));
    // One copy's retention passes: reconcile purges it, not the other.
    let catalog = d.catalog().await;
    catalog
        .execute(
            "UPDATE retained_copies SET purge_after = now() - interval '1 minute'
             WHERE database_name = $1",
            &[&db_one],
        )
        .await
        .unwrap();
    let report = d.json(&["reconcile"], 0);
    assert_eq!(report["purged_copies"], json!(["one"]), "{report}");
    let (_, dbs, roles) = leftovers(&s2).await;
    assert_eq!(dbs.len(), 1, "{dbs:?}");
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert!(!dbs.contains(&db_one));
    // The other copy does not hold s2 back.
    assert!(d.run(&["server", "drain", "s2"]).status.success());
    let out = d.run(&["server", "remove", "s2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, dbs, roles) = leftovers(&s2).await;
    assert!(dbs.is_empty() && roles.is_empty(), "{dbs:?} {roles:?}");
    // Both tenants still work on s1.
    for slug in ["one", "two"] {
        let (id, db) = tenant_id(&d, slug).await;
        assert!(d.connect_tenant(id, &db).await.is_ok(), "{slug}");
    }
}

/// A cutover that misses `--cutover-timeout` gives the source its writes back, fails
/// saying why, and leaves nothing on the target.
#[tokio::test]
async fn a_cutover_past_its_timeout_gives_the_source_its_writes_back() {
    let (d, s2) = two_servers().await;
    assert!(d
        .run(&["tenant", "create", "slow", "--server", "s1"])
        .status
        .success());
    fill(&d, "slow", 50).await;
    let mut cmd = d.cmd(&[
        "tenant",
        "move",
        "slow",
        "--to",
        "s2",
        "--cutover-timeout",
        "1s",
    ]);
    // The target is slow to catch up: three seconds, against a timeout of one.
    cmd.env("TENANTRY_FAULT", "move.catch_up.before=delay");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not finish within 1 s"), "{err}");
    let shown = d.json(&["tenant", "show", "slow"], 0);
    assert_eq!(shown["server"], "s1");
    assert_eq!(shown["last_move"]["status"], "undone", "{shown}");
    let (rep, dbs, roles) = leftovers(&s2).await;
    assert!(
        rep.is_empty() && dbs.is_empty() && roles.is_empty(),
        "{rep:?} {dbs:?} {roles:?}"
    );
    assert!(leftovers(&d.pg).await.0.is_empty());
    // Writable on the source again, as its own role.
    let (id, db) = tenant_id(&d, "slow").await;
    let c = d.connect_tenant(id, &db).await.unwrap();
    c.execute("INSERT INTO notes (body) VALUES ('after')", &[])
        .await
        .unwrap();
}

/// A migration run that meets a tenant in the middle of a move waits for the move (both
/// take the tenant's lock), then migrates the tenant where it now lives: never the
/// source while it replicates (a schema change there would stop the subscription), and
/// never the copy the move left behind.
#[tokio::test]
async fn a_migration_run_waits_for_a_move_and_migrates_the_tenant_where_it_landed() {
    let (d, s2) = two_servers().await;
    assert!(d
        .run(&["tenant", "create", "acme", "--plan", "pro", "--server", "s1"])
        .status
        .success());
    fill(&d, "acme", 100).await;
    let (_, db) = tenant_id(&d, "acme").await;
    let templates =
        d.templates_with(&[("V2__tags.sql", "ALTER TABLE tasks ADD COLUMN tags text[];")]);

    // The move stalls for three seconds before its copy, holding the tenant's lock.
    let mut cmd = d.cmd(&["--output", "json", "tenant", "move", "acme", "--to", "s2"]);
    cmd.env("TENANTRY_FAULT", "move.copy.before=delay");
    let mover = support::Running::spawn(cmd);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let phase: Option<String> = d
            .catalog()
            .await
            .query_opt("SELECT phase FROM moves ORDER BY id DESC LIMIT 1", &[])
            .await
            .unwrap()
            .map(|r| r.get(0));
        if phase.as_deref() == Some("copy") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the move never reached its copy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = d.json(
        &["--templates", templates.to_str().unwrap(), "migrate", "run"],
        0,
    );
    let (status, stdout, stderr) = mover.wait(Duration::from_secs(60));
    assert!(status.success(), "{stdout} {stderr}");
    let moved: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(moved["status"], "done", "{moved}");

    // The run migrated the tenant after the move, on s2; the copy left on s1 never saw V2.
    assert_eq!(run["tenants"][0]["status"], "ok", "{run}");
    assert_eq!(run["tenants"][0]["server"], "s2", "{run}");
    assert_eq!(server_of(&d, "acme").await, "s2");
    let has_tags = |c: tokio_postgres::Client| async move {
        c.query_one(
            "SELECT count(*) FROM information_schema.columns
             WHERE table_name = 'tasks' AND column_name = 'tags'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 1
    };
    assert!(
        has_tags(s2.connect(&db).await).await,
        "V2 is not on the target"
    );
    assert!(
        !has_tags(d.pg.connect(&db).await).await,
        "V2 reached the source copy"
    );
    let version: i32 = d
        .catalog()
        .await
        .query_one(
            "SELECT schema_version FROM tenants WHERE slug = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 2);
}

/// The count a query returns.
async fn one(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// What a tenant can put in its own database does not stop its move or act through it:
/// a partitioned table with an index, an invalid index left by a failed `CREATE UNIQUE
/// INDEX CONCURRENTLY`, and a `public.format(text, name, name)` that would record who
/// calls it, where the control plane's own queries call `format`.
#[tokio::test]
async fn a_tenants_own_objects_neither_stop_its_move_nor_run_as_the_admin() {
    let (d, s2) = two_servers().await;
    assert!(d
        .run(&["tenant", "create", "odd", "--plan", "pro", "--server", "s1"])
        .status
        .success());
    let (id, db) = tenant_id(&d, "odd").await;
    let own = d.connect_tenant(id, &db).await.unwrap();
    own.batch_execute(
        "CREATE TABLE events (id bigint, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE INDEX events_v ON events (v);
         INSERT INTO events SELECT g, '2024-06-01'::date + (g % 400), 'v' || g FROM generate_series(1, 300) g;
         CREATE TABLE dupes (n int);
         INSERT INTO dupes VALUES (1), (1);
         CREATE TABLE trap_calls (who text);
         CREATE FUNCTION public.format(text, name, name) RETURNS text LANGUAGE sql
             AS $$ INSERT INTO public.trap_calls VALUES (current_user) RETURNING 'trapped' $$;",
    )
    .await
    .unwrap();
    // Fails on the duplicates, and leaves an invalid index behind.
    assert!(own
        .batch_execute("CREATE UNIQUE INDEX CONCURRENTLY dupes_n ON dupes (n)")
        .await
        .is_err());
    drop(own);

    let moved = d.json(&["tenant", "move", "odd", "--to", "s2"], 0);
    assert_eq!(moved["status"], "done", "{moved}");
    assert_eq!(moved["mode"], "online", "{moved}");

    let target = s2.connect(&db).await;
    let source = d.pg.connect(&db).await;
    assert_eq!(one(&target, "SELECT count(*) FROM events").await, 300);
    // The partitioned index and its partitions' indexes, as on the source.
    let indexes =
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename LIKE 'events%'";
    let on_source = names(&source, indexes).await;
    assert!(
        on_source.iter().any(|i| i.contains("events_v")),
        "{on_source:?}"
    );
    assert_eq!(names(&target, indexes).await, on_source);
    // The invalid index stays behind (pg_dump leaves it out too).
    assert_eq!(
        one(
            &target,
            "SELECT count(*) FROM pg_class WHERE relname = 'dupes_n'"
        )
        .await,
        0
    );
    // The tenant's `format` was never called by the control plane.
    assert_eq!(one(&source, "SELECT count(*) FROM trap_calls").await, 0);
    assert_eq!(one(&target, "SELECT count(*) FROM trap_calls").await, 0);
}

//! Tenants moved between two servers: the deployment, the rows written before a move and
//! what a cluster holds afterwards.

use std::collections::BTreeSet;

use tenantry_testkit::TestCluster;

use super::Deployment;

/// A deployment with two servers: `s1` (the catalog's cluster) and `s2`.
pub async fn two_servers() -> (Deployment, TestCluster) {
    let d = Deployment::new().await;
    let s2 = d.second_server();
    (d, s2)
}

pub async fn tenant_id(d: &Deployment, slug: &str) -> (uuid::Uuid, String) {
    let row = d
        .catalog()
        .await
        .query_one(
            "SELECT id, database_name FROM tenants WHERE slug = $1 AND state <> 'deleted'",
            &[&slug],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

pub async fn server_of(d: &Deployment, slug: &str) -> String {
    d.catalog()
        .await
        .query_one(
            "SELECT s.name FROM tenants t JOIN servers s ON s.id = t.server_id
             WHERE t.slug = $1 AND t.state <> 'deleted'",
            &[&slug],
        )
        .await
        .unwrap()
        .get(0)
}

/// Tasks, and a keyless table with a sequence (replica identity FULL, setval), in the
/// tenant's database, written as the tenant's own role.
pub async fn fill(d: &Deployment, slug: &str, rows: i64) {
    let (id, db) = tenant_id(d, slug).await;
    let c = d.connect_tenant(id, &db).await.unwrap();
    c.batch_execute(
        "CREATE TABLE notes (n bigserial, body text);
         INSERT INTO tasks (user_id, agent, title) SELECT 'u', 'opencode', 'task ' || g FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, $1::int8) g",
        &[&rows],
    )
    .await
    .unwrap();
    // Updates and deletes on the keyless table too.
    c.batch_execute(
        "UPDATE notes SET body = body || '!' WHERE n % 2 = 0; DELETE FROM notes WHERE n % 10 = 0",
    )
    .await
    .unwrap();
}

/// (tasks, notes, notes' checksum, the notes sequence's next value) on `cluster`.
pub async fn contents(cluster: &TestCluster, db: &str) -> (i64, i64, String, i64) {
    let c = cluster.connect(db).await;
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM notes),
                    (SELECT md5(string_agg(n || body, ',' ORDER BY n)) FROM notes)",
            &[],
        )
        .await
        .unwrap();
    let next: i64 = c
        .query_one("SELECT nextval('notes_n_seq')", &[])
        .await
        .unwrap()
        .get(0);
    (r.get(0), r.get(1), r.get(2), next)
}

/// The text column of every row `sql` returns.
pub async fn names(c: &tokio_postgres::Client, sql: &str) -> BTreeSet<String> {
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// What replication and tenant objects a cluster holds: slots, publications and
/// subscriptions (in any database), then tenant databases and roles.
pub async fn leftovers(
    cluster: &TestCluster,
) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let admin = cluster.connect("postgres").await;
    let dbs = names(
        &admin,
        "SELECT datname::text FROM pg_database WHERE datname ~ '^t_[0-9a-f]{32}$'",
    )
    .await;
    let mut replication: BTreeSet<String> = names(
        &admin,
        "SELECT 'slot ' || slot_name FROM pg_replication_slots
         UNION ALL SELECT 'subscription ' || subname FROM pg_subscription",
    )
    .await;
    for db in &dbs {
        let c = cluster.connect(db).await;
        replication.extend(names(&c, "SELECT 'publication ' || pubname FROM pg_publication").await);
    }
    let roles = names(
        &admin,
        "SELECT rolname::text FROM pg_roles WHERE rolname ~ '^tr_[0-9a-f]{32}$'",
    )
    .await;
    (replication, dbs, roles)
}

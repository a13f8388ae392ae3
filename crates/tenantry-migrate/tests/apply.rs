use std::path::Path;

use tenantry_migrate::{Template, TemplateError};
use tenantry_testkit::TestCluster;

#[tokio::test]
async fn the_tasks_template_applies_once_and_has_its_tables() {
    let pg = TestCluster::shared();
    pg.create_database("tpl_apply").await;
    let mut client = pg.connect("tpl_apply").await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenant-templates");
    let t = Template::load(&dir, "tasks").unwrap();
    let applied = t.apply(&mut client).await.unwrap();
    assert_eq!(applied.len(), t.files().len());
    assert!(t.apply(&mut client).await.unwrap().is_empty());
    for table in ["tasks", "usage_logs"] {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = $1",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{table}");
    }
    // The CHECK constraints hold.
    let bad = client
        .execute(
            "INSERT INTO tasks (user_id, agent, title) VALUES ('u', 'gpt', 't')",
            &[],
        )
        .await;
    assert!(bad.is_err());
}

#[tokio::test]
async fn a_changed_applied_file_is_refused_by_name() {
    let pg = TestCluster::shared();
    pg.create_database("tpl_divergent").await;
    let mut client = pg.connect("tpl_divergent").await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("t");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("V1__one.sql"), "CREATE TABLE one (x int);").unwrap();
    Template::load(root.path(), "t")
        .unwrap()
        .apply(&mut client)
        .await
        .unwrap();
    std::fs::write(dir.join("V1__one.sql"), "CREATE TABLE one (x bigint);").unwrap();
    std::fs::write(dir.join("V2__two.sql"), "CREATE TABLE two (x int);").unwrap();
    let err = Template::load(root.path(), "t")
        .unwrap()
        .apply(&mut client)
        .await
        .unwrap_err();
    assert!(matches!(err, TemplateError::Apply { .. }));
    assert!(err.to_string().contains("one"), "{err}");
    let two: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'two'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(two, 0, "nothing applied after a divergent file");
}

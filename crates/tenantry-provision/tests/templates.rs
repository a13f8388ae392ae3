//! Template databases: built from templates.dir at run time, rebuilt when its files change.

mod support;

use support::Fleet;
use tenantry_provision::CreateTenant;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test]
async fn a_changed_template_is_rebuilt_and_new_tenants_are_born_at_its_version() {
    let root = tempfile::tempdir().unwrap();
    copy_dir(
        &support::templates_dir().join("tasks"),
        &root.path().join("tasks"),
    );
    let mut opts = support::options();
    opts.templates_dir = root.path().to_owned();
    let fleet = Fleet::with_options(1, opts).await;
    let p = &fleet.provisioner;
    let admin = fleet.server("s1").connect("postgres").await;
    let templates = || async {
        admin
            .query(
                "SELECT datname, datistemplate, datallowconn, pg_get_userbyid(datdba)::text
                 FROM pg_database WHERE datname LIKE 'tpl\\_%' ORDER BY datname",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, bool>(1),
                    r.get::<_, bool>(2),
                    r.get::<_, String>(3),
                )
            })
            .collect::<Vec<_>>()
    };

    let (first, _) = p
        .create_tenant(CreateTenant {
            slug: "early".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first.schema_version, 1);
    let before = templates().await;
    assert_eq!(before.len(), 1);
    let (name, is_template, allow_conn, owner) = &before[0];
    assert!(name.starts_with("tpl_tasks_"));
    assert!(
        *is_template && !*allow_conn,
        "a template nobody connects to"
    );
    assert_eq!(
        owner,
        fleet.server("s1").superuser(),
        "the template database is the admin's, not a tenant's"
    );

    std::fs::write(
        root.path().join("tasks/V2__task_tags.sql"),
        "ALTER TABLE tasks ADD COLUMN tags text[] NOT NULL DEFAULT '{}';",
    )
    .unwrap();
    let (second, _) = p
        .create_tenant(CreateTenant {
            slug: "late".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(second.schema_version, 2);
    let after = templates().await;
    assert_eq!(
        after.len(),
        2,
        "the old template stays while a creator may still clone it"
    );
    // Ten minutes on, the next build sweeps it.
    fleet
        .catalog()
        .await
        .execute(
            "UPDATE template_databases SET created_at = now() - interval '11 minutes' WHERE database_name = $1",
            &[&before[0].0],
        )
        .await
        .unwrap();
    std::fs::write(
        root.path().join("tasks/V3__task_notes.sql"),
        "ALTER TABLE tasks ADD COLUMN notes text;",
    )
    .unwrap();
    let (third, _) = p
        .create_tenant(CreateTenant {
            slug: "later".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(third.schema_version, 3);
    let swept = templates().await;
    assert!(!swept.iter().any(|t| t.0 == before[0].0), "{swept:?}");
    assert!(swept
        .iter()
        .any(|t| t.0 == after.iter().find(|a| a.0 != before[0].0).unwrap().0));

    let late = fleet.connect_tenant("late").await.unwrap();
    late.execute(
        "INSERT INTO tasks (user_id, agent, title, tags) VALUES ('u', 'opencode', 't', '{a}')",
        &[],
    )
    .await
    .unwrap();
    // The earlier tenant is untouched (migrating it is the migration runner's work).
    let early = fleet.connect_tenant("early").await.unwrap();
    assert!(early
        .execute(
            "INSERT INTO tasks (user_id, agent, title, tags) VALUES ('u', 'opencode', 't', '{a}')",
            &[]
        )
        .await
        .is_err());
}

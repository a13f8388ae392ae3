//! Names reach real PostgreSQL only through `Ident`: whatever the text, what PostgreSQL
//! stores is exactly that text, and nothing else runs.

use proptest::prelude::*;
use tenantry_testkit::TestCluster;
use tenantry_types::{Ident, IdentError};

#[test]
fn hostile_names_round_trip_through_a_real_server() {
    let pg = TestCluster::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(pg.connect("postgres"));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&"[a-z\"';() \\-\\\\é☃]{1,40}", |name| {
            // Multi-byte characters can take forty of them past PostgreSQL's 63 bytes:
            // those are refused before any SQL, and that is the property too.
            let ident = match Ident::new(name.clone()) {
                Ok(ident) => ident,
                Err(IdentError::TooLong(n)) if n == name.len() && n > 63 => return Ok(()),
                Err(e) => panic!("{name:?} refused: {e}"),
            };
            rt.block_on(async {
                client
                    .batch_execute(&format!("CREATE ROLE {ident} NOLOGIN"))
                    .await
                    .unwrap();
                let found: String = client
                    .query_one(
                        "SELECT rolname::text FROM pg_roles WHERE rolname = $1",
                        &[&ident.as_str()],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(found, name);
                client
                    .batch_execute(&format!("DROP ROLE {ident}"))
                    .await
                    .unwrap();
            });
            Ok(())
        })
        .unwrap();
    // Over 63 bytes and NUL never get as far as SQL.
    assert!(Ident::new("é".repeat(40)).is_err());
    assert!(Ident::new("a\0; DROP ROLE postgres").is_err());
    let roles: i64 = rt
        .block_on(client.query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname !~ '^(pg_|tenantry$)'",
            &[],
        ))
        .unwrap()
        .get(0);
    assert_eq!(
        roles, 0,
        "every role made was dropped, and nothing else was made"
    );
}

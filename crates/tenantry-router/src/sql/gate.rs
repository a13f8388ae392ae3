//! Which statements `/v1/sql` runs: an allow-list of statement kinds, decided on the
//! parse tree (sqlparser's PostgreSQL dialect), never on the text. Everything a tenant
//! could use to take its role, its session or its database out of the control plane's
//! hands — roles and grants, session settings, prepared statements, cursors, LISTEN,
//! transaction control, functions, extensions, COPY — is refused before it runs, naming
//! its kind. A statement the parser cannot read is refused too (closed by default).
//!
//! This is the first wall, not the only one: what a statement can still do through
//! functions (`set_config`, advisory locks) is undone when its connection is cleaned,
//! and the router's session limits are start-up options a role setting cannot lift.

use sqlparser::ast::{ObjectType, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Why a statement is not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not one statement the parser can read.
    Unreadable(String),
    /// Several statements in one request.
    Several,
    /// A kind the SQL API does not run; the kind in words (e.g. `ALTER ROLE`).
    Kind(String),
}

/// `Ok` when `sql` is one statement of an allowed kind.
pub(crate) fn check(sql: &str) -> Result<(), Refusal> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| Refusal::Unreadable(e.to_string()))?;
    match statements.as_slice() {
        [one] => allowed(one),
        [] => Err(Refusal::Unreadable("no statement".into())),
        _ => Err(Refusal::Several),
    }
}

fn allowed(statement: &Statement) -> Result<(), Refusal> {
    match statement {
        // Reading and writing the tenant's own data.
        Statement::Query(_)
        | Statement::Insert(_)
        | Statement::Update { .. }
        | Statement::Delete(_)
        | Statement::Merge { .. }
        | Statement::Truncate { .. }
        | Statement::ShowVariable { .. }
        | Statement::Analyze { .. } => Ok(()),
        // EXPLAIN (ANALYZE runs it) of a statement that is itself allowed.
        Statement::Explain { statement, .. } => allowed(statement),
        // The tenant's own schema: tables, views, indexes, sequences, types, comments.
        Statement::CreateTable(_)
        | Statement::CreateView { .. }
        | Statement::CreateIndex(_)
        | Statement::CreateSequence { .. }
        | Statement::CreateType { .. }
        | Statement::CreateSchema { .. }
        | Statement::AlterTable { .. }
        | Statement::AlterIndex { .. }
        | Statement::AlterView { .. }
        | Statement::AlterType(_)
        | Statement::Comment { .. } => Ok(()),
        Statement::Drop { object_type, .. } => match object_type {
            ObjectType::Table
            | ObjectType::View
            | ObjectType::MaterializedView
            | ObjectType::Index
            | ObjectType::Sequence
            | ObjectType::Type
            | ObjectType::Schema => Ok(()),
            other => Err(Refusal::Kind(format!("DROP {other}"))),
        },
        other => Err(Refusal::Kind(kind(other))),
    }
}

/// A statement's kind in words, from its variant's name: `AlterRole` → `ALTER ROLE`.
fn kind(statement: &Statement) -> String {
    let debug = format!("{statement:?}");
    let name: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let mut words = String::new();
    let mut previous_upper = true;
    for c in name.chars() {
        if c.is_ascii_uppercase() && !previous_upper {
            words.push(' ');
        }
        previous_upper = c.is_ascii_uppercase();
        words.push(c.to_ascii_uppercase());
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(sql: &str) -> String {
        match check(sql) {
            Err(Refusal::Kind(k)) => k,
            Err(Refusal::Unreadable(_)) => "unreadable".into(),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn data_and_schema_statements_run() {
        for sql in [
            "SELECT 1",
            "select * from tasks where id = $1",
            "WITH t AS (SELECT 1 AS x) SELECT x FROM t",
            "INSERT INTO t (a) VALUES ($1) RETURNING a",
            "UPDATE t SET a = 1 WHERE b = 2",
            "DELETE FROM t WHERE a = 1",
            "EXPLAIN ANALYZE SELECT 1",
            "CREATE TABLE notes (id bigint PRIMARY KEY, body text)",
            "CREATE INDEX ON notes (body)",
            "ALTER TABLE notes ADD COLUMN at timestamptz",
            "DROP TABLE notes",
            "TRUNCATE notes",
            "SHOW statement_timeout",
            "select pg_sleep(1)",
        ] {
            assert_eq!(check(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn statements_that_reach_past_the_tenant_are_refused_by_kind() {
        // Role grants and some session commands are beyond the parser: refused unread.
        for (sql, kind) in [
            ("ALTER ROLE CURRENT_USER PASSWORD 'x'", "ALTER ROLE"),
            ("alter role tr_x set statement_timeout = 0", "ALTER ROLE"),
            ("REVOKE tr_x FROM admin", "unreadable"),
            ("GRANT tr_x TO someone", "unreadable"),
            ("SET statement_timeout = 0", "SET"),
            ("SET SESSION AUTHORIZATION admin", "unreadable"),
            ("RESET ALL", "unreadable"),
            ("PREPARE s1 AS SELECT 1", "PREPARE"),
            ("EXECUTE s1", "EXECUTE"),
            ("DEALLOCATE ALL", "DEALLOCATE"),
            ("LISTEN x", "LISTEN"),
            ("BEGIN", "START TRANSACTION"),
            ("COMMIT", "COMMIT"),
            ("CREATE ROLE evil LOGIN", "CREATE ROLE"),
            ("DROP ROLE tr_x", "DROP ROLE"),
            ("CREATE EXTENSION dblink", "CREATE EXTENSION"),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
                "CREATE FUNCTION",
            ),
            ("COPY tasks TO STDOUT", "COPY"),
            ("DISCARD ALL", "DISCARD"),
            ("EXPLAIN ANALYZE ALTER ROLE x PASSWORD 'y'", "ALTER ROLE"),
        ] {
            assert_eq!(kind_of(sql), kind, "{sql}");
        }
    }

    #[test]
    fn several_statements_or_unreadable_text_are_refused() {
        assert_eq!(
            check("SELECT 1; ALTER ROLE x PASSWORD 'y'"),
            Err(Refusal::Several)
        );
        assert!(matches!(
            check("ALTER DATABASE t SET x = 1 garbage ("),
            Err(Refusal::Unreadable(_))
        ));
        assert!(matches!(check("   "), Err(Refusal::Unreadable(_))));
        // A comment that PostgreSQL nests hides nothing: either unreadable or refused.
        assert!(check("/* /* */ SELECT 1 */ ALTER ROLE x PASSWORD 'y'").is_err());
    }
}

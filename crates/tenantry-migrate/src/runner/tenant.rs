//! One attempt at one tenant: its lock, what it has really applied, and its files.
//!
//! The catalog, not the tenant database, says which files a tenant has: its
//! `schema_version` is written only after the runner committed a file itself, so the
//! tenant's own `refinery_schema_history` (a table it owns and can write) is never read
//! to decide what to apply. Before a file's transaction commits, its version and
//! transaction id go to `migration_intents`; a runner that died before the catalog took
//! the version leaves that row, and the next one trusts the history row only if that
//! transaction committed it. The history is then made to match the catalog (rows the
//! control plane never wrote removed, rows it did restored), so that tools reading it
//! agree.

use tenantry_catalog::Catalog;
use tenantry_types::TenantId;
use uuid::Uuid;

use super::{Connector, RunOptions, Target};
use crate::template::pg_error;
use crate::{Applied, MigrationFile, Template};

/// One attempt at one tenant.
pub(super) enum Attempt {
    Done {
        from: i32,
        to: i32,
    },
    /// Another runner, or a lifecycle operation, holds the tenant's lock: come back later.
    Busy,
    /// A statement waited longer than `lock_timeout`: retry with backoff. `to` is how far
    /// the tenant got before (each file commits on its own).
    LockTimeout {
        from: i32,
        to: i32,
        error: String,
    },
    Failed {
        from: Option<i32>,
        to: Option<i32>,
        error: String,
    },
}

/// What every attempt of a run shares.
pub(super) struct Scope<'a, C> {
    pub connector: &'a C,
    pub catalog: &'a Catalog,
    pub run_id: Uuid,
    pub opts: &'a RunOptions,
}

/// What an attempt did besides its outcome.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// The files applied (or, in a dry run, that would be).
    pub applied: Vec<String>,
    /// Changes to the tenant's history that the control plane never wrote, undone.
    pub repaired: Vec<String>,
    /// The server the tenant was found on, when a move took it off the plan's.
    pub moved_to: Option<(i64, String)>,
}

/// The advisory lock key runners before this one took in a tenant database (this one
/// takes it too, so that an older runner never works on a tenant beside it).
const TENANT_LOCK: &str = "tenantry-migrate";

/// The SQLSTATE of a statement that gave up waiting for a lock.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Takes the tenant's lock in the catalog (the one lifecycle operations take, which no
/// tenant session can reach), marks it running, and migrates it. The lock is handed
/// back to be held until the result is recorded.
pub(super) async fn attempt<C: Connector>(
    scope: &Scope<'_, C>,
    mark_running: bool,
    target: &Target,
    template: &Template,
    tally: &mut Tally,
) -> (Attempt, Option<C::Lock>) {
    let lock = match scope.connector.try_lock(target.id).await {
        Ok(Some(lock)) => lock,
        Ok(None) => return (Attempt::Busy, None),
        Err(e) => {
            return (
                Attempt::Failed {
                    from: None,
                    to: None,
                    error: format!("cannot take the tenant's migration lock: {e}"),
                },
                None,
            )
        }
    };
    if mark_running {
        if let Err(e) = super::record::mark_running(scope.catalog, scope.run_id, target.id).await {
            tracing::warn!(tenant = %target.slug, error = %e, "could not mark the tenant running");
        }
    }
    let attempt = migrate_one(scope, target, template, tally).await;
    (attempt, Some(lock))
}

async fn migrate_one<C: Connector>(
    scope: &Scope<'_, C>,
    target: &Target,
    template: &Template,
    tally: &mut Tally,
) -> Attempt {
    let Scope {
        connector,
        catalog,
        opts,
        ..
    } = *scope;
    // The catalog's word, read under the lock (another runner may have moved its
    // version on; a move, its server: the run then migrates it where it lives now, never
    // the copy the move left behind).
    let now = match super::record::recorded(catalog, target.id).await {
        Ok(r) => r,
        Err(e) => {
            return failed(
                None,
                format!("cannot read the tenant's recorded version: {e}"),
            )
        }
    };
    let (recorded, intent) = (now.version, now.intent);
    let moved;
    let target = if now.server_id == target.server_id {
        target
    } else {
        tracing::info!(tenant = %target.slug, from = %target.server, to = %now.server, "the tenant moved since the run's plan; migrating it on its new server");
        tally.moved_to = Some((now.server_id, now.server.clone()));
        moved = Target {
            server_id: now.server_id,
            server: now.server,
            ..target.clone()
        };
        &moved
    };
    if intent.is_none() && recorded >= template.latest_version() {
        return Attempt::Done {
            from: recorded,
            to: recorded,
        };
    }
    let database = TenantId(target.id).database_name();
    let role = TenantId(target.id).role_name();
    // search_path pg_catalog until the role is the tenant's: the database is the
    // tenant's, and a function it defines in `public` must never run as the admin.
    let options = format!(
        "-c search_path=pg_catalog -c lock_timeout={} -c statement_timeout={}",
        opts.lock_timeout.as_millis().max(1),
        opts.statement_timeout.as_millis().max(1)
    );
    let admin = match connector
        .connect(target.server_id, database.as_str(), &options)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            return failed(
                Some(recorded),
                format!("cannot connect to the tenant database: {e}"),
            )
        }
    };
    match older_runner_present(&admin, role.as_str()).await {
        Ok(false) => {}
        Ok(true) => return Attempt::Busy,
        Err(e) => {
            return failed(
                Some(recorded),
                format!("cannot take the tenant's migration lock: {}", pg_error(&e)),
            )
        }
    }
    // The admin a member of the tenant's role again, if it was revoked (to lend a
    // suspended tenant its CONNECT); the provisioner's own check, as before every step.
    if let Err(e) = connector
        .join_tenant_role(target.server_id, target.id)
        .await
    {
        return failed(
            Some(recorded),
            format!("cannot join the tenant's role: {e}"),
        );
    }
    // The files run on a session of the tenant's own login role, never under the admin's
    // `SET ROLE`: a trigger or function the tenant planted could `RESET ROLE` there and
    // act as the admin. A suspended tenant's CONNECT is lent for the run and taken back.
    let lent = match lend_connect(&admin, &database, &role).await {
        Ok(lent) => lent,
        Err(e) => {
            return failed(
                Some(recorded),
                format!("cannot let the tenant's role connect: {}", pg_error(&e)),
            )
        }
    };
    let tenant_options = format!(
        "-c lock_timeout={} -c statement_timeout={}",
        opts.lock_timeout.as_millis().max(1),
        opts.statement_timeout.as_millis().max(1)
    );
    let attempt = match connector
        .connect_as_tenant(
            target.server_id,
            target.id,
            database.as_str(),
            &tenant_options,
        )
        .await
    {
        Ok(mut client) => {
            as_tenant(
                &mut client,
                scope,
                target,
                template,
                tally,
                recorded,
                intent,
            )
            .await
        }
        Err(e) => failed(
            Some(recorded),
            format!("cannot log in as the tenant's role: {e}"),
        ),
    };
    if lent {
        if let Err(e) = take_back_connect(&admin, &database, &role).await {
            tracing::warn!(tenant = %target.slug, error = %pg_error(&e), "could not take back the CONNECT lent to a suspended tenant; reconcile or suspend it again");
        }
    }
    attempt
}

/// The migration itself, on the tenant's own session.
async fn as_tenant<C: Connector>(
    client: &mut tokio_postgres::Client,
    scope: &Scope<'_, C>,
    target: &Target,
    template: &Template,
    tally: &mut Tally,
    recorded: i32,
    intent: Option<(i32, i64)>,
) -> Attempt {
    let Scope {
        catalog,
        run_id,
        opts,
        ..
    } = *scope;
    let forms = match template.applied_form() {
        Ok(f) => f,
        Err(e) => return failed(Some(recorded), e.to_string()),
    };
    // A file the last runner committed before it could say so in the catalog.
    let mut level = recorded;
    if let Some((version, xid)) = intent {
        let next = template.pending_after(recorded).next().map(|f| f.version);
        let committed = match committed_by(client, version, xid).await {
            Ok(c) => c && next == Some(version),
            Err(e) => {
                return failed(
                    Some(recorded),
                    format!("cannot read the migration history: {}", pg_error(&e)),
                )
            }
        };
        if !opts.dry_run {
            let settled = if committed {
                super::record::confirm(catalog, target.id, version).await
            } else {
                super::record::withdraw(catalog, target.id).await
            };
            if let Err(e) = settled {
                return failed(
                    Some(recorded),
                    format!("cannot record the tenant's version: {e}"),
                );
            }
        }
        if committed {
            level = version;
        }
    }
    if opts.dry_run {
        return dry_run(client, template, level, tally).await;
    }
    match repair_history(client, &forms, level).await {
        Ok(notes) => {
            if !notes.is_empty() {
                tracing::warn!(tenant = %target.slug, repaired = ?notes, "the tenant's migration history held rows the control plane never wrote; repaired");
            }
            tally.repaired.extend(notes);
        }
        Err(e) => {
            return failed(
                Some(level),
                format!(
                    "cannot repair the tenant's migration history: {}",
                    pg_error(&e)
                ),
            )
        }
    }
    let from = recorded;
    for file in template.pending_after(level) {
        let Some(form) = forms.iter().find(|f| f.version == file.version) else {
            continue;
        };
        match apply_file(client, catalog, run_id, target.id, file, form).await {
            Ok(()) => {}
            Err(Failure::Database(e)) => {
                let error = format!("{}: {}", file.name, pg_error(&e));
                if e.code().is_some_and(|c| c.code() == LOCK_NOT_AVAILABLE) {
                    return Attempt::LockTimeout {
                        from,
                        to: level,
                        error,
                    };
                }
                return Attempt::Failed {
                    from: Some(from),
                    to: Some(level),
                    error,
                };
            }
            Err(Failure::Catalog { committed, error }) => {
                let what = if committed {
                    "applied, but the catalog could not record the version (the next run confirms it)"
                } else {
                    "not applied: the catalog could not record the runner's intent"
                };
                return Attempt::Failed {
                    from: Some(from),
                    to: Some(level),
                    error: format!("{}: {what}: {error}", file.name),
                };
            }
        }
        level = file.version;
        tally.applied.push(file.name.clone());
    }
    Attempt::Done { from, to: level }
}

/// A failure that left the tenant where it was.
fn failed(from: Option<i32>, error: String) -> Attempt {
    Attempt::Failed {
        from,
        to: from,
        error,
    }
}

/// Grants the tenant's role CONNECT on its database when it lacks it (a suspended
/// tenant); whether it did.
async fn lend_connect(
    admin: &tokio_postgres::Client,
    database: &tenantry_types::Ident,
    role: &tenantry_types::Ident,
) -> Result<bool, tokio_postgres::Error> {
    let can: bool = admin
        .query_one(
            "SELECT pg_catalog.has_database_privilege($1::text, pg_catalog.current_database(), 'CONNECT')",
            &[&role.as_str()],
        )
        .await?
        .get(0);
    if can {
        return Ok(false);
    }
    admin
        .batch_execute(&format!("GRANT CONNECT ON DATABASE {database} TO {role}"))
        .await?;
    Ok(true)
}

/// Takes back a lent CONNECT, and ends the role's sessions in the database.
async fn take_back_connect(
    admin: &tokio_postgres::Client,
    database: &tenantry_types::Ident,
    role: &tenantry_types::Ident,
) -> Result<(), tokio_postgres::Error> {
    admin
        .batch_execute(&format!(
            "REVOKE CONNECT ON DATABASE {database} FROM {role}"
        ))
        .await?;
    admin
        .execute(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
             WHERE datname = pg_catalog.current_database() AND usename = $1::text",
            &[&role.as_str()],
        )
        .await?;
    Ok(())
}

/// Whether a runner of an older binary (which locks only in the tenant database) holds
/// the tenant database's lock. This runner takes that lock too; when the tenant's own
/// sessions hold it, it goes on without it: they cannot migrate anything.
async fn older_runner_present(
    client: &tokio_postgres::Client,
    tenant_role: &str,
) -> Result<bool, tokio_postgres::Error> {
    let taken: bool = client
        .query_one(
            "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext($1::text))",
            &[&TENANT_LOCK],
        )
        .await?
        .get(0);
    if taken {
        return Ok(false);
    }
    // A bigint key shows in pg_locks as classid (high half) and objid (low half).
    let others: i64 = client
        .query_one(
            "SELECT pg_catalog.count(*)
             FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                 WHERE d.datname = pg_catalog.current_database())
               AND ((l.classid::pg_catalog.int8 << 32) | l.objid::pg_catalog.int8)
                   = pg_catalog.hashtext($1::text)::pg_catalog.int8
               AND a.usename IS DISTINCT FROM $2::text",
            &[&TENANT_LOCK, &tenant_role],
        )
        .await?
        .get(0);
    if others == 0 {
        tracing::info!(role = tenant_role, "the tenant's own session holds the runners' lock key in its database; going on without it");
    }
    Ok(others > 0)
}

/// Whether transaction `xid` committed and wrote `version`'s history row (a row written
/// or rewritten by anyone else has another `xmin`).
async fn committed_by(
    client: &tokio_postgres::Client,
    version: i32,
    xid: i64,
) -> Result<bool, tokio_postgres::Error> {
    if !history_exists(client).await? {
        return Ok(false);
    }
    let row = client
        .query_one(
            "SELECT pg_catalog.pg_xact_status($2::pg_catalog.int8::text::pg_catalog.xid8) = 'committed'
                    AND EXISTS (SELECT 1 FROM refinery_schema_history h
                                WHERE h.version = $1::pg_catalog.int4
                                  AND h.xmin::text::pg_catalog.int8 = $2::pg_catalog.int8 % 4294967296)",
            &[&version, &xid],
        )
        .await?;
    Ok(row.get::<_, Option<bool>>(0).unwrap_or(false))
}

async fn history_exists(client: &tokio_postgres::Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT pg_catalog.to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?
        .get(0))
}

/// Makes the tenant's history hold exactly the files up to `level`, as refinery writes
/// them: rows the control plane never wrote (above the level, or for no file) removed,
/// rows it wrote and the tenant removed or changed restored. Returns what it changed.
async fn repair_history(
    client: &mut tokio_postgres::Client,
    forms: &[Applied],
    level: i32,
) -> Result<Vec<String>, tokio_postgres::Error> {
    // refinery's own table, should the tenant have dropped it.
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS refinery_schema_history (
                 version int4 PRIMARY KEY, name varchar(255), applied_on varchar(255),
                 checksum varchar(255))",
        )
        .await?;
    let rows = applied(client).await?;
    let Repair {
        remove,
        restore,
        notes,
    } = plan_repair(&rows, forms, level);
    if notes.is_empty() {
        return Ok(notes);
    }
    let versions: Vec<i32> = restore.iter().map(|f| f.version).collect();
    let labels: Vec<&str> = restore.iter().map(|f| label(&f.name)).collect();
    let checksums: Vec<&str> = restore.iter().map(|f| f.checksum.as_str()).collect();
    let tx = client.transaction().await?;
    tx.execute(
        "DELETE FROM refinery_schema_history WHERE version = ANY($1)",
        &[&remove],
    )
    .await?;
    tx.execute(
        &format!(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             SELECT v, n, {NOW_RFC3339}, c FROM unnest($1::int4[], $2::text[], $3::text[]) AS f(v, n, c)"
        ),
        &[&versions, &labels, &checksums],
    )
    .await?;
    tx.commit().await?;
    Ok(notes)
}

/// What makes a history say the files up to a level, and nothing else.
#[derive(Debug, PartialEq, Eq)]
struct Repair<'a> {
    /// Versions whose rows go (all of them, duplicates too).
    remove: Vec<i32>,
    /// Files whose rows are written (again).
    restore: Vec<&'a Applied>,
    /// One line per row changed, for the report.
    notes: Vec<String>,
}

fn plan_repair<'a>(rows: &[Applied], forms: &'a [Applied], level: i32) -> Repair<'a> {
    let expected: Vec<&Applied> = forms.iter().filter(|f| f.version <= level).collect();
    let mut notes = Vec::new();
    let mut remove: Vec<i32> = Vec::new();
    for row in rows {
        if expected.contains(&row) {
            continue;
        }
        if !remove.contains(&row.version) {
            remove.push(row.version);
        }
        notes.push(if expected.iter().any(|f| f.version == row.version) {
            format!(
                "{}: its history row differed from the file; restored",
                row.name
            )
        } else {
            format!(
                "{}: a history row the control plane never wrote; removed",
                row.name
            )
        });
    }
    // Rows removed for a file at or below the level are written again (a duplicate of an
    // exact row, in a table whose key the tenant dropped, goes with it).
    let restore: Vec<&Applied> = expected
        .into_iter()
        .filter(|f| remove.contains(&f.version) || !rows.contains(f))
        .collect();
    for f in &restore {
        if !remove.contains(&f.version) {
            notes.push(format!("{}: missing from the history; restored", f.name));
        }
    }
    Repair {
        remove,
        restore,
        notes,
    }
}

/// Now, as refinery writes `applied_on` (RFC 3339, UTC).
const NOW_RFC3339: &str =
    "pg_catalog.to_char(pg_catalog.now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// `init` of `V1__init`: the name refinery keeps in its history.
fn label(name: &str) -> &str {
    name.split_once("__").map_or(name, |(_, l)| l)
}

enum Failure {
    /// The file (or its history row) failed in the tenant database: rolled back.
    Database(tokio_postgres::Error),
    /// The catalog could not take the runner's word before the commit (rolled back), or
    /// the version after it (committed; the intent left behind settles it next time).
    Catalog { committed: bool, error: String },
}

/// Applies one file in a transaction of its own, with its history row, and tells the
/// catalog: the file's version and transaction id before the commit, the tenant's new
/// version after it.
async fn apply_file(
    client: &mut tokio_postgres::Client,
    catalog: &Catalog,
    run_id: Uuid,
    tenant: Uuid,
    file: &MigrationFile,
    form: &Applied,
) -> Result<(), Failure> {
    let tx = client.transaction().await.map_err(Failure::Database)?;
    // The row first, so that it belongs to the top transaction whatever the file does.
    tx.execute(
        "DELETE FROM refinery_schema_history WHERE version = $1",
        &[&file.version],
    )
    .await
    .map_err(Failure::Database)?;
    tx.execute(
        &format!(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES ($1, $2, {NOW_RFC3339}, $3)"
        ),
        &[&file.version, &label(&form.name), &form.checksum],
    )
    .await
    .map_err(Failure::Database)?;
    tx.batch_execute(&file.sql)
        .await
        .map_err(Failure::Database)?;
    let xid: i64 = tx
        .query_one(
            "SELECT pg_catalog.pg_current_xact_id()::text::pg_catalog.int8",
            &[],
        )
        .await
        .map_err(Failure::Database)?
        .get(0);
    super::record::intend(catalog, run_id, tenant, file.version, xid)
        .await
        .map_err(|e| Failure::Catalog {
            committed: false,
            error: e.to_string(),
        })?;
    tx.commit().await.map_err(Failure::Database)?;
    super::record::confirm(catalog, tenant, file.version)
        .await
        .map_err(|e| Failure::Catalog {
            committed: true,
            error: e.to_string(),
        })
}

/// The pending files in one transaction, rolled back.
async fn dry_run(
    client: &mut tokio_postgres::Client,
    template: &Template,
    level: i32,
    tally: &mut Tally,
) -> Attempt {
    let pending: Vec<&MigrationFile> = template.pending_after(level).collect();
    let result = async {
        let tx = client
            .transaction()
            .await
            .map_err(|e| ("BEGIN".to_owned(), e))?;
        for f in &pending {
            tx.batch_execute(&f.sql)
                .await
                .map_err(|e| (f.name.clone(), e))?;
        }
        tx.rollback()
            .await
            .map_err(|e| ("ROLLBACK".to_owned(), e))?;
        Ok::<_, (String, tokio_postgres::Error)>(())
    };
    match result.await {
        Ok(()) => {
            tally.applied.extend(pending.iter().map(|f| f.name.clone()));
            Attempt::Done {
                from: level,
                to: template.latest_version(),
            }
        }
        Err((name, e)) => Attempt::Failed {
            from: Some(level),
            to: Some(level),
            error: format!("{name} would fail: {}", pg_error(&e)),
        },
    }
}

/// The tenant database's refinery history (empty when it has none).
async fn applied(client: &tokio_postgres::Client) -> Result<Vec<Applied>, tokio_postgres::Error> {
    if !history_exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT version, coalesce(name, ''), coalesce(checksum, '') FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Applied {
            version: r.get(0),
            name: format!("V{}__{}", r.get::<_, i32>(0), r.get::<_, String>(1)),
            checksum: r.get(2),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(version: i32, checksum: &str) -> Applied {
        Applied {
            version,
            name: format!("V{version}__f{version}"),
            checksum: checksum.into(),
        }
    }

    #[test]
    fn a_history_that_says_what_the_catalog_says_is_left_alone() {
        let forms = [form(1, "a"), form(2, "b"), form(3, "c")];
        let plan = plan_repair(&forms[..2], &forms, 2);
        assert!(plan.remove.is_empty() && plan.restore.is_empty() && plan.notes.is_empty());
    }

    #[test]
    fn rows_the_control_plane_never_wrote_go_and_rows_it_wrote_come_back() {
        let forms = [form(1, "a"), form(2, "b"), form(3, "c")];
        // V1 gone, V2 changed, V3 faked (above the level), V7 for no file at all.
        let rows = [form(2, "x"), form(3, "c"), form(7, "z")];
        let plan = plan_repair(&rows, &forms, 2);
        assert_eq!(plan.remove, [2, 3, 7]);
        assert_eq!(plan.restore, [&forms[0], &forms[1]]);
        assert_eq!(plan.notes.len(), 4, "{:?}", plan.notes);
        assert!(plan
            .notes
            .iter()
            .any(|n| n.starts_with("V3__f3") && n.contains("never wrote")));
        assert!(plan
            .notes
            .iter()
            .any(|n| n.starts_with("V1__f1") && n.contains("missing")));
    }

    #[test]
    fn a_duplicate_row_is_replaced_by_one() {
        let forms = [form(1, "a")];
        let rows = [form(1, "a"), form(1, "other")];
        let plan = plan_repair(&rows, &forms, 1);
        assert_eq!(plan.remove, [1]);
        assert_eq!(plan.restore, [&forms[0]]);
    }
}

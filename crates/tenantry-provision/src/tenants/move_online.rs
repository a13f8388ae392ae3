//! The online move: logical replication from the source database to a new one on the
//! target, then a short cutover. Steps (ledger kind `move`): `role`, `database`,
//! `schema`, `publication`, `subscription`, `copy`, `indexes`, `block`, `catch_up`,
//! `sequences`, `unsubscribe`, `flip`. The steps shared with the offline move live here
//! too.
//!
//! Like `pg_restore`, the copy fills tables without their secondary indexes (those that
//! back no constraint and are no replica identity), and builds them once the rows are
//! in: a table's rows arrive in one `COPY`, and inserting each into every index costs
//! far more than sorting once. The keys stay, for replicated updates and deletes find
//! their rows by them. A move stopped before the indexes are built is undone (its target
//! database dropped), so no tenant is ever served from a database missing an index.

use std::time::Duration;

use secrecy::ExposeSecret;
use tenantry_types::{sql_literal, TenantState};

use super::database_exists;
use super::move_plan::MovePlan;
use super::role::ensure_role;
use crate::{ProvisionError, Provisioner};

/// How often the copy and the catch-up are looked at.
const POLL: Duration = Duration::from_millis(25);

/// How often the progress seen is written to the move's row.
const REPORT: Duration = Duration::from_millis(500);

/// How long the cutover lets the tenant's statements in flight finish before it ends
/// their sessions (routers hold new requests meanwhile).
const IN_FLIGHT: Duration = Duration::from_secs(1);

/// How long a copy that shows errors may go without progress before the move fails.
const ERRORS_FOR: Duration = Duration::from_secs(30);

/// How long the copy waits for the target to start a worker for the subscription.
const NO_WORKER: Duration = Duration::from_secs(60);

impl Provisioner {
    pub(crate) async fn move_online(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        self.make_target(plan).await?;
        self.move_step(plan, "schema", self.copy_schema(plan))
            .await?;
        self.move_step(plan, "publication", self.publish(plan))
            .await?;
        self.move_step(plan, "subscription", self.subscribe(plan))
            .await?;
        self.move_step(plan, "copy", self.follow(plan)).await?;
        self.move_step(plan, "indexes", self.build_indexes(plan))
            .await?;
        // From here the tenant's writes are blocked at the source; a cutover that misses
        // its timeout gives them back (the undo does).
        let deadline = tokio::time::Instant::now() + plan.cutover_timeout;
        self.move_step(plan, "block", self.block_source(plan))
            .await?;
        let cutover = async {
            let final_lsn = self
                .move_step(plan, "catch_up", self.catch_up(plan))
                .await?;
            tracing::info!(tenant = %plan.tenant.info.slug, lsn = %final_lsn, "target caught up");
            self.move_step(plan, "sequences", self.copy_sequences(plan))
                .await?;
            self.move_step(plan, "unsubscribe", self.drop_replication(plan))
                .await
        };
        match tokio::time::timeout_at(deadline, cutover).await {
            Ok(done) => done?,
            Err(_) => {
                return Err(ProvisionError::Failed(format!(
                    "the cutover did not finish within {} s (the target had not confirmed the source's last changes); \
                     the tenant stays on {} with its writes back",
                    plan.cutover_timeout.as_secs(),
                    plan.source.name
                )))
            }
        }
        self.finish_move(plan).await
    }

    /// The shared first steps: the tenant's role (same name, same sealed password) and
    /// an empty database owned by it on the target.
    pub(crate) async fn make_target(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        let tenant = &plan.tenant;
        let target = &plan.target;
        self.move_step(plan, "role", async {
            let password = self.ensure_credentials(tenant).await?;
            let limit = self.role_connection_limit(&tenant.info.plan).await?;
            // A copy this tenant left on the target by an earlier move away from it.
            self.purge_retained_on(tenant.info.id, target.id).await?;
            let admin = self.admin.get(target).await?;
            ensure_role(&admin, &tenant.role, &password, limit, &self.opts)
                .await
                .map_err(|e| ProvisionError::server(&target.name, "create the tenant role", &e))
        })
        .await?;
        self.move_step(plan, "database", async {
            let admin = self.admin.get(target).await?;
            let exists = database_exists(&admin, &tenant.database)
                .await
                .map_err(|e| ProvisionError::server(&target.name, "look up the database", &e))?;
            if !exists {
                admin
                    .batch_execute(&format!(
                        "CREATE DATABASE {} OWNER {} TEMPLATE template0",
                        tenant.database, tenant.role
                    ))
                    .await
                    .map_err(|e| {
                        ProvisionError::server(&target.name, "create the tenant database", &e)
                    })?;
            }
            // Nobody but the control plane reaches it before the flip.
            admin
                .batch_execute(&format!(
                    "REVOKE ALL ON DATABASE {db} FROM PUBLIC, {role}",
                    db = tenant.database,
                    role = tenant.role
                ))
                .await
                .map_err(|e| ProvisionError::server(&target.name, "close the new database", &e))
        })
        .await
    }

    /// The schema at the tenant's version: a schema-only dump of the source restored
    /// on the target (owners and grants kept). Tables without a primary key get
    /// `REPLICA IDENTITY FULL` at the source first, so their updates and deletes replicate.
    async fn copy_schema(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        let source = plan
            .source
            .connect_tenant_db(plan.tenant.database.as_str())
            .await?;
        let keyless: Vec<String> = source
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p') AND c.relreplident = 'd'
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg_toast%'
                   AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)",
                &[],
            )
            .await
            .map_err(|e| ProvisionError::server(&plan.source.name, "list tables without a key", &e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for table in keyless {
            // `table` is quoted by format('%I.%I') on the server.
            source
                .batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY FULL"))
                .await
                .map_err(|e| {
                    ProvisionError::server(
                        &plan.source.name,
                        "give a keyless table a replica identity",
                        &e,
                    )
                })?;
        }
        self.dump_into_target(plan, &["--schema-only"], None)
            .await?;
        // The secondary indexes go until the rows are in (`build_indexes`).
        let target = plan
            .target
            .connect_tenant_db(plan.tenant.database.as_str())
            .await?;
        for (index, _) in deferred_indexes(&target)
            .await
            .map_err(|e| ProvisionError::server(&plan.target.name, "list the indexes", &e))?
        {
            // `index` is quoted by format('%I.%I') on the server.
            target
                .batch_execute(&format!("DROP INDEX {index}"))
                .await
                .map_err(|e| {
                    ProvisionError::server(
                        &plan.target.name,
                        "defer an index to after the copy",
                        &e,
                    )
                })?;
        }
        Ok(())
    }

    /// Builds on the target the secondary indexes the source has and the target lacks
    /// (as the source defines them), then follows until the lag is small again (the
    /// builds held the subscription's writes back).
    async fn build_indexes(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        let db = plan.tenant.database.as_str();
        let source = plan.source.connect_tenant_db(db).await?;
        let target = plan.target.connect_tenant_db(db).await?;
        let want = deferred_indexes(&source)
            .await
            .map_err(|e| ProvisionError::server(&plan.source.name, "list the indexes", &e))?;
        let have: std::collections::HashSet<String> = deferred_indexes(&target)
            .await
            .map_err(|e| ProvisionError::server(&plan.target.name, "list the indexes", &e))?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        for (name, definition) in want {
            if have.contains(&name) {
                continue;
            }
            // The source's own `pg_get_indexdef`: names quoted by the server.
            target.batch_execute(&definition).await.map_err(|e| {
                ProvisionError::server(&plan.target.name, "build an index after the copy", &e)
            })?;
        }
        self.follow(plan).await
    }

    async fn publish(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        let name = plan.replication_name();
        let source = plan
            .source
            .connect_tenant_db(plan.tenant.database.as_str())
            .await?;
        let exists = source
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&name.as_str()],
            )
            .await
            .map_err(|e| ProvisionError::server(&plan.source.name, "look up the publication", &e))?
            .is_some();
        if !exists {
            source
                .batch_execute(&format!("CREATE PUBLICATION {name} FOR ALL TABLES"))
                .await
                .map_err(|e| {
                    ProvisionError::server(&plan.source.name, "create the publication", &e)
                })?;
        }
        Ok(())
    }

    async fn subscribe(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        let name = plan.replication_name();
        let target = plan
            .target
            .connect_tenant_db(plan.tenant.database.as_str())
            .await?;
        let exists = target
            .query_opt(
                "SELECT 1 FROM pg_subscription WHERE subname = $1",
                &[&name.as_str()],
            )
            .await
            .map_err(|e| ProvisionError::server(&plan.target.name, "look up the subscription", &e))?
            .is_some();
        if exists {
            return Ok(());
        }
        let s = &plan.source;
        let conninfo = format!(
            "host={} port={} user={} password={} dbname={} application_name={name}",
            conninfo_value(&s.host),
            s.port,
            conninfo_value(&s.admin_user),
            conninfo_value(s.password.expose_secret()),
            plan.tenant.database.as_str(),
        );
        let conninfo = sql_literal(&conninfo)
            .map_err(|e| ProvisionError::BadInput(format!("the source's address: {e}")))?;
        target
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION {name} CONNECTION {conninfo} PUBLICATION {name}
                 WITH (copy_data = true, synchronous_commit = 'on')"
            ))
            .await
            .map_err(|e| ProvisionError::server(&plan.target.name, "create the subscription", &e))
    }

    /// Waits until every table's initial copy is done and the target follows closely,
    /// recording the bytes copied and the lag as it goes.
    async fn follow(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        let name = plan.replication_name();
        let target = plan
            .target
            .connect_tenant_db(plan.tenant.database.as_str())
            .await?;
        let source = self.admin.get(&plan.source).await?;
        let mut idle_since = tokio::time::Instant::now();
        let mut reported: Option<tokio::time::Instant> = None;
        // Since when the copy has shown errors, and how many tables were pending then.
        let mut failing: Option<(tokio::time::Instant, i64)> = None;
        loop {
            let row = target
                .query_one(
                    "SELECT count(*) FILTER (WHERE r.srsubstate NOT IN ('r', 's')),
                            coalesce((SELECT st.sync_error_count + st.apply_error_count
                                      FROM pg_stat_subscription_stats st WHERE st.subid = s.oid), 0),
                            pg_database_size(current_database()),
                            EXISTS (SELECT 1 FROM pg_stat_subscription w
                                    WHERE w.subid = s.oid AND w.pid IS NOT NULL)
                     FROM pg_subscription s LEFT JOIN pg_subscription_rel r ON r.srsubid = s.oid
                     WHERE s.subname = $1 GROUP BY s.oid",
                    &[&name.as_str()],
                )
                .await
                .map_err(|e| ProvisionError::server(&plan.target.name, "read the copy's progress", &e))?;
            let (pending, errors, copied, working): (i64, i64, i64, bool) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if working {
                idle_since = tokio::time::Instant::now();
            } else if idle_since.elapsed() > NO_WORKER {
                return Err(ProvisionError::Failed(format!(
                    "no logical replication worker started on {} for {} s; too many moves or \
                     subscriptions at once for its max_logical_replication_workers?",
                    plan.target.name,
                    NO_WORKER.as_secs()
                )));
            }
            let lag = slot_lag(&source, &name, &plan.tenant.database)
                .await
                .map_err(|e| {
                    ProvisionError::server(&plan.source.name, "read the replication lag", &e)
                })?;
            let done = pending == 0 && lag.is_some_and(|l| l < 16 << 20);
            if done || reported.is_none_or(|t| t.elapsed() >= REPORT) {
                reported = Some(tokio::time::Instant::now());
                self.set_move(plan.id, "bytes_copied = $2", copied).await?;
                self.set_move(plan.id, "lag_bytes = $2", lag).await?;
            }
            // PostgreSQL retries a table copy or an apply that failed (a worker slot or a
            // replication slot short for a moment): errors fail the move only when the
            // copy has made no progress for ERRORS_FOR since they began.
            if errors > 0 {
                let now = tokio::time::Instant::now();
                match failing {
                    Some((since, at)) if pending >= at && now - since >= ERRORS_FOR => {
                        return Err(ProvisionError::Failed(format!(
                            "the target could not apply the source's rows ({errors} error(s) and no progress for {} s; its server log says which)",
                            ERRORS_FOR.as_secs()
                        )));
                    }
                    Some((_, at)) if pending >= at => {}
                    _ => failing = Some((now, pending)),
                }
            }
            if done {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The tenant's writes stop at the source: CONNECT revoked, its sessions ended (an
    /// unfinished transaction rolls back and was never acknowledged).
    async fn block_source(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        // Routers hold the tenant's new requests from here to the flip (the NOTIFY of
        // this update reaches them; the flip or the undo clears it); the statements in
        // flight get a moment to finish.
        self.mark_moving(plan, "cutover").await?;
        let admin = self.admin.get(&plan.source).await?;
        let t = &plan.tenant;
        let drained = tokio::time::Instant::now() + IN_FLIGHT;
        while tokio::time::Instant::now() < drained {
            let active: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = $1 AND usename = $2 AND state <> 'idle'
                       AND backend_type = 'client backend'",
                    &[&t.database.as_str(), &t.role.as_str()],
                )
                .await
                .map_err(|e| {
                    ProvisionError::server(&plan.source.name, "watch the tenant's sessions", &e)
                })?
                .get(0);
            if active == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        admin
            .batch_execute(&format!(
                "REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM {role}, PUBLIC",
                db = t.database,
                role = t.role
            ))
            .await
            .map_err(|e| ProvisionError::server(&plan.source.name, "revoke CONNECT", &e))?;
        end_tenant_sessions(&admin, plan).await
    }

    /// Waits until the target has confirmed the source's WAL position after the block.
    async fn catch_up(&self, plan: &MovePlan) -> Result<String, ProvisionError> {
        let name = plan.replication_name();
        let admin = self.admin.get(&plan.source).await?;
        let err = |e: tokio_postgres::Error| {
            ProvisionError::server(&plan.source.name, "follow the catch-up", &e)
        };
        let final_lsn: String = admin
            // The insert position, not the write position: a commit made with
            // synchronous_commit off (a tenant may set it) is acknowledged before its
            // WAL is written, and must be waited for all the same.
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .map_err(err)?
            .get(0);
        // The WAL sender decodes only flushed WAL, and with synchronous_commit off the
        // WAL writer flushes every wal_writer_delay (200 ms by default): a transaction
        // committed synchronously flushes everything before it now.
        admin
            .batch_execute(
                "BEGIN; SET LOCAL synchronous_commit = on;
                 SELECT pg_logical_emit_message(true, 'tenantry', 'cutover'); COMMIT",
            )
            .await
            .map_err(err)?;
        let mut reported: Option<tokio::time::Instant> = None;
        loop {
            let row = admin
                .query_opt(
                    "SELECT confirmed_flush_lsn >= $2::text::pg_lsn,
                            pg_wal_lsn_diff($2::text::pg_lsn, confirmed_flush_lsn)::int8
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[&name.as_str(), &final_lsn],
                )
                .await
                .map_err(err)?
                .ok_or_else(|| {
                    ProvisionError::Failed("the move's replication slot is gone".into())
                })?;
            let (done, lag): (Option<bool>, Option<i64>) = (row.get(0), row.get(1));
            if done == Some(true) {
                return Ok(final_lsn);
            }
            if reported.is_none_or(|t| t.elapsed() >= REPORT) {
                reported = Some(tokio::time::Instant::now());
                self.set_move(plan.id, "lag_bytes = $2", lag.map(|l| l.max(0)))
                    .await?;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Each sequence's value at the source, set on the target (logical replication
    /// carries rows, not sequences).
    async fn copy_sequences(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        let db = plan.tenant.database.as_str();
        let source = plan.source.connect_tenant_db(db).await?;
        let target = plan.target.connect_tenant_db(db).await?;
        let rows = source
            .query(
                "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences
                 WHERE last_value IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| ProvisionError::server(&plan.source.name, "read the sequences", &e))?;
        for r in rows {
            let (name, value): (String, i64) = (r.get(0), r.get(1));
            target
                .execute(
                    "SELECT setval($1::text::regclass, $2, true)",
                    &[&name, &value],
                )
                .await
                .map_err(|e| ProvisionError::server(&plan.target.name, "set a sequence", &e))?;
        }
        Ok(())
    }

    /// The last steps of both kinds of move: the tenant's access on the target (as on
    /// the source: granted if ready, none if suspended), then the catalog flip.
    pub(crate) async fn finish_move(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        self.move_step(plan, "grants", async {
            let admin = self.admin.get(&plan.target).await?;
            let t = &plan.tenant;
            let sql = if t.state == TenantState::Ready {
                format!(
                    "GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}",
                    t.database, t.role
                )
            } else {
                format!(
                    "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM {}, PUBLIC",
                    t.database, t.role
                )
            };
            admin.batch_execute(&sql).await.map_err(|e| {
                ProvisionError::server(&plan.target.name, "grant the tenant its database", &e)
            })
        })
        .await?;
        self.move_step(plan, "flip", self.flip(plan)).await?;
        // The source copy is kept for the retention period, unreachable.
        self.move_step(
            plan,
            "retire",
            self.revoke_connect(&plan.source, &plan.tenant),
        )
        .await?;
        self.move_done(plan.id).await
    }

    pub(crate) async fn move_done(&self, id: i64) -> Result<(), ProvisionError> {
        let client = self.catalog.client().await?;
        client
            .execute(
                "UPDATE moves SET status = 'done', phase = 'done', finished_at = now(), updated_at = now()
                 WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(())
    }

    /// One catalog transaction: the tenant on the target (a new generation, whose NOTIFY
    /// makes every router load its route again), the source copy kept for retention,
    /// the move `flipped` (it is `done` once the source copy is closed).
    async fn flip(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        let retention = chrono::Duration::from_std(self.opts.retention)
            .unwrap_or_else(|_| chrono::Duration::hours(24));
        let purge_after = chrono::Utc::now() + retention;
        let id = plan.tenant.info.id;
        let mut client = self.catalog.client().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "UPDATE tenants SET server_id = $2, moving = NULL, generation = generation + 1,
                        updated_at = now()
                 WHERE id = $1 AND server_id = $3 AND state IN ('ready', 'suspended')",
                &[&id, &plan.target.id, &plan.source.id],
            )
            .await?;
        if n != 1 {
            return Err(ProvisionError::Conflict(format!(
                "tenant {} changed during the move",
                plan.tenant.info.slug
            )));
        }
        tx.execute(
            "INSERT INTO retained_copies (tenant_id, move_id, server_id, database_name, role_name, purge_after)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &plan.id,
                &plan.source.id,
                &plan.tenant.database.as_str(),
                &plan.tenant.role.as_str(),
                &purge_after,
            ],
        )
        .await?;
        tx.execute(
            "UPDATE moves SET phase = 'flipped', lag_bytes = 0, updated_at = now() WHERE id = $1",
            &[&plan.id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The database's secondary indexes, as `(schema.name, CREATE INDEX …)`: those that
/// back no constraint and are not the replica identity, valid (`pg_dump` leaves invalid
/// ones out), on plain tables (a partitioned table's indexes stay where `pg_restore`
/// put them), outside the system schemas. Read on a `search_path = pg_catalog` session,
/// so every name in a definition is qualified.
async fn deferred_indexes(
    client: &tokio_postgres::Client,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname), pg_get_indexdef(i.indexrelid)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE NOT i.indisprimary AND NOT i.indisreplident
               AND i.indisvalid AND i.indisready
               AND c.relkind = 'i' AND NOT c.relispartition
               AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg_toast%'
             ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Ends the tenant's client sessions on the source (an unfinished transaction rolls
/// back, never acknowledged); the subscription's WAL sender, the admin's, stays.
pub(crate) async fn end_tenant_sessions(
    admin: &tokio_postgres::Client,
    plan: &MovePlan,
) -> Result<(), ProvisionError> {
    let t = &plan.tenant;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND usename = $2 AND backend_type = 'client backend'
               AND pid <> pg_backend_pid()",
            &[&t.database.as_str(), &t.role.as_str()],
        )
        .await
        .map_err(|e| ProvisionError::server(&plan.source.name, "end the tenant's sessions", &e))?;
    Ok(())
}

/// A conninfo value in single quotes, its quotes and backslashes escaped.
fn conninfo_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// WAL bytes the move's slot has yet to confirm (`None` before the slot exists).
async fn slot_lag(
    admin: &tokio_postgres::Client,
    name: &tenantry_types::Ident,
    db: &tenantry_types::Ident,
) -> Result<Option<i64>, tokio_postgres::Error> {
    Ok(admin
        .query_opt(
            "SELECT greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::int8
             FROM pg_replication_slots WHERE slot_name = $1 AND database = $2",
            &[&name.as_str(), &db.as_str()],
        )
        .await?
        .and_then(|r| r.get(0)))
}

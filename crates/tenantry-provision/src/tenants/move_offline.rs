//! The offline move, where the servers cannot replicate logically or `--offline` asked
//! for it: the tenant is marked `moving` (routers refuse its writes, reads go on) and
//! its source database read-only, `pg_dump | pg_restore` copies it, then the same flip
//! as the online move. Steps: `block`, `role`, `database`, `copy`, `grants`, `flip`,
//! `retire`. Also the dump-and-restore pipe the online move uses for the schema.

use std::process::Stdio;

use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::move_plan::MovePlan;
use crate::server::ServerRow;
use crate::{ProvisionError, Provisioner};

impl Provisioner {
    pub(crate) async fn move_offline(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        self.move_step(plan, "block", self.block_writes(plan))
            .await?;
        self.make_target(plan).await?;
        self.move_step(plan, "copy", async {
            self.dump_into_target(plan, &[], Some(plan.id))
                .await
                .map(drop)
        })
        .await?;
        self.finish_move(plan).await
    }

    /// Writes refused: the catalog marks the tenant `moving` (a new generation: routers
    /// refuse its writes with 503 `tenant_moving`), and its source database turns
    /// read-only for new sessions, its current ones ended.
    async fn block_writes(&self, plan: &MovePlan) -> Result<(), ProvisionError> {
        self.mark_moving(plan, "offline").await?;
        let admin = self.admin.get(&plan.source).await?;
        let t = &plan.tenant;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} SET default_transaction_read_only = on",
                t.database
            ))
            .await
            .map_err(|e| {
                ProvisionError::server(&plan.source.name, "make the database read-only", &e)
            })?;
        super::move_online::end_tenant_sessions(&admin, plan).await
    }

    /// `tenants.moving` set (a new generation, whose NOTIFY reaches every router).
    pub(crate) async fn mark_moving(
        &self,
        plan: &MovePlan,
        how: &str,
    ) -> Result<(), ProvisionError> {
        let client = self.catalog.client().await?;
        client
            .execute(
                "UPDATE tenants SET moving = $2, generation = generation + 1, updated_at = now()
                 WHERE id = $1",
                &[&plan.tenant.info.id, &how],
            )
            .await?;
        Ok(())
    }

    /// `pg_dump --format=custom <extra>` of the source database piped into `pg_restore`
    /// on the target (owners and grants kept; the roles exist there). The bytes
    /// streamed go to the move's `bytes_copied` when `progress` names the move.
    pub(crate) async fn dump_into_target(
        &self,
        plan: &MovePlan,
        extra: &[&str],
        progress: Option<i64>,
    ) -> Result<u64, ProvisionError> {
        let bins = tenantry_embedded::PgBinaries::find().ok();
        let tool = |name: &str| {
            bins.as_ref()
                .map(|b| b.tool(name))
                .unwrap_or_else(|| name.into())
        };
        let db = plan.tenant.database.as_str();
        let mut dump = command(&tool("pg_dump"), &plan.source)
            .arg("--format=custom")
            .arg("--no-publications")
            .arg("--no-subscriptions")
            .args(extra)
            .arg("--dbname")
            .arg(db)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| ProvisionError::Failed(format!("cannot run pg_dump: {e}")))?;
        let mut restore = command(&tool("pg_restore"), &plan.target)
            .arg("--exit-on-error")
            .arg("--single-transaction")
            .arg("--dbname")
            .arg(db)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| ProvisionError::Failed(format!("cannot run pg_restore: {e}")))?;
        let (Some(mut from), Some(mut into)) = (dump.stdout.take(), restore.stdin.take()) else {
            return Err(ProvisionError::Failed(
                "pg_dump or pg_restore has no pipe".into(),
            ));
        };
        let mut buf = vec![0u8; 256 * 1024];
        let mut copied: u64 = 0;
        let mut reported = tokio::time::Instant::now();
        let piped: std::io::Result<()> = async {
            loop {
                let n = from.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                into.write_all(&buf[..n]).await?;
                copied += n as u64;
                if let Some(id) = progress {
                    if reported.elapsed() >= std::time::Duration::from_millis(500) {
                        reported = tokio::time::Instant::now();
                        let _ = self.set_move(id, "bytes_copied = $2", copied as i64).await;
                    }
                }
            }
            into.shutdown().await
        }
        .await;
        drop(into);
        let dumped = dump.wait_with_output().await;
        let restored = restore.wait_with_output().await;
        let failed = |tool: &str, out: std::io::Result<std::process::Output>| match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!(
                "{tool} exited with {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Some(format!("{tool}: {e}")),
        };
        if let Some(why) = failed("pg_dump", dumped).or_else(|| failed("pg_restore", restored)) {
            return Err(ProvisionError::Failed(format!(
                "copying the database failed: {why}"
            )));
        }
        piped.map_err(|e| ProvisionError::Failed(format!("copying the database failed: {e}")))?;
        if let Some(id) = progress {
            self.set_move(id, "bytes_copied = $2", copied as i64)
                .await?;
        }
        Ok(copied)
    }
}

/// A client tool reaching `server` as its admin; the password travels in the
/// environment, never on a command line.
fn command(tool: &std::path::Path, server: &ServerRow) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(tool);
    cmd.arg("--host")
        .arg(&server.host)
        .arg("--port")
        .arg(server.port.to_string())
        .arg("--username")
        .arg(&server.admin_user)
        .arg("--no-password")
        .env("PGPASSWORD", server.password.expose_secret())
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

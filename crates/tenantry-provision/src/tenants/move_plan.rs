//! `tenant move`: what a move is in the catalog (a `moves` row, its ledger steps of
//! kind `move`), its placement checks, and the driver that runs the online or offline
//! steps (`move_online.rs`, `move_offline.rs`) and undoes them on failure
//! (`move_cleanup.rs`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tenantry_types::{Ident, TenantState};

use super::{invalid_state, TenantRow};
use crate::server::{ServerRow, TenantLock};
use crate::servers::HOLDS_DATABASE;
use crate::{ledger, ProvisionError, Provisioner};

/// The ledger's name for a move's steps.
pub(crate) const MOVE: &str = "move";

/// `tenant move`'s input.
#[derive(Debug, Clone)]
pub struct MoveTenant {
    pub slug: String,
    /// The target server's name.
    pub to: String,
    /// Copy with `pg_dump | pg_restore` while writes are refused, even where the servers
    /// could replicate.
    pub offline: bool,
    /// How long the online cutover (writes blocked at the source) may take.
    pub cutover_timeout: Duration,
}

/// A move as `tenant show`, the CLI and `GET /admin/v1/operations/{id}` report it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MoveInfo {
    /// The ledger id of the move's first step: the id the API gives out.
    pub operation: i64,
    pub tenant: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `online` or `offline`.
    pub mode: String,
    /// The step it is at (or ended at).
    pub phase: String,
    /// `running`, `done`, `failed` (reconcile finishes undoing it) or `undone`.
    pub status: String,
    /// The source database's size when the move began.
    pub bytes_total: Option<i64>,
    /// Online: the target database's size; offline: archive bytes streamed.
    pub bytes_copied: Option<i64>,
    /// Online: WAL bytes the target has yet to confirm.
    pub lag_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

const MOVE_SELECT: &str = "SELECT m.operation_id, t.slug, src.name, dst.name, m.mode, m.phase,
        m.status, m.bytes_total, m.bytes_copied, m.lag_bytes, m.error, m.started_at, m.finished_at
    FROM moves m JOIN tenants t ON t.id = m.tenant_id
    LEFT JOIN servers src ON src.id = m.source_server_id
    LEFT JOIN servers dst ON dst.id = m.target_server_id";

fn move_info(r: &tokio_postgres::Row) -> MoveInfo {
    MoveInfo {
        operation: r.get::<_, Option<i64>>(0).unwrap_or_default(),
        tenant: r.get(1),
        from: r.get(2),
        to: r.get(3),
        mode: r.get(4),
        phase: r.get(5),
        status: r.get(6),
        bytes_total: r.get(7),
        bytes_copied: r.get(8),
        lag_bytes: r.get(9),
        error: r.get(10),
        started_at: r.get(11),
        finished_at: r.get(12),
    }
}

/// A move that passed its checks and holds the tenant's lock; [`Provisioner::run_move`]
/// runs it (at once, or in the background).
pub struct StartedMove {
    pub info: MoveInfo,
    pub(crate) plan: MovePlan,
    _lock: TenantLock,
}

/// What the steps of one move work with.
#[derive(Clone)]
pub(crate) struct MovePlan {
    pub id: i64,
    pub tenant: TenantRow,
    pub source: ServerRow,
    pub target: ServerRow,
    pub online: bool,
    pub cutover_timeout: Duration,
}

impl MovePlan {
    /// The publication, subscription and replication slot's name: from the tenant id.
    pub fn replication_name(&self) -> Ident {
        replication_name(self.tenant.info.id)
    }
}

pub(crate) fn replication_name(id: uuid::Uuid) -> Ident {
    // `tm_` and 32 hex digits: always a valid identifier.
    Ident::new(format!("tm_{}", id.simple())).unwrap_or_else(|_| unreachable_ident())
}

fn unreachable_ident() -> Ident {
    Ident::new("tm_invalid").expect("a constant identifier")
}

impl Provisioner {
    /// Moves a tenant to another server and returns when it is there (or the move was
    /// undone): [`Provisioner::start_move`], then [`Provisioner::run_move`].
    pub async fn move_tenant(&self, req: MoveTenant) -> Result<MoveInfo, ProvisionError> {
        let started = self.start_move(req).await?;
        self.run_move(started).await
    }

    /// Checks the move (the tenant ready or suspended, the target an active server with
    /// room other than its own, both reachable), takes the tenant's lock (the one the
    /// migration runner takes) and records the move. Nothing is made on a server yet.
    pub async fn start_move(&self, req: MoveTenant) -> Result<StartedMove, ProvisionError> {
        if req.cutover_timeout.is_zero() || req.cutover_timeout > Duration::from_secs(3600) {
            return Err(ProvisionError::BadInput(
                "the cutover timeout must be between 1 s and 1 h".into(),
            ));
        }
        let tenant = self.live_tenant(&req.slug).await?;
        let id = tenant.info.id;
        let lock = TenantLock::acquire(&self.locks, id).await?;
        let tenant = self.tenant_by_id(id).await?;
        if !matches!(tenant.state, TenantState::Ready | TenantState::Suspended) {
            return Err(invalid_state(&req.slug, tenant.state, "ready or suspended"));
        }
        if self.unfinished_move(id).await?.is_some() {
            return Err(ProvisionError::Conflict(format!(
                "tenant {} has an unfinished move; run `tenantry reconcile` first",
                req.slug
            )));
        }
        let source_id = tenant.server_id.ok_or_else(|| {
            ProvisionError::Conflict(format!("tenant {} has no server", req.slug))
        })?;
        let target = self.server_by_name(&req.to).await.map_err(|e| match e {
            ProvisionError::NotFound(_) => ProvisionError::BadInput(format!(
                "server {:?} is not registered; `tenantry server list` shows the servers",
                req.to
            )),
            other => other,
        })?;
        if target.id == source_id {
            return Err(ProvisionError::BadInput(format!(
                "tenant {} is already on server {}; choose another --to",
                req.slug, req.to
            )));
        }
        let source = self.server_by_id(source_id).await?;
        let online = !req.offline
            && self.can_replicate(&source).await?.is_none()
            && self.can_replicate(&target).await?.is_none();
        let bytes_total = self.database_size(&source, &tenant.database).await?;
        let mode = if online { "online" } else { "offline" };

        let mut client = self.catalog.client().await?;
        let tx = client.transaction().await?;
        crate::servers::lock_placements(&tx).await?;
        let row = tx
            .query_one(
                &format!(
                    "SELECT s.state, s.capacity - count(t.id)
                            - (SELECT count(*) FROM moves m WHERE m.target_server_id = s.id
                               AND m.status IN ('running', 'failed'))
                     FROM servers s LEFT JOIN tenants t ON t.server_id = s.id AND {HOLDS_DATABASE}
                     WHERE s.id = $1 GROUP BY s.id"
                ),
                &[&target.id],
            )
            .await?;
        let (state, free): (String, i64) = (row.get(0), row.get(1));
        if state != "active" {
            return Err(ProvisionError::BadInput(format!(
                "server {} is {state} and takes no tenants; choose another --to",
                req.to
            )));
        }
        if free <= 0 {
            return Err(ProvisionError::BadInput(format!(
                "server {} is full; choose another --to, or raise its capacity",
                req.to
            )));
        }
        let move_id: i64 = tx
            .query_one(
                "INSERT INTO moves (tenant_id, source_server_id, target_server_id, mode, phase,
                                    status, bytes_total, cutover_timeout_s)
                 VALUES ($1, $2, $3, $4, 'plan', 'running', $5, $6) RETURNING id",
                &[
                    &id,
                    &source_id,
                    &target.id,
                    &mode,
                    &bytes_total,
                    &(req.cutover_timeout.as_secs().max(1) as i32),
                ],
            )
            .await?
            .get(0);
        tx.commit().await?;
        drop(client);
        let step = ledger::start(
            &self.catalog,
            Some(id),
            Some(source_id),
            MOVE,
            "plan",
            json!({"slug": req.slug, "move": move_id, "to": req.to, "mode": mode}),
        )
        .await?;
        let client = self.catalog.client().await?;
        client
            .execute(
                "UPDATE moves SET operation_id = $2 WHERE id = $1",
                &[&move_id, &step.id()],
            )
            .await?;
        step.done(&self.catalog).await?;
        let plan = MovePlan {
            id: move_id,
            tenant,
            source,
            target,
            online,
            cutover_timeout: req.cutover_timeout,
        };
        let info = self.move_by_id(move_id).await?;
        Ok(StartedMove {
            info,
            plan,
            _lock: lock,
        })
    }

    /// Runs a started move's steps; on an error, undoes what the move made (the source
    /// keeps the tenant, gets its writes back) and returns the error.
    pub async fn run_move(&self, started: StartedMove) -> Result<MoveInfo, ProvisionError> {
        let plan = started.plan.clone();
        let result = if plan.online {
            self.move_online(&plan).await
        } else {
            self.move_offline(&plan).await
        };
        match result {
            Ok(()) => {
                tracing::info!(tenant = %plan.tenant.info.slug, from = %plan.source.name, to = %plan.target.name, "tenant moved");
                self.move_by_id(plan.id).await
            }
            Err(e) => {
                tracing::warn!(tenant = %plan.tenant.info.slug, error = %e, "move failed; undoing");
                self.fail_move(&plan, &e.to_string()).await;
                Err(e)
            }
        }
    }

    /// One ledger-recorded step of a move; the move's phase follows it.
    pub(crate) async fn move_step<T>(
        &self,
        plan: &MovePlan,
        name: &'static str,
        act: impl std::future::Future<Output = Result<T, ProvisionError>>,
    ) -> Result<T, ProvisionError> {
        self.set_move(plan.id, "phase = $2", name).await?;
        self.recorded(&plan.tenant, plan.target.id, MOVE, name, act)
            .await
    }

    /// `UPDATE moves SET <assignment with $2> WHERE id = $1`.
    pub(crate) async fn set_move<T: tokio_postgres::types::ToSql + Sync>(
        &self,
        id: i64,
        assignment: &'static str,
        value: T,
    ) -> Result<(), ProvisionError> {
        let client = self.catalog.client().await?;
        client
            .execute(
                &format!("UPDATE moves SET {assignment}, updated_at = now() WHERE id = $1"),
                &[&id, &value],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn move_by_id(&self, id: i64) -> Result<MoveInfo, ProvisionError> {
        let client = self.catalog.client().await?;
        let row = client
            .query_one(&format!("{MOVE_SELECT} WHERE m.id = $1"), &[&id])
            .await?;
        Ok(move_info(&row))
    }

    /// The move whose first ledger step is `operation`, if it is a move's.
    pub async fn move_by_operation(
        &self,
        operation: i64,
    ) -> Result<Option<MoveInfo>, ProvisionError> {
        let client = self.catalog.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "{MOVE_SELECT} WHERE m.operation_id = $1
                        OR m.id = (SELECT (o.detail->>'move')::bigint FROM operations o
                                   WHERE o.id = $1 AND o.kind = 'move')
                     LIMIT 1"
                ),
                &[&operation],
            )
            .await?;
        Ok(row.as_ref().map(move_info))
    }

    /// The tenant's latest move, for `tenant show`.
    pub async fn last_move(&self, slug: &str) -> Result<Option<MoveInfo>, ProvisionError> {
        let tenant = self.live_tenant(slug).await?;
        let client = self.catalog.client().await?;
        let row = client
            .query_opt(
                &format!("{MOVE_SELECT} WHERE m.tenant_id = $1 ORDER BY m.id DESC LIMIT 1"),
                &[&tenant.info.id],
            )
            .await?;
        Ok(row.as_ref().map(move_info))
    }

    /// The id of the tenant's move that is running or whose undo is unfinished.
    pub(crate) async fn unfinished_move(
        &self,
        tenant: uuid::Uuid,
    ) -> Result<Option<i64>, ProvisionError> {
        let client = self.catalog.client().await?;
        Ok(client
            .query_opt(
                "SELECT id FROM moves WHERE tenant_id = $1 AND status IN ('running', 'failed')",
                &[&tenant],
            )
            .await?
            .map(|r| r.get(0)))
    }

    pub(crate) async fn database_size(
        &self,
        server: &ServerRow,
        db: &Ident,
    ) -> Result<Option<i64>, ProvisionError> {
        let admin = self.admin.get(server).await?;
        admin
            .query_one(
                "SELECT pg_database_size(oid) FROM pg_database WHERE datname = $1
                 UNION ALL SELECT NULL LIMIT 1",
                &[&db.as_str()],
            )
            .await
            .map(|r| r.get(0))
            .map_err(|e| ProvisionError::server(&server.name, "read the database's size", &e))
    }
}

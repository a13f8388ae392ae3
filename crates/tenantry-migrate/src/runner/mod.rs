//! `tenantry migrate run`: a template's new migrations applied to every tenant database.
//!
//! * **Per tenant** (`tenant`): the tenant's lock in the catalog, the one its lifecycle
//!   operations take (so two runners, or a runner and a suspend, never work on one tenant
//!   at once, and no tenant session can hold it; a runner that finds it taken moves on
//!   and comes back); a dedicated admin connection (never a pooled one) with
//!   `lock_timeout` and `statement_timeout` as startup options; `SET ROLE` to the
//!   tenant's role (what the migration creates belongs to the tenant); then each file
//!   after the tenant's *recorded* version in a transaction of its own, with its refinery
//!   history row, the catalog told before the commit and after it (`record`). The
//!   tenant's history, which it can write, never decides what runs: rows the control
//!   plane never wrote are removed. A lock timeout is retried with backoff.
//! * **Before anything is applied**: every file is checked against the catalog's record of
//!   applied migrations (a changed or removed file refuses the whole run, by name).
//! * **Fan-out**: `concurrency` tenants at once, at most `per_server` on one server;
//!   canaries first (a failing canary stops the run); `halt` stops starting tenants at the
//!   first failure, `continue` goes on until `max_failures`.
//! * **Resumable**: a run is a catalog row held by a session lock of its runner; the next
//!   run marks a run whose runner died `interrupted`. Tenants are chosen by their recorded
//!   version, so a rerun starts where the last one stopped and skips finished tenants
//!   without connecting to them.
//! * **Never left behind**: once its list is done, a run looks again for tenants of its
//!   templates that are behind (created while it ran, from older files) and migrates them,
//!   waiting for tenants still being created.
//! * **Dry run**: each tenant's pending files run in one transaction that is rolled back;
//!   nothing is recorded.

mod record;
mod schedule;
mod tenant;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tenantry_catalog::{Catalog, CatalogError};
use uuid::Uuid;

use crate::history::{self, HistoryError};
use crate::{Template, TemplateError};
use record::RunRecord;
use schedule::Run;

/// What a failure does to the rest of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Start no more tenants (those running finish).
    Halt,
    /// Go on, until `max_failures`.
    Continue,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunOptions {
    pub concurrency: usize,
    pub per_server: usize,
    /// Tenants migrated first; any failure among them stops the run.
    pub canary: usize,
    pub on_error: OnError,
    /// With `continue`: stop starting tenants after this many failures.
    pub max_failures: Option<usize>,
    /// Only these tenants (slugs); all when empty.
    pub tenants: Vec<String>,
    pub dry_run: bool,
    #[serde(skip)]
    pub lock_timeout: Duration,
    #[serde(skip)]
    pub statement_timeout: Duration,
    /// Retries of a tenant whose migration timed out waiting for a lock.
    pub lock_retries: u32,
    /// How long the run waits for tenants still being created when it looks again.
    #[serde(skip)]
    pub creating_wait: Duration,
    pub started_by: String,
    /// Set (by a signal handler, say) to stop starting tenants: those in progress
    /// finish, the rest are skipped, and the run is recorded `cancelled`.
    #[serde(skip)]
    pub cancel: Arc<AtomicBool>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            per_server: 8,
            canary: 0,
            on_error: OnError::Halt,
            max_failures: None,
            tenants: Vec::new(),
            dry_run: false,
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(15 * 60),
            lock_retries: 5,
            creating_wait: Duration::from_secs(60),
            started_by: String::new(),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// What the runner needs from the provisioner: its connections to tenant databases, and
/// its per-tenant lock.
pub trait Connector: Send + Sync + 'static {
    /// A tenant's lock, released when dropped.
    type Lock: Send + 'static;

    /// A dedicated admin connection to `database` on `server`, with `options`
    /// (`-c name=value …`) sent at startup. The error says why, without secrets.
    fn connect(
        &self,
        server: i64,
        database: &str,
        options: &str,
    ) -> impl Future<Output = Result<tokio_postgres::Client, String>> + Send;

    /// Makes the admin a member of the tenant's role again if it is no longer one (a
    /// tenant may revoke it where PostgreSQL lets a role administer itself).
    fn join_tenant_role(
        &self,
        server: i64,
        tenant: Uuid,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// A dedicated connection to the tenant's database as the tenant's own login role
    /// (its password from the catalog), with `options` sent at startup. Migration files
    /// run here: whatever the tenant planted in its database (a trigger, say) runs as
    /// the tenant and can become nothing else (`RESET ROLE` returns to the tenant).
    fn connect_as_tenant(
        &self,
        server: i64,
        tenant: Uuid,
        database: &str,
        options: &str,
    ) -> impl Future<Output = Result<tokio_postgres::Client, String>> + Send;

    /// The tenant's lock in the catalog (the one its lifecycle operations take) if it is
    /// free now; `Ok(None)` when another process holds it.
    fn try_lock(
        &self,
        tenant: Uuid,
    ) -> impl Future<Output = Result<Option<Self::Lock>, String>> + Send;
}

/// One tenant's line of the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TenantReport {
    pub slug: String,
    /// `ok`, `failed` or `skipped` (not started: the run stopped first).
    pub status: String,
    pub from_version: Option<i32>,
    pub to_version: Option<i32>,
    pub duration_ms: u64,
    pub error: Option<String>,
    pub template: String,
    pub server: String,
    /// The files applied (or, in a dry run, that would be).
    pub applied: Vec<String>,
    /// Rows of the tenant's refinery history that the control plane never wrote (made
    /// from the tenant's own session), undone before its files were applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub ok: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Tenants that had nothing to apply (not listed in `tenants`).
    pub up_to_date: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: Uuid,
    pub dry_run: bool,
    /// Why the run stopped early, if it did.
    pub halted: Option<String>,
    /// Stopped by `RunOptions::cancel`.
    pub cancelled: bool,
    pub latest: HashMap<String, i32>,
    pub summary: Summary,
    pub tenants: Vec<TenantReport>,
    pub duration_ms: u64,
}

impl RunReport {
    pub fn succeeded(&self) -> bool {
        self.summary.failed == 0 && self.halted.is_none()
    }
}

/// What the runner tells its caller as it goes (for a progress bar).
#[derive(Debug)]
pub enum Progress<'a> {
    /// `total` tenants to migrate so far (it grows when the run finds late tenants).
    Total(usize),
    Done(&'a TenantReport),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad options, unknown tenants, unusable, changed or removed files: nothing applied.
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Template(TemplateError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl From<tokio_postgres::Error> for RunError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Catalog(CatalogError::Query(e))
    }
}

impl From<HistoryError> for RunError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Catalog(e) => Self::Catalog(e),
            HistoryError::Template(e) => Self::Template(e),
        }
    }
}

/// A tenant to migrate, as the catalog knows it.
#[derive(Debug, Clone)]
struct Target {
    id: Uuid,
    slug: String,
    template: String,
    server_id: i64,
    server: String,
    version: i32,
}

pub(super) const CANCELLED: &str =
    "stopped by a signal: the tenants in progress finished, no other was started";

/// Tenants of `templates` (or all) that are live, with their recorded version.
async fn targets(catalog: &Catalog, slugs: &[String]) -> Result<Vec<Target>, RunError> {
    let client = catalog.client().await?;
    let rows = client
        .query(
            "SELECT t.id, t.slug, t.template, t.server_id, s.name, t.schema_version
             FROM tenants t JOIN servers s ON s.id = t.server_id
             WHERE t.state IN ('ready', 'suspended')
               AND (cardinality($1::text[]) = 0 OR t.slug = ANY($1))
             ORDER BY t.slug",
            &[&slugs],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Target {
            id: r.get(0),
            slug: r.get(1),
            template: r.get(2),
            server_id: r.get(3),
            server: r.get(4),
            version: r.get(5),
        })
        .collect())
}

/// Runs the migrations. `Err` only for what stops a run before it starts (bad input,
/// changed files, an unreachable catalog); tenants' failures are in the report.
pub async fn run<C: Connector>(
    catalog: &Catalog,
    templates_dir: &Path,
    connector: Arc<C>,
    opts: RunOptions,
    progress: &(dyn Fn(Progress<'_>) + Send + Sync),
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    if opts.concurrency == 0 || opts.per_server == 0 {
        return Err(RunError::BadInput(
            "--concurrency and the per-server cap must be at least 1".into(),
        ));
    }
    if opts.max_failures == Some(0) {
        return Err(RunError::BadInput(
            "--max-failures must be at least 1".into(),
        ));
    }
    let all = targets(catalog, &opts.tenants).await?;
    if !opts.tenants.is_empty() {
        let known: HashSet<&str> = all.iter().map(|t| t.slug.as_str()).collect();
        let unknown: Vec<&str> = opts
            .tenants
            .iter()
            .map(String::as_str)
            .filter(|s| !known.contains(s))
            .collect();
        if !unknown.is_empty() {
            return Err(RunError::BadInput(format!(
                "no live tenant named {}: see `tenantry tenant list`",
                unknown.join(", ")
            )));
        }
    }
    // Every template involved, read and checked against what was applied before.
    let mut templates: HashMap<String, Arc<Template>> = HashMap::new();
    for t in &all {
        if !templates.contains_key(&t.template) {
            let template =
                Template::load(templates_dir, &t.template).map_err(RunError::Template)?;
            history::verify(catalog, &template).await?;
            templates.insert(t.template.clone(), Arc::new(template));
        }
    }
    let latest: HashMap<String, i32> = templates
        .iter()
        .map(|(name, t)| (name.clone(), t.latest_version()))
        .collect();
    let behind = |t: &Target| t.version < latest.get(&t.template).copied().unwrap_or(0);
    let (pending, current): (Vec<Target>, Vec<Target>) = all.into_iter().partition(behind);

    let run_id = Uuid::now_v7();
    let record = if opts.dry_run {
        None
    } else {
        Some(RunRecord::open(catalog, run_id, &opts).await?)
    };
    let mut run = Run {
        catalog: catalog.clone(),
        connector,
        opts: Arc::new(opts),
        templates,
        run_id,
        cancelled: false,
        reports: Vec::new(),
        targets: HashMap::new(),
        recorded: HashSet::new(),
        failures: 0,
        halted: None,
    };
    let mut summary = Summary {
        up_to_date: current.len(),
        ..Summary::default()
    };

    let canaries: Vec<Target> = pending.iter().take(run.opts.canary).cloned().collect();
    let rest: Vec<Target> = pending.iter().skip(run.opts.canary).cloned().collect();
    run.add(&canaries, progress).await?;
    run.add(&rest, progress).await?;
    if !canaries.is_empty() {
        run.execute(canaries, progress).await;
        if run.failures > 0 && run.halted.is_none() {
            run.halted = Some(format!(
                "a canary failed ({} of {}): no other tenant was started",
                run.failures,
                run.opts.canary.min(pending.len())
            ));
        }
    }
    if run.halted.is_none() {
        run.execute(rest, progress).await;
    }
    // Tenants created (or restored) while the run went: never left behind.
    if run.halted.is_none() && run.opts.tenants.is_empty() && !run.opts.dry_run {
        let deadline = Instant::now() + run.opts.creating_wait;
        loop {
            let late: Vec<Target> = targets(catalog, &[])
                .await?
                .into_iter()
                .filter(|t| {
                    run.templates.contains_key(&t.template)
                        && behind(t)
                        && !run.targets.contains_key(&t.id)
                })
                .collect();
            let creating = being_created(catalog, &run.templates).await?;
            if !late.is_empty() {
                run.add(&late, progress).await?;
                run.execute(late, progress).await;
                if run.halted.is_some() {
                    break;
                }
            } else if creating == 0 || Instant::now() >= deadline {
                break;
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // What never started.
    let done: HashSet<&str> = run.reports.iter().map(|r| r.slug.as_str()).collect();
    let skipped: Vec<TenantReport> = run
        .targets
        .values()
        .filter(|t| !done.contains(t.slug.as_str()))
        .map(|t| TenantReport {
            slug: t.slug.clone(),
            status: "skipped".into(),
            from_version: Some(t.version),
            to_version: Some(t.version),
            duration_ms: 0,
            error: None,
            template: t.template.clone(),
            server: t.server.clone(),
            applied: Vec::new(),
            repaired: Vec::new(),
        })
        .collect();
    let mut reports = std::mem::take(&mut run.reports);
    reports.extend(skipped);
    reports.sort_by(|a, b| a.slug.cmp(&b.slug));
    for r in &reports {
        match r.status.as_str() {
            "ok" => summary.ok += 1,
            "failed" => summary.failed += 1,
            _ => summary.skipped += 1,
        }
    }
    let report = RunReport {
        run_id,
        dry_run: run.opts.dry_run,
        halted: run.halted.clone(),
        cancelled: run.cancelled,
        latest,
        summary,
        tenants: reports,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    if let Some(record) = record {
        // The tenants' own results are already in the catalog; the report must not be
        // lost because the run's row could not be closed.
        if let Err(e) = record.close(&report).await {
            tracing::warn!(run = %run_id, error = %e, "could not close the run's catalog record");
        }
    }
    Ok(report)
}

/// Tenants of these templates still being created.
async fn being_created(
    catalog: &Catalog,
    templates: &HashMap<String, Arc<Template>>,
) -> Result<i64, RunError> {
    let names: Vec<&str> = templates.keys().map(String::as_str).collect();
    Ok(catalog
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM tenants WHERE state IN ('requested', 'creating') AND template = ANY($1)",
            &[&names],
        )
        .await?
        .get(0))
}

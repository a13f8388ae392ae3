//! `tenantry migrate run`: a template's new migrations applied to every tenant database.
//!
//! * **Per tenant**, on a dedicated admin connection (never a pooled one) with
//!   `lock_timeout` and `statement_timeout` as startup options: a session advisory lock
//!   in the tenant's database (so two runners never migrate one tenant at once; a runner
//!   that finds it taken moves on and comes back), `SET ROLE` to the tenant's role (what
//!   the migration creates belongs to the tenant), then refinery, which applies each
//!   pending file in a transaction of its own and refuses divergent and missing files. A
//!   lock timeout is retried with backoff. The tenant's schema version and result go to
//!   the catalog as soon as it is done.
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tenantry_catalog::{Catalog, CatalogError};
use tenantry_types::TenantId;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::history::{self, HistoryError};
use crate::template::{pg_error, refinery_cause, Applied};
use crate::{Template, TemplateError};

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

/// Opens the runner's connections to tenant databases.
pub trait Connector: Send + Sync + 'static {
    /// A dedicated admin connection to `database` on `server`, with `options`
    /// (`-c name=value …`) sent at startup. The error says why, without secrets.
    fn connect(
        &self,
        server: i64,
        database: &str,
        options: &str,
    ) -> impl Future<Output = Result<tokio_postgres::Client, String>> + Send;
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

const CANCELLED: &str =
    "stopped by a signal: the tenants in progress finished, no other was started";

/// The advisory lock key every runner takes in a tenant database.
const TENANT_LOCK: &str = "tenantry-migrate";

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

/// The run's catalog row, held by a session lock on a connection of its own for as long
/// as the runner lives.
struct RunRecord {
    client: deadpool_postgres::Object,
    run_id: Uuid,
}

fn run_lock(run_id: Uuid) -> String {
    format!("tenantry-migrate-run:{run_id}")
}

impl RunRecord {
    async fn open(catalog: &Catalog, run_id: Uuid, opts: &RunOptions) -> Result<Self, RunError> {
        let client = catalog.client().await?;
        // Runs whose runner is gone (its lock is free) were interrupted.
        let running = client
            .query("SELECT id FROM migration_runs WHERE state = 'running'", &[])
            .await?;
        for row in running {
            let id: Uuid = row.get(0);
            let free: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtext($1))",
                    &[&run_lock(id)],
                )
                .await?
                .get(0);
            if free {
                client
                    .batch_execute(&format!(
                        "UPDATE migration_runs SET state = 'interrupted', finished_at = now() WHERE id = '{id}';
                         UPDATE migration_run_tenants SET status = 'failed', error = 'the run was interrupted', finished_at = now()
                          WHERE run_id = '{id}' AND status = 'running';
                         UPDATE migration_run_tenants SET status = 'skipped', finished_at = now()
                          WHERE run_id = '{id}' AND status = 'pending';"
                    ))
                    .await?;
                client
                    .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&run_lock(id)])
                    .await?;
                tracing::info!(run = %id, "an earlier run was interrupted; its unfinished tenants are picked up now");
            }
        }
        client
            .execute(
                "SELECT pg_advisory_lock(hashtext($1))",
                &[&run_lock(run_id)],
            )
            .await?;
        let options = serde_json::to_value(opts).unwrap_or_default();
        client
            .execute(
                "INSERT INTO migration_runs (id, state, options, started_by) VALUES ($1, 'running', $2, $3)",
                &[&run_id, &options, &opts.started_by],
            )
            .await?;
        Ok(Self { client, run_id })
    }

    async fn close(self, report: &RunReport) -> Result<(), RunError> {
        let state = if report.cancelled {
            "cancelled"
        } else if report.succeeded() {
            "finished"
        } else {
            "failed"
        };
        let summary = serde_json::to_value(&report.summary).unwrap_or_default();
        self.client
            .execute(
                "UPDATE migration_runs SET state = $2, summary = $3, finished_at = now() WHERE id = $1",
                &[&self.run_id, &state, &summary],
            )
            .await?;
        self.client
            .execute(
                "UPDATE migration_run_tenants SET status = 'skipped', finished_at = now()
                 WHERE run_id = $1 AND status IN ('pending', 'running')",
                &[&self.run_id],
            )
            .await?;
        self.client
            .execute(
                "SELECT pg_advisory_unlock(hashtext($1))",
                &[&run_lock(self.run_id)],
            )
            .await?;
        Ok(())
    }
}

struct Run<C> {
    catalog: Catalog,
    connector: Arc<C>,
    opts: Arc<RunOptions>,
    templates: HashMap<String, Arc<Template>>,
    run_id: Uuid,
    /// A signal stopped the run.
    cancelled: bool,
    reports: Vec<TenantReport>,
    /// Every tenant added to the run, by id.
    targets: HashMap<Uuid, Target>,
    /// (template, version) pairs already written to `applied_migrations` by this run.
    recorded: HashSet<(String, i32)>,
    failures: usize,
    halted: Option<String>,
}

/// One attempt at one tenant.
enum Attempt {
    Done {
        from: i32,
        to: i32,
        applied: Vec<String>,
    },
    /// Another runner holds the tenant's lock: come back later.
    Busy,
    /// A statement waited longer than `lock_timeout`: retry with backoff. `to` is how far
    /// the tenant got before (each file commits on its own).
    LockTimeout { from: i32, to: i32, error: String },
    Failed {
        from: Option<i32>,
        to: Option<i32>,
        error: String,
    },
}

#[derive(Clone)]
struct Queued {
    target: Target,
    /// The version before this run's first attempt, and the files applied so far.
    from: Option<i32>,
    applied: Vec<String>,
    not_before: Instant,
    attempts: u32,
    busy_since: Option<Instant>,
    started: Option<Instant>,
}

impl<C: Connector> Run<C> {
    /// Adds tenants to the run's list (and its catalog rows).
    async fn add(
        &mut self,
        targets: &[Target],
        progress: &(dyn Fn(Progress<'_>) + Send + Sync),
    ) -> Result<(), RunError> {
        let ids: Vec<Uuid> = targets
            .iter()
            .filter(|t| self.targets.insert(t.id, (*t).clone()).is_none())
            .map(|t| t.id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        progress(Progress::Total(self.targets.len()));
        if !self.opts.dry_run {
            let from: Vec<i32> = targets
                .iter()
                .filter(|t| ids.contains(&t.id))
                .map(|t| t.version)
                .collect();
            self.catalog
                .client()
                .await?
                .execute(
                    "INSERT INTO migration_run_tenants (run_id, tenant_id, status, from_version)
                     SELECT $1, id, 'pending', v FROM unnest($2::uuid[], $3::int[]) AS t(id, v)
                     ON CONFLICT DO NOTHING",
                    &[&self.run_id, &ids, &from],
                )
                .await?;
        }
        Ok(())
    }

    /// Migrates `targets`, `concurrency` at once and `per_server` per server, until done
    /// or the failure policy stops the run.
    async fn execute(
        &mut self,
        targets: Vec<Target>,
        progress: &(dyn Fn(Progress<'_>) + Send + Sync),
    ) {
        let now = Instant::now();
        let mut queue: VecDeque<Queued> = targets
            .into_iter()
            .map(|target| Queued {
                target,
                from: None,
                applied: Vec::new(),
                not_before: now,
                attempts: 0,
                busy_since: None,
                started: None,
            })
            .collect();
        let mut per_server: HashMap<i64, usize> = HashMap::new();
        let mut running: JoinSet<(Queued, Attempt)> = JoinSet::new();
        let mut inflight: HashMap<tokio::task::Id, Queued> = HashMap::new();
        loop {
            // Start what may start.
            if self.halted.is_none() && self.opts.cancel.load(Ordering::SeqCst) {
                self.halted = Some(CANCELLED.into());
                self.cancelled = true;
            }
            while self.halted.is_none() && running.len() < self.opts.concurrency {
                let now = Instant::now();
                let Some(i) = queue.iter().position(|q| {
                    q.not_before <= now
                        && per_server.get(&q.target.server_id).copied().unwrap_or(0)
                            < self.opts.per_server
                }) else {
                    break;
                };
                let mut q = queue.remove(i).expect("index from position");
                *per_server.entry(q.target.server_id).or_default() += 1;
                q.started.get_or_insert(now);
                let template = self.templates[&q.target.template].clone();
                let (connector, opts) = (self.connector.clone(), self.opts.clone());
                // The run's row says `running` (written by the task, off this loop).
                let mark = (!self.opts.dry_run && q.attempts == 0 && q.busy_since.is_none())
                    .then(|| (self.catalog.clone(), self.run_id));
                let snapshot = q.clone();
                let handle = running.spawn(async move {
                    if let Some((catalog, run_id)) = mark {
                        if let Err(e) = mark_running(&catalog, run_id, q.target.id).await {
                            tracing::warn!(tenant = %q.target.slug, error = %e, "could not mark the tenant running");
                        }
                    }
                    let attempt =
                        migrate_one(connector.as_ref(), &q.target, &template, &opts).await;
                    (q, attempt)
                });
                inflight.insert(handle.id(), snapshot);
            }
            if running.is_empty() {
                if self.halted.is_some() || queue.is_empty() {
                    return;
                }
                // Everything left waits for a lock or a backoff.
                let wake = queue
                    .iter()
                    .map(|q| q.not_before)
                    .min()
                    .unwrap_or_else(Instant::now);
                tokio::time::sleep_until(wake.into()).await;
                continue;
            }
            // Wait for a tenant to finish, or for a waiting one that could start to be due.
            let startable = |q: &&Queued| {
                per_server.get(&q.target.server_id).copied().unwrap_or(0) < self.opts.per_server
            };
            let wake = (self.halted.is_none() && running.len() < self.opts.concurrency)
                .then(|| queue.iter().filter(startable).map(|q| q.not_before).min())
                .flatten();
            let joined = match wake {
                Some(wake) => {
                    match tokio::time::timeout_at(wake.into(), running.join_next_with_id()).await {
                        Ok(j) => j,
                        Err(_) => continue,
                    }
                }
                None => running.join_next_with_id().await,
            };
            let (mut q, attempt) = match joined {
                Some(Ok((id, done))) => {
                    inflight.remove(&id);
                    done
                }
                Some(Err(e)) => {
                    // The task panicked: the tenant failed; nothing else is lost.
                    let Some(q) = inflight.remove(&e.id()) else {
                        continue;
                    };
                    tracing::error!(tenant = %q.target.slug, error = %e, "a migration task panicked");
                    (
                        q,
                        Attempt::Failed {
                            from: None,
                            to: None,
                            error: "the runner failed on this tenant (a bug); see its log".into(),
                        },
                    )
                }
                None => continue,
            };
            if let Some(n) = per_server.get_mut(&q.target.server_id) {
                *n = n.saturating_sub(1);
            }
            let report = match attempt {
                Attempt::Busy => {
                    let waited = q.busy_since.get_or_insert_with(Instant::now).elapsed();
                    if waited < self.opts.statement_timeout {
                        q.not_before = Instant::now() + Duration::from_millis(250);
                        queue.push_back(q);
                        continue;
                    }
                    let from = q.from;
                    self.finish(
                        &q,
                        from,
                        from,
                        Some(format!(
                            "another runner held the tenant's migration lock for {} s",
                            waited.as_secs()
                        )),
                    )
                }
                Attempt::LockTimeout { from, to, error } => {
                    q.from.get_or_insert(from);
                    if q.attempts < self.opts.lock_retries {
                        q.attempts += 1;
                        let backoff = Duration::from_millis(250 * 2u64.pow(q.attempts.min(6)));
                        tracing::info!(tenant = %q.target.slug, attempt = q.attempts, ?backoff, %error, "lock timeout; retrying");
                        q.not_before = Instant::now() + backoff;
                        queue.push_back(q);
                        continue;
                    }
                    let from = q.from;
                    self.finish(
                        &q,
                        from,
                        Some(to),
                        Some(format!("{error} (after {} retries)", q.attempts)),
                    )
                }
                Attempt::Failed { from, to, error } => {
                    let from = q.from.or(from);
                    self.finish(&q, from, to.or(from), Some(error))
                }
                Attempt::Done { from, to, applied } => {
                    q.applied.extend(applied);
                    let from = q.from.unwrap_or(from);
                    self.finish(&q, Some(from), Some(to), None)
                }
            };
            let report = self.record_result(&q.target, report).await;
            progress(Progress::Done(&report));
            if report.status == "failed" {
                self.failures += 1;
                let limit = match self.opts.on_error {
                    OnError::Halt => Some(1),
                    OnError::Continue => self.opts.max_failures,
                };
                if self.halted.is_none() && limit.is_some_and(|n| self.failures >= n) {
                    self.halted = Some(match self.opts.on_error {
                        OnError::Halt => format!(
                            "tenant {} failed and --on-error is halt: no other tenant was started",
                            report.slug
                        ),
                        OnError::Continue => format!(
                            "{} tenants failed (--max-failures {}): no other tenant was started",
                            self.failures,
                            limit.unwrap_or_default()
                        ),
                    });
                }
            }
            self.reports.push(report);
        }
    }

    fn finish(
        &self,
        q: &Queued,
        from: Option<i32>,
        to: Option<i32>,
        error: Option<String>,
    ) -> TenantReport {
        TenantReport {
            slug: q.target.slug.clone(),
            status: if error.is_some() { "failed" } else { "ok" }.into(),
            from_version: from,
            to_version: to,
            duration_ms: q.started.map_or(0, |s| s.elapsed().as_millis() as u64),
            error,
            template: q.target.template.clone(),
            server: q.target.server.clone(),
            applied: q.applied.clone(),
        }
    }

    /// Writes a tenant's result to the catalog in one statement: its version (what
    /// routers and the next run rely on) and the run's row; then, once per template and
    /// version in a run, the record of applied files.
    async fn record_result(&mut self, target: &Target, report: TenantReport) -> TenantReport {
        if self.opts.dry_run {
            return report;
        }
        let write = async {
            self.catalog
                .client()
                .await?
                .execute(
                    "WITH version AS (
                         UPDATE tenants SET schema_version = $3, updated_at = now()
                         WHERE id = $2 AND $3::int IS NOT NULL AND schema_version <> $3
                     )
                     UPDATE migration_run_tenants SET status = $4,
                         from_version = coalesce($5, from_version), to_version = $3,
                         duration_ms = $6, error = $7, finished_at = now()
                     WHERE run_id = $1 AND tenant_id = $2",
                    &[
                        &self.run_id,
                        &target.id,
                        &report.to_version,
                        &report.status,
                        &report.from_version,
                        &(report.duration_ms as i64),
                        &report.error,
                    ],
                )
                .await?;
            if let (Some(to), "ok") = (report.to_version, report.status.as_str()) {
                let key = (target.template.clone(), to);
                if !self.recorded.contains(&key) {
                    history::record(&self.catalog, &self.templates[&target.template], to).await?;
                    self.recorded.insert(key);
                }
            }
            Ok::<_, RunError>(())
        };
        if let Err(e) = write.await {
            tracing::warn!(tenant = %target.slug, error = %e, "could not record the tenant's result");
        }
        report
    }
}

/// The run's row of a tenant being migrated now.
async fn mark_running(catalog: &Catalog, run_id: Uuid, tenant: Uuid) -> Result<(), RunError> {
    catalog
        .client()
        .await?
        .execute(
            "UPDATE migration_run_tenants SET status = 'running' WHERE run_id = $1 AND tenant_id = $2",
            &[&run_id, &tenant],
        )
        .await?;
    Ok(())
}

/// The SQLSTATE of a statement that gave up waiting for a lock.
const LOCK_NOT_AVAILABLE: &str = "55P03";

async fn migrate_one<C: Connector>(
    connector: &C,
    target: &Target,
    template: &Template,
    opts: &RunOptions,
) -> Attempt {
    let failed = |from: Option<i32>, error: String| Attempt::Failed {
        from,
        to: from,
        error,
    };
    let database = TenantId(target.id).database_name();
    let role = TenantId(target.id).role_name();
    // search_path pg_catalog until the role is the tenant's: the database is the
    // tenant's, and a function it defines in `public` must never run as the admin.
    let options = format!(
        "-c search_path=pg_catalog -c lock_timeout={} -c statement_timeout={}",
        opts.lock_timeout.as_millis().max(1),
        opts.statement_timeout.as_millis().max(1)
    );
    let mut client = match connector
        .connect(target.server_id, database.as_str(), &options)
        .await
    {
        Ok(c) => c,
        Err(e) => return failed(None, format!("cannot connect to the tenant database: {e}")),
    };
    match client
        .query_one(
            "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext($1::text))",
            &[&TENANT_LOCK],
        )
        .await
    {
        Ok(row) if row.get::<_, bool>(0) => {}
        Ok(_) => return Attempt::Busy,
        Err(e) => {
            return failed(
                None,
                format!("cannot take the tenant's migration lock: {}", pg_error(&e)),
            )
        }
    }
    if let Err(e) = client
        .batch_execute(&format!(
            "SET ROLE {role}; SET search_path = \"$user\", public"
        ))
        .await
    {
        return failed(
            None,
            format!("cannot act as the tenant's role: {}", pg_error(&e)),
        );
    }
    let history = match applied(&client).await {
        Ok(h) => h,
        Err(e) => {
            return failed(
                None,
                format!("cannot read the migration history: {}", pg_error(&e)),
            )
        }
    };
    let from = history.iter().map(|a| a.version).max().unwrap_or(0);
    if let Err(e) = template.verify(&history) {
        return failed(Some(from), e.to_string());
    }
    let pending: Vec<&crate::MigrationFile> = template.pending_after(from).collect();
    if opts.dry_run {
        let names: Vec<String> = pending.iter().map(|f| f.name.clone()).collect();
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
        return match result.await {
            Ok(()) => Attempt::Done {
                from,
                to: template.latest_version(),
                applied: names,
            },
            Err((name, e)) => failed(Some(from), format!("{name} would fail: {}", pg_error(&e))),
        };
    }
    let runner = match template.runner() {
        Ok(r) => r,
        Err(e) => return failed(Some(from), e.to_string()),
    };
    match runner.run_async(&mut client).await {
        Ok(report) => {
            let applied: Vec<String> = report
                .applied_migrations()
                .iter()
                .map(|m| format!("V{}__{}", m.version(), m.name()))
                .collect();
            let to = report
                .applied_migrations()
                .iter()
                .map(|m| m.version())
                .max()
                .unwrap_or(from)
                .max(from);
            Attempt::Done { from, to, applied }
        }
        Err(e) => {
            let reached = e
                .report()
                .and_then(|r| r.applied_migrations().iter().map(|m| m.version()).max())
                .unwrap_or(from)
                .max(from);
            let cause = refinery_cause(&e);
            let message = template.describe_failure(&e, reached);
            if cause
                .and_then(|pg| pg.code())
                .is_some_and(|c| c.code() == LOCK_NOT_AVAILABLE)
            {
                return Attempt::LockTimeout {
                    from,
                    to: reached,
                    error: message,
                };
            }
            Attempt::Failed {
                from: Some(from),
                to: Some(reached),
                error: message,
            }
        }
    }
}

/// The tenant database's refinery history (empty when it has none).
async fn applied(client: &tokio_postgres::Client) -> Result<Vec<Applied>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT version, name, checksum FROM refinery_schema_history ORDER BY version",
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

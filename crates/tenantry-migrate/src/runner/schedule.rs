//! The run's use of the fan-out ([`crate::fanout`]): tenants `concurrency` at a time and
//! `per_server` per server, retries and the failure policy.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantry_catalog::Catalog;
use uuid::Uuid;

use super::tenant::{self, Attempt, Scope, Tally};
use super::{Connector, OnError, Progress, RunError, RunOptions, Target, TenantReport, CANCELLED};
use crate::fanout::{FanOut, Limits};
use crate::Template;

pub(super) struct Run<C> {
    pub(super) catalog: Catalog,
    pub(super) connector: Arc<C>,
    pub(super) opts: Arc<RunOptions>,
    pub(super) templates: HashMap<String, Arc<Template>>,
    pub(super) run_id: Uuid,
    /// A signal stopped the run.
    pub(super) cancelled: bool,
    pub(super) reports: Vec<TenantReport>,
    /// Every tenant added to the run, by id.
    pub(super) targets: HashMap<Uuid, Target>,
    /// (template, version) pairs already written to `applied_migrations` by this run.
    pub(super) recorded: HashSet<(String, i32)>,
    pub(super) failures: usize,
    pub(super) halted: Option<String>,
}

#[derive(Clone)]
struct Queued {
    target: Target,
    /// The version before this run's first attempt, the files applied so far, and the
    /// history rows repaired.
    from: Option<i32>,
    applied: Vec<String>,
    repaired: Vec<String>,
    attempts: u32,
    busy_since: Option<Instant>,
    started: Option<Instant>,
}

impl<C: Connector> Run<C> {
    /// Adds tenants to the run's list (and its catalog rows).
    pub(super) async fn add(
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
    pub(super) async fn execute(
        &mut self,
        targets: Vec<Target>,
        progress: &(dyn Fn(Progress<'_>) + Send + Sync),
    ) {
        let limits = Limits {
            concurrency: self.opts.concurrency,
            per_server: self.opts.per_server,
        };
        let (connector, opts) = (self.connector.clone(), self.opts.clone());
        let (catalog, run_id) = (self.catalog.clone(), self.run_id);
        let templates = Arc::new(self.templates.clone());
        let cancel = self.opts.cancel.clone();
        let mut fan = FanOut::new(limits, move |q: Queued| {
            let template = templates[&q.target.template].clone();
            let (connector, opts, catalog) = (connector.clone(), opts.clone(), catalog.clone());
            // The run's row says `running` (written by the task, off this loop).
            let mark = !opts.dry_run && q.attempts == 0 && q.busy_since.is_none();
            async move {
                let began = Instant::now();
                let scope = Scope {
                    connector: connector.as_ref(),
                    catalog: &catalog,
                    run_id,
                    opts: &opts,
                };
                let mut tally = Tally::default();
                let (attempt, lock) =
                    tenant::attempt(&scope, mark, &q.target, &template, &mut tally).await;
                (began, attempt, tally, lock)
            }
        })
        .cancel_on(cancel);
        for target in targets {
            let server = target.server_id;
            let q = Queued {
                target,
                from: None,
                applied: Vec::new(),
                repaired: Vec::new(),
                attempts: 0,
                busy_since: None,
                started: None,
            };
            fan.push(q, server);
        }
        loop {
            if self.halted.is_none() && self.opts.cancel.load(Ordering::SeqCst) {
                self.halted = Some(CANCELLED.into());
                self.cancelled = true;
            }
            if self.halted.is_some() {
                fan.halt();
            }
            let Some((mut q, joined)) = fan.next().await else {
                if self.halted.is_none() && self.opts.cancel.load(Ordering::SeqCst) {
                    self.halted = Some(CANCELLED.into());
                    self.cancelled = true;
                }
                return;
            };
            // The tenant's lock is held until its result is recorded.
            let (attempt, tally, _lock) = match joined {
                Ok((began, attempt, tally, lock)) => {
                    q.started.get_or_insert(began);
                    (attempt, tally, lock)
                }
                Err(e) => {
                    // The task panicked: the tenant failed; nothing else is lost.
                    tracing::error!(tenant = %q.target.slug, error = %e, "a migration task panicked");
                    (
                        Attempt::Failed {
                            from: None,
                            to: None,
                            error: "the runner failed on this tenant (a bug); see its log".into(),
                        },
                        Tally::default(),
                        None,
                    )
                }
            };
            q.applied.extend(tally.applied);
            q.repaired.extend(tally.repaired);
            if let Some((id, name)) = tally.moved_to {
                // A move took it elsewhere: retried and reported there.
                q.target.server_id = id;
                q.target.server = name;
            }
            let report = match attempt {
                Attempt::Busy => {
                    let waited = q.busy_since.get_or_insert_with(Instant::now).elapsed();
                    if waited < self.opts.statement_timeout {
                        let server = q.target.server_id;
                        fan.push_after(q, server, Instant::now() + Duration::from_millis(250));
                        continue;
                    }
                    let from = q.from;
                    self.finish(
                        &q,
                        from,
                        from,
                        Some(format!(
                            "another runner (or an operation on the tenant) held its migration lock for {} s",
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
                        let server = q.target.server_id;
                        fan.push_after(q, server, Instant::now() + backoff);
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
                Attempt::Done { from, to } => {
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
            repaired: q.repaired.clone(),
        }
    }
}

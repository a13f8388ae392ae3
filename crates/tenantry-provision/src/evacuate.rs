//! `server evacuate`: drains a server and moves every tenant off it, by the placement
//! rules, a few at a time (one per receiving server), each a [`Provisioner::start_move`]
//! and [`Provisioner::run_move`] (so each move is the ledger's, crash-safe and undone or
//! finished by reconcile like any other).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::{MoveTenant, ProvisionError, Provisioner};

/// One tenant's part of an evacuation.
#[derive(Debug, Clone, Serialize)]
pub struct Evacuated {
    pub tenant: String,
    /// The server it went to (or was to go to).
    pub to: Option<String>,
    /// `moved` or `failed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
}

/// What `server evacuate` did.
#[derive(Debug, Clone, Serialize)]
pub struct Evacuation {
    pub server: String,
    pub moved: usize,
    pub failed: usize,
    pub seconds: f64,
    pub tenants: Vec<Evacuated>,
}

/// How an evacuation goes.
#[derive(Debug, Clone)]
pub struct Evacuate {
    pub server: String,
    /// Moves at once (at least 1).
    pub concurrency: usize,
    pub cutover_timeout: Duration,
}

impl Provisioner {
    /// Drains `server` (no new placements), then moves each of its live tenants (ready or
    /// suspended) to the active server with room that holds the fewest tenants, up to
    /// `concurrency` at once; `progress` hears the total, then each tenant as it ends.
    /// A failed move is reported and the others go on; a rerun moves what is left.
    pub async fn evacuate_server(
        &self,
        req: Evacuate,
        progress: impl Fn(EvacuationProgress<'_>) + Send + Sync,
    ) -> Result<Evacuation, ProvisionError> {
        let started = Instant::now();
        let source = self.drain_server(&req.server).await?;
        let client = self.catalog.client().await?;
        let slugs: Vec<String> = client
            .query(
                "SELECT t.slug FROM tenants t JOIN servers s ON s.id = t.server_id
                 WHERE s.name = $1 AND t.state IN ('ready', 'suspended') ORDER BY t.slug",
                &[&source.name],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        drop(client);
        progress(EvacuationProgress::Total(slugs.len()));
        let progress = Arc::new(progress);
        // One pick and start at a time: each start records its move, which the next
        // pick counts.
        let picking = tokio::sync::Mutex::new(());
        let tenants: Vec<Evacuated> = stream::iter(slugs)
            .map(|slug| {
                let progress = progress.clone();
                let cutover_timeout = req.cutover_timeout;
                let source = source.name.clone();
                let picking = &picking;
                async move {
                    let t = Instant::now();
                    let started = loop {
                        let turn = picking.lock().await;
                        match self.evacuation_target(&source).await {
                            Ok(Some(to)) => {
                                let started = self
                                    .start_move(MoveTenant {
                                        slug: slug.clone(),
                                        to: to.clone(),
                                        offline: false,
                                        cutover_timeout,
                                    })
                                    .await;
                                break started.map(|s| (to.clone(), s)).map_err(|e| (Some(to), e));
                            }
                            // Every server with room is receiving a move: wait for one.
                            Ok(None) => {
                                drop(turn);
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Err(e) => break Err((None, e)),
                        }
                    };
                    let outcome = match started {
                        Ok((to, started)) => self
                            .run_move(started)
                            .await
                            .map(|_| to.clone())
                            .map_err(|e| (Some(to), e)),
                        Err(e) => Err(e),
                    };
                    let done = match outcome {
                        Ok(to) => Evacuated {
                            tenant: slug,
                            to: Some(to),
                            status: "moved".into(),
                            error: None,
                            seconds: t.elapsed().as_secs_f64(),
                        },
                        Err((to, e)) => Evacuated {
                            tenant: slug,
                            to,
                            status: "failed".into(),
                            error: Some(e.to_string()),
                            seconds: t.elapsed().as_secs_f64(),
                        },
                    };
                    progress(EvacuationProgress::Done(&done));
                    done
                }
            })
            .buffer_unordered(req.concurrency.max(1))
            .collect()
            .await;
        let moved = tenants.iter().filter(|t| t.status == "moved").count();
        Ok(Evacuation {
            server: source.name,
            moved,
            failed: tenants.len() - moved,
            seconds: started.elapsed().as_secs_f64(),
            tenants,
        })
    }

    /// The active server other than `source` with room (moves on their way to it
    /// counted) that holds the fewest tenants and receives no move now: one online move
    /// at a time per server, since each takes logical replication workers there
    /// (`max_logical_replication_workers`, 4 by default: one per subscription, and the
    /// table copies besides) and moves that find none wait for ever. `None` when every
    /// server with room receives a move.
    async fn evacuation_target(&self, source: &str) -> Result<Option<String>, ProvisionError> {
        let client = self.catalog.client().await?;
        let row = client
            .query_opt(
                "SELECT s.name, m.receiving FROM servers s
                 LEFT JOIN tenants t ON t.server_id = s.id AND t.state <> 'deleted'
                 CROSS JOIN LATERAL (
                     SELECT count(*) AS receiving FROM moves
                     WHERE target_server_id = s.id AND status = 'running'
                 ) m
                 WHERE s.state = 'active' AND s.name <> $1
                 GROUP BY s.id, m.receiving HAVING count(t.id) + m.receiving < s.capacity
                 ORDER BY m.receiving > 0, count(t.id) + m.receiving, s.id LIMIT 1",
                &[&source],
            )
            .await?;
        match row {
            Some(r) if r.get::<_, i64>(1) == 0 => Ok(Some(r.get(0))),
            Some(_) => Ok(None),
            None => Err(ProvisionError::NoCapacity(format!(
                "no active server other than {source} has room; add one or raise a capacity"
            ))),
        }
    }
}

/// What an evacuation tells as it goes.
pub enum EvacuationProgress<'a> {
    Total(usize),
    Done(&'a Evacuated),
}

//! `server evacuate`: drains a server and moves every tenant off it, by the placement
//! rules, a few at a time, each with [`Provisioner::move_tenant`] (so each move is the
//! ledger's, crash-safe and undone or finished by reconcile like any other).

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
        let tenants: Vec<Evacuated> = stream::iter(slugs)
            .map(|slug| {
                let progress = progress.clone();
                let cutover_timeout = req.cutover_timeout;
                let source = source.name.clone();
                async move {
                    let t = Instant::now();
                    let outcome = match self.evacuation_target(&source).await {
                        Ok(to) => self
                            .move_tenant(MoveTenant {
                                slug: slug.clone(),
                                to: to.clone(),
                                offline: false,
                                cutover_timeout,
                            })
                            .await
                            .map(|_| to.clone())
                            .map_err(|e| (Some(to), e)),
                        Err(e) => Err((None, e)),
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

    /// The active server other than `source` with room that holds the fewest tenants.
    async fn evacuation_target(&self, source: &str) -> Result<String, ProvisionError> {
        let client = self.catalog.client().await?;
        let row = client
            .query_opt(
                "SELECT s.name FROM servers s
                 LEFT JOIN tenants t ON t.server_id = s.id AND t.state <> 'deleted'
                 WHERE s.state = 'active' AND s.name <> $1
                 GROUP BY s.id HAVING count(t.id) < s.capacity
                 ORDER BY count(t.id), s.id LIMIT 1",
                &[&source],
            )
            .await?;
        row.map(|r| r.get(0)).ok_or_else(|| {
            ProvisionError::NoCapacity(format!(
                "no active server other than {source} has room; add one or raise a capacity"
            ))
        })
    }
}

/// What an evacuation tells as it goes.
pub enum EvacuationProgress<'a> {
    Total(usize),
    Done(&'a Evacuated),
}

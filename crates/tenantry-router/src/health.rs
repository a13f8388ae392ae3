//! Health and readiness, and the catalog figures `/metrics` shows. Unauthenticated
//! endpoints cost nothing: they read a [`Probe`] that one task refreshes every second,
//! so a flood of them takes no catalog connection from tenant lookups.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::edge::resource;
use actix_web::{web, HttpResponse};
use serde_json::json;
use tenantry_catalog::{Catalog, CatalogError};

use crate::{ApiError, AppState, ErrorCode};

const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// A readiness older than this is not trusted (the probe itself is stuck).
const STALE_AFTER: Duration = Duration::from_secs(5);

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz").route(web::get().to(healthz)));
    cfg.service(resource("/readyz").route(web::get().to(readyz)));
}

/// What the catalog said at the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotMigrated,
    Unreachable,
    TimedOut,
}

struct Snapshot {
    readiness: Readiness,
    checked: Instant,
    /// Tenants by state, when the catalog last answered.
    tenants: Vec<(String, i64)>,
}

/// The catalog's state as last seen; refreshed by [`Probe::spawn`].
pub struct Probe {
    snapshot: RwLock<Option<Snapshot>>,
}

impl Probe {
    pub fn new() -> Self {
        Self {
            snapshot: RwLock::new(None),
        }
    }

    /// Looks at the catalog once: readiness, and tenants by state.
    pub async fn refresh(&self, catalog: &Catalog) {
        let readiness = match tokio::time::timeout(READY_TIMEOUT, catalog.check_ready()).await {
            Ok(Ok(())) => Readiness::Ready,
            Ok(Err(CatalogError::NotMigrated { .. })) => Readiness::NotMigrated,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: catalog check failed");
                Readiness::Unreachable
            }
            Err(_) => Readiness::TimedOut,
        };
        let mut tenants = None;
        if readiness == Readiness::Ready {
            let counted = tokio::time::timeout(READY_TIMEOUT, async {
                let client = catalog.client().await.ok()?;
                let rows = client
                    .query("SELECT state, count(*) FROM tenants GROUP BY state", &[])
                    .await
                    .ok()?;
                Some(
                    rows.iter()
                        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                        .collect::<Vec<_>>(),
                )
            })
            .await;
            tenants = counted.ok().flatten();
        }
        let mut snapshot = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        let tenants = tenants
            .or_else(|| snapshot.as_ref().map(|s| s.tenants.clone()))
            .unwrap_or_default();
        *snapshot = Some(Snapshot {
            readiness,
            checked: Instant::now(),
            tenants,
        });
    }

    /// Refreshes every `every` until the task is aborted.
    pub fn spawn(
        self: &Arc<Self>,
        catalog: Catalog,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let probe = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                probe.refresh(&catalog).await;
            }
        })
    }

    /// The last readiness, unless it is stale.
    pub fn readiness(&self) -> Readiness {
        let snapshot = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        match snapshot.as_ref() {
            Some(s) if s.checked.elapsed() < STALE_AFTER => s.readiness,
            _ => Readiness::TimedOut,
        }
    }

    /// Tenants by state, as last counted.
    pub fn tenants(&self) -> Vec<(String, i64)> {
        let snapshot = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        snapshot
            .as_ref()
            .map(|s| s.tenants.clone())
            .unwrap_or_default()
    }
}

impl Default for Probe {
    fn default() -> Self {
        Self::new()
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "the process answers", body = Object)))]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: the catalog answered, migrated to this build's version, within the last
/// seconds (as the probe last saw it; no catalog work per call).
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "the catalog answers and is migrated", body = Object), (status = 503, body = crate::openapi::ErrorResponse)))]
async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let not_ready = |message: &str| ApiError::new(ErrorCode::NotReady, message).retry_after(1);
    match state.probe.readiness() {
        Readiness::Ready => {
            Ok(HttpResponse::Ok().json(json!({"status": "ready", "catalog": "ok"})))
        }
        Readiness::NotMigrated => Err(not_ready(
            "the catalog is not migrated to this version; run `tenantry catalog migrate`",
        )),
        Readiness::Unreachable => Err(not_ready("the catalog database is unreachable")),
        Readiness::TimedOut => Err(not_ready("the catalog database did not answer in time")),
    }
}

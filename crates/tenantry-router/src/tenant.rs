//! The tenant context of a request: its route (404, 423, 503 as the tenant's state says),
//! its rate limit (429), and a connection from its pool (503 when none comes in time).

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tenantry_pools::{Lease, PoolError};
use tenantry_types::TenantState;
use uuid::Uuid;

use crate::auth::TenantAuth;
use crate::resolve::{Moving, Route};
use crate::{ApiError, AppState, ErrorCode};

/// Per-tenant request rates, one GCRA limiter per rate (keyed by tenant id). Memory
/// stays bounded: `shrink` forgets tenants that have been quiet. Each replica allows its
/// part of the plan's rate, `ceil(rate / live replicas)`: together at least the plan's
/// rate and at most `rate + live - 1` (a tenant's burst starts afresh when the count of
/// replicas changes).
#[derive(Default)]
pub struct RateLimits {
    by_rate: DashMap<u32, Arc<DefaultKeyedRateLimiter<Uuid>>>,
}

impl RateLimits {
    /// `Err(seconds)` to wait when the tenant is over its part of `per_minute`.
    pub fn check(&self, tenant: Uuid, per_minute: u32, replicas: usize) -> Result<(), u64> {
        let Some(rate) = std::num::NonZeroU32::new(per_replica(per_minute, replicas)) else {
            return Ok(());
        };
        let limiter = self
            .by_rate
            .entry(rate.get())
            .or_insert_with(|| Arc::new(RateLimiter::keyed(Quota::per_minute(rate))))
            .clone();
        limiter.check_key(&tenant).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    pub fn shrink(&self) {
        for limiter in self.by_rate.iter() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// One replica's part of a rate: `ceil(rate / replicas)` (0 stays 0: no limit).
fn per_replica(rate: u32, replicas: usize) -> u32 {
    let replicas = u32::try_from(replicas.max(1)).unwrap_or(u32::MAX);
    rate.div_ceil(replicas)
}

/// What a tenant handler works with.
pub struct TenantCtx {
    pub route: Arc<Route>,
    claims: Arc<crate::auth::Claims>,
    state: web::Data<AppState>,
}

impl TenantCtx {
    /// [`TenantCtx::new`] for a request that writes: refused while a move copies the
    /// tenant offline (reads go on); a cutover holds it like any request.
    pub async fn for_write(state: web::Data<AppState>, auth: TenantAuth) -> Result<Self, ApiError> {
        let ctx = Self::new(state, auth).await?;
        if ctx.route.moving == Moving::Offline {
            return Err(ApiError::new(
                ErrorCode::TenantMoving,
                "this tenant is being moved to another server; writes resume when it is there",
            )
            .retry_after(5));
        }
        Ok(ctx)
    }

    /// Resolves the token's tenant and checks it may be served now. While the tenant's
    /// move cuts over, the request waits for the catalog's flip (the route changes with
    /// the NOTIFY), `router.cutover_hold_ms` at most, then is told to come back.
    pub async fn new(state: web::Data<AppState>, auth: TenantAuth) -> Result<Self, ApiError> {
        tracing::Span::current().record("tenant", auth.tenant.as_str());
        let mut route = Self::route(&state, &auth).await?;
        if route.moving == Moving::Cutover {
            let deadline = tokio::time::Instant::now() + state.cutover_hold;
            while route.moving == Moving::Cutover {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApiError::new(
                        ErrorCode::TenantMoving,
                        "this tenant is moving to another server and is cutting over; retry shortly",
                    )
                    .retry_after(1));
                }
                tokio::time::sleep(CUTOVER_POLL).await;
                route = Self::route(&state, &auth).await?;
            }
        }
        Self::admit(state, auth, route)
    }

    /// The token's tenant's route (cached, or from the catalog).
    async fn route(state: &AppState, auth: &TenantAuth) -> Result<Arc<Route>, ApiError> {
        let route = state
            .resolver
            .resolve(&auth.tenant)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "tenant lookup failed");
                ApiError::new(
                    ErrorCode::TenantUnavailable,
                    "the tenant directory is unavailable; retry shortly",
                )
                .retry_after(1)
            })?
            .ok_or_else(|| not_found(&auth.tenant))?;
        // Before anything about the tenant is told: a token of an earlier tenant with this
        // slug learns nothing of the later one.
        auth.claims
            .reaches(route.tenant, route.created_at_s)
            .map_err(|why| ApiError::new(ErrorCode::Unauthorized, why))?;
        Ok(route)
    }

    /// Checks the tenant may be served now: its state, its schema version, its rate.
    fn admit(
        state: web::Data<AppState>,
        auth: TenantAuth,
        route: Arc<Route>,
    ) -> Result<Self, ApiError> {
        auth.billed.set(route.tenant);
        if let Some(refusal) = state_refusal(&route) {
            return Err(refusal);
        }
        if route.schema_version < state.min_schema_version {
            return Err(ApiError::new(
                ErrorCode::TenantUnavailable,
                "this tenant's database is being migrated; retry shortly",
            )
            .retry_after(5));
        }
        if let Err(wait) = state.limits.check(
            route.tenant,
            route.plan.requests_per_minute,
            state.pools.replicas(),
        ) {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} requests a minute for this tenant's plan; retry in {wait} s",
                    route.plan.requests_per_minute
                ),
            )
            .retry_after(wait.max(1)));
        }
        Ok(Self {
            route,
            claims: auth.claims,
            state,
        })
    }

    /// The token's subject: the user the request acts for.
    pub fn user(&self) -> &str {
        &self.claims.sub
    }

    /// A connection to the tenant's own database, as the tenant's own role. Refused by
    /// the server itself (CONNECT revoked, the role or the database gone), the tenant may
    /// have been suspended or deleted since its route was read, its change's NOTIFY
    /// still on its way: the route is read again, once, and the request answered as the
    /// tenant stands now (423, 404); a tenant still ready is the server's trouble (503).
    pub async fn conn(&self) -> Result<Lease, ApiError> {
        let target = &self.route.target;
        let why = match self.state.pools.get(target).await {
            Ok(lease) => return Ok(lease),
            Err(PoolError::Refused(why)) => why,
            Err(e) => return Err(no_connection(&e, target)),
        };
        tracing::debug!(%why, "the tenant's database refused it; reading its route again");
        let slug = &self.route.slug;
        self.state.resolver.invalidate(slug);
        match self.state.resolver.resolve(slug).await {
            Ok(Some(now)) if now.tenant == self.route.tenant => {
                if let Some(refusal) = state_refusal(&now) {
                    return Err(refusal);
                }
            }
            Ok(_) => return Err(not_found(slug)),
            Err(_) => {}
        }
        Err(no_connection(&PoolError::Refused(why), target))
    }
}

/// Why a tenant in its route's state is not served, if it is not.
fn state_refusal(route: &Route) -> Option<ApiError> {
    match route.state {
        TenantState::Ready => None,
        TenantState::Suspended => Some(ApiError::new(
            ErrorCode::TenantSuspended,
            "this tenant is suspended",
        )),
        TenantState::Requested | TenantState::Creating => Some(
            ApiError::new(
                ErrorCode::TenantUnavailable,
                "this tenant is still being created",
            )
            .retry_after(2),
        ),
        TenantState::Failed | TenantState::Deleting | TenantState::Deleted => {
            Some(not_found(&route.slug))
        }
    }
}

fn not_found(slug: &str) -> ApiError {
    ApiError::new(
        ErrorCode::TenantNotFound,
        format!("tenant {slug:?} does not exist"),
    )
}

/// No connection for the tenant: 503, to come back shortly.
fn no_connection(e: &PoolError, target: &tenantry_pools::Target) -> ApiError {
    let retry = match e {
        PoolError::Busy => 1,
        PoolError::Unavailable(_) | PoolError::Refused(_) => 5,
    };
    tracing::warn!(error = %e, db = %target.database, "no connection for the tenant");
    ApiError::new(
        ErrorCode::TenantUnavailable,
        "the tenant's database is unavailable or busy; retry shortly",
    )
    .retry_after(retry)
}

/// Database errors inside a tenant handler: the caller learns nothing of the driver.
/// A tenant database's error: what says the database is unreachable for now is 503
/// with Retry-After (the connection lost or ended by the server — a suspend, a delete, a
/// restart, `pg_terminate_backend` — the server out of connections or resources, the
/// database gone, a statement cancelled or timed out, a serialization failure or
/// deadlock); anything else is the router's own fault, 500 with no detail.
pub fn db_error(e: tokio_postgres::Error) -> ApiError {
    let transient = e.as_db_error().is_none_or(|db| {
        let code = db.code().code();
        ["08", "53", "57", "40"]
            .iter()
            .any(|class| code.starts_with(class))
            || code == "3D000"
    });
    if e.is_closed() || transient {
        tracing::warn!(error = %e, "tenant database connection failed");
        return ApiError::new(
            ErrorCode::TenantUnavailable,
            "the tenant's database is unavailable; retry shortly",
        )
        .retry_after(1);
    }
    ApiError::internal(&e)
}

pub const SHRINK_EVERY: Duration = Duration::from_secs(60);

/// How often a request held for a cutover looks at its tenant's route again (a cache
/// read: the NOTIFY of the flip drops the cached route).
const CUTOVER_POLL: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_split_among_replicas_rounding_up() {
        assert_eq!(per_replica(5, 1), 5);
        assert_eq!(per_replica(5, 2), 3);
        assert_eq!(per_replica(600, 2), 300);
        assert_eq!(per_replica(5, 9), 1);
        assert_eq!(per_replica(5, 0), 5);
        assert_eq!(per_replica(0, 3), 0);
    }

    #[test]
    fn each_replica_admits_its_part() {
        let limits = RateLimits::default();
        let tenant = Uuid::now_v7();
        let admitted = (0..10)
            .filter(|_| limits.check(tenant, 5, 2).is_ok())
            .count();
        assert_eq!(admitted, 3);
    }
}

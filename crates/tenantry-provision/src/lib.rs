//! The provisioner: places tenants on PostgreSQL servers, creates their database and
//! role from a pre-migrated template, and runs the rest of their life.
//!
//! Every lifecycle step is written to the catalog's `operations` ledger before it acts
//! and after, and every step looks at `pg_database` / `pg_roles` before acting, so any
//! step can run again. A per-tenant advisory lock (on a connection of its own, released
//! when that connection closes, also by a crash) keeps two processes off one tenant.
//! [`Provisioner::reconcile`] finishes or undoes whatever a crash left half-done.

mod error;
mod evacuate;
mod fault;
mod fleet;
mod ledger;
mod reconcile;
mod server;
mod servers;
mod templates;
mod tenants;

pub use error::{ErrorKind, ProvisionError};
pub use evacuate::{Evacuate, Evacuated, Evacuation, EvacuationProgress};
pub use fleet::{FleetConnector, MigrationLock};
pub use reconcile::{Orphan, ReconcileReport};
pub use servers::{AddServer, ServerInfo};
pub use tenants::{CreateTenant, MoveInfo, MoveTenant, StartedMove, TenantInfo};

use std::path::PathBuf;
use std::time::Duration;

use tenantry_catalog::{Catalog, Sealer};
use tenantry_config::{CreateStrategy, Settings};

/// What the provisioner needs besides the catalog.
#[derive(Debug, Clone)]
pub struct ProvisionOptions {
    pub templates_dir: PathBuf,
    pub default_template: String,
    pub retention: Duration,
    pub statement_timeout_ms: u64,
    pub idle_in_transaction_timeout_ms: u64,
    pub create_strategy: CreateStrategy,
    pub default_capacity: u32,
}

impl ProvisionOptions {
    pub fn from_settings(settings: &Settings) -> Self {
        let p = &settings.provision;
        Self {
            templates_dir: settings.templates.dir.clone(),
            default_template: settings.templates.default.clone(),
            retention: Duration::from_secs(p.retention_hours * 3600),
            statement_timeout_ms: p.statement_timeout_ms,
            idle_in_transaction_timeout_ms: p.idle_in_transaction_timeout_ms,
            create_strategy: p.create_strategy,
            default_capacity: p.default_capacity,
        }
    }
}

/// How many tenants one process works on at once (each holds a lock connection).
const LOCK_CONNECTIONS: usize = 32;

/// The provisioner's handle: cheap to clone, safe to share.
#[derive(Clone)]
pub struct Provisioner {
    catalog: Catalog,
    /// Connections that hold tenant locks: a pool of their own.
    locks: Catalog,
    sealer: Sealer,
    opts: ProvisionOptions,
    admin: server::AdminPools,
}

impl Provisioner {
    pub fn new(
        catalog: Catalog,
        sealer: Sealer,
        opts: ProvisionOptions,
    ) -> Result<Self, ProvisionError> {
        Ok(Self {
            locks: catalog.separate_pool(LOCK_CONNECTIONS)?,
            catalog,
            sealer,
            opts,
            admin: server::AdminPools::default(),
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn options(&self) -> &ProvisionOptions {
        &self.opts
    }
}

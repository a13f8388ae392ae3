//! The words Tenantry speaks in: tenant ids and slugs, lifecycle states, plans and agents.
//!
//! Nothing here performs IO. Every type that can be built from user text validates it
//! on construction, so a value of the type is always well-formed.

mod ident;
mod plan;
mod slug;
mod state;

pub use ident::{sql_literal, Ident, IdentError};
pub use plan::{Agent, Plan, AGENTS, MAX_PRIORITY};
pub use slug::{ServerName, Slug, SlugError};
pub use state::{ServerState, TenantState, UnknownState};

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// A tenant's identity. Database and role names are derived from it, never from user text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub Uuid);

impl TenantId {
    /// A new, time-ordered id (UUIDv7), so ids sort by creation.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The tenant's database name: `t_` and the id's 32 hex digits (34 bytes, under
    /// PostgreSQL's 63-byte limit, only `[a-z0-9_]`).
    pub fn database_name(&self) -> Ident {
        Ident(format!("t_{}", self.0.simple()))
    }

    /// The tenant's login role name: `tr_` and the id's 32 hex digits.
    pub fn role_name(&self) -> Ident {
        Ident(format!("tr_{}", self.0.simple()))
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_are_short_and_plain() {
        let id = TenantId::new();
        for ident in [id.database_name(), id.role_name()] {
            let name = ident.as_str();
            assert!(name.len() <= 63, "{name}");
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
        assert_ne!(id.database_name(), TenantId::new().database_name());
    }
}

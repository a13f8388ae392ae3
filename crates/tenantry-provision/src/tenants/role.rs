//! The tenant's login role and its credentials.

use rand::distributions::{Alphanumeric, DistString};
use secrecy::{ExposeSecret, SecretString};
use tenantry_types::{sql_literal, Ident};
use uuid::Uuid;

use super::TenantRow;
use crate::{ProvisionError, Provisioner};

/// The binding of a tenant's sealed credentials to its row.
fn binding(id: Uuid) -> String {
    format!("tenant:{id}")
}

impl Provisioner {
    /// A tenant role's connection limit on `plan`: the plan's pool size + 2, so the
    /// router replicas' pools fit in it (see ARCHITECTURE.md, "Replicas together keep a
    /// tenant's limits"). The one computation: create, resume and plan changes use it.
    pub(super) async fn role_connection_limit(&self, plan: &str) -> Result<u32, ProvisionError> {
        let pool_size = self
            .catalog
            .plans()
            .await?
            .into_iter()
            .find(|p| p.name == plan)
            .map_or(2, |p| p.pool_size);
        Ok(pool_size + 2)
    }

    /// `plan` if the catalog's plan table has it; else bad input naming the plans.
    pub(super) async fn known_plan(&self, plan: &str) -> Result<(), ProvisionError> {
        let plans = self.catalog.plans().await?;
        if plans.iter().any(|p| p.name == plan) {
            return Ok(());
        }
        let names: Vec<_> = plans.iter().map(|p| p.name.as_str()).collect();
        Err(ProvisionError::BadInput(format!(
            "unknown plan {plan:?}; choose one of: {}",
            names.join(", ")
        )))
    }

    /// The tenant's password: sealed into the catalog before any role uses it, so a
    /// crash never loses it.
    pub(super) async fn ensure_credentials(
        &self,
        tenant: &TenantRow,
    ) -> Result<SecretString, ProvisionError> {
        let id = tenant.info.id;
        if let Some(sealed) = &tenant.credentials {
            if let Ok(bytes) = self.sealer.open(sealed, &binding(id)) {
                return Ok(SecretString::from(
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
        let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 40);
        let sealed = self.sealer.seal(password.as_bytes(), &binding(id));
        let client = self.catalog.client().await?;
        client
            .execute(
                "UPDATE tenants SET credentials = $2, key_version = $3, updated_at = now() WHERE id = $1",
                &[&id, &sealed.bytes, &sealed.key_version],
            )
            .await?;
        Ok(SecretString::from(password))
    }

    /// A tenant's login password, by id (the migration runner logs in as the tenant).
    pub(crate) async fn tenant_password_by_id(
        &self,
        id: Uuid,
    ) -> Result<SecretString, ProvisionError> {
        let tenant = self.tenant_by_id(id).await?;
        let sealed = tenant.credentials.as_ref().ok_or_else(|| {
            ProvisionError::Conflict(format!("tenant {} has no credentials", tenant.info.slug))
        })?;
        let bytes = self.sealer.open(sealed, &binding(id)).map_err(|e| {
            ProvisionError::Conflict(format!("the tenant's credentials do not open: {e}"))
        })?;
        Ok(SecretString::from(
            String::from_utf8_lossy(&bytes).into_owned(),
        ))
    }

    /// The tenant's login password (for the router's pools and for tests).
    pub async fn tenant_password(&self, slug: &str) -> Result<SecretString, ProvisionError> {
        let tenant = self.live_tenant(slug).await?;
        let sealed = tenant
            .credentials
            .ok_or_else(|| ProvisionError::Conflict(format!("tenant {slug} has no credentials")))?;
        let bytes = self
            .sealer
            .open(&sealed, &binding(tenant.info.id))
            .map_err(tenantry_catalog::CatalogError::from)?;
        Ok(SecretString::from(
            String::from_utf8_lossy(&bytes).into_owned(),
        ))
    }
}

/// PBKDF2 rounds in a tenant role's SCRAM verifier. Stretching slows down guessing a
/// weak password from a stolen verifier; a tenant password is 40 random alphanumerics
/// (238 bits), which no number of guesses reaches, so the rounds would only cost the
/// router: PostgreSQL's default of 4,096 is about 1.5 ms of router CPU per new
/// connection, paid again every time a tenant without an open connection is served.
pub const SCRAM_ITERATIONS: u32 = 32;

/// A SCRAM-SHA-256 verifier as PostgreSQL stores it (RFC 5802/7677):
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`. The password must need
/// no SASLprep (ASCII letters and digits, as [`Provisioner`] makes them).
pub fn scram_verifier(password: &str, iterations: u32) -> String {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use rand::RngCore;
    use sha2::{Digest, Sha256};
    type HmacSha256 = Hmac<Sha256>;
    let hmac = |key: &[u8], data: &[&[u8]]| -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        for d in data {
            mac.update(d);
        }
        mac.finalize().into_bytes().into()
    };
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    // PBKDF2-HMAC-SHA-256, one 32-byte block.
    let mut u = hmac(password.as_bytes(), &[&salt, &1u32.to_be_bytes()]);
    let mut salted = u;
    for _ in 1..iterations.max(1) {
        u = hmac(password.as_bytes(), &[&u]);
        for (s, x) in salted.iter_mut().zip(u) {
            *s ^= x;
        }
    }
    let client_key = hmac(&salted, &[b"Client Key"]);
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, &[b"Server Key"]);
    format!(
        "SCRAM-SHA-256${}:{}${}:{}",
        iterations.max(1),
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

/// Creates the tenant's login role, or brings an existing one back to the same settings
/// (every setting of its own removed first: a tenant may have added some).
/// The password is sent as a SCRAM-SHA-256 verifier computed here, so the clear text
/// never reaches the server (nor its logs).
pub(super) async fn ensure_role(
    admin: &tokio_postgres::Client,
    role: &Ident,
    password: &SecretString,
    connection_limit: u32,
    opts: &crate::ProvisionOptions,
) -> Result<(), tokio_postgres::Error> {
    let verifier = scram_verifier(password.expose_secret(), SCRAM_ITERATIONS);
    let verifier = sql_literal(&verifier).unwrap_or_default();
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_roles WHERE rolname = $1",
            &[&role.as_str()],
        )
        .await?
        .is_some();
    let attributes = format!(
        "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION \
         CONNECTION LIMIT {connection_limit} PASSWORD {verifier}"
    );
    let create = if exists {
        // Only what a role can change of itself (its password) or that the control plane
        // changes (its limit): the superuser-only attributes cannot change, and a
        // non-superuser admin may not even name them.
        format!(
            "ALTER ROLE {role} WITH LOGIN CONNECTION LIMIT {connection_limit} PASSWORD {verifier}"
        )
    } else {
        format!("CREATE ROLE {role} WITH {attributes}")
    };
    admin
        .batch_execute(&format!(
            "{create};
             ALTER ROLE {role} RESET ALL;
             ALTER ROLE {role} SET statement_timeout = {st};
             ALTER ROLE {role} SET idle_in_transaction_session_timeout = {it}",
            st = opts.statement_timeout_ms,
            it = opts.idle_in_transaction_timeout_ms,
        ))
        .await?;
    // To make the role a database's owner and hand it the template's objects.
    crate::templates::join_role(admin, role).await
}

/// Sets an existing tenant role's connection limit (a plan change).
pub(super) async fn set_connection_limit(
    admin: &tokio_postgres::Client,
    role: &Ident,
    connection_limit: u32,
) -> Result<(), tokio_postgres::Error> {
    admin
        .batch_execute(&format!(
            "ALTER ROLE {role} WITH CONNECTION LIMIT {connection_limit}"
        ))
        .await
}

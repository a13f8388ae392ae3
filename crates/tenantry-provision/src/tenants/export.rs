//! `tenant export`: a `pg_dump` archive of the tenant's database.

use std::path::Path;

use secrecy::ExposeSecret;
use tenantry_types::TenantState;

use super::invalid_state;
use crate::{ProvisionError, Provisioner};

impl Provisioner {
    /// Writes a `pg_dump` custom-format archive of the tenant's database to `out`
    /// (through a temporary file, renamed when complete).
    pub async fn export_tenant(&self, slug: &str, out: &Path) -> Result<u64, ProvisionError> {
        let tenant = self.live_tenant(slug).await?;
        if !matches!(tenant.state, TenantState::Ready | TenantState::Suspended) {
            return Err(invalid_state(slug, tenant.state, "ready or suspended"));
        }
        let server_id = tenant
            .server_id
            .ok_or_else(|| ProvisionError::Conflict(format!("tenant {slug} has no server")))?;
        let server = self.server_by_id(server_id).await?;
        // pg_dump reads as the admin, who must be a member of the tenant's role.
        self.rejoin(&server, &tenant).await?;
        let pg_dump = tenantry_embedded::PgBinaries::find()
            .map(|b| b.tool("pg_dump"))
            .unwrap_or_else(|_| "pg_dump".into());
        let tmp = out.with_extension(format!("partial-{}", std::process::id()));
        let output = tokio::process::Command::new(&pg_dump)
            .arg("--format=custom")
            .arg("--no-owner")
            .arg("--no-privileges")
            .arg("--file")
            .arg(&tmp)
            .arg("--host")
            .arg(&server.host)
            .arg("--port")
            .arg(server.port.to_string())
            .arg("--username")
            .arg(&server.admin_user)
            .arg("--dbname")
            .arg(tenant.database.as_str())
            // The password travels in the environment, never on a command line.
            .env("PGPASSWORD", server.password.expose_secret())
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                ProvisionError::Export(format!("cannot run {}: {e}", pg_dump.display()))
            })?;
        if !output.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(ProvisionError::Export(format!(
                "pg_dump exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        std::fs::rename(&tmp, out)
            .map_err(|e| ProvisionError::Export(format!("cannot write {}: {e}", out.display())))?;
        Ok(std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
    }
}

//! What the provisioning commands share: the catalog URL, the sealer, the provisioner.

use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use tenantry_catalog::{Catalog, CatalogError, Sealer};
use tenantry_config::Settings;
use tenantry_provision::{ErrorKind, ProvisionError, ProvisionOptions, Provisioner};

use crate::exit::CliError;

/// The catalog database's name on the embedded `tenantry dev` cluster.
pub const DEV_CATALOG_DB: &str = "tenantry";

/// `catalog.url`; under dev/test without one, the running `tenantry dev` cluster's catalog.
pub fn catalog_url(settings: &Settings) -> Result<SecretString, CliError> {
    if let Some(url) = &settings.catalog.url {
        return Ok(url.clone());
    }
    let dir = &settings.dev.data_dir;
    if settings.is_development() && tenantry_embedded::Cluster::is_initialised(dir) {
        let url = tenantry_embedded::Cluster::url_of(dir, DEV_CATALOG_DB)
            .context("read the embedded cluster's address")?;
        return Ok(SecretString::from(url));
    }
    Err(CliError::usage(anyhow::anyhow!(
        "catalog.url is not set: set TENANTRY__CATALOG__URL=postgres://user:password@host:port/database \
         (or catalog.url_file), or run `tenantry dev` (make run), whose catalog the other commands then use"
    )))
}

/// The sealer for stored credentials, from `secrets.master_key`.
pub fn sealer(settings: &Settings) -> Result<Sealer, CliError> {
    let key = settings.master_key().ok_or_else(|| {
        CliError::usage(anyhow::anyhow!(
            "secrets.master_key is not set: set TENANTRY__SECRETS__MASTER_KEY to 32 random bytes in \
             base64 (`openssl rand -base64 32`)"
        ))
    })?;
    Ok(Sealer::new(1, &key.0))
}

/// A provisioner over the configured catalog, which must be reachable and migrated.
pub async fn provisioner(settings: &Settings) -> Result<Provisioner, CliError> {
    let url = catalog_url(settings)?;
    let catalog = Catalog::new(
        &url,
        settings.catalog.pool_size,
        Duration::from_millis(settings.catalog.connect_timeout_ms),
    )?;
    match catalog.check_ready().await {
        Ok(()) => {}
        Err(e @ CatalogError::NotMigrated { .. }) => return Err(CliError::failed(e)),
        Err(e) => {
            return Err(CliError::failed(anyhow::Error::new(e).context(
                "cannot use the catalog (is `tenantry dev` running, or catalog.url right?)",
            )))
        }
    }
    provisioner_over(settings, &catalog)
}

/// A provisioner over a catalog already opened (and migrated) by the caller.
pub fn provisioner_over(settings: &Settings, catalog: &Catalog) -> Result<Provisioner, CliError> {
    let opts = ProvisionOptions::from_settings(settings);
    Ok(Provisioner::new(catalog.clone(), sealer(settings)?, opts)?)
}

/// Exit 2 for what the caller got wrong, 1 for what failed.
impl From<ProvisionError> for CliError {
    fn from(e: ProvisionError) -> Self {
        match e.kind() {
            ErrorKind::BadInput | ErrorKind::NotFound | ErrorKind::Conflict => CliError::usage(e),
            ErrorKind::Unavailable | ErrorKind::Failed => CliError::failed(e),
        }
    }
}

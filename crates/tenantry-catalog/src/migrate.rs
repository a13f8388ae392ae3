use secrecy::SecretString;

use crate::{parse_url, CatalogError};

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// A fixed key for the catalog's migration lock (`pg_advisory_lock`): "tenantry" in ASCII.
const MIGRATION_LOCK: i64 = 0x7465_6e61_6e74_7279;

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// The migrations this call applied (`V{n}__{name}`); empty when there was nothing to do.
    pub applied: Vec<String>,
    /// The catalog's version afterwards.
    pub version: i32,
}

/// The newest catalog migration this build carries.
pub fn latest_version() -> i32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0)
}

/// Applies the catalog migrations that `url`'s database lacks.
///
/// refinery takes no lock of its own, so this holds a session advisory lock on a
/// dedicated connection for the whole run: concurrent callers wait, then find
/// nothing left to do. refinery refuses divergent or missing migrations.
pub async fn migrate(url: &SecretString) -> Result<MigrateReport, CatalogError> {
    let mut client = connect_once(url).await?;
    client.batch_execute("SET lock_timeout = '120s'").await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = embedded::migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run_async(&mut client)
        .await;
    // Closing the connection would release the lock too; say it explicitly.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let report = result.map_err(|e| CatalogError::Migrate(e.to_string()))?;
    let applied: Vec<String> = report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect();
    for name in &applied {
        tracing::info!(migration = %name, "catalog migration applied");
    }
    Ok(MigrateReport {
        applied,
        version: latest_version(),
    })
}

/// One connection outside any pool, its driver on the current runtime.
pub(crate) async fn connect_once(
    url: &SecretString,
) -> Result<tokio_postgres::Client, CatalogError> {
    let mut config = parse_url(url)?;
    config.application_name("tenantry");
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| CatalogError::Unreachable(describe_pg_error(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "catalog connection closed");
        }
    });
    Ok(client)
}

/// A driver error in words an operator can act on (the driver's Display says only
/// "db error"): the server's message and detail, or the chain of causes. For logs and
/// the command line; the HTTP edge never shows it.
pub fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return match db.detail() {
            Some(detail) => format!("{} ({})", db.message(), detail.replace('\n', "; ")),
            None => db.message().to_owned(),
        };
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

//! The catalog's record of every template migration applied anywhere, with its file's
//! checksum: a file changed or removed after it was applied is refused by name before
//! anything else is applied (by a run, or by building a template database).

use tenantry_catalog::{Catalog, CatalogError};

use crate::template::Applied;
use crate::{Template, TemplateError};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Template(#[from] TemplateError),
}

impl From<tokio_postgres::Error> for HistoryError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Catalog(CatalogError::Query(e))
    }
}

/// The migrations of `template` recorded as applied.
pub async fn recorded(catalog: &Catalog, template: &str) -> Result<Vec<Applied>, HistoryError> {
    let client = catalog.client().await?;
    let rows = client
        .query(
            "SELECT version, name, checksum FROM applied_migrations WHERE template = $1 ORDER BY version",
            &[&template],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Applied {
            version: r.get(0),
            name: r.get(1),
            checksum: r.get(2),
        })
        .collect())
}

/// Refuses `template`'s files if one differs from, or lacks, a recorded migration.
pub async fn verify(catalog: &Catalog, template: &Template) -> Result<(), HistoryError> {
    let applied = recorded(catalog, template.name()).await?;
    template.verify(&applied)?;
    Ok(())
}

/// Records `template`'s files up to `version` as applied (first record wins).
pub async fn record(
    catalog: &Catalog,
    template: &Template,
    version: i32,
) -> Result<(), HistoryError> {
    let files: Vec<Applied> = template
        .applied_form()?
        .into_iter()
        .filter(|a| a.version <= version)
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    let versions: Vec<i32> = files.iter().map(|a| a.version).collect();
    let names: Vec<&str> = files.iter().map(|a| a.name.as_str()).collect();
    let checksums: Vec<&str> = files.iter().map(|a| a.checksum.as_str()).collect();
    catalog
        .client()
        .await?
        .execute(
            "INSERT INTO applied_migrations (template, version, name, checksum)
             SELECT $1, v, n, c FROM unnest($2::int[], $3::text[], $4::text[]) AS f(v, n, c)
             ON CONFLICT DO NOTHING",
            &[&template.name(), &versions, &names, &checksums],
        )
        .await?;
    Ok(())
}

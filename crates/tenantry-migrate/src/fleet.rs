//! What the fleet lacks and where it stands: `tenantry migrate plan` and `migrate status`,
//! read from the catalog (each tenant's recorded schema version) and the templates folder.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;
use tenantry_catalog::{Catalog, CatalogError};

use crate::{Template, TemplateError};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Template(#[from] TemplateError),
}

impl From<tokio_postgres::Error> for FleetError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Catalog(CatalogError::Query(e))
    }
}

/// One tenant's pending migrations.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Pending {
    pub slug: String,
    pub from_version: i32,
    pub to_version: i32,
    pub migrations: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Plan {
    pub pending: Vec<Pending>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TenantStatus {
    pub slug: String,
    pub template: String,
    pub schema_version: i32,
    /// `up_to_date`, `behind`, or the last migration run's `failed` for this tenant.
    pub status: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    pub latest: BTreeMap<String, i32>,
    pub tenants: Vec<TenantStatus>,
}

struct Row {
    slug: String,
    template: String,
    version: i32,
    last_status: Option<String>,
    last_error: Option<String>,
}

/// Live tenants (ready or suspended) with their last migration result, by slug.
async fn tenants(catalog: &Catalog) -> Result<Vec<Row>, FleetError> {
    let client = catalog.client().await?;
    let rows = client
        .query(
            "SELECT t.slug, t.template, t.schema_version, last.status, last.error
             FROM tenants t
             LEFT JOIN LATERAL (
                 SELECT status, error FROM migration_run_tenants m
                 WHERE m.tenant_id = t.id AND m.finished_at IS NOT NULL
                 ORDER BY m.finished_at DESC LIMIT 1
             ) last ON true
             WHERE t.state IN ('ready', 'suspended')
             ORDER BY t.slug",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Row {
            slug: r.get(0),
            template: r.get(1),
            version: r.get(2),
            last_status: r.get(3),
            last_error: r.get(4),
        })
        .collect())
}

fn load_all<'a>(
    dir: &Path,
    names: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, Template>, FleetError> {
    let mut templates = HashMap::new();
    for name in names {
        if !templates.contains_key(name) {
            templates.insert(name.to_owned(), Template::load(dir, name)?);
        }
    }
    Ok(templates)
}

/// What each tenant lacks, from its recorded version to its template's latest.
pub async fn plan(catalog: &Catalog, templates_dir: &Path) -> Result<Plan, FleetError> {
    let rows = tenants(catalog).await?;
    let templates = load_all(templates_dir, rows.iter().map(|r| r.template.as_str()))?;
    let pending = rows
        .iter()
        .filter_map(|r| {
            let t = &templates[&r.template];
            let migrations: Vec<String> = t
                .files()
                .iter()
                .filter(|f| f.version > r.version)
                .map(|f| f.name.clone())
                .collect();
            (!migrations.is_empty()).then(|| Pending {
                slug: r.slug.clone(),
                from_version: r.version,
                to_version: t.latest_version(),
                migrations,
            })
        })
        .collect();
    Ok(Plan { pending })
}

/// Every live tenant's version against its template's latest, with the last run's result.
pub async fn status(catalog: &Catalog, templates_dir: &Path) -> Result<Status, FleetError> {
    let rows = tenants(catalog).await?;
    let templates = load_all(templates_dir, rows.iter().map(|r| r.template.as_str()))?;
    let latest: BTreeMap<String, i32> = templates
        .iter()
        .map(|(name, t)| (name.clone(), t.latest_version()))
        .collect();
    let tenants = rows
        .into_iter()
        .map(|r| {
            let newest = latest[&r.template];
            let status = match r.last_status.as_deref() {
                Some("failed") => "failed",
                _ if r.version >= newest => "up_to_date",
                _ => "behind",
            };
            TenantStatus {
                status: status.to_owned(),
                error: if status == "failed" {
                    r.last_error
                } else {
                    None
                },
                slug: r.slug,
                template: r.template,
                schema_version: r.version,
            }
        })
        .collect();
    Ok(Status { latest, tenants })
}

/// The templates that live tenants were made from.
pub async fn templates_in_use(catalog: &Catalog) -> Result<Vec<String>, FleetError> {
    let rows = catalog
        .client()
        .await?
        .query(
            "SELECT DISTINCT template FROM tenants WHERE state IN ('requested', 'creating', 'ready', 'suspended') ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

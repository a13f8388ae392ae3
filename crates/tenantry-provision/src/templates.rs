//! Pre-migrated template databases: one per server, template and content checksum,
//! built from `templates.dir` at run time, `IS_TEMPLATE true, ALLOW_CONNECTIONS false`.
//! A new tenant database is `CREATE DATABASE … TEMPLATE` of it: a file-level clone,
//! never a replay of migrations.

use tenantry_migrate::Template;
use tenantry_types::Ident;

use crate::server::ServerRow;
use crate::{ProvisionError, Provisioner};

/// Owns every object of a template database; `REASSIGN OWNED` hands them to the tenant's role.
pub(crate) const TEMPLATE_OWNER: &str = "tenantry_template_owner";

/// A ready template database on a server.
#[derive(Debug, Clone)]
pub(crate) struct TemplateDb {
    pub database: Ident,
    pub version: i32,
}

pub(crate) fn template_database_name(template: &Template) -> Result<Ident, ProvisionError> {
    Ident::new(format!("tpl_{}_{}", template.name(), template.checksum()))
        .map_err(|e| ProvisionError::BadInput(e.to_string()))
}

impl Provisioner {
    /// Loads a template from `templates.dir`.
    pub(crate) fn load_template(&self, name: &str) -> Result<Template, ProvisionError> {
        Ok(Template::load(&self.opts.templates_dir, name)?)
    }

    /// The server's template database for `template` at its current content, built if missing.
    pub(crate) async fn ensure_template(
        &self,
        server: &ServerRow,
        template: &Template,
    ) -> Result<TemplateDb, ProvisionError> {
        let database = template_database_name(template)?;
        let catalog = self.catalog.client().await?;
        let known = catalog
            .query_opt(
                "SELECT version FROM template_databases WHERE server_id = $1 AND template = $2 AND checksum = $3",
                &[&server.id, &template.name(), &template.checksum()],
            )
            .await?;
        if let Some(row) = known {
            return Ok(TemplateDb {
                database,
                version: row.get(0),
            });
        }
        // Not held through the build: other creators wait on the build lock, and the
        // steps below take connections of their own.
        drop(catalog);
        // Files that changed or vanished after they were applied somewhere build nothing.
        tenantry_migrate::history::verify(&self.catalog, template).await?;
        self.build_template(server, template, &database).await?;
        let version = template.latest_version();
        tenantry_migrate::history::record(&self.catalog, template, version).await?;
        self.catalog
            .client()
            .await?
            .execute(
                "INSERT INTO template_databases (server_id, template, checksum, version, database_name)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&server.id, &template.name(), &template.checksum(), &version, &database.as_str()],
            )
            .await?;
        self.drop_stale_templates(server, template).await;
        Ok(TemplateDb { database, version })
    }

    async fn build_template(
        &self,
        server: &ServerRow,
        template: &Template,
        database: &Ident,
    ) -> Result<(), ProvisionError> {
        let fail = |context: &str| {
            let context = context.to_owned();
            let name = server.name.clone();
            move |e: tokio_postgres::Error| ProvisionError::server(&name, &context, &e)
        };
        // A session lock on a connection of our own: builders of one template on one
        // server take turns; the lock goes with the connection.
        let admin = server.connect(&server.admin_database).await?;
        admin
            .execute(
                "SELECT pg_advisory_lock(hashtext($1))",
                &[&format!("tenantry-template:{}", database.as_str())],
            )
            .await
            .map_err(fail("lock the template build"))?;
        let state = admin
            .query_opt(
                "SELECT datistemplate FROM pg_database WHERE datname = $1",
                &[&database.as_str()],
            )
            .await
            .map_err(fail("look up the template database"))?;
        match state {
            Some(row) if row.get::<_, bool>(0) => return Ok(()), // another process built it
            Some(_) => {
                // Half-built by a process that died: start again.
                drop_template_database(&admin, database)
                    .await
                    .map_err(fail("drop a half-built template database"))?;
            }
            None => {}
        }
        let owner =
            Ident::new(TEMPLATE_OWNER).map_err(|e| ProvisionError::BadInput(e.to_string()))?;
        ensure_owner_role(&admin, &owner)
            .await
            .map_err(fail("create the template owner role"))?;
        // The database belongs to the admin; its objects to the template owner. (Were
        // the database the owner's too, REASSIGN OWNED in a clone would hand the
        // template database itself to the tenant.)
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .map_err(fail("create the template database"))?;
        {
            let mut client = server.connect(database.as_str()).await?;
            client
                .batch_execute(&format!(
                    "GRANT USAGE, CREATE ON SCHEMA public TO {owner}; SET ROLE {owner}"
                ))
                .await
                .map_err(fail("become the template owner"))?;
            template.apply(&mut client).await?;
        }
        admin
            .batch_execute(&format!(
                "REVOKE ALL ON DATABASE {database} FROM PUBLIC;
                 ALTER DATABASE {database} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
            ))
            .await
            .map_err(fail("seal the template database"))?;
        tracing::info!(server = %server.name, template = template.name(), db = %database.as_str(), "template database built");
        Ok(())
    }

    /// Template databases of older content: dropped once ten minutes old (a creator
    /// that chose one just before may still be cloning it), and only when nothing is
    /// connected to them. Run after a template is built, and by every `migrate run`.
    pub(crate) async fn drop_stale_templates(&self, server: &ServerRow, template: &Template) {
        let Ok(catalog) = self.catalog.client().await else {
            return;
        };
        let Ok(rows) = catalog
            .query(
                "SELECT database_name FROM template_databases
                 WHERE server_id = $1 AND template = $2 AND checksum <> $3
                   AND created_at < now() - interval '10 minutes'",
                &[&server.id, &template.name(), &template.checksum()],
            )
            .await
        else {
            return;
        };
        let Ok(admin) = server.connect(&server.admin_database).await else {
            return;
        };
        for row in rows {
            let name: String = row.get(0);
            let Ok(db) = Ident::new(name.clone()) else {
                continue;
            };
            // A clone in progress holds the template: then it stays until next time.
            if drop_template_database(&admin, &db).await.is_ok() {
                let _ = catalog
                    .execute(
                        "DELETE FROM template_databases WHERE server_id = $1 AND database_name = $2",
                        &[&server.id, &name],
                    )
                    .await;
            }
        }
    }
}

pub(crate) async fn drop_template_database(
    admin: &tokio_postgres::Client,
    database: &Ident,
) -> Result<(), tokio_postgres::Error> {
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&database.as_str()],
        )
        .await?
        .is_some();
    if exists {
        // Two statements: a batch is one transaction, which DROP DATABASE refuses.
        admin
            .batch_execute(&format!("ALTER DATABASE {database} WITH IS_TEMPLATE false"))
            .await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {database}"))
            .await?;
    }
    Ok(())
}

/// The template owner: a role nobody logs in as; the admin joins it to act as it.
async fn ensure_owner_role(
    admin: &tokio_postgres::Client,
    owner: &Ident,
) -> Result<(), tokio_postgres::Error> {
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_roles WHERE rolname = $1",
            &[&owner.as_str()],
        )
        .await?
        .is_some();
    if !exists {
        match admin
            .batch_execute(&format!("CREATE ROLE {owner} NOLOGIN"))
            .await
        {
            Ok(()) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => return Err(e),
        }
    }
    join_role(admin, owner).await
}

/// [`join_role`] again before the admin acts on a tenant's objects, for a role that still
/// exists and of which the admin is no longer a member: PostgreSQL ≤ 15 lets a role
/// administer itself, so a tenant connected as its own role can revoke the admin's
/// membership, which would leave the control plane unable to suspend, drop or migrate it.
pub(crate) async fn rejoin_role(
    admin: &tokio_postgres::Client,
    role: &Ident,
) -> Result<(), tokio_postgres::Error> {
    let row = admin
        .query_one(
            "SELECT me.rolsuper,
                    EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
                    EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
                            WHERE r.rolname = $1 AND m.member = me.oid)
             FROM pg_roles me WHERE me.rolname = current_user",
            &[&role.as_str()],
        )
        .await?;
    let (superuser, exists, member): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !superuser && exists && !member {
        tracing::warn!(role = %role.as_str(), "the admin was no longer a member of the tenant role; joined it again");
        admin
            .batch_execute(&format!("GRANT {role} TO CURRENT_USER"))
            .await?;
    }
    Ok(())
}

/// Makes a non-superuser admin (CREATEDB CREATEROLE) a member of `role`, which
/// PostgreSQL requires to act as it: to set it as a database's owner, to `SET ROLE` to
/// it, or to reassign its objects. A superuser needs nothing.
pub(crate) async fn join_role(
    admin: &tokio_postgres::Client,
    role: &Ident,
) -> Result<(), tokio_postgres::Error> {
    let superuser: bool = admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .get(0);
    if !superuser {
        admin
            .batch_execute(&format!("GRANT {role} TO CURRENT_USER"))
            .await?;
    }
    Ok(())
}

//! `tenantry server add|list|show|drain|remove`.

use secrecy::SecretString;
use serde::Serialize;
use tenantry_catalog::server_binding;
use tenantry_types::{Ident, ServerName, ServerState};

use crate::server::{connect, ServerRow, SERVER_COLUMNS};
use crate::{ProvisionError, Provisioner};

/// `server add`'s input.
#[derive(Debug, Clone)]
pub struct AddServer {
    pub name: String,
    pub url: SecretString,
    pub capacity: Option<u32>,
    pub max_connections: Option<u32>,
}

/// A server as `server list|show` and the admin API print it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServerInfo {
    pub name: String,
    pub state: String,
    pub capacity: i32,
    pub max_connections: i32,
    /// Tenants whose database lives there (soft-deleted ones until purged).
    pub tenants: i64,
    pub host: String,
    pub port: u16,
    /// `server show` only: whether tenants can move on and off it online (`yes`), or
    /// not and why (`no: wal_level is replica, not logical`; moves then go offline), or
    /// `unknown: ` and why (it did not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online_moves: Option<String>,
}

/// Tenants that hold a database on a server: everything but failed and purged ones.
pub(crate) const HOLDS_DATABASE: &str = "t.state NOT IN ('failed') AND t.purged_at IS NULL";

impl Provisioner {
    /// Registers a server after checking that it answers and that its role may create
    /// databases and roles.
    pub async fn add_server(&self, req: AddServer) -> Result<ServerInfo, ProvisionError> {
        let name =
            ServerName::parse(&req.name).map_err(|e| ProvisionError::BadInput(e.to_string()))?;
        let config = tenantry_catalog::parse_url(&req.url).map_err(|_| {
            ProvisionError::BadInput(
                "--url must look like postgres://user:password@host:port/database".into(),
            )
        })?;
        // A TCP host, or the folder of a Unix socket for a server on this host
        // (`postgres://user:password@/db?host=/var/run/postgresql`).
        let host =
            match config.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                Some(tokio_postgres::config::Host::Unix(dir))
                    if dir.is_absolute() && dir.to_str().is_some() =>
                {
                    dir.to_string_lossy().into_owned()
                }
                _ => return Err(ProvisionError::BadInput(
                    "--url must name a TCP host, or an absolute Unix socket folder as host=/path"
                        .into(),
                )),
            };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .ok_or_else(|| ProvisionError::BadInput("--url must name a user".into()))?
            .to_owned();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .ok_or_else(|| {
                ProvisionError::BadInput("--url must carry the user's password".into())
            })?;
        let database = config.get_dbname().unwrap_or("postgres").to_owned();
        for (what, value) in [
            ("capacity", req.capacity),
            ("max-connections", req.max_connections),
        ] {
            if value == Some(0) {
                return Err(ProvisionError::BadInput(format!(
                    "--{what} must be at least 1"
                )));
            }
        }

        let mut probe = config.clone();
        probe.connect_timeout(std::time::Duration::from_secs(5));
        let client = connect(&probe, name.as_str()).await?;
        let row = client
            .query_one(
                "SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole,
                        current_setting('max_connections')::int,
                        current_setting('superuser_reserved_connections')::int
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| ProvisionError::server(name.as_str(), "check the admin role", &e))?;
        let (superuser, createdb, createrole): (bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2));
        let may_provision = superuser || (createdb && createrole);
        if !may_provision {
            return Err(ProvisionError::BadInput(format!(
                "role {user:?} on server {name} may not create databases and roles; \
                 run `ALTER ROLE \"{user}\" CREATEDB CREATEROLE` there, or use another role"
            )));
        }
        let server_max: i32 = row.get(3);
        let reserved: i32 = row.get(4);
        // Leave room for the reserved slots and for admin work (provisioning, migrations).
        let default_max = (server_max - reserved - 10).max(1);
        let max_connections = req.max_connections.map_or(default_max, |n| n as i32);
        if max_connections > server_max {
            return Err(ProvisionError::BadInput(format!(
                "--max-connections {max_connections} is more than server {name} allows (max_connections = {server_max})"
            )));
        }
        let capacity = req.capacity.unwrap_or(self.opts.default_capacity) as i32;
        // Before anything is registered: a server whose shared databases stay open to
        // PUBLIC would let every tenant role connect to them.
        let still_open = lock_down(&client, name.as_str(), &[&database, "template1"]).await?;
        if !still_open.is_empty() {
            return Err(still_public(
                name.as_str(),
                &user,
                &still_open,
                "then add the server again (nothing was registered)",
            ));
        }

        let sealed = self
            .sealer
            .seal(password.as_bytes(), &server_binding(&name));
        let catalog = self.catalog.client().await?;
        let inserted = catalog
            .execute(
                "INSERT INTO servers (name, host, port, admin_user, admin_database, admin_password,
                                      key_version, capacity, max_connections)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (name) DO NOTHING",
                &[
                    &name.as_str(),
                    &host,
                    &i32::from(port),
                    &user,
                    &database,
                    &sealed.bytes,
                    &sealed.key_version,
                    &capacity,
                    &max_connections,
                ],
            )
            .await?;
        if inserted == 0 {
            return Err(ProvisionError::Conflict(format!(
                "server {name} already exists; `tenantry server show {name}` shows it"
            )));
        }
        self.lock_down_server(name.as_str()).await?;
        self.show_server(name.as_str()).await
    }

    pub async fn list_servers(&self) -> Result<Vec<ServerInfo>, ProvisionError> {
        self.server_infos(None).await
    }

    pub async fn show_server(&self, name: &str) -> Result<ServerInfo, ProvisionError> {
        let mut info = self
            .server_infos(Some(name))
            .await?
            .pop()
            .ok_or_else(|| not_found(name))?;
        let row = self
            .all_servers()
            .await?
            .into_iter()
            .find(|s| s.name == name);
        if let Some(row) = row {
            let asked =
                tokio::time::timeout(std::time::Duration::from_secs(5), self.can_replicate(&row))
                    .await;
            info.online_moves = Some(match asked {
                Ok(Ok(None)) => "yes".into(),
                Ok(Ok(Some(why))) => format!("no: {why}"),
                Ok(Err(e)) => format!("unknown: {e}"),
                Err(_) => "unknown: it did not answer within 5 s".into(),
            });
        }
        Ok(info)
    }

    async fn server_infos(&self, name: Option<&str>) -> Result<Vec<ServerInfo>, ProvisionError> {
        let client = self.catalog.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT s.name, s.state, s.capacity, s.max_connections, count(t.id), s.host, s.port
                     FROM servers s LEFT JOIN tenants t ON t.server_id = s.id AND {HOLDS_DATABASE}
                     WHERE $1::text IS NULL OR s.name = $1
                     GROUP BY s.id ORDER BY s.name"
                ),
                &[&name],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ServerInfo {
                name: r.get(0),
                state: r.get(1),
                capacity: r.get(2),
                max_connections: r.get(3),
                tenants: r.get(4),
                host: r.get(5),
                port: r.get::<_, i32>(6) as u16,
                online_moves: None,
            })
            .collect())
    }

    /// Whether each server can move tenants online: logical replication needs
    /// `wal_level = logical` and room for a replication slot and a WAL sender. By server
    /// name: `Ok(None)` when it can, `Ok(Some(why not))`, or `Err` when it could not be
    /// asked (each server is asked at most `within`, all at once).
    pub async fn online_move_capability(
        &self,
        within: std::time::Duration,
    ) -> Result<Vec<(String, Result<Option<String>, ProvisionError>)>, ProvisionError> {
        let servers = self.all_servers().await?;
        let asks = servers.iter().map(|server| async move {
            let answer = match tokio::time::timeout(within, self.can_replicate(server)).await {
                Ok(answer) => answer,
                Err(_) => Err(ProvisionError::Conflict(format!(
                    "server {} did not answer within {} ms",
                    server.name,
                    within.as_millis()
                ))),
            };
            (server.name.clone(), answer)
        });
        Ok(futures_util::future::join_all(asks).await)
    }

    /// Why `server` cannot replicate logically (the moves' online path), or `None`
    /// when it can.
    pub(crate) async fn can_replicate(
        &self,
        server: &ServerRow,
    ) -> Result<Option<String>, ProvisionError> {
        let admin = self.admin.get(server).await?;
        let row = admin
            .query_one(
                "SELECT current_setting('wal_level'),
                        current_setting('max_replication_slots')::int,
                        current_setting('max_wal_senders')::int",
                &[],
            )
            .await
            .map_err(|e| {
                ProvisionError::server(&server.name, "read its replication settings", &e)
            })?;
        Ok(replication_gap(row.get(0), row.get(1), row.get(2)))
    }

    /// Stops new placements on `name`; its tenants stay.
    pub async fn drain_server(&self, name: &str) -> Result<ServerInfo, ProvisionError> {
        self.set_server_state(name, ServerState::Draining).await
    }

    /// Takes new placements on `name` again.
    pub async fn activate_server(&self, name: &str) -> Result<ServerInfo, ProvisionError> {
        self.set_server_state(name, ServerState::Active).await
    }

    async fn set_server_state(
        &self,
        name: &str,
        state: ServerState,
    ) -> Result<ServerInfo, ProvisionError> {
        let client = self.catalog.client().await?;
        let n = client
            .execute(
                "UPDATE servers SET state = $2, updated_at = now() WHERE name = $1",
                &[&name, &state.as_str()],
            )
            .await?;
        if n == 0 {
            return Err(not_found(name));
        }
        self.show_server(name).await
    }

    /// Unregisters `name`, dropping its template databases. The server must be drained
    /// first, and hold no tenant database (purge or move them first).
    pub async fn remove_server(&self, name: &str) -> Result<(), ProvisionError> {
        let server = self.server_by_name(name).await?;
        let mut client = self.catalog.client().await?;
        let tx = client.transaction().await?;
        // Under the placement lock: no create can place a tenant here meanwhile.
        lock_placements(&tx).await?;
        let row = tx
            .query_one(
                &format!(
                    "SELECT s.state, count(t.id) FROM servers s
                     LEFT JOIN tenants t ON t.server_id = s.id AND {HOLDS_DATABASE}
                     WHERE s.id = $1 GROUP BY s.id"
                ),
                &[&server.id],
            )
            .await?;
        let (state, tenants): (String, i64) = (row.get(0), row.get(1));
        if state != "draining" {
            return Err(ProvisionError::Conflict(format!(
                "server {name} is {state}; drain it first (`tenantry server drain {name}`) so nothing new lands there"
            )));
        }
        if tenants > 0 {
            return Err(ProvisionError::Conflict(format!(
                "server {name} still holds {tenants} tenant database(s); delete them with --purge first \
                 (`tenantry tenant list` shows them)"
            )));
        }
        let moving: i64 = tx
            .query_one(
                "SELECT count(*) FROM moves WHERE status IN ('running', 'failed')
                   AND $1 IN (source_server_id, target_server_id)",
                &[&server.id],
            )
            .await?
            .get(0);
        if moving > 0 {
            return Err(ProvisionError::Conflict(format!(
                "server {name} has {moving} tenant move(s) under way or unfinished; let them end \
                 (`tenantry reconcile` finishes interrupted ones)"
            )));
        }
        // Source copies that moves keep for the retention period do not hold a server
        // back: removing it drops them now (their rows go with the server's).
        let retained: Vec<(String, String)> = tx
            .query(
                "SELECT database_name, role_name FROM retained_copies
                 WHERE server_id = $1 AND purged_at IS NULL",
                &[&server.id],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let templates: Vec<String> = tx
            .query(
                "SELECT database_name FROM template_databases WHERE server_id = $1",
                &[&server.id],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // Tombstones (purged and failed tenants) keep their rows, without a server.
        tx.execute(
            "UPDATE tenants SET server_id = NULL WHERE server_id = $1",
            &[&server.id],
        )
        .await?;
        tx.execute(
            "UPDATE operations SET server_id = NULL WHERE server_id = $1",
            &[&server.id],
        )
        .await?;
        tx.execute("DELETE FROM servers WHERE id = $1", &[&server.id])
            .await?;
        tx.commit().await?;
        self.admin.forget(server.id);
        if !retained.is_empty() {
            drop_retained(&server, &retained).await;
        }
        if !templates.is_empty() {
            match server.connect(&server.admin_database).await {
                Ok(admin) => {
                    for name in templates {
                        let Ok(db) = Ident::new(name) else { continue };
                        if let Err(e) = crate::templates::drop_template_database(&admin, &db).await
                        {
                            tracing::warn!(server = %server.name, db = %db.as_str(), error = %e, "template database left behind");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(server = %server.name, error = %e, "template databases left behind")
                }
            }
        }
        Ok(())
    }

    /// Takes CONNECT from PUBLIC on the server's shared databases (the admin database
    /// and template1), so a tenant role reaches nothing but its own database; fails,
    /// saying what to run, where PUBLIC may still connect.
    pub async fn lock_down_server(&self, name: &str) -> Result<(), ProvisionError> {
        let server = self.server_by_name(name).await?;
        let admin = self.admin.get(&server).await?;
        let still_open = lock_down(&admin, name, &[&server.admin_database, "template1"]).await?;
        if still_open.is_empty() {
            return Ok(());
        }
        Err(still_public(
            name,
            &server.admin_user,
            &still_open,
            "then run this again",
        ))
    }

    pub(crate) async fn server_by_name(&self, name: &str) -> Result<ServerRow, ProvisionError> {
        let client = self.catalog.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {SERVER_COLUMNS} FROM servers WHERE name = $1"),
                &[&name],
            )
            .await?
            .ok_or_else(|| not_found(name))?;
        ServerRow::from_row(&row, &self.sealer)
    }

    pub(crate) async fn server_by_id(&self, id: i64) -> Result<ServerRow, ProvisionError> {
        let client = self.catalog.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {SERVER_COLUMNS} FROM servers WHERE id = $1"),
                &[&id],
            )
            .await?
            .ok_or_else(|| ProvisionError::NotFound(format!("server #{id} is not registered")))?;
        ServerRow::from_row(&row, &self.sealer)
    }

    pub(crate) async fn all_servers(&self) -> Result<Vec<ServerRow>, ProvisionError> {
        let client = self.catalog.client().await?;
        let rows = client
            .query(
                &format!("SELECT {SERVER_COLUMNS} FROM servers ORDER BY name"),
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| ServerRow::from_row(r, &self.sealer))
            .collect()
    }
}

/// A shared database PUBLIC may still connect to, and its owner.
#[derive(Debug)]
struct OpenDatabase {
    name: String,
    owner: String,
}

/// Revokes CONNECT and TEMPORARY on `databases` from PUBLIC, then reads back which of
/// them PUBLIC may still connect to. PostgreSQL skips a revoke by a role that does not
/// own the database with a mere warning, so only the read-back tells.
async fn lock_down(
    client: &tokio_postgres::Client,
    server: &str,
    databases: &[&str],
) -> Result<Vec<OpenDatabase>, ProvisionError> {
    let mut names: Vec<String> = databases.iter().map(|d| (*d).to_owned()).collect();
    names.dedup();
    for db in &names {
        let Ok(ident) = Ident::new(db.clone()) else {
            continue;
        };
        // A failed or skipped revoke shows in the read-back below.
        if let Err(e) = client
            .batch_execute(&format!(
                "REVOKE CONNECT, TEMPORARY ON DATABASE {ident} FROM PUBLIC"
            ))
            .await
        {
            tracing::debug!(db = %db, error = %crate::error::describe(&e), "revoke from PUBLIC failed");
        }
    }
    // A NULL datacl means the defaults, which grant CONNECT to PUBLIC (grantee 0).
    let rows = client
        .query(
            "SELECT d.datname::text, pg_catalog.pg_get_userbyid(d.datdba)::text
             FROM pg_catalog.pg_database d
             WHERE d.datname::text = ANY($1::text[])
               AND EXISTS (
                   SELECT 1 FROM pg_catalog.aclexplode(
                       coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) a
                   WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT')
             ORDER BY d.datname",
            &[&names],
        )
        .await
        .map_err(|e| ProvisionError::server(server, "check who may connect", &e))?;
    Ok(rows
        .iter()
        .map(|r| OpenDatabase {
            name: r.get(0),
            owner: r.get(1),
        })
        .collect())
}

/// The error for shared databases PUBLIC may still connect to: which, why, and the
/// statements that close them.
fn still_public(server: &str, user: &str, open: &[OpenDatabase], then: &str) -> ProvisionError {
    let which: Vec<String> = open
        .iter()
        .map(|d| format!("{} (owned by {})", quote(&d.name), quote(&d.owner)))
        .collect();
    let statements: Vec<String> = open
        .iter()
        .map(|d| {
            format!(
                "  REVOKE CONNECT ON DATABASE {} FROM PUBLIC;",
                quote(&d.name)
            )
        })
        .collect();
    ProvisionError::BadInput(format!(
        "on server {server}, PUBLIC may still connect to {}: role {} does not own {}, so \
         PostgreSQL skipped the revoke, and every tenant role could connect there. As the \
         owner or a superuser, run:\n{}\n{then}",
        which.join(" and "),
        quote(user),
        if open.len() == 1 { "it" } else { "them" },
        statements.join("\n"),
    ))
}

/// An identifier quoted for SQL text (also for names `Ident` refuses).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn not_found(name: &str) -> ProvisionError {
    ProvisionError::NotFound(format!(
        "server {name:?} is not registered; `tenantry server list` shows the servers"
    ))
}

/// Takes the placement lock for the rest of `tx`: placements (and a server's removal)
/// take turns, so two never both count a server's last slot.
pub(crate) async fn lock_placements(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<(), ProvisionError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('tenantry-placement'))",
        &[],
    )
    .await?;
    Ok(())
}

/// What a server lacks for logical replication (`None`: nothing).
/// Drops the source copies of moved tenants from a server being removed; what cannot
/// be dropped is logged (the server is leaving the fleet either way).
async fn drop_retained(server: &ServerRow, copies: &[(String, String)]) {
    let admin = match server.connect(&server.admin_database).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(server = %server.name, error = %e, "source copies left behind");
            return;
        }
    };
    for (db, role) in copies {
        let (Ok(db), Ok(role)) = (Ident::new(db.clone()), Ident::new(role.clone())) else {
            continue;
        };
        for sql in [
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS {role}"),
        ] {
            if let Err(e) = admin.batch_execute(&sql).await {
                tracing::warn!(server = %server.name, db = %db.as_str(), error = %e, "source copy left behind");
            }
        }
    }
}

fn replication_gap(wal_level: &str, slots: i32, senders: i32) -> Option<String> {
    let mut lacks = Vec::new();
    if wal_level != "logical" {
        lacks.push(format!("wal_level is {wal_level}, not logical"));
    }
    if slots < 1 {
        lacks.push("max_replication_slots is 0".to_owned());
    }
    if senders < 1 {
        lacks.push("max_wal_senders is 0".to_owned());
    }
    (!lacks.is_empty()).then(|| lacks.join("; "))
}

#[cfg(test)]
mod replication_tests {
    use super::replication_gap;

    #[test]
    fn a_server_says_what_it_lacks_for_online_moves() {
        assert_eq!(replication_gap("logical", 10, 10), None);
        assert_eq!(
            replication_gap("replica", 10, 0).as_deref(),
            Some("wal_level is replica, not logical; max_wal_senders is 0")
        );
    }
}

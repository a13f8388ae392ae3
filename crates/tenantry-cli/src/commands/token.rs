use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tenantry_config::Settings;
use tenantry_router::auth::{issue_hs256, Claims};
use uuid::Uuid;

use crate::exit::CliError;
use crate::output::Output;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Sign a token with auth.hs256_secret, or with auth.admin.hs256_secret for --admin
    /// (for development and tests).
    Issue {
        /// The tenant's slug (the `tenant` claim). The token also carries the tenant's id,
        /// read from the catalog (or --tenant-id), so it never reaches a later tenant
        /// with the same slug.
        #[arg(long, required_unless_present = "admin")]
        tenant: Option<String>,
        /// The tenant's id, instead of reading it from the catalog.
        #[arg(long, requires = "tenant")]
        tenant_id: Option<Uuid>,
        /// The user (the `sub` claim).
        #[arg(long)]
        sub: String,
        /// Space-separated scopes.
        #[arg(long)]
        scope: Option<String>,
        /// An admin token (scope "admin"), signed with the admin trust root (auth.admin.*).
        #[arg(long, conflicts_with_all = ["tenant", "tenant_id"])]
        admin: bool,
        /// How long it is valid: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write 90s, 30m, 1h or 7d"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => {
            return Err(format!(
                "{text:?} is not a duration; write 90s, 30m, 1h or 7d"
            ))
        }
    };
    if seconds == 0 {
        return Err("the ttl must be more than zero".into());
    }
    Ok(Duration::from_secs(seconds))
}

fn now_s() -> Result<u64, CliError> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| CliError::failed(anyhow::anyhow!("the clock is before 1970: {e}")))?
        .as_secs())
}

/// A tenant token bound to one incarnation of the slug (its id and `iat`).
pub fn issue(
    settings: &Settings,
    tenant: &str,
    tenant_id: Uuid,
    sub: &str,
    scope: Option<String>,
    ttl: Duration,
) -> Result<String, CliError> {
    let secret = settings.auth.hs256_secret.as_ref().ok_or_else(|| {
        CliError::usage(anyhow::anyhow!(
            "auth.hs256_secret is not set; `token issue` signs with it (tokens for public keys are signed by your identity provider)"
        ))
    })?;
    let now = now_s()?;
    let claims = Claims {
        sub: sub.to_owned(),
        tenant: Some(tenant.to_owned()),
        exp: now + ttl.as_secs(),
        iss: settings.auth.issuer.clone(),
        aud: settings.auth.audience.clone(),
        nbf: None,
        iat: Some(now),
        scope,
        tenant_id: Some(tenant_id),
    };
    issue_hs256(secret, &claims).map_err(CliError::failed)
}

/// An admin token: scope `admin` (plus any asked for), signed with the admin trust root.
pub fn issue_admin(
    settings: &Settings,
    sub: &str,
    scope: Option<String>,
    ttl: Duration,
) -> Result<String, CliError> {
    let admin = &settings.auth.admin;
    let secret = admin.hs256_secret.as_ref().ok_or_else(|| {
        CliError::usage(anyhow::anyhow!(
            "auth.admin.hs256_secret is not set; `token issue --admin` signs with it (admin tokens for public keys are signed by your identity provider)"
        ))
    })?;
    let now = now_s()?;
    let scope = match scope {
        Some(s) if s.split_whitespace().any(|x| x == "admin") => s,
        Some(s) => format!("admin {s}"),
        None => "admin".to_owned(),
    };
    let claims = Claims {
        sub: sub.to_owned(),
        tenant: None,
        exp: now + ttl.as_secs(),
        iss: admin.issuer.clone(),
        aud: admin.audience.clone(),
        nbf: None,
        iat: Some(now),
        scope: Some(scope),
        tenant_id: None,
    };
    issue_hs256(secret, &claims).map_err(CliError::failed)
}

pub async fn run(cmd: Command, settings: Settings, output: Output) -> Result<(), CliError> {
    match cmd {
        Command::Issue {
            tenant,
            tenant_id,
            sub,
            scope,
            admin,
            ttl,
        } => {
            let token = match tenant {
                None if admin => issue_admin(&settings, &sub, scope, ttl)?,
                None => {
                    return Err(CliError::usage(anyhow::anyhow!(
                        "give --tenant SLUG, or --admin for an admin token"
                    )))
                }
                Some(tenant) => {
                    if tenantry_types::Slug::parse(&tenant).is_err() {
                        return Err(CliError::usage(anyhow::anyhow!(
                            "--tenant {tenant:?} is not a tenant slug"
                        )));
                    }
                    let id = match tenant_id {
                        Some(id) => id,
                        None => {
                            let provisioner = crate::context::provisioner(&settings).await?;
                            provisioner.show_tenant(&tenant).await?.id
                        }
                    };
                    issue(&settings, &tenant, id, &sub, scope, ttl)?
                }
            };
            output.print(&serde_json::json!({"token": token}), || {
                format!("{token}\n")
            });
            Ok(())
        }
    }
}

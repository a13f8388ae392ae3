use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tenantry_config::Settings;
use tenantry_router::auth::{issue_hs256, Claims};

use crate::exit::CliError;
use crate::output::Output;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Sign a token with auth.hs256_secret (for development and tests).
    Issue {
        /// The tenant's slug (the `tenant` claim).
        #[arg(long)]
        tenant: String,
        /// The user (the `sub` claim).
        #[arg(long)]
        sub: String,
        /// Space-separated scopes, e.g. "admin".
        #[arg(long)]
        scope: Option<String>,
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

pub fn issue(
    settings: &Settings,
    tenant: &str,
    sub: &str,
    scope: Option<String>,
    ttl: Duration,
) -> Result<String, CliError> {
    let secret = settings.auth.hs256_secret.as_ref().ok_or_else(|| {
        CliError::usage(anyhow::anyhow!(
            "auth.hs256_secret is not set; `token issue` signs with it (tokens for public keys are signed by your identity provider)"
        ))
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| CliError::failed(anyhow::anyhow!("the clock is before 1970: {e}")))?
        .as_secs();
    let claims = Claims {
        sub: sub.to_owned(),
        tenant: Some(tenant.to_owned()),
        exp: now + ttl.as_secs(),
        iss: settings.auth.issuer.clone(),
        aud: settings.auth.audience.clone(),
        nbf: None,
        iat: Some(now),
        scope,
    };
    issue_hs256(secret, &claims).map_err(CliError::failed)
}

pub fn run(cmd: Command, settings: Settings, output: Output) -> Result<(), CliError> {
    match cmd {
        Command::Issue {
            tenant,
            sub,
            scope,
            ttl,
        } => {
            if tenantry_types::Slug::parse(&tenant).is_err() && tenant != "*" {
                return Err(CliError::usage(anyhow::anyhow!(
                    "--tenant {tenant:?} is not a tenant slug"
                )));
            }
            let token = issue(&settings, &tenant, &sub, scope, ttl)?;
            output.print(&serde_json::json!({"token": token}), || {
                format!("{token}\n")
            });
            Ok(())
        }
    }
}

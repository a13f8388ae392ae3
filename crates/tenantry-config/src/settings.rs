use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tenantry_types::{Agent, Plan};

use crate::ConfigError;

/// All of Tenantry's settings, validated.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// The environment's name (`dev`, `test`, `production`, …); set by the loader.
    #[serde(skip)]
    pub env: String,
    pub catalog: CatalogSettings,
    pub http: HttpSettings,
    pub auth: AuthSettings,
    #[serde(default)]
    pub secrets: SecretsSettings,
    pub templates: TemplatesSettings,
    #[serde(default)]
    pub plans: BTreeMap<String, PlanOverride>,
    pub provision: ProvisionSettings,
    pub router: RouterSettings,
    pub migrate: MigrateSettings,
    pub dev: DevSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RouterSettings {
    pub cache_ttl_s: u64,
    pub negative_ttl_s: u64,
    pub pool_wait_ms: u64,
    pub pool_connect_ms: u64,
    /// How long a request waiting for a connection of a contended server lets requests
    /// of a higher plan priority go first, at most (0: arrival order). Below
    /// `pool_wait_ms`, so a lower priority is served before its deadline.
    pub priority_max_defer_ms: u64,
    /// The most tenant sessions this router starts at once on one server (0: no limit).
    pub connects_at_once: usize,
    /// How long a request of a tenant whose move is cutting over waits for the flip
    /// before it is told to come back (503 `tenant_moving`).
    pub cutover_hold_ms: u64,
    pub idle_timeout_s: u64,
    pub pool_idle_s: u64,
    pub heartbeat_s: u64,
    pub min_schema_version: i32,
    pub sql_statement_timeout_ms: u64,
    pub sql_row_cap: usize,
    /// The most result bytes one `/v1/sql` request brings back (then 422 `result_too_large`).
    pub sql_max_result_bytes: usize,
    /// How often a router adds its request and task counts to the catalog.
    pub usage_flush_ms: u64,
    /// How often the business figures of `/metrics` are read from the catalog.
    pub business_refresh_s: u64,
}

/// `tenantry migrate run`'s defaults (its flags override the first two).
#[derive(Debug, Clone, Deserialize)]
pub struct MigrateSettings {
    pub concurrency: usize,
    pub per_server: usize,
    pub lock_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub lock_retries: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProvisionSettings {
    pub retention_hours: u64,
    pub statement_timeout_ms: u64,
    pub idle_in_transaction_timeout_ms: u64,
    pub create_strategy: CreateStrategy,
    pub default_capacity: u32,
}

/// How `CREATE DATABASE … TEMPLATE` copies the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateStrategy {
    WalLog,
    FileCopy,
}

impl CreateStrategy {
    pub fn as_sql(self) -> &'static str {
        match self {
            Self::WalLog => "WAL_LOG",
            Self::FileCopy => "FILE_COPY",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogSettings {
    /// The catalog database; holds a password, hence secret.
    pub url: Option<SecretString>,
    pub url_file: Option<PathBuf>,
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub bind: SocketAddr,
    /// When set, `/metrics` is served here only (not on `bind`).
    #[serde(default)]
    pub metrics_bind: Option<SocketAddr>,
    pub max_body_bytes: usize,
    pub shutdown_timeout_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub hs256_secret: Option<SecretString>,
    pub hs256_secret_file: Option<PathBuf>,
    /// `kid` → PEM public key.
    #[serde(default)]
    pub public_keys: BTreeMap<String, String>,
    /// The admin API's own trust root: no tenant-side token is ever an admin token.
    #[serde(default)]
    pub admin: AdminAuthSettings,
}

/// `auth.admin.*`: who may sign admin tokens. Unset keys leave the admin API closed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AdminAuthSettings {
    pub issuer: String,
    pub audience: String,
    pub hs256_secret: Option<SecretString>,
    pub hs256_secret_file: Option<PathBuf>,
    pub public_keys: BTreeMap<String, String>,
}

impl Default for AdminAuthSettings {
    fn default() -> Self {
        Self {
            issuer: "tenantry-admin".into(),
            audience: "tenantry-admin-api".into(),
            hs256_secret: None,
            hs256_secret_file: None,
            public_keys: BTreeMap::new(),
        }
    }
}

impl AdminAuthSettings {
    /// Whether any admin key is configured (otherwise the admin API refuses every token).
    pub fn is_configured(&self) -> bool {
        self.hs256_secret.is_some() || !self.public_keys.is_empty()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SecretsSettings {
    /// 32 bytes, base64: encrypts stored database credentials.
    pub master_key: Option<SecretString>,
    pub master_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TemplatesSettings {
    pub dir: PathBuf,
    /// The template of tenants created without `--template`.
    pub default: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DevSettings {
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `plans.<name>.*`: fields that replace the built-in plan's. A plan that is not
/// built in must give them all but `price_cents` and `priority` (0 unless given).
/// `tasks_per_month = -1` is unlimited.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanOverride {
    pub tasks_per_month: Option<i64>,
    pub requests_per_minute: Option<u32>,
    pub agents: Option<Vec<String>>,
    pub api_access: Option<bool>,
    pub pool_size: Option<u32>,
    pub price_cents: Option<u32>,
    pub priority: Option<u8>,
}

/// The 32-byte key that encrypts stored credentials.
#[derive(Clone)]
pub struct MasterKey(pub [u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

impl Settings {
    /// Whether this environment tolerates development secrets and the embedded catalog.
    pub fn is_development(&self) -> bool {
        matches!(self.env.as_str(), "dev" | "test")
    }

    /// The decoded master key. Validation has checked it when present.
    pub fn master_key(&self) -> Option<MasterKey> {
        self.secrets
            .master_key
            .as_ref()
            .and_then(|k| decode_key(k.expose_secret()).ok())
            .map(MasterKey)
    }

    /// The plan table: the built-in plans with `plans.*` applied.
    pub fn plans(&self) -> Result<Vec<Plan>, ConfigError> {
        let mut plans = Plan::defaults();
        for (name, o) in &self.plans {
            let key = |field: &str| format!("plans.{name}.{field}");
            let index = match plans.iter().position(|p| &p.name == name) {
                Some(i) => i,
                None => {
                    let missing = [
                        ("tasks_per_month", o.tasks_per_month.is_none()),
                        ("requests_per_minute", o.requests_per_minute.is_none()),
                        ("agents", o.agents.is_none()),
                        ("api_access", o.api_access.is_none()),
                        ("pool_size", o.pool_size.is_none()),
                    ];
                    if let Some((field, _)) = missing.iter().find(|(_, m)| *m) {
                        return Err(ConfigError::invalid(
                            key(field),
                            format!("plan {name:?} is not built in (free, pro, enterprise), so it must set every field"),
                        ));
                    }
                    if tenantry_types::Slug::parse(name).is_err() {
                        return Err(ConfigError::invalid(
                            format!("plans.{name}"),
                            "a plan name is 2 to 40 lowercase letters, digits or '-', starting with a letter",
                        ));
                    }
                    plans.push(Plan {
                        name: name.clone(),
                        tasks_per_month: None,
                        requests_per_minute: 0,
                        agents: Vec::new(),
                        api_access: false,
                        pool_size: 1,
                        price_cents: 0,
                        priority: 0,
                    });
                    plans.len() - 1
                }
            };
            let plan = &mut plans[index];
            if let Some(n) = o.tasks_per_month {
                plan.tasks_per_month = match n {
                    -1 => None,
                    n if n >= 0 && n <= u32::MAX as i64 => Some(n as u32),
                    _ => {
                        return Err(ConfigError::invalid(
                            key("tasks_per_month"),
                            "use a count of 0 or more, or -1 for unlimited",
                        ))
                    }
                };
            }
            if let Some(n) = o.requests_per_minute {
                if n == 0 {
                    return Err(ConfigError::invalid(
                        key("requests_per_minute"),
                        "must be at least 1",
                    ));
                }
                plan.requests_per_minute = n;
            }
            if let Some(agents) = &o.agents {
                plan.agents = agents
                    .iter()
                    .map(|a| a.parse::<Agent>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| ConfigError::invalid(key("agents"), e.to_string()))?;
            }
            if let Some(b) = o.api_access {
                plan.api_access = b;
            }
            if let Some(n) = o.pool_size {
                if !(1..=100).contains(&n) {
                    return Err(ConfigError::invalid(
                        key("pool_size"),
                        "use 1 to 100 connections",
                    ));
                }
                plan.pool_size = n;
            }
            if let Some(n) = o.price_cents {
                if n > i32::MAX as u32 {
                    return Err(ConfigError::invalid(
                        key("price_cents"),
                        "use a monthly price in cents below 2^31",
                    ));
                }
                plan.price_cents = n;
            }
            if let Some(n) = o.priority {
                if n > tenantry_types::MAX_PRIORITY {
                    return Err(ConfigError::invalid(
                        key("priority"),
                        "use 0 (served last) to 9 (served first)",
                    ));
                }
                plan.priority = n;
            }
        }
        Ok(plans)
    }

    pub(crate) fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        resolve(&mut self.catalog.url, &self.catalog.url_file, "catalog.url")?;
        resolve(
            &mut self.auth.hs256_secret,
            &self.auth.hs256_secret_file,
            "auth.hs256_secret",
        )?;
        resolve(
            &mut self.auth.admin.hs256_secret,
            &self.auth.admin.hs256_secret_file,
            "auth.admin.hs256_secret",
        )?;
        resolve(
            &mut self.secrets.master_key,
            &self.secrets.master_key_file,
            "secrets.master_key",
        )
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.catalog.url {
            check_postgres_url(url.expose_secret())
                .map_err(|p| ConfigError::invalid("catalog.url", p))?;
        }
        if self.catalog.pool_size == 0 {
            return Err(ConfigError::invalid(
                "catalog.pool_size",
                "must be at least 1",
            ));
        }
        if self.http.max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                "must be at least 1024",
            ));
        }
        for (key, value) in [
            ("auth.issuer", &self.auth.issuer),
            ("auth.audience", &self.auth.audience),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::invalid(key, "must not be empty"));
            }
        }
        if let Some(secret) = &self.auth.hs256_secret {
            if secret.expose_secret().len() < 32 {
                return Err(ConfigError::invalid(
                    "auth.hs256_secret",
                    "must be at least 32 bytes; generate one with `openssl rand -base64 48`",
                ));
            }
        }
        for (kid, pem) in &self.auth.public_keys {
            if kid.is_empty() || !pem.contains("-----BEGIN PUBLIC KEY-----") {
                return Err(ConfigError::invalid(
                    format!("auth.public_keys.{kid}"),
                    "must be a PEM public key (-----BEGIN PUBLIC KEY-----)",
                ));
            }
        }
        self.validate_admin_auth()?;
        if let Some(key) = &self.secrets.master_key {
            decode_key(key.expose_secret())
                .map_err(|p| ConfigError::invalid("secrets.master_key", p))?;
        }
        for (key, value) in [
            ("router.pool_wait_ms", self.router.pool_wait_ms),
            ("router.cutover_hold_ms", self.router.cutover_hold_ms),
            ("router.pool_connect_ms", self.router.pool_connect_ms),
            ("router.heartbeat_s", self.router.heartbeat_s),
            ("router.usage_flush_ms", self.router.usage_flush_ms),
            ("router.business_refresh_s", self.router.business_refresh_s),
            (
                "router.sql_statement_timeout_ms",
                self.router.sql_statement_timeout_ms,
            ),
            ("migrate.concurrency", self.migrate.concurrency as u64),
            ("migrate.per_server", self.migrate.per_server as u64),
            ("migrate.lock_timeout_ms", self.migrate.lock_timeout_ms),
            (
                "migrate.statement_timeout_ms",
                self.migrate.statement_timeout_ms,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if self.router.priority_max_defer_ms >= self.router.pool_wait_ms {
            return Err(ConfigError::invalid(
                "router.priority_max_defer_ms",
                format!(
                    "must be below router.pool_wait_ms ({} ms), or a lower plan could wait past its deadline",
                    self.router.pool_wait_ms
                ),
            ));
        }
        if self.router.sql_max_result_bytes < 1024 {
            return Err(ConfigError::invalid(
                "router.sql_max_result_bytes",
                "must be at least 1024",
            ));
        }
        if self.router.sql_row_cap == 0 {
            return Err(ConfigError::invalid(
                "router.sql_row_cap",
                "must be at least 1",
            ));
        }
        if self.provision.default_capacity == 0 {
            return Err(ConfigError::invalid(
                "provision.default_capacity",
                "must be at least 1",
            ));
        }
        if self.templates.default.is_empty() {
            return Err(ConfigError::invalid(
                "templates.default",
                "must name a template folder",
            ));
        }
        if self.log.level.trim().is_empty() {
            return Err(ConfigError::invalid(
                "log.level",
                "must not be empty; e.g. \"info\"",
            ));
        }
        self.plans()?;
        if !self.is_development() {
            self.validate_production()?;
        }
        Ok(())
    }

    /// The admin trust root is separate from the tenants': its own audience, its own
    /// secret and keys, so that no token a tenant-side issuer signs can pass as an admin's.
    fn validate_admin_auth(&self) -> Result<(), ConfigError> {
        let (tenant, admin) = (&self.auth, &self.auth.admin);
        for (key, value) in [
            ("auth.admin.issuer", &admin.issuer),
            ("auth.admin.audience", &admin.audience),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::invalid(key, "must not be empty"));
            }
        }
        if admin.audience == tenant.audience {
            return Err(ConfigError::invalid(
                "auth.admin.audience",
                "must differ from auth.audience: admin tokens and tenant tokens are for different audiences",
            ));
        }
        if let Some(secret) = &admin.hs256_secret {
            if secret.expose_secret().len() < 32 {
                return Err(ConfigError::invalid(
                    "auth.admin.hs256_secret",
                    "must be at least 32 bytes; generate one with `openssl rand -base64 48`",
                ));
            }
            if tenant
                .hs256_secret
                .as_ref()
                .is_some_and(|t| t.expose_secret() == secret.expose_secret())
            {
                return Err(ConfigError::invalid(
                    "auth.admin.hs256_secret",
                    "must differ from auth.hs256_secret: whoever signs tenant tokens must not be able to sign admin tokens",
                ));
            }
        }
        for (kid, pem) in &admin.public_keys {
            if kid.is_empty() || !pem.contains("-----BEGIN PUBLIC KEY-----") {
                return Err(ConfigError::invalid(
                    format!("auth.admin.public_keys.{kid}"),
                    "must be a PEM public key (-----BEGIN PUBLIC KEY-----)",
                ));
            }
            if tenant.public_keys.values().any(|t| t.trim() == pem.trim()) {
                return Err(ConfigError::invalid(
                    format!("auth.admin.public_keys.{kid}"),
                    "is also a tenant token key (auth.public_keys): admin tokens need keys of their own",
                ));
            }
        }
        Ok(())
    }

    /// Outside dev and test: every secret present, none of them a development one.
    fn validate_production(&self) -> Result<(), ConfigError> {
        let env = &self.env;
        if self.catalog.url.is_none() {
            return Err(ConfigError::invalid(
                "catalog.url",
                format!("is required under TENANTRY_ENV={env}: set TENANTRY__CATALOG__URL or catalog.url_file"),
            ));
        }
        if self.auth.hs256_secret.is_none() && self.auth.public_keys.is_empty() {
            return Err(ConfigError::invalid(
                "auth.hs256_secret",
                format!("no token key under TENANTRY_ENV={env}: set TENANTRY__AUTH__HS256_SECRET (or _FILE), or auth.public_keys"),
            ));
        }
        if self.secrets.master_key.is_none() {
            return Err(ConfigError::invalid(
                "secrets.master_key",
                format!("is required under TENANTRY_ENV={env}: set TENANTRY__SECRETS__MASTER_KEY (or _FILE) to 32 random bytes in base64 (`openssl rand -base64 32`)"),
            ));
        }
        let dev = crate::development_secrets();
        for (key, secret) in [
            ("auth.hs256_secret", &self.auth.hs256_secret),
            ("auth.admin.hs256_secret", &self.auth.admin.hs256_secret),
            ("secrets.master_key", &self.secrets.master_key),
        ] {
            if secret
                .as_ref()
                .is_some_and(|s| dev.iter().any(|d| d == s.expose_secret()))
            {
                return Err(ConfigError::invalid(
                    key,
                    format!("is the public development secret; refusing to start under TENANTRY_ENV={env}. Generate a real one and set it in the environment"),
                ));
            }
        }
        Ok(())
    }
}

fn resolve(
    value: &mut Option<SecretString>,
    file: &Option<PathBuf>,
    key: &str,
) -> Result<(), ConfigError> {
    let Some(path) = file else {
        return Ok(());
    };
    if value.is_some() {
        return Err(ConfigError::invalid(
            key,
            format!("is set both directly and through {key}_file; keep one"),
        ));
    }
    let text =
        read_secret_file(path).map_err(|e| ConfigError::invalid(format!("{key}_file"), e))?;
    *value = Some(SecretString::from(text));
    Ok(())
}

fn read_secret_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.trim_end_matches(['\n', '\r']).to_owned();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(text)
}

fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "must be base64 (`openssl rand -base64 32` makes one)".to_owned())?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("must decode to exactly 32 bytes, not {}", b.len()))
}

/// A `postgres://` URL as libpq takes it: `postgres://user:password@host[:port][,host[:port]…]/db?…`
/// (several hosts for a primary and its standbys, with `target_session_attrs=read-write`).
fn check_postgres_url(text: &str) -> Result<(), String> {
    // Never echo the URL: it holds a password.
    let rest = text
        .strip_prefix("postgres://")
        .or_else(|| text.strip_prefix("postgresql://"))
        .ok_or("must start with postgres:// or postgresql://")?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hosts.is_empty() {
        return Err("has no host".into());
    }
    for host in hosts.split(',') {
        let (name, port) = match host.strip_prefix('[') {
            // [IPv6]:port
            Some(v6) => {
                let (name, after) = v6.split_once(']').ok_or("has an unclosed [ in a host")?;
                (name, after.strip_prefix(':'))
            }
            None => match host.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host, None),
            },
        };
        if name.is_empty() {
            return Err("has an empty host".into());
        }
        if let Some(port) = port {
            if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                return Err("has a port that is not a number from 1 to 65535".into());
            }
        }
    }
    Ok(())
}

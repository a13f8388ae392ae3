//! Tenantry's settings.
//!
//! Layers, each over the one before: `config/default.toml`, `config/$TENANTRY_ENV.toml`
//! (`dev` when unset), the `--config FILE`, then `TENANTRY__SECTION__KEY` environment
//! variables. The four files of `config/` are compiled in, so the binary runs anywhere;
//! a file of the same name in the config folder (`./config`, or `$TENANTRY_CONFIG_DIR`)
//! replaces the compiled-in one.
//!
//! Secrets ([`SecretString`]) print as `[REDACTED]`. Each can also come from a file
//! (`catalog.url_file`, `auth.hs256_secret_file`, `auth.admin.hs256_secret_file`,
//! `secrets.master_key_file`). Outside
//! `dev` and `test`, a missing secret or one copied from the development files refuses
//! to start.

mod settings;

pub use secrecy::{ExposeSecret, SecretString};
pub use settings::{
    AdminAuthSettings, AuthSettings, CatalogSettings, CreateStrategy, DevSettings, HttpSettings,
    LogFormat, LogSettings, MasterKey, PlanOverride, ProvisionSettings, RouterSettings,
    SecretsSettings, Settings, TemplatesSettings,
};

use std::collections::HashMap;
use std::path::PathBuf;

/// Why settings could not be loaded. Every message names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration file {path} does not exist (given with --config)")]
    MissingFile { path: PathBuf },
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
    #[error("TENANTRY_ENV={0:?} is not a valid environment name: use lowercase letters, e.g. dev, test, production")]
    BadEnvironment(String),
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Where settings come from. [`LoadOptions::from_process`] reads the real process
/// environment; tests build one by hand.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The environment's name; `TENANTRY_ENV`, else `dev`.
    pub env: Option<String>,
    /// The folder with `<env>.toml` files; `TENANTRY_CONFIG_DIR`, else `./config`.
    pub config_dir: Option<PathBuf>,
    /// One more file, after the environment's (`--config FILE`).
    pub extra_file: Option<PathBuf>,
    /// The `TENANTRY__…` variables; `None` reads the process environment.
    pub vars: Option<HashMap<String, String>>,
}

impl LoadOptions {
    pub fn from_process(extra_file: Option<PathBuf>) -> Self {
        Self {
            env: std::env::var("TENANTRY_ENV").ok().filter(|e| !e.is_empty()),
            config_dir: std::env::var_os("TENANTRY_CONFIG_DIR").map(PathBuf::from),
            extra_file,
            vars: None,
        }
    }
}

const EMBEDDED: &[(&str, &str)] = &[
    ("default", include_str!("../../../config/default.toml")),
    ("dev", include_str!("../../../config/dev.toml")),
    ("test", include_str!("../../../config/test.toml")),
    (
        "production",
        include_str!("../../../config/production.toml"),
    ),
];

/// Loads and validates settings.
pub fn load(opts: &LoadOptions) -> Result<Settings, ConfigError> {
    let env = opts.env.clone().unwrap_or_else(|| "dev".to_owned());
    if env.is_empty() || !env.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(ConfigError::BadEnvironment(env));
    }
    let dir = opts
        .config_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("config"));
    let mut builder = config::Config::builder();
    for name in ["default", env.as_str()] {
        builder = builder.add_source(layer(&dir, name));
    }
    if let Some(path) = &opts.extra_file {
        if !path.is_file() {
            return Err(ConfigError::MissingFile { path: path.clone() });
        }
        builder = builder.add_source(config::File::from(path.as_path()).required(true));
    }
    let mut vars = config::Environment::with_prefix("TENANTRY")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true);
    if let Some(map) = &opts.vars {
        vars = vars.source(Some(map.clone().into_iter().collect()));
    }
    let raw = builder.add_source(vars).build()?;
    let mut settings: Settings = raw.try_deserialize()?;
    settings.env = env;
    settings.resolve_secret_files()?;
    settings.validate()?;
    Ok(settings)
}

/// `<dir>/<name>.toml` when present, the compiled-in file of that name otherwise.
fn layer(
    dir: &std::path::Path,
    name: &str,
) -> config::File<config::FileSourceString, config::FileFormat> {
    let on_disk = dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&on_disk).ok().or_else(|| {
        EMBEDDED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| (*t).to_owned())
    });
    config::File::from_str(&text.unwrap_or_default(), config::FileFormat::Toml)
}

/// The secrets of the compiled-in `dev` and `test` files: public, so never fit for production.
pub(crate) fn development_secrets() -> Vec<String> {
    EMBEDDED
        .iter()
        .filter(|(name, _)| matches!(*name, "dev" | "test"))
        .flat_map(|(_, text)| {
            text.lines().filter_map(|line| {
                let (key, value) = line.split_once('=')?;
                let key = key.trim();
                matches!(key, "hs256_secret" | "master_key")
                    .then(|| value.trim().trim_matches('"').to_owned())
            })
        })
        .collect()
}

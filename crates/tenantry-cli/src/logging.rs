use tenantry_config::{LogFormat, Settings};
use tracing_subscriber::EnvFilter;

/// Logs to stderr: readable text locally, JSON in production. `RUST_LOG` overrides `log.level`.
pub fn init(settings: &Settings) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => EnvFilter::try_new(&value)
            .map_err(|e| anyhow::anyhow!("RUST_LOG={value:?} is not a valid log filter: {e}"))?,
        _ => EnvFilter::try_new(&settings.log.level).map_err(|e| {
            anyhow::anyhow!(
                "configuration key `log.level`: {:?} is not a valid log filter: {e}",
                settings.log.level
            )
        })?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
    Ok(())
}

//! Helpers for Tenantry's benchmarks: latency summaries, a printed table, a JSON file.
//! Benchmarks measure; they never assert on time.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Latencies of one scenario, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub count: usize,
    pub total_ms: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Summarises `samples`, taken over `wall` of wall-clock time.
    pub fn new(scenario: impl Into<String>, samples: &[Duration], wall: Duration) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            if ms.is_empty() {
                0.0
            } else {
                // Nearest rank.
                let rank = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
                ms[rank - 1]
            }
        };
        Self {
            scenario: scenario.into(),
            count: ms.len(),
            total_ms: wall.as_secs_f64() * 1000.0,
            per_second: if wall.is_zero() {
                0.0
            } else {
                ms.len() as f64 / wall.as_secs_f64()
            },
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }
}

/// A ratio between two scenarios of the same run: one value, or the median of rounds
/// with their range.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratio {
    pub name: String,
    pub value: f64,
    pub meaning: String,
    /// The lowest and highest round, when `value` is a median of rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<(f64, f64)>,
    /// Each round's value, in the order they ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<f64>,
    /// What `value` counts, when it is a figure of its own rather than a ratio ("ms").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

impl Ratio {
    /// The median of `rounds` (the upper one of an even count), with their range.
    pub fn of_rounds(name: impl Into<String>, rounds: &[f64], meaning: impl Into<String>) -> Self {
        let mut sorted = rounds.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            name: name.into(),
            value: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
            meaning: meaning.into(),
            range: sorted.first().zip(sorted.last()).map(|(a, b)| (*a, *b)),
            rounds: rounds.to_vec(),
            unit: None,
        }
    }

    /// The figure is counted in `unit`, not a ratio.
    pub fn in_unit(mut self, unit: &str) -> Self {
        self.unit = Some(unit.into());
        self
    }
}

/// The median and range of `values`, as `median [min–max]` with one decimal.
pub fn spread(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values.sort_by(f64::total_cmp);
    format!(
        "{:.1} [{:.1}–{:.1}]",
        values[values.len() / 2],
        values[0],
        values[values.len() - 1]
    )
}

/// What a benchmark found, printed and written to `target/bench/<name>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub notes: Vec<String>,
    pub scenarios: Vec<Summary>,
    pub ratios: Vec<Ratio>,
}

impl Report {
    pub fn print_and_save(&self) {
        println!("\n== {} ==", self.name);
        for note in &self.notes {
            println!("  {note}");
        }
        println!(
            "\n  {:<44} {:>6} {:>10} {:>9} {:>9} {:>9}",
            "scenario", "n", "per s", "p50 ms", "p99 ms", "max ms"
        );
        for s in &self.scenarios {
            println!(
                "  {:<44} {:>6} {:>10.1} {:>9.1} {:>9.1} {:>9.1}",
                s.scenario, s.count, s.per_second, s.p50_ms, s.p99_ms, s.max_ms
            );
        }
        if !self.ratios.is_empty() {
            println!();
            for r in &self.ratios {
                let range = r
                    .range
                    .map(|(lo, hi)| format!(" [{lo:.2}–{hi:.2}]"))
                    .unwrap_or_default();
                let unit = r.unit.as_deref().map_or("x".into(), |u| format!(" {u}"));
                println!(
                    "  {:<44} {:>6.2}{unit}{range}  {}",
                    r.name, r.value, r.meaning
                );
            }
        }
        let dir = target_dir().join("bench");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{}.json", self.name));
        match serde_json::to_string_pretty(self) {
            Ok(text) if std::fs::write(&path, &text).is_ok() => {
                println!("\n  written to {}", path.display())
            }
            _ => eprintln!("could not write {}", path.display()),
        }
    }
}

/// A catalog on `pg`, migrated, with one registered server (`bench`, the same cluster):
/// what every benchmark of the control plane starts from.
pub struct Deployment {
    pub settings: tenantry_config::Settings,
    pub catalog_url: secrecy::SecretString,
    pub catalog: tenantry_catalog::Catalog,
    pub sealer: tenantry_catalog::Sealer,
    pub provisioner: tenantry_provision::Provisioner,
}

impl Deployment {
    /// The test environment's settings with `vars` over them; templates from
    /// `templates_dir`; the server registered with `max_connections`.
    pub async fn new(
        pg: &tenantry_testkit::TestCluster,
        vars: &[(&str, &str)],
        templates_dir: PathBuf,
        max_connections: u32,
    ) -> Self {
        use secrecy::SecretString;
        pg.create_database("catalog").await;
        let catalog_url = SecretString::from(pg.url("catalog"));
        tenantry_catalog::migrate(&catalog_url)
            .await
            .expect("catalog migrated");
        let catalog = tenantry_catalog::Catalog::new(&catalog_url, 16, Duration::from_secs(5))
            .expect("catalog pool");
        let mut all: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all.insert("TENANTRY__CATALOG__URL".into(), pg.url("catalog"));
        let settings = tenantry_config::load(&tenantry_config::LoadOptions {
            env: Some("test".into()),
            config_dir: Some("/nonexistent".into()),
            extra_file: None,
            vars: Some(all),
        })
        .expect("settings");
        catalog
            .sync_plans(&settings.plans().expect("plans"))
            .await
            .expect("plans written");
        let sealer =
            tenantry_catalog::Sealer::new(1, &settings.master_key().expect("master key").0);
        let mut opts = tenantry_provision::ProvisionOptions::from_settings(&settings);
        opts.templates_dir = templates_dir;
        let provisioner =
            tenantry_provision::Provisioner::new(catalog.clone(), sealer.clone(), opts)
                .expect("provisioner");
        provisioner
            .add_server(tenantry_provision::AddServer {
                name: "bench".into(),
                url: SecretString::from(pg.url("postgres")),
                capacity: Some(5000),
                max_connections: Some(max_connections),
            })
            .await
            .expect("server added");
        Self {
            settings,
            catalog_url,
            catalog,
            sealer,
            provisioner,
        }
    }
}

/// A router over a deployment, in this process, on a free loopback port.
pub struct Served {
    pub addr: std::net::SocketAddr,
    pub handle: actix_web::dev::ServerHandle,
    pub resolver: std::sync::Arc<tenantry_router::resolve::Resolver>,
    pub pools: tenantry_pools::Pools,
    pub background: tenantry_router::Background,
}

impl Served {
    /// `http://` and the router's address.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server, then its background work.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        self.background.stop().await;
    }
}

impl Deployment {
    /// Starts a router over this deployment with `workers` HTTP workers.
    pub async fn serve(&self, workers: usize) -> Served {
        let (state, background) = tenantry_router::AppState::start(
            &self.settings,
            self.catalog.clone(),
            self.catalog_url.clone(),
            self.sealer.clone(),
            self.provisioner.clone(),
        )
        .await
        .expect("router state");
        let (resolver, pools) = (state.resolver.clone(), state.pools.clone());
        let router = tenantry_router::start(
            &tenantry_router::RouterOptions {
                bind: "127.0.0.1:0".parse().expect("an address"),
                max_body_bytes: 262_144,
                shutdown_timeout: Duration::from_secs(5),
                workers: Some(workers),
                metrics_bind: None,
            },
            state,
        )
        .expect("router started");
        let handle = router.handle.clone();
        tokio::spawn(router.server);
        Served {
            addr: router.addr,
            handle,
            resolver,
            pools,
            background,
        }
    }
}

/// The repository's tenant templates.
pub fn templates_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tenant-templates")
}

/// Runs a benchmark on a multi-threaded runtime, then prints and saves its report.
pub fn main(bench: impl std::future::Future<Output = Report>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench).print_and_save();
}

/// `target/`, found from the running benchmark binary (`target/<profile>/deps/<bench>`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent()?.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::new("x", &samples, Duration::from_secs(2));
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(s.per_second, 50.0);
        let empty = Summary::new("none", &[], Duration::ZERO);
        assert_eq!((empty.count, empty.p50_ms, empty.per_second), (0, 0.0, 0.0));
    }
}

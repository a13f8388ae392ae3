//! Throwaway PostgreSQL clusters for tests and benchmarks.
//!
//! ```no_run
//! # async fn demo() {
//! let pg = tenantry_testkit::TestCluster::start();
//! let client = pg.connect("postgres").await;
//! client.execute("SELECT 1", &[]).await.unwrap();
//! # }
//! ```
//!
//! Each cluster lives in a fresh temporary folder (in `/dev/shm` when there is one) on
//! a free loopback port, with fsync off. Dropping it stops the server and removes the folder; if the test process dies
//! first (a panic that aborts, `exit`, `kill -9`), the cluster's watchdog does the same.
//! The first cluster of a build runs `initdb` once into `target/<profile>/tenantry-testkit/`;
//! every later one is a copy of that, which takes a fraction of the time.

pub mod proxy;
mod sessions;

pub use sessions::{SessionPeak, Sessions};

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tenantry_embedded::{Cluster, ClusterOptions, Durability, OnExit, PgBinaries};

/// A running throwaway cluster. Derefs to [`Cluster`] for its port, URL and password.
#[derive(Debug)]
pub struct TestCluster {
    cluster: Cluster,
}

impl TestCluster {
    /// Starts a new cluster. Panics with the reason when it cannot (a test helper).
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"))
    }

    /// A cluster with fsync and full-page writes on, as in production: for benchmarks
    /// whose figures must mean something. Removed afterwards like any other.
    pub fn start_durable() -> Self {
        Self::start_with(Durability::Durable)
            .unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"))
    }

    pub fn try_start() -> Result<Self, tenantry_embedded::ClusterError> {
        Self::start_with(Durability::Throwaway)
    }

    /// A cluster that also listens on a Unix socket ([`Cluster::socket_dir`]).
    pub fn start_with_unix_socket() -> Self {
        Self::start_opts(Durability::Throwaway, true, None)
            .unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"))
    }

    /// A cluster that also listens on a Unix socket, and takes `max_connections`
    /// sessions (benchmarks that hold more than the default's).
    pub fn start_with_unix_socket_and_max_connections(max_connections: u32) -> Self {
        Self::start_opts(Durability::Throwaway, true, Some(max_connections))
            .unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"))
    }

    fn start_with(durability: Durability) -> Result<Self, tenantry_embedded::ClusterError> {
        Self::start_opts(durability, false, None)
    }

    fn start_opts(
        durability: Durability,
        unix_socket: bool,
        max_connections: Option<u32>,
    ) -> Result<Self, tenantry_embedded::ClusterError> {
        let template = template()?;
        let dir = tempfile::Builder::new()
            .prefix("tenantry-pg-")
            .tempdir_in(scratch_dir(durability))
            .map_err(|source| tenantry_embedded::ClusterError::Io {
                context: "create a temporary folder".into(),
                source,
            })?
            // The cluster removes the folder itself, also from its watchdog.
            .keep();
        let mut opts = ClusterOptions::new(&dir);
        opts.durability = durability;
        opts.on_exit = OnExit::StopAndRemove;
        opts.copy_from = Some(template.to_owned());
        opts.unix_socket = unix_socket;
        if let Some(n) = max_connections {
            opts.max_connections = n;
        }
        let mut cluster = match Cluster::open(opts) {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        cluster.start()?;
        Ok(Self { cluster })
    }

    /// One cluster shared by every test of this process. It is never dropped: the
    /// watchdog stops and removes it when the process ends.
    pub fn shared() -> &'static TestCluster {
        static SHARED: OnceLock<TestCluster> = OnceLock::new();
        SHARED.get_or_init(TestCluster::start)
    }

    /// A connection as the superuser to `database`; its driver task runs on the current runtime.
    pub async fn connect(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.url(database), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to test database {database}: {e}"));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Creates an empty database and returns its name.
    pub async fn create_database(&self, name: &str) -> String {
        let client = self.connect("postgres").await;
        client
            .batch_execute(&format!(
                "CREATE DATABASE \"{}\"",
                name.replace('"', "\"\"")
            ))
            .await
            .unwrap_or_else(|e| panic!("create test database {name}: {e}"));
        name.to_owned()
    }

    /// Stops the server, keeping the folder until drop (to test what happens when a server goes away).
    pub fn stop_server(&mut self) {
        let _ = self.cluster.stop();
    }

    /// Stops the server as a crash would (an immediate shutdown), keeping the folder.
    pub fn crash_server(&mut self) {
        let _ = self.cluster.crash();
    }

    /// A streaming standby of this cluster (PostgreSQL's physical replication), started
    /// on a port of its own and removed like any test cluster.
    pub fn standby(&self) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("tenantry-pg-standby-")
            .tempdir_in(scratch_dir(Durability::Throwaway))
            .expect("a folder for the standby")
            .keep();
        let mut opts = ClusterOptions::new(&dir);
        opts.durability = Durability::Throwaway;
        opts.on_exit = OnExit::StopAndRemove;
        let mut cluster = self
            .cluster
            .standby(opts)
            .unwrap_or_else(|e| panic!("cannot make a standby: {e}"));
        cluster
            .start()
            .unwrap_or_else(|e| panic!("cannot start the standby: {e}"));
        TestCluster { cluster }
    }

    /// Promotes a standby to primary and waits until it takes writes.
    pub async fn promote(&self) {
        let client = self.connect("postgres").await;
        let promoted: bool = client
            .query_one("SELECT pg_promote(true, 60)", &[])
            .await
            .unwrap_or_else(|e| panic!("promote: {e}"))
            .get(0);
        assert!(promoted, "the standby was not promoted within 60 s");
    }

    /// Starts the server again after [`TestCluster::stop_server`], on the same port when it is free.
    pub fn restart_server(&mut self) {
        self.cluster
            .start()
            .unwrap_or_else(|e| panic!("restart test cluster: {e}"));
    }
}

impl Deref for TestCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

/// Where a cluster's folder goes: throwaway clusters in memory (`/dev/shm`) when the
/// machine has it, since their data is worthless and disk writes are what make
/// `CREATE DATABASE` slow; durable ones on disk, where their figures mean something.
fn scratch_dir(durability: Durability) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let usable = durability == Durability::Throwaway
        && std::env::var_os("TENANTRY_TESTKIT_ON_DISK").is_none()
        && shm.is_dir()
        && tempfile::tempdir_in(shm).is_ok();
    if usable {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// The initialised cluster that new test clusters copy, made once per build folder.
fn template() -> Result<&'static Path, tenantry_embedded::ClusterError> {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = TEMPLATE.get() {
        return Ok(path);
    }
    let bins = PgBinaries::find()?;
    let version = std::fs::read_to_string(bins.dir().join("../share/PG_VERSION"))
        .ok()
        .or_else(|| {
            bins.dir()
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let cache = cache_dir().join(format!(
        "pg-template-{}-uid{}",
        version.trim(),
        nix::unistd::Uid::effective()
    ));
    if !Cluster::is_initialised(&cache) {
        // Several test processes may get here at once: each initialises a staging copy
        // and renames it into place; the first rename wins, the others are removed.
        let staging = cache.with_extension(format!("staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let mut opts = ClusterOptions::new(&staging);
        opts.durability = Durability::Throwaway;
        opts.on_exit = OnExit::Stop;
        let made = Cluster::open(opts).map(drop);
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        if std::fs::rename(&staging, &cache).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    Ok(TEMPLATE.get_or_init(|| cache))
}

/// `target/<profile>/tenantry-testkit`, found from the running test binary
/// (`target/<profile>/deps/<test>`); the system temp folder elsewhere.
fn cache_dir() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        (deps.file_name()? == "deps").then(|| deps.parent().map(|p| p.join("tenantry-testkit")))?
    });
    let dir = from_exe.unwrap_or_else(|| std::env::temp_dir().join("tenantry-testkit"));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

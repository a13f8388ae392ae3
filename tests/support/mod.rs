//! Helpers for the black-box tests: run the real `tenantry` binary and talk to it over HTTP.
#![allow(dead_code)]

pub mod chart;
pub mod moves;
pub mod routers;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `tenantry` with a clean environment: no inherited TENANTRY_* settings, quiet logs,
/// run from `cwd` (so no repository config/ folder is read unless given).
pub fn tenantry(cwd: &Path, env: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantry"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TENANTRY") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(cwd)
        .env("TENANTRY_ENV", env)
        .env("TENANTRY__TEMPLATES__DIR", templates_dir())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// Copies the files of one folder into another (made if missing).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The repository's tenant templates.
pub fn templates_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenant-templates")
}

/// A running `tenantry` process, killed when dropped. Its stdout and stderr are
/// collected as it writes them (so a chatty process never blocks on a full pipe, and a
/// test can read what it printed while it runs).
pub struct Running {
    pub child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tenantry");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// What it has printed so far, on stdout and stderr.
    pub fn output_so_far(&self) -> (String, String) {
        (
            self.stdout.lock().unwrap().clone(),
            self.stderr.lock().unwrap().clone(),
        )
    }

    /// The base URL (`http://127.0.0.1:PORT`) of the router it started, from the line
    /// `tenantry serve` and `tenantry dev` print once listening. Started with
    /// `http.bind` port 0, the port is the one the router holds: no other process can
    /// have it. Panics, with everything it printed, if it exits first or takes longer
    /// than `timeout`.
    pub async fn router_url(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.stdout.lock().unwrap().lines().find_map(|line| {
                line.to_ascii_lowercase()
                    .contains("router")
                    .then(|| line.split_whitespace().find(|w| w.starts_with("http://")))
                    .flatten()
                    .map(str::to_owned)
            });
            if let Some(url) = found {
                return url;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the readers take in its last words.
                std::thread::sleep(Duration::from_millis(100));
                let (out, err) = self.output_so_far();
                panic!("tenantry exited ({status}) before its router listened\n--- stdout\n{out}\n--- stderr\n{err}");
            }
            if Instant::now() > deadline {
                let (out, err) = self.output_so_far();
                panic!("tenantry's router did not listen within {timeout:?}\n--- stdout\n{out}\n--- stderr\n{err}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit and returns its status and output.
    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The pipes close when the process (and anything it left with them) is gone.
                let readers_done = Instant::now() + Duration::from_secs(5);
                while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < readers_done
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let (out, err) = self.output_so_far();
                return (status, out, err);
            }
            assert!(
                Instant::now() < deadline,
                "tenantry did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Appends everything `pipe` yields to `into`, from a thread of its own.
fn collect(
    mut pipe: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago. Racy: another process may bind it before the
/// caller does. For a router, bind port 0 and read [`Running::router_url`] instead.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `url` until it answers `status` (or the deadline passes); returns the JSON body.
pub async fn wait_for_status(url: &str, status: u16, timeout: Duration) -> serde_json::Value {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(response) = http.get(url).timeout(Duration::from_secs(3)).send().await {
            if response.status().as_u16() == status {
                return response.json().await.unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer {status} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GETs `url` with `auth` until it answers `status`; fails with `what` once `deadline`
/// has passed.
pub async fn wait_for_answer(
    http: &reqwest::Client,
    url: &str,
    auth: &str,
    status: reqwest::StatusCode,
    deadline: Instant,
    what: &str,
) {
    while http
        .get(url)
        .header("authorization", auth)
        .send()
        .await
        .unwrap()
        .status()
        != status
    {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process runs (a zombie does not count).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

pub fn output(mut cmd: Command) -> Output {
    cmd.output().expect("run tenantry")
}

/// A catalog and one registered server (`s1`) on a throwaway cluster, and a way to run
/// `tenantry` commands against them.
pub struct Deployment {
    pub pg: tenantry_testkit::TestCluster,
    pub home: tempfile::TempDir,
    pub catalog_url: String,
}

impl Deployment {
    pub async fn new() -> Self {
        let pg = tenantry_testkit::TestCluster::start();
        pg.create_database("catalog").await;
        let catalog_url = pg.url("catalog");
        Self::with(pg, catalog_url).await
    }

    /// A catalog at `catalog_url` (migrated here) and `pg` registered as server `s1`.
    /// [`Deployment::catalog`] assumes the catalog is on `pg`; with one elsewhere,
    /// connect to it directly.
    pub async fn with(pg: tenantry_testkit::TestCluster, catalog_url: String) -> Self {
        let d = Self {
            pg,
            home: tempfile::tempdir().unwrap(),
            catalog_url,
        };
        let out = d.run(&["catalog", "migrate"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = d.pg.url("postgres");
        let out = d.run(&["server", "add", "s1", "--url", &url]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        d
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = tenantry(self.home.path(), "test");
        cmd.args(args)
            .env("TENANTRY__CATALOG__URL", &self.catalog_url);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        output(self.cmd(args))
    }

    /// `tenant create SLUG --plan PLAN`; panics unless it succeeds.
    pub fn create_tenant(&self, slug: &str, plan: &str) {
        let out = self.run(&["tenant", "create", slug, "--plan", plan]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs with `--output json` and parses stdout; panics unless the exit code is `code`.
    pub fn json(&self, args: &[&str], code: i32) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// A connection to the catalog, through the deployment's catalog URL (which may
    /// name several hosts).
    pub async fn catalog(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.catalog_url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to the catalog: {e}"));
        tokio::spawn(connection);
        client
    }

    /// A connection as a tenant's own role, with its sealed password opened by the
    /// test environment's master key.
    pub async fn connect_tenant(
        &self,
        id: uuid::Uuid,
        database: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.connect_tenant_on(self.pg.port(), id, database).await
    }

    /// [`Deployment::connect_tenant`] on the server listening on `port`.
    pub async fn connect_tenant_on(
        &self,
        port: u16,
        id: uuid::Uuid,
        database: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let catalog = self.catalog().await;
        let row = catalog
            .query_one(
                "SELECT credentials, key_version FROM tenants WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let sealed = tenantry_catalog::Sealed {
            bytes: row.get(0),
            key_version: row.get(1),
        };
        let settings = tenantry_config::load(&tenantry_config::LoadOptions {
            env: Some("test".into()),
            config_dir: Some("/nonexistent".into()),
            extra_file: None,
            vars: Some(Default::default()),
        })
        .unwrap();
        let sealer = tenantry_catalog::Sealer::new(1, &settings.master_key().unwrap().0);
        let password = sealer.open(&sealed, &format!("tenant:{id}")).unwrap();
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user(format!("tr_{}", id.simple()))
            .password(password)
            .dbname(database);
        let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

/// The test environment's settings (the secrets the binary uses under TENANTRY_ENV=test).
pub fn test_settings() -> tenantry_config::Settings {
    tenantry_config::load(&tenantry_config::LoadOptions {
        env: Some("test".into()),
        config_dir: Some("/nonexistent".into()),
        extra_file: None,
        vars: Some(Default::default()),
    })
    .unwrap()
}

/// Now, in Unix seconds (as tokens count time).
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `tenant` signed with the test secret: slug-only, issued now (`iat`).
pub fn token(tenant: &str, scope: Option<&str>) -> String {
    let s = test_settings();
    let now = now_s();
    tenantry_router::auth::issue_hs256(
        s.auth.hs256_secret.as_ref().unwrap(),
        &tenantry_router::auth::Claims {
            sub: "tester".into(),
            tenant: Some(tenant.into()),
            exp: now + 600,
            iss: s.auth.issuer.clone(),
            aud: s.auth.audience.clone(),
            nbf: None,
            iat: Some(now),
            scope: scope.map(str::to_owned),
            tenant_id: None,
        },
    )
    .unwrap()
}

/// An admin token (scope `admin`) signed with the test admin trust root (`auth.admin.*`).
pub fn admin_token() -> String {
    let s = test_settings();
    let a = &s.auth.admin;
    let now = now_s();
    tenantry_router::auth::issue_hs256(
        a.hs256_secret.as_ref().unwrap(),
        &tenantry_router::auth::Claims {
            sub: "operator".into(),
            tenant: None,
            exp: now + 600,
            iss: a.issuer.clone(),
            aud: a.audience.clone(),
            nbf: None,
            iat: Some(now),
            scope: Some("admin".into()),
            tenant_id: None,
        },
    )
    .unwrap()
}

/// A `tenantry serve` of a deployment, and its base URL.
pub struct Router {
    pub process: Running,
    pub base: String,
}

impl Deployment {
    /// Starts `tenantry serve` on a port of its own choosing and waits until it is ready.
    pub async fn serve(&self, vars: &[(&str, &str)]) -> Router {
        let mut cmd = self.cmd(&["serve"]);
        cmd.env("TENANTRY__HTTP__BIND", "127.0.0.1:0");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut process = Running::spawn(cmd);
        let base = process.router_url(Duration::from_secs(60)).await;
        wait_for_status(&format!("{base}/readyz"), 200, Duration::from_secs(60)).await;
        Router { process, base }
    }

    /// A templates folder of this deployment's own: the repository's `tasks` template
    /// with `files` (name, SQL) added to it, for `--templates`.
    pub fn templates_with(&self, files: &[(&str, &str)]) -> std::path::PathBuf {
        let templates = self.home.path().join("templates");
        copy_dir(&templates_dir().join("tasks"), &templates.join("tasks"));
        for (name, sql) in files {
            std::fs::write(templates.join("tasks").join(name), sql).unwrap();
        }
        templates
    }

    /// A second server, `s2`, on a cluster of its own.
    pub fn second_server(&self) -> tenantry_testkit::TestCluster {
        let s2 = tenantry_testkit::TestCluster::start();
        let out = self.run(&["server", "add", "s2", "--url", &s2.url("postgres")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        s2
    }

    /// Enterprise tenants `load-0` … `load-{n-1}`, made through the library (`tenant
    /// create` per tenant would take a process each).
    pub async fn enterprise_tenants(&self, n: usize) {
        self.provisioner()
            .await
            .create_many(
                (0..n)
                    .map(|i| tenantry_provision::CreateTenant {
                        slug: format!("load-{i}"),
                        plan: Some("enterprise".into()),
                        ..Default::default()
                    })
                    .collect(),
                4,
            )
            .await
            .unwrap();
    }

    /// A provisioner over this deployment's catalog, with the test master key.
    pub async fn provisioner(&self) -> tenantry_provision::Provisioner {
        let url = secrecy::SecretString::from(self.catalog_url.clone());
        let catalog = tenantry_catalog::Catalog::new(&url, 8, Duration::from_secs(5)).unwrap();
        let s = test_settings();
        let mut opts = tenantry_provision::ProvisionOptions::from_settings(&s);
        opts.templates_dir = templates_dir();
        tenantry_provision::Provisioner::new(
            catalog,
            tenantry_catalog::Sealer::new(1, &s.master_key().unwrap().0),
            opts,
        )
        .unwrap()
    }
}

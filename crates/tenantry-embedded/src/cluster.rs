use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid, User};
use rand::distributions::{Alphanumeric, DistString};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::IoContext;
use crate::{ClusterError, PgBinaries};

const HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How much a cluster's data matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Ordinary crash-safe settings (`tenantry dev`).
    Durable,
    /// `fsync`, `full_page_writes` and `synchronous_commit` off: fast, for tests.
    Throwaway,
}

/// What happens to the cluster when its [`Cluster`] is dropped or this process dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    /// Stop the server; keep the folder for next time.
    Stop,
    /// Stop the server and remove the whole folder.
    StopAndRemove,
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The cluster's folder; created if missing.
    pub root: PathBuf,
    /// The superuser created by `initdb`.
    pub superuser: String,
    pub durability: Durability,
    pub on_exit: OnExit,
    pub max_connections: u32,
    /// An initialised cluster folder to copy instead of running `initdb` (much faster).
    pub copy_from: Option<PathBuf>,
    /// Whether the server also listens on a Unix socket, in its data folder
    /// ([`Cluster::socket_dir`]); only TCP otherwise.
    pub unix_socket: bool,
}

impl ClusterOptions {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            superuser: "tenantry".into(),
            durability: Durability::Durable,
            on_exit: OnExit::Stop,
            max_connections: 200,
            copy_from: None,
            unix_socket: false,
        }
    }
}

/// What `cluster.json` remembers between runs.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Description {
    pub(crate) port: u16,
    pub(crate) superuser: String,
}

/// A PostgreSQL cluster in a folder of its own, started and stopped by this process.
pub struct Cluster {
    opts: ClusterOptions,
    bins: PgBinaries,
    port: u16,
    password: SecretString,
    run_as: Option<(Uid, Gid)>,
    server: Option<Child>,
    watchdog: Option<Child>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("root", &self.opts.root)
            .field("port", &self.port)
            .field("superuser", &self.opts.superuser)
            .field("pid", &self.server_pid())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Opens the cluster in `opts.root`, creating it first (initdb, or a copy of
    /// `opts.copy_from`) if the folder holds none. The server is not started.
    pub fn open(mut opts: ClusterOptions) -> Result<Self, ClusterError> {
        let bins = PgBinaries::find()?;
        let run_as = unprivileged_user()?;
        fs::create_dir_all(&opts.root).context(|| format!("create {}", opts.root.display()))?;
        // Absolute from here on: the server and initdb run with another working directory.
        opts.root = opts
            .root
            .canonicalize()
            .context(|| format!("resolve {}", opts.root.display()))?;
        let root = &opts.root;
        if run_as.is_some() {
            // The server's user must be able to pass through the folder to reach data/.
            fs::set_permissions(root, fs::Permissions::from_mode(0o711))
                .context(|| format!("set the mode of {}", root.display()))?;
            check_traversable(root)?;
        }
        if !Self::is_initialised(root) {
            match &opts.copy_from {
                Some(source) => copy_cluster(source, root, &opts.superuser)?,
                None => initdb(&bins, run_as, &opts)?,
            }
        }
        let description = read_description(root)?;
        if description.superuser != opts.superuser {
            return Err(ClusterError::BadState {
                path: root.join("cluster.json"),
                reason: format!(
                    "it was created for superuser {:?}, not {:?}",
                    description.superuser, opts.superuser
                ),
            });
        }
        let password_path = root.join("superuser.password");
        let password = fs::read_to_string(&password_path)
            .context(|| format!("read {}", password_path.display()))?;
        Ok(Self {
            port: description.port,
            password: SecretString::from(password.trim().to_owned()),
            opts,
            bins,
            run_as,
            server: None,
            watchdog: None,
        })
    }

    /// The superuser URL of the cluster in `root` for `database`, read from its files
    /// without starting anything (for commands that talk to a running `tenantry dev`).
    pub fn url_of(root: &Path, database: &str) -> Result<String, ClusterError> {
        let d = read_description(root)?;
        let path = root.join("superuser.password");
        let password = fs::read_to_string(&path).context(|| format!("read {}", path.display()))?;
        Ok(format!(
            "postgres://{}:{}@{HOST}:{}/{database}",
            d.superuser,
            password.trim(),
            d.port
        ))
    }

    /// Whether `root` holds an initialised cluster.
    pub fn is_initialised(root: &Path) -> bool {
        root.join("data/PG_VERSION").is_file() && root.join("cluster.json").is_file()
    }

    /// Starts the server and waits until it accepts connections. Uses the port the
    /// cluster had last time when it is free, another free port otherwise.
    pub fn start(&mut self) -> Result<(), ClusterError> {
        if self.server.is_some() {
            return Ok(());
        }
        self.refuse_if_running()?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            if !port_is_free(self.port) {
                self.port = free_port()?;
            }
            write_description(
                &self.opts.root,
                &Description {
                    port: self.port,
                    superuser: self.opts.superuser.clone(),
                },
            )?;
            match self.spawn_and_wait() {
                Ok(()) => break,
                // Another process may take the port between our check and the server's bind.
                Err(ClusterError::StartFailed { log_tail, .. })
                    if attempts < 4 && log_tail.contains("could not bind") =>
                {
                    self.port = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
        tracing::debug!(root = %self.opts.root.display(), port = self.port, "postgres started");
        Ok(())
    }

    /// Stops the server with a fast shutdown (every committed transaction kept) and
    /// waits for it to exit.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        self.shutdown(Signal::SIGINT)
    }

    /// Stops the server as a crash would (an immediate shutdown: no checkpoint, every
    /// session cut), for failover tests.
    pub fn crash(&mut self) -> Result<(), ClusterError> {
        self.shutdown(Signal::SIGQUIT)
    }

    fn shutdown(&mut self, signal: Signal) -> Result<(), ClusterError> {
        if let Some(mut server) = self.server.take() {
            let pid = Pid::from_raw(server.id() as i32);
            let _ = kill(pid, signal);
            if wait_timeout(&mut server, STOP_TIMEOUT).is_none() {
                tracing::warn!(
                    pid = server.id(),
                    "postgres did not stop in time; killing it"
                );
                let _ = server.kill();
                let _ = server.wait();
            }
        }
        self.kill_watchdog();
        Ok(())
    }

    fn kill_watchdog(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    pub fn root(&self) -> &Path {
        &self.opts.root
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn superuser(&self) -> &str {
        &self.opts.superuser
    }

    pub fn password(&self) -> &SecretString {
        &self.password
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// The folder of the server's Unix socket (`.s.PGSQL.<port>`), when it has one: a
    /// `host` as libpq takes it.
    pub fn socket_dir(&self) -> Option<PathBuf> {
        self.opts.unix_socket.then(|| self.opts.root.join("data"))
    }

    /// The running server's process id.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// A `postgres://` URL for `database` as the superuser. It holds the password:
    /// never log it.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{}",
            self.opts.superuser,
            self.password.expose_secret(),
            self.host(),
            self.port,
            database
        )
    }

    fn refuse_if_running(&self) -> Result<(), ClusterError> {
        let pid_file = self.opts.root.join("data/postmaster.pid");
        let Ok(text) = fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return Ok(());
        };
        // A stale file names a pid that may since belong to another program: only a
        // live `postgres` counts.
        let is_postgres = fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "postgres");
        if pid > 0 && kill(Pid::from_raw(pid), None).is_ok() && is_postgres {
            return Err(ClusterError::AlreadyRunning {
                dir: self.opts.root.clone(),
                pid,
            });
        }
        Ok(())
    }

    fn spawn_and_wait(&mut self) -> Result<(), ClusterError> {
        let data = self.opts.root.join("data");
        let log_path = self.opts.root.join("postgres.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context(|| format!("open {}", log_path.display()))?;
        let log_start = log
            .metadata()
            .context(|| format!("stat {}", log_path.display()))?
            .len();
        let mut settings = vec![
            format!("listen_addresses={HOST}"),
            format!("port={}", self.port),
            match self.socket_dir() {
                Some(dir) => format!("unix_socket_directories={}", dir.display()),
                None => "unix_socket_directories=".to_owned(),
            },
            format!("max_connections={}", self.opts.max_connections),
            "password_encryption=scram-sha-256".to_owned(),
            // Tenants move between servers with logical replication (`tenant move`).
            "wal_level=logical".to_owned(),
            // PostgreSQL 15's replication launcher starts one subscription worker per
            // interval (5 s by default), whichever subscription it is for: moves one after
            // another (a server evacuated) would each wait for it.
            "wal_retrieve_retry_interval=200ms".to_owned(),
        ];
        if self.opts.durability == Durability::Throwaway {
            settings.extend(
                [
                    "fsync=off",
                    "full_page_writes=off",
                    "synchronous_commit=off",
                    "shared_buffers=32MB",
                ]
                .map(str::to_owned),
            );
        }
        let mut cmd = Command::new(self.bins.postgres());
        cmd.arg("-D").arg(&data);
        for setting in &settings {
            cmd.arg("-c").arg(setting);
        }
        cmd.stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .context(|| "duplicate the log handle".into())?,
            )
            .stderr(log)
            .current_dir(&data)
            // Its own process group: a terminal's Ctrl-C reaches us, and we stop the
            // server in order, rather than the server dying under our feet.
            .process_group(0);
        self.apply_user(&mut cmd);
        let mut child = cmd
            .spawn()
            .context(|| format!("start {}", self.bins.postgres().display()))?;
        // From its first moment, the server has a watchdog: if we die while it starts,
        // it does not outlive us.
        if let Err(e) = self.spawn_watchdog(child.id()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_status)) = child.try_wait() {
                self.kill_watchdog();
                return Err(self.start_failed(&log_path, log_start));
            }
            if postmaster_ready(&data) && TcpStream::connect((HOST, self.port)).is_ok() {
                self.server = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.kill_watchdog();
                return Err(self.start_failed(&log_path, log_start));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn start_failed(&self, log_path: &Path, from: u64) -> ClusterError {
        ClusterError::StartFailed {
            dir: self.opts.root.clone(),
            log: log_path.to_owned(),
            log_tail: tail(log_path, from),
        }
    }

    /// A shell that outlives us only to clean up after us: when this process is gone
    /// (however it went), it stops the server and, for throwaway clusters, removes the
    /// folder.
    fn spawn_watchdog(&mut self, server: u32) -> Result<(), ClusterError> {
        const SCRIPT: &str = r#"
parent="$1"; server="$2"; signal="$3"; remove="$4"
while kill -0 "$parent" 2>/dev/null; do sleep 0.2; done
kill "-$signal" "$server" 2>/dev/null
i=0
while kill -0 "$server" 2>/dev/null && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL "$server" 2>/dev/null
if [ -n "$remove" ]; then rm -rf -- "$remove"; fi
"#;
        let signal = match self.opts.on_exit {
            OnExit::Stop => "INT",
            OnExit::StopAndRemove => "QUIT",
        };
        let remove = match self.opts.on_exit {
            OnExit::Stop => PathBuf::new(),
            OnExit::StopAndRemove => self.opts.root.clone(),
        };
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("tenantry-pg-watchdog")
            .arg(std::process::id().to_string())
            .arg(server.to_string())
            .arg(signal)
            .arg(remove)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context(|| "start the cluster watchdog (/bin/sh)".into())?;
        self.watchdog = Some(child);
        Ok(())
    }

    fn apply_user(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.opts.on_exit == OnExit::StopAndRemove {
            // The data is about to go: an immediate shutdown is enough.
            let _ = self.shutdown(Signal::SIGQUIT);
            let _ = fs::remove_dir_all(&self.opts.root);
        } else {
            let _ = self.stop();
        }
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind(SocketAddrV4::new(HOST, 0))
        .context(|| "find a free port on 127.0.0.1".into())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .context(|| "read the free port".into())
}

fn port_is_free(port: u16) -> bool {
    port != 0 && TcpListener::bind(SocketAddrV4::new(HOST, port)).is_ok()
}

/// When root, the user the server runs as: `postgres`, else `nobody`.
pub(crate) fn unprivileged_user() -> Result<Option<(Uid, Gid)>, ClusterError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Ok(Some(user)) = User::from_name(name) {
            return Ok(Some((user.uid, user.gid)));
        }
    }
    Err(ClusterError::NoUnprivilegedUser)
}

/// Every folder above `path` must let others pass (x), or the server's user cannot reach its data.
fn check_traversable(path: &Path) -> Result<(), ClusterError> {
    let absolute = path
        .canonicalize()
        .context(|| format!("resolve {}", path.display()))?;
    for dir in absolute.ancestors().skip(1) {
        let mode = fs::metadata(dir)
            .context(|| format!("stat {}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(ClusterError::Io {
                context: format!(
                    "the PostgreSQL server runs as an unprivileged user, which cannot pass \
                     through {} (mode {:o}); `chmod o+x {}` or choose a folder elsewhere",
                    dir.display(),
                    mode & 0o777,
                    dir.display()
                ),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            });
        }
    }
    Ok(())
}

fn initdb(
    bins: &PgBinaries,
    run_as: Option<(Uid, Gid)>,
    opts: &ClusterOptions,
) -> Result<(), ClusterError> {
    let root = &opts.root;
    let data = root.join("data");
    // A half-made cluster from an interrupted initdb: start that step again.
    if data.exists() {
        fs::remove_dir_all(&data).context(|| format!("remove {}", data.display()))?;
    }
    fs::create_dir(&data).context(|| format!("create {}", data.display()))?;
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
        .context(|| format!("set the mode of {}", data.display()))?;

    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
    write_private(&root.join("superuser.password"), &password)?;
    // initdb reads the password from a file its user can read; it is removed right after.
    let pwfile = root.join("initdb.pw");
    write_private(&pwfile, &password)?;
    if let Some((uid, gid)) = run_as {
        for path in [&data, &pwfile] {
            nix::unistd::chown(path.as_path(), Some(uid), Some(gid)).map_err(|e| {
                ClusterError::Io {
                    context: format!("give {} to the server's user", path.display()),
                    source: e.into(),
                }
            })?;
        }
    }
    let mut cmd = Command::new(bins.initdb());
    cmd.arg("-D")
        .arg(&data)
        .arg("-U")
        .arg(&opts.superuser)
        .arg("--pwfile")
        .arg(&pwfile)
        .args([
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ])
        .current_dir(&data)
        .stdin(Stdio::null());
    if opts.durability == Durability::Throwaway {
        cmd.arg("--no-sync");
    }
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
    let output = cmd
        .output()
        .context(|| format!("run {}", bins.initdb().display()));
    let _ = fs::remove_file(&pwfile);
    let output = output?;
    if !output.status.success() {
        let _ = fs::remove_dir_all(&data);
        return Err(ClusterError::Initdb {
            dir: data,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    // Written last: its presence marks a finished cluster.
    write_description(
        root,
        &Description {
            port: free_port()?,
            superuser: opts.superuser.clone(),
        },
    )
}

/// Copies an initialised cluster (`cp -a` keeps ownership and modes).
fn copy_cluster(source: &Path, root: &Path, superuser: &str) -> Result<(), ClusterError> {
    let data = root.join("data");
    if data.exists() {
        fs::remove_dir_all(&data).context(|| format!("remove {}", data.display()))?;
    }
    let status = Command::new("cp")
        .arg("-a")
        .arg(source.join("data"))
        .arg(&data)
        .status()
        .context(|| "run cp".into())?;
    if !status.success() {
        return Err(ClusterError::Io {
            context: format!("copy {} to {}", source.display(), data.display()),
            source: std::io::Error::other(format!("cp exited with {status}")),
        });
    }
    let password = fs::read_to_string(source.join("superuser.password"))
        .context(|| format!("read the password of {}", source.display()))?;
    write_private(&root.join("superuser.password"), password.trim())?;
    // The copy has the source's superuser, whatever was asked: `open` then says so.
    let source_superuser = read_description(source)
        .map(|d| d.superuser)
        .unwrap_or_else(|_| superuser.to_owned());
    write_description(
        root,
        &Description {
            port: free_port()?,
            superuser: source_superuser,
        },
    )
}

fn read_description(root: &Path) -> Result<Description, ClusterError> {
    let path = root.join("cluster.json");
    let text = fs::read_to_string(&path).context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| ClusterError::BadState {
        path,
        reason: e.to_string(),
    })
}

pub(crate) fn write_description(root: &Path, d: &Description) -> Result<(), ClusterError> {
    let path = root.join("cluster.json");
    let tmp = root.join("cluster.json.tmp");
    let text = serde_json::to_string_pretty(d).map_err(|e| ClusterError::BadState {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    fs::write(&tmp, text).context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, &path).context(|| format!("write {}", path.display()))
}

pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), ClusterError> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .context(|| format!("create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .context(|| format!("write {}", path.display()))
}

/// PostgreSQL writes its status on line 8 of `postmaster.pid`; `ready` means it accepts connections.
fn postmaster_ready(data: &Path) -> bool {
    fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().nth(7).map(|l| l.trim() == "ready"))
        .unwrap_or(false)
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// The last 30 lines written to `path` since byte `from`.
fn tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.seek(SeekFrom::Start(from));
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

//! A streaming standby of a running cluster: PostgreSQL's own physical replication
//! (`pg_basebackup -R`), for failover tests of whatever keeps its data in the primary.

use std::process::Command;

use secrecy::ExposeSecret;

use crate::cluster::{unprivileged_user, write_description, write_private, Description};
use crate::error::IoContext;
use crate::{free_port, Cluster, ClusterError, ClusterOptions};

impl Cluster {
    /// Makes `opts.root` (created if missing, empty) a streaming standby of this running
    /// cluster: a base backup that streams the WAL it needs, with `standby.signal` and
    /// the primary's address written, so the standby follows the primary once started.
    /// Its superuser and password are the primary's. Not started.
    pub fn standby(&self, mut opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        let root = &opts.root;
        std::fs::create_dir_all(root).context(|| format!("create {}", root.display()))?;
        let data = root.join("data");
        let mut cmd = Command::new(self.binaries().tool("pg_basebackup"));
        cmd.arg("--pgdata")
            .arg(&data)
            .args(["--write-recovery-conf", "--wal-method=stream"])
            .args(["--checkpoint=fast", "--no-sync"])
            .args(["--host", self.host()])
            .args(["--port", &self.port().to_string()])
            .args(["--username", self.superuser()])
            .env("PGPASSWORD", self.password().expose_secret());
        let out = cmd.output().context(|| "run pg_basebackup".into())?;
        if !out.status.success() {
            return Err(ClusterError::Io {
                context: "take a base backup for a standby".into(),
                source: std::io::Error::other(
                    String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                ),
            });
        }
        if let Some((uid, gid)) = unprivileged_user()? {
            // The server runs as its own user: the backup (taken as root) becomes its.
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(&data)
                .status()
                .context(|| "run chown".into())?;
            if !status.success() {
                return Err(ClusterError::Io {
                    context: format!("give {} to the server's user", data.display()),
                    source: std::io::Error::other(format!("chown exited with {status}")),
                });
            }
        }
        write_private(
            &root.join("superuser.password"),
            self.password().expose_secret(),
        )?;
        write_description(
            root,
            &Description {
                port: free_port()?,
                superuser: self.superuser().to_owned(),
            },
        )?;
        opts.superuser = self.superuser().to_owned();
        opts.copy_from = None;
        Cluster::open(opts)
    }
}

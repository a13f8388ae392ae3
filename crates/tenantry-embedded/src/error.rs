use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH, under \
         /usr/lib/postgresql/*/bin, or in $TENANTRY_PG_BIN. Install them with \
         `apt-get install postgresql` (Debian/Ubuntu), or point TENANTRY_PG_BIN at the folder \
         that holds initdb"
    )]
    BinariesNotFound,

    #[error(
        "running as root, but neither a `postgres` nor a `nobody` user exists to run the \
         PostgreSQL server as (it refuses root); create one with `useradd postgres`"
    )]
    NoUnprivilegedUser,

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("initdb failed for {dir}; its output:\n{output}")]
    Initdb { dir: PathBuf, output: String },

    #[error("the PostgreSQL server in {dir} did not start; the end of {log}:\n{log_tail}")]
    StartFailed {
        dir: PathBuf,
        log: PathBuf,
        log_tail: String,
    },

    #[error(
        "the cluster in {dir} is already running (postgres pid {pid}), probably under another \
         `tenantry dev`; stop that one first (Ctrl-C), or `kill {pid}`"
    )]
    AlreadyRunning { dir: PathBuf, pid: i32 },

    #[error("{path} is not a readable cluster description ({reason}); move the folder aside to start afresh")]
    BadState { path: PathBuf, reason: String },
}

pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, ClusterError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, ClusterError> {
        self.map_err(|source| ClusterError::Io {
            context: what(),
            source,
        })
    }
}

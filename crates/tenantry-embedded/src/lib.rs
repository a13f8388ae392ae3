//! A private PostgreSQL cluster that Tenantry starts itself: the embedded catalog of
//! `tenantry dev`, and the throwaway clusters of the test kit.
//!
//! * [`PgBinaries::find`] locates `initdb` and `postgres` on `PATH`, under
//!   `/usr/lib/postgresql/*/bin` (newest first), or in `$TENANTRY_PG_BIN`.
//! * A cluster lives in one folder: `data/` (PGDATA), `postgres.log`, `cluster.json`
//!   (port, superuser) and `superuser.password` (mode 0600).
//! * PostgreSQL refuses to run as root, so when this process is root, `initdb` and
//!   `postgres` run as the `postgres` user (or `nobody`), which owns `data/`.
//! * The server listens on 127.0.0.1 only, with no Unix socket, and asks for a
//!   SCRAM password on every connection.
//! * A watchdog process stops the server (and removes the folder, for throwaway
//!   clusters) if this process dies without stopping it: a panic, `exit`, or `kill -9`
//!   never leaves a stray postgres behind.

mod binaries;
mod cluster;
mod error;
mod standby;

pub use binaries::PgBinaries;
pub use cluster::{free_port, Cluster, ClusterOptions, Durability, OnExit};
pub use error::ClusterError;

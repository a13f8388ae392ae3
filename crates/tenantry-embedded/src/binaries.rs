use std::path::{Path, PathBuf};

use crate::ClusterError;

/// Where the PostgreSQL server binaries are.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    dir: PathBuf,
}

impl PgBinaries {
    /// `$TENANTRY_PG_BIN`, then `PATH`, then `/usr/lib/postgresql/<newest>/bin`.
    pub fn find() -> Result<Self, ClusterError> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(dir) = std::env::var_os("TENANTRY_PG_BIN") {
            candidates.push(dir.into());
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        candidates.extend(debian_bin_dirs(Path::new("/usr/lib/postgresql")));
        candidates
            .into_iter()
            .find(|dir| is_server_bin_dir(dir))
            .map(|dir| Self { dir })
            .ok_or(ClusterError::BinariesNotFound)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn initdb(&self) -> PathBuf {
        self.dir.join("initdb")
    }

    pub fn postgres(&self) -> PathBuf {
        self.dir.join("postgres")
    }

    /// A client tool of the same installation (`pg_dump`, `pg_restore`, `psql`), if present.
    pub fn tool(&self, name: &str) -> PathBuf {
        let beside = self.dir.join(name);
        if beside.exists() {
            beside
        } else {
            PathBuf::from(name)
        }
    }
}

fn is_server_bin_dir(dir: &Path) -> bool {
    // `initdb` on PATH may be a symlink into the real folder; resolve it so that
    // `postgres` is looked up beside the real binary.
    let Ok(initdb) = dir.join("initdb").canonicalize() else {
        return false;
    };
    initdb
        .parent()
        .is_some_and(|real| real.join("postgres").is_file())
        && dir.join("postgres").exists()
}

/// `/usr/lib/postgresql/*/bin`, newest major version first.
fn debian_bin_dirs(root: &Path) -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_dirs_newest_first() {
        let root = tempfile::tempdir().unwrap();
        for v in ["13", "15", "9", "not-a-version"] {
            std::fs::create_dir_all(root.path().join(v).join("bin")).unwrap();
        }
        let dirs = debian_bin_dirs(root.path());
        let names: Vec<_> = dirs
            .iter()
            .map(|d| d.parent().unwrap().file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["15", "13", "9"]);
    }

    #[test]
    fn a_folder_without_postgres_is_not_a_server() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("initdb"), "").unwrap();
        assert!(!is_server_bin_dir(dir.path()));
        std::fs::write(dir.path().join("postgres"), "").unwrap();
        assert!(is_server_bin_dir(dir.path()));
    }
}

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template name {0:?} is not valid: use 1 to 30 characters, a lowercase letter then lowercase letters, digits or '_'")]
    BadName(String),
    #[error(
        "template {name:?} not found: there is no folder {dir} (templates.dir, or --templates)"
    )]
    NotFound { name: String, dir: PathBuf },
    #[error("template {name:?} has no migrations: add files named V1__<name>.sql to {dir}")]
    Empty { name: String, dir: PathBuf },
    #[error("template file {file} is not usable: {reason}")]
    BadFile { file: PathBuf, reason: String },
    #[error("template {name:?} has two migrations with version {version}")]
    DuplicateVersion { name: String, version: i32 },
    #[error("applying template {name:?} failed: {reason}")]
    Apply { name: String, reason: String },
    #[error("template file {file} changed after it was applied (applied checksum {applied}, file checksum {now}): restore it, and put the change in a new V{{n}}__ file")]
    Divergent {
        file: PathBuf,
        applied: String,
        now: String,
    },
    #[error("template file {file} was applied but is no longer in {dir}: restore it (applied files are never removed)")]
    Missing { file: PathBuf, dir: PathBuf },
}

impl TemplateError {
    /// The files or the name are wrong (the caller must fix them: exit 2, HTTP 4xx),
    /// rather than applying them failed.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Apply { .. })
    }
}

/// A migration as applied somewhere: its version, name and refinery checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: i32,
    pub name: String,
    pub checksum: String,
}

/// One migration file of a template.
#[derive(Debug, Clone)]
pub struct MigrationFile {
    pub version: i32,
    /// `V{version}__{name}`.
    pub name: String,
    pub sql: String,
}

/// A tenant template: a folder of refinery migrations `V{n}__{name}.sql`.
#[derive(Debug, Clone)]
pub struct Template {
    name: String,
    dir: PathBuf,
    files: Vec<MigrationFile>,
    checksum: String,
}

impl Template {
    /// Reads `<dir>/<name>/V*.sql`.
    pub fn load(templates_dir: &Path, name: &str) -> Result<Self, TemplateError> {
        if !valid_name(name) {
            return Err(TemplateError::BadName(name.chars().take(60).collect()));
        }
        let dir = templates_dir.join(name);
        let entries = std::fs::read_dir(&dir).map_err(|_| TemplateError::NotFound {
            name: name.to_owned(),
            dir: dir.clone(),
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| TemplateError::BadFile {
                    file: dir.clone(),
                    reason: e.to_string(),
                })?
                .path();
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = file_name.strip_suffix(".sql") else {
                continue;
            };
            let (version, label) = parse_stem(stem).ok_or_else(|| TemplateError::BadFile {
                file: path.clone(),
                reason: "name it V{number}__{name}.sql, e.g. V2__add_tags.sql".into(),
            })?;
            let sql = std::fs::read_to_string(&path).map_err(|e| TemplateError::BadFile {
                file: path.clone(),
                reason: e.to_string(),
            })?;
            files.push(MigrationFile {
                version,
                name: format!("V{version}__{label}"),
                sql,
            });
        }
        if files.is_empty() {
            return Err(TemplateError::Empty {
                name: name.to_owned(),
                dir,
            });
        }
        files.sort_by_key(|f| f.version);
        if let Some(pair) = files.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(TemplateError::DuplicateVersion {
                name: name.to_owned(),
                version: pair[0].version,
            });
        }
        let mut hash = Sha256::new();
        for f in &files {
            hash.update(f.name.as_bytes());
            hash.update([0]);
            hash.update(f.sql.as_bytes());
            hash.update([0]);
        }
        let checksum = hex::encode(&hash.finalize()[..6]);
        Ok(Self {
            name: name.to_owned(),
            dir,
            files,
            checksum,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn files(&self) -> &[MigrationFile] {
        &self.files
    }

    /// 12 hex digits that change whenever any file's name or content changes.
    pub fn checksum(&self) -> &str {
        &self.checksum
    }

    pub fn latest_version(&self) -> i32 {
        self.files.last().map_or(0, |f| f.version)
    }

    /// The folder the files were read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Each file as refinery records it when applied (its checksum as text).
    pub fn applied_form(&self) -> Result<Vec<Applied>, TemplateError> {
        self.files
            .iter()
            .map(|f| {
                let m = refinery::Migration::unapplied(&f.name, &f.sql).map_err(|e| {
                    TemplateError::BadFile {
                        file: self.file_path(&f.name),
                        reason: e.to_string(),
                    }
                })?;
                Ok(Applied {
                    version: f.version,
                    name: f.name.clone(),
                    checksum: m.checksum().to_string(),
                })
            })
            .collect()
    }

    fn file_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sql"))
    }

    /// Refuses files that differ from, or lack, migrations already applied (`applied`,
    /// as recorded in the catalog or a database's history), naming the file.
    pub fn verify(&self, applied: &[Applied]) -> Result<(), TemplateError> {
        let ours = self.applied_form()?;
        for a in applied {
            match ours.iter().find(|f| f.version == a.version) {
                None => {
                    return Err(TemplateError::Missing {
                        file: self.file_path(&a.name),
                        dir: self.dir.clone(),
                    })
                }
                Some(f) if f.checksum != a.checksum || f.name != a.name => {
                    return Err(TemplateError::Divergent {
                        file: self.file_path(&f.name),
                        applied: a.checksum.clone(),
                        now: f.checksum.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The files after `version`, in order.
    pub fn pending_after(&self, version: i32) -> impl Iterator<Item = &MigrationFile> {
        self.files.iter().filter(move |f| f.version > version)
    }

    /// A refinery runner over this template's files; refinery refuses divergent and missing files.
    pub fn runner(&self) -> Result<refinery::Runner, TemplateError> {
        let migrations = self
            .files
            .iter()
            .map(|f| {
                refinery::Migration::unapplied(&f.name, &f.sql).map_err(|e| {
                    TemplateError::BadFile {
                        file: self.file_path(&f.name),
                        reason: e.to_string(),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(refinery::Runner::new(&migrations)
            .set_abort_divergent(true)
            .set_abort_missing(true))
    }

    /// What went wrong applying the files after version `reached`: the file and
    /// PostgreSQL's own message (refinery's text says only "db error").
    pub fn describe_failure(&self, e: &refinery::Error, reached: i32) -> String {
        match refinery_cause(e) {
            Some(pg) => {
                let file = self
                    .pending_after(reached)
                    .next()
                    .map(|f| f.name.as_str())
                    .unwrap_or_default();
                format!("{file}: {}", pg_error(pg))
            }
            None => e.to_string(),
        }
    }

    /// Applies what `client`'s database lacks; returns the names applied.
    pub async fn apply(
        &self,
        client: &mut tokio_postgres::Client,
    ) -> Result<Vec<String>, TemplateError> {
        let report = self.runner()?.run_async(client).await.map_err(|e| {
            let reached = e
                .report()
                .and_then(|r| r.applied_migrations().iter().map(|m| m.version()).max())
                .unwrap_or(0);
            TemplateError::Apply {
                name: self.name.clone(),
                reason: self.describe_failure(&e, reached),
            }
        })?;
        Ok(report
            .applied_migrations()
            .iter()
            .map(|m| format!("V{}__{}", m.version(), m.name()))
            .collect())
    }
}

/// Template names become part of database names: `^[a-z][a-z0-9_]{0,29}$`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=30).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

fn parse_stem(stem: &str) -> Option<(i32, &str)> {
    let rest = stem.strip_prefix('V')?;
    let (number, label) = rest.split_once("__")?;
    let version = number.parse::<i32>().ok().filter(|v| *v > 0)?;
    (!label.is_empty()).then_some((version, label))
}

/// The server's message (`describe_pg_error`) with its SQLSTATE, for the report.
pub(crate) fn pg_error(e: &tokio_postgres::Error) -> String {
    let text = tenantry_catalog::describe_pg_error(e);
    match e.code() {
        Some(code) => format!("{text} (SQLSTATE {})", code.code()),
        None => text,
    }
}

/// Finds the PostgreSQL error under a refinery error.
pub(crate) fn refinery_cause(e: &refinery::Error) -> Option<&tokio_postgres::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(pg) = s.downcast_ref::<tokio_postgres::Error>() {
            return Some(pg);
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, sql) in files {
            std::fs::write(dir.join(name), sql).unwrap();
        }
    }

    #[test]
    fn loads_in_version_order_with_a_content_checksum() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("demo");
        write(
            &dir,
            &[
                ("V10__ten.sql", "SELECT 10;"),
                ("V2__two.sql", "SELECT 2;"),
                ("README.md", "x"),
            ],
        );
        let t = Template::load(root.path(), "demo").unwrap();
        let names: Vec<_> = t.files().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["V2__two", "V10__ten"]);
        assert_eq!(t.latest_version(), 10);
        let before = t.checksum().to_owned();
        assert_eq!(before.len(), 12);
        std::fs::write(dir.join("V2__two.sql"), "SELECT 22;").unwrap();
        assert_ne!(
            Template::load(root.path(), "demo").unwrap().checksum(),
            before
        );
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            Template::load(root.path(), "nope"),
            Err(TemplateError::NotFound { .. })
        ));
        assert!(matches!(
            Template::load(root.path(), "../etc"),
            Err(TemplateError::BadName(_))
        ));
        assert!(matches!(
            Template::load(root.path(), "Bad"),
            Err(TemplateError::BadName(_))
        ));
        write(&root.path().join("empty"), &[]);
        assert!(matches!(
            Template::load(root.path(), "empty"),
            Err(TemplateError::Empty { .. })
        ));
        write(&root.path().join("badfile"), &[("1_init.sql", "")]);
        let e = Template::load(root.path(), "badfile")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1_init.sql") && e.contains("V{number}__{name}.sql"),
            "{e}"
        );
        write(
            &root.path().join("dup"),
            &[("V1__a.sql", ""), ("V1__b.sql", "")],
        );
        assert!(matches!(
            Template::load(root.path(), "dup"),
            Err(TemplateError::DuplicateVersion { version: 1, .. })
        ));
    }

    #[test]
    fn the_shipped_tasks_template_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenant-templates");
        let t = Template::load(&dir, "tasks").unwrap();
        assert!(t.latest_version() >= 1);
        t.runner().unwrap();
    }
}

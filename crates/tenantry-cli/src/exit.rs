use std::process::ExitCode;

/// A command's failure, and the exit code it maps to.
#[derive(Debug)]
pub enum CliError {
    /// Bad usage or bad input: exit 2.
    Usage(anyhow::Error),
    /// The operation failed: exit 1.
    Failed(anyhow::Error),
}

impl CliError {
    pub fn usage(e: impl Into<anyhow::Error>) -> Self {
        Self::Usage(e.into())
    }

    pub fn failed(e: impl Into<anyhow::Error>) -> Self {
        Self::Failed(e.into())
    }

    /// Prints the error (with its causes, one per line) and returns the exit code.
    pub fn report(self) -> ExitCode {
        let (code, e) = match self {
            Self::Usage(e) => (2, e),
            Self::Failed(e) => (1, e),
        };
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        ExitCode::from(code)
    }
}

macro_rules! failed_from {
    ($($t:ty),+) => {$(
        /// The operation failed: exit 1.
        impl From<$t> for CliError {
            fn from(e: $t) -> Self {
                Self::Failed(e.into())
            }
        }
    )+};
}

failed_from!(
    anyhow::Error,
    std::io::Error,
    tokio::task::JoinError,
    tenantry_catalog::CatalogError,
    tenantry_embedded::ClusterError,
    tenantry_router::BindError,
    tenantry_router::auth::AuthSetupError
);

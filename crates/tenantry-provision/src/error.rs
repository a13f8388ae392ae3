use tenantry_catalog::CatalogError;
use tenantry_migrate::TemplateError;

/// How a caller should treat a failure: the CLI maps these to exit codes, the HTTP
/// edge to status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request was wrong (bad slug, unknown plan, a conflicting create…): exit 2, HTTP 400/422.
    BadInput,
    /// What it names does not exist: exit 2, HTTP 404.
    NotFound,
    /// The request does not fit the current state (e.g. resume a deleted tenant): exit 2, HTTP 409.
    Conflict,
    /// A server or the catalog could not be reached, or had no room: exit 1, HTTP 503.
    Unavailable,
    /// The operation failed: exit 1, HTTP 500.
    Failed,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NoCapacity(String),
    #[error("server {server} is unavailable: {reason}")]
    ServerUnavailable { server: String, reason: String },
    #[error("{context} on server {server}: {reason}")]
    Server {
        server: String,
        context: String,
        reason: String,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("export failed: {0}")]
    Export(String),
    /// A long operation (a move) that could not go on, and why.
    #[error("{0}")]
    Failed(String),
    #[error("injected fault at {0}")]
    Injected(String),
    #[error("{0}")]
    Internal(String),
}

impl From<tenantry_migrate::history::HistoryError> for ProvisionError {
    fn from(e: tenantry_migrate::history::HistoryError) -> Self {
        match e {
            tenantry_migrate::history::HistoryError::Catalog(e) => Self::Catalog(e),
            tenantry_migrate::history::HistoryError::Template(e) => Self::Template(e),
        }
    }
}

impl From<tokio_postgres::Error> for ProvisionError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Catalog(CatalogError::Query(e))
    }
}

impl ProvisionError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadInput(_) => ErrorKind::BadInput,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Template(e) if e.is_bad_input() => ErrorKind::BadInput,
            Self::NoCapacity(_) | Self::ServerUnavailable { .. } => ErrorKind::Unavailable,
            Self::Catalog(CatalogError::Unreachable(_)) => ErrorKind::Unavailable,
            _ => ErrorKind::Failed,
        }
    }

    pub(crate) fn server(server: &str, context: &str, e: &tokio_postgres::Error) -> Self {
        Self::Server {
            server: server.to_owned(),
            context: context.to_owned(),
            reason: describe(e),
        }
    }
}

pub(crate) use tenantry_catalog::describe_pg_error as describe;

use harvest_proto::RoomStatus;

/// What can go wrong in the store, one variant per answer the API gives.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("a product with this sku already exists for this owner")]
    DuplicateSku,
    #[error("the room is {0:?}")]
    InvalidState(RoomStatus),
    #[error("the product is not in the room")]
    NotInRoom,
    #[error("the order was already refunded")]
    AlreadyRefunded,
    /// The database could not be reached or did not answer in time; the outcome of a
    /// write that failed this way is unknown.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
}

impl StoreError {
    /// Whether a retry may succeed (the database is down or slow).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err.to_string()),
            sqlx::Error::Database(ref db) if is_connection_failure(db.code().as_deref()) => {
                Self::Unavailable(err.to_string())
            }
            other => Self::Database(other),
        }
    }
}

/// PostgreSQL SQLSTATE classes that mean "the server cannot serve now" (connection
/// exceptions, insufficient resources, operator intervention such as a shutdown), and
/// SQLite's busy/locked codes.
fn is_connection_failure(code: Option<&str>) -> bool {
    match code {
        Some(code) => {
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code == "5"
                || code == "6"
        }
        None => false,
    }
}

/// Whether a database error is a unique-constraint violation.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

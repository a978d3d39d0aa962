//! The warehouse's error type.

use ymera_common::ErrorClass;

/// Result alias of the warehouse crate.
pub type Result<T, E = WarehouseError> = std::result::Result<T, E>;

/// What went wrong, naming the table, column or URL concerned.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// Configuration or input the user must change (bad URL, unknown table, type mismatch).
    #[error("{0}")]
    User(String),
    /// The database is unreachable or failed transiently: retry.
    #[error("{0}")]
    External(String),
    /// Another writer advanced this partition's offset: this process no longer owns it.
    #[error("{0}")]
    Fenced(String),
    /// A statement failed in a way retrying cannot fix.
    #[error("{0}")]
    Database(String),
}

impl WarehouseError {
    pub fn class(&self) -> ErrorClass {
        match self {
            WarehouseError::User(_) | WarehouseError::Database(_) => ErrorClass::User,
            WarehouseError::External(_) => ErrorClass::External,
            WarehouseError::Fenced(_) => ErrorClass::External,
        }
    }

    /// Maps a sqlx error: connection-level failures are external (retryable), statement
    /// errors are not.
    pub(crate) fn from_sqlx(e: sqlx::Error, url: &str) -> WarehouseError {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => WarehouseError::External(format!("warehouse {url}: {e}")),
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.to_string()).unwrap_or_default();
                let transient = if url.starts_with("sqlite:") {
                    // SQLite's primary code is the low byte of its extended one: busy,
                    // locked, an I/O error, a full disk
                    code.parse::<i32>()
                        .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13))
                } else {
                    // PostgreSQL: connection (08), serialization/deadlock (40), resources
                    // such as a full disk (53), shutdown (57P), a lock wait past
                    // lock_timeout (55P03), a statement past statement_timeout (57014)
                    code.starts_with("08")
                        || code.starts_with("40")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        || code == "55P03"
                        || code == "57014"
                };
                if transient {
                    WarehouseError::External(format!("warehouse {url}: {db}"))
                } else {
                    WarehouseError::Database(format!("warehouse {url}: {db}"))
                }
            }
            other => WarehouseError::Database(format!("warehouse {url}: {other}")),
        }
    }
}

//! The lake's error type.

use ymera_common::ErrorClass;

/// Result alias of the lake crate.
pub type Result<T, E = LakeError> = std::result::Result<T, E>;

/// What went wrong in the lake, always naming the object or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("invalid lake url `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("object store error at `{path}`: {source}")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("i/o error at `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parquet error writing table `{table}`: {source}")]
    Parquet {
        table: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("arrow error in table `{table}`: {source}")]
    Arrow {
        table: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("delta table `{table}`: {message}")]
    Delta {
        table: String,
        message: String,
        /// Contention or a transient log-store failure: worth retrying.
        external: bool,
    },
    #[error("sql catalog error: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("{0}")]
    Invalid(String),
    #[error("internal error (this is a bug): {0}")]
    Internal(String),
}

impl LakeError {
    /// Who must act on this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            LakeError::Url { .. } | LakeError::Invalid(_) => ErrorClass::User,
            LakeError::Delta { external: true, .. } => ErrorClass::External,
            LakeError::Delta { .. } => ErrorClass::User,
            LakeError::Store { .. } | LakeError::Io { .. } => ErrorClass::External,
            LakeError::Parquet { .. } | LakeError::Arrow { .. } | LakeError::DataFusion(_) => {
                ErrorClass::Internal
            }
            LakeError::Internal(_) => ErrorClass::Internal,
        }
    }

    pub(crate) fn store(path: impl ToString, source: object_store::Error) -> Self {
        LakeError::Store {
            path: path.to_string(),
            source,
        }
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        LakeError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

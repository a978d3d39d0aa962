//! The transform layer's error type.

use ymera_common::ErrorClass;

/// Result alias of the transform crate.
pub type Result<T, E = TransformError> = std::result::Result<T, E>;

/// A stage that did not plan or did not run, naming the stage.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransformError {
    /// The SQL does not plan: unknown table or column, syntax, types, forbidden statement.
    #[error("stage `{stage}`: {message}")]
    Plan { stage: String, message: String },
    /// The SQL planned but failed on this data (a cast, a division, ...).
    #[error("stage `{stage}` failed: {message}")]
    Execute { stage: String, message: String },
    #[error("internal error (this is a bug): {0}")]
    Internal(String),
}

impl TransformError {
    /// A planning error of `stage`, as one line.
    pub fn plan(stage: &str, e: datafusion::error::DataFusionError) -> Self {
        TransformError::Plan {
            stage: stage.to_string(),
            message: clean(e),
        }
    }

    /// An execution error of `stage`, as one line.
    pub fn execute(stage: &str, e: datafusion::error::DataFusionError) -> Self {
        TransformError::Execute {
            stage: stage.to_string(),
            message: clean(e),
        }
    }

    /// Who must act on this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            TransformError::Plan { .. } | TransformError::Execute { .. } => ErrorClass::User,
            TransformError::Internal(_) => ErrorClass::Internal,
        }
    }
}

/// DataFusion's messages, without the backtrace noise and with one line.
fn clean(e: datafusion::error::DataFusionError) -> String {
    let e = e.find_root().to_string();
    e.lines().next().unwrap_or_default().trim().to_string()
}

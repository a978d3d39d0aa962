//! Training specs, models and the versioned registry.
//!
//! * [`spec`]: `models/*.yaml` — the feature query, label, algorithm, time-based split,
//!   metrics and promotion gate.
//! * [`features`]: Arrow batches and JSON instances to standardised numeric rows.
//! * [`model`]: the estimators (linfa's logistic regression and k-means, smartcore's
//!   linear regression and random forest), Platt calibration, conformal intervals and
//!   exact local contributions.
//! * [`train`]: runs a spec against the lake/warehouse and registers the result.
//! * [`registry`]: immutable versions (`_models/<name>/<version>/`) with manifests and
//!   hashes, and aliases moved by compare-and-swap as create-only numbered records.
//!
//! No ndarray or smartcore type appears in this crate's public API.

pub mod detector;
pub mod features;
pub mod forecast;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod scaling;
pub mod spec;
pub mod train;

pub use registry::{AliasRecord, Artifact, LoadedModel, Manifest, Registry};
pub use spec::{LoadedSpec, Task, TrainingSpec, load_spec};

/// Why a model operation failed. The variants map onto HTTP statuses in `ymera serve`
/// (400, 404, 409, 422, 500).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A request's input: missing, extra, mistyped or non-finite feature, bad shape.
    #[error("{0}")]
    Input(String),
    /// An unknown model, version or alias; `available` lists what exists.
    #[error("{what} not found{}", available_list(.available))]
    NotFound {
        what: String,
        available: Vec<String>,
    },
    /// A compare-and-swap lost: the alias moved since the caller looked.
    #[error("{0}")]
    Conflict(String),
    /// The version did not pass its promotion gate.
    #[error("{0}")]
    Gate(String),
    /// A manifest or artifact does not match its recorded hash or its place.
    #[error("{0}")]
    Integrity(String),
    /// The training data: missing columns, no rows, wrong types.
    #[error("{0}")]
    Data(String),
    /// An estimator failed to fit or predict.
    #[error("{0}")]
    Model(String),
    /// The object store.
    #[error("{0}")]
    Storage(String),
    /// Work that ran past its deadline (or whose caller went away) and was stopped.
    #[error("{0}")]
    Deadline(String),
    /// A bound the server keeps is reached (forecasters tracked, ...): try again later.
    #[error("{0}")]
    Busy(String),
}

fn available_list(a: &[String]) -> String {
    if a.is_empty() {
        " (there are none)".into()
    } else {
        format!(" (available: {})", a.join(", "))
    }
}

impl From<ymera_lake::LakeError> for ModelError {
    fn from(e: ymera_lake::LakeError) -> Self {
        ModelError::Storage(e.to_string())
    }
}

//! Anomaly detectors in the registry: an isolation forest (trained by `ymera anomaly
//! train`) is stored as a version of task `anomaly_detection` whose artifact holds the
//! fitted forest as JSON (`Estimator::Recipe` of kind `isolation_forest`; this crate does
//! not need the anomaly crate's types), with the training series' lineage.

use std::collections::BTreeMap;

use crate::ModelError;
use crate::registry::{ArtifactRef, Lineage};
use crate::spec::{Params, Task};

/// The kind an isolation forest's artifact carries.
pub const ISOLATION_FOREST: &str = "isolation_forest";

/// Where a detector was trained.
#[derive(Debug, Clone)]
pub struct TrainedOn {
    /// `service/metric` or the CSV path.
    pub series: String,
    pub points: usize,
    pub content_sha256: String,
    pub data_from: String,
    pub data_to: String,
}

/// Registers a fitted detector (its JSON) as the next version of `name`.
pub async fn register(
    registry: &crate::Registry,
    name: &str,
    kind: &str,
    detector: serde_json::Value,
    metrics: BTreeMap<String, f64>,
    on: &TrainedOn,
    fit_seconds: f64,
) -> Result<crate::Manifest, ModelError> {
    let artifact = crate::Artifact {
        format: 1,
        name: name.to_string(),
        version: String::new(),
        task: Task::AnomalyDetection,
        features: crate::features::FeatureSchema(Vec::new()),
        estimator: crate::model::Estimator::Recipe {
            kind: kind.to_string(),
            recipe: detector,
        },
    };
    let manifest = crate::Manifest {
        name: name.to_string(),
        version: String::new(),
        created_at: chrono::Utc::now(),
        task: Task::AnomalyDetection,
        algorithm: kind.to_string(),
        params: Params::default(),
        calibration: Some("scores calibrated on the training series' own scores".into()),
        label: Some(on.series.clone()),
        metrics,
        gate: Vec::new(),
        gate_passed: true,
        lineage: Lineage {
            query: on.series.clone(),
            tables: Vec::new(),
            rows: on.points,
            train_rows: on.points,
            calibration_rows: 0,
            holdout_rows: 0,
            skipped_rows: 0,
            content_sha256: on.content_sha256.clone(),
            time_range: (on.data_from.clone(), on.data_to.clone()),
            holdout_from: String::new(),
        },
        features: crate::features::FeatureSchema(Vec::new()),
        artifact: ArtifactRef {
            path: String::new(),
            sha256: String::new(),
            bytes: 0,
        },
        spec_sha256: String::new(),
        fit_seconds,
        crate_version: env!("CARGO_PKG_VERSION").into(),
        status: "registered".into(),
    };
    registry.register(artifact, manifest).await
}

/// Loads a detector version (a number or an alias; `None`: the `champion` alias if it
/// exists, else the newest version) and returns its JSON, kind and manifest.
pub async fn load(
    registry: &crate::Registry,
    name: &str,
    version: Option<&str>,
) -> Result<(String, serde_json::Value, crate::Manifest), ModelError> {
    let version = match version {
        Some(v) => v.to_string(),
        None => match registry.alias(name, "champion").await? {
            Some(_) => "champion".to_string(),
            None => registry
                .versions(name)
                .await?
                .iter()
                .rev()
                .find(|e| matches!(e.manifest, Some(Ok(_))))
                .map(|e| e.version.to_string())
                .ok_or_else(|| ModelError::NotFound {
                    what: format!("a registered version of `{name}`"),
                    available: Vec::new(),
                })?,
        },
    };
    let loaded = registry.load_resolved(name, &version).await?;
    match loaded.artifact.estimator {
        crate::model::Estimator::Recipe { kind, recipe }
            if loaded.manifest.task == Task::AnomalyDetection =>
        {
            Ok((kind, recipe, loaded.manifest))
        }
        _ => Err(ModelError::Input(format!(
            "model `{name}` is not an anomaly detector (task {})",
            loaded.manifest.task
        ))),
    }
}

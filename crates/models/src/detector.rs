//! Anomaly detectors in the registry: an isolation forest (trained by `ymera anomaly
//! train`) is stored as a version of task `anomaly_detection` whose artifact holds the
//! fitted forest as JSON (`Estimator::Recipe` of kind `isolation_forest`; this crate does
//! not need the anomaly crate's types), with the training series' lineage.

use std::collections::BTreeMap;

use crate::ModelError;
use crate::registry::RecipeModel;
use crate::spec::Task;

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
    registry
        .register_recipe_model(RecipeModel {
            name: name.to_string(),
            task: Task::AnomalyDetection,
            kind: kind.to_string(),
            recipe: detector,
            algorithm: kind.to_string(),
            calibration: Some("scores calibrated on the training series' own scores".into()),
            series: on.series.clone(),
            query: None,
            points: on.points,
            holdout_points: 0,
            content_sha256: on.content_sha256.clone(),
            time_range: (on.data_from.clone(), on.data_to.clone()),
            metrics,
            gate: Vec::new(),
            fit_seconds,
        })
        .await
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
        None => registry.default_ref(name).await?,
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

//! Training: run the spec's feature query, split by time, fit, calibrate, evaluate on the
//! held-out rows, check the gate and register a new version.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use ymera_lake::Lake;
use ymera_query::{Analyst, Source};

use crate::ModelError;
use crate::features::{Dataset, LabelKind, Matrix, dataset};
use crate::metrics;
use crate::model::{self, Estimator};
use crate::registry::{
    Artifact, ArtifactRef, FileRef, GateCheck, Lineage, Manifest, Registry, TableLineage,
    sha256_hex,
};
use crate::spec::{Algorithm, Calibration, LoadedSpec, Task};

/// The steps of training, reported to the caller's progress display.
pub const STAGES: [&str; 5] = [
    "running the feature query",
    "reading features",
    "fitting, calibrating, evaluating on the holdout",
    "checking the gate",
    "registering",
];

/// Row indices of the three parts of a time-based split.
#[derive(Debug)]
pub struct Split {
    pub train: Vec<usize>,
    pub calibration: Vec<usize>,
    pub holdout: Vec<usize>,
}

/// Orders rows by time and cuts the newest `holdout` share off for evaluation, then the
/// newest `calibration` share of the rest (ties in time stay on one side of each cut).
pub fn time_split(time: &[i64], holdout: f64, calibration: f64) -> Split {
    let mut idx: Vec<usize> = (0..time.len()).collect();
    idx.sort_by_key(|&i| (time[i], i));
    let cut = |part: &[usize], share: f64| -> usize {
        let n = part.len();
        let mut at = n - ((n as f64 * share).ceil() as usize).min(n);
        // move the cut back so equal times are not split
        while at > 0 && at < n && time[part[at - 1]] == time[part[at]] {
            at -= 1;
        }
        at
    };
    let h = cut(&idx, holdout);
    let rest = idx[..h].to_vec();
    let holdout_idx = idx[h..].to_vec();
    let c = cut(&rest, calibration);
    Split {
        train: rest[..c].to_vec(),
        calibration: rest[c..].to_vec(),
        holdout: holdout_idx,
    }
}

fn pick(v: &[f64], idx: &[usize]) -> Vec<f64> {
    idx.iter().map(|&i| v[i]).collect()
}

fn time_text(t: i64, is_ts: bool) -> String {
    if is_ts {
        DateTime::<Utc>::from_timestamp_micros(t)
            .map(|d| d.to_rfc3339())
            .unwrap_or_else(|| t.to_string())
    } else {
        t.to_string()
    }
}

/// What a fit produced before registration.
struct Fitted {
    estimator: Estimator,
    metrics: BTreeMap<String, f64>,
    calibration: Option<String>,
}

/// Trains the spec and registers a new version; `progress(i)` is called as stage `i` of
/// [`STAGES`] starts. Fitting runs on a blocking thread.
pub async fn train(
    loaded: &LoadedSpec,
    analyst: &Analyst,
    lake: &Lake,
    registry: &Registry,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Manifest, ModelError> {
    let spec = &loaded.spec;
    progress(0);
    let read = analyst
        .tables_read_by(&spec.data.query)
        .await
        .map_err(|e| ModelError::Data(format!("data.query: {e}")))?;
    let mut tables = Vec::new();
    for t in &read {
        // the version the session registered is the snapshot the query reads
        let (version, files) = match (&t.source, &t.delta) {
            (Source::Lake, Some((dir, version))) => {
                let files = ymera_lake::delta::files_at(lake, dir, *version)
                    .await
                    .map_err(|e| {
                        ModelError::Storage(format!("reading lake table `{}`: {e}", t.name))
                    })?
                    .into_iter()
                    .map(|(path, bytes)| FileRef { path, bytes })
                    .collect();
                (Some(*version), files)
            }
            _ => (None, Vec::new()),
        };
        tables.push(TableLineage {
            name: t.name.clone(),
            source: match t.source {
                Source::Lake => "lake".into(),
                Source::Warehouse => "warehouse".into(),
            },
            version,
            files,
        });
    }
    let out = analyst
        .query(&spec.data.query)
        .await
        .map_err(|e| ModelError::Data(format!("data.query: {e}")))?;
    if out.truncated {
        return Err(ModelError::Data(format!(
            "the feature query returned more than {} rows (the row limit); raise it or aggregate in the query",
            out.rows
        )));
    }
    progress(1);
    let label_kind = match spec.task {
        Task::Classification => Some(LabelKind::Binary),
        Task::Regression => Some(LabelKind::Number),
        Task::Clustering => None,
        Task::Forecast | Task::AnomalyDetection => return Err(not_from_spec(spec.task)),
    };
    let ds = dataset(
        &out.batches,
        spec.features.as_deref(),
        &spec.data.time,
        spec.data.id.as_deref(),
        spec.label.as_deref().zip(label_kind),
        &spec.log_features,
    )?;
    let split = time_split(&ds.time, spec.split.holdout, spec.split.calibration);
    let min_train = match spec.task {
        Task::Clustering => spec.algorithm.params.k.unwrap_or(2),
        _ => 10,
    };
    if split.train.len() < min_train || split.holdout.is_empty() {
        return Err(ModelError::Data(format!(
            "too few rows to train and evaluate: {} usable rows ({} train, {} calibration, {} holdout; {} skipped for nulls)",
            ds.time.len(),
            split.train.len(),
            split.calibration.len(),
            split.holdout.len(),
            ds.skipped
        )));
    }
    progress(2);
    let started = Instant::now();
    let spec_owned = loaded.clone();
    let (ds, split, fitted) = tokio::task::spawn_blocking(move || {
        let fitted = fit(&spec_owned, &ds, &split);
        (ds, split, fitted)
    })
    .await
    .map_err(|e| ModelError::Model(format!("training task failed: {e}")))?;
    let fitted = fitted?;
    let fit_seconds = started.elapsed().as_secs_f64();
    progress(3);
    let mut metrics = fitted.metrics;
    if !spec.metrics.is_empty() {
        metrics.retain(|k, _| {
            spec.metrics.iter().any(|m| m == k) || loaded.gate.iter().any(|g| &g.metric == k)
        });
    }
    let gate: Vec<GateCheck> = loaded
        .gate
        .iter()
        .map(|t| {
            let actual = metrics.get(&t.metric).copied();
            GateCheck {
                threshold: t.clone(),
                actual,
                passed: actual.is_some_and(|a| t.op.holds(a, t.value)),
            }
        })
        .collect();
    let gate_passed = gate.iter().all(|g| g.passed);
    progress(4);
    let (first, last) = (
        ds.time.iter().min().copied().unwrap_or_default(),
        ds.time.iter().max().copied().unwrap_or_default(),
    );
    let holdout_from = split
        .holdout
        .iter()
        .map(|&i| ds.time[i])
        .min()
        .unwrap_or_default();
    let manifest = Manifest {
        name: spec.name.clone(),
        version: String::new(),
        created_at: Utc::now(),
        task: spec.task,
        algorithm: spec.algorithm.name.name().into(),
        params: spec.algorithm.params.clone(),
        calibration: fitted.calibration,
        label: spec.label.clone(),
        metrics,
        gate,
        gate_passed,
        lineage: Lineage {
            query: spec.data.query.clone(),
            tables,
            rows: ds.time.len(),
            train_rows: split.train.len(),
            calibration_rows: split.calibration.len(),
            holdout_rows: split.holdout.len(),
            skipped_rows: ds.skipped,
            content_sha256: ds.content_sha256.clone(),
            content_sha256_sorted: true,
            time_range: (
                time_text(first, ds.time_is_timestamp),
                time_text(last, ds.time_is_timestamp),
            ),
            holdout_from: time_text(holdout_from, ds.time_is_timestamp),
        },
        features: ds.schema.clone(),
        artifact: ArtifactRef {
            path: String::new(),
            sha256: String::new(),
            bytes: 0,
        },
        spec_sha256: sha256_hex(loaded.text.as_bytes()),
        fit_seconds,
        crate_version: env!("CARGO_PKG_VERSION").into(),
        status: "registered".into(),
    };
    let artifact = Artifact {
        format: 1,
        name: spec.name.clone(),
        version: String::new(),
        task: spec.task,
        features: ds.schema,
        estimator: fitted.estimator,
    };
    registry.register(artifact, manifest).await
}

/// Fits and evaluates (blocking).
fn fit(loaded: &LoadedSpec, ds: &Dataset, split: &Split) -> Result<Fitted, ModelError> {
    let spec = &loaded.spec;
    let params = &spec.algorithm.params;
    let x_train = ds.x.select(&split.train);
    let x_cal = ds.x.select(&split.calibration);
    let x_hold = ds.x.select(&split.holdout);
    let mut m = BTreeMap::new();
    match spec.task {
        Task::Classification => {
            let y_train = pick(&ds.y, &split.train);
            let y_cal = pick(&ds.y, &split.calibration);
            let y_hold = pick(&ds.y, &split.holdout);
            let mut est = model::fit_logistic(&x_train, &y_train, params)?;
            let calibration = match spec.calibration {
                Calibration::Platt if !split.calibration.is_empty() => {
                    let scores = est.raw_scores(&x_cal)?;
                    let (a, b) = model::fit_platt(&scores, &y_cal);
                    if let Estimator::Logistic { platt, .. } = &mut est {
                        *platt = (a, b);
                    }
                    Some(format!(
                        "platt (a = {a:.4}, b = {b:.4}) on {} rows",
                        y_cal.len()
                    ))
                }
                _ => None,
            };
            let p: Vec<f64> = est
                .predict(&ds.schema, &x_hold, false)?
                .iter()
                .map(|e| e.probability.unwrap_or(f64::NAN))
                .collect();
            if let Some(a) = metrics::auc(&p, &y_hold) {
                m.insert("auc".into(), a);
            }
            m.insert("brier".into(), metrics::brier(&p, &y_hold));
            m.insert("ece".into(), metrics::ece(&p, &y_hold, 10));
            m.insert("log_loss".into(), metrics::log_loss(&p, &y_hold));
            m.insert("accuracy".into(), metrics::accuracy(&p, &y_hold));
            m.insert(
                "base_rate".into(),
                y_hold.iter().sum::<f64>() / y_hold.len() as f64,
            );
            Ok(Fitted {
                estimator: est,
                metrics: m,
                calibration,
            })
        }
        Task::Regression => {
            let level = spec.interval.unwrap_or(0.9);
            let target = |idx: &[usize]| -> Result<Vec<f64>, ModelError> {
                let y = pick(&ds.y, idx);
                if spec.log_target {
                    if let Some(bad) = y.iter().find(|v| **v <= 0.0) {
                        return Err(ModelError::Data(format!(
                            "log_target needs a positive label, found {bad}"
                        )));
                    }
                    Ok(y.iter().map(|v| v.ln()).collect())
                } else {
                    Ok(y)
                }
            };
            let t_train = target(&split.train)?;
            let t_cal = target(&split.calibration)?;
            let mut est = match spec.algorithm.name {
                Algorithm::RandomForest => Estimator::Forest {
                    forest: Box::new(model::fit_forest(&x_train, &t_train, params)?),
                    log_target: spec.log_target,
                    half_width: 0.0,
                    level,
                },
                _ => {
                    let (weights, intercept) = model::fit_linear(&x_train, &t_train)?;
                    Estimator::Linear {
                        weights,
                        intercept,
                        log_target: spec.log_target,
                        half_width: 0.0,
                        level,
                    }
                }
            };
            // split conformal: the interval's half-width is a quantile of the calibration
            // fold's absolute residuals (on the model's scale)
            let cal_pred = est.raw_scores(&x_cal)?;
            let resid: Vec<f64> = cal_pred
                .iter()
                .zip(&t_cal)
                .map(|(p, y)| (p - y).abs())
                .collect();
            let q = metrics::conformal_quantile(&resid, level);
            match &mut est {
                Estimator::Linear { half_width, .. } | Estimator::Forest { half_width, .. } => {
                    *half_width = q
                }
                _ => {}
            }
            let y_hold = pick(&ds.y, &split.holdout);
            let preds = est.predict(&ds.schema, &x_hold, false)?;
            let v: Vec<f64> = preds.iter().map(|e| e.value.unwrap_or(f64::NAN)).collect();
            let lo: Vec<f64> = preds.iter().map(|e| e.lower.unwrap_or(f64::NAN)).collect();
            let hi: Vec<f64> = preds.iter().map(|e| e.upper.unwrap_or(f64::NAN)).collect();
            m.insert("mae".into(), metrics::mae(&v, &y_hold));
            m.insert("rmse".into(), metrics::rmse(&v, &y_hold));
            m.insert("r2".into(), metrics::r2(&v, &y_hold));
            m.insert("coverage".into(), metrics::coverage(&lo, &hi, &y_hold));
            m.insert(
                "interval_width".into(),
                hi.iter().zip(&lo).map(|(h, l)| h - l).sum::<f64>() / hi.len() as f64,
            );
            Ok(Fitted {
                estimator: est,
                metrics: m,
                calibration: Some(format!(
                    "split-conformal {:.0}% interval from {} calibration rows",
                    level * 100.0,
                    t_cal.len()
                )),
            })
        }
        Task::Clustering => {
            let mut fit_idx = split.train.clone();
            fit_idx.extend(&split.calibration);
            let centroids = model::fit_kmeans(&ds.x.select(&fit_idx), params)?;
            let rows: Vec<Vec<f64>> = x_hold.to_vecs();
            let assigned: Vec<(usize, f64)> =
                rows.iter().map(|r| model::nearest(&centroids, r)).collect();
            m.insert(
                "inertia".into(),
                assigned.iter().map(|(_, d)| d * d).sum::<f64>() / rows.len() as f64,
            );
            let labels: Vec<usize> = assigned.iter().map(|a| a.0).collect();
            m.insert(
                "silhouette".into(),
                metrics::silhouette(&rows, &labels, centroids.len(), 2000),
            );
            Ok(Fitted {
                estimator: Estimator::Kmeans { centroids },
                metrics: m,
                calibration: None,
            })
        }
        Task::Forecast | Task::AnomalyDetection => Err(not_from_spec(spec.task)),
    }
}

/// Scores a registered model on the rows of a spec's query (e.g. on another lake, to
/// check quality under a shifted distribution). Returns the task's metrics on all rows.
pub fn evaluate(
    artifact: &Artifact,
    batches: &[arrow::array::RecordBatch],
    spec: &LoadedSpec,
) -> Result<BTreeMap<String, f64>, ModelError> {
    let s = &spec.spec;
    let label_kind = match s.task {
        Task::Classification => Some(LabelKind::Binary),
        Task::Regression => Some(LabelKind::Number),
        Task::Clustering => None,
        Task::Forecast | Task::AnomalyDetection => return Err(not_from_spec(s.task)),
    };
    let names: Vec<String> = artifact.features.names().map(String::from).collect();
    let ds = dataset(
        batches,
        Some(&names),
        &s.data.time,
        s.data.id.as_deref(),
        s.label.as_deref().zip(label_kind),
        &s.log_features,
    )?;
    // re-encode with the artifact's standardisation and levels
    let x = reencode(&ds, &artifact.features)?;
    let preds = artifact.estimator.predict(&artifact.features, &x, false)?;
    let mut m = BTreeMap::new();
    match s.task {
        Task::Classification => {
            let p: Vec<f64> = preds
                .iter()
                .map(|e| e.probability.unwrap_or(f64::NAN))
                .collect();
            if let Some(a) = metrics::auc(&p, &ds.y) {
                m.insert("auc".into(), a);
            }
            m.insert("brier".into(), metrics::brier(&p, &ds.y));
            m.insert("ece".into(), metrics::ece(&p, &ds.y, 10));
            m.insert("accuracy".into(), metrics::accuracy(&p, &ds.y));
            m.insert(
                "base_rate".into(),
                ds.y.iter().sum::<f64>() / ds.y.len() as f64,
            );
        }
        Task::Regression => {
            let v: Vec<f64> = preds.iter().map(|e| e.value.unwrap_or(f64::NAN)).collect();
            let lo: Vec<f64> = preds.iter().map(|e| e.lower.unwrap_or(f64::NAN)).collect();
            let hi: Vec<f64> = preds.iter().map(|e| e.upper.unwrap_or(f64::NAN)).collect();
            m.insert("mae".into(), metrics::mae(&v, &ds.y));
            m.insert("r2".into(), metrics::r2(&v, &ds.y));
            m.insert("coverage".into(), metrics::coverage(&lo, &hi, &ds.y));
        }
        Task::Clustering => {
            m.insert(
                "inertia".into(),
                preds
                    .iter()
                    .map(|e| e.distance.unwrap_or(0.0).powi(2))
                    .sum::<f64>()
                    / preds.len() as f64,
            );
        }
        Task::Forecast | Task::AnomalyDetection => return Err(not_from_spec(s.task)),
    }
    m.insert("rows".into(), ds.time.len() as f64);
    Ok(m)
}

/// Undoes `ds`'s own standardisation and applies `schema`'s (same columns, same order).
fn reencode(ds: &Dataset, schema: &crate::features::FeatureSchema) -> Result<Matrix, ModelError> {
    let mut values = Vec::with_capacity(ds.x.rows() * schema.width());
    for r in 0..ds.x.rows() {
        let row = ds.x.row(r);
        let mut at = 0;
        for (own, target) in ds.schema.0.iter().zip(&schema.0) {
            match own.kind {
                crate::features::FeatureType::Text => {
                    let hot = (0..own.levels.len()).find(|&i| row[at + i] == 1.0);
                    at += own.levels.len();
                    let level = hot.map(|i| own.levels[i].as_str()).unwrap_or("");
                    let pos = target.levels.iter().position(|l| l == level);
                    values.extend(
                        (0..target.levels.len()).map(|i| if Some(i) == pos { 1.0 } else { 0.0 }),
                    );
                }
                _ => {
                    let raw = row[at] * own.std + own.mean;
                    at += 1;
                    values.push((raw - target.mean) / target.std);
                }
            }
        }
    }
    Ok(Matrix {
        values,
        cols: schema.width(),
    })
}

/// Forecasters and isolation forests are fitted by `ymera serve`/`ymera forecast` and the
/// anomaly stage, not from a training spec.
fn not_from_spec(task: Task) -> ModelError {
    ModelError::Data(format!(
        "task `{task}` is not trained from a spec: forecasts are fitted by `ymera forecast` and `ymera serve`, isolation forests by the anomaly stage"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_split_holds_out_the_newest_and_keeps_ties_together() {
        let t = [5, 1, 4, 2, 3, 3, 6, 7, 8, 9];
        let s = time_split(&t, 0.2, 0.25);
        let times = |idx: &[usize]| idx.iter().map(|&i| t[i]).collect::<Vec<_>>();
        assert_eq!(times(&s.holdout), vec![8, 9]);
        // rest = 1 2 3 3 4 5 6 7; newest 25 % = 2 rows
        assert_eq!(times(&s.calibration), vec![6, 7]);
        assert_eq!(times(&s.train), vec![1, 2, 3, 3, 4, 5]);
        let t2 = [1, 2, 3, 3, 3];
        let s = time_split(&t2, 0.2, 0.2);
        let times2: Vec<i64> = s.holdout.iter().map(|&i| t2[i]).collect();
        assert_eq!(times2, vec![3, 3, 3]);
    }
}

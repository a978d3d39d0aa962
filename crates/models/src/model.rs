//! The estimators: fitting (blocking; callers run it on a blocking thread), the serialised
//! artifact, and predictions with probabilities, intervals and local contributions.
//!
//! No ndarray or smartcore matrix type leaves this module: linfa (ndarray 0.16) and
//! smartcore (its own `DenseMatrix`) are fed from [`Matrix`] and their results copied out.

use linfa::prelude::*;
use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_regressor::{
    RandomForestRegressor, RandomForestRegressorParameters,
};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::ridge_regression::{RidgeRegression, RidgeRegressionParameters};

use crate::ModelError;
use crate::features::{FeatureSchema, Matrix, by_feature};
use crate::spec::Params;

type Forest = RandomForestRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>>;

/// A fitted estimator, as stored in the artifact.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Estimator {
    /// `score = intercept + Σ wᵢ·xᵢ` (log-odds), then Platt: `p = σ(a·score + b)`.
    Logistic {
        weights: Vec<f64>,
        intercept: f64,
        /// Platt scaling `(a, b)`; `(1, 0)` when uncalibrated.
        platt: (f64, f64),
    },
    /// `ŷ = intercept + Σ wᵢ·xᵢ` (on ln(y) when `log_target`), ± the conformal half-width.
    Linear {
        weights: Vec<f64>,
        intercept: f64,
        log_target: bool,
        half_width: f64,
        level: f64,
    },
    /// smartcore's forest (on ln(y) when `log_target`), ± the conformal half-width.
    Forest {
        forest: Box<Forest>,
        log_target: bool,
        half_width: f64,
        level: f64,
    },
    /// Nearest centroid.
    Kmeans { centroids: Vec<Vec<f64>> },
    /// How to rebuild a model that is not served by `:predict`: a forecaster's refit
    /// recipe (`kind: forecast`) or an isolation forest (`kind: isolation_forest`), kept
    /// as JSON so this crate need not know the anomaly crate's types.
    Recipe {
        #[serde(rename = "recipe_kind")]
        kind: String,
        recipe: serde_json::Value,
    },
}

fn not_served(kind: &str) -> ModelError {
    ModelError::Input(format!(
        "this model is a {kind} recipe: it is not served by :predict (forecasts: GET /v1/autoscale/{{service}}/forecast; anomaly scores: POST /v1/anomaly/detect)"
    ))
}

/// One prediction.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Estimate {
    /// Classification: the calibrated probability of the positive label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<bool>,
    /// Classification: the calibrated log-odds, = `base_score` + Σ contributions.
    /// Regression: the prediction on the model's scale (ln when log_target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Regression: the predicted value and its interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<f64>,
    /// Clustering: the segment and the distance to its centroid (standardised units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance: Option<f64>,
    /// With `explain`: the score when every numeric feature is at its training mean
    /// and every text feature contributes nothing …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_score: Option<f64>,
    /// … plus these, per feature, biggest first, gives `score` exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_features: Option<Vec<(String, f64)>>,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn dot(w: &[f64], x: &[f64]) -> f64 {
    w.iter().zip(x).map(|(a, b)| a * b).sum()
}

impl Estimator {
    /// The raw (uncalibrated) score of each row, on the scale the calibration uses.
    pub fn raw_scores(&self, x: &Matrix) -> Result<Vec<f64>, ModelError> {
        match self {
            Estimator::Logistic {
                weights, intercept, ..
            }
            | Estimator::Linear {
                weights, intercept, ..
            } => Ok((0..x.rows())
                .map(|i| intercept + dot(weights, x.row(i)))
                .collect()),
            Estimator::Forest { forest, .. } => {
                if x.rows() == 0 {
                    return Ok(Vec::new());
                }
                let m = DenseMatrix::from_2d_vec(&x.to_vecs())
                    .map_err(|e| ModelError::Model(format!("forest input: {e}")))?;
                forest
                    .predict(&m)
                    .map_err(|e| ModelError::Model(format!("forest prediction: {e}")))
            }
            Estimator::Kmeans { .. } => Err(ModelError::Model("k-means has no score".into())),
            Estimator::Recipe { kind, .. } => Err(not_served(kind)),
        }
    }

    /// Predictions for encoded rows; `explain` adds the local contributions where the
    /// estimator has exact ones (linear models).
    pub fn predict(
        &self,
        schema: &FeatureSchema,
        x: &Matrix,
        explain: bool,
    ) -> Result<Vec<Estimate>, ModelError> {
        match self {
            Estimator::Logistic {
                weights,
                intercept,
                platt: (a, b),
            } => Ok((0..x.rows())
                .map(|i| {
                    let row = x.row(i);
                    let score = a * (intercept + dot(weights, row)) + b;
                    let p = sigmoid(score);
                    let mut e = Estimate {
                        probability: Some(p),
                        label: Some(p >= 0.5),
                        score: Some(score),
                        ..Default::default()
                    };
                    if explain {
                        let per: Vec<f64> =
                            weights.iter().zip(row).map(|(w, v)| a * w * v).collect();
                        e.base_score = Some(a * intercept + b);
                        e.top_features = Some(by_feature(schema, &per));
                    }
                    e
                })
                .collect()),
            Estimator::Linear {
                weights,
                intercept,
                log_target,
                half_width,
                level,
            } => Ok((0..x.rows())
                .map(|i| {
                    let row = x.row(i);
                    let score = intercept + dot(weights, row);
                    let mut e = interval(score, *log_target, *half_width, *level);
                    if explain {
                        let per: Vec<f64> = weights.iter().zip(row).map(|(w, v)| w * v).collect();
                        e.base_score = Some(*intercept);
                        e.top_features = Some(by_feature(schema, &per));
                    }
                    e
                })
                .collect()),
            Estimator::Forest {
                log_target,
                half_width,
                level,
                ..
            } => {
                if explain {
                    return Err(ModelError::Input(
                        "explanations are not available for random_forest models (they have no exact local contributions); send \"explain\": false".into(),
                    ));
                }
                Ok(self
                    .raw_scores(x)?
                    .into_iter()
                    .map(|s| interval(s, *log_target, *half_width, *level))
                    .collect())
            }
            Estimator::Kmeans { centroids } => Ok((0..x.rows())
                .map(|i| {
                    let (c, d) = nearest(centroids, x.row(i));
                    Estimate {
                        cluster: Some(c),
                        distance: Some(d),
                        ..Default::default()
                    }
                })
                .collect()),
            Estimator::Recipe { kind, .. } => Err(not_served(kind)),
        }
    }
}

fn interval(score: f64, log_target: bool, half: f64, level: f64) -> Estimate {
    let f = |v: f64| if log_target { v.exp() } else { v };
    Estimate {
        score: Some(score),
        value: Some(f(score)),
        lower: Some(f(score - half)),
        upper: Some(f(score + half)),
        interval: Some(level),
        ..Default::default()
    }
}

/// Index of the nearest centroid and the distance to it.
pub fn nearest(centroids: &[Vec<f64>], row: &[f64]) -> (usize, f64) {
    centroids
        .iter()
        .enumerate()
        .map(|(i, c)| (i, crate::metrics::dist(c, row)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, f64::NAN))
}

/// Fits a logistic regression (linfa) on 0/1 labels.
pub fn fit_logistic(x: &Matrix, y: &[f64], params: &Params) -> Result<Estimator, ModelError> {
    let records = ndarray::Array2::from_shape_vec((x.rows(), x.cols), x.values.clone())
        .map_err(|e| ModelError::Model(format!("training matrix: {e}")))?;
    let targets: ndarray::Array1<usize> = y.iter().map(|v| usize::from(*v > 0.5)).collect();
    if targets.iter().all(|t| *t == targets[0]) {
        return Err(ModelError::Data(format!(
            "every training label is {}: a classifier needs both outcomes",
            targets[0] == 1
        )));
    }
    let ds = linfa::Dataset::new(records, targets);
    let fitted = linfa_logistic::LogisticRegression::default()
        .alpha(params.alpha.unwrap_or(0.01))
        .max_iterations(params.max_iterations.unwrap_or(300))
        .fit(&ds)
        .map_err(|e| ModelError::Model(format!("logistic regression: {e}")))?;
    // linfa's σ(w·x + b) is the probability of its "positive" class, which is the more
    // frequent label, not label 1: flip the signs when label 0 is the majority
    let flip = if fitted.labels().pos.class == 1 {
        1.0
    } else {
        -1.0
    };
    Ok(Estimator::Logistic {
        weights: fitted.params().iter().map(|w| flip * w).collect(),
        intercept: flip * fitted.intercept(),
        platt: (1.0, 0.0),
    })
}

/// Fits Platt scaling `σ(a·s + b)` to scores and 0/1 labels by Newton's method on the
/// log-loss, with Platt's smoothed targets (Platt 1999; Lin, Lin & Weng 2007).
pub fn fit_platt(scores: &[f64], y: &[f64]) -> (f64, f64) {
    let pos = y.iter().filter(|v| **v > 0.5).count() as f64;
    let neg = y.len() as f64 - pos;
    let hi = (pos + 1.0) / (pos + 2.0);
    let lo = 1.0 / (neg + 2.0);
    let t: Vec<f64> = y.iter().map(|v| if *v > 0.5 { hi } else { lo }).collect();
    let (mut a, mut b) = (1.0, 0.0);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-12, 0.0, 1e-12);
        for (s, t) in scores.iter().zip(&t) {
            let p = sigmoid(a * s + b);
            let d = p - t;
            let w = p * (1.0 - p);
            ga += d * s;
            gb += d;
            haa += w * s * s;
            hab += w * s;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-18 {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        a -= da;
        b -= db;
        if da.abs() < 1e-10 && db.abs() < 1e-10 {
            break;
        }
    }
    (a, b)
}

/// Fits a ridge-stabilised linear regression (smartcore) and reads its coefficients back.
pub fn fit_linear(x: &Matrix, y: &[f64]) -> Result<(Vec<f64>, f64), ModelError> {
    let m = DenseMatrix::from_2d_vec(&x.to_vecs())
        .map_err(|e| ModelError::Model(format!("training matrix: {e}")))?;
    let model = RidgeRegression::fit(
        &m,
        &y.to_vec(),
        RidgeRegressionParameters::default().with_alpha(1e-6),
    )
    .map_err(|e| ModelError::Model(format!("linear regression: {e}")))?;
    // the model is linear: its intercept is the prediction at 0, each weight the change
    // at a unit vector
    let mut probes = vec![vec![0.0; x.cols]];
    for j in 0..x.cols {
        let mut e = vec![0.0; x.cols];
        e[j] = 1.0;
        probes.push(e);
    }
    let probe = DenseMatrix::from_2d_vec(&probes)
        .map_err(|e| ModelError::Model(format!("probe matrix: {e}")))?;
    let out = model
        .predict(&probe)
        .map_err(|e| ModelError::Model(format!("linear regression: {e}")))?;
    let intercept = out[0];
    Ok((out[1..].iter().map(|v| v - intercept).collect(), intercept))
}

/// Fits smartcore's random forest regressor.
pub fn fit_forest(x: &Matrix, y: &[f64], params: &Params) -> Result<Forest, ModelError> {
    let m = DenseMatrix::from_2d_vec(&x.to_vecs())
        .map_err(|e| ModelError::Model(format!("training matrix: {e}")))?;
    let mut p = RandomForestRegressorParameters::default()
        .with_n_trees(usize::from(params.trees.unwrap_or(100)))
        .with_min_samples_leaf(params.min_samples_leaf.unwrap_or(5))
        .with_seed(params.seed.unwrap_or(42));
    if let Some(d) = params.max_depth {
        p = p.with_max_depth(d);
    }
    Forest::fit(&m, &y.to_vec(), p).map_err(|e| ModelError::Model(format!("random forest: {e}")))
}

/// Fits k-means (linfa; k-means++ initialisation, 10 runs, a fixed seed).
pub fn fit_kmeans(x: &Matrix, params: &Params) -> Result<Vec<Vec<f64>>, ModelError> {
    let k = params.k.unwrap_or(2);
    if x.rows() < k {
        return Err(ModelError::Data(format!(
            "k-means with k = {k} needs at least {k} rows, got {}",
            x.rows()
        )));
    }
    let records = ndarray::Array2::from_shape_vec((x.rows(), x.cols), x.values.clone())
        .map_err(|e| ModelError::Model(format!("training matrix: {e}")))?;
    let ds = linfa::DatasetBase::from(records);
    let model = linfa_clustering::KMeans::params(k)
        .max_n_iterations(params.max_iterations.unwrap_or(300))
        .n_runs(10)
        .tolerance(1e-6)
        .fit(&ds)
        .map_err(|e| ModelError::Model(format!("k-means: {e}")))?;
    Ok(model
        .centroids()
        .rows()
        .into_iter()
        .map(|r| r.to_vec())
        .collect())
}

/// Checks the trees of a stored forest (the artifact's JSON, as read) before anything is
/// built from it: every child index must point at a later node of the same tree (so no
/// index is out of range and no walk loops) and every split must use a column of the
/// `width` an encoded row has. An artifact that fails is refused at load; without this,
/// a corrupt or hostile artifact panics or spins at predict time.
pub fn check_trees(artifact: &serde_json::Value, width: usize) -> Result<(), String> {
    use serde_json::Value;
    /// Walks the JSON once; trees are numbered in the order met, for the message only.
    fn walk(v: &Value, width: usize, trees: &mut usize) -> Result<(), String> {
        match v {
            Value::Object(map) => {
                if let Some(Value::Array(nodes)) = map.get("nodes")
                    && nodes
                        .iter()
                        .any(|n| n.get("true_child").is_some() || n.get("false_child").is_some())
                {
                    check_nodes(nodes, width, *trees)?;
                    *trees += 1;
                    return Ok(());
                }
                map.values().try_for_each(|child| walk(child, width, trees))
            }
            Value::Array(items) => items.iter().try_for_each(|child| walk(child, width, trees)),
            _ => Ok(()),
        }
    }
    fn check_nodes(nodes: &[Value], width: usize, tree: usize) -> Result<(), String> {
        for (i, n) in nodes.iter().enumerate() {
            let mut split = false;
            for side in ["true_child", "false_child"] {
                match n.get(side) {
                    None | Some(Value::Null) => {}
                    Some(c) => {
                        split = true;
                        let c = c.as_u64().ok_or_else(|| {
                            format!("tree {tree}: node {i}: {side} is not a node index: {c}")
                        })?;
                        if c as usize <= i || c as usize >= nodes.len() {
                            return Err(format!(
                                "tree {tree}: node {i}: {side} is {c}, not a later node of this tree (it has {})",
                                nodes.len()
                            ));
                        }
                    }
                }
            }
            if split {
                let f = n.get("split_feature").and_then(Value::as_u64);
                if f.is_none_or(|f| f as usize >= width) {
                    return Err(format!(
                        "tree {tree}: node {i}: split_feature {f:?} is not one of the {width} encoded columns"
                    ));
                }
            }
        }
        Ok(())
    }
    walk(artifact, width, &mut 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{Feature, FeatureType};

    fn schema(names: &[&str]) -> FeatureSchema {
        FeatureSchema(
            names
                .iter()
                .map(|n| Feature {
                    name: n.to_string(),
                    kind: FeatureType::Float,
                    levels: Vec::new(),
                    log: false,
                    mean: 0.0,
                    std: 1.0,
                })
                .collect(),
        )
    }

    #[test]
    fn logistic_scores_match_linfa_and_contributions_add_up() {
        // y = 1 when 2·a − b + noise > 0
        let mut values = Vec::new();
        let mut y = Vec::new();
        for i in 0..400 {
            let a = ((i * 37) % 101) as f64 / 50.0 - 1.0;
            let b = ((i * 53) % 97) as f64 / 48.0 - 1.0;
            let noise = ((i * 71) % 13) as f64 / 13.0 - 0.5;
            values.extend([a, b]);
            y.push(f64::from(u8::from(2.0 * a - b + noise > 0.0)));
        }
        let x = Matrix { values, cols: 2 };
        // the same data with the labels flipped must give the opposite weights: linfa's
        // positive class is the majority label, whichever it is
        let flipped: Vec<f64> = y.iter().map(|v| 1.0 - v).collect();
        let Estimator::Logistic { weights: wf, .. } =
            fit_logistic(&x, &flipped, &Params::default()).unwrap()
        else {
            unreachable!()
        };
        assert!(wf[0] < 0.0 && wf[1] > 0.0, "{wf:?}");
        let est = fit_logistic(&x, &y, &Params::default()).unwrap();
        let Estimator::Logistic { weights, .. } = &est else {
            unreachable!()
        };
        assert!(weights[0] > 0.0 && weights[1] < 0.0, "{weights:?}");
        let s = schema(&["a", "b"]);
        let preds = est.predict(&s, &x, true).unwrap();
        for p in &preds {
            let sum: f64 = p.base_score.unwrap()
                + p.top_features
                    .as_ref()
                    .unwrap()
                    .iter()
                    .map(|c| c.1)
                    .sum::<f64>();
            assert!((sum - p.score.unwrap()).abs() < 1e-9);
            assert!((sigmoid(p.score.unwrap()) - p.probability.unwrap()).abs() < 1e-12);
        }
        let probs: Vec<f64> = preds.iter().map(|p| p.probability.unwrap()).collect();
        assert!(crate::metrics::auc(&probs, &y).unwrap() > 0.9);
    }

    #[test]
    fn platt_recovers_a_known_scaling() {
        // labels drawn as Bernoulli(σ(2s − 1)) on a fine grid, deterministically
        let mut s = Vec::new();
        let mut y = Vec::new();
        for i in 0..4000 {
            let score = (i % 200) as f64 / 40.0 - 2.5;
            let p = sigmoid(2.0 * score - 1.0);
            let u = ((i as f64) * 0.618_033_988_75).fract();
            s.push(score);
            y.push(f64::from(u8::from(u < p)));
        }
        let (a, b) = fit_platt(&s, &y);
        assert!(
            (a - 2.0).abs() < 0.25 && (b + 1.0).abs() < 0.2,
            "a={a} b={b}"
        );
    }

    #[test]
    fn a_forest_with_a_bad_child_index_or_split_column_is_refused_before_use() {
        let values: Vec<f64> = (0..200).flat_map(|i| [i as f64, (i % 7) as f64]).collect();
        let y: Vec<f64> = (0..200).map(|i| (i % 10) as f64).collect();
        let params = Params {
            trees: Some(3),
            ..Params::default()
        };
        let forest = fit_forest(&Matrix { values, cols: 2 }, &y, &params).unwrap();
        let good = serde_json::to_value(&forest).unwrap();
        check_trees(&good, 2).unwrap();
        // find the first split of the first tree and break it three ways
        fn first_split(v: &mut serde_json::Value) -> Option<&mut serde_json::Value> {
            match v {
                serde_json::Value::Object(m) => {
                    let has_split = matches!(m.get("nodes"), Some(serde_json::Value::Array(nodes))
                        if nodes.iter().any(|n| n["true_child"].is_u64()));
                    if has_split {
                        let nodes = m.get_mut("nodes")?.as_array_mut()?;
                        return nodes.iter_mut().find(|n| n["true_child"].is_u64());
                    }
                    m.values_mut().find_map(first_split)
                }
                serde_json::Value::Array(a) => a.iter_mut().find_map(first_split),
                _ => None,
            }
        }
        for (field, value, says) in [
            (
                "true_child",
                serde_json::json!(1_000_000),
                "not a later node",
            ),
            ("false_child", serde_json::json!(0), "not a later node"),
            ("split_feature", serde_json::json!(7), "encoded columns"),
        ] {
            let mut bad = good.clone();
            first_split(&mut bad).expect("a split")[field] = value;
            let e = check_trees(&bad, 2).unwrap_err();
            assert!(e.contains(says), "{field}: {e}");
        }
        assert!(
            check_trees(&good, 1).is_err(),
            "a split on column 1 of a 1-column row"
        );
    }
}

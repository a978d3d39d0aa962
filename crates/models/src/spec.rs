//! Training specs (`models/*.yaml`): what to train, on which rows, how to judge it, and the
//! gate a version must pass before an alias may point at it. Reference:
//! `docs/models.md`. Problems are reported like pipeline files: `file:line:col` and the
//! YAML path.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use ymera_common::yaml::{Diagnostic, Positions};

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// A yes/no outcome with a calibrated probability (risk).
    Classification,
    /// A quantity with an interval (effort).
    Regression,
    /// Segments (k-means); no label.
    Clustering,
    /// Load forecasts (a refit recipe; not trained from a spec).
    Forecast,
    /// Anomaly scores (an isolation forest; not trained from a spec).
    AnomalyDetection,
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::Classification => "classification",
            Task::Regression => "regression",
            Task::Clustering => "clustering",
            Task::Forecast => "forecast",
            Task::AnomalyDetection => "anomaly_detection",
        })
    }
}

/// Where the rows come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A read-only SQL query over lake and warehouse tables (the analyst SQL dialect).
    pub query: String,
    /// The column that orders rows in time: the newest rows are held out.
    pub time: String,
    /// An identifier column carried along but never used as a feature.
    #[serde(default)]
    pub id: Option<String>,
}

/// The algorithm and its parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlgorithmSpec {
    pub name: Algorithm,
    #[serde(default)]
    pub params: Params,
}

/// The algorithms ymera trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// linfa-logistic; classification; exact per-prediction contributions.
    LogisticRegression,
    /// smartcore; regression; exact per-prediction contributions.
    LinearRegression,
    /// smartcore's random forest regressor; regression; no contributions.
    RandomForest,
    /// linfa-clustering; clustering.
    Kmeans,
}

impl Algorithm {
    fn task(self) -> Task {
        match self {
            Algorithm::LogisticRegression => Task::Classification,
            Algorithm::LinearRegression | Algorithm::RandomForest => Task::Regression,
            Algorithm::Kmeans => Task::Clustering,
        }
    }

    /// The snake_case name used in specs and manifests.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::LogisticRegression => "logistic_regression",
            Algorithm::LinearRegression => "linear_regression",
            Algorithm::RandomForest => "random_forest",
            Algorithm::Kmeans => "kmeans",
        }
    }
}

/// Parameters of every algorithm; each algorithm reads its own and refuses the others'.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// L2 penalty (logistic regression; default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Optimiser iterations (logistic regression, default 300; k-means, default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iterations: Option<u64>,
    /// Trees (random forest, default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trees: Option<u16>,
    /// Maximum tree depth (random forest; default unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u16>,
    /// Minimum rows in a leaf (random forest, default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples_leaf: Option<usize>,
    /// Clusters (k-means, required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// Random seed (random forest, k-means; default 42).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Probability calibration of a classifier, fitted on the calibration fold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Calibration {
    /// Platt scaling: `p = σ(a·score + b)`.
    #[default]
    Platt,
    /// The model's own probabilities.
    None,
}

/// The time-based split.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitSpec {
    /// Share of rows, newest first, held out for evaluation (default 0.2).
    pub holdout: f64,
    /// Share of the remaining rows, newest first, used to calibrate probabilities or
    /// intervals (default 0.2).
    pub calibration: f64,
}

impl Default for SplitSpec {
    fn default() -> Self {
        SplitSpec {
            holdout: 0.2,
            calibration: 0.2,
        }
    }
}

/// One promotion threshold, e.g. `auc: ">= 0.80"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub metric: String,
    pub op: Op,
    pub value: f64,
}

/// Comparison of a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<")]
    Lt,
}

impl Op {
    /// True when `value op threshold`.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Ge => value >= threshold,
            Op::Le => value <= threshold,
            Op::Gt => value > threshold,
            Op::Lt => value < threshold,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Lt => "<",
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.metric, self.op.symbol(), self.value)
    }
}

/// A training spec as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// The model's name in the registry (`[a-z0-9_-]`).
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub task: Task,
    pub data: DataSpec,
    /// The column to predict (classification: bool or 0/1; regression: a number).
    #[serde(default)]
    pub label: Option<String>,
    /// The feature columns (default: every column but time, id and label).
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// Numeric features the model sees as ln(value) (requests still send the value).
    #[serde(default)]
    pub log_features: Vec<String>,
    pub algorithm: AlgorithmSpec,
    /// Classification only.
    #[serde(default)]
    pub calibration: Calibration,
    /// Regression only: fit on ln(label) and predict exp(·) (for positive, skewed targets).
    #[serde(default)]
    pub log_target: bool,
    /// Regression only: coverage of the prediction interval (default 0.9).
    #[serde(default)]
    pub interval: Option<f64>,
    #[serde(default)]
    pub split: SplitSpec,
    /// Metrics to report (default: all of the task's).
    #[serde(default)]
    pub metrics: Vec<String>,
    /// Promotion gate: metric → `">= 0.80"`; a version that fails it cannot be promoted.
    #[serde(default)]
    pub gate: BTreeMap<String, String>,
}

/// The metrics each task computes.
pub fn task_metrics(task: Task) -> &'static [&'static str] {
    match task {
        Task::Classification => &["auc", "brier", "ece", "log_loss", "accuracy", "base_rate"],
        Task::Regression => &["mae", "rmse", "r2", "coverage", "interval_width"],
        Task::Clustering => &["inertia", "silhouette"],
        Task::Forecast => &["mase", "smape", "coverage80", "coverage95", "baseline_mase"],
        Task::AnomalyDetection => &[],
    }
}

/// A spec that was read and checked, with its text (hashed into the manifest).
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub spec: TrainingSpec,
    pub text: String,
    pub gate: Vec<Threshold>,
}

/// Reads and checks a training spec; every problem is reported with file:line:col.
pub fn load_spec(file: &Path) -> Result<LoadedSpec, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        vec![Diagnostic {
            file: file.to_path_buf(),
            line: 1,
            col: 1,
            path: String::new(),
            message: format!("cannot read the training spec: {e}"),
        }]
    })?;
    parse_spec(file, &text)
}

/// Parses and checks a training spec's text (`file` names it in diagnostics).
pub fn parse_spec(file: &Path, text: &str) -> Result<LoadedSpec, Vec<Diagnostic>> {
    let positions = Positions::of(text);
    let diag = |path: &str, message: String| {
        let (line, col) = positions.locate(path);
        Diagnostic {
            file: file.to_path_buf(),
            line,
            col,
            path: path.to_string(),
            message,
        }
    };
    let value: serde_norway::Value = serde_norway::from_str(text).map_err(|e| {
        let (line, col) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        vec![Diagnostic {
            file: file.to_path_buf(),
            line,
            col,
            path: String::new(),
            message: format!("not valid YAML: {e}"),
        }]
    })?;
    let spec: TrainingSpec = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![diag(&path, e.into_inner().to_string())]
    })?;
    let mut problems = Vec::new();
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        problems.push(diag(
            "name",
            format!(
                "model name `{}` must be non-empty lowercase letters, digits, `_` or `-`",
                spec.name
            ),
        ));
    }
    let algo = spec.algorithm.name;
    if algo.task() != spec.task {
        problems.push(diag(
            "algorithm.name",
            format!(
                "{} is a {} algorithm but the task is {}",
                algo.name(),
                algo.task(),
                spec.task
            ),
        ));
    }
    let p = &spec.algorithm.params;
    let allowed: &[&str] = match algo {
        Algorithm::LogisticRegression => &["alpha", "max_iterations"],
        Algorithm::LinearRegression => &[],
        Algorithm::RandomForest => &["trees", "max_depth", "min_samples_leaf", "seed"],
        Algorithm::Kmeans => &["k", "max_iterations", "seed"],
    };
    let given = [
        ("alpha", p.alpha.is_some()),
        ("max_iterations", p.max_iterations.is_some()),
        ("trees", p.trees.is_some()),
        ("max_depth", p.max_depth.is_some()),
        ("min_samples_leaf", p.min_samples_leaf.is_some()),
        ("k", p.k.is_some()),
        ("seed", p.seed.is_some()),
    ];
    for (key, set) in given {
        if set && !allowed.contains(&key) {
            problems.push(diag(
                &format!("algorithm.params.{key}"),
                format!(
                    "{} takes no parameter `{key}` (it takes: {})",
                    algo.name(),
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ),
            ));
        }
    }
    if algo == Algorithm::Kmeans && !matches!(p.k, Some(k) if k >= 2) {
        problems.push(diag(
            "algorithm.params",
            "kmeans needs `k` (clusters), at least 2".into(),
        ));
    }
    if let Some(a) = p.alpha
        && !(a.is_finite() && a >= 0.0)
    {
        problems.push(diag("algorithm.params.alpha", "alpha must be ≥ 0".into()));
    }
    match (spec.task, &spec.label) {
        (Task::Clustering, Some(_)) => {
            problems.push(diag("label", "clustering takes no label".into()))
        }
        (Task::Classification | Task::Regression, None) => {
            problems.push(diag("", format!("a {} spec needs `label`", spec.task)))
        }
        _ => {}
    }
    if spec.task != Task::Regression && (spec.log_target || spec.interval.is_some()) {
        problems.push(diag(
            if spec.log_target {
                "log_target"
            } else {
                "interval"
            },
            "log_target and interval apply to regression only".into(),
        ));
    }
    if let Some(i) = spec.interval
        && !(i > 0.0 && i < 1.0)
    {
        problems.push(diag("interval", format!("interval {i} must be in (0, 1)")));
    }
    for (key, v) in [
        ("holdout", spec.split.holdout),
        ("calibration", spec.split.calibration),
    ] {
        if !(v > 0.0 && v < 0.9) {
            problems.push(diag(
                &format!("split.{key}"),
                format!("split.{key} = {v} must be in (0, 0.9)"),
            ));
        }
    }
    let known = task_metrics(spec.task);
    for (i, m) in spec.metrics.iter().enumerate() {
        if !known.contains(&m.as_str()) {
            problems.push(diag(
                &format!("metrics[{i}]"),
                format!(
                    "unknown {} metric `{m}` (known: {})",
                    spec.task,
                    known.join(", ")
                ),
            ));
        }
    }
    let mut gate = Vec::new();
    for (metric, rule) in &spec.gate {
        let path = format!("gate.{metric}");
        if !known.contains(&metric.as_str()) {
            problems.push(diag(
                &path,
                format!(
                    "unknown {} metric `{metric}` in the gate (known: {})",
                    spec.task,
                    known.join(", ")
                ),
            ));
            continue;
        }
        match parse_threshold(rule) {
            Ok((op, value)) => gate.push(Threshold {
                metric: metric.clone(),
                op,
                value,
            }),
            Err(e) => problems.push(diag(&path, e)),
        }
    }
    if spec.data.query.trim().is_empty() {
        problems.push(diag("data.query", "the feature query is empty".into()));
    } else if let Err(e) = ymera_query::check_read_only(&spec.data.query) {
        problems.push(diag("data.query", e.to_string()));
    }
    if problems.is_empty() {
        Ok(LoadedSpec {
            spec,
            text: text.to_string(),
            gate,
        })
    } else {
        Err(problems)
    }
}

fn parse_threshold(rule: &str) -> Result<(Op, f64), String> {
    let r = rule.trim();
    let (op, rest) = [(">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt)]
        .into_iter()
        .find_map(|(s, op)| r.strip_prefix(s).map(|rest| (op, rest)))
        .ok_or_else(|| format!("gate rule `{rule}` must look like \">= 0.80\" or \"<= 0.1\""))?;
    let v: f64 = rest
        .trim()
        .parse()
        .map_err(|_| format!("gate rule `{rule}`: `{}` is not a number", rest.trim()))?;
    if !v.is_finite() {
        return Err(format!("gate rule `{rule}`: the threshold must be finite"));
    }
    Ok((op, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "name: risk
task: classification
data:
  query: SELECT a, b, t, y FROM x
  time: t
label: y
algorithm: { name: logistic_regression, params: { alpha: 0.1 } }
gate:
  auc: \">= 0.8\"
  ece: \"<= 0.1\"
";

    #[test]
    fn a_good_spec_loads_with_its_gate() {
        let s = parse_spec(Path::new("risk.yaml"), OK).unwrap();
        assert_eq!(s.spec.name, "risk");
        assert_eq!(s.gate.len(), 2);
        assert!(s.gate[0].op.holds(0.81, s.gate[0].value));
        assert!(!s.gate[0].op.holds(0.79, s.gate[0].value));
    }

    #[test]
    fn problems_name_file_line_and_path() {
        let bad = OK
            .replace("alpha: 0.1", "alpha: 0.1, trees: 3")
            .replace("auc: \">= 0.8\"", "auk: \">= 0.8\"");
        let errs = parse_spec(Path::new("risk.yaml"), &bad).unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("risk.yaml:7:") && t.contains("no parameter `trees`")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.starts_with("risk.yaml:9:")
                && t.contains("unknown classification metric `auk`")),
            "{text:?}"
        );
        let errs = parse_spec(
            Path::new("r.yaml"),
            &OK.replace("SELECT a, b, t, y FROM x", "DROP TABLE x"),
        )
        .unwrap_err();
        assert!(errs[0].to_string().contains("read-only"), "{errs:?}");
        let errs = parse_spec(
            Path::new("r.yaml"),
            &OK.replace("task: classification", "task: regression"),
        )
        .unwrap_err();
        assert!(
            errs[0]
                .to_string()
                .contains("logistic_regression is a classification algorithm")
        );
        let errs =
            parse_spec(Path::new("r.yaml"), &OK.replace("label: y", "lable: y")).unwrap_err();
        assert!(
            errs[0].to_string().contains("unknown field `lable`"),
            "{errs:?}"
        );
    }
}

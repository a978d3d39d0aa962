//! Load forecasting: MSTL (augurs) with the seasonal periods the history supports and an
//! AutoETS trend, a seasonal-naive baseline always computed beside it, rolling-origin
//! backtests (MASE, sMAPE, interval coverage), and the refit recipe the registry keeps
//! (augurs fits do not serialise: a version stores how to refit, not the fit).
//!
//! Everything here is synchronous CPU work on a regular grid
//! ([`ymera_common::series::Regular`]); callers in async code run it on
//! `spawn_blocking`.
//!
//! MASE (interfaces.md): mean absolute error of the forecast divided by the in-sample
//! mean absolute error of the one-season-back naive forecast, the season being one day.

use augurs::ets::AutoETS;
use augurs::mstl::MSTLModel;
use augurs::{Fit, Predict};
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// z-scores of the central 80 % and 95 % intervals of a normal distribution.
const Z80: f64 = 1.281_551_565_5;
const Z95: f64 = 1.959_963_985;

/// A forecast for `horizon` grid steps after the history's last point.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bands {
    pub p50: Vec<f64>,
    pub lo80: Vec<f64>,
    pub hi80: Vec<f64>,
    pub lo95: Vec<f64>,
    pub hi95: Vec<f64>,
}

impl Bands {
    pub fn len(&self) -> usize {
        self.p50.len()
    }
    pub fn is_empty(&self) -> bool {
        self.p50.is_empty()
    }
    /// A constant-width normal band around `p50` whose standard deviation at step h
    /// (1-based) is `sigma(h)`.
    fn normal(p50: Vec<f64>, sigma: impl Fn(usize) -> f64) -> Bands {
        let at = |z: f64| -> Vec<f64> {
            p50.iter()
                .enumerate()
                .map(|(i, p)| p + z * sigma(i + 1))
                .collect()
        };
        Bands {
            lo80: at(-Z80),
            hi80: at(Z80),
            lo95: at(-Z95),
            hi95: at(Z95),
            p50,
        }
    }
    /// Loads are never negative: clamp every band at zero.
    fn clamp_non_negative(&mut self) {
        for v in [
            &mut self.p50,
            &mut self.lo80,
            &mut self.hi80,
            &mut self.lo95,
            &mut self.hi95,
        ] {
            v.iter_mut().for_each(|x| *x = x.max(0.0));
        }
    }
    /// Widens (or narrows) the intervals around p50 by `factor`.
    fn scale_intervals(&mut self, f80: f64, f95: f64) {
        for i in 0..self.p50.len() {
            let p = self.p50[i];
            self.lo80[i] = p - (p - self.lo80[i]) * f80;
            self.hi80[i] = p + (self.hi80[i] - p) * f80;
            self.lo95[i] = p - (p - self.lo95[i]) * f95;
            self.hi95[i] = p + (self.hi95[i] - p) * f95;
        }
    }
}

/// Weeks of history before a weekly season is fitted (at least two, as MSTL needs).
pub const WEEKLY_MIN_WEEKS: usize = 3;

/// The model chosen for a history, with the reasons for any simplification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// `mstl+autoets`, `autoets`, `naive`, or `seasonal_naive` when the backtest found
    /// it better ([`select`]).
    pub model: String,
    /// Seasonal periods in grid steps (daily, and weekly with ≥ 2 weeks of history).
    pub periods: Vec<usize>,
    /// Why a simpler model than MSTL with daily and weekly seasons was used.
    pub notes: Vec<String>,
}

/// Chooses the model the history supports: MSTL needs two full periods of a season.
pub fn plan(n: usize, per_day: usize) -> Plan {
    let week = per_day * 7;
    let mut notes = Vec::new();
    let mut periods = Vec::new();
    if n >= 2 * per_day && per_day >= 2 {
        periods.push(per_day);
        // two weekly cycles make MSTL's weekly component mostly noise: on the NAB
        // cloud series (14–16 days each) adding it made the backtest MASE 9 % worse
        if n >= WEEKLY_MIN_WEEKS * week {
            periods.push(week);
        } else {
            notes.push(format!(
                "weekly seasonality not modelled: it needs {WEEKLY_MIN_WEEKS} weeks of history ({} points), have {n}",
                WEEKLY_MIN_WEEKS * week
            ));
        }
    } else {
        notes.push(format!(
            "too little history for daily seasonality: MSTL needs two days ({} points at this step), have {n}; fell back to {}",
            2 * per_day,
            if n >= 8 { "AutoETS without seasons" } else { "the last value" }
        ));
    }
    let model = if !periods.is_empty() {
        "mstl+autoets"
    } else if n >= 8 {
        "autoets"
    } else {
        "naive"
    };
    Plan {
        model: model.into(),
        periods,
        notes,
    }
}

/// A fitted forecast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    pub bands: Bands,
    pub plan: Plan,
}

/// How a forecaster is fitted: what the registry stores as a version's "artifact" (the
/// fit itself is recomputed from it on load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// `service/metric`.
    pub series: String,
    /// Grid step in seconds (the metric events are averaged into it).
    pub step_seconds: i64,
    /// History used per fit, in days (the newest points).
    pub window_days: u32,
    pub plan: Plan,
    /// Interval scale factors from the backtest's coverage (1.0 = augurs' own).
    pub interval_scale: (f64, f64),
    /// The data window the version was fitted and backtested on.
    pub data_from: String,
    pub data_to: String,
    pub points: usize,
    /// sha256 of the grid values (little-endian f64s) the version was backtested on.
    pub content_sha256: String,
}

fn model_err(what: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Model(format!("{what}: {e}"))
}

/// Fits the planned model on `values` (a regular grid) and forecasts `horizon` steps.
pub fn fit_forecast(
    values: &[f64],
    per_day: usize,
    horizon: usize,
) -> Result<Forecast, ModelError> {
    let plan = plan(values.len(), per_day);
    fit_planned(values, plan, horizon, (1.0, 1.0))
}

/// Fits a given plan (a recipe's) on `values` and forecasts `horizon` steps.
pub fn fit_planned(
    values: &[f64],
    mut plan: Plan,
    horizon: usize,
    interval_scale: (f64, f64),
) -> Result<Forecast, ModelError> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::Input(format!("value[{i}] is not finite")));
    }
    if values.is_empty() {
        return Err(ModelError::Data("no history to forecast from".into()));
    }
    // the recipe's plan may need more history than this window has
    let max_period = plan.periods.iter().copied().max().unwrap_or(0);
    if values.len() < 2 * max_period {
        let per_day = plan.periods.first().copied().unwrap_or(0);
        plan = self::plan(values.len(), per_day);
    }
    let mut bands = match plan.model.as_str() {
        "mstl+autoets" => {
            let fit = MSTLModel::new(
                plan.periods.clone(),
                AutoETS::non_seasonal().into_trend_model(),
            )
            .fit(values)
            .map_err(|e| model_err("MSTL", e))?;
            predict_bands(&fit, horizon)?
        }
        "autoets" => {
            let fit = AutoETS::non_seasonal()
                .fit(values)
                .map_err(|e| model_err("AutoETS", e))?;
            predict_bands(&fit, horizon)?
        }
        "seasonal_naive" => {
            seasonal_naive(values, plan.periods.first().copied().unwrap_or(0), horizon)
        }
        _ => naive_last(values, horizon),
    };
    bands.scale_intervals(interval_scale.0, interval_scale.1);
    if values.iter().all(|v| *v >= 0.0) {
        bands.clamp_non_negative();
    }
    Ok(Forecast { bands, plan })
}

fn predict_bands<P: Predict>(fit: &P, horizon: usize) -> Result<Bands, ModelError>
where
    P::Error: std::fmt::Display,
{
    let f80 = fit
        .predict(horizon, 0.8)
        .map_err(|e| model_err("forecast", e))?;
    let f95 = fit
        .predict(horizon, 0.95)
        .map_err(|e| model_err("forecast", e))?;
    let (Some(i80), Some(i95)) = (f80.intervals, f95.intervals) else {
        return Err(ModelError::Model(
            "the model gave no prediction intervals".into(),
        ));
    };
    let bands = Bands {
        p50: f80.point,
        lo80: i80.lower,
        hi80: i80.upper,
        lo95: i95.lower,
        hi95: i95.upper,
    };
    if let Some(i) = bands
        .p50
        .iter()
        .chain(&bands.hi95)
        .chain(&bands.lo95)
        .position(|v| !v.is_finite())
    {
        return Err(ModelError::Model(format!(
            "the fit produced a non-finite forecast (at {i})"
        )));
    }
    Ok(bands)
}

/// The last value, with a random-walk interval from the one-step differences.
fn naive_last(values: &[f64], horizon: usize) -> Bands {
    let last = *values.last().expect("non-empty");
    let sigma = diff_sigma(values, 1);
    Bands::normal(vec![last; horizon], |h| sigma * (h as f64).sqrt())
}

fn diff_sigma(values: &[f64], lag: usize) -> f64 {
    if values.len() <= lag + 1 {
        return 0.0;
    }
    let d: Vec<f64> = values.windows(lag + 1).map(|w| w[lag] - w[0]).collect();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt()
}

/// The seasonal-naive baseline: the value one season back (one day), repeated for
/// horizons longer than a season; intervals from the seasonal differences' spread,
/// growing with the number of seasons ahead. With less than a season of history, the
/// last value.
pub fn seasonal_naive(values: &[f64], season: usize, horizon: usize) -> Bands {
    if season == 0 || values.len() < season {
        return naive_last(values, horizon);
    }
    let n = values.len();
    let p50 = (0..horizon)
        .map(|h| values[n - season + h % season])
        .collect();
    let sigma = diff_sigma(values, season);
    Bands::normal(p50, |h| sigma * ((h - 1) / season + 1) as f64)
}

/// In-sample MAE of the one-season-back naive forecast (lag-1 when the history is
/// shorter than a season plus one point).
pub fn naive_scale(train: &[f64], season: usize) -> f64 {
    let lag = if season > 0 && train.len() > season {
        season
    } else {
        1
    };
    if train.len() <= lag {
        return f64::NAN;
    }
    let s: f64 = train.windows(lag + 1).map(|w| (w[lag] - w[0]).abs()).sum();
    s / (train.len() - lag) as f64
}

/// Forecast accuracy over a set of origins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// MASE (season = one day): < 1 beats the one-day-back naive forecast in sample.
    pub mase: f64,
    /// Symmetric MAPE in percent (0–200).
    pub smape: f64,
    /// Share of actuals inside the 80 % / 95 % intervals.
    pub coverage80: f64,
    pub coverage95: f64,
}

/// A rolling-origin backtest of the model and of the seasonal-naive baseline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Backtest {
    pub origins: usize,
    pub horizon: usize,
    pub model: Accuracy,
    pub seasonal_naive: Accuracy,
    /// The model's MASE relative to the baseline's (< 1: the model is better).
    pub relative_mase: f64,
}

#[derive(Default)]
struct Acc {
    abs_scaled: f64,
    smape: f64,
    in80: usize,
    in95: usize,
    n: usize,
}

impl Acc {
    fn add(&mut self, actual: &[f64], b: &Bands, scale: f64) {
        for (i, &y) in actual.iter().enumerate() {
            let f = b.p50[i];
            self.abs_scaled += (y - f).abs() / scale;
            let den = y.abs() + f.abs();
            self.smape += if den == 0.0 {
                0.0
            } else {
                200.0 * (y - f).abs() / den
            };
            self.in80 += usize::from(b.lo80[i] <= y && y <= b.hi80[i]);
            self.in95 += usize::from(b.lo95[i] <= y && y <= b.hi95[i]);
            self.n += 1;
        }
    }
    fn finish(&self) -> Accuracy {
        let n = self.n.max(1) as f64;
        Accuracy {
            mase: self.abs_scaled / n,
            smape: self.smape / n,
            coverage80: self.in80 as f64 / n,
            coverage95: self.in95 as f64 / n,
        }
    }
}

/// Rolling-origin backtest: `origins` forecast origins spaced `horizon` apart, ending
/// one horizon before the last point; at each, fit on everything before it (at most
/// `max_train` points), forecast `horizon` steps and compare. MASE's scale is each
/// origin's in-sample one-day-back naive MAE. Origins with less than `min_train`
/// points before them are skipped.
pub fn backtest(
    values: &[f64],
    per_day: usize,
    horizon: usize,
    origins: usize,
    max_train: usize,
) -> Result<Backtest, ModelError> {
    let n = values.len();
    let min_train = (2 * per_day).min(n / 2).max(8);
    let mut model = Acc::default();
    let mut naive = Acc::default();
    let mut used = 0;
    let mut skipped_constant = 0;
    for k in (1..=origins).rev() {
        let Some(origin) = n.checked_sub(k * horizon) else {
            continue;
        };
        if origin < min_train {
            continue;
        }
        let train = &values[origin.saturating_sub(max_train)..origin];
        let actual = &values[origin..(origin + horizon).min(n)];
        // MASE's scale is the one-day-back naive error (interfaces.md): an origin with a
        // day or less before it, or whose history repeats exactly day to day, has none
        if train.len() <= per_day {
            continue;
        }
        let scale = naive_scale(train, per_day);
        if !(scale.is_finite() && scale > 0.0) {
            skipped_constant += 1;
            continue;
        }
        let f = fit_forecast(train, per_day, actual.len())?;
        model.add(actual, &f.bands, scale);
        naive.add(actual, &seasonal_naive(train, per_day, actual.len()), scale);
        used += 1;
    }
    if used == 0 && skipped_constant > 0 {
        return Err(ModelError::Data(format!(
            "MASE is undefined: the history before every origin repeats exactly from one day to the next ({skipped_constant} origins)"
        )));
    }
    if used == 0 {
        return Err(ModelError::Data(format!(
            "too little history for a backtest: {n} points, need at least {} before the first origin plus a horizon of {horizon}",
            min_train
        )));
    }
    let (m, b) = (model.finish(), naive.finish());
    Ok(Backtest {
        origins: used,
        horizon,
        relative_mase: if b.mase > 0.0 {
            m.mase / b.mase
        } else {
            f64::NAN
        },
        model: m,
        seasonal_naive: b,
    })
}

/// Interval scale factors that would have brought the backtest's coverage to the
/// nominal 80 % / 95 %, bounded to [0.5, 3]: a crude calibration for the next fits.
pub fn interval_scale(bt: &Backtest) -> (f64, f64) {
    let f = |cov: f64, z: f64| -> f64 {
        if !(cov > 0.0 && cov < 1.0) {
            return 1.0;
        }
        // treat errors as normal: coverage c ↔ half-width z_c·σ
        let zc = inverse_normal_cdf(0.5 + cov / 2.0);
        (z / zc).clamp(0.5, 3.0)
    };
    (f(bt.model.coverage80, Z80), f(bt.model.coverage95, Z95))
}

/// Acklam's rational approximation of the standard normal quantile (|error| < 1.2e-9).
fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.383_577_518_672_69e2,
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549732539343734e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e+00,
        3.754408661907416e+00,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// sha256 of a grid's values (little-endian f64 bytes).
pub fn content_sha256(values: &[f64]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// The metric names of the autoscaler API and the `metric_events` columns they read.
pub const METRICS: &[(&str, &str)] = &[
    ("rps", "requests_per_s"),
    ("requests_per_s", "requests_per_s"),
    ("cpu", "cpu"),
    ("queue_depth", "queue_depth"),
    ("latency_p50_ms", "latency_p50_ms"),
    ("latency_p95_ms", "latency_p95_ms"),
    ("error_rate", "error_rate"),
];

/// The column of `metric_events` a metric name reads, or an error listing the names.
pub fn metric_column(metric: &str) -> Result<&'static str, ModelError> {
    METRICS
        .iter()
        .find(|(m, _)| *m == metric)
        .map(|(_, c)| *c)
        .ok_or_else(|| ModelError::NotFound {
            what: format!("metric `{metric}`"),
            available: METRICS.iter().map(|(m, _)| m.to_string()).collect(),
        })
}

/// Service names are identifiers: letters, digits, `_`, `-`, `.` (they end up in SQL
/// and in registry names).
pub fn check_service(service: &str) -> Result<(), ModelError> {
    if service.is_empty()
        || service.len() > 100
        || !service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(ModelError::Input(format!(
            "service `{service}`: letters, digits, `_`, `-` and `.` only"
        )));
    }
    Ok(())
}

/// The analyst-SQL query that averages one service's metric into `step_seconds` slots
/// from `from` (epoch seconds) on; the `dt` partition prunes older files.
pub fn series_sql(
    table: &str,
    service: &str,
    column: &str,
    from: i64,
    step_seconds: i64,
) -> String {
    let from_ts = chrono::DateTime::<chrono::Utc>::from_timestamp(from, 0).unwrap_or_default();
    format!(
        "SELECT CAST(to_unixtime(date_bin(INTERVAL '{step_seconds} seconds', ts, TIMESTAMP '1970-01-01T00:00:00')) AS BIGINT) AS slot, \
                avg(CAST({column} AS DOUBLE)) AS value, count(*) AS samples, \
                CAST(to_unixtime(max(ts)) AS BIGINT) AS newest \
         FROM {table} \
         WHERE service = '{service}' AND ts >= TIMESTAMP '{}' AND dt >= DATE '{}' \
         GROUP BY 1 ORDER BY 1",
        from_ts.format("%Y-%m-%dT%H:%M:%S"),
        from_ts.format("%Y-%m-%d"),
    )
}

/// The newest sample's time (epoch seconds) in [`series_sql`]'s rows.
pub fn newest_sample(batches: &[arrow::array::RecordBatch]) -> Option<i64> {
    use arrow::array::{Array, Int64Array};
    batches
        .iter()
        .filter_map(|b| b.column_by_name("newest"))
        .filter_map(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
        .flat_map(|a| {
            (0..a.len())
                .filter(|i| !a.is_null(*i))
                .map(|i| a.value(i))
                .collect::<Vec<_>>()
        })
        .max()
}

/// `slot, value` rows of [`series_sql`] as a series (nulls skipped).
pub fn series_from_batches(
    name: &str,
    batches: &[arrow::array::RecordBatch],
) -> Result<ymera_common::series::Series, ModelError> {
    use arrow::array::{Array, Float64Array, Int64Array};
    let mut s = ymera_common::series::Series {
        name: name.to_string(),
        ..Default::default()
    };
    for b in batches {
        let slot = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| ModelError::Data("series query: slot is not an integer".into()))?;
        let value = b
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| ModelError::Data("series query: value is not a double".into()))?;
        for i in 0..b.num_rows() {
            if slot.is_null(i) || value.is_null(i) || !value.value(i).is_finite() {
                continue;
            }
            s.ts.push(slot.value(i));
            s.values.push(value.value(i));
        }
    }
    Ok(s)
}

/// The registry name of a series' forecaster: `load-<service>-<metric>`, lowercased,
/// `.` as `-`.
pub fn registry_name(service: &str, metric: &str) -> String {
    format!("load-{service}-{metric}")
        .to_ascii_lowercase()
        .replace('.', "-")
}

/// Registers a forecaster version: the refit recipe as the artifact, the backtest as its
/// metrics, a gate of MASE < 1 against the one-day-back naive forecast.
pub async fn register_recipe(
    registry: &crate::Registry,
    recipe: &Recipe,
    bt: &Backtest,
    query: &str,
    fit_seconds: f64,
) -> Result<crate::Manifest, ModelError> {
    use crate::registry::{GateCheck, RecipeModel};
    use crate::spec::{Op, Task, Threshold};
    let (service, metric) = recipe
        .series
        .split_once('/')
        .unwrap_or((&recipe.series, ""));
    let served = if recipe.plan.model == "seasonal_naive" {
        &bt.seasonal_naive
    } else {
        &bt.model
    };
    let metrics = [
        ("served_mase", served.mase),
        ("mase", bt.model.mase),
        ("smape", bt.model.smape),
        ("coverage80", bt.model.coverage80),
        ("coverage95", bt.model.coverage95),
        ("baseline_mase", bt.seasonal_naive.mase),
        ("baseline_smape", bt.seasonal_naive.smape),
        ("baseline_coverage80", bt.seasonal_naive.coverage80),
        ("baseline_coverage95", bt.seasonal_naive.coverage95),
        ("origins", bt.origins as f64),
        ("horizon_steps", bt.horizon as f64),
    ]
    .into_iter()
    .filter(|(_, v)| v.is_finite())
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    registry
        .register_recipe_model(RecipeModel {
            name: registry_name(service, metric),
            task: Task::Forecast,
            kind: "forecast".into(),
            recipe: serde_json::to_value(recipe)
                .map_err(|e| ModelError::Model(format!("serialising the recipe: {e}")))?,
            algorithm: recipe.plan.model.clone(),
            calibration: Some(format!(
                "intervals scaled ×{:.2} (80 %) and ×{:.2} (95 %) from the backtest's coverage",
                recipe.interval_scale.0, recipe.interval_scale.1
            )),
            series: recipe.series.clone(),
            query: Some(query.to_string()),
            points: recipe.points,
            holdout_points: bt.origins * bt.horizon,
            content_sha256: recipe.content_sha256.clone(),
            time_range: (recipe.data_from.clone(), recipe.data_to.clone()),
            metrics,
            gate: vec![GateCheck {
                threshold: Threshold {
                    metric: "served_mase".into(),
                    op: Op::Lt,
                    value: 1.0,
                },
                actual: Some(served.mase),
                passed: served.mase < 1.0,
            }],
            fit_seconds,
        })
        .await
}

/// The newest registered recipe of a forecaster and its manifest, if any.
pub async fn latest_recipe(
    registry: &crate::Registry,
    name: &str,
    series: &str,
) -> Result<Option<(Recipe, crate::Manifest)>, ModelError> {
    let versions = match registry.versions(name).await {
        Ok(v) => v,
        Err(ModelError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(v) = versions
        .iter()
        .rev()
        .find(|e| matches!(e.manifest, Some(Ok(_))))
    else {
        return Ok(None);
    };
    let loaded = registry.load(name, &v.version.to_string()).await?;
    match loaded.artifact.estimator {
        crate::model::Estimator::Recipe { kind, recipe } if kind == "forecast" => {
            let r: Recipe = serde_json::from_value(recipe)
                .map_err(|e| ModelError::Integrity(format!("{name}/{}: recipe: {e}", v.version)))?;
            // `a.b` and `a-b` share a registry name: never reuse another series' recipe
            Ok((r.series == series).then_some((r, loaded.manifest)))
        }
        _ => Err(ModelError::Integrity(format!(
            "{name}/{}: not a forecast recipe",
            v.version
        ))),
    }
}

/// Serves whichever of the planned model and seasonal naive did better in the backtest:
/// the plan (with the reason) and the accuracy the response reports.
pub fn select(plan: Plan, bt: &Backtest) -> (Plan, Accuracy) {
    if bt.seasonal_naive.mase < bt.model.mase && !plan.periods.is_empty() {
        let mut p = plan;
        p.notes.push(format!(
            "serving seasonal naive: its backtest MASE {:.3} beat {}'s {:.3}",
            bt.seasonal_naive.mase, p.model, bt.model.mase
        ));
        p.model = "seasonal_naive".into();
        (p, bt.seasonal_naive.clone())
    } else {
        (plan, bt.model.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily cycle (288 points a day at 5 minutes) plus a deterministic wiggle.
    fn diurnal(days: usize) -> Vec<f64> {
        (0..days * 288)
            .map(|i| {
                let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
                100.0 + 40.0 * phase.sin() + ((i * 7919) % 13) as f64 * 0.5
            })
            .collect()
    }

    #[test]
    fn plan_falls_back_with_a_reason() {
        let p = plan(100, 288);
        assert_eq!(p.model, "autoets");
        assert!(p.notes[0].contains("two days (576 points"), "{:?}", p.notes);
        let p = plan(3 * 288, 288);
        assert_eq!(
            (p.model.as_str(), p.periods.clone()),
            ("mstl+autoets", vec![288])
        );
        assert!(p.notes[0].contains("weekly"));
        assert_eq!(plan(15 * 288, 288).periods, vec![288]);
        assert_eq!(plan(21 * 288, 288).periods, vec![288, 2016]);
        assert_eq!(plan(3, 288).model, "naive");
    }

    #[test]
    fn mstl_beats_seasonal_naive_on_a_clean_daily_cycle() {
        let v = diurnal(6);
        let bt = backtest(&v, 288, 12, 6, 7 * 288).unwrap();
        assert_eq!(bt.origins, 6);
        assert!(bt.model.mase < 1.0, "{bt:?}");
        let f = fit_forecast(&v, 288, 24).unwrap();
        assert_eq!(f.bands.len(), 24);
        for i in 0..24 {
            let b = &f.bands;
            assert!(
                b.lo95[i] <= b.lo80[i]
                    && b.lo80[i] <= b.p50[i]
                    && b.p50[i] <= b.hi80[i]
                    && b.hi80[i] <= b.hi95[i]
            );
        }
    }

    #[test]
    fn seasonal_naive_and_mase_by_hand() {
        // season 2: forecast repeats the last season
        let b = seasonal_naive(&[1.0, 2.0, 3.0, 5.0], 2, 3);
        assert_eq!(b.p50, vec![3.0, 5.0, 3.0]);
        // season-2 differences: 2, 3 → mean |d| 2.5
        assert_eq!(naive_scale(&[1.0, 2.0, 3.0, 5.0], 2), 2.5);
        // shorter than a season + 1 → lag 1: |1|,|1|,|2| → 4/3
        assert!((naive_scale(&[1.0, 2.0, 3.0, 5.0], 4) - 4.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn non_finite_history_is_rejected_with_its_index() {
        let e = fit_forecast(&[1.0, f64::NAN], 288, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("value[1]"), "{e}");
    }

    #[test]
    fn normal_quantile() {
        assert!((inverse_normal_cdf(0.9) - Z80).abs() < 1e-6);
        assert!((inverse_normal_cdf(0.975) - Z95).abs() < 1e-6);
    }
}

//! Causal, checkpointable streaming anomaly detectors and their combination into one
//! `anomaly_score` in [0, 1].
//!
//! A [`Detector`] is fed one point at a time ([`Detector::update`]); a point's score uses
//! only that point and earlier ones. Its whole state is `serde` data, checkpointed with the
//! Kafka offsets by the pipeline stage: restoring a checkpoint and replaying gives
//! bit-identical scores (no hash-map iteration, no wall clock, seeded RNG only; floats are
//! written as exact round-trip decimal strings in text formats, because serde_json's
//! default float parser is not correctly rounded).
//!
//! Every detector reduces a point to a *severity* `u` — its deviation divided by the
//! deviation the detector calls alarming — and maps it to `u² / (1 + u²)`: 0.5 at the
//! nominal alarm point, 0.8 at twice it, 0.9 at three times. The detectors are then
//! comparable, and [`Combine`] merges them.
//!
//! * [`Kind::RobustZ`]: the value against a robust EWMA level, scaled by the spread of the
//!   recent one-step innovations (median absolute deviation, widened to the 0.5 %/99.5 %
//!   quantile spread when the tails are heavier than normal: cloud metrics are spiky).
//! * [`Kind::Seasonal`]: the residual against a daily profile and trend from MSTL (augurs,
//!   AutoETS trend), refitted daily on the last week; the level follows online between
//!   refits, and the scale also covers what usually happens around this time of day.
//! * [`Kind::Changepoint`]: two-sided CUSUM of robustly standardised (and, once the seasonal
//!   model exists, deseasonalised) values against a trailing reference window, re-baselined
//!   after each alarm, so a level or variance shift alarms once.
//! * [`Kind::IsolationForest`]: [`crate::iforest`] trained on the warm-up period.
//!
//! The default ([`DetectorConfig::default`]) is the maximum of robust_z (until the seasonal
//! model is fitted), seasonal and changepoint, threshold 0.5, an alarm re-arming after 36
//! points. On the NAB subset in `shared/data` (standard profile) it scores 67.5 at its own
//! threshold, against 50 for robust_z alone, 55 for seasonal alone and 23 for the
//! changepoint alone; `eval::tests::nab_scores_by_config` reproduces the numbers.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use augurs::Fit;
use augurs::Predict;
use augurs::ets::AutoETS;
use augurs::mstl::MSTLModel;
use augurs::mstl::stlrs::{MstlParams, StlParams};
use serde::{Deserialize, Serialize};
use ymera_common::float_exact as exact;
use ymera_common::series::{Series, infer_step, regularize};

use crate::iforest::{IForestDetector, IForestParams};

/// A detector family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    RobustZ,
    Seasonal,
    Changepoint,
    IsolationForest,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::RobustZ,
        Kind::Seasonal,
        Kind::Changepoint,
        Kind::IsolationForest,
    ];

    /// The snake_case name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::RobustZ => "robust_z",
            Kind::Seasonal => "seasonal",
            Kind::Changepoint => "changepoint",
            Kind::IsolationForest => "isolation_forest",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        let s = s.trim();
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown detector `{s}`: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// How the enabled detectors' scores become one score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// The largest score: alarms when any detector alarms.
    #[default]
    Max,
    /// `1 − Π(1 − sᵢ)`: independent weak evidence adds up.
    NoisyOr,
    /// The mean score: alarms when the detectors agree.
    Mean,
}

/// What detectors run and how their scores are combined. Every field has a default
/// (`{}` is [`DetectorConfig::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// The detectors to run (duplicates are ignored).
    pub detectors: Vec<Kind>,
    /// A point is an anomaly when its combined score is at least this.
    pub threshold: f64,
    /// How the detectors' scores are combined.
    pub combine: Combine,
    /// When both run, `robust_z` counts only until the seasonal model is fitted: `seasonal`
    /// is the same test against a level plus a daily profile, and supersedes it (a daily
    /// pattern is not an anomaly). `robust_z` still reports its part.
    pub robust_z_until_seasonal: bool,
    /// After an alarm, alarms within this many points are the same event and are not
    /// repeated (their score is held just below the threshold); 0 repeats them.
    pub rearm_points: usize,
    /// Points that only train the detectors (score 0). `None`: [`score_series`] uses NAB's
    /// probationary period (the first 15 % of the rows) and a streaming [`Detector::new`]
    /// uses 288 points (a day at 5-minute steps).
    pub warmup_points: Option<usize>,
    /// `robust_z` tunables.
    pub robust_z: RobustZConfig,
    /// `seasonal` tunables.
    pub seasonal: SeasonalConfig,
    /// `changepoint` tunables.
    pub changepoint: ChangepointConfig,
    /// `isolation_forest` tunables.
    pub isolation_forest: IForestConfig,
}

/// The largest window, history or warm-up a config may ask for, in points: bounds the
/// memory and CPU one detector can take (configs also arrive over HTTP).
pub const MAX_CONFIG_POINTS: usize = 100_000;

/// Points between two seasonal refits for a season of `period` points: `refit_points`
/// (default one season), never under a quarter season.
pub fn refit_cadence(cfg: &SeasonalConfig, period: usize) -> usize {
    cfg.refit_points.unwrap_or(period).max(period / 4).max(1)
}

impl DetectorConfig {
    /// Every out-of-range tunable, named by its path (`robust_z.clip`), or Ok.
    pub fn validate(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        let mut unit = |name: &str, v: f64, open_low: bool| {
            let ok = v.is_finite() && v <= 1.0 && if open_low { v > 0.0 } else { v >= 0.0 };
            if !ok {
                bad.push(format!(
                    "{name} = {v}: must be in {}0, 1]",
                    if open_low { "(" } else { "[" }
                ));
            }
        };
        unit("threshold", self.threshold, true);
        unit("robust_z.alpha", self.robust_z.alpha, true);
        unit("robust_z.tail_quantile", self.robust_z.tail_quantile, false);
        unit("seasonal.alpha", self.seasonal.alpha, true);
        unit("seasonal.tail_quantile", self.seasonal.tail_quantile, false);
        unit(
            "seasonal.phase_tail_quantile",
            self.seasonal.phase_tail_quantile,
            false,
        );
        unit(
            "changepoint.tail_quantile",
            self.changepoint.tail_quantile,
            false,
        );
        unit(
            "changepoint.long_tail_quantile",
            self.changepoint.long_tail_quantile,
            false,
        );
        let mut positive = |name: &str, v: f64| {
            if !(v.is_finite() && v > 0.0) {
                bad.push(format!("{name} = {v}: must be a positive number"));
            }
        };
        positive("robust_z.z_alarm", self.robust_z.z_alarm);
        positive("robust_z.clip", self.robust_z.clip);
        positive("seasonal.z_alarm", self.seasonal.z_alarm);
        positive("seasonal.clip", self.seasonal.clip);
        positive("changepoint.h", self.changepoint.h);
        positive("changepoint.z_clip", self.changepoint.z_clip);
        if !(self.changepoint.k.is_finite() && self.changepoint.k >= 0.0) {
            bad.push(format!(
                "changepoint.k = {}: must be ≥ 0",
                self.changepoint.k
            ));
        }
        let points = [
            ("rearm_points", Some(self.rearm_points)),
            ("warmup_points", self.warmup_points),
            ("robust_z.window", Some(self.robust_z.window)),
            ("seasonal.window", Some(self.seasonal.window)),
            ("seasonal.season_points", self.seasonal.season_points),
            ("seasonal.refit_points", self.seasonal.refit_points),
            ("changepoint.window", Some(self.changepoint.window)),
            (
                "changepoint.min_reference",
                Some(self.changepoint.min_reference),
            ),
            (
                "changepoint.long_window",
                Some(self.changepoint.long_window),
            ),
        ];
        for (name, v) in points {
            if let Some(v) = v.filter(|v| *v > MAX_CONFIG_POINTS) {
                bad.push(format!("{name} = {v}: at most {MAX_CONFIG_POINTS}"));
            }
        }
        if let (Some(season), Some(refit)) =
            (self.seasonal.season_points, self.seasonal.refit_points)
            && refit < season / 4
        {
            bad.push(format!(
                "seasonal.refit_points = {refit}: at least a quarter season ({} of season_points {season}); each refit decomposes the whole history",
                season / 4
            ));
        }
        let season = self.seasonal.season_points.unwrap_or(288).max(1);
        if self.seasonal.history_seasons == 0
            || self.seasonal.history_seasons.saturating_mul(season) > MAX_CONFIG_POINTS
        {
            bad.push(format!(
                "seasonal.history_seasons = {}: between 1 and {} seasons",
                self.seasonal.history_seasons,
                MAX_CONFIG_POINTS / season
            ));
        }
        if !(0..=86_400).contains(&self.seasonal.phase_tolerance_secs) {
            bad.push(format!(
                "seasonal.phase_tolerance_secs = {}: between 0 and 86400",
                self.seasonal.phase_tolerance_secs
            ));
        }
        if let Err(e) = self.isolation_forest.forest.validate() {
            bad.push(format!("isolation_forest.forest: {e}"));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            detectors: vec![Kind::RobustZ, Kind::Seasonal, Kind::Changepoint],
            threshold: 0.5,
            combine: Combine::Max,
            robust_z_until_seasonal: true,
            rearm_points: 0,
            warmup_points: None,
            robust_z: RobustZConfig::default(),
            seasonal: SeasonalConfig::default(),
            changepoint: ChangepointConfig::default(),
            isolation_forest: IForestConfig::default(),
        }
    }
}

/// Warm-up of a streaming detector when the config leaves it open.
pub const DEFAULT_STREAM_WARMUP: usize = 288;

/// `robust_z` tunables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RobustZConfig {
    /// EWMA weight of a new point in the level (0 < alpha ≤ 1).
    pub alpha: f64,
    /// Innovations (value − level) kept for the scale, in points.
    pub window: usize,
    /// Robust z at which the score is 0.5.
    pub z_alarm: f64,
    /// A point moves the level by at most this many scales (outliers do not drag it).
    pub clip: f64,
    /// Quantile of the innovations whose spread also bounds the scale from below
    /// (0.01: the 1 %–99 % spread); 0 disables it (pure MAD).
    pub tail_quantile: f64,
}

impl Default for RobustZConfig {
    fn default() -> Self {
        RobustZConfig {
            alpha: 0.03,
            window: 2016,
            z_alarm: 5.0,
            clip: 3.0,
            tail_quantile: 0.005,
        }
    }
}

/// `seasonal` tunables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeasonalConfig {
    /// Season length in points; `None`: one day of points at the series' own step.
    pub season_points: Option<usize>,
    /// Refit every this many points; `None`: once a season. At least a quarter season
    /// (`validate` refuses less when the season is given; a season inferred from the step
    /// raises a smaller value to that floor).
    pub refit_points: Option<usize>,
    /// The trailing window the decomposition is fitted on, in seasons (at least 2).
    pub history_seasons: usize,
    /// EWMA weight of a new deseasonalised point in the level between refits.
    pub alpha: f64,
    /// Innovations kept for the scale, in points.
    pub window: usize,
    /// Robust z of the residual at which the score is 0.5.
    pub z_alarm: f64,
    /// A point moves the level by at most this many scales.
    pub clip: f64,
    /// As [`RobustZConfig::tail_quantile`].
    pub tail_quantile: f64,
    /// Recurring events drift in time (a nightly job at 03:10 one day, 03:40 the next): the
    /// scale is also at least the spread of the innovations seen within this many seconds of
    /// the same time of day in the trailing window, so that what happens around this time
    /// every day is not news. 0 disables it.
    pub phase_tolerance_secs: i64,
    /// Quantile of those same-time-of-day innovations whose spread bounds the scale.
    pub phase_tail_quantile: f64,
    /// Shrink the seasonal profile by the fit's seasonal strength (0 none … 1 pure season).
    pub shrink: bool,
    /// The profile is the per-phase median of the seasonal component over the window's
    /// cycles (robust to one odd day) rather than its last cycle.
    pub median_profile: bool,
}

impl Default for SeasonalConfig {
    fn default() -> Self {
        SeasonalConfig {
            season_points: None,
            refit_points: None,
            history_seasons: 7,
            alpha: 0.03,
            window: 288,
            z_alarm: 5.0,
            clip: 3.0,
            tail_quantile: 0.01,
            phase_tolerance_secs: 1800,
            phase_tail_quantile: 0.01,
            shrink: true,
            median_profile: true,
        }
    }
}

/// `changepoint` tunables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChangepointConfig {
    /// The trailing reference window (values before the change), in points.
    pub window: usize,
    /// Points of reference needed before scoring (again, after an alarm).
    pub min_reference: usize,
    /// CUSUM allowance in scales: drifts smaller than this per point are ignored.
    pub k: f64,
    /// CUSUM decision interval in scales: the score is 0.5 when a sum reaches it.
    pub h: f64,
    /// Standardised values are clipped to ±this (a spike alone does not make a shift).
    pub z_clip: f64,
    /// As [`RobustZConfig::tail_quantile`].
    pub tail_quantile: f64,
    /// Points of deviations from the reference kept to bound the scale from below (a series
    /// that habitually switches between regimes is not shifting); 0 disables it.
    pub long_window: usize,
    /// Quantile of those deviations whose spread bounds the scale.
    pub long_tail_quantile: f64,
}

impl Default for ChangepointConfig {
    fn default() -> Self {
        ChangepointConfig {
            window: 288,
            min_reference: 36,
            k: 1.0,
            h: 16.0,
            z_clip: 4.0,
            tail_quantile: 0.01,
            long_window: 2016,
            long_tail_quantile: 0.05,
        }
    }
}

/// `isolation_forest` tunables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IForestConfig {
    /// RNG seed of the forest (the same seed and data give the same forest).
    pub seed: u64,
    /// The forest's calibrated score (0.5 ordinary, 0.9 at the training scores' 99th
    /// percentile, 1 fully isolated) at which this detector's score is 0.5.
    pub alarm: f64,
    /// The forest itself: trees, subsample size, feature window.
    pub forest: IForestParams,
}

impl Default for IForestConfig {
    fn default() -> Self {
        IForestConfig {
            seed: 0x5eed,
            alarm: 0.95,
            forest: IForestParams::default(),
        }
    }
}

/// One point's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    /// The combined score in [0, 1].
    pub score: f64,
    /// `score >= threshold`.
    pub is_anomaly: bool,
    /// Each enabled detector's score, in config order (0 while it is not ready).
    pub parts: Vec<(Kind, f64)>,
}

/// Maps a severity (deviation / alarming deviation) to [0, 1]: `u² / (1 + u²)`.
fn calibrate(u: f64) -> f64 {
    if !u.is_finite() {
        return if u.is_nan() { 0.0 } else { 1.0 };
    }
    let u2 = u * u;
    u2 / (1.0 + u2)
}

/// A streaming detector: the enabled detectors' states plus the warm-up bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Detector {
    cfg: DetectorConfig,
    kinds: Vec<Kind>,
    warmup: usize,
    /// Points accepted (duplicates excluded).
    seen: u64,
    last_ts: Option<i64>,
    #[serde(with = "exact::opt")]
    last_value: Option<f64>,
    /// The smallest non-zero change between consecutive values seen: the data's resolution.
    #[serde(with = "exact::opt")]
    resolution: Option<f64>,
    since_alarm: Option<u64>,
    robust_z: Option<RobustZ>,
    seasonal: Option<Seasonal>,
    changepoint: Option<Changepoint>,
    iforest: Option<ForestSlot>,
}

impl Detector {
    /// A fresh detector; the warm-up is `cfg.warmup_points` or [`DEFAULT_STREAM_WARMUP`].
    pub fn new(cfg: &DetectorConfig) -> Detector {
        Detector::with_warmup(cfg, cfg.warmup_points.unwrap_or(DEFAULT_STREAM_WARMUP))
    }

    /// A fresh detector that scores 0 for its first `warmup` points.
    pub fn with_warmup(cfg: &DetectorConfig, warmup: usize) -> Detector {
        let mut kinds: Vec<Kind> = Vec::new();
        for k in &cfg.detectors {
            if !kinds.contains(k) {
                kinds.push(*k);
            }
        }
        let on = |k| kinds.contains(&k);
        Detector {
            cfg: cfg.clone(),
            warmup,
            seen: 0,
            last_ts: None,
            last_value: None,
            resolution: None,
            since_alarm: None,
            robust_z: on(Kind::RobustZ).then(RobustZ::default),
            seasonal: on(Kind::Seasonal).then(Seasonal::default),
            changepoint: on(Kind::Changepoint).then(Changepoint::default),
            iforest: on(Kind::IsolationForest).then(ForestSlot::default),
            kinds,
        }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Scores one point. `ts` is epoch seconds (UTC); points arrive in time order. A point
    /// whose `ts` is not after the previous one is a duplicate: it is scored against the
    /// current state but does not change it. A non-finite value scores 0 and is ignored.
    /// Gaps are normal.
    pub fn update(&mut self, ts: i64, value: f64) -> Scored {
        let fresh = value.is_finite() && self.last_ts.is_none_or(|last| ts > last);
        let warming = self.seen < self.warmup as u64;
        let floor = self.scale_floor(value);
        let superseded = self.cfg.robust_z_until_seasonal
            && self.seasonal.as_ref().is_some_and(|s| s.model.is_some());
        let season = self
            .seasonal
            .as_ref()
            .and_then(|s| s.model.as_ref())
            .map(|m| m.profile[m.phase(ts)]);
        let mut parts = Vec::with_capacity(self.kinds.len());
        for &kind in &self.kinds {
            let s = if !value.is_finite() {
                0.0
            } else {
                match kind {
                    Kind::RobustZ => self
                        .robust_z
                        .as_mut()
                        .map_or(0.0, |d| d.step(&self.cfg.robust_z, value, floor, fresh)),
                    Kind::Seasonal => self
                        .seasonal
                        .as_mut()
                        .map_or(0.0, |d| d.step(&self.cfg.seasonal, ts, value, floor, fresh)),
                    Kind::Changepoint => self.changepoint.as_mut().map_or(0.0, |d| {
                        d.step(&self.cfg.changepoint, value, season, floor, fresh)
                    }),
                    Kind::IsolationForest => self.iforest.as_mut().map_or(0.0, |d| {
                        d.step(&self.cfg.isolation_forest, value, fresh, warming)
                    }),
                }
            };
            parts.push((kind, if warming { 0.0 } else { s }));
        }
        if fresh {
            if let Some(prev) = self.last_value {
                let step = (value - prev).abs();
                if step > 0.0 && self.resolution.is_none_or(|r| step < r) {
                    self.resolution = Some(step);
                }
            }
            self.last_ts = Some(ts);
            self.last_value = Some(value);
            self.seen += 1;
        }
        let counted: Vec<f64> = parts
            .iter()
            .filter(|(k, _)| !(superseded && *k == Kind::RobustZ))
            .map(|p| p.1)
            .collect();
        let mut score = combine(self.cfg.combine, &counted);
        if !warming && self.cfg.rearm_points > 0 {
            let since = self.since_alarm;
            if score >= self.cfg.threshold {
                if since.is_some_and(|n| n < self.cfg.rearm_points as u64) {
                    score = score.min(self.cfg.threshold.next_down());
                } else if fresh {
                    self.since_alarm = Some(0);
                }
            }
        }
        if fresh && let Some(n) = self.since_alarm.as_mut() {
            *n += 1;
        }
        Scored {
            score,
            is_anomaly: score >= self.cfg.threshold,
            parts,
        }
    }

    /// No scale is taken below the data's resolution (a change of one quantum is not
    /// infinitely surprising) nor below 1e-6 of the value's magnitude (the decomposition
    /// works in f32).
    fn scale_floor(&self, value: f64) -> f64 {
        self.resolution.unwrap_or(0.0).max(1e-6 * value.abs())
    }

    /// The enabled detectors that currently contribute 0 because they cannot score yet,
    /// each with the reason.
    pub fn not_ready(&self) -> Vec<(Kind, String)> {
        let warming = (self.seen < self.warmup as u64)
            .then(|| format!("warming up: {} of {} points", self.seen, self.warmup));
        let mut out = Vec::new();
        for &kind in &self.kinds {
            let own = match kind {
                Kind::Seasonal => self
                    .seasonal
                    .as_ref()
                    .filter(|s| s.model.is_none())
                    .map(|s| s.status.clone()),
                Kind::IsolationForest => self.iforest.as_ref().and_then(ForestSlot::not_ready),
                Kind::RobustZ | Kind::Changepoint => None,
            };
            let why: Vec<String> = warming.iter().cloned().chain(own).collect();
            if !why.is_empty() {
                out.push((kind, why.join("; ")));
            }
        }
        out
    }
}

fn combine(how: Combine, parts: &[f64]) -> f64 {
    if parts.is_empty() {
        return 0.0;
    }
    let s = match how {
        Combine::Max => parts.iter().copied().fold(0.0, f64::max),
        Combine::NoisyOr => 1.0 - parts.iter().map(|p| 1.0 - p).product::<f64>(),
        Combine::Mean => parts.iter().sum::<f64>() / parts.len() as f64,
    };
    s.clamp(0.0, 1.0)
}

/// Scores a whole series causally, one [`Scored`] per input row. The first 15 % of the rows
/// (NAB's probationary period) only train the detectors unless `cfg.warmup_points` is set.
pub fn score_series(cfg: &DetectorConfig, ts: &[i64], values: &[f64]) -> Vec<Scored> {
    let warmup = cfg
        .warmup_points
        .unwrap_or_else(|| probationary_points(values.len()));
    let mut d = Detector::with_warmup(cfg, warmup);
    ts.iter()
        .zip(values)
        .map(|(&t, &v)| d.update(t, v))
        .collect()
}

/// NAB's probationary period: the first 15 % of a file's rows, at most 750.
pub fn probationary_points(rows: usize) -> usize {
    ((rows as f64 * 0.15).floor() as usize).min(750)
}

// ---------------------------------------------------------------------------------------
// Robust statistics shared by the detectors.

/// Median and scale of a sample, robust to a few outliers yet honest about heavy tails: the
/// scale is the larger of 1.4826·MAD and the `q`…`1 − q` quantile spread divided by the
/// normal spread of those quantiles (both estimate σ for normal data). Never below a tiny
/// floor relative to the median, so a flat series still has a finite z.
fn robust_stats<'a>(
    sample: impl IntoIterator<Item = &'a f64>,
    tail_q: f64,
    floor: f64,
    scratch: &mut Vec<f64>,
) -> (f64, f64) {
    scratch.clear();
    scratch.extend(sample);
    let n = scratch.len();
    if n == 0 {
        return (0.0, 1.0);
    }
    let med = *scratch.select_nth_unstable_by(n / 2, f64::total_cmp).1;
    let mut scale = 0.0;
    if tail_q > 0.0 && tail_q < 0.5 && n >= 4 {
        let lo_i = (tail_q * (n - 1) as f64).floor() as usize;
        let hi_i = ((1.0 - tail_q) * (n - 1) as f64).ceil() as usize;
        let lo = *scratch.select_nth_unstable_by(lo_i, f64::total_cmp).1;
        let hi = *scratch
            .select_nth_unstable_by(hi_i.min(n - 1), f64::total_cmp)
            .1;
        scale = (hi - lo) / (2.0 * inv_normal_upper(tail_q));
    }
    for v in scratch.iter_mut() {
        *v = (*v - med).abs();
    }
    let mad = *scratch.select_nth_unstable_by(n / 2, f64::total_cmp).1 * 1.4826;
    (med, scale.max(mad).max(floor).max(f64::MIN_POSITIVE))
}

/// The upper `q` quantile of the standard normal (Acklam's rational approximation of the
/// inverse CDF, relative error < 1.2e-9), for 0 < q < 0.5.
fn inv_normal_upper(q: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let p = q.clamp(1e-300, 0.5);
    // Lower tail quantile of p, negated.
    if p < 0.02425 {
        let t = (-2.0 * p.ln()).sqrt();
        -((((((C[0] * t + C[1]) * t + C[2]) * t + C[3]) * t + C[4]) * t + C[5])
            / ((((D[0] * t + D[1]) * t + D[2]) * t + D[3]) * t + 1.0))
    } else {
        let t = p - 0.5;
        let r = t * t;
        -((((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * t
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0))
    }
}

fn push_bounded(w: &mut VecDeque<f64>, v: f64, cap: usize) {
    w.push_back(v);
    while w.len() > cap.max(1) {
        w.pop_front();
    }
}

// ---------------------------------------------------------------------------------------
// robust_z

/// Robust z-score of the value against a robust EWMA level: `z = (r − median(R)) / scale(R)`
/// where `r = value − level` is the one-step innovation and `R` the recent innovations;
/// severity `|z| / z_alarm`. The level moves by `alpha · clip(r, ±clip·scale)`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RobustZ {
    #[serde(with = "exact::opt")]
    level: Option<f64>,
    #[serde(with = "exact::seq")]
    innovations: VecDeque<f64>,
    #[serde(skip)]
    scratch: Vec<f64>,
}

/// Innovations needed before a robust scale means anything.
const MIN_INNOVATIONS: usize = 12;

impl RobustZ {
    fn step(&mut self, cfg: &RobustZConfig, x: f64, floor: f64, fresh: bool) -> f64 {
        let Some(level) = self.level else {
            if fresh {
                self.level = Some(x);
            }
            return 0.0;
        };
        let r = x - level;
        let ready = self.innovations.len() >= MIN_INNOVATIONS;
        let (med, scale) = robust_stats(
            &self.innovations,
            cfg.tail_quantile,
            floor,
            &mut self.scratch,
        );
        let score = if ready {
            calibrate(((r - med) / scale).abs() / cfg.z_alarm)
        } else {
            0.0
        };
        if fresh {
            let moved = if ready {
                r.clamp(-cfg.clip * scale, cfg.clip * scale)
            } else {
                r
            };
            self.level = Some(level + cfg.alpha * moved);
            push_bounded(&mut self.innovations, r, cfg.window);
        }
        score
    }
}

// ---------------------------------------------------------------------------------------
// changepoint

/// Two-sided CUSUM on values standardised by a trailing reference window's median and
/// robust scale (clipped to ±`z_clip`, so one spike is not a shift):
/// `S⁺ ← max(0, S⁺ + z − k)`, `S⁻ ← max(0, S⁻ − z − k)`; severity `max(S⁺, S⁻) / h`.
/// When a sum reaches `h` the change is accepted: the sums reset and the reference restarts
/// from the points since the sum last left 0, so a shift alarms once, not until the window
/// has forgotten the old level.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Changepoint {
    #[serde(with = "exact::seq")]
    reference: VecDeque<f64>,
    #[serde(with = "exact")]
    pos: f64,
    #[serde(with = "exact")]
    neg: f64,
    /// Values since the larger sum last was 0 (the suspected new regime), at most `window`.
    #[serde(with = "exact::seq")]
    excursion: VecDeque<f64>,
    /// Whether the values are deseasonalised (by the seasonal model's profile).
    deseasonalised: bool,
    /// Deviations from the reference median over the long window: how far the series
    /// habitually strays (regime switches of a bursty series included).
    #[serde(with = "exact::seq")]
    deviations: VecDeque<f64>,
    #[serde(skip)]
    scratch: Vec<f64>,
}

impl Changepoint {
    /// `season` is the seasonal model's profile value for this point, when there is one:
    /// a daily pattern is not a level shift. Switching to (or from) deseasonalised values
    /// starts a new reference.
    fn step(
        &mut self,
        cfg: &ChangepointConfig,
        x: f64,
        season: Option<f64>,
        floor: f64,
        fresh: bool,
    ) -> f64 {
        if season.is_some() != self.deseasonalised && fresh {
            self.deseasonalised = season.is_some();
            self.reference.clear();
            self.excursion.clear();
            self.pos = 0.0;
            self.neg = 0.0;
        }
        let x = x - season.unwrap_or(0.0);
        let min_ref = cfg.min_reference.max(4);
        if self.reference.len() < min_ref {
            if fresh {
                push_bounded(&mut self.reference, x, cfg.window);
            }
            return 0.0;
        }
        let (med, mut scale) =
            robust_stats(&self.reference, cfg.tail_quantile, floor, &mut self.scratch);
        if cfg.long_window > 0 && self.deviations.len() >= MIN_INNOVATIONS {
            let (_, long) = robust_stats(
                &self.deviations,
                cfg.long_tail_quantile,
                floor,
                &mut self.scratch,
            );
            scale = scale.max(long);
        }
        let z = ((x - med) / scale).clamp(-cfg.z_clip, cfg.z_clip);
        if fresh && cfg.long_window > 0 {
            push_bounded(&mut self.deviations, x - med, cfg.long_window);
        }
        let pos = (self.pos + z - cfg.k).max(0.0);
        let neg = (self.neg - z - cfg.k).max(0.0);
        let u = pos.max(neg) / cfg.h;
        if fresh {
            if pos.max(neg) == 0.0 {
                self.excursion.clear();
            } else {
                push_bounded(&mut self.excursion, x, cfg.window);
            }
            if u >= 1.0 {
                // Accept the change: the new regime is what the excursion saw.
                self.pos = 0.0;
                self.neg = 0.0;
                self.reference = std::mem::take(&mut self.excursion);
            } else {
                self.pos = pos;
                self.neg = neg;
                push_bounded(&mut self.reference, x, cfg.window);
            }
        }
        calibrate(u)
    }
}

// ---------------------------------------------------------------------------------------
// seasonal

/// Seasonal residual. A trailing window of at most `history_seasons` seasons is put on its
/// regular grid and decomposed by MSTL (robust STL, one period = a day of points) with an
/// AutoETS trend; from the fit we keep the numbers: the last season of the seasonal
/// component by phase, the AutoETS one-step-ahead trend as the level, and the one-step
/// innovations of the deseasonalised window for the scale. Between refits the level follows
/// the deseasonalised values like `robust_z`'s. Residual `r = value − level − profile[phase]`;
/// severity `|r − median| / scale / z_alarm`. With less than two seasons of history it
/// contributes 0 and [`Detector::not_ready`] says why.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seasonal {
    ts: VecDeque<i64>,
    #[serde(with = "exact::seq")]
    values: VecDeque<f64>,
    step: Option<i64>,
    period: usize,
    since_fit: usize,
    model: Option<SeasonalModel>,
    status: String,
    #[serde(skip)]
    scratch: Vec<f64>,
}

impl Default for Seasonal {
    fn default() -> Self {
        Seasonal {
            ts: VecDeque::new(),
            values: VecDeque::new(),
            step: None,
            period: 0,
            since_fit: 0,
            model: None,
            status: "no history yet".into(),
            scratch: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeasonalModel {
    step: i64,
    /// Seasonal component by phase, `phase = (ts / step) mod period`.
    #[serde(with = "exact::seq")]
    profile: Vec<f64>,
    /// What of the profile the residual removes: the fit's seasonal strength with
    /// [`SeasonalConfig::shrink`] (a weak season is mostly noise), else 1.
    #[serde(with = "exact")]
    shrink: f64,
    /// The deseasonalised level (trend).
    #[serde(with = "exact")]
    level: f64,
    #[serde(with = "exact::seq")]
    innovations: VecDeque<f64>,
    /// Innovations by time of day: `by_phase[phase · cycles + cycle mod cycles]` (NaN: none).
    #[serde(with = "exact::seq")]
    by_phase: Vec<f64>,
    cycles: usize,
}

impl SeasonalModel {
    fn phase(&self, ts: i64) -> usize {
        ts.div_euclid(self.step)
            .rem_euclid(self.profile.len() as i64) as usize
    }

    fn remember(&mut self, ts: i64, r: f64) {
        let slot = ts.div_euclid(self.step);
        let period = self.profile.len() as i64;
        let phase = slot.rem_euclid(period) as usize;
        let cycle = slot.div_euclid(period).rem_euclid(self.cycles as i64) as usize;
        if let Some(v) = self.by_phase.get_mut(phase * self.cycles + cycle) {
            *v = r;
        }
    }

    /// The innovations recorded within `k` phases of `phase`.
    fn near(&self, phase: usize, k: usize) -> impl Iterator<Item = &f64> {
        let period = self.profile.len();
        let k = k.min(period / 2);
        (0..=2 * k).flat_map(move |j| {
            let p = (phase + period + j - k) % period;
            self.by_phase[p * self.cycles..(p + 1) * self.cycles]
                .iter()
                .filter(|v| !v.is_nan())
        })
    }
}

/// Smallest season that a decomposition is worth fitting for.
const MIN_PERIOD: usize = 4;
/// Largest season (a day at 10-second steps).
const MAX_PERIOD: usize = 8640;

impl Seasonal {
    fn step(&mut self, cfg: &SeasonalConfig, ts: i64, x: f64, floor: f64, fresh: bool) -> f64 {
        let mut score = 0.0;
        if let Some(m) = &mut self.model {
            let phase = m.phase(ts);
            let deseason = x - m.shrink * m.profile[phase];
            let r = deseason - m.level;
            let ready = m.innovations.len() >= MIN_INNOVATIONS;
            let (med, mut scale) =
                robust_stats(&m.innovations, cfg.tail_quantile, floor, &mut self.scratch);
            if cfg.phase_tolerance_secs > 0 {
                let k = (cfg.phase_tolerance_secs as f64 / m.step as f64).round() as usize;
                let (_, local) = robust_stats(
                    m.near(phase, k),
                    cfg.phase_tail_quantile,
                    floor,
                    &mut self.scratch,
                );
                if self.scratch.len() >= MIN_INNOVATIONS {
                    scale = scale.max(local);
                }
            }
            if ready {
                score = calibrate(((r - med) / scale).abs() / cfg.z_alarm);
            }
            if fresh {
                let moved = if ready {
                    r.clamp(-cfg.clip * scale, cfg.clip * scale)
                } else {
                    r
                };
                m.level += cfg.alpha * moved;
                push_bounded(&mut m.innovations, r, cfg.window);
                m.remember(ts, r);
            }
        }
        if fresh {
            self.ts.push_back(ts);
            self.values.push_back(x);
            self.since_fit += 1;
            self.maybe_refit(cfg, floor);
        }
        score
    }

    fn maybe_refit(&mut self, cfg: &SeasonalConfig, floor: f64) {
        if self.step.is_none() && self.ts.len() >= 16 {
            let ts: Vec<i64> = self.ts.iter().copied().collect();
            match infer_step(&ts) {
                Some(step) if step > 0 => {
                    let period = cfg
                        .season_points
                        .unwrap_or_else(|| (86_400.0 / step as f64).round() as usize);
                    if (MIN_PERIOD..=MAX_PERIOD).contains(&period) {
                        self.step = Some(step);
                        self.period = period;
                    } else {
                        self.status = format!(
                            "a season of {period} points at a {step}s step is outside \
                             {MIN_PERIOD}..={MAX_PERIOD}: seasonal is off for this series"
                        );
                    }
                }
                _ => self.status = "cannot infer the step".into(),
            }
        }
        let Some(step) = self.step else {
            return;
        };
        let period = self.period;
        let cap = period * cfg.history_seasons.max(2);
        while self.ts.len() > cap {
            self.ts.pop_front();
            self.values.pop_front();
        }
        let (Some(first), Some(last)) = (self.ts.front(), self.ts.back()) else {
            return;
        };
        let span = ((last - first) / step) as usize + 1;
        if span < 2 * period || self.ts.len() < period {
            self.status = format!(
                "needs two seasons ({} points at {step}s) of history, has {span}",
                2 * period
            );
            return;
        }
        let cadence = refit_cadence(cfg, period);
        if self.model.is_some() && self.since_fit < cadence {
            return;
        }
        self.since_fit = 0;
        match self.fit(cfg, step, period, floor) {
            Ok(m) => {
                self.model = Some(m);
                self.status = "ready".into();
            }
            Err(e) => {
                // Keep the previous model if there is one; say why otherwise.
                tracing::debug!(error = %e, "seasonal refit failed");
                self.status = format!("seasonal fit failed: {e}");
            }
        }
    }

    fn fit(
        &self,
        cfg: &SeasonalConfig,
        step: i64,
        period: usize,
        floor: f64,
    ) -> Result<SeasonalModel, String> {
        let series = Series {
            name: "seasonal history".into(),
            ts: self.ts.iter().copied().collect(),
            values: self.values.iter().copied().collect(),
        };
        let grid = regularize(&series, Some(step)).map_err(|e| e.to_string())?;
        let n = grid.values.len();
        if n < 2 * period {
            return Err(format!("{n} grid points for a season of {period}"));
        }
        let mut stl = StlParams::new();
        stl.robust(true);
        let mut params = MstlParams::new();
        params.stl_params(stl);
        let model = MSTLModel::new(vec![period], AutoETS::non_seasonal().into_trend_model())
            .mstl_params(params);
        let fitted = model.fit(&grid.values).map_err(|e| e.to_string())?;
        let seasonal = fitted
            .fit()
            .seasonal()
            .first()
            .ok_or("MSTL returned no seasonal component")?;
        let shrink = if cfg.shrink {
            fitted
                .fit()
                .seasonal_strength()
                .first()
                .copied()
                .filter(|s| s.is_finite())
                .unwrap_or(0.0)
                .clamp(0.0, 1.0)
        } else {
            1.0
        };
        // The next grid point's forecast is trend + the seasonal value one period back.
        let next = fitted.predict(1, None).map_err(|e| e.to_string())?;
        let next_season = f64::from(seasonal[n - period]);
        let seasonal: Vec<f64> = seasonal.iter().map(|&v| f64::from(v)).collect();
        let mut profile = vec![0.0; period];
        let first_slot = grid.start.div_euclid(step);
        let phase_of = |i: usize| (first_slot + i as i64).rem_euclid(period as i64) as usize;
        if cfg.median_profile {
            // Per phase, the median over the window's cycles: one odd day does not become
            // tomorrow's expectation.
            let mut by_phase: Vec<Vec<f64>> = vec![Vec::new(); period];
            for (i, &s) in seasonal.iter().enumerate() {
                by_phase[phase_of(i)].push(s);
            }
            for (p, mut v) in by_phase.into_iter().enumerate() {
                if !v.is_empty() {
                    let mid = v.len() / 2;
                    profile[p] = *v.select_nth_unstable_by(mid, f64::total_cmp).1;
                }
            }
        } else {
            for (i, &s) in seasonal.iter().enumerate().skip(n - period) {
                profile[phase_of(i)] = s;
            }
        }
        let level = next
            .point
            .first()
            .map(|p| p - next_season)
            .filter(|l| l.is_finite())
            .ok_or("AutoETS gave no finite forecast")?;
        let cycles = cfg.history_seasons.max(2);
        let mut model = SeasonalModel {
            step,
            profile,
            shrink,
            level,
            innovations: VecDeque::new(),
            by_phase: vec![f64::NAN; period * cycles],
            cycles,
        };
        // One-step innovations of the deseasonalised window, as the online filter sees them.
        let mut innovations = VecDeque::with_capacity(cfg.window);
        let mut lvl: Option<f64> = None;
        let mut scratch = Vec::new();
        for (i, &y) in grid.values.iter().enumerate() {
            let d = y - shrink * seasonal[i];
            let Some(l) = lvl else {
                lvl = Some(d);
                continue;
            };
            let r = d - l;
            let moved = if innovations.len() >= MIN_INNOVATIONS {
                let (_, scale) = robust_stats(&innovations, cfg.tail_quantile, floor, &mut scratch);
                r.clamp(-cfg.clip * scale, cfg.clip * scale)
            } else {
                r
            };
            lvl = Some(l + cfg.alpha * moved);
            push_bounded(&mut innovations, r, cfg.window);
            model.remember(grid.ts(i), r);
        }
        model.innovations = innovations;
        Ok(model)
    }
}

// ---------------------------------------------------------------------------------------
// isolation_forest

/// The isolation forest's slot: the warm-up values it will be trained on, then the forest
/// ([`IForestDetector`], window features of the value and the ones before it). Its
/// calibrated score `s` (0.5 for ordinary points) becomes the severity
/// `max(0, s − 0.5) / (alarm − 0.5)`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ForestSlot {
    #[serde(with = "exact::seq")]
    history: Vec<f64>,
    forest: Option<IForestDetector>,
    error: Option<String>,
}

impl ForestSlot {
    fn step(&mut self, cfg: &IForestConfig, x: f64, fresh: bool, warming: bool) -> f64 {
        if self.forest.is_none() && self.error.is_none() {
            let needed = cfg.forest.window + 2;
            if warming || self.history.len() < needed {
                if fresh {
                    self.history.push(x);
                }
                return 0.0;
            }
            match IForestDetector::train(&self.history, &cfg.forest, cfg.seed) {
                Ok(f) => self.forest = Some(f),
                Err(e) => self.error = Some(format!("isolation forest not trained: {e}")),
            }
            self.history = Vec::new();
        }
        let Some(forest) = &mut self.forest else {
            return 0.0;
        };
        let s = if fresh {
            forest.score(x)
        } else {
            // Scoring pushes the value into the forest's window: score a copy.
            forest.clone().score(x)
        };
        let span = (cfg.alarm - 0.5).max(1e-9);
        calibrate((s - 0.5).max(0.0) / span)
    }

    fn not_ready(&self) -> Option<String> {
        match (&self.forest, &self.error) {
            (_, Some(e)) => Some(e.clone()),
            (None, None) => Some(format!(
                "isolation forest collecting its training history ({} points)",
                self.history.len()
            )),
            (Some(_), None) => None,
        }
    }
}

// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod validate_tests {
    use super::*;

    #[test]
    fn the_default_is_valid_and_bad_tunables_are_named() {
        DetectorConfig::default().validate().unwrap();
        let cfg: DetectorConfig = serde_json::from_value(serde_json::json!({
            "robust_z": {"clip": -1.0},
            "seasonal": {"window": 1_000_000_000_000u64, "history_seasons": 1_000_000_000_000u64}
        }))
        .unwrap();
        let e = cfg.validate().unwrap_err();
        assert!(
            e.contains("robust_z.clip")
                && e.contains("seasonal.window")
                && e.contains("history_seasons"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod tests {
    //! Detector behaviour on small fixtures derived from NAB (see tests/fixtures/README.md).

    use std::path::PathBuf;

    use ymera_common::series::read_csv;

    use super::*;

    const SPIKE: &str = "realAWSCloudwatch/rds_cpu_utilization_e47b3b_spike.csv";
    const SHIFT: &str = "realAWSCloudwatch/ec2_cpu_utilization_ac20cd_shift.csv";
    const CALM: &str = "realAWSCloudwatch/ec2_cpu_utilization_ac20cd_calm.csv";
    const DAILY: &str = "artificialWithAnomaly/art_daily_nojump_hourly.csv";
    const NOISE: &str = "generated/unlabelled_noise.csv";

    fn fixture(name: &str) -> (Series, Vec<(i64, i64)>) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nab");
        let series = read_csv(&dir.join("data").join(name)).unwrap();
        let windows = crate::nab::load_windows(&dir.join("labels/combined_windows.json")).unwrap();
        (series, windows.get(name).cloned().unwrap_or_default())
    }

    fn only(kinds: &[Kind]) -> DetectorConfig {
        DetectorConfig {
            detectors: kinds.to_vec(),
            ..DetectorConfig::default()
        }
    }

    /// Rows flagged by `cfg` on fixture `name`: (inside a window, outside any window).
    fn detections(cfg: &DetectorConfig, name: &str) -> (Vec<usize>, Vec<usize>) {
        let (s, windows) = fixture(name);
        let out = score_series(cfg, &s.ts, &s.values);
        assert_eq!(out.len(), s.values.len(), "{name}: one score per row");
        let (mut inside, mut outside) = (Vec::new(), Vec::new());
        for (i, o) in out.iter().enumerate() {
            assert!(
                (0.0..=1.0).contains(&o.score),
                "{name}[{i}]: score {}",
                o.score
            );
            assert_eq!(o.is_anomaly, o.score >= cfg.threshold);
            if o.is_anomaly {
                let t = s.ts[i];
                if windows.iter().any(|&(a, b)| a <= t && t <= b) {
                    inside.push(i);
                } else {
                    outside.push(i);
                }
            }
        }
        (inside, outside)
    }

    #[test]
    fn a_spike_is_flagged_where_it_happens() {
        // Row 296 is the labelled spike (CPU 13 % -> 76 %).
        for cfg in [DetectorConfig::default(), only(&[Kind::RobustZ])] {
            let (inside, outside) = detections(&cfg, SPIKE);
            assert_eq!(
                inside.first(),
                Some(&296),
                "{:?}: {inside:?}",
                cfg.detectors
            );
            assert!(outside.is_empty(), "{:?}: {outside:?}", cfg.detectors);
        }
    }

    #[test]
    fn a_level_shift_is_flagged_once_it_starts() {
        // CPU goes from ~32 % to 99 % from row 325 on (a precursor at 315).
        for cfg in [
            DetectorConfig::default(),
            only(&[Kind::RobustZ]),
            only(&[Kind::Changepoint]),
        ] {
            let (inside, outside) = detections(&cfg, SHIFT);
            assert!(
                inside.iter().any(|i| (315..=330).contains(i)),
                "{:?}: {inside:?}",
                cfg.detectors
            );
            assert!(outside.is_empty(), "{:?}: {outside:?}", cfg.detectors);
        }
        // The changepoint accepts the new level: it alarms a few times, not for every point
        // of the new regime.
        let (inside, _) = detections(&only(&[Kind::Changepoint]), SHIFT);
        assert!(inside.len() <= 4, "{inside:?}");
    }

    #[test]
    fn calm_series_raise_few_alarms() {
        for name in [CALM, NOISE] {
            for kinds in [&Kind::ALL[..3], &[Kind::RobustZ], &[Kind::Changepoint]] {
                let (inside, outside) = detections(&only(kinds), name);
                assert!(inside.is_empty());
                assert!(outside.len() <= 1, "{name} {kinds:?}: {outside:?}");
            }
        }
    }

    #[test]
    fn seasonal_flags_a_missing_daily_peak() {
        // Hourly steps, so a season is 24 points; the peak of day 11 (rows 249–258) is missing.
        let cfg = only(&[Kind::Seasonal]);
        let (inside, outside) = detections(&cfg, DAILY);
        assert!(inside.iter().any(|i| (249..=252).contains(i)), "{inside:?}");
        assert!(outside.is_empty(), "{outside:?}");
        // robust_z alone sees a normal low value.
        let (inside, _) = detections(&only(&[Kind::RobustZ]), DAILY);
        assert!(
            !inside.iter().any(|i| (249..=252).contains(i)),
            "{inside:?}"
        );
    }

    #[test]
    fn seasonal_says_why_it_is_silent_until_two_seasons() {
        let (s, _) = fixture(DAILY);
        let mut d = Detector::with_warmup(&only(&[Kind::Seasonal]), 0);
        for i in 0..47 {
            let out = d.update(s.ts[i], s.values[i]);
            assert_eq!(out.parts, vec![(Kind::Seasonal, 0.0)]);
        }
        let why = d.not_ready();
        assert!(
            why.iter()
                .any(|(k, m)| *k == Kind::Seasonal && m.contains("two seasons")),
            "{why:?}"
        );
        d.update(s.ts[47], s.values[47]);
        assert!(d.not_ready().is_empty(), "{:?}", d.not_ready());
    }

    fn bits(out: &[Scored]) -> Vec<(u64, Vec<u64>)> {
        out.iter()
            .map(|o| {
                (
                    o.score.to_bits(),
                    o.parts.iter().map(|p| p.1.to_bits()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn scores_are_deterministic_and_survive_a_checkpoint() {
        let cfg = DetectorConfig {
            detectors: Kind::ALL.to_vec(),
            warmup_points: Some(60),
            ..DetectorConfig::default()
        };
        for name in [DAILY, SHIFT] {
            let (s, _) = fixture(name);
            let once = score_series(&cfg, &s.ts, &s.values);
            let twice = score_series(&cfg, &s.ts, &s.values);
            assert_eq!(bits(&once), bits(&twice), "{name}");

            // Checkpoint after the seasonal model and the forest exist, restore, continue.
            let cut = s.values.len() * 2 / 3;
            let mut d = Detector::new(&cfg);
            let mut resumed: Vec<Scored> =
                (0..cut).map(|i| d.update(s.ts[i], s.values[i])).collect();
            let json = serde_json::to_string(&d).unwrap();
            let mut d: Detector = serde_json::from_str(&json).unwrap();
            assert_eq!(
                serde_json::to_string(&d).unwrap(),
                json,
                "{name}: stable encoding"
            );
            resumed.extend((cut..s.values.len()).map(|i| d.update(s.ts[i], s.values[i])));
            assert_eq!(bits(&resumed), bits(&once), "{name}");
            if name == DAILY {
                assert!(d.not_ready().is_empty(), "{:?}", d.not_ready());
            }
        }
    }

    #[test]
    fn duplicates_gaps_and_bad_values_are_scored_without_changing_state() {
        let (s, _) = fixture(SHIFT);
        let cfg = DetectorConfig {
            detectors: Kind::ALL.to_vec(),
            warmup_points: Some(60),
            ..DetectorConfig::default()
        };
        let mut plain = Detector::new(&cfg);
        let mut messy = Detector::new(&cfg);
        for i in 0..s.values.len() {
            let (t, v) = (s.ts[i], s.values[i]);
            let expected = plain.update(t, v);
            let got = messy.update(t, v);
            assert_eq!(bits(&[got]), bits(&[expected]), "row {i}");
            if i % 50 == 7 {
                // A duplicate timestamp, an older one, and non-finite values: each gets a
                // score, none changes what comes next.
                for (t2, v2) in [
                    (t, v + 50.0),
                    (t - 3600, v),
                    (t + 1, f64::NAN),
                    (t + 1, f64::INFINITY),
                ] {
                    let o = messy.update(t2, v2);
                    assert!((0.0..=1.0).contains(&o.score), "row {i}: {o:?}");
                    assert_eq!(o.parts.len(), Kind::ALL.len());
                }
            }
        }
        // A gap of a day in the middle of a series is just a gap.
        let mut d = Detector::with_warmup(&DetectorConfig::default(), 10);
        for i in 0..200 {
            let t = s.ts[i] + if i >= 100 { 86_400 } else { 0 };
            assert!(d.update(t, s.values[i]).score.is_finite());
        }
    }

    #[test]
    fn score_series_gives_one_score_per_row_and_zero_during_warm_up() {
        let (s, _) = fixture(NOISE);
        let out = score_series(&DetectorConfig::default(), &s.ts, &s.values);
        assert_eq!(out.len(), s.values.len());
        let warm = probationary_points(s.values.len());
        assert_eq!(warm, 45);
        assert!(out[..warm].iter().all(|o| o.score == 0.0 && !o.is_anomaly));
        assert!(score_series(&DetectorConfig::default(), &[], &[]).is_empty());
        assert_eq!(probationary_points(10_000), 750);
    }

    #[test]
    fn config_defaults_unknown_fields_and_names() {
        let cfg: DetectorConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, DetectorConfig::default());
        let cfg: DetectorConfig =
            serde_json::from_str(r#"{"detectors": ["changepoint"], "seasonal": {"alpha": 0.2}}"#)
                .unwrap();
        assert_eq!(cfg.detectors, vec![Kind::Changepoint]);
        assert_eq!(cfg.seasonal.alpha, 0.2);
        assert_eq!(cfg.seasonal.window, SeasonalConfig::default().window);
        let e = serde_json::from_str::<DetectorConfig>(r#"{"treshold": 0.4}"#).unwrap_err();
        assert!(e.to_string().contains("treshold"), "{e}");
        for k in Kind::ALL {
            assert_eq!(k.name().parse::<Kind>(), Ok(k));
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.name())
            );
        }
        assert!("zscore".parse::<Kind>().unwrap_err().contains("robust_z"));
    }

    #[test]
    fn robust_statistics() {
        assert!((inv_normal_upper(0.025) - 1.959_964).abs() < 1e-5);
        assert!((inv_normal_upper(0.005) - 2.575_829).abs() < 1e-5);
        let mut scratch = Vec::new();
        // Normal-ish sample: MAD and quantile spread agree on σ ≈ 1.
        let upper: Vec<f64> = (1..500)
            .map(|i| inv_normal_upper(i as f64 / 1000.0))
            .collect();
        let sample: Vec<f64> = upper.iter().flat_map(|v| [*v, -v]).chain([0.0]).collect();
        let (med, scale) = robust_stats(&sample, 0.01, 0.0, &mut scratch);
        assert!(med == 0.0 && (scale - 1.0).abs() < 0.05, "{med} {scale}");
        // Constant sample: the floor.
        assert_eq!(
            robust_stats(&[3.0; 20], 0.01, 0.5, &mut scratch),
            (3.0, 0.5)
        );
        assert_eq!(calibrate(1.0), 0.5);
        assert_eq!(calibrate(f64::INFINITY), 1.0);
        assert_eq!(calibrate(f64::NAN), 0.0);
    }

    #[test]
    fn exact_floats_round_trip_through_json() {
        let mut d = RobustZ::default();
        for (i, v) in [0.1, 1.0 / 3.0, 9.826906946328695e2, 5.8708966719419204e-5]
            .iter()
            .enumerate()
        {
            d.innovations.push_back(*v * (i + 1) as f64);
        }
        d.level = Some(std::f64::consts::PI);
        let back: RobustZ = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back.level.map(f64::to_bits), d.level.map(f64::to_bits));
        let b: Vec<u64> = back.innovations.iter().map(|v| v.to_bits()).collect();
        let a: Vec<u64> = d.innovations.iter().map(|v| v.to_bits()).collect();
        assert_eq!(a, b);
        // Hand-written numbers are accepted too.
        let r: RobustZ =
            serde_json::from_str(r#"{"level": 2.5, "innovations": [1, "0.5"]}"#).unwrap();
        assert_eq!(r.level, Some(2.5));
        assert_eq!(r.innovations, [1.0, 0.5]);
    }
}

//! The scaling simulator behind `ymera simulate-scaling`: replays a load series through
//! Kubernetes' reactive Horizontal Pod Autoscaler and through our forecast-driven KEDA
//! policy, and reports for each the time the load exceeded ready capacity (SLO-breach
//! minutes) and the replicas paid for (replica-hours).
//!
//! # The model
//! * Time runs from the series' first point to its last. The load between points is
//!   linear; [`Regular::values`]`[i]` is the load at the instant `start + i·step`.
//! * The autoscaler acts every [`ScalingConfig::sync_s`] (15 s). A replica requested at `t`
//!   costs from `t` and serves from `t + startup`. A scale-down removes replicas at once,
//!   starting ones first (newest first, as the ReplicaSet controller prefers not-ready
//!   pods), then ready ones.
//! * Both policies start from `clamp(ceil(load(start) / target), min, max)` replicas, all
//!   ready.
//! * Breach time and replica-hours are integrated exactly between events (syncs, replicas
//!   becoming ready, series points): the sync period is when decisions happen, not the
//!   resolution of the accounting. Capacity is `ready × capacity_per_replica` (the target
//!   utilization steers the autoscaler, it does not shrink what a replica can serve).
//!
//! # Kubernetes behaviour modelled (HPA `autoscaling/v2`, defaults)
//! * Sync period 15 s (`--horizontal-pod-autoscaler-sync-period`; kubernetes.io, "Horizontal
//!   Pod Autoscaling", *How does a HorizontalPodAutoscaler work?*).
//! * Tolerance 0.1: no change while `|1 − ratio| ≤ 0.1` (`--horizontal-pod-autoscaler-tolerance`;
//!   same page, *Algorithm details*; KEP-4951 "Configurable tolerance for HPA").
//! * `desiredReplicas = ceil(currentReplicas × currentMetric / desiredMetric)`; for a Pods
//!   metric, pods that have not reported yet (our starting replicas) count as using 0 on a
//!   scale-up and exactly the target on a scale-down, and no scaling happens if that flips
//!   the direction (`calcPlainMetricReplicas`, kubernetes `pkg/controller/podautoscaler/
//!   replica_calculator.go`). For an External `AverageValue` metric (what KEDA exposes):
//!   `ratio = value / (target × replicas)`, and outside the tolerance
//!   `desired = ceil(value / target)` (`GetExternalPerPodMetricReplicas`, same file).
//! * Default `behavior`: scale-up stabilization window 0; scale-up policies 100 % or
//!   4 pods per 15 s, `selectPolicy: Max` (i.e. at most `max(2·n, n + 4)` per 15 s, counted
//!   from the replicas at the start of the period); scale-down stabilization window 300 s
//!   (the highest recommendation of the last 5 min is used) and a policy allowing all pods
//!   to be removed per 15 s (`HPAScalingRules` / `HorizontalPodAutoscalerBehavior` API
//!   reference; `stabilizeRecommendationWithBehaviors` and
//!   `calculateScaleUpLimitWithScalingRules` in `pkg/controller/podautoscaler/horizontal.go`).
//! * KEDA `scalingModifiers` (KEDA docs, *Scaling Deployments → Scaling Modifiers*) combine
//!   triggers with a formula into one metric; ours is `max(forecast, current)`.
//!
//! Sources: <https://kubernetes.io/docs/concepts/workloads/autoscaling/horizontal-pod-autoscale/>,
//! <https://github.com/kubernetes/enhancements/tree/master/keps/sig-autoscaling/4951-configurable-hpa-tolerance>,
//! the `HPAScalingRules` field docs (e.g. k8s-openapi `api::autoscaling::v2::HPAScalingRules`),
//! kubernetes `pkg/controller/podautoscaler/{horizontal,replica_calculator}.go`, and
//! <https://keda.sh/docs/2.14/concepts/scaling-deployments/#scaling-modifiers-experimental>.
//!
//! The metric lag ([`ScalingConfig::metric_lag_s`], default 30 s) is ours, not a
//! Kubernetes setting: a metric read at `t` describes the load at `t − lag` (one sample
//! window of metrics-server or of a Prometheus `rate()`).

use std::collections::VecDeque;

use serde::Serialize;
use ymera_common::series::Regular;

use crate::ModelError;

/// HPA scale-up policy period (seconds): both default policies use 15 s.
const SCALE_UP_PERIOD_S: f64 = 15.0;
/// Default scale-up policy "Pods": add up to 4 pods per period.
const SCALE_UP_PODS: u32 = 4;
/// Default scale-up policy "Percent": add up to 100 % per period.
const SCALE_UP_PERCENT: f64 = 100.0;

/// Produces, from the history up to now (regular grid: start epoch seconds, step seconds,
/// values), the load quantile to provision for at each of the next `horizon` grid steps.
///
/// The forecast policy calls it once per series step, when a new point has been observed
/// (`history` then ends with that point), and reuses the answer until the next point: it
/// never sees data from the future. `result[j]` is for `start + (history.len() + j)·step`.
/// A forecaster that cannot forecast returns fewer points (or none); non-finite values end
/// the forecast at that point. The policy holds the last point it got, and it always
/// provisions at least for the observed load (`max(forecast, current)`), so a missing
/// forecast degrades to reactive scaling — never to an error.
pub trait LoadForecaster {
    fn forecast(&mut self, start: i64, step: i64, history: &[f64], horizon: usize) -> Vec<f64>;

    /// A short name for reports.
    fn name(&self) -> &str {
        "forecaster"
    }
}

/// Peeks at the true future of the series it was built from: the upper bound of what any
/// forecaster can achieve. For tests and comparisons only.
#[derive(Debug, Clone)]
pub struct Oracle {
    start: i64,
    step: i64,
    values: Vec<f64>,
}

impl Oracle {
    pub fn new(load: &Regular) -> Self {
        Oracle {
            start: load.start,
            step: load.step,
            values: load.values.clone(),
        }
    }
}

impl LoadForecaster for Oracle {
    fn forecast(&mut self, start: i64, step: i64, history: &[f64], horizon: usize) -> Vec<f64> {
        let Some(last) = self.values.last().copied() else {
            return Vec::new();
        };
        if step != self.step || (start - self.start) % step != 0 || start < self.start {
            return Vec::new();
        }
        let first = ((start - self.start) / step) as usize + history.len();
        (first..first + horizon)
            .map(|i| self.values.get(i).copied().unwrap_or(last))
            .collect()
    }

    fn name(&self) -> &str {
        "oracle"
    }
}

/// The load one day earlier times `factor` (1.1 by default: 10 % headroom); with less than
/// a day of history, the last value times `factor`.
#[derive(Debug, Clone)]
pub struct SeasonalNaive {
    pub factor: f64,
}

impl Default for SeasonalNaive {
    fn default() -> Self {
        SeasonalNaive { factor: 1.1 }
    }
}

impl LoadForecaster for SeasonalNaive {
    fn forecast(&mut self, _start: i64, step: i64, history: &[f64], horizon: usize) -> Vec<f64> {
        let n = history.len();
        if n == 0 || step <= 0 {
            return Vec::new();
        }
        let per_day = ((86_400 / step) as usize).max(1);
        (1..=horizon)
            .map(|j| {
                let v = if n >= per_day {
                    let mut i = n - 1 + j;
                    while i >= n {
                        i -= per_day;
                    }
                    history[i]
                } else {
                    history[n - 1]
                };
                v * self.factor
            })
            .collect()
    }

    fn name(&self) -> &str {
        "seasonal-naive"
    }
}

/// What is simulated: the service's replicas and the autoscaler's settings. Durations are
/// in seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingConfig {
    /// Load one replica serves (`--capacity-per-replica`), in the series' unit.
    pub capacity_per_replica: f64,
    /// From requesting a replica until it serves (`--startup`).
    pub startup_s: f64,
    /// How far ahead the forecast policy provisions (`--lead`): it scales for the highest
    /// forecast in `[t, t + lead]`.
    pub lead_s: f64,
    /// Fewest replicas (`--min-replicas`, at least 1 as for the HPA).
    pub min_replicas: u32,
    /// Most replicas (`--max-replicas`).
    pub max_replicas: u32,
    /// The load per replica the autoscalers aim at, as a fraction of capacity
    /// (`--target-utilization`): the HPA target and KEDA's `targetValue` are
    /// `capacity_per_replica × target_utilization`.
    pub target_utilization: f64,
    /// The autoscaler's period (HPA default 15 s).
    pub sync_s: f64,
    /// Scale-down stabilization window: the highest recommendation of this long is used
    /// (HPA default 300 s).
    pub stabilization_s: f64,
    /// No scaling while the metric is within this fraction of the target (HPA default 0.1).
    pub tolerance: f64,
    /// A metric read at `t` describes the load at `t − metric_lag_s` (`--metric-lag`,
    /// default 30 s: one sample window).
    pub metric_lag_s: f64,
    /// `ymera run` (`--partitions`): the load is a Kafka input; what the ready replicas
    /// cannot take waits as consumer lag. Both policies are capped at the partition count;
    /// the forecast policy is `ymera run`'s ScaledObject: the backlog folded into the value
    /// (worked off within `lead`), counts that divide the partitions, and HPA behaviour
    /// that jumps straight to them (a Pods policy of the partition count).
    pub partitions: Option<u32>,
}

impl ScalingConfig {
    /// The given capacity and startup with every other setting at its default: lead 10 min,
    /// 1..100 replicas, target utilization 1.0, and the HPA defaults.
    pub fn new(capacity_per_replica: f64, startup_s: f64) -> Self {
        ScalingConfig {
            capacity_per_replica,
            startup_s,
            lead_s: 600.0,
            min_replicas: 1,
            max_replicas: 100,
            target_utilization: 1.0,
            sync_s: 15.0,
            stabilization_s: 300.0,
            tolerance: 0.1,
            metric_lag_s: 30.0,
            partitions: None,
        }
    }

    /// Every problem at once, each naming its flag (or field, for those without one).
    pub fn validate(&self) -> Result<(), ModelError> {
        let mut problems = Vec::new();
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if !positive(self.capacity_per_replica) {
            problems.push(format!(
                "--capacity-per-replica must be a positive number, got {}",
                self.capacity_per_replica
            ));
        }
        for (flag, v) in [
            ("--startup", self.startup_s),
            ("--lead", self.lead_s),
            ("--metric-lag", self.metric_lag_s),
            ("stabilization_s", self.stabilization_s),
            ("tolerance", self.tolerance),
        ] {
            if !non_negative(v) {
                problems.push(format!("{flag} must not be negative, got {v}"));
            }
        }
        if self.partitions == Some(0) {
            problems.push("--partitions must be at least 1, got 0".to_string());
        }
        if self.min_replicas < 1 {
            problems.push("--min-replicas must be at least 1, got 0".to_string());
        }
        if self.min_replicas > self.max_replicas {
            problems.push(format!(
                "--min-replicas ({}) must not exceed --max-replicas ({})",
                self.min_replicas, self.max_replicas
            ));
        }
        if !positive(self.target_utilization) {
            problems.push(format!(
                "--target-utilization must be a positive number, got {}",
                self.target_utilization
            ));
        }
        if !positive(self.sync_s) {
            problems.push(format!(
                "sync_s must be a positive number, got {}",
                self.sync_s
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ModelError::Input(problems.join("; ")))
        }
    }

    /// The per-replica load the autoscalers aim at.
    fn target(&self) -> f64 {
        self.capacity_per_replica * self.target_utilization
    }

    /// The most replicas: `max_replicas`, and never more than partitions.
    fn ceiling(&self) -> u32 {
        self.partitions
            .map_or(self.max_replicas, |n| self.max_replicas.min(n))
            .max(self.min_replicas.min(self.max_replicas))
    }
}

/// How one policy did over the whole series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    /// `reactive` or `forecast`.
    pub policy: String,
    /// Minutes during which the load exceeded ready capacity.
    pub breach_minutes: f64,
    /// The integral of all replicas that exist, ready or starting.
    pub replica_hours: f64,
    /// Most replicas at once (ready or starting).
    pub peak_replicas: u32,
    /// Syncs that added replicas.
    pub scale_ups: u32,
    /// Syncs that removed replicas.
    pub scale_downs: u32,
    /// With `partitions`: the most records waiting at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backlog: Option<f64>,
    /// With `partitions`: minutes during which records waited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_minutes: Option<f64>,
    /// With `partitions`: minutes at a replica count that does not divide them (some
    /// replicas own more partitions than others).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uneven_minutes: Option<f64>,
}

/// Kubernetes' HPA on the observed per-replica load (a Pods metric, `AverageValue`
/// target `capacity × target_utilization`).
pub fn simulate_reactive(load: &Regular, cfg: &ScalingConfig) -> Result<PolicyReport, ModelError> {
    let curve = Curve::new(load)?;
    cfg.validate()?;
    let (lag, target, tol) = (cfg.metric_lag_s, cfg.target(), cfg.tolerance);
    let run = simulate(&curve, cfg, "reactive", |t, fleet, _| {
        pods_metric_replicas(
            curve.at(t - lag),
            target,
            fleet.ready,
            fleet.starting(),
            tol,
        )
    });
    Ok(run.report)
}

/// Our policy through KEDA: the HPA machinery on an External `AverageValue` metric whose
/// value is `max(forecast, current)`, the forecast being the highest of the forecaster's
/// points over `[t, t + lead]`. `f` is called once per series step (see [`LoadForecaster`]).
pub fn simulate_forecast(
    load: &Regular,
    cfg: &ScalingConfig,
    f: &mut dyn LoadForecaster,
) -> Result<PolicyReport, ModelError> {
    let curve = Curve::new(load)?;
    cfg.validate()?;
    let run = simulate_forecast_run(&curve, load, cfg, f);
    Ok(run.report)
}

fn simulate_forecast_run(
    curve: &Curve<'_>,
    load: &Regular,
    cfg: &ScalingConfig,
    f: &mut dyn LoadForecaster,
) -> Run {
    let (lag, lead, target, tol) = (cfg.metric_lag_s, cfg.lead_s, cfg.target(), cfg.tolerance);
    let step = curve.step;
    let n = curve.values.len();
    // Enough points to cover t + lead until the next call, one step and a sync later.
    let horizon = ((lag + cfg.sync_s + lead) / step).ceil() as usize + 1;
    let mut seen = 0usize;
    // knots[0] is the last observed point (index seen − 1), then the forecast.
    let mut knots: Vec<f64> = Vec::new();
    simulate(curve, cfg, "forecast", |t, fleet, backlog| {
        // points observed by now: i·step + lag ≤ t (the first one is known from the start)
        let observed = (((t - lag) / step).floor() + 1.0).clamp(1.0, n as f64) as usize;
        if observed != seen {
            seen = observed;
            let history = &curve.values[..seen];
            knots.clear();
            knots.push(history[seen - 1]);
            knots.extend(
                f.forecast(load.start, load.step, history, horizon)
                    .into_iter()
                    .take_while(|v| v.is_finite()),
            );
        }
        let origin = (seen - 1) as f64 * step;
        let forecast = max_over(&knots, origin, step, t, t + lead);
        let value = forecast.max(curve.at(t - lag));
        match cfg.partitions {
            None => external_average_value_replicas(value, target, fleet.total(), tol),
            Some(n) => {
                // the endpoint: backlog worked off within the lead, rounded up to a count
                // that divides the partitions; it answers that count × target, so the
                // HPA's ceil(value / target) lands on it
                let folded = value + backlog / lead.max(60.0);
                let wanted = ceil_count(folded / target).clamp(cfg.min_replicas, cfg.ceiling());
                let even = even_count(wanted, n);
                external_average_value_replicas(even as f64 * target, target, fleet.total(), tol)
            }
        }
    })
}

/// The smallest count at or above `wanted` that divides `partitions` (at most
/// `partitions`): every replica then owns as many partitions as every other.
pub fn even_count(wanted: u32, partitions: u32) -> u32 {
    let n = partitions.max(1);
    (wanted.clamp(1, n)..=n)
        .find(|d| n.is_multiple_of(*d))
        .unwrap_or(n)
}

/// `ceil` for replica counts, forgiving float noise just above an integer.
fn ceil_count(x: f64) -> u32 {
    if x.is_nan() || x <= 0.0 {
        0
    } else {
        (x - 1e-9).ceil().min(u32::MAX as f64) as u32
    }
}

/// The HPA's `calcPlainMetricReplicas`: the ready replicas report `load / ready` each,
/// starting ones report nothing (missing pods).
fn pods_metric_replicas(load: f64, target: f64, ready: u32, starting: u32, tol: f64) -> u32 {
    let current = ready + starting;
    if ready == 0 {
        // "did not receive metrics for any ready pods": the HPA does not scale
        return current;
    }
    let ratio = load / (target * ready as f64);
    if starting == 0 {
        if (1.0 - ratio).abs() <= tol {
            return current;
        }
        return ceil_count(load / target); // = ceil(ratio × ready)
    }
    // missing pods count as at target on a scale-down, as 0 on a scale-up
    let total = if ratio < 1.0 {
        load / target + starting as f64
    } else {
        load / target
    };
    let new_ratio = total / current as f64;
    if (1.0 - new_ratio).abs() <= tol
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return current;
    }
    ceil_count(total) // = ceil(new_ratio × current)
}

/// The HPA's `GetExternalPerPodMetricReplicas` for an `AverageValue` target.
fn external_average_value_replicas(value: f64, target: f64, current: u32, tol: f64) -> u32 {
    let ratio = value / (target * current.max(1) as f64);
    if (1.0 - ratio).abs() > tol {
        ceil_count(value / target)
    } else {
        current
    }
}

/// The highest value over `[a, b]` of the piecewise-linear curve through `knots`
/// (`knots[j]` at `origin + j·step`, the last one held after its time).
fn max_over(knots: &[f64], origin: f64, step: f64, a: f64, b: f64) -> f64 {
    let at = |x: f64| -> f64 {
        let pos = ((x - origin) / step).max(0.0);
        let i = pos.floor() as usize;
        if i + 1 >= knots.len() {
            return knots[knots.len() - 1];
        }
        let frac = pos - i as f64;
        knots[i] + (knots[i + 1] - knots[i]) * frac
    };
    let mut best = at(a).max(at(b));
    for (j, &v) in knots.iter().enumerate() {
        let x = origin + j as f64 * step;
        if x > a && x < b {
            best = best.max(v);
        }
    }
    best
}

/// The load as a function of time: seconds from the first point, linear between points.
struct Curve<'a> {
    values: &'a [f64],
    step: f64,
}

impl<'a> Curve<'a> {
    fn new(load: &'a Regular) -> Result<Self, ModelError> {
        if load.values.len() < 2 || load.step <= 0 {
            return Err(ModelError::Data(format!(
                "the load series has {} point(s) on a {} s grid; the simulation needs at least 2",
                load.values.len(),
                load.step
            )));
        }
        if let Some(i) = load.values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::Data(format!(
                "load[{i}] is {}: values must be finite",
                load.values[i]
            )));
        }
        Ok(Curve {
            values: &load.values,
            step: load.step as f64,
        })
    }

    fn end(&self) -> f64 {
        (self.values.len() - 1) as f64 * self.step
    }

    fn at(&self, t: f64) -> f64 {
        let pos = (t.clamp(0.0, self.end())) / self.step;
        let i = (pos.floor() as usize).min(self.values.len() - 2);
        let frac = pos - i as f64;
        self.values[i] + (self.values[i + 1] - self.values[i]) * frac
    }

    /// Seconds of `[a, b]` during which the load exceeds `cap`.
    fn time_above(&self, a: f64, b: f64, cap: f64) -> f64 {
        let mut total = 0.0;
        let mut s = a;
        while s < b {
            // the next series point after s bounds a linear piece
            let next_knot = ((s / self.step).floor() + 1.0) * self.step;
            let e = next_knot.min(b);
            if e <= s {
                break; // float noise at a knot
            }
            let (ls, le) = (self.at(s), self.at(e));
            total += if ls > cap && le > cap {
                e - s
            } else if ls <= cap && le <= cap {
                0.0
            } else {
                let cross = s + (cap - ls) / (le - ls) * (e - s);
                if ls > cap { cross - s } else { e - cross }
            };
            s = e;
        }
        total
    }
}

/// The replicas: how many serve, and when each starting one will.
#[derive(Debug, Default)]
struct Fleet {
    ready: u32,
    /// Ready-at times, ascending (requests only move forward in time).
    starting: VecDeque<f64>,
}

impl Fleet {
    fn starting(&self) -> u32 {
        self.starting.len() as u32
    }

    fn total(&self) -> u32 {
        self.ready + self.starting()
    }

    fn promote(&mut self, t: f64) {
        while self.starting.front().is_some_and(|&r| r <= t) {
            self.starting.pop_front();
            self.ready += 1;
        }
    }

    fn scale_to(&mut self, n: u32, t: f64, startup: f64) {
        let total = self.total();
        if n > total {
            self.starting.extend((total..n).map(|_| t + startup));
            self.promote(t);
        } else {
            for _ in n..total {
                if self.starting.pop_back().is_none() {
                    self.ready -= 1;
                }
            }
        }
    }
}

/// The HPA's memory: recommendations for stabilization, scale events for rate limits.
struct Hpa<'a> {
    cfg: &'a ScalingConfig,
    /// Pods a scale-up may add per period (the default policy's 4; `ymera run`'s
    /// ScaledObject: the partition count, so it jumps straight to an even count).
    up_pods: u32,
    recommendations: VecDeque<(f64, u32)>,
    /// (time, replicas added or removed) within the last scale-up period.
    events: VecDeque<(f64, i64)>,
}

impl Hpa<'_> {
    /// `normalizeDesiredReplicasWithBehaviors`: stabilize, then rate-limit and clamp.
    fn normalize(&mut self, t: f64, current: u32, desired: u32) -> u32 {
        let cutoff = t - self.cfg.stabilization_s;
        while self
            .recommendations
            .front()
            .is_some_and(|&(ts, _)| ts <= cutoff)
        {
            self.recommendations.pop_front();
        }
        // scale-up window 0: only the current recommendation; scale-down: the highest
        let down = self
            .recommendations
            .iter()
            .map(|&(_, r)| r)
            .fold(desired, u32::max);
        let stabilized = current.max(desired).min(down);
        self.recommendations.push_back((t, desired));

        while self
            .events
            .front()
            .is_some_and(|&(ts, _)| ts <= t - SCALE_UP_PERIOD_S)
        {
            self.events.pop_front();
        }
        let (min, max) = (
            self.cfg.min_replicas.min(self.cfg.ceiling()),
            self.cfg.ceiling(),
        );
        let next = if stabilized > current {
            let changed: i64 = self.events.iter().map(|&(_, d)| d).sum();
            let period_start = (current as i64 - changed).max(0) as f64;
            let by_pods = period_start + self.up_pods as f64;
            let by_percent = (period_start * (1.0 + SCALE_UP_PERCENT / 100.0)).ceil();
            let limit = (by_pods.max(by_percent) as u32).max(current);
            stabilized.min(limit).min(max)
        } else {
            // the default scale-down policy allows removing every pod in one period
            stabilized.max(min)
        };
        let next = next.clamp(min, max);
        if next != current {
            self.events.push_back((t, next as i64 - current as i64));
        }
        next
    }
}

/// What a run produced; the per-sync trace is for tests.
struct Run {
    report: PolicyReport,
    /// Replicas (ready or starting) after each sync's decision (read by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    replicas: Vec<u32>,
}

/// Whether a policy is `ymera run`'s ScaledObject on `partitions`: it starts at an even
/// count and may jump straight to any count (a Pods policy of the partition count).
fn even_partitions(cfg: &ScalingConfig, policy: &str) -> Option<u32> {
    cfg.partitions.filter(|_| policy == "forecast")
}

/// Runs one policy: `desired(t, fleet, backlog)` is the metric-derived recommendation at a
/// sync.
fn simulate(
    curve: &Curve<'_>,
    cfg: &ScalingConfig,
    policy: &str,
    mut desired: impl FnMut(f64, &Fleet, f64) -> u32,
) -> Run {
    let end = curve.end();
    let even = even_partitions(cfg, policy);
    let initial = ceil_count(curve.at(0.0) / cfg.target())
        .clamp(cfg.min_replicas.min(cfg.ceiling()), cfg.ceiling());
    let initial = even.map_or(initial, |n| even_count(initial, n));
    let mut fleet = Fleet {
        ready: initial,
        starting: VecDeque::new(),
    };
    let mut hpa = Hpa {
        cfg,
        up_pods: even.unwrap_or(SCALE_UP_PODS),
        recommendations: VecDeque::new(),
        events: VecDeque::new(),
    };
    let mut report = PolicyReport {
        policy: policy.to_string(),
        breach_minutes: 0.0,
        replica_hours: 0.0,
        peak_replicas: initial,
        scale_ups: 0,
        scale_downs: 0,
        max_backlog: None,
        backlog_minutes: None,
        uneven_minutes: None,
    };
    let (mut breach_s, mut replica_s) = (0.0, 0.0);
    // ymera run: records waiting, integrated in 1 s steps
    let (mut backlog, mut max_backlog, mut backlog_s, mut uneven_s) = (0.0f64, 0.0f64, 0.0, 0.0);
    let mut replicas = Vec::new();
    let mut sync = 0u64;
    loop {
        let t = sync as f64 * cfg.sync_s;
        if t >= end {
            break;
        }
        fleet.promote(t);
        let current = fleet.total();
        let next = hpa.normalize(t, current, desired(t, &fleet, backlog));
        if next > current {
            report.scale_ups += 1;
        } else if next < current {
            report.scale_downs += 1;
        }
        fleet.scale_to(next, t, cfg.startup_s);
        report.peak_replicas = report.peak_replicas.max(next);
        replicas.push(next);

        let t2 = (t + cfg.sync_s).min(end);
        replica_s += next as f64 * (t2 - t);
        if let Some(n) = cfg.partitions {
            if next == 0 || n % next != 0 {
                uneven_s += t2 - t;
            }
            let mut s = t;
            while s < t2 {
                let dt = (t2 - s).min(1.0);
                let ready =
                    fleet.ready as f64 + fleet.starting.iter().filter(|&&r| r <= s).count() as f64;
                backlog =
                    (backlog + (curve.at(s) - ready * cfg.capacity_per_replica) * dt).max(0.0);
                if backlog > 0.0 {
                    backlog_s += dt;
                }
                max_backlog = max_backlog.max(backlog);
                s += dt;
            }
        }
        let mut s = t;
        while let Some(&r) = fleet.starting.front().filter(|&&r| r < t2) {
            breach_s += curve.time_above(s, r, fleet.ready as f64 * cfg.capacity_per_replica);
            fleet.promote(r);
            s = r;
        }
        breach_s += curve.time_above(s, t2, fleet.ready as f64 * cfg.capacity_per_replica);
        sync += 1;
    }
    report.breach_minutes = breach_s / 60.0;
    report.replica_hours = replica_s / 3600.0;
    if cfg.partitions.is_some() {
        report.max_backlog = Some(max_backlog);
        report.backlog_minutes = Some(backlog_s / 60.0);
        report.uneven_minutes = Some(uneven_s / 60.0);
    }
    Run { report, replicas }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ymera_common::series::{RepairReport, read_csv, regularize};

    fn series(step: i64, values: Vec<f64>) -> Regular {
        Regular {
            start: 1_700_000_000 - 1_700_000_000 % step,
            step,
            values,
            report: RepairReport::default(),
        }
    }

    fn fixture() -> Regular {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/series/diurnal_load.csv");
        let s = read_csv(&path).unwrap();
        regularize(&s, None).unwrap()
    }

    fn reactive_run(load: &Regular, cfg: &ScalingConfig) -> Run {
        let curve = Curve::new(load).unwrap();
        let (lag, target, tol) = (cfg.metric_lag_s, cfg.target(), cfg.tolerance);
        simulate(&curve, cfg, "reactive", |t, fleet, _| {
            pods_metric_replicas(
                curve.at(t - lag),
                target,
                fleet.ready,
                fleet.starting(),
                tol,
            )
        })
    }

    fn forecast_run(load: &Regular, cfg: &ScalingConfig, f: &mut dyn LoadForecaster) -> Run {
        let curve = Curve::new(load).unwrap();
        simulate_forecast_run(&curve, load, cfg, f)
    }

    /// Replicas after the decision of the sync at `t` seconds.
    fn at(run: &Run, cfg: &ScalingConfig, t: f64) -> u32 {
        run.replicas[(t / cfg.sync_s) as usize]
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn fixture_figures_are_deterministic() {
        let load = fixture();
        assert_eq!((load.values.len(), load.step), (864, 300));
        assert!(load.report.is_clean());
        // 100 per replica, startup 5 min, lead 10 min, target utilization 1.0, HPA defaults
        let cfg = ScalingConfig::new(100.0, 300.0);
        let check = |r: &PolicyReport, breach: f64, hours: f64, counts: (u32, u32, u32)| {
            assert!(close(r.breach_minutes, breach), "{r:?}");
            assert!(close(r.replica_hours, hours), "{r:?}");
            assert_eq!(
                (r.peak_replicas, r.scale_ups, r.scale_downs),
                counts,
                "{r:?}"
            );
        };

        let reactive = simulate_reactive(&load, &cfg).unwrap();
        check(&reactive, 1_124.200_601_739, 388.8125, (12, 31, 33));
        assert_eq!(simulate_reactive(&load, &cfg).unwrap(), reactive);

        let naive = simulate_forecast(&load, &cfg, &mut SeasonalNaive::default()).unwrap();
        check(&naive, 82.923_333_541, 436.3625, (12, 27, 26));
        assert_eq!(
            simulate_forecast(&load, &cfg, &mut SeasonalNaive::default()).unwrap(),
            naive
        );
        assert_eq!(
            (reactive.policy.as_str(), naive.policy.as_str()),
            ("reactive", "forecast")
        );

        // Even a perfect forecast breaches at target 1.0: inside the 10 % tolerance band
        // (load up to 110 % of capacity) the HPA does not scale. Seasonal naive's × 1.1
        // headroom happens to cancel the band.
        let oracle = simulate_forecast(&load, &cfg, &mut Oracle::new(&load)).unwrap();
        check(&oracle, 727.390_618_360, 399.1875, (12, 23, 25));
        // With room for the band (0.8 < 1 / 1.1) the oracle never breaches.
        let roomy = ScalingConfig {
            target_utilization: 0.8,
            ..cfg.clone()
        };
        let oracle = simulate_forecast(&load, &roomy, &mut Oracle::new(&load)).unwrap();
        check(&oracle, 0.0, 486.204_166_667, (14, 24, 27));
        let reactive = simulate_reactive(&load, &roomy).unwrap();
        check(&reactive, 8.160_340_383, 476.508_333_333, (14, 27, 30));
    }

    #[test]
    fn even_counts_divide_the_partitions() {
        assert_eq!(even_count(5, 12), 6);
        assert_eq!(even_count(7, 12), 12);
        assert_eq!(even_count(13, 12), 12);
        assert_eq!(even_count(0, 12), 1);
        assert_eq!(even_count(3, 7), 7);
        assert_eq!(even_count(4, 4), 4);
    }

    #[test]
    fn ymera_run_scales_to_counts_that_split_the_partitions_and_drains_its_backlog() {
        // an input of 1 replica's worth, then 7 for two hours, then 1 again, on 12
        // partitions: the forecast policy jumps to 12 (the first even count ≥ 7) before
        // the rise; the reactive HPA climbs 1 → 5 → 7 behind it, uneven on the way
        let mut values = vec![100.0; 24];
        values.extend(vec![700.0; 24]);
        values.extend(vec![100.0; 24]);
        let load = series(300, values);
        let cfg = ScalingConfig {
            partitions: Some(12),
            ..ScalingConfig::new(100.0, 120.0)
        };
        let reactive = reactive_run(&load, &cfg);
        let forecast = forecast_run(&load, &cfg, &mut Oracle::new(&load));
        assert!(
            forecast.replicas.iter().all(|r| 12 % r == 0),
            "{:?}",
            forecast.replicas
        );
        assert_eq!(forecast.report.uneven_minutes, Some(0.0));
        assert_eq!(forecast.report.peak_replicas, 12);
        assert!(reactive.replicas.contains(&5) && reactive.replicas.contains(&7));
        assert!(reactive.report.uneven_minutes.unwrap() > 0.0);
        assert!(reactive.report.peak_replicas <= 12);
        let (fb, rb) = (
            forecast.report.max_backlog.unwrap(),
            reactive.report.max_backlog.unwrap(),
        );
        assert!(fb < rb, "forecast backlog {fb} vs reactive {rb}");
        assert!(
            forecast.report.backlog_minutes.unwrap() < reactive.report.backlog_minutes.unwrap()
        );
    }

    #[test]
    fn constant_load_costs_replicas_times_hours_and_never_breaches() {
        // 250 for 2 hours on 100 per replica: 3 replicas, 6 replica-hours
        let load = series(300, vec![250.0; 25]);
        let cfg = ScalingConfig::new(100.0, 300.0);
        let expected = |policy: &str| PolicyReport {
            policy: policy.into(),
            breach_minutes: 0.0,
            replica_hours: 6.0,
            peak_replicas: 3,
            scale_ups: 0,
            scale_downs: 0,
            max_backlog: None,
            backlog_minutes: None,
            uneven_minutes: None,
        };
        assert_eq!(
            simulate_reactive(&load, &cfg).unwrap(),
            expected("reactive")
        );
        assert_eq!(
            simulate_forecast(&load, &cfg, &mut SeasonalNaive::default()).unwrap(),
            expected("forecast")
        );
        assert_eq!(
            simulate_forecast(&load, &cfg, &mut Oracle::new(&load)).unwrap(),
            expected("forecast")
        );
    }

    #[test]
    fn a_step_up_breaches_reactive_for_about_startup_plus_lag_plus_sync() {
        // 80 until 540 s, 300 from 600 s (linear in between), 100 per replica.
        let mut values = vec![80.0; 10];
        values.extend([300.0; 30]);
        let load = series(60, values);
        let cfg = ScalingConfig::new(100.0, 300.0);
        let r = reactive_run(&load, &cfg);
        // The load passes 100 at 540 + 60·20/220 s. With a 30 s lag the HPA first sees
        // more than 110 % (tolerance) at the 585 s sync: load(555) = 135 → 2 replicas.
        // At 600 s the starting pod counts as 0: 190 / 2 = 95 % is within tolerance; at 615 s
        // 245 → 3 replicas, ready at 915 s, when capacity 300 first covers the load.
        assert_eq!(at(&r, &cfg, 570.0), 1);
        assert_eq!(at(&r, &cfg, 585.0), 2);
        assert_eq!(at(&r, &cfg, 600.0), 2);
        assert_eq!(at(&r, &cfg, 615.0), 3);
        let breach_s = 915.0 - (540.0 + 60.0 * 20.0 / 220.0);
        assert!(
            close(r.report.breach_minutes, breach_s / 60.0),
            "{:?}",
            r.report
        );
        let (startup, lag, sync) = (cfg.startup_s, cfg.metric_lag_s, cfg.sync_s);
        assert!(breach_s > startup + lag && breach_s < startup + lag + sync + 60.0);

        // The oracle with lead ≥ startup + the time the 10 % tolerance band and the 15 s
        // sync cost provisions in time. (With lead = startup exactly it is ~10 s late: a
        // scale-up starts only once the forecast passes 110 % of current capacity.)
        let cfg = ScalingConfig {
            lead_s: cfg.startup_s + 60.0,
            ..cfg
        };
        let o = forecast_run(&load, &cfg, &mut Oracle::new(&load));
        assert_eq!(o.report.breach_minutes, 0.0, "{:?}", o.report);
        assert_eq!(o.report.peak_replicas, 3);
        // without the peek, seasonal naive (< 1 day of history: last value × 1.1) is reactive
        let s = forecast_run(&load, &cfg, &mut SeasonalNaive::default());
        assert!(s.report.breach_minutes > 5.0, "{:?}", s.report);
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        // 500 until 540 s, 100 from 600 s: 5 replicas, then 1.
        let mut values = vec![500.0; 10];
        values.extend([100.0; 30]);
        let load = series(60, values);
        let cfg = ScalingConfig::new(100.0, 300.0);
        // The lagged load stays ≥ 450 (within tolerance of 5 replicas) through the 570 s
        // sync; later syncs recommend 4 (585 s), 3, 2, then 1 (630 s on). Each takes effect
        // 300 s after the last higher recommendation.
        let lead0 = ScalingConfig {
            lead_s: 0.0,
            ..cfg.clone()
        };
        for run in [
            reactive_run(&load, &cfg),
            // lead 0: the oracle's forecast is the current load, the lagged one is higher
            forecast_run(&load, &lead0, &mut Oracle::new(&load)),
        ] {
            assert_eq!(at(&run, &cfg, 855.0), 5, "{:?}", run.replicas);
            assert_eq!(at(&run, &cfg, 870.0), 4);
            assert_eq!(at(&run, &cfg, 885.0), 3);
            assert_eq!(at(&run, &cfg, 900.0), 2);
            assert_eq!(at(&run, &cfg, 915.0), 1);
            assert_eq!(*run.replicas.last().unwrap(), 1);
            assert_eq!(run.report.breach_minutes, 0.0);
            assert_eq!(run.report.scale_downs, 4);
        }
    }

    #[test]
    fn scale_up_is_limited_to_double_or_four_more_per_15_s() {
        // 50 until 135 s, 2000 from 150 s on a 15 s grid: 1 → 5 → 10 → 20 replicas.
        let mut values = vec![50.0; 10];
        values.extend([2000.0; 30]);
        let load = series(15, values);
        let cfg = ScalingConfig::new(100.0, 60.0);
        let r = reactive_run(&load, &cfg);
        assert_eq!(at(&r, &cfg, 165.0), 1); // sees load(135) = 50
        assert_eq!(at(&r, &cfg, 180.0), 5); // wants 20: max(2·1, 1 + 4)
        assert_eq!(at(&r, &cfg, 195.0), 10);
        assert_eq!(at(&r, &cfg, 210.0), 20);
        assert_eq!(r.report.scale_ups, 3);
        // the 20th replica is ready at 270 s: breach from the load passing 100 (135.4 s)
        let breach_s = 270.0 - (135.0 + 15.0 * 50.0 / 1950.0);
        assert!(
            close(r.report.breach_minutes, breach_s / 60.0),
            "{:?}",
            r.report
        );
    }

    #[test]
    fn replicas_are_clamped_to_min_and_max() {
        let hour = series(300, vec![1000.0; 13]);
        let cfg = ScalingConfig {
            max_replicas: 4,
            ..ScalingConfig::new(100.0, 300.0)
        };
        let r = simulate_reactive(&hour, &cfg).unwrap();
        assert_eq!((r.peak_replicas, r.replica_hours), (4, 4.0));
        assert!(close(r.breach_minutes, 60.0));
        let f = simulate_forecast(&hour, &cfg, &mut SeasonalNaive::default()).unwrap();
        assert_eq!((f.peak_replicas, f.replica_hours), (4, 4.0));

        let quiet = series(300, vec![50.0; 13]);
        let cfg = ScalingConfig {
            min_replicas: 3,
            ..ScalingConfig::new(100.0, 300.0)
        };
        let r = simulate_reactive(&quiet, &cfg).unwrap();
        assert_eq!(
            (r.peak_replicas, r.replica_hours, r.scale_downs),
            (3, 3.0, 0)
        );
        let f = simulate_forecast(&quiet, &cfg, &mut SeasonalNaive::default()).unwrap();
        assert_eq!(
            (f.peak_replicas, f.replica_hours, f.scale_downs),
            (3, 3.0, 0)
        );
    }

    #[test]
    fn the_forecaster_is_called_once_per_step_with_the_past_only() {
        struct Recorder(Vec<usize>);
        impl LoadForecaster for Recorder {
            fn forecast(&mut self, _: i64, _: i64, history: &[f64], horizon: usize) -> Vec<f64> {
                self.0.push(history.len());
                vec![f64::NAN; horizon] // unusable: the policy falls back to the observed load
            }
        }
        let load = series(300, (0..25).map(|i| 100.0 + 10.0 * i as f64).collect());
        let cfg = ScalingConfig::new(100.0, 300.0);
        let mut rec = Recorder(Vec::new());
        let r = simulate_forecast(&load, &cfg, &mut rec).unwrap();
        // point i is observed at i·300 + 30 s; the run ends at the last point (7200 s)
        assert_eq!(rec.0, (1..=24).collect::<Vec<_>>());
        assert!(r.peak_replicas >= 3);
    }

    #[test]
    fn seasonal_naive_looks_one_day_back() {
        let mut f = SeasonalNaive::default();
        // 12 h steps: a day is 2 points; with 1 point, the last value × 1.1
        assert_eq!(f.forecast(0, 43_200, &[2.0], 2), vec![2.0 * 1.1, 2.0 * 1.1]);
        // history [1, 2, 3] → next are 2, 3, 2 (× 1.1)
        let got = f.forecast(0, 43_200, &[1.0, 2.0, 3.0], 3);
        assert_eq!(got, vec![2.0 * 1.1, 3.0 * 1.1, 2.0 * 1.1]);
    }

    #[test]
    fn config_errors_name_every_flag_at_fault() {
        let cfg = ScalingConfig {
            min_replicas: 5,
            max_replicas: 3,
            ..ScalingConfig::new(0.0, -1.0)
        };
        let e = cfg.validate().unwrap_err().to_string();
        for flag in [
            "--capacity-per-replica",
            "--startup",
            "--min-replicas (5)",
            "--max-replicas (3)",
        ] {
            assert!(e.contains(flag), "{e}");
        }
        let load = series(300, vec![1.0; 3]);
        assert!(simulate_reactive(&load, &cfg).is_err());
        let e = simulate_reactive(&series(300, vec![1.0]), &ScalingConfig::new(1.0, 0.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 2"), "{e}");
        assert!(ScalingConfig::new(1.0, 0.0).validate().is_ok());
    }
}

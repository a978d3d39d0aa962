//! `GET /v1/autoscale/{service}/forecast` (interfaces.md, "Forecasts for the autoscaler"):
//! forecast points, `keda.value`, `recommended_replicas`, `quality` and `fallback`.
//!
//! Refit schedule: a series' forecaster is refitted on the newest `window` of metric
//! events when a request finds its fit older than `refit_interval` (default 5m = one
//! grid step: each refit sees exactly one new aggregated point, and an MSTL + AutoETS fit
//! of two weeks of 5-minute points takes milliseconds). The rolling-origin backtest that
//! gives `quality` (24 one-hour origins over the last day) is heavier and moves slowly: it
//! is recomputed every `backtest_interval` (default 1h), and each run registers a version
//! (`load-<service>-<metric>`: the refit recipe, the data window's hash and the backtest)
//! in the model registry. After a restart the newest version's recipe and quality are
//! read back, and the forecaster is refitted from it on the current data.
//!
//! The endpoint never fails because of the data: when the forecast is stale (the newest
//! metric sample is older than `stale_after`), its recent MASE is ≥ `max_mase`, or no
//! forecast can be made, `keda.value` is the observed load and `fallback.active` is true
//! with the reason (KEDA's own fallback is fragile, KEDA #8058). Only bad parameters are
//! 400s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};
use ymera_common::series::{Regular, Series, regularize};
use ymera_models::forecast::{self, Backtest, Forecast, Recipe};
use ymera_models::scaling::even_count;
use ymera_models::{ModelError, Registry};

use crate::AppState;
use crate::models::error_response;
use crate::sql::SqlService;

/// `autoscale.*` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleConfig {
    /// Per service: capacity and replica bounds.
    pub services: BTreeMap<String, ServiceScaling>,
    /// The lake table of metric events (default `metric_events`).
    pub table: String,
    /// The forecaster's grid: metric events are averaged into steps of this length
    /// (default 5m).
    #[serde(with = "ymera_common::units::duration")]
    pub step: Duration,
    /// History per fit (default 15d: weekly seasonality needs two weeks).
    #[serde(with = "ymera_common::units::duration")]
    pub window: Duration,
    /// Refit when the fit is older than this (default 5m).
    #[serde(with = "ymera_common::units::duration")]
    pub refit_interval: Duration,
    /// Re-run the backtest and register a version this often (default 1h).
    #[serde(with = "ymera_common::units::duration")]
    pub backtest_interval: Duration,
    /// The forecast is stale when the newest metric sample is older than this (default 15m).
    #[serde(with = "ymera_common::units::duration")]
    pub stale_after: Duration,
    /// Fall back to the observed load when the recent MASE is at least this (default 1).
    pub max_mase: f64,
    /// The lake table `ymera run` records its input rate in (default `ymera_run_input`):
    /// the series of the service `ymera-run`.
    pub run_table: String,
}

impl AutoscaleConfig {
    /// Every inconsistent setting, named (`autoscale.services.api.min_replicas`).
    pub fn validate(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        for (svc, s) in &self.services {
            if forecast::check_service(svc).is_err() {
                bad.push(format!(
                    "autoscale.services.{svc}: service names are letters, digits, `_`, `-`, `.`"
                ));
            }
            if s.min_replicas > s.max_replicas {
                bad.push(format!(
                    "autoscale.services.{svc}: min_replicas {} is above max_replicas {}",
                    s.min_replicas, s.max_replicas
                ));
            }
            if let Some(c) = s
                .capacity_per_replica
                .filter(|c| !(c.is_finite() && *c > 0.0))
            {
                bad.push(format!(
                    "autoscale.services.{svc}.capacity_per_replica {c}: must be above 0"
                ));
            }
        }
        if self.step.as_secs() < 1 {
            bad.push("autoscale.step: at least 1s".into());
        }
        if !(self.max_mase.is_finite() && self.max_mase > 0.0) {
            bad.push(format!(
                "autoscale.max_mase {}: must be above 0",
                self.max_mase
            ));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            services: BTreeMap::new(),
            table: "metric_events".into(),
            step: Duration::from_secs(300),
            window: Duration::from_secs(15 * 86_400),
            refit_interval: Duration::from_secs(300),
            backtest_interval: Duration::from_secs(3600),
            stale_after: Duration::from_secs(900),
            max_mase: 1.0,
            run_table: "ymera_run_input".into(),
        }
    }
}

/// `autoscale.services.<service>.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceScaling {
    /// Load one replica carries, in the metric's unit (e.g. requests/s).
    pub capacity_per_replica: Option<f64>,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Default `lead`: how far ahead the replicas must be ready (default 5m).
    #[serde(with = "ymera_common::units::duration")]
    pub lead: Duration,
}

impl Default for ServiceScaling {
    fn default() -> Self {
        ServiceScaling {
            capacity_per_replica: None,
            min_replicas: 1,
            max_replicas: 100,
            lead: Duration::from_secs(300),
        }
    }
}

/// The service whose load is `ymera run`'s own input (records/s), from `run_table`.
pub const RUN_SERVICE: &str = "ymera-run";
/// Its one metric.
pub const RUN_METRIC: &str = "records_per_s";
/// How far back the newest minute of `ymera run`'s lag may be to be folded in.
const BACKLOG_WINDOW_SECS: i64 = 600;

/// `ymera run`'s consumer lag, as [`Autoscaler::run_backlog`] estimates it.
#[derive(Debug, Clone, PartialEq)]
struct Backlog {
    records: f64,
    /// The oldest of the pipelines' newest minutes (epoch seconds).
    at: i64,
    /// The most partitions of any pipeline counted.
    partitions: u32,
    pipelines: Vec<String>,
}

/// The pipeline an entry of `ymera-run` is about (`records_per_s-<pipeline>`), None for all.
fn run_pipeline(metric_key: &str) -> Option<&str> {
    metric_key
        .strip_prefix(RUN_METRIC)
        .and_then(|rest| rest.strip_prefix('-'))
}

/// The analyst-SQL query of `ymera run`'s input rate in `step_seconds` slots from `from`
/// on: per minute and pipeline the records/s over the partitions with a row, scaled to
/// all of the pipeline's partitions; summed over pipelines; averaged per slot.
fn run_series_sql(table: &str, pipeline: Option<&str>, from: i64, step_seconds: i64) -> String {
    let from_ts = DateTime::<Utc>::from_timestamp(from, 0).unwrap_or_default();
    let filter = pipeline.map_or(String::new(), |p| format!(" AND pipeline = '{p}'"));
    format!(
        "SELECT CAST(to_unixtime(date_bin(INTERVAL '{step_seconds} seconds', ts, TIMESTAMP '1970-01-01T00:00:00')) AS BIGINT) AS slot, \
                avg(rate) AS value, count(*) AS samples, \
                CAST(to_unixtime(max(ts)) AS BIGINT) + 60 AS newest \
         FROM (SELECT ts, sum(rate) AS rate FROM ( \
                 SELECT ts, pipeline, \
                        sum(CAST(records AS DOUBLE) / seconds) * max(partitions) / count(*) AS rate \
                 FROM {table} \
                 WHERE ts >= TIMESTAMP '{}' AND dt >= DATE '{}'{filter} \
                 GROUP BY ts, pipeline) GROUP BY ts) \
         GROUP BY 1 ORDER BY 1",
        from_ts.format("%Y-%m-%dT%H:%M:%S"),
        from_ts.format("%Y-%m-%d"),
    )
}

/// Backtest origins (one per horizon) over the last day.
const BACKTEST_ORIGINS: usize = 24;
/// Backtest horizon: one hour, in grid steps.
const BACKTEST_HORIZON_SECS: i64 = 3600;
/// Forecast horizon fitted past the newest data: a day and an hour.
const FIT_HORIZON_SECS: i64 = 25 * 3600;

/// The most (service, metric) forecasters one server tracks.
pub const MAX_ENTRIES: usize = 1024;

/// One forecaster per (service, metric), each behind its own lock.
type Entries = BTreeMap<(String, String), Arc<tokio::sync::Mutex<Entry>>>;

/// Fitted forecasters, one per (service, metric), refreshed on demand.
pub struct Autoscaler {
    config: AutoscaleConfig,
    sql: Option<SqlService>,
    registry: Registry,
    entries: Mutex<Entries>,
}

impl std::fmt::Debug for Autoscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autoscaler")
            .field("config", &self.config)
            .finish()
    }
}

#[derive(Default)]
struct Entry {
    fit: Option<Fitted>,
    quality: Option<Quality>,
    /// Why the last refresh could not fit (no data, a query error).
    problem: Option<String>,
    /// When the last refresh was attempted (failed ones too).
    tried: Option<Instant>,
    /// A background backtest is running.
    requalifying: bool,
}

struct Fitted {
    data: Regular,
    /// The newest slot, complete or not (the observed load).
    observed: (i64, f64),
    forecast: Forecast,
}

struct Quality {
    at: Instant,
    version: Option<String>,
    backtest: Backtest,
    recipe: Recipe,
}

impl Autoscaler {
    pub fn new(config: AutoscaleConfig, sql: Option<SqlService>, registry: Registry) -> Autoscaler {
        Autoscaler {
            config,
            sql,
            registry,
            entries: Mutex::default(),
        }
    }

    /// The entry of (service, metric). The map holds at most [`MAX_ENTRIES`]: when full,
    /// entries nobody is using that never fitted (names with no data, most likely
    /// made up) make room; if none can go, the request is refused rather than the map
    /// growing with every name a caller invents.
    fn entry(
        &self,
        service: &str,
        metric: &str,
    ) -> Result<Arc<tokio::sync::Mutex<Entry>>, ModelError> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (service.to_string(), metric.to_string());
        if let Some(e) = entries.get(&key) {
            return Ok(e.clone());
        }
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| {
                Arc::strong_count(e) > 1 || e.try_lock().map_or(true, |g| g.fit.is_some())
            });
            if entries.len() >= MAX_ENTRIES {
                return Err(ModelError::Busy(format!(
                    "the autoscaler already tracks {MAX_ENTRIES} (service, metric) forecasts"
                )));
            }
        }
        Ok(entries.entry(key).or_default().clone())
    }

    /// (service, metric) pairs tracked now.
    pub fn tracked(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    fn step_secs(&self) -> i64 {
        (self.config.step.as_secs() as i64).max(1)
    }

    /// Reads the series' newest window from the lake: the regular grid without the
    /// current (incomplete) slot, and the newest slot as the observed load.
    async fn read(
        &self,
        service: &str,
        metric: &str,
        now: i64,
    ) -> Result<(Regular, (i64, f64), String), String> {
        let sql = self
            .sql
            .as_ref()
            .ok_or("the lake is not readable by this server (no SQL service)")?;
        let step = self.step_secs();
        let from = now - self.config.window.as_secs() as i64;
        let (table, column, query) = if service == RUN_SERVICE {
            let table = &self.config.run_table;
            let pipeline = run_pipeline(metric);
            (
                table,
                "records",
                run_series_sql(table, pipeline, from, step),
            )
        } else {
            let column = forecast::metric_column(metric).map_err(|e| e.to_string())?;
            let table = &self.config.table;
            (
                table,
                column,
                forecast::series_sql(table, service, column, from, step),
            )
        };
        let out = sql
            .query(query.clone())
            .await
            .map_err(|e| format!("reading {table}: {e}"))?;
        let mut series: Series =
            forecast::series_from_batches(&format!("{service}/{metric}"), &out.batches)
                .map_err(|e| e.to_string())?;
        let Some(&last_ts) = series.ts.last() else {
            return Err(format!(
                "no `{column}` samples for service `{service}` in {table} since {}",
                rfc3339(from)
            ));
        };
        // the observed load is the newest slot's mean, dated by its newest sample
        let newest = forecast::newest_sample(&out.batches).unwrap_or(last_ts);
        let observed = (newest, *series.values.last().expect("same length"));
        // the slot still filling is the observed load, not history
        if last_ts + step > now && series.ts.len() > 1 {
            series.ts.pop();
            series.values.pop();
        }
        let grid = regularize(&series, Some(step)).map_err(|e| e.to_string())?;
        Ok((grid, observed, query))
    }

    /// The consumer lag of `ymera run` now: per pipeline its newest minute in the last
    /// [`BACKLOG_WINDOW_SECS`], estimated from the partitions that have a row (scaled by
    /// `partitions / rows`; exact once every replica has flushed), summed over the
    /// pipelines. None when no minute is that recent.
    async fn run_backlog(
        &self,
        pipeline: Option<&str>,
        now: i64,
    ) -> Result<Option<Backlog>, String> {
        use arrow::array::{Array, Float64Array, Int64Array, StringArray};
        use arrow::datatypes::DataType;
        let sql = self
            .sql
            .as_ref()
            .ok_or("the lake is not readable by this server (no SQL service)")?;
        let table = &self.config.run_table;
        let from =
            DateTime::<Utc>::from_timestamp(now - BACKLOG_WINDOW_SECS, 0).unwrap_or_default();
        let filter = pipeline.map_or(String::new(), |p| format!(" AND pipeline = '{p}'"));
        let query = format!(
            "SELECT pipeline, CAST(to_unixtime(ts) AS BIGINT) AS t, \
                    CAST(sum(lag) AS DOUBLE) * max(partitions) / count(*) AS lag, \
                    max(partitions) AS partitions \
             FROM {table} \
             WHERE ts >= TIMESTAMP '{}' AND dt >= DATE '{}'{filter} \
             GROUP BY pipeline, ts ORDER BY pipeline, ts",
            from.format("%Y-%m-%dT%H:%M:%S"),
            from.format("%Y-%m-%d"),
        );
        let out = sql
            .query(query)
            .await
            .map_err(|e| format!("reading {table}: {e}"))?;
        // per pipeline, its newest minute (rows come ordered by time)
        let mut newest: BTreeMap<String, (i64, f64, i64)> = BTreeMap::new();
        // the reader's own types (strings come as views from Parquet): cast to ours
        let column = |b: &arrow::array::RecordBatch, i: usize, to: &DataType| {
            arrow::compute::cast(b.column(i), to)
                .map_err(|e| format!("reading {table}: column {i}: {e}"))
        };
        for b in &out.batches {
            let (p, t, lag, parts) = (
                column(b, 0, &DataType::Utf8)?,
                column(b, 1, &DataType::Int64)?,
                column(b, 2, &DataType::Float64)?,
                column(b, 3, &DataType::Int64)?,
            );
            let (Some(p), Some(t), Some(lag), Some(parts)) = (
                p.as_any().downcast_ref::<StringArray>(),
                t.as_any().downcast_ref::<Int64Array>(),
                lag.as_any().downcast_ref::<Float64Array>(),
                parts.as_any().downcast_ref::<Int64Array>(),
            ) else {
                return Err(format!("reading {table}: unexpected column types"));
            };
            for i in 0..b.num_rows() {
                if p.is_null(i) || t.is_null(i) || lag.is_null(i) || parts.is_null(i) {
                    continue;
                }
                newest.insert(
                    p.value(i).to_string(),
                    (t.value(i), lag.value(i), parts.value(i)),
                );
            }
        }
        if newest.is_empty() {
            return Ok(None);
        }
        Ok(Some(Backlog {
            records: newest.values().map(|(_, lag, _)| lag).sum(),
            at: newest.values().map(|(t, _, _)| *t).min().unwrap_or(now),
            partitions: newest
                .values()
                .map(|(_, _, n)| *n)
                .max()
                .unwrap_or(0)
                .clamp(0, i64::from(u32::MAX)) as u32,
            pipelines: newest.keys().cloned().collect(),
        }))
    }

    /// Refits (and re-runs the backtest) when due.
    async fn refresh(
        self: &Arc<Self>,
        entry: &Arc<tokio::sync::Mutex<Entry>>,
        e: &mut Entry,
        service: &str,
        metric: &str,
        now: i64,
    ) {
        let fresh = e
            .tried
            .is_some_and(|t| t.elapsed() < self.config.refit_interval);
        if fresh {
            return;
        }
        e.tried = Some(Instant::now());
        let (grid, observed, query) = match self.read(service, metric, now).await {
            Ok(r) => r,
            Err(p) => {
                // keep the previous fit and its observed load: a lake hiccup must not
                // answer 0 (the stale check takes over if it lasts)
                e.problem = Some(p);
                return;
            }
        };
        let step = grid.step;
        let name = forecast::registry_name(service, metric);
        if e.quality.is_none() {
            // after a restart: the newest registered recipe and its backtest
            match forecast::latest_recipe(&self.registry, &name, &format!("{service}/{metric}"))
                .await
            {
                Ok(Some((recipe, manifest))) => {
                    let age = (Utc::now() - manifest.created_at).num_seconds().max(0) as u64;
                    if age < self.config.backtest_interval.as_secs() && recipe.step_seconds == step
                    {
                        e.quality = Some(Quality {
                            at: Instant::now()
                                .checked_sub(Duration::from_secs(age))
                                .unwrap_or_else(Instant::now),
                            version: Some(manifest.version.clone()),
                            backtest: backtest_from_metrics(&manifest.metrics),
                            recipe,
                        });
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    warn!(model = %name, error = %err, "could not read the forecaster's newest version")
                }
            }
        }
        let due = e
            .quality
            .as_ref()
            .is_none_or(|q| q.at.elapsed() >= self.config.backtest_interval);
        if due && e.quality.is_none() {
            // the first answer needs quality figures: compute them now
            match self.requalify(&grid, service, metric, &query).await {
                Ok(q) => e.quality = Some(q),
                Err(err) => e.problem = Some(err),
            }
        } else if due && !e.requalifying {
            // later ones keep answering with the current figures while the hourly
            // backtest runs (it takes seconds; KEDA's metrics-api timeout is 3 s)
            e.requalifying = true;
            let (me, entry) = (self.clone(), entry.clone());
            let (grid, service, metric) = (grid.clone(), service.to_string(), metric.to_string());
            tokio::spawn(async move {
                let r = me.requalify(&grid, &service, &metric, &query).await;
                let mut e = entry.lock().await;
                e.requalifying = false;
                match r {
                    Ok(q) => {
                        e.quality = Some(q);
                        // the next request refits with the new recipe
                        e.tried = None;
                    }
                    Err(err) => {
                        warn!(service = %service, metric = %metric, error = %err, "the forecaster's backtest failed; keeping the previous figures")
                    }
                }
            });
        }
        let plan = e
            .quality
            .as_ref()
            .map(|q| (q.recipe.plan.clone(), q.recipe.interval_scale));
        let values = grid.values.clone();
        let per_day = grid.per_day();
        let horizon = ((FIT_HORIZON_SECS + (now - grid.end()).max(0)) / step).max(1) as usize;
        let fit = tokio::task::spawn_blocking(move || match plan {
            Some((plan, scale)) => forecast::fit_planned(&values, plan, horizon, scale),
            None => forecast::fit_forecast(&values, per_day, horizon),
        })
        .await;
        match fit {
            Ok(Ok(forecast)) => {
                if e.quality.is_some() {
                    e.problem = None;
                }
                e.fit = Some(Fitted {
                    data: grid,
                    observed,
                    forecast,
                });
                metrics::counter!("ymera_forecast_refits_total", "service" => service.to_string(), "metric" => metric.to_string())
                    .increment(1);
            }
            Ok(Err(err)) => {
                e.problem = Some(format!("fitting the forecaster: {err}"));
                e.fit = Some(Fitted {
                    forecast: Forecast {
                        bands: Default::default(),
                        plan: forecast::plan(0, per_day),
                    },
                    data: grid,
                    observed,
                });
            }
            Err(err) => e.problem = Some(format!("the fitting task failed: {err}")),
        }
    }

    /// Backtests the series, registers the recipe as a version, and returns the figures.
    async fn requalify(
        &self,
        grid: &Regular,
        service: &str,
        metric: &str,
        query: &str,
    ) -> Result<Quality, String> {
        let name = forecast::registry_name(service, metric);
        let (bt, recipe, secs) = self.backtest(grid, service, metric).await?;
        let version = match forecast::register_recipe(&self.registry, &recipe, &bt, query, secs)
            .await
        {
            Ok(m) => {
                info!(model = %m.name, version = %m.version, algorithm = %m.algorithm, mase = bt.model.mase, "registered a forecaster version");
                Some(m.version)
            }
            Err(err) => {
                warn!(model = %name, error = %err, "could not register the forecaster version");
                None
            }
        };
        let q = Quality {
            at: Instant::now(),
            version,
            backtest: bt,
            recipe,
        };
        metrics::gauge!("ymera_forecast_mase", "service" => service.to_string(), "metric" => metric.to_string())
            .set(served_accuracy(&q).mase);
        Ok(q)
    }

    async fn backtest(
        &self,
        grid: &Regular,
        service: &str,
        metric: &str,
    ) -> Result<(Backtest, Recipe, f64), String> {
        let values = grid.values.clone();
        let per_day = grid.per_day();
        let horizon = ((BACKTEST_HORIZON_SECS / grid.step).max(1)) as usize;
        let (start, step) = (grid.start, grid.step);
        let window_days = (self.config.window.as_secs() / 86_400) as u32;
        let series = format!("{service}/{metric}");
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let bt = forecast::backtest(&values, per_day, horizon, BACKTEST_ORIGINS, values.len())
                .map_err(|e| e.to_string())?;
            let secs = t.elapsed().as_secs_f64();
            let (plan, _) = forecast::select(forecast::plan(values.len(), per_day), &bt);
            let recipe = Recipe {
                series,
                step_seconds: step,
                window_days,
                interval_scale: if plan.model == "seasonal_naive" {
                    (1.0, 1.0)
                } else {
                    forecast::interval_scale(&bt)
                },
                plan,
                data_from: rfc3339(start),
                data_to: rfc3339(start + values.len() as i64 * step),
                points: values.len(),
                content_sha256: forecast::content_sha256(&values),
            };
            Ok((bt, recipe, secs))
        })
        .await
        .map_err(|e| format!("the backtest task failed: {e}"))?
    }
}

fn backtest_from_metrics(m: &BTreeMap<String, f64>) -> Backtest {
    let g = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    Backtest {
        origins: g("origins") as usize,
        horizon: g("horizon_steps") as usize,
        model: forecast::Accuracy {
            mase: g("mase"),
            smape: g("smape"),
            coverage80: g("coverage80"),
            coverage95: g("coverage95"),
        },
        seasonal_naive: forecast::Accuracy {
            mase: g("baseline_mase"),
            smape: g("baseline_smape"),
            coverage80: g("baseline_coverage80"),
            coverage95: g("baseline_coverage95"),
        },
        relative_mase: g("mase") / g("baseline_mase"),
    }
}

fn rfc3339(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Query parameters of the forecast endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastQuery {
    pub metric: Option<String>,
    pub horizon: Option<String>,
    pub step: Option<String>,
    pub lead: Option<String>,
    pub q: Option<f64>,
    /// `ymera-run` only: one pipeline's input (default: all of them).
    pub pipeline: Option<String>,
}

fn duration_param(name: &str, v: Option<&str>, default: Duration) -> Result<Duration, ModelError> {
    match v {
        None => Ok(default),
        Some(s) => ymera_common::parse_duration(s)
            .map_err(|e| ModelError::Input(format!("`{name}={s}`: {e}"))),
    }
}

/// The quantile band a `q` selects.
fn band_of(q: f64) -> Result<&'static str, ModelError> {
    match q {
        q if (q - 0.5).abs() < 1e-9 => Ok("p50"),
        q if (q - 0.9).abs() < 1e-9 => Ok("hi80"),
        q if (q - 0.975).abs() < 1e-9 => Ok("hi95"),
        _ => Err(ModelError::Input(format!(
            "`q={q}`: one of 0.5 (p50), 0.9 (hi80), 0.975 (hi95)"
        ))),
    }
}

/// `GET /v1/autoscale/{service}/forecast`.
pub async fn get_forecast(
    State(app): State<AppState>,
    Path(service): Path<String>,
    query: Result<Query<ForecastQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(auto) = app.autoscale.clone() else {
        return error_response(&ModelError::NotFound {
            what: "autoscaling (this server has no lake to read metric events from)".into(),
            available: Vec::new(),
        });
    };
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return error_response(&ModelError::Input(e.body_text())),
    };
    match respond(&auto, &service, q, Utc::now().timestamp()).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error_response(&e),
    }
}

/// Builds the response at time `now` (epoch seconds).
pub async fn respond(
    auto: &Arc<Autoscaler>,
    service: &str,
    q: ForecastQuery,
    now: i64,
) -> Result<Value, ModelError> {
    forecast::check_service(service)?;
    let is_run = service == RUN_SERVICE;
    let metric = q
        .metric
        .unwrap_or_else(|| if is_run { RUN_METRIC } else { "rps" }.into());
    if is_run {
        if metric != RUN_METRIC {
            return Err(ModelError::NotFound {
                what: format!("metric `{metric}` of {RUN_SERVICE}"),
                available: vec![RUN_METRIC.into()],
            });
        }
    } else {
        forecast::metric_column(&metric)?;
        if q.pipeline.is_some() {
            return Err(ModelError::Input(format!(
                "`pipeline` is a parameter of {RUN_SERVICE} only"
            )));
        }
    }
    if let Some(p) = &q.pipeline {
        forecast::check_service(p).map_err(|_| {
            ModelError::Input(format!(
                "pipeline `{p}`: letters, digits, `_`, `-` and `.` only"
            ))
        })?;
    }
    // the forecaster's entry: one per pipeline of ymera-run
    let key = match &q.pipeline {
        Some(p) => format!("{metric}-{p}"),
        None => metric.clone(),
    };
    let scaling = auto.config.services.get(service).cloned();
    let defaults = scaling.clone().unwrap_or_default();
    let horizon = duration_param("horizon", q.horizon.as_deref(), Duration::from_secs(1800))?;
    let step = duration_param("step", q.step.as_deref(), Duration::from_secs(60))?;
    let lead = duration_param("lead", q.lead.as_deref(), defaults.lead)?;
    let quantile = q.q.unwrap_or(0.9);
    let band = band_of(quantile)?;
    let (horizon, step, lead) = (
        horizon.as_secs() as i64,
        step.as_secs() as i64,
        lead.as_secs() as i64,
    );
    if step < 1 || horizon < step || horizon > 86_400 || lead > horizon {
        return Err(ModelError::Input(format!(
            "need 1s ≤ step ≤ horizon ≤ 1d and lead ≤ horizon (step {step}s, horizon {horizon}s, lead {lead}s)"
        )));
    }

    // ymera run: the backlog folds into the one value KEDA reads (KEDA takes the maximum
    // over triggers, so a second, lag trigger would undo the forecast's lead): the rate
    // that works it off within `lead`, on top of the forecast input
    let mut notes: Vec<String> = Vec::new();
    let mut backlog_json = Value::Null;
    let mut backlog_rate = 0.0;
    let mut partitions = None;
    if is_run {
        match auto.run_backlog(q.pipeline.as_deref(), now).await {
            Ok(Some(b)) => {
                let drain = lead.max(60) as f64;
                backlog_rate = b.records / drain;
                partitions = Some(b.partitions).filter(|n| *n > 0);
                backlog_json = json!({
                    "lag": b.records,
                    "at": rfc3339(b.at),
                    "drain_seconds": drain,
                    "records_per_s": b.records / drain,
                    "partitions": b.partitions,
                    "pipelines": b.pipelines,
                });
            }
            Ok(None) => notes.push(format!(
                "no consumer lag in {} over the last {} min: nothing folded in",
                auto.config.run_table,
                BACKLOG_WINDOW_SECS / 60
            )),
            Err(err) => notes.push(format!("consumer lag not folded in: {err}")),
        }
    }
    let entry = auto.entry(service, &key)?;
    let mut e = entry.lock().await;
    auto.refresh(&entry, &mut e, service, &key, now).await;

    // points at multiples of `step` from now on, interpolated from the forecaster's grid
    let mut points = Vec::new();
    let mut lead_max: Option<f64> = None;
    if let Some(f) = e.fit.as_ref().filter(|f| !f.forecast.bands.is_empty()) {
        let b = &f.forecast.bands;
        let (g0, gs) = (f.data.end(), f.data.step);
        let at = |v: &[f64], t: i64| -> f64 {
            let x = ((t - g0) as f64 / gs as f64).max(0.0);
            let i = (x.floor() as usize).min(v.len() - 1);
            let j = (i + 1).min(v.len() - 1);
            v[i] + (v[j] - v[i]) * (x - i as f64).min(1.0)
        };
        let first = now.div_euclid(step) * step + if now % step == 0 { 0 } else { step };
        let mut t = first;
        while t <= now + horizon {
            let p = json!({
                "ts": rfc3339(t),
                "p50": at(&b.p50, t),
                "lo80": at(&b.lo80, t),
                "hi80": at(&b.hi80, t),
                "lo95": at(&b.lo95, t),
                "hi95": at(&b.hi95, t),
            });
            if t <= now + lead {
                let v = p[band].as_f64().unwrap_or(f64::NAN);
                lead_max = Some(lead_max.map_or(v, |m: f64| m.max(v)));
            }
            points.push(p);
            t += step;
        }
        if lead_max.is_none() {
            // no point falls in [now, now+lead] (lead < step): the band at now+lead
            let v = match band {
                "p50" => at(&b.p50, now + lead),
                "hi80" => at(&b.hi80, now + lead),
                _ => at(&b.hi95, now + lead),
            };
            lead_max = Some(v);
        }
        notes.extend(f.forecast.plan.notes.iter().cloned());
        if f.data.report.duplicates + f.data.report.gaps_filled > 0 {
            notes.push(format!("history repaired: {}", f.data.report));
        }
    }

    let observed = e.fit.as_ref().map(|f| f.observed);
    let quality = e.quality.as_ref();
    let served = quality.map(served_accuracy);
    let mase = served.as_ref().map(|a| a.mase);
    let reason = if let Some((ts, _)) =
        observed.filter(|(ts, _)| now - ts > auto.config.stale_after.as_secs() as i64)
    {
        Some(format!(
            "stale: the newest metric sample is from {} ({} min ago; stale after {} min)",
            rfc3339(ts),
            (now - ts) / 60,
            auto.config.stale_after.as_secs() / 60
        ))
    } else if let Some(m) =
        mase.filter(|m| m.partial_cmp(&auto.config.max_mase) != Some(std::cmp::Ordering::Less))
    {
        Some(format!(
            "poor forecast: recent MASE {m:.2} ≥ {} (the one-day-back naive forecast does as well)",
            auto.config.max_mase
        ))
    } else if lead_max.is_none() {
        Some(e.problem.clone().unwrap_or_else(|| "no forecast".into()))
    } else {
        None
    };
    if quality.is_none()
        && let Some(p) = &e.problem
    {
        notes.push(format!("no quality figures yet: {p}"));
    }
    let mut value = match (&reason, lead_max, observed) {
        (None, Some(v), _) => v,
        (Some(_), _, Some((_, v))) => v,
        (Some(_), _, None) => 0.0,
        (None, None, _) => unreachable!("no forecast is a fallback reason"),
    };
    value += backlog_rate;
    let load = value;
    if let Some(r) = &reason {
        let kind = r.split(':').next().unwrap_or("other").to_string();
        // a service name becomes a label only once it resolved (configured, or with
        // samples in the lake): a caller's bogus names cannot grow the series count
        let known = scaling.is_some() || observed.is_some();
        let label = if known { service } else { "unknown" };
        metrics::counter!("ymera_forecast_fallback_total", "service" => label.to_string(), "reason" => kind)
            .increment(1);
    }
    let replicas = defaults
        .capacity_per_replica
        .filter(|c| *c > 0.0)
        .map(|cap| {
            let n = ((value / cap).ceil().max(0.0) as u64)
                .max(defaults.min_replicas as u64)
                .min(defaults.max_replicas as u64);
            match partitions {
                // KEDA #2401: a count that does not divide the partitions leaves some
                // replicas with more work, and each step on the way is a rebalance
                Some(parts) => u64::from(even_count(n.min(u64::from(parts)) as u32, parts)),
                None => n,
            }
        });
    if let (true, Some(n), Some(cap)) = (is_run, replicas, defaults.capacity_per_replica) {
        // KEDA's AverageValue with targetValue = capacity yields ceil(value / capacity)
        // replicas: the load that count carries makes it land on the even count
        value = n as f64 * cap;
    }
    if scaling
        .as_ref()
        .and_then(|s| s.capacity_per_replica)
        .is_none()
    {
        notes.push(format!(
            "no recommended_replicas: set autoscale.services.{service}.capacity_per_replica"
        ));
    }
    Ok(json!({
        "service": service,
        "metric": metric,
        "generated_at": rfc3339(now),
        "step": format!("PT{step}S"),
        "horizon": format!("PT{horizon}S"),
        "points": points,
        "observed": observed.map(|(ts, v)| json!({"ts": rfc3339(ts), "value": v})),
        "keda": { "value": value, "load": load, "q": quantile, "band": band, "lead": format!("PT{lead}S") },
        "backlog": backlog_json,
        "recommended_replicas": replicas,
        "scaling": {
            "capacity_per_replica": defaults.capacity_per_replica,
            "min_replicas": defaults.min_replicas,
            "max_replicas": defaults.max_replicas,
            "partitions": partitions,
        },
        "quality": quality.zip(served).map(|(q, a)| json!({
            "mase": finite(a.mase),
            "coverage80": finite(a.coverage80),
            "coverage95": finite(a.coverage95),
            "smape": finite(a.smape),
            "model_mase": finite(q.backtest.model.mase),
            "baseline_mase": finite(q.backtest.seasonal_naive.mase),
            "origins": q.backtest.origins,
            "horizon_steps": q.backtest.horizon,
            "model_version": q.version,
        })),
        "model": e.fit.as_ref().map(|f| json!({
            "name": forecast::registry_name(service, &key),
            "algorithm": f.forecast.plan.model,
            "periods": f.forecast.plan.periods,
            "step_seconds": f.data.step,
            "data_to": rfc3339(f.data.end()),
            "points": f.data.values.len(),
        })),
        "notes": notes,
        "fallback": { "active": reason.is_some(), "reason": reason },
    }))
}

/// The backtest accuracy of the model the recipe serves.
fn served_accuracy(q: &Quality) -> forecast::Accuracy {
    if q.recipe.plan.model == "seasonal_naive" {
        q.backtest.seasonal_naive.clone()
    } else {
        q.backtest.model.clone()
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ymera_run_entries_are_per_pipeline() {
        assert_eq!(run_pipeline("records_per_s"), None);
        assert_eq!(
            run_pipeline("records_per_s-task_events"),
            Some("task_events")
        );
        let q = run_series_sql("ymera_run_input", Some("p"), 1_700_000_000, 300);
        assert!(
            q.contains("pipeline = 'p'") && q.contains("FROM ymera_run_input"),
            "{q}"
        );
        assert!(!run_series_sql("t", None, 0, 60).contains("pipeline ="));
    }
}

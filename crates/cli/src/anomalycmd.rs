//! `ymera anomaly train NAME`: fits an isolation forest over window features of a series
//! (a NAB CSV, or a service's metric from the lake) and registers it as a version of
//! `NAME` in the model registry (task `anomaly_detection`); `POST /v1/anomaly/detect` with
//! `"model": NAME` scores with it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ymera_anomaly::iforest::{IForestDetector, IForestParams};
use ymera_common::parse_duration;
use ymera_common::series::{format_ts, read_csv, regularize};
use ymera_models::detector::{self, TrainedOn};

use crate::forecastcmd::{ForecastArgs, lake_grid};
use crate::settings::Settings;

#[derive(clap::Args, Debug)]
pub struct AnomalyTrainArgs {
    /// Registry name of the detector (lowercase letters, digits, `_`, `-`).
    pub name: String,
    /// Train on this NAB-layout CSV (`timestamp,value`) ...
    #[arg(long, conflicts_with = "service")]
    pub input: Option<PathBuf>,
    /// ... or on this service's metric events in the lake.
    #[arg(long, required_unless_present = "input")]
    pub service: Option<String>,
    #[arg(long, default_value = "rps")]
    pub metric: String,
    /// History read from the lake.
    #[arg(long, value_parser = parse_duration, default_value = "15d")]
    pub window: Duration,
    /// Isolation trees.
    #[arg(long, default_value_t = 100)]
    pub trees: usize,
    /// Rows subsampled per tree (ψ).
    #[arg(long, default_value_t = 256)]
    pub sample: usize,
    /// Values before a point that its features compare it with.
    #[arg(long, default_value_t = 12)]
    pub feature_window: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// `ymera anomaly train`.
pub async fn train(settings: &Settings, args: AnomalyTrainArgs) -> u8 {
    match train_inner(settings, args).await {
        Ok(line) => {
            println!("{line}");
            crate::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            crate::EXIT_FAILURE
        }
    }
}

async fn train_inner(settings: &Settings, args: AnomalyTrainArgs) -> Result<String, String> {
    let (grid, series) = match &args.input {
        Some(p) => (
            read_csv(p)
                .and_then(|s| regularize(&s, None))
                .map_err(|e| e.to_string())?,
            p.display().to_string(),
        ),
        None => {
            let fa = ForecastArgs {
                service: args.service.clone(),
                metric: args.metric.clone(),
                input: None,
                horizon: Duration::from_secs(3600),
                step: None,
                window: args.window,
                output: None,
                plot: None,
            };
            (
                lake_grid(settings, &fa).await?,
                format!(
                    "{}/{}",
                    args.service.as_deref().unwrap_or_default(),
                    args.metric
                ),
            )
        }
    };
    let params = IForestParams {
        n_trees: args.trees,
        psi: args.sample,
        window: args.feature_window,
    };
    params.validate()?;
    let values = grid.values.clone();
    let seed = args.seed;
    let (forest, flagged, secs) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut d = IForestDetector::train(&values, &params, seed)?;
        let secs = t.elapsed().as_secs_f64();
        // how often the training series itself crosses the default threshold
        let mut check = d.clone();
        check.reset();
        let flagged = values.iter().filter(|v| check.score(**v) >= 0.95).count();
        d.reset();
        Ok::<_, String>((d, flagged, secs))
    })
    .await
    .map_err(|e| format!("the training task failed: {e}"))??;
    let json = serde_json::to_value(&forest).map_err(|e| format!("serialising the forest: {e}"))?;
    let registry = crate::modelscmd::open_registry(settings)?;
    let metrics: BTreeMap<String, f64> = [
        ("training_points", grid.values.len() as f64),
        (
            "training_flag_rate_at_0.95",
            flagged as f64 / grid.values.len().max(1) as f64,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let on = TrainedOn {
        series,
        points: grid.values.len(),
        content_sha256: ymera_models::forecast::content_sha256(&grid.values),
        data_from: format_ts(grid.start),
        data_to: format_ts(grid.end()),
    };
    let m = detector::register(
        &registry,
        &args.name,
        detector::ISOLATION_FOREST,
        json,
        metrics,
        &on,
        secs,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(format!(
        "registered {}/{}: isolation forest ({} trees) on {} points of {} in {:.2}s; {:.2}% of them score ≥ 0.95",
        m.name,
        m.version,
        args.trees,
        on.points,
        on.series,
        secs,
        100.0 * flagged as f64 / on.points.max(1) as f64
    ))
}

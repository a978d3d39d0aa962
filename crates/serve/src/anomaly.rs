//! `POST /v1/anomaly/detect`: scores a series the Manager Agent sends, causally (each
//! point's score uses only it and the points before it), with the streaming detectors of
//! the pipeline stage.
//!
//! Request: `{"timestamps": ["2026-11-25T10:00:00Z" | epoch seconds, ...], "values": [...],
//! "detector": {DetectorConfig, optional}}`. Response: per point `anomaly_score`,
//! `is_anomaly` and each detector's part, plus the repairs made (duplicates, out-of-order
//! timestamps, scored in time order and answered in the caller's order) and the detectors
//! that could not run on this much history, with why.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use ymera_anomaly::detect::{Detector, DetectorConfig, Kind, refit_cadence};
use ymera_anomaly::iforest::IForestDetector;
use ymera_models::{ModelError, Registry};

use crate::AppState;

use crate::models::error_response;

/// Largest series one request may score.
const MAX_POINTS: usize = 100_000;
/// The most seasonal refitting one request may cause, in points decomposed: refits times
/// the history each decomposes (a robust STL over `history_seasons` seasons). The defaults
/// on 100,000 five-minute points take 0.7M.
const MAX_REFIT_POINTS: usize = 5_000_000;
/// How long one request may score before its work is stopped (below the default
/// `serve.request_timeout` of 30 s; a request cancelled earlier stops then).
const DEADLINE: Duration = Duration::from_secs(20);
/// Points scored between two looks at the deadline and the cancel flag.
const CHECK_EVERY: usize = 64;

/// Set when the request's future is dropped (the server's timeout answered, or the client
/// went away), so the blocking loop stops within [`CHECK_EVERY`] points.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Whether the blocking loop must stop: `Err` saying why.
fn check_budget(deadline: Instant, cancelled: &AtomicBool, done: usize) -> Result<(), ModelError> {
    if cancelled.load(Ordering::Relaxed) {
        return Err(ModelError::Deadline(format!(
            "scoring stopped after {done} points: the request was cancelled"
        )));
    }
    if Instant::now() > deadline {
        return Err(ModelError::Deadline(format!(
            "scoring stopped after {done} points: over the {}s budget of a request; send a shorter series or fewer refits",
            DEADLINE.as_secs()
        )));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectRequest {
    timestamps: Vec<Value>,
    values: Vec<Value>,
    #[serde(default)]
    detector: Option<DetectorConfig>,
    /// A registered isolation forest (`ymera anomaly train`) to score with instead of the
    /// streaming detectors.
    #[serde(default)]
    model: Option<String>,
    /// Its version or alias (default: `champion` if set, else the newest version).
    #[serde(default)]
    version: Option<String>,
    /// With `model`: `is_anomaly` when the forest's calibrated score is at least this
    /// (default 0.95; 0.5 is an ordinary point, 0.9 the training scores' 99th percentile).
    #[serde(default)]
    threshold: Option<f64>,
}

fn timestamp(v: &Value, i: usize) -> Result<i64, ModelError> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| {
            ModelError::Input(format!("timestamps[{i}] `{n}` is not whole epoch seconds"))
        }),
        Value::String(s) => ymera_common::series::parse_ts(s).ok_or_else(|| {
            ModelError::Input(format!(
                "timestamps[{i}] `{s}` is neither RFC 3339 nor `YYYY-MM-DD HH:MM:SS`"
            ))
        }),
        other => Err(ModelError::Input(format!(
            "timestamps[{i}] is {other}, not a timestamp"
        ))),
    }
}

fn value(v: &Value, i: usize) -> Result<f64, ModelError> {
    // NaN/inf arrive as strings (JSON has no such numbers): rejected with the index
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| ModelError::Input(format!("values[{i}] is not a finite number"))),
        other => Err(ModelError::Input(format!(
            "values[{i}] is {other}: values must be finite numbers"
        ))),
    }
}

/// `POST /v1/anomaly/detect`.
pub async fn detect(State(app): State<AppState>, body: Bytes) -> Response {
    match score_with(Some(app.models.registry()), &body).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
async fn score(body: &[u8]) -> Result<Value, ModelError> {
    score_with(None, body).await
}

async fn score_with(registry: Option<&Registry>, body: &[u8]) -> Result<Value, ModelError> {
    score_within(registry, body, Instant::now() + DEADLINE).await
}

async fn score_within(
    registry: Option<&Registry>,
    body: &[u8],
    deadline: Instant,
) -> Result<Value, ModelError> {
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(cancelled.clone());
    let req: DetectRequest = serde_json::from_slice(body)
        .map_err(|e| ModelError::Input(format!("malformed request: {e}")))?;
    if req.timestamps.len() != req.values.len() {
        return Err(ModelError::Input(format!(
            "{} timestamps but {} values",
            req.timestamps.len(),
            req.values.len()
        )));
    }
    if req.values.is_empty() || req.values.len() > MAX_POINTS {
        return Err(ModelError::Input(format!(
            "a series of 1 to {MAX_POINTS} points, got {}",
            req.values.len()
        )));
    }
    let ts = req
        .timestamps
        .iter()
        .enumerate()
        .map(|(i, v)| timestamp(v, i))
        .collect::<Result<Vec<_>, _>>()?;
    let values = req
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| value(v, i))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = req.detector.unwrap_or_default();
    cfg.validate()
        .map_err(|e| ModelError::Input(format!("detector: {e}")))?;
    let out_of_order = ts.windows(2).filter(|w| w[1] < w[0]).count();
    // scored in time order (stable: equal timestamps keep their order), answered in the
    // caller's order
    let mut order: Vec<usize> = (0..ts.len()).collect();
    order.sort_by_key(|&i| ts[i]);
    let duplicates = order.windows(2).filter(|w| ts[w[1]] == ts[w[0]]).count();
    let (first, last) = (ts[order[0]], ts[order[order.len() - 1]]);
    let median_step = {
        let mut d: Vec<i64> = order
            .windows(2)
            .map(|w| ts[w[1]] - ts[w[0]])
            .filter(|d| *d > 0)
            .collect();
        d.sort_unstable();
        d.get(d.len() / 2).copied().unwrap_or(1).max(1)
    };
    if (last - first) / median_step > 10 * MAX_POINTS as i64 {
        return Err(ModelError::Input(format!(
            "the timestamps span {} steps of {median_step}s (from {first} to {last}): at most {}",
            (last - first) / median_step,
            10 * MAX_POINTS
        )));
    }
    // the season the seasonal detector will use, and how often it refits over this series
    let season = cfg
        .seasonal
        .season_points
        .unwrap_or_else(|| (86_400.0 / median_step as f64).round() as usize);
    if cfg.detectors.contains(&Kind::Seasonal) && season >= 4 {
        if let Some(r) = cfg.seasonal.refit_points.filter(|r| *r < season / 4) {
            return Err(ModelError::Input(format!(
                "detector: seasonal.refit_points = {r}: at least a quarter season ({} points of a {season}-point season at a {median_step}s step)",
                season / 4
            )));
        }
        let cadence = refit_cadence(&cfg.seasonal, season);
        let refits = values.len() / cadence;
        let history = season.saturating_mul(cfg.seasonal.history_seasons.max(2));
        if refits.saturating_mul(history) > MAX_REFIT_POINTS {
            return Err(ModelError::Input(format!(
                "detector: {} points with seasonal.refit_points = {} make {refits} refits of {history} points each; at most {MAX_REFIT_POINTS} points refitted a request (raise refit_points, lower history_seasons or send fewer points)",
                values.len(),
                cadence
            )));
        }
    }
    if let Some(name) = &req.model {
        let registry = registry.ok_or_else(|| ModelError::Model("no registry".into()))?;
        let threshold = req.threshold.unwrap_or(0.95);
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(ModelError::Input(format!(
                "threshold {threshold}: must be in (0, 1]"
            )));
        }
        let (kind, json, manifest) =
            ymera_models::detector::load(registry, name, req.version.as_deref()).await?;
        if kind != ymera_models::detector::ISOLATION_FOREST {
            return Err(ModelError::Input(format!(
                "model `{name}` is a {kind}, not an isolation forest"
            )));
        }
        let mut forest: IForestDetector = serde_json::from_value(json).map_err(|e| {
            ModelError::Integrity(format!(
                "{name}/{}: the stored forest does not load: {e}",
                manifest.version
            ))
        })?;
        forest.reset();
        let cancel = cancelled.clone();
        let scores = tokio::task::spawn_blocking(move || {
            let mut out = vec![0.0; values.len()];
            for (done, &i) in order.iter().enumerate() {
                if done % CHECK_EVERY == 0 {
                    check_budget(deadline, &cancel, done)?;
                }
                out[i] = forest.score(values[i]);
            }
            Ok::<_, ModelError>(out)
        })
        .await
        .map_err(|e| ModelError::Model(format!("the scoring task failed: {e}")))??;
        let points: Vec<Value> = scores
            .iter()
            .map(|&s| json!({"anomaly_score": s, "is_anomaly": s >= threshold}))
            .collect();
        return Ok(json!({
            "model": {"name": manifest.name, "version": manifest.version},
            "points": points,
            "anomalies": scores.iter().filter(|&&s| s >= threshold).count(),
            "repairs": {"duplicate_timestamps": duplicates, "out_of_order": out_of_order},
            "not_ready": [],
        }));
    }
    let cancel = cancelled.clone();
    let (scored, not_ready) = tokio::task::spawn_blocking(move || {
        let mut d = Detector::new(&cfg);
        let mut scored = vec![None; ts.len()];
        for (done, &i) in order.iter().enumerate() {
            if done % CHECK_EVERY == 0 {
                check_budget(deadline, &cancel, done)?;
            }
            scored[i] = Some(d.update(ts[i], values[i]));
        }
        let scored: Vec<_> = scored
            .into_iter()
            .map(|s| s.expect("every index scored"))
            .collect();
        Ok::<_, ModelError>((scored, d.not_ready()))
    })
    .await
    .map_err(|e| ModelError::Model(format!("the scoring task failed: {e}")))??;
    let points: Vec<Value> = scored
        .iter()
        .map(|s| {
            let parts: serde_json::Map<String, Value> = s
                .parts
                .iter()
                .map(|(k, v)| (k.name().to_string(), json!(v)))
                .collect();
            json!({"anomaly_score": s.score, "is_anomaly": s.is_anomaly, "parts": parts})
        })
        .collect();
    let anomalies = scored.iter().filter(|s| s.is_anomaly).count();
    Ok(json!({
        "points": points,
        "anomalies": anomalies,
        "repairs": {"duplicate_timestamps": duplicates, "out_of_order": out_of_order},
        "not_ready": not_ready.into_iter().map(|(k, why)| json!({"detector": k.name(), "reason": why})).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two days of a noisy daily cycle at 5 minutes with one spike near the end.
    fn series(spike_at: usize) -> (Vec<i64>, Vec<f64>) {
        let n = 2 * 288 + 100;
        let ts = (0..n as i64).map(|i| 1_700_000_000 + i * 300).collect();
        let values = (0..n)
            .map(|i| {
                let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
                let noise = ((i * 7919) % 17) as f64 * 0.3;
                100.0 + 30.0 * phase.sin() + noise + if i == spike_at { 120.0 } else { 0.0 }
            })
            .collect();
        (ts, values)
    }

    #[tokio::test]
    async fn a_spike_is_flagged_and_bad_values_are_named() {
        let spike = 2 * 288 + 50;
        let (ts, values) = series(spike);
        let body = json!({"timestamps": ts, "values": values}).to_string();
        let out = score(body.as_bytes()).await.unwrap();
        let points = out["points"].as_array().unwrap();
        assert_eq!(points.len(), values.len());
        assert_eq!(points[spike]["is_anomaly"], true, "{}", points[spike]);
        let flagged = points.iter().filter(|p| p["is_anomaly"] == true).count();
        assert!(flagged <= 5, "{flagged} points flagged");

        let bad = json!({"timestamps": [1, 2, 3], "values": [1.0, "NaN", 2.0]}).to_string();
        let e = score(bad.as_bytes()).await.unwrap_err().to_string();
        assert!(e.contains("values[1]"), "{e}");
        let bad = json!({"timestamps": [1, "yesterday"], "values": [1.0, 2.0]}).to_string();
        let e = score(bad.as_bytes()).await.unwrap_err().to_string();
        assert!(e.contains("timestamps[1]"), "{e}");
        let bad = json!({"timestamps": [1], "values": [1.0, 2.0]}).to_string();
        assert!(score(bad.as_bytes()).await.is_err());
        // duplicates and disorder are reported, never a panic
        let dup = json!({"timestamps": [5, 5, 4, 6], "values": [1.0, 2.0, 3.0, 4.0]}).to_string();
        let out = score(dup.as_bytes()).await.unwrap();
        assert_eq!(
            out["repairs"],
            json!({"duplicate_timestamps": 1, "out_of_order": 1})
        );
        // a series sent newest first scores as the same series in time order
        let (ts, values) = series(spike);
        let rev = json!({"timestamps": ts.iter().rev().collect::<Vec<_>>(),
                         "values": values.iter().rev().collect::<Vec<_>>()})
        .to_string();
        let out = score(rev.as_bytes()).await.unwrap();
        assert_eq!(out["points"][values.len() - 1 - spike]["is_anomaly"], true);
        // tunables that would exhaust memory are refused, named
        let bad = json!({"timestamps": [1, 2], "values": [1.0, 2.0],
                         "detector": {"seasonal": {"window": 1_000_000_000_000u64}}})
        .to_string();
        let e = score(bad.as_bytes()).await.unwrap_err().to_string();
        assert!(e.contains("seasonal.window"), "{e}");
    }

    #[tokio::test]
    async fn a_registered_isolation_forest_scores_a_sent_series() {
        use ymera_anomaly::iforest::IForestParams;
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().display().to_string(), &[]).unwrap();
        // trained on a clean series, registered as `ymera anomaly train` does
        let (_, clean) = series(usize::MAX);
        let forest = IForestDetector::train(&clean, &IForestParams::default(), 7).unwrap();
        let on = ymera_models::detector::TrainedOn {
            series: "test".into(),
            points: clean.len(),
            content_sha256: String::new(),
            data_from: String::new(),
            data_to: String::new(),
        };
        let m = ymera_models::detector::register(
            &registry,
            "cpu-iforest",
            ymera_models::detector::ISOLATION_FOREST,
            serde_json::to_value(&forest).unwrap(),
            Default::default(),
            &on,
            0.0,
        )
        .await
        .unwrap();
        assert_eq!(m.version, "1");
        let spike = 2 * 288 + 50;
        let (ts, values) = series(spike);
        let body =
            json!({"timestamps": ts, "values": values, "model": "cpu-iforest", "threshold": 0.93})
                .to_string();
        let out = score_with(Some(&registry), body.as_bytes()).await.unwrap();
        assert_eq!(out["model"], json!({"name": "cpu-iforest", "version": "1"}));
        let scores: Vec<f64> = out["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["anomaly_score"].as_f64().unwrap())
            .collect();
        // the spike is among the three highest of 676 scores, and flagged
        let rank = scores.iter().filter(|s| **s > scores[spike]).count();
        assert!(rank < 3, "the spike ranks {rank}: {}", scores[spike]);
        assert_eq!(
            out["points"][spike]["is_anomaly"], true,
            "{}",
            out["points"][spike]
        );
        let flagged = out["anomalies"].as_u64().unwrap();
        assert!(flagged <= 8, "{flagged} of {} flagged", scores.len());
        // an unknown model is a 404 listing nothing, a forecast recipe is refused
        let bad = json!({"timestamps": [1], "values": [1.0], "model": "nope"}).to_string();
        assert!(matches!(
            score_with(Some(&registry), bad.as_bytes()).await,
            Err(ModelError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn refits_are_bounded_and_the_deadline_stops_the_work() {
        // one refit a point (a held-out attack): refused, named, before any work
        let (ts, values) = series(usize::MAX);
        let body = json!({"timestamps": ts, "values": values,
                          "detector": {"seasonal": {"refit_points": 1}}})
        .to_string();
        let e = score(body.as_bytes()).await.unwrap_err();
        assert!(matches!(e, ModelError::Input(_)), "{e}");
        assert!(e.to_string().contains("seasonal.refit_points = 1"), "{e}");
        // so is the same with the season given (the detector's own validation)
        let body = json!({"timestamps": ts, "values": values,
                          "detector": {"seasonal": {"refit_points": 10, "season_points": 288}}})
        .to_string();
        let e = score(body.as_bytes()).await.unwrap_err().to_string();
        assert!(e.contains("at least a quarter season"), "{e}");
        // a quarter season is fine
        let body = json!({"timestamps": ts, "values": values,
                          "detector": {"seasonal": {"refit_points": 72}}})
        .to_string();
        assert!(score(body.as_bytes()).await.is_ok());
        // 100,000 points refitting a 30-day history every quarter day: too much refitting
        let n = 100_000i64;
        let many = json!({"timestamps": (0..n).map(|i| i * 300).collect::<Vec<_>>(),
                          "values": (0..n).map(|i| (i % 288) as f64).collect::<Vec<_>>(),
                          "detector": {"seasonal": {"refit_points": 72, "history_seasons": 30}}})
        .to_string();
        let e = score(many.as_bytes()).await.unwrap_err().to_string();
        assert!(e.contains("1388 refits of 8640 points each"), "{e}");
        // a deadline already passed stops the loop at once: a 503, not a result
        let body = json!({"timestamps": ts, "values": values}).to_string();
        let e = score_within(None, body.as_bytes(), Instant::now())
            .await
            .unwrap_err();
        assert!(matches!(e, ModelError::Deadline(_)), "{e}");
        assert_eq!(
            crate::models::error_response(&e).status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
    }
}

//! `ymera eval anomaly`: scores every series of a NAB-layout directory causally with a
//! [`DetectorConfig`], optionally writes the scores, and rates them with the NAB scorer
//! (standard profile) at the detector's own threshold and at the corpus-optimal one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use ymera_common::series::{format_ts, read_csv, write_csv};

use crate::detect::{DetectorConfig, Kind, score_series};
use crate::nab::{self, FileInput, Profile};

/// The labels file inside an evaluation directory.
pub const LABELS: &str = "labels/combined_windows.json";

/// The outcome of [`eval_dir`].
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The directory evaluated.
    pub dir: PathBuf,
    /// The detectors that ran, in config order.
    pub detectors: Vec<Kind>,
    /// Per file, in path order.
    pub files: Vec<FileEval>,
    /// Files with no entry in the labels: scored with no windows (false positives count).
    pub unlabelled: Vec<String>,
    /// The corpus at the detector's own threshold.
    pub own: CorpusLine,
    /// The corpus at the threshold NAB's optimiser picks for these scores.
    pub optimised: CorpusLine,
}

/// One file's evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct FileEval {
    /// Path relative to `DIR/data`, `/`-separated (the key in the labels file).
    pub name: String,
    pub rows: usize,
    pub windows: usize,
    /// Whether the labels file has an entry for it.
    pub labelled: bool,
    /// Rows after the probationary period detected at the own threshold.
    pub detections: usize,
    /// Windows with at least one detection at the own threshold.
    pub windows_hit: usize,
    /// NAB raw score at the own threshold.
    pub raw: f64,
    /// NAB raw score at the optimised threshold.
    pub raw_optimised: f64,
}

/// A corpus score at one threshold.
#[derive(Debug, Clone, Serialize)]
pub struct CorpusLine {
    pub threshold: f64,
    pub raw: f64,
    pub null: f64,
    pub perfect: f64,
    /// `100 · (raw − null) / (perfect − null)`: 0 is the null detector, 100 perfect.
    pub normalised: f64,
}

impl From<&nab::CorpusScore> for CorpusLine {
    fn from(c: &nab::CorpusScore) -> Self {
        CorpusLine {
            threshold: c.threshold,
            raw: c.raw,
            null: c.null,
            perfect: c.perfect,
            normalised: c.normalised,
        }
    }
}

/// Scores every `dir/data/**/*.csv` with `cfg` (causally, warm-up = NAB's probationary
/// period unless the config sets one), writes `scores_out/<same relative path>` with
/// `timestamp,value,anomaly_score` when asked, and scores the corpus against
/// `dir/labels/combined_windows.json` with NAB's standard profile.
pub fn eval_dir(
    dir: &Path,
    cfg: &DetectorConfig,
    scores_out: Option<&Path>,
) -> Result<EvalReport, String> {
    let data = dir.join("data");
    let paths = ymera_common::series::csv_files(&data).map_err(|e| e.to_string())?;
    if paths.is_empty() {
        return Err(format!("{}: no *.csv files under it", data.display()));
    }
    let labels = nab::load_windows(&dir.join(LABELS))?;

    struct Scored {
        name: String,
        ts: Vec<i64>,
        scores: Vec<f64>,
        windows: Vec<(i64, i64)>,
        labelled: bool,
    }
    let mut scored = Vec::with_capacity(paths.len());
    for path in &paths {
        let name = relative_name(&data, path);
        let series = read_csv(path).map_err(|e| e.to_string())?;
        let out = score_series(cfg, &series.ts, &series.values);
        let scores: Vec<f64> = out.iter().map(|s| s.score).collect();
        if let Some(root) = scores_out {
            let rows: Vec<String> = series
                .ts
                .iter()
                .zip(&series.values)
                .zip(&scores)
                .map(|((&t, v), s)| format!("{},{v},{s}", format_ts(t)))
                .collect();
            write_csv(&root.join(&name), "timestamp,value,anomaly_score", &rows)
                .map_err(|e| e.to_string())?;
        }
        let (windows, labelled) = match labels.get(&name) {
            Some(w) => (w.clone(), true),
            None => (Vec::new(), false),
        };
        scored.push(Scored {
            name,
            ts: series.ts,
            scores,
            windows,
            labelled,
        });
    }

    let inputs: Vec<FileInput> = scored
        .iter()
        .map(|s| FileInput {
            name: &s.name,
            ts: &s.ts,
            scores: &s.scores,
            windows: &s.windows,
        })
        .collect();
    let profile = Profile::STANDARD;
    let own = nab::score_corpus(&inputs, cfg.threshold, &profile);
    let optimised = nab::optimise_threshold(&inputs, &profile);
    let optimised_raw: BTreeMap<&str, f64> = optimised
        .files
        .iter()
        .map(|f| (f.name.as_str(), f.raw))
        .collect();

    let files = scored
        .iter()
        .zip(&own.files)
        .map(|(s, f)| {
            let probation = nab::probationary_length(s.ts.len());
            let hit = |i: usize| i >= probation && s.scores[i] >= cfg.threshold;
            let detections = (0..s.ts.len()).filter(|&i| hit(i)).count();
            let windows_hit = s
                .windows
                .iter()
                .filter(|&&(a, b)| {
                    s.ts.iter()
                        .enumerate()
                        .any(|(i, &t)| t >= a && t <= b && hit(i))
                })
                .count();
            FileEval {
                name: s.name.clone(),
                rows: s.ts.len(),
                windows: s.windows.len(),
                labelled: s.labelled,
                detections,
                windows_hit,
                raw: f.raw,
                raw_optimised: optimised_raw
                    .get(s.name.as_str())
                    .copied()
                    .unwrap_or(f64::NAN),
            }
        })
        .collect();
    let mut detectors = Vec::new();
    for k in &cfg.detectors {
        if !detectors.contains(k) {
            detectors.push(*k);
        }
    }
    Ok(EvalReport {
        dir: dir.to_path_buf(),
        detectors,
        files,
        unlabelled: scored
            .iter()
            .filter(|s| !s.labelled)
            .map(|s| s.name.clone())
            .collect(),
        own: CorpusLine::from(&own),
        optimised: CorpusLine::from(&optimised),
    })
}

/// `path` relative to `root`, `/`-separated as in NAB's labels.
fn relative_name(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NAB corpus shipped with the project's shared data (not in CI).
    const NAB: &str = "/work/shared/data/nab";

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nab")
    }

    #[test]
    fn eval_dir_scores_a_nab_layout_directory_and_writes_the_scores() {
        let out = tempfile::tempdir().unwrap();
        let cfg = DetectorConfig::default();
        let r = eval_dir(&fixtures(), &cfg, Some(out.path())).unwrap();

        let names: Vec<&str> = r.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "artificialWithAnomaly/art_daily_nojump_hourly.csv",
                "generated/unlabelled_noise.csv",
                "realAWSCloudwatch/ec2_cpu_utilization_ac20cd_calm.csv",
                "realAWSCloudwatch/ec2_cpu_utilization_ac20cd_shift.csv",
                "realAWSCloudwatch/rds_cpu_utilization_e47b3b_spike.csv",
            ]
        );
        assert_eq!(r.unlabelled, ["generated/unlabelled_noise.csv"]);
        assert_eq!(r.detectors, cfg.detectors);
        for f in &r.files {
            let input = read_csv(&fixtures().join("data").join(&f.name)).unwrap();
            assert_eq!(f.rows, input.values.len());
            let text = std::fs::read_to_string(out.path().join(&f.name)).unwrap();
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some("timestamp,value,anomaly_score"));
            let rows: Vec<&str> = lines.collect();
            assert_eq!(rows.len(), input.values.len(), "{}", f.name);
            let first: Vec<&str> = rows[0].split(',').collect();
            assert_eq!(first[0], format_ts(input.ts[0]));
            assert_eq!(first[1].parse::<f64>().unwrap(), input.values[0]);
            for row in &rows {
                let score: f64 = row.rsplit(',').next().unwrap().parse().unwrap();
                assert!((0.0..=1.0).contains(&score), "{row}");
            }
        }
        // Every labelled window of the fixtures is found at the default threshold.
        let windows: usize = r.files.iter().map(|f| f.windows).sum();
        let hit: usize = r.files.iter().map(|f| f.windows_hit).sum();
        assert_eq!((windows, hit), (3, 3));
        assert_eq!(r.own.threshold, cfg.threshold);
        assert_eq!(r.own.perfect, 3.0);
        assert!(r.own.normalised > 50.0, "{:?}", r.own);
        assert!(
            r.optimised.normalised >= r.own.normalised - 1e-9,
            "{:?}",
            r.optimised
        );
    }

    #[test]
    fn eval_dir_names_what_is_missing() {
        let empty = tempfile::tempdir().unwrap();
        let e = eval_dir(empty.path(), &DetectorConfig::default(), None).unwrap_err();
        assert!(e.contains("data"), "{e}");
        std::fs::create_dir_all(empty.path().join("data/x")).unwrap();
        std::fs::write(
            empty.path().join("data/x/a.csv"),
            "timestamp,value\n2024-01-01 00:00:00,1\n",
        )
        .unwrap();
        let e = eval_dir(empty.path(), &DetectorConfig::default(), None).unwrap_err();
        assert!(e.contains("combined_windows.json"), "{e}");
        std::fs::create_dir_all(empty.path().join("labels")).unwrap();
        std::fs::write(empty.path().join(LABELS), "{}").unwrap();
        std::fs::write(
            empty.path().join("data/x/b.csv"),
            "timestamp,value\nyesterday,1\n",
        )
        .unwrap();
        let e = eval_dir(empty.path(), &DetectorConfig::default(), None).unwrap_err();
        assert!(e.contains("b.csv:2"), "{e}");
    }

    fn line(label: &str, r: &EvalReport) -> String {
        format!(
            "{label:<40} own {:>6.1} @ {:.3}   optimised {:>6.1} @ {:.4}",
            r.own.normalised, r.own.threshold, r.optimised.normalised, r.optimised.threshold
        )
    }

    /// Tuning aid: NAB standard scores of each detector alone and of combinations.
    /// `cargo test -p ymera-anomaly --release --lib eval -- --ignored --nocapture`
    #[test]
    #[ignore = "needs the NAB corpus in /work/shared/data"]
    fn nab_scores_by_config() {
        // YMERA_EVAL_DIR: another NAB-layout directory (e.g. a subset of the corpus).
        let dir = std::env::var("YMERA_EVAL_DIR").unwrap_or_else(|_| NAB.to_string());
        let dir = Path::new(&dir);
        let only = std::env::var("YMERA_EVAL_ONLY").ok();
        let mut configs: Vec<(String, DetectorConfig)> = Vec::new();
        for k in Kind::ALL {
            configs.push((
                k.name().to_string(),
                DetectorConfig {
                    detectors: vec![k],
                    ..DetectorConfig::default()
                },
            ));
        }
        configs.push(("default".into(), DetectorConfig::default()));
        // Extra configs to try: `[["label", {config}], ...]`.
        if let Ok(extra) = std::env::var("YMERA_EVAL_CFGS") {
            let extra: Vec<(String, DetectorConfig)> = serde_json::from_str(&extra).unwrap();
            configs.extend(extra);
        }
        for (label, cfg) in configs {
            if only.as_deref().is_some_and(|o| !label.contains(o)) {
                continue;
            }
            let t = std::time::Instant::now();
            let out = std::env::var("YMERA_EVAL_OUT")
                .ok()
                .map(|o| Path::new(&o).join(&label));
            let r = eval_dir(dir, &cfg, out.as_deref()).unwrap();
            println!("{}   ({:.1}s)", line(&label, &r), t.elapsed().as_secs_f64());
            if std::env::var("YMERA_EVAL_FILES").is_ok() {
                for f in &r.files {
                    println!(
                        "    {:<55} win {}/{} det {:>4} raw {:>6.2} opt {:>6.2}",
                        f.name, f.windows_hit, f.windows, f.detections, f.raw, f.raw_optimised
                    );
                }
            }
        }
    }
}

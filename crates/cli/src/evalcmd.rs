//! `ymera eval anomaly DIR`: scores every series of a NAB-layout directory with the
//! streaming detectors (causally) and prints the NAB standard-profile score per file and for
//! the corpus, at the detector's own threshold and at the corpus-optimal one.
//!
//! The work is `ymera_anomaly::eval::eval_dir`; this file parses the flags and formats.

use std::fmt::Write as _;
use std::path::PathBuf;

use ymera_anomaly::detect::{DetectorConfig, Kind};
use ymera_anomaly::eval::{EvalReport, eval_dir};

#[derive(clap::Args, Debug, Clone)]
pub struct EvalAnomalyArgs {
    /// A directory in the NAB layout: every `DIR/data/**/*.csv` (`timestamp,value`) is scored
    /// against `DIR/labels/combined_windows.json`.
    pub dir: PathBuf,
    /// Also write, per input file, `OUT/<same relative path>` with
    /// `timestamp,value,anomaly_score` (one row per input row).
    #[arg(long, value_name = "OUT")]
    pub scores_out: Option<PathBuf>,
    /// Detectors to combine, comma-separated: robust_z, seasonal, changepoint,
    /// isolation_forest (default: the default combination).
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    pub detectors: Option<Vec<Kind>>,
    /// A row is a detection when its combined score is at least this (default: the
    /// detectors' own threshold).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// After a detection, hold later scores just below the threshold for this many points
    /// (NAB counts only a window's first detection, and charges every later one outside it;
    /// 36 = 3 h at 5-minute steps). The pipeline stage and the HTTP API default to 0 and
    /// leave de-duplication to the alert rules.
    #[arg(long, default_value_t = 36)]
    pub rearm: usize,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The detector configuration the flags ask for.
pub fn config(args: &EvalAnomalyArgs) -> Result<DetectorConfig, String> {
    let mut cfg = DetectorConfig {
        rearm_points: args.rearm,
        ..DetectorConfig::default()
    };
    if let Some(kinds) = &args.detectors {
        if kinds.is_empty() {
            return Err("--detectors needs at least one detector".into());
        }
        cfg.detectors = kinds.clone();
    }
    if let Some(t) = args.threshold {
        if !(0.0..=1.0).contains(&t) {
            return Err(format!("--threshold {t} is outside [0, 1]"));
        }
        cfg.threshold = t;
    }
    Ok(cfg)
}

/// Runs the evaluation and returns the report to print (a table, or JSON with `--json`).
pub fn eval_anomaly(args: &EvalAnomalyArgs) -> Result<String, String> {
    let cfg = config(args)?;
    let report = eval_dir(&args.dir, &cfg, args.scores_out.as_deref())?;
    if args.json {
        let mut text = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("internal: the report does not serialise: {e}"))?;
        text.push('\n');
        return Ok(text);
    }
    Ok(table(&report, args))
}

fn table(r: &EvalReport, args: &EvalAnomalyArgs) -> String {
    let names: Vec<&str> = r.detectors.iter().map(|k| k.name()).collect();
    let windows: usize = r.files.iter().map(|f| f.windows).sum();
    let width = r
        .files
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "NAB standard profile: {} ({} files, {windows} windows), detectors {}",
        r.dir.display(),
        r.files.len(),
        names.join(",")
    );
    let _ = writeln!(
        out,
        "{:<width$}  {:>6}  {:>7}  {:>4}  {:>10}  {:>8}  {:>8}",
        "file", "rows", "windows", "hit", "detections", "raw@own", "raw@opt"
    );
    for f in &r.files {
        let _ = writeln!(
            out,
            "{:<width$}  {:>6}  {:>7}  {:>4}  {:>10}  {:>8.2}  {:>8.2}",
            f.name, f.rows, f.windows, f.windows_hit, f.detections, f.raw, f.raw_optimised
        );
    }
    if !r.unlabelled.is_empty() {
        let _ = writeln!(
            out,
            "not in the labels, scored with no windows (every detection is a false positive): {}",
            r.unlabelled.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "corpus: {:.1} at the own threshold {}; {:.1} at the optimised threshold {:.4} \
         (raw {:.2} / {:.2}, null {:.2}, perfect {:.2})",
        r.own.normalised,
        r.own.threshold,
        r.optimised.normalised,
        r.optimised.threshold,
        r.own.raw,
        r.optimised.raw,
        r.own.null,
        r.own.perfect
    );
    if let Some(dir) = &args.scores_out {
        let _ = writeln!(out, "scores written under {}", dir.display());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: EvalAnomalyArgs,
    }

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../anomaly/tests/fixtures/nab")
    }

    #[test]
    fn flags_parse_into_a_config() {
        let cli = Cli::try_parse_from([
            "eval",
            "d",
            "--detectors",
            "seasonal,changepoint",
            "--threshold",
            "0.6",
        ])
        .unwrap();
        let cfg = config(&cli.args).unwrap();
        assert_eq!(cfg.detectors, [Kind::Seasonal, Kind::Changepoint]);
        assert_eq!(cfg.threshold, 0.6);
        let cli = Cli::try_parse_from(["eval", "d"]).unwrap();
        assert_eq!(
            config(&cli.args).unwrap().detectors,
            DetectorConfig::default().detectors
        );
        let e = Cli::try_parse_from(["eval", "d", "--detectors", "zscore"]).unwrap_err();
        assert!(e.to_string().contains("robust_z"), "{e}");
        let cli = Cli::try_parse_from(["eval", "d", "--threshold", "2"]).unwrap();
        assert!(config(&cli.args).unwrap_err().contains("outside"));
    }

    #[test]
    fn report_table_and_json() {
        let out = std::env::temp_dir().join(format!("ymera-evalcmd-{}", std::process::id()));
        let dir = fixtures();
        let args = EvalAnomalyArgs {
            dir: dir.clone(),
            scores_out: Some(out.clone()),
            detectors: None,
            threshold: None,
            rearm: 36,
            json: false,
        };
        let text = eval_anomaly(&args).unwrap();
        assert!(text.contains("5 files, 3 windows"), "{text}");
        assert!(
            text.contains("realAWSCloudwatch/ec2_cpu_utilization_ac20cd_shift.csv"),
            "{text}"
        );
        assert!(
            text.contains("scored with no windows")
                && text.contains("generated/unlabelled_noise.csv")
        );
        assert!(
            text.contains("at the own threshold 0.5;")
                && text.contains("at the optimised threshold")
        );
        assert!(out.join("generated/unlabelled_noise.csv").is_file());
        std::fs::remove_dir_all(&out).unwrap();

        let json = eval_anomaly(&EvalAnomalyArgs {
            json: true,
            scores_out: None,
            ..args
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["files"].as_array().map(Vec::len), Some(5));
        assert_eq!(v["own"]["threshold"], 0.5);
        assert!(v["optimised"]["normalised"].is_number(), "{json}");
    }

    #[test]
    fn a_missing_directory_is_named() {
        let args = EvalAnomalyArgs {
            dir: PathBuf::from("/nonexistent/nab"),
            scores_out: None,
            detectors: None,
            threshold: None,
            rearm: 36,
            json: false,
        };
        let e = eval_anomaly(&args).unwrap_err();
        assert!(e.contains("/nonexistent/nab/data"), "{e}");
    }
}

//! `ymera simulate-scaling`: replays a load series (NAB CSV) through the reactive HPA and
//! the forecast policy and prints, for each, SLO-breach minutes, replica-hours, peak
//! replicas and scale events. The simulation lives in `ymera_models::scaling`; the
//! forecaster is passed in by the caller.

use std::path::PathBuf;
use std::time::Duration;

use ymera_common::parse_duration;
use ymera_common::series::{Regular, format_ts, read_csv, regularize};
use ymera_models::scaling::{
    LoadForecaster, PolicyReport, ScalingConfig, simulate_forecast, simulate_reactive,
};

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// The load series: NAB CSV (`timestamp,value`, UTC `YYYY-MM-DD HH:MM:SS`).
    #[arg(long)]
    pub series: PathBuf,
    /// Load one replica serves, in the series' unit (e.g. requests per second).
    #[arg(long)]
    pub capacity_per_replica: f64,
    /// Time from requesting a replica until it serves (e.g. 5m or PT5M).
    #[arg(long, value_parser = parse_duration)]
    pub startup: Duration,
    /// How far ahead the forecast policy provisions: the highest forecast in [now, now+lead].
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub lead: Duration,
    /// Fewest replicas (at least 1).
    #[arg(long, default_value_t = 1)]
    pub min_replicas: u32,
    /// Most replicas.
    #[arg(long, default_value_t = 100)]
    pub max_replicas: u32,
    /// Per-replica load the autoscalers aim at, as a fraction of capacity.
    #[arg(long, default_value_t = 1.0)]
    pub target_utilization: f64,
    /// Age of the load a metric reports (one sample window).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub metric_lag: Duration,
    /// Our forecaster refits every this many series steps (the server refits every step;
    /// 1 is the most faithful and the slowest).
    #[arg(long, default_value_t = 1)]
    pub refit_steps: usize,
    /// Replay `ymera run` itself: the series is its input (records/s, e.g. from the lake
    /// table `ymera_run_input`), what the ready replicas cannot take waits as lag, both
    /// policies stop at this many replicas (the partitions), and the forecast policy is
    /// deploy/'s ScaledObject for ymera-run: lag folded into the value, counts that divide
    /// the partitions, straight jumps. Adds backlog and uneven-count columns.
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs both policies and returns the report to print; errors name the file or the flag.
pub fn simulate_scaling(
    args: &SimulateArgs,
    forecaster: &mut dyn LoadForecaster,
) -> Result<String, String> {
    let series = read_csv(&args.series).map_err(|e| e.to_string())?;
    let load = regularize(&series, None).map_err(|e| e.to_string())?;
    let cfg = ScalingConfig {
        lead_s: args.lead.as_secs_f64(),
        min_replicas: args.min_replicas,
        max_replicas: args.max_replicas,
        target_utilization: args.target_utilization,
        metric_lag_s: args.metric_lag.as_secs_f64(),
        partitions: args.partitions,
        ..ScalingConfig::new(args.capacity_per_replica, args.startup.as_secs_f64())
    };
    cfg.validate().map_err(|e| e.to_string())?;
    let reactive = simulate_reactive(&load, &cfg).map_err(|e| e.to_string())?;
    let forecast = simulate_forecast(&load, &cfg, forecaster).map_err(|e| e.to_string())?;
    let policies = [reactive, forecast];

    if args.json {
        let out = serde_json::json!({
            "series": {
                "path": args.series.display().to_string(),
                "points": load.values.len(),
                "step_s": load.step,
                "from": format_ts(load.start),
                "to": format_ts(load.ts(load.values.len() - 1)),
                "repairs": load.report,
            },
            "config": cfg,
            "forecaster": forecaster.name(),
            "policies": policies,
        });
        return serde_json::to_string_pretty(&out).map_err(|e| e.to_string());
    }
    Ok(table(args, &cfg, &load, &policies, forecaster.name()))
}

/// The human-readable report: what was simulated, then one row per policy.
fn table(
    args: &SimulateArgs,
    cfg: &ScalingConfig,
    load: &Regular,
    policies: &[PolicyReport],
    forecaster: &str,
) -> String {
    let points = load.values.len();
    let mut out = format!(
        "load: {} ({points} points every {}, {} to {})\n",
        args.series.display(),
        secs(load.step as f64),
        format_ts(load.start),
        format_ts(load.ts(points - 1)),
    );
    if !load.report.is_clean() {
        out.push_str(&format!("note: {}\n", load.report));
    }
    out.push_str(&format!(
        "replicas: {} per replica at {}% target, startup {}, {}..{}, metric lag {}; \
         forecast: {forecaster}, lead {}\n\n",
        cfg.capacity_per_replica,
        cfg.target_utilization * 100.0,
        secs(cfg.startup_s),
        cfg.min_replicas,
        cfg.max_replicas,
        secs(cfg.metric_lag_s),
        secs(cfg.lead_s),
    ));
    if let Some(n) = cfg.partitions {
        out.push_str(&format!(
            "ymera run on {n} partitions: lag builds while the input exceeds ready capacity; \
             forecast = lag folded in over the lead, counts dividing {n}\n\n"
        ));
    }
    out.push_str(&format!(
        "{:<10} {:>14} {:>14} {:>6} {:>10} {:>12}",
        "policy", "breach_min", "replica_hours", "peak", "scale_ups", "scale_downs"
    ));
    if cfg.partitions.is_some() {
        out.push_str(&format!(
            " {:>12} {:>12} {:>12}",
            "max_backlog", "backlog_min", "uneven_min"
        ));
    }
    out.push('\n');
    for p in policies {
        out.push_str(&format!(
            "{:<10} {:>14.1} {:>14.1} {:>6} {:>10} {:>12}",
            p.policy,
            p.breach_minutes,
            p.replica_hours,
            p.peak_replicas,
            p.scale_ups,
            p.scale_downs
        ));
        if let (Some(b), Some(bm), Some(u)) = (p.max_backlog, p.backlog_minutes, p.uneven_minutes) {
            out.push_str(&format!(" {b:>12.0} {bm:>12.1} {u:>12.1}"));
        }
        out.push('\n');
    }
    out
}

/// `300` → `5m`, `90` → `1m30s`, `0.5` → `0.5s`.
fn secs(s: f64) -> String {
    if s.fract() != 0.0 || s < 60.0 {
        return format!("{s}s");
    }
    let s = s as u64;
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0 {
        out.push_str(&format!("{sec}s"));
    }
    out
}

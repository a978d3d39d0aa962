//! `ymera forecast` (a series from the lake's metric events, or a NAB CSV), `ymera eval
//! forecast DIR` (MASE against seasonal naive per series) and the MSTL forecaster the
//! scaling simulator replays.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plotters::prelude::*;
use ymera_common::parse_duration;
use ymera_common::series::{Regular, format_ts, read_csv, regularize};
use ymera_models::forecast::{self, Backtest, Forecast};
use ymera_models::scaling::LoadForecaster;

use crate::settings::Settings;

/// The bundled font for plot text (DejaVu Sans; no fontconfig needed).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

#[derive(clap::Args, Debug)]
pub struct ForecastArgs {
    /// Service whose metric events to forecast (from the lake's `metric_events`).
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    pub service: Option<String>,
    /// Metric: rps, cpu, queue_depth, latency_p50_ms, latency_p95_ms, error_rate.
    #[arg(long, default_value = "rps")]
    pub metric: String,
    /// A NAB-layout CSV (`timestamp,value`) instead of the lake.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// How far ahead (e.g. 1h, 1d, PT30M).
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub horizon: Duration,
    /// Grid step (default: 5m from the lake; the input's own step for --input).
    #[arg(long, value_parser = parse_duration)]
    pub step: Option<Duration>,
    /// History read from the lake (default 15d).
    #[arg(long, value_parser = parse_duration, default_value = "15d")]
    pub window: Duration,
    /// Write `timestamp,p50,lo80,hi80,lo95,hi95` here instead of printing the points.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Draw history, forecast and intervals to this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// What `ymera forecast` computed.
struct Run {
    name: String,
    grid: Regular,
    forecast: Forecast,
    backtest: Option<Backtest>,
    notes: Vec<String>,
    seconds: f64,
}

/// `ymera forecast`.
pub async fn forecast_cmd(settings: &Settings, args: ForecastArgs) -> u8 {
    if let Some(step) = args.step.filter(|s| s.as_secs() < 1) {
        eprintln!("error: --step {step:?}: at least one second");
        return crate::EXIT_USAGE;
    }
    let grid = match &args.input {
        Some(path) => read_csv(path)
            .and_then(|s| regularize(&s, args.step.map(|d| d.as_secs() as i64)))
            .map_err(|e| e.to_string()),
        None => lake_grid(settings, &args).await,
    };
    let grid = match grid {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return crate::EXIT_FAILURE;
        }
    };
    let name = match &args.input {
        Some(p) => p.display().to_string(),
        None => format!("{}/{}", args.service.as_deref().unwrap_or(""), args.metric),
    };
    let horizon = ((args.horizon.as_secs() as i64 + grid.step - 1) / grid.step).max(1) as usize;
    let run = match tokio::task::spawn_blocking(move || run_forecast(name, grid, horizon)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return crate::EXIT_FAILURE;
        }
        Err(e) => {
            eprintln!("error: the forecast task failed: {e}");
            return crate::EXIT_FAILURE;
        }
    };
    report(&run, &args)
}

fn run_forecast(name: String, grid: Regular, horizon: usize) -> Result<Run, String> {
    let t = Instant::now();
    let per_day = grid.per_day();
    let mut notes = Vec::new();
    if !grid.report.is_clean() {
        notes.push(format!("history repaired: {}", grid.report));
    }
    // the backtest's one-hour origins over the last day calibrate the intervals
    let bt_h = ((3600 / grid.step).max(1)) as usize;
    let backtest = match forecast::backtest(&grid.values, per_day, bt_h, 24, grid.values.len()) {
        Ok(b) => Some(b),
        Err(e) => {
            notes.push(format!("no backtest: {e}"));
            None
        }
    };
    let scale = backtest
        .as_ref()
        .map_or((1.0, 1.0), forecast::interval_scale);
    let plan = forecast::plan(grid.values.len(), per_day);
    let f = forecast::fit_planned(&grid.values, plan, horizon, scale).map_err(|e| e.to_string())?;
    notes.extend(f.plan.notes.iter().cloned());
    Ok(Run {
        name,
        grid,
        forecast: f,
        backtest,
        notes,
        seconds: t.elapsed().as_secs_f64(),
    })
}

pub async fn lake_grid(settings: &Settings, args: &ForecastArgs) -> Result<Regular, String> {
    let service = args.service.as_deref().unwrap_or_default();
    forecast::check_service(service).map_err(|e| e.to_string())?;
    let column = forecast::metric_column(&args.metric).map_err(|e| e.to_string())?;
    let step = args.step.map_or(300, |d| d.as_secs() as i64).max(1);
    let lake = crate::commands::open_lake(settings).map_err(|e| e.to_string())?;
    let (analyst, _) = ymera_query::Analyst::open(&lake, None, ymera_query::Limits::default())
        .await
        .map_err(|e| e.to_string())?;
    let now = chrono::Utc::now().timestamp();
    let sql = forecast::series_sql(
        &settings.autoscale.table,
        service,
        column,
        now - args.window.as_secs() as i64,
        step,
    );
    let out = analyst.query(&sql).await.map_err(|e| e.to_string())?;
    let series = forecast::series_from_batches(&format!("{service}/{}", args.metric), &out.batches)
        .map_err(|e| e.to_string())?;
    if series.ts.is_empty() {
        return Err(format!(
            "no `{column}` samples for service `{service}` in {} over the last {}",
            settings.autoscale.table,
            humantime(args.window)
        ));
    }
    regularize(&series, Some(step)).map_err(|e| e.to_string())
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{}m", s / 60)
    }
}

fn backtest_line(b: &Option<Backtest>) -> String {
    match b {
        Some(b) => format!(
            "backtest ({} origins × {} steps): MASE {:.3} (seasonal naive {:.3}), sMAPE {:.1}%, 80% coverage {:.0}%, 95% coverage {:.0}%",
            b.origins,
            b.horizon,
            b.model.mase,
            b.seasonal_naive.mase,
            b.model.smape,
            b.model.coverage80 * 100.0,
            b.model.coverage95 * 100.0
        ),
        None => "no backtest".into(),
    }
}

fn report(run: &Run, args: &ForecastArgs) -> u8 {
    let b = &run.forecast.bands;
    let rows: Vec<String> = (0..b.len())
        .map(|i| {
            format!(
                "{},{:.6},{:.6},{:.6},{:.6},{:.6}",
                format_ts(run.grid.end() + i as i64 * run.grid.step),
                b.p50[i],
                b.lo80[i],
                b.hi80[i],
                b.lo95[i],
                b.hi95[i]
            )
        })
        .collect();
    eprintln!(
        "{}: {} points at {}s, model {} (periods {:?}), fitted in {:.2}s",
        run.name,
        run.grid.values.len(),
        run.grid.step,
        run.forecast.plan.model,
        run.forecast.plan.periods,
        run.seconds
    );
    eprintln!("{}", backtest_line(&run.backtest));
    for n in &run.notes {
        eprintln!("note: {n}");
    }
    const HEADER: &str = "timestamp,p50,lo80,hi80,lo95,hi95";
    match &args.output {
        Some(path) => {
            if let Err(e) = ymera_common::series::write_csv(path, HEADER, &rows) {
                eprintln!("error: {e}");
                return crate::EXIT_FAILURE;
            }
            eprintln!("wrote {} points to {}", rows.len(), path.display());
        }
        None => {
            println!("{HEADER}");
            for r in &rows {
                println!("{r}");
            }
        }
    }
    if let Some(path) = &args.plot {
        match plot(path, run) {
            Ok(()) => eprintln!("plot: {}", path.display()),
            Err(e) => {
                eprintln!("error: plotting to {}: {e}", path.display());
                return crate::EXIT_FAILURE;
            }
        }
    }
    crate::EXIT_OK
}

/// History (the last three days at most), the forecast, its 80 % and 95 % intervals, and
/// the backtest's figures in the title.
fn plot(path: &Path, run: &Run) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| "the bundled font is not a valid TrueType font".to_string())?;
    let g = &run.grid;
    let b = &run.forecast.bands;
    let keep = (3 * g.per_day()).min(g.values.len());
    let first = g.values.len() - keep;
    let hours = |i: i64| (i * g.step) as f64 / 3600.0; // relative to the forecast origin
    let hist: Vec<(f64, f64)> = (first..g.values.len())
        .map(|i| (hours(i as i64 - g.values.len() as i64), g.values[i]))
        .collect();
    let fx = |i: usize| hours(i as i64);
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in hist
        .iter()
        .map(|p| p.1)
        .chain(b.lo95.iter().copied())
        .chain(b.hi95.iter().copied())
    {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    let x0 = hist.first().map_or(0.0, |p| p.0);
    let x1 = fx(b.len());
    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let short = Path::new(&run.name)
        .file_name()
        .map_or(run.name.clone(), |f| f.to_string_lossy().into_owned());
    let title = format!(
        "{} — {} — {}",
        short,
        run.forecast.plan.model,
        match &run.backtest {
            Some(bt) => format!(
                "backtest MASE {:.2} (seasonal naive {:.2}), 80% coverage {:.0}%",
                bt.model.mase,
                bt.seasonal_naive.mase,
                bt.model.coverage80 * 100.0
            ),
            None => "no backtest (too little history)".into(),
        }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, (lo - pad)..(hi + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(format!("hours from {} UTC", format_ts(g.end())))
        .y_desc("value")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    let band = |lo: &[f64], hi: &[f64]| -> Vec<(f64, f64)> {
        let mut poly: Vec<(f64, f64)> = (0..lo.len()).map(|i| (fx(i), hi[i])).collect();
        poly.extend((0..lo.len()).rev().map(|i| (fx(i), lo[i])));
        poly
    };
    chart
        .draw_series(std::iter::once(Polygon::new(
            band(&b.lo95, &b.hi95),
            BLUE.mix(0.12),
        )))
        .map_err(|e| err(&e))?
        .label("95% interval")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], BLUE.mix(0.12).filled()));
    chart
        .draw_series(std::iter::once(Polygon::new(
            band(&b.lo80, &b.hi80),
            BLUE.mix(0.25),
        )))
        .map_err(|e| err(&e))?
        .label("80% interval")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], BLUE.mix(0.25).filled()));
    chart
        .draw_series(LineSeries::new(hist, BLACK.stroke_width(1)))
        .map_err(|e| err(&e))?
        .label("history")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
    chart
        .draw_series(LineSeries::new(
            (0..b.len()).map(|i| (fx(i), b.p50[i])),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("forecast (p50)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(2)));
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct EvalForecastArgs {
    /// A directory in the NAB layout: every `DIR/data/**/*.csv` is a series.
    pub dir: PathBuf,
    /// Forecast horizon of each backtest origin.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub horizon: Duration,
    /// Backtest origins per series (one per horizon, ending at the series' end).
    #[arg(long, default_value_t = 48)]
    pub origins: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ymera eval forecast DIR`: a rolling-origin backtest of every series; MASE of our
/// forecaster and of seasonal naive (both scaled by the one-day-back naive MAE).
pub async fn eval_forecast(args: EvalForecastArgs) -> u8 {
    let result = tokio::task::spawn_blocking(move || eval_forecast_blocking(&args)).await;
    match result {
        Ok(Ok(text)) => {
            print!("{text}");
            crate::EXIT_OK
        }
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            crate::EXIT_FAILURE
        }
        Err(e) => {
            eprintln!("error: the evaluation task failed: {e}");
            crate::EXIT_FAILURE
        }
    }
}

fn eval_forecast_blocking(args: &EvalForecastArgs) -> Result<String, String> {
    let data = args.dir.join("data");
    let root = if data.is_dir() {
        data
    } else {
        args.dir.clone()
    };
    let files = ymera_common::series::csv_files(&root).map_err(|e| e.to_string())?;
    if files.is_empty() {
        return Err(format!("no CSV files under {}", root.display()));
    }
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    let (mut log_rel, mut counted) = (0.0, 0usize);
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        let t = Instant::now();
        let res = read_csv(f)
            .and_then(|s| regularize(&s, None))
            .map_err(|e| e.to_string())
            .and_then(|g| {
                let h = ((args.horizon.as_secs() as i64 / g.step).max(1)) as usize;
                forecast::backtest(&g.values, g.per_day(), h, args.origins, 15 * g.per_day())
                    .map(|b| (g, b))
                    .map_err(|e| e.to_string())
            });
        let secs = t.elapsed().as_secs_f64();
        match res {
            Ok((g, b)) => {
                if b.relative_mase.is_finite() && b.relative_mase > 0.0 {
                    log_rel += b.relative_mase.ln();
                    counted += 1;
                }
                rows.push(format!(
                    "{rel:<58} {:>6} {:>8.3} {:>8.3} {:>7.3} {:>7.1} {:>6.0}% {:>6.0}% {:>6.2}s  {}",
                    g.values.len(),
                    b.model.mase,
                    b.seasonal_naive.mase,
                    b.relative_mase,
                    b.model.smape,
                    b.model.coverage80 * 100.0,
                    b.model.coverage95 * 100.0,
                    secs,
                    forecast::plan(g.values.len(), g.per_day()).model,
                ));
                json_rows.push(serde_json::json!({
                    "series": rel, "points": g.values.len(), "mase": b.model.mase,
                    "seasonal_naive_mase": b.seasonal_naive.mase, "relative_mase": b.relative_mase,
                    "smape": b.model.smape, "coverage80": b.model.coverage80,
                    "coverage95": b.model.coverage95, "origins": b.origins, "seconds": secs,
                }));
            }
            Err(e) => {
                rows.push(format!("{rel:<58} error: {e}"));
                json_rows.push(serde_json::json!({"series": rel, "error": e}));
            }
        }
    }
    let geo = if counted > 0 {
        (log_rel / counted as f64).exp()
    } else {
        f64::NAN
    };
    if args.json {
        return Ok(format!(
            "{}\n",
            serde_json::json!({"series": json_rows, "geometric_mean_relative_mase": geo})
        ));
    }
    let mut out = format!(
        "{:<58} {:>6} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7}  model\n",
        "series", "points", "MASE", "snaive", "rel", "sMAPE", "cov80", "cov95", "time"
    );
    for r in rows {
        out.push_str(&r);
        out.push('\n');
    }
    out.push_str(&format!(
        "{} series; geometric mean of MASE / seasonal-naive MASE: {geo:.3} (< 1: ours is better)\n",
        files.len()
    ));
    Ok(out)
}

/// MSTL + AutoETS as the scaling simulator's forecaster: provisions for the 0.9 quantile
/// (hi80, KEDA's default `q`), refitted every `refit` grid steps on the newest
/// `window` points (the server refits every step; a coarser cadence keeps replays of
/// long series fast).
pub struct MstlForecaster {
    pub refit: usize,
    pub window: usize,
    cached: Option<(usize, Vec<f64>)>,
    pub fits: usize,
}

impl MstlForecaster {
    pub fn new(refit: usize, window: usize) -> MstlForecaster {
        MstlForecaster {
            refit: refit.max(1),
            window,
            cached: None,
            fits: 0,
        }
    }
}

impl LoadForecaster for MstlForecaster {
    fn forecast(&mut self, _start: i64, step: i64, history: &[f64], horizon: usize) -> Vec<f64> {
        let n = history.len();
        if let Some((at, f)) = &self.cached
            && n >= *at
            && n - at < self.refit
            && f.len() >= n - at + horizon
        {
            return f[n - at..n - at + horizon].to_vec();
        }
        let per_day = ((86_400 / step.max(1)) as usize).max(1);
        let tail = &history[n.saturating_sub(self.window)..];
        let want = horizon + self.refit;
        self.fits += 1;
        match forecast::fit_forecast(tail, per_day, want) {
            Ok(f) => {
                let hi = f.bands.hi80;
                let out = hi[..horizon.min(hi.len())].to_vec();
                self.cached = Some((n, hi));
                out
            }
            Err(_) => Vec::new(),
        }
    }
    fn name(&self) -> &str {
        "mstl+autoets (hi80)"
    }
}

/// `ymera bench --forecast DIR`: reads every series first, then times fit + one-day
/// forecast of each on this thread (no I/O in the timing). Prints the total, the mean and
/// the slowest series, and a checksum of the forecasts so runs can be compared.
pub fn bench_forecast(dir: &Path) -> Result<String, String> {
    let data = dir.join("data");
    let root = if data.is_dir() {
        data
    } else {
        dir.to_path_buf()
    };
    let files = ymera_common::series::csv_files(&root).map_err(|e| e.to_string())?;
    if files.is_empty() {
        return Err(format!("no CSV files under {}", root.display()));
    }
    let grids = files
        .iter()
        .map(|f| {
            read_csv(f)
                .and_then(|s| regularize(&s, None))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let t = Instant::now();
    let (mut slowest, mut checksum, mut points) = (0.0f64, 0.0, 0usize);
    let mut models: std::collections::BTreeMap<String, usize> = Default::default();
    for g in &grids {
        let ts = Instant::now();
        let f = forecast::fit_forecast(&g.values, g.per_day(), g.per_day())
            .map_err(|e| e.to_string())?;
        slowest = slowest.max(ts.elapsed().as_secs_f64());
        checksum += f.bands.p50.iter().sum::<f64>();
        points += g.values.len();
        *models.entry(f.plan.model).or_default() += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(format!(
        "fit + 1-day forecast of {} series ({} points in all; models {:?}): {:.2} s, {:.1} ms per series, slowest {:.1} ms; p50 checksum {:.3}\n",
        grids.len(),
        points,
        models,
        secs,
        secs * 1000.0 / grids.len() as f64,
        slowest * 1000.0,
        checksum
    ))
}

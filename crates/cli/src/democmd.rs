//! `ymera demo`: the whole loop on generated data, in one process and in any directory —
//! events into an embedded broker, the pipelines into the lake and the warehouse, the
//! risk, effort and segment models trained and promoted, `ymera serve` answering a
//! prediction with its explanation and listing the detector's alert, and a load forecast
//! with its plot. `ymera demo --write-examples DIR` hands the built-in examples out.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use ymera_ingest::embedded;
use ymera_ingest::generator::{self, Event, Incident, IncidentKind};
use ymera_pipeline::{Pipeline, check, load_file};
use ymera_serve::client::ApiClient;
use ymera_warehouse::Warehouse;

use crate::commands::{
    env_lookup, gen_config, open_lake, pipeline_files, produce_events, run_pipelines,
};
use crate::settings::Settings;
use crate::{EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};

/// Days of project history the models learn from, and the projects in it: enough finished
/// projects for the gates of `models/*.yaml` (the model quality tests use the same world).
const PROJECT_DAYS: u32 = 365;
const PROJECTS: usize = 600;
const SEED: u64 = 42;
/// The models the demo trains, from `models/NAME.yaml`.
const MODELS: [&str; 3] = ["risk", "effort", "segments"];
/// Where the demo writes its forecast, plot and agent key.
const OUT_DIR: &str = "demo";
/// The instance the demo asks the risk model about (the Manager Agent's question: will
/// this project, a third into its plan, miss its deadline?).
const RISK_INSTANCE: &str =
    r#"{"burn_rate": 1.15, "schedule_slip": 0.04, "scope_changes": 1, "churn": 1, "team_size": 6}"#;

/// `ymera demo` options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Days of service metrics, ending now.
    pub days: u32,
    /// Pipelines to run instead of `pipelines/` or the built-in ones.
    pub pipelines: Option<PathBuf>,
    /// Leave `ymera serve` running on the demo's data until SIGINT/SIGTERM.
    pub keep_serving: bool,
}

/// A step that failed: the exit code and what to print.
struct Failed(u8, String);

type Step<T> = Result<T, Failed>;

fn failed(e: impl std::fmt::Display) -> Failed {
    Failed(EXIT_FAILURE, e.to_string())
}

/// `ymera demo --write-examples DIR`
pub fn write_examples(dir: &Path) -> u8 {
    match crate::examples::write(dir) {
        Ok(paths) => {
            for p in &paths {
                println!("wrote {}", p.display());
            }
            println!(
                "next: cd {} && ymera demo (runs these pipelines and trains these models), ymera validate pipelines/*.yaml, ymera train models/risk.yaml",
                dir.display()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

/// The example files the demo falls back on, written to a directory of this process that
/// is removed when dropped.
struct BuiltInExamples(PathBuf);

impl BuiltInExamples {
    fn write() -> Result<BuiltInExamples, String> {
        let dir = std::env::temp_dir().join(format!("ymera-demo-examples-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::examples::write(&dir)?;
        Ok(BuiltInExamples(dir))
    }
}

impl Drop for BuiltInExamples {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where the demo's pipelines, training specs and migrations come from: the given
/// pipelines directory, else `pipelines/` when it exists, else the examples built into the
/// binary; `models/` likewise; the built-in migrations when `warehouse.migrations` is not a
/// directory here.
struct Sources {
    settings: Settings,
    pipelines: PathBuf,
    models: PathBuf,
    _built_in: Option<BuiltInExamples>,
}

impl Sources {
    fn resolve(settings: &Settings, pipelines: Option<&Path>) -> Step<Sources> {
        let (default_pipelines, default_models) = (Path::new("pipelines"), Path::new("models"));
        let pipelines_missing = pipelines.is_none() && !default_pipelines.is_dir();
        let models_missing = !default_models.is_dir();
        let migrations_missing = !settings.warehouse.migrations.is_dir();
        let built_in = if pipelines_missing || models_missing || migrations_missing {
            Some(BuiltInExamples::write().map_err(failed)?)
        } else {
            None
        };
        let from_binary = |dir: &str| built_in.as_ref().map(|b| b.0.join(dir));
        let mut settings = settings.clone();
        if migrations_missing && let Some(d) = from_binary("sql/migrations") {
            settings.warehouse.migrations = d;
        }
        let pipelines = match (pipelines, pipelines_missing) {
            (Some(d), _) => d.to_path_buf(),
            (None, true) => {
                println!(
                    "== no pipelines/ here: running the example pipelines built into ymera \
                     (`ymera demo --write-examples DIR` writes them out)"
                );
                from_binary("pipelines").unwrap_or_default()
            }
            (None, false) => default_pipelines.to_path_buf(),
        };
        let models = match models_missing {
            true => from_binary("models").unwrap_or_default(),
            false => default_models.to_path_buf(),
        };
        Ok(Sources {
            settings,
            pipelines,
            models,
            _built_in: built_in,
        })
    }
}

/// `ymera demo`.
pub async fn demo(settings: &Settings, opts: DemoOptions) -> u8 {
    match run(settings, &opts).await {
        Ok(()) => EXIT_OK,
        Err(Failed(code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

async fn run(settings: &Settings, opts: &DemoOptions) -> Step<()> {
    let sources = Sources::resolve(settings, opts.pipelines.as_deref())?;
    let settings = &sources.settings;
    let pipelines = load_pipelines(&sources.pipelines).await?;
    let mut laps = Laps::new();
    let brokers = embedded::bootstrap_servers().map_err(failed)?;
    let incidents = generate_and_produce(&brokers, opts.days).await?;
    laps.mark("events");
    run_demo_pipelines(settings, pipelines).await?;
    laps.mark("pipelines");
    let champions = train_and_promote(settings, &sources.models).await?;
    laps.mark("training");
    std::fs::create_dir_all(OUT_DIR)
        .map_err(|e| failed(format!("cannot create {OUT_DIR}/: {e}")))?;
    forecast(settings).await?;
    laps.mark("forecast");

    let listen = if opts.keep_serving {
        settings.serve.listen.clone()
    } else {
        "127.0.0.1:0".to_string()
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| failed(format!("cannot listen on {listen} (serve.listen): {e}")))?;
    let addr = listener.local_addr().map_err(failed)?;
    let token = CancellationToken::new();
    let server = {
        let (settings, token) = (settings.clone(), token.clone());
        tokio::spawn(async move { crate::modelscmd::serve_on(&settings, listener, token).await })
    };
    let served = ask_the_server(settings, &format!("http://{addr}"), &champions, &incidents).await;
    laps.mark("serving");
    if served.is_err() || !opts.keep_serving {
        token.cancel();
        let _ = server.await;
        served?;
        print_next_steps(settings, &settings.serve.listen, &laps);
        return Ok(());
    }
    print_next_steps(settings, &addr.to_string(), &laps);
    println!("== ymera serve keeps serving on http://{addr} (Ctrl-C stops it)");
    crate::commands::on_signals(token);
    match server.await {
        Ok(EXIT_OK) => Ok(()),
        Ok(code) => Err(Failed(code, "ymera serve stopped".into())),
        Err(e) => Err(failed(format!("the server task failed: {e}"))),
    }
}

async fn load_pipelines(dir: &Path) -> Step<Vec<Pipeline>> {
    // the demo process points every pipeline at its own embedded broker
    let lookup = |var: &str| {
        if var == "YMERA_BROKERS" {
            Some("embedded".to_string())
        } else {
            env_lookup(var)
        }
    };
    let files = pipeline_files(&[dir.to_path_buf()]).map_err(|e| Failed(EXIT_CONFIG, e))?;
    let mut pipelines = Vec::new();
    for f in files {
        let mut loaded = load_file(&f, Some(&lookup));
        match check(&mut loaded).await {
            Some(p) => pipelines.push(p),
            None => {
                let all: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
                return Err(Failed(EXIT_CONFIG, all.join("\n")));
            }
        }
    }
    Ok(pipelines)
}

/// A year of projects, tasks and users and `days` of service metrics, both ending now,
/// into the embedded broker. Returns the incidents the generator put into the metrics.
async fn generate_and_produce(brokers: &str, days: u32) -> Step<Vec<Incident>> {
    let mut projects = gen_config(PROJECT_DAYS, SEED, PROJECTS, "live").map_err(failed)?;
    projects.services.clear();
    let metrics = metrics_config(days)?;
    let incidents = generator::incidents(&metrics);
    println!(
        "== generating {PROJECT_DAYS} days of {PROJECTS} projects (seed {SEED}) and {} days of metrics of {} (seed {}), up to now",
        metrics.days,
        metrics.services.join(", "),
        metrics.seed
    );
    for i in &incidents {
        println!(
            "   injected: {} on {} ({}) from {} for {} min",
            i.kind.as_str(),
            i.service,
            i.metric,
            generator_time(i.start_micros),
            (i.end_micros - i.start_micros) / 60_000_000
        );
    }
    let events = tokio::task::spawn_blocking(move || {
        let mut all: Vec<Event> = generator::generate(&projects);
        all.extend(generator::generate(&metrics));
        generator::sort_events(&mut all);
        all
    })
    .await
    .map_err(|e| failed(format!("the generator failed: {e}")))?;
    let per_topic = produce_events(brokers, &events, 4).await.map_err(failed)?;
    for (t, n) in per_topic {
        println!("   {t:<16} {n:>7} events");
    }
    Ok(incidents)
}

/// The metrics' config: the first seed from [`SEED`] on whose incident plan has a traffic
/// spike of at least ten minutes after the detectors' first day (their warm-up and first
/// seasonal fit), so the alert step has something to find. Incidents are placed relative
/// to the window's start, so the plan does not depend on the time of day.
fn metrics_config(days: u32) -> Step<generator::GenConfig> {
    let days = days.max(2);
    for seed in SEED..SEED + 1000 {
        let cfg = gen_config(days, seed, 0, "live").map_err(failed)?;
        let start = cfg.start.timestamp_micros();
        let clear_spike = generator::incidents(&cfg).iter().any(|i| {
            i.kind == IncidentKind::Spike
                && i.start_micros >= start + 86_400_000_000
                && i.end_micros - i.start_micros >= 10 * 60_000_000
        });
        if clear_spike {
            return Ok(cfg);
        }
    }
    Err(failed(format!(
        "no metrics seed from {SEED} on plans a traffic spike in {days} days (internal error: this is a bug)"
    )))
}

async fn run_demo_pipelines(settings: &Settings, pipelines: Vec<Pipeline>) -> Step<()> {
    // The embedded broker lives and dies with this process, so a previous demo's output
    // (and its commit log, which would point past the new broker's logs) is replaced.
    match clear_previous_demo(settings, &pipelines).await {
        Ok(0) => {}
        Ok(n) => println!(
            "   replaced the previous demo output ({n} files) in {}",
            settings.lake.url
        ),
        Err(e) => {
            return Err(failed(format!(
                "cannot clear the previous demo output: {e}"
            )));
        }
    }
    println!(
        "== running {} pipelines into {} and {}",
        pipelines.len(),
        settings.lake.url,
        settings.warehouse.url
    );
    let results = run_pipelines(
        settings,
        pipelines,
        Some(Duration::from_secs(3)),
        false,
        true,
    )
    .await
    .map_err(failed)?;
    println!(
        "   {:<16} {:>10} {:>8} {:>10} {:>10} {:>8}",
        "pipeline", "records", "files", "lake rows", "warehouse", "dlq"
    );
    for (name, s) in &results {
        let rows: u64 = s
            .rows_written
            .iter()
            .filter(|(t, _)| !t.starts_with("_dlq") && *t != "warehouse")
            .map(|(_, r)| r)
            .sum();
        let wh = s.rows_written.get("warehouse").copied().unwrap_or(0);
        println!(
            "   {:<16} {:>10} {:>8} {:>10} {:>10} {:>8}",
            name, s.records_in, s.files_written, rows, wh, s.dead_lettered
        );
    }
    let query = "SELECT service, count(*) AS points, round(avg(requests_per_s), 1) AS avg_rps, \
                 round(max(latency_p95_ms), 1) AS max_p95_ms, sum(CAST(latency_skewed AS INT)) AS skewed_minutes \
                 FROM metric_events GROUP BY service ORDER BY service";
    println!("== ymera sql \"{query}\"");
    let format = crate::sqlcmd::Format::Table;
    match crate::sqlcmd::sql(settings, Some(query.to_string()), format, None).await {
        EXIT_OK => Ok(()),
        code => Err(Failed(code, "the demo's query failed".into())),
    }
}

/// Trains every model of [`MODELS`] from the lake and moves its `champion` alias to the
/// new version. A version that fails its gate fails the demo: the gates are the specs'
/// own, and the demo's data is made to pass them. Returns (model, version) pairs.
async fn train_and_promote(settings: &Settings, models: &Path) -> Step<Vec<(String, String)>> {
    println!(
        "== training {} from the lake ({})",
        MODELS.join(", "),
        models.display()
    );
    let mut champions = Vec::new();
    for name in MODELS {
        let spec = models.join(format!("{name}.yaml"));
        let m = crate::modelscmd::train_spec(settings, &spec)
            .await
            .map_err(|code| Failed(code, format!("training {}", spec.display())))?;
        let metrics: Vec<String> = m
            .metrics
            .iter()
            .filter(|(k, _)| m.gate.iter().any(|g| &g.threshold.metric == *k))
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect();
        println!(
            "   {}/{}: {} on {} rows, {}; gate {}",
            m.name,
            m.version,
            m.algorithm,
            m.lineage.rows,
            metrics.join(", "),
            if m.gate_passed { "passed" } else { "FAILED" }
        );
        if !m.gate_passed {
            return Err(failed(format!(
                "{}/{} failed its gate ({}): the demo's data should pass the gates of {}",
                m.name,
                m.version,
                crate::modelscmd::gate_text(&m),
                spec.display()
            )));
        }
        print!("   ");
        let code = crate::modelscmd::promote(settings, &m.name, &m.version, "champion", None).await;
        if code != EXIT_OK {
            return Err(Failed(code, format!("promoting {}/{}", m.name, m.version)));
        }
        champions.push((m.name.clone(), m.version.clone()));
    }
    Ok(champions)
}

/// `ymera forecast --service api --horizon 1h`, written to `demo/forecast-api.csv` and
/// plotted to `demo/forecast-api.png`.
async fn forecast(settings: &Settings) -> Step<()> {
    println!(
        "== ymera forecast --service api --horizon 1h --output {OUT_DIR}/forecast-api.csv --plot {OUT_DIR}/forecast-api.png"
    );
    let args = crate::forecastcmd::ForecastArgs {
        service: Some("api".into()),
        metric: "rps".into(),
        input: None,
        horizon: Duration::from_secs(3600),
        step: None,
        window: Duration::from_secs(15 * 86_400),
        output: Some(Path::new(OUT_DIR).join("forecast-api.csv")),
        plot: Some(Path::new(OUT_DIR).join("forecast-api.png")),
    };
    match crate::forecastcmd::forecast_cmd(settings, args).await {
        EXIT_OK => Ok(()),
        code => Err(Failed(code, "the forecast failed".into())),
    }
}

/// Asks the in-process server what the Manager Agent would: a risk prediction with its
/// explanation, and the open alerts (one of which the detector raised on an incident the
/// generator injected).
async fn ask_the_server(
    settings: &Settings,
    base: &str,
    champions: &[(String, String)],
    incidents: &[Incident],
) -> Step<()> {
    let key = agent_key(settings).await?;
    let client = ApiClient::new(base, &key, Duration::from_secs(30)).map_err(failed)?;
    client
        .wait_ready(Duration::from_secs(60))
        .await
        .map_err(failed)?;
    println!("== ymera serve on {base}: POST /v1/models/risk:predict (explain)");
    let body: Value = serde_json::from_str(&format!(
        r#"{{"instances": [{RISK_INSTANCE}], "explain": true}}"#
    ))
    .map_err(failed)?;
    let answer = client
        .post("/v1/models/risk:predict", &body)
        .await
        .map_err(failed)?;
    let version = answer["model_version"].as_str().unwrap_or("?");
    let risk_champion = champions
        .iter()
        .find(|(n, _)| n == "risk")
        .map(|(_, v)| v.as_str());
    if Some(version) != risk_champion {
        return Err(failed(format!(
            "the server answered with risk/{version}, not the champion just promoted ({risk_champion:?})"
        )));
    }
    let p = &answer["predictions"][0];
    println!(
        "   risk/{version}: probability {:.3} of missing the deadline (label {}), for {RISK_INSTANCE}",
        p["probability"].as_f64().unwrap_or(f64::NAN),
        p["label"]
    );
    if let Some(top) = p["top_features"].as_array() {
        let parts: Vec<String> = top
            .iter()
            .filter_map(|f| Some(format!("{} {:+.3}", f[0].as_str()?, f[1].as_f64()?)))
            .collect();
        println!(
            "   why: base {:+.3}, {} (log-odds contributions)",
            p["base_score"].as_f64().unwrap_or(f64::NAN),
            parts.join(", ")
        );
    }

    println!("== GET /v1/alerts?state=open");
    let listed = client.get("/v1/alerts?state=open").await.map_err(failed)?;
    let alerts = listed["alerts"].as_array().cloned().unwrap_or_default();
    let injected: Vec<&Incident> = incidents
        .iter()
        .filter(|i| i.metric == "requests_per_s")
        .collect();
    println!(
        "   the generator injected {} traffic incidents; the detector opened {} alerts",
        injected.len(),
        alerts.len()
    );
    for a in &alerts {
        let opened = a["opened_at"].as_str().unwrap_or("");
        let cause = injected
            .iter()
            .find(|i| explains(i, a["key"].as_str().unwrap_or(""), opened))
            .map_or("no injected incident".to_string(), |i| {
                format!(
                    "the injected {} from {}",
                    i.kind.as_str(),
                    generator_time(i.start_micros)
                )
            });
        println!(
            "   {} {:<8} opened {} closed {} peak {:.2} — {cause}",
            a["alert_id"].as_str().unwrap_or(""),
            a["key"].as_str().unwrap_or(""),
            opened,
            a["closed_at"].as_str().unwrap_or("(still open)"),
            a["peak_score"].as_f64().unwrap_or(0.0),
        );
    }
    if alerts.is_empty() {
        return Err(failed(
            "the detector raised no alert on the generated metrics (see GET /v1/alerts and the metric_anomalies table)",
        ));
    }
    Ok(())
}

/// Whether an alert on `service` opened at `opened` (RFC 3339) lies in the incident or
/// within the alert rule's delay after it.
fn explains(i: &Incident, service: &str, opened: &str) -> bool {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(opened) else {
        return false;
    };
    let us = t.timestamp_micros();
    i.service == service && us >= i.start_micros && us <= i.end_micros + 30 * 60_000_000
}

fn generator_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// A new `agent` key for the demo's requests, kept in `demo/agent.key` (0600) for the
/// commands it prints.
async fn agent_key(settings: &Settings) -> Step<String> {
    let (id, key, _) = crate::keyscmd::create_key(settings, ymera_serve::auth::Role::Agent, "demo")
        .await
        .map_err(|code| Failed(code, "creating the demo's agent key".into()))?;
    let path = Path::new(OUT_DIR).join("agent.key");
    write_private(&path, &key)
        .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
    println!(
        "   created the agent key {id} for the demo's requests ({})",
        path.display()
    );
    Ok(key)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// How long each step took.
struct Laps {
    started: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn new() -> Laps {
        let now = Instant::now();
        Laps {
            started: now,
            last: now,
            steps: Vec::new(),
        }
    }

    fn mark(&mut self, step: &'static str) {
        let now = Instant::now();
        self.steps.push((step, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} s (", self.started.elapsed().as_secs_f64())?;
        for (i, (step, d)) in self.steps.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{step} {:.1}", d.as_secs_f64())?;
        }
        write!(f, ")")
    }
}

fn print_next_steps(settings: &Settings, listen: &str, laps: &Laps) {
    let base = format!("http://{listen}");
    let auth = format!("-H \"Authorization: Bearer $(cat {OUT_DIR}/agent.key)\"");
    let predict = json!({"instances": [serde_json::from_str::<Value>(RISK_INSTANCE).unwrap_or(Value::Null)], "explain": true});
    println!("== done in {laps}. Poke at each part:");
    println!(
        "   ymera sql \"SELECT service, count(*) FROM metric_events GROUP BY service\"   # lake and warehouse ({}, {})",
        settings.lake.url, settings.warehouse.url
    );
    println!("   ymera sql \"SELECT * FROM anomaly_alerts\"");
    println!("   ymera models list; ymera models show risk");
    println!(
        "   ymera train models/risk.yaml   # after `ymera demo --write-examples .` in an empty directory"
    );
    println!("   ymera serve   # or `ymera demo --keep-serving`; then:");
    println!(
        "   curl -s {auth} -H 'Content-Type: application/json' -d '{predict}' {base}/v1/models/risk:predict"
    );
    println!("   curl -s {auth} {base}/v1/alerts");
    println!(
        "   curl -s -X POST {auth} -d '{{\"note\": \"looking\"}}' {base}/v1/alerts/ALERT_ID/acknowledge"
    );
    println!("   curl -s {base}/openapi.json");
    println!("   ymera forecast --service api --horizon 2h --plot {OUT_DIR}/forecast-api.png");
}

/// Deletes what the demo pipelines wrote in an earlier demo: their tables (Delta logs
/// included), DLQ tables and detector checkpoints. Returns how many objects were removed.
async fn clear_previous_demo(settings: &Settings, pipelines: &[Pipeline]) -> Result<usize, String> {
    let lake = open_lake(settings)?;
    let mut removed = 0;
    for p in pipelines {
        let mut prefixes = p.tables();
        // anomaly detectors' checkpoints hold offsets of the old broker too
        prefixes.push(ymera_pipeline::checkpoint::state_dir(&p.spec.name));
        for prefix in prefixes {
            for path in lake.list(&prefix).await.map_err(|e| e.to_string())? {
                lake.delete(&path).await.map_err(|e| e.to_string())?;
                removed += 1;
            }
        }
    }
    if pipelines.iter().any(|p| !p.warehouse_sinks.is_empty()) {
        let wh = Warehouse::connect(settings.warehouse.url.expose())
            .await
            .map_err(|e| e.to_string())?;
        for p in pipelines {
            let tables: Vec<String> = p.warehouse_sinks.iter().map(|s| s.table.clone()).collect();
            wh.reset(&p.spec.name, &tables)
                .await
                .map_err(|e| e.to_string())?;
        }
        wh.close().await;
    }
    Ok(removed)
}

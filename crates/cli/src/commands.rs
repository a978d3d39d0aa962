//! The subcommands that drive pipelines: validate, test, run, demo, gen.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use ymera_common::Secret;
use ymera_common::health::Health;
use ymera_ingest::generator::{self, GenConfig};
use ymera_ingest::{embedded, produce};
use ymera_lake::Lake;
use ymera_pipeline::run::{RunOptions, RunStats};
use ymera_pipeline::{Diagnostic, Pipeline, check, check_warehouse, load_file};
use ymera_warehouse::Warehouse;

use crate::settings::Settings;
use crate::{EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};

/// JSON logs when stderr is not a terminal (or `log.format: json`), text otherwise; with
/// `log.otlp_endpoint`, spans also go out as OpenTelemetry traces (one per HTTP request of
/// `ymera serve`, one per segment publication of `ymera run`). Call it outside the async
/// runtime (the exporter's blocking HTTP client must not be made or dropped on it), and
/// shut the returned provider down the same way: that flushes the last spans.
pub fn init_logging(settings: &Settings) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let mut level = settings.log.level.clone().unwrap_or_else(|| "info".into());
    // the Delta kernel and delta-rs log every snapshot they build at info, with the whole
    // log segment: warnings only, unless the level names them
    if !level.contains("kernel") && !level.contains("deltalake") {
        level.push_str(",buoyant_kernel=warn,deltalake_core=warn");
    }
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.log.format.as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let provider = settings.log.otlp_endpoint.as_deref().and_then(|url| {
        tracer_provider(url)
            .map_err(|e| eprintln!("warning: log.otlp_endpoint {url}: {e}; no traces are exported"))
            .ok()
    });
    // spans at info and above are traced whatever `log.level` keeps of the log lines
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("ymera"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let registry = tracing_subscriber::registry().with(otel);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = if json {
        registry
            .with(fmt.json().flatten_event(true).with_filter(filter))
            .try_init()
    } else {
        registry.with(fmt.compact().with_filter(filter)).try_init()
    };
    provider
}

/// The OTLP/HTTP (JSON) exporter to `endpoint` behind the SDK's batch processor, and W3C
/// trace context as the propagator (`traceparent` in and out).
fn tracer_provider(endpoint: &str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err("an http:// or https:// URL of a collector's traces endpoint".into());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("ymera")
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Every pipeline file named by `paths`: files as given, directories' `*.yaml`/`*.yml`.
pub(crate) fn pipeline_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            files.extend(found);
        } else if p.exists() {
            files.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    if files.is_empty() {
        return Err("no pipeline files (*.yaml) found".into());
    }
    Ok(files)
}

/// Opens `lake.url`, with S3 credentials from the standard `AWS_*` environment variables.
pub fn open_lake(settings: &Settings) -> Result<Lake, String> {
    Lake::open_with(&settings.lake.url, &s3_settings())
        .map(|l| l.with_checkpoint_interval(settings.lake.checkpoint_interval))
        .map_err(|e| e.to_string())
}

/// object_store S3 settings from the standard `AWS_*` environment variables.
pub fn s3_settings() -> Vec<(String, Secret)> {
    const AWS: &[&str] = &[
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT",
        "AWS_ENDPOINT_URL",
        "AWS_ALLOW_HTTP",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
    ];
    let s3: Vec<(String, Secret)> = AWS
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_ascii_lowercase(), v)))
        .map(|(k, v)| {
            (
                if k == "aws_endpoint_url" {
                    "aws_endpoint".to_string()
                } else if k == "aws_default_region" {
                    "aws_region".to_string()
                } else {
                    k
                },
                Secret::new(v),
            )
        })
        .collect();
    s3
}

/// Connects to `warehouse.url`, retrying external failures with backoff (readiness names
/// the warehouse meanwhile) until it answers or `shutdown`.
pub async fn connect_warehouse(
    settings: &Settings,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<Warehouse, String> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match Warehouse::connect(settings.warehouse.url.expose()).await {
            Ok(wh) => {
                health.set("warehouse", None);
                return Ok(wh);
            }
            Err(e) if e.class().retry() == ymera_common::Retry::Yes => {
                warn!(error = %e, retry_in = ?backoff, "warehouse unreachable; retrying");
                health.set("warehouse", Some(e.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return Err(e.to_string()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Applies pending migrations and prints what it applied.
pub async fn migrate(wh: &Warehouse, settings: &Settings) -> Result<(), String> {
    let dir = &settings.warehouse.migrations;
    if !dir.is_dir() {
        return Err(format!(
            "warehouse.migrations: {} is not a directory",
            dir.display()
        ));
    }
    let applied = wh.migrate(dir).await.map_err(|e| e.to_string())?;
    for (version, name) in &applied {
        println!("applied migration {version} {name} to {}", wh.url());
    }
    if applied.is_empty() {
        info!(warehouse = wh.url(), "migrations up to date");
    }
    Ok(())
}

/// `ymera warehouse migrate`
pub async fn warehouse_migrate(settings: &Settings) -> u8 {
    let result = async {
        let wh = Warehouse::connect(settings.warehouse.url.expose())
            .await
            .map_err(|e| e.to_string())?;
        migrate(&wh, settings).await?;
        println!("warehouse {} is up to date", wh.url());
        wh.close().await;
        Ok::<(), String>(())
    }
    .await;
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

/// Each lake sink checked against its table when the table exists: a column of another type
/// or other partition columns is an error at the sink; columns the table will gain are a
/// warning (schema evolution). An unreachable lake is a warning: the check is skipped.
async fn lake_diagnostics(
    settings: &Settings,
    pipelines: &[Pipeline],
) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let lake = match open_lake(settings) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("warning: lake tables not checked: {e}");
            return (errors, warnings);
        }
    };
    for p in pipelines {
        for s in &p.sinks {
            let at = format!("{} ({})", s.path, s.table.table);
            match ymera_lake::delta::check_table_schema(&lake, &s.table).await {
                Ok(added) if added.is_empty() => {}
                Ok(added) => warnings.push(p.diagnostic(
                    s.at,
                    &at,
                    format!(
                        "table `{}` in the lake gains the nullable column(s) {} with the next commit (its older rows read them as null)",
                        s.table.table,
                        added.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                    ),
                )),
                Err(e) if e.class() == ymera_common::ErrorClass::User => {
                    errors.push(p.diagnostic(s.at, &at, e.to_string()))
                }
                Err(e) => {
                    eprintln!("warning: lake table `{}` not checked: {e}", s.table.table);
                }
            }
        }
    }
    (errors, warnings)
}

/// Checks every warehouse sink against its table; the database is the configured one, or
/// with `offline` an in-memory SQLite with the migrations applied.
async fn warehouse_diagnostics(
    settings: &Settings,
    pipelines: &[Pipeline],
    offline: bool,
) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
    let users: Vec<&Pipeline> = pipelines
        .iter()
        .filter(|p| !p.warehouse_sinks.is_empty())
        .collect();
    if users.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let opened = async {
        if offline {
            let dir = &settings.warehouse.migrations;
            if !dir.is_dir() {
                return Err(format!(
                    "warehouse.migrations: {} is not a directory (relative to {}); validate --no-environment checks warehouse sinks against the migrations",
                    dir.display(),
                    std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default()
                ));
            }
            let wh = Warehouse::connect("sqlite::memory:")
                .await
                .map_err(|e| e.to_string())?;
            wh.migrate(&settings.warehouse.migrations)
                .await
                .map_err(|e| format!("{e} (validate --no-environment checks warehouse sinks against the migrations)"))?;
            Ok::<Warehouse, String>(wh)
        } else {
            Warehouse::connect(settings.warehouse.url.expose())
                .await
                .map_err(|e| e.to_string())
        }
    }
    .await;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    match opened {
        Ok(wh) => {
            for p in users {
                let (e, w) = check_warehouse(p, &wh).await;
                errors.extend(e);
                warnings.extend(w);
            }
            wh.close().await;
        }
        Err(message) => {
            for p in users {
                errors.push(p.at_warehouse_sink(&p.warehouse_sinks[0], message.clone()));
            }
        }
    }
    (errors, warnings)
}

pub(crate) fn env_lookup(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// Loads and checks every pipeline; returns them with all diagnostics.
pub async fn load_pipelines(
    paths: &[PathBuf],
    environment: bool,
) -> Result<(Vec<Pipeline>, Vec<Diagnostic>), String> {
    load_pipelines_with_warnings(paths, environment)
        .await
        .map(|(p, d, _)| (p, d))
}

/// Like [`load_pipelines`], also returning the warnings.
pub async fn load_pipelines_with_warnings(
    paths: &[PathBuf],
    environment: bool,
) -> Result<(Vec<Pipeline>, Vec<Diagnostic>, Vec<Diagnostic>), String> {
    let files = pipeline_files(paths)?;
    let mut pipelines = Vec::new();
    let mut diags = Vec::new();
    let mut warnings = Vec::new();
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut tables: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut wh_tables: BTreeMap<String, PathBuf> = BTreeMap::new();
    for f in files {
        let env: ymera_pipeline::load::Env<'_> = if environment { Some(&env_lookup) } else { None };
        let mut loaded = load_file(&f, env);
        let checked = check(&mut loaded).await;
        if let Some(p) = checked {
            let mut clash = false;
            if let Some(other) = names.insert(p.spec.name.clone(), f.clone()) {
                loaded.error_at(
                    "name",
                    format!(
                        "pipeline name `{}` is also used by {}",
                        p.spec.name,
                        other.display()
                    ),
                );
                clash = true;
            }
            for (i, table) in p.tables().iter().enumerate() {
                if let Some(other) = tables.insert(table.clone(), f.clone()) {
                    let at = match p.sinks.get(i) {
                        Some(s) => s.path.clone(),
                        None => "dlq.path".into(),
                    };
                    loaded.error_at(
                        &at,
                        format!(
                            "table `{table}` is also written by {}: one table, one pipeline",
                            other.display()
                        ),
                    );
                    clash = true;
                }
            }
            for s in &p.warehouse_sinks {
                if let Some(other) = wh_tables.insert(s.table.clone(), f.clone()) {
                    loaded.diagnostics.push(p.at_warehouse_sink(
                        s,
                        format!(
                            "warehouse table `{}` is also written by {}: one table, one pipeline",
                            s.table,
                            other.display()
                        ),
                    ));
                    clash = true;
                }
            }
            if !clash {
                pipelines.push(p);
            }
        }
        diags.extend(loaded.diagnostics);
        warnings.extend(loaded.warnings);
    }
    Ok((pipelines, diags, warnings))
}

pub async fn validate(
    settings: &Settings,
    paths: &[PathBuf],
    no_environment: bool,
    deny_warnings: bool,
) -> u8 {
    let (pipelines, mut diags, mut warnings) =
        match load_pipelines_with_warnings(paths, !no_environment).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_CONFIG;
            }
        };
    if !no_environment && diags.is_empty() {
        // one check per distinct cluster (brokers + connection settings), reported at
        // every pipeline that uses it
        let mut checked: BTreeMap<(String, String), Result<(), String>> = BTreeMap::new();
        for p in &pipelines {
            let kafka = &p.spec.source.kafka;
            if kafka.brokers.trim() == "embedded" {
                continue;
            }
            let key = (kafka.brokers.clone(), format!("{:?}", kafka.client));
            if !checked.contains_key(&key) {
                let (brokers, client) = (kafka.brokers.clone(), kafka.client.clone());
                let reached = tokio::task::spawn_blocking(move || {
                    produce::check_brokers(&brokers, &client, Duration::from_secs(10))
                })
                .await;
                let outcome = match reached {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("brokers `{}` unreachable: {e}", kafka.brokers)),
                    Err(e) => Err(format!("internal: broker check failed: {e}")),
                };
                checked.insert(key.clone(), outcome);
            }
            if let Some(Err(message)) = checked.get(&key) {
                diags.push(p.diagnostic(p.brokers_at, "source.kafka.brokers", message.clone()));
            }
        }
    }
    if diags.is_empty() {
        let (e, w) = warehouse_diagnostics(settings, &pipelines, no_environment).await;
        diags.extend(e);
        warnings.extend(w);
    }
    if diags.is_empty() && !no_environment {
        let (e, w) = lake_diagnostics(settings, &pipelines).await;
        diags.extend(e);
        warnings.extend(w);
    }
    for w in &warnings {
        eprintln!("{}", w.as_warning());
    }
    if deny_warnings && !warnings.is_empty() && diags.is_empty() {
        eprintln!("{} warning(s) denied", warnings.len());
        return EXIT_CONFIG;
    }
    if diags.is_empty() {
        println!("{} pipeline(s) valid", pipelines.len());
        EXIT_OK
    } else {
        for d in &diags {
            eprintln!("{d}");
        }
        eprintln!("{} problem(s) found", diags.len());
        EXIT_CONFIG
    }
}

/// Loads and checks pipelines; on any problem prints it and gives the exit code (78).
pub async fn checked_pipelines(paths: &[PathBuf], environment: bool) -> Result<Vec<Pipeline>, u8> {
    let (pipelines, diags) = load_pipelines(paths, environment).await.map_err(|e| {
        eprintln!("error: {e}");
        EXIT_CONFIG
    })?;
    if !diags.is_empty() {
        for d in &diags {
            eprintln!("{d}");
        }
        return Err(EXIT_CONFIG);
    }
    Ok(pipelines)
}

pub async fn test(paths: &[PathBuf]) -> u8 {
    let pipelines = match checked_pipelines(paths, false).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let (mut passed, mut failed) = (0, 0);
    for p in &pipelines {
        for outcome in ymera_pipeline::testing::run_tests(p).await {
            if outcome.failures.is_empty() {
                passed += 1;
                println!("ok    {} :: {}", p.spec.name, outcome.name);
            } else {
                failed += 1;
                println!("FAIL  {} :: {}", p.spec.name, outcome.name);
                for f in outcome.failures {
                    for line in f.lines() {
                        println!("      {line}");
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 { EXIT_OK } else { EXIT_FAILURE }
}

/// On a terminal: one line, rewritten every second, with the running totals (log lines
/// go to stderr as usual; without a terminal there is no progress line, only logs).
fn show_progress(progress: Arc<ymera_pipeline::run::Progress>, stop: CancellationToken) {
    use std::sync::atomic::Ordering::Relaxed;
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let n = progress.records_in.load(Relaxed);
            eprint!(
                "\r\x1b[2K{n} records in ({:.0}/s), {} files published, {} dead-lettered",
                n as f64 / started.elapsed().as_secs_f64().max(1e-3),
                progress.files_written.load(Relaxed),
                progress.dead_lettered.load(Relaxed)
            );
        }
        eprintln!();
    });
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        info!("signal received");
        token.cancel();
    });
}

/// The process's Prometheus recorder, installed on the first call.
pub fn metrics_recorder() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    // one recorder per process: `ymera demo` runs pipelines and then serves
    static RECORDER: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    RECORDER.get_or_init(install_recorder).clone()
}

fn install_recorder() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let buckets = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("ymera_batch_commit_seconds".into()), &buckets)
        .ok()?
        .set_buckets_for_metric(
            Matcher::Full("ymera_model_request_duration_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ],
        )
        .ok()?
        .install_recorder()
        .map_err(|e| warn!(error = %e, "metrics disabled"))
        .ok()
}

/// Runs pipelines with the health/metrics server; returns per-pipeline stats.
pub async fn run_pipelines(
    settings: &Settings,
    pipelines: Vec<Pipeline>,
    stop_when_idle: Option<Duration>,
    serve_health: bool,
    migrate_first: bool,
) -> Result<Vec<(String, RunStats)>, String> {
    let lake = open_lake(settings)?;
    // a table still in the pre-Delta layout would be started over from `start`
    for p in &pipelines {
        for table in p.tables() {
            if ymera_lake::migrate::needs_migration(&lake, &p.spec.name, &table)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "pipeline `{}`: table `{table}` of the lake at {} is in the pre-Delta layout (commit records under _ymera/commits/{}/, no _delta_log): run `ymera lake migrate` first",
                    p.spec.name,
                    lake.url(),
                    p.spec.name
                ));
            }
        }
    }
    let health = Arc::new(Health::default());
    let shutdown = CancellationToken::new();
    on_signals(shutdown.clone());
    if serve_health {
        let router = ymera_serve::health_router(health.clone(), metrics_recorder());
        let listener = tokio::net::TcpListener::bind(&settings.run.listen)
            .await
            .map_err(|e| format!("cannot listen on run.listen={}: {e}", settings.run.listen))?;
        info!(
            listen = settings.run.listen,
            "health and metrics on /health, /health/ready, /health/startup, /metrics"
        );
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
    }
    let warehouse = if pipelines.iter().any(|p| !p.warehouse_sinks.is_empty()) || migrate_first {
        let wh = connect_warehouse(settings, &health, &shutdown).await?;
        if migrate_first || settings.warehouse.migrate_on_start {
            migrate(&wh, settings).await?;
        }
        let mut problems = Vec::new();
        for p in &pipelines {
            let (errors, warnings) = check_warehouse(p, &wh).await;
            for w in warnings {
                warn!("{}", w.as_warning());
            }
            problems.extend(errors.iter().map(|d| d.to_string()));
        }
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        Some(wh)
    } else {
        None
    };
    let progress = Arc::new(ymera_pipeline::run::Progress::default());
    if std::io::stderr().is_terminal() {
        show_progress(progress.clone(), shutdown.clone());
    }
    // `ymera run` records its own input rate for the autoscaler (pipeline::rate)
    let flush = settings.run.input_rate_flush;
    let input_rate = (serve_health && !flush.is_zero()).then(|| {
        ymera_pipeline::rate::InputRate::new(ymera_pipeline::rate::InputRate::member_name())
    });
    let memory = Arc::new(ymera_pipeline::run::MemoryBudget::new(
        settings.run.memory_limit.0,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for p in pipelines {
        let brokers = embedded::resolve_brokers(&p.spec.source.kafka.brokers)?;
        let opts = RunOptions {
            lake: lake.clone(),
            warehouse: warehouse.clone(),
            stop_when_idle,
            shutdown: shutdown.clone(),
            health: health.clone(),
            progress: progress.clone(),
            input_rate: input_rate.clone(),
            compaction: settings.lake.optimize.compaction(),
            memory: Some(memory.clone()),
        };
        let name = p.spec.name.clone();
        let p = Arc::new(p);
        tasks.spawn(async move { (name, ymera_pipeline::run::run(p, brokers, opts).await) });
    }
    let recorder = input_rate.map(|r| {
        // its own token: it writes its last rows after the pipelines stopped
        let stop = CancellationToken::new();
        let task = tokio::spawn(r.record(lake.clone(), flush, stop.clone()));
        (stop, task)
    });
    health.set_started();
    let mut results = Vec::new();
    let mut failures = Vec::new();
    // the first pipeline to fail (or panic) stops the process: the others flush and commit
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((name, Ok(stats))) => results.push((name, stats)),
            Ok((name, Err(e))) => {
                error!(pipeline = name, error = %e, "pipeline failed");
                failures.push(e.to_string());
                shutdown.cancel();
            }
            Err(e) => {
                failures.push(format!("a pipeline task panicked: {e}"));
                shutdown.cancel();
            }
        }
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    shutdown.cancel();
    if let Some((stop, task)) = recorder {
        stop.cancel();
        let _ = task.await;
    }
    if failures.is_empty() {
        Ok(results)
    } else {
        Err(failures.join("\n"))
    }
}

pub async fn run(settings: &Settings, paths: &[PathBuf], stop_when_idle: Option<Duration>) -> u8 {
    let pipelines = match checked_pipelines(paths, true).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    match run_pipelines(settings, pipelines, stop_when_idle, true, false).await {
        Ok(results) => {
            let mut quarantined = 0;
            for (name, s) in &results {
                for ((topic, partition), why) in &s.quarantined {
                    eprintln!(
                        "error: pipeline {name}: partition {topic}/{partition} was quarantined: {why}. \
                         To resume it past the gap on purpose: ymera lake accept-gap {name} --topic {topic} --partition {partition}"
                    );
                    quarantined += 1;
                }
            }
            for (name, s) in results {
                info!(
                    pipeline = name,
                    records_in = s.records_in,
                    files = s.files_written,
                    dead_lettered = s.dead_lettered,
                    duplicates_skipped = s.skipped_duplicates,
                    "pipeline stopped"
                );
            }
            if quarantined > 0 {
                EXIT_FAILURE
            } else {
                EXIT_OK
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

pub(crate) fn gen_config(
    days: u32,
    seed: u64,
    projects: usize,
    start: &str,
) -> Result<GenConfig, String> {
    let start = if start == "live" {
        // ends at the present minute: the newest metric sample is at most a step old
        let now = chrono::Utc::now().timestamp();
        let end = now - now.rem_euclid(60) + 60;
        chrono::DateTime::from_timestamp(end - i64::from(days.max(1)) * 86_400, 0)
            .ok_or("--live: the clock is out of range")?
    } else {
        let date = chrono::NaiveDate::parse_from_str(start, "%Y-%m-%d")
            .map_err(|e| format!("--start `{start}`: {e}"))?;
        date.and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .ok_or("--start: invalid date")?
    };
    Ok(GenConfig {
        seed,
        start,
        days,
        projects,
        ..GenConfig::default()
    })
}

/// `ymera gen` options beyond the window: which services report metrics and how the
/// project world is shifted.
#[derive(Debug, Clone, Default)]
pub struct GenWorld {
    /// Comma-separated service names; `none` or empty for no metric events.
    pub services: Option<String>,
    /// Initial team sizes as `LO-HI`.
    pub team_sizes: Option<String>,
    /// Multiplier of each member's probability of leaving.
    pub churn_scale: Option<f64>,
}

impl GenWorld {
    fn apply(&self, cfg: &mut GenConfig) -> Result<(), String> {
        if let Some(s) = &self.services {
            cfg.services = s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "none")
                .map(String::from)
                .collect();
        }
        if let Some(t) = &self.team_sizes {
            let (lo, hi) = t
                .split_once('-')
                .and_then(|(a, b)| {
                    Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?))
                })
                .filter(|(a, b)| *a >= 1 && a <= b)
                .ok_or_else(|| {
                    format!("--team-sizes `{t}`: expected LO-HI with 1 ≤ LO ≤ HI, e.g. 3-12")
                })?;
            cfg.shift.team_sizes = (lo, hi);
        }
        if let Some(c) = self.churn_scale {
            if !(c.is_finite() && c >= 0.0) {
                return Err(format!("--churn-scale {c}: must be a number ≥ 0"));
            }
            cfg.shift.churn_scale = c;
        }
        Ok(())
    }
}

/// Creates the topics and produces the events; returns events per topic.
pub(crate) async fn produce_events(
    brokers: &str,
    events: &[generator::Event],
    partitions: i32,
) -> Result<BTreeMap<&'static str, u64>, String> {
    produce::create_topics(brokers, &generator::TOPICS, partitions)
        .await
        .map_err(|e| format!("cannot create topics: {e}"))?;
    let producer = produce::producer(brokers, &BTreeMap::new()).map_err(|e| e.to_string())?;
    let records = events.iter().map(|e| produce::OutRecord {
        topic: e.topic,
        key: Some(e.key.as_bytes()),
        value: &e.value,
        timestamp_ms: Some(e.ts_micros / 1000),
    });
    producer
        .send_all(records)
        .await
        .map_err(|e| format!("cannot produce: {e}"))?;
    let mut per_topic = BTreeMap::new();
    for e in events {
        *per_topic.entry(e.topic).or_insert(0) += 1;
    }
    Ok(per_topic)
}

pub async fn gen_events(
    brokers: Option<String>,
    output: Option<PathBuf>,
    days: u32,
    seed: u64,
    projects: usize,
    partitions: i32,
    start: &str,
    world: &GenWorld,
) -> u8 {
    let cfg = match gen_config(days, seed, projects, start).and_then(|mut c| {
        world.apply(&mut c)?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return crate::EXIT_USAGE;
        }
    };
    let events = match tokio::task::spawn_blocking(move || generator::generate(&cfg)).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: generator failed: {e}");
            return EXIT_FAILURE;
        }
    };
    match (output, brokers) {
        (Some(dir), _) => match write_jsonl(&dir, &events) {
            Ok(()) => {
                println!("wrote {} events to {}", events.len(), dir.display());
                EXIT_OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_FAILURE
            }
        },
        (None, Some(brokers)) => {
            let brokers = match embedded::resolve_brokers(&brokers) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_FAILURE;
                }
            };
            match produce_events(&brokers, &events, partitions).await {
                Ok(per_topic) => {
                    for (t, n) in per_topic {
                        println!("{t}: {n} events");
                    }
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_FAILURE
                }
            }
        }
        (None, None) => {
            eprintln!("error: give --brokers or --output");
            crate::EXIT_USAGE
        }
    }
}

fn write_jsonl(dir: &Path, events: &[generator::Event]) -> Result<(), String> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = BTreeMap::new();
    for e in events {
        if !files.contains_key(e.topic) {
            let path = dir.join(format!("{}.jsonl", e.topic));
            let f =
                std::fs::File::create(&path).map_err(|err| format!("{}: {err}", path.display()))?;
            files.insert(e.topic, std::io::BufWriter::new(f));
        }
        if let Some(w) = files.get_mut(e.topic) {
            w.write_all(&e.value)
                .and_then(|()| w.write_all(b"\n"))
                .map_err(|err| err.to_string())?;
        }
    }
    for (_, mut w) in files {
        w.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub async fn broker(topics: &[String]) -> u8 {
    let bootstrap = match embedded::bootstrap_servers() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    for t in topics {
        let (name, partitions) = match t.rsplit_once(':').map(|(n, p)| (n, p.parse::<i32>())) {
            Some((n, Ok(p))) if p > 0 => (n, p),
            _ => {
                eprintln!("error: --topic `{t}`: expected NAME:PARTITIONS");
                return crate::EXIT_USAGE;
            }
        };
        if let Err(e) = embedded::create_topic(name, partitions) {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    }
    println!("{bootstrap}");
    let token = CancellationToken::new();
    on_signals(token.clone());
    token.cancelled().await;
    EXIT_OK
}

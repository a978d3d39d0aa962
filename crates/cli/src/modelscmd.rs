//! `ymera train`, `ymera models list|show|promote|rollback|history|evaluate` and
//! `ymera serve`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tracing::{info, warn};
use ymera_common::health::Health;
use ymera_models::train::{STAGES, evaluate, train};
use ymera_models::{ModelError, Registry, load_spec};
use ymera_query::{Analyst, Limits};
use ymera_warehouse::{AuditEntry, Warehouse};

use crate::settings::Settings;
use crate::{EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};

/// Opens `registry.url`, or the lake's `_models/`.
pub fn open_registry(settings: &Settings) -> Result<Registry, String> {
    let url = match &settings.registry.url {
        Some(u) => u.clone(),
        None => {
            let lake = crate::commands::open_lake(settings)?;
            let base = lake.url().to_string();
            format!("{}/_models", base.trim_end_matches('/'))
        }
    };
    let signing = ymera_models::registry::Signing::from_files(
        settings.registry.signing_key_file.as_deref(),
        settings.registry.public_key_file.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    Ok(Registry::open(&url, &crate::commands::s3_settings())
        .map_err(|e| e.to_string())?
        .with_signing(signing))
}

/// Prints `error: …` and gives `code` (the early returns of the command bodies).
fn fail(code: u8, e: impl std::fmt::Display) -> u8 {
    eprintln!("error: {e}");
    code
}

/// The exit code of a command's result, printing the error.
fn finish(result: Result<(), ModelError>) -> u8 {
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            exit_for(&e)
        }
    }
}

fn exit_for(e: &ModelError) -> u8 {
    match e {
        ModelError::Input(_) | ModelError::NotFound { .. } => EXIT_USAGE,
        _ => EXIT_FAILURE,
    }
}

/// Training reads whole tables: no row cap, a long time limit, the memory limit of `sql.*`.
async fn training_analyst(settings: &Settings) -> Result<Analyst, String> {
    let mut s = settings.clone();
    s.sql.max_rows = usize::MAX / 2;
    s.sql.timeout = s.sql.timeout.max(Duration::from_secs(3600));
    crate::sqlcmd::open(&s).await
}

/// `ymera train SPEC [--as-of MODEL|TIME]`.
pub async fn train_cmd(settings: &Settings, spec_path: &Path, as_of: Option<&str>) -> u8 {
    match train_spec_as_of(settings, spec_path, as_of).await {
        Ok((m, expected)) => {
            print_trained(&m);
            match expected {
                Some(AsOf {
                    model,
                    rows,
                    content_sha256,
                }) => {
                    let hash = match &content_sha256 {
                        Some(h) if *h == m.lineage.content_sha256 => "matches",
                        Some(_) => "differs",
                        None => "not compared (its manifest hashed the rows in query order)",
                    };
                    let same = m.lineage.rows == rows && hash != "differs";
                    println!(
                        "rebuilt from the table versions of {model} ({}): {} rows ({rows} in its manifest), content hash {}",
                        m.lineage
                            .tables
                            .iter()
                            .filter_map(|t| Some(format!("{}@v{}", t.name, t.version?)))
                            .collect::<Vec<_>>()
                            .join(", "),
                        m.lineage.rows,
                        hash
                    );
                    if same {
                        EXIT_OK
                    } else {
                        eprintln!(
                            "error: the training set of {model} was not reproduced: a warehouse table it read has changed (they have no versions), or a lake table it read has no version recorded"
                        );
                        EXIT_FAILURE
                    }
                }
                None => EXIT_OK,
            }
        }
        Err(code) => code,
    }
}

/// What `--as-of MODEL` must reproduce.
struct AsOf {
    model: String,
    rows: usize,
    /// `None` when the manifest's hash depended on row order (written before 2026-12-07):
    /// only the row count can be compared.
    content_sha256: Option<String>,
}

/// Trains `spec_path` and registers the version (a progress bar on a terminal); errors are
/// printed and given as the exit code.
pub async fn train_spec(
    settings: &Settings,
    spec_path: &Path,
) -> Result<ymera_models::Manifest, u8> {
    train_spec_as_of(settings, spec_path, None)
        .await
        .map(|(m, _)| m)
}

/// [`train_spec`] reading the lake as of `as_of` (a model reference: the versions its
/// manifest recorded, with what they must reproduce; or a time).
async fn train_spec_as_of(
    settings: &Settings,
    spec_path: &Path,
    as_of: Option<&str>,
) -> Result<(ymera_models::Manifest, Option<AsOf>), u8> {
    let loaded = match load_spec(spec_path) {
        Ok(l) => l,
        Err(diags) => {
            for d in diags {
                eprintln!("{d}");
            }
            return Err(EXIT_CONFIG);
        }
    };
    let registry = open_registry(settings).map_err(|e| fail(EXIT_FAILURE, e))?;
    let lake = crate::commands::open_lake(settings).map_err(|e| fail(EXIT_FAILURE, e))?;
    let mut analyst = training_analyst(settings)
        .await
        .map_err(|e| fail(EXIT_FAILURE, e))?;
    let mut expected = None;
    if let Some(at) = as_of {
        let versions = match ymera_query::parse_time(at) {
            Some(t) => analyst
                .versions_at(t)
                .await
                .map_err(|e| fail(EXIT_FAILURE, e.to_string()))?,
            None => {
                let (name, v) = parse_ref(at);
                let v = match v {
                    Some(v) => v.to_string(),
                    None => registry
                        .default_ref(name)
                        .await
                        .map_err(|e| fail(exit_for(&e), e.to_string()))?,
                };
                let m = registry
                    .load_resolved(name, &v)
                    .await
                    .map_err(|e| fail(exit_for(&e), e.to_string()))?
                    .manifest;
                if m.lineage.query.trim() == loaded.spec.data.query.trim() {
                    expected = Some(AsOf {
                        model: format!("{name}/{}", m.version),
                        rows: m.lineage.rows,
                        content_sha256: m
                            .lineage
                            .content_sha256_sorted
                            .then(|| m.lineage.content_sha256.clone()),
                    });
                } else {
                    eprintln!(
                        "warning: the spec's query is not the one {name}/{} was trained with: the tables are read at its versions, but its rows are not compared",
                        m.version
                    );
                }
                m.lineage
                    .tables
                    .iter()
                    .filter(|t| t.source == "lake")
                    .filter_map(|t| Some((t.name.clone(), t.version?)))
                    .collect()
            }
        };
        analyst
            .pin(&versions)
            .await
            .map_err(|e| fail(EXIT_FAILURE, format!("--as-of {at}: {e}")))?;
    }
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(STAGES.len() as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:20} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        Some(b)
    } else {
        None
    };
    let name = loaded.spec.name.clone();
    let progress = |i: usize| match &bar {
        Some(b) => {
            b.set_position(i as u64);
            b.set_message(STAGES[i]);
        }
        None => info!(model = %name, stage = STAGES[i], "training"),
    };
    let result = train(&loaded, &analyst, &lake, &registry, &progress).await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    result.map(|m| (m, expected)).map_err(|e| {
        eprintln!("error: training {name}: {e}");
        exit_for(&e)
    })
}

/// What `ymera train` prints about a registered version.
fn print_trained(m: &ymera_models::Manifest) {
    println!(
        "registered {}/{} ({}, {} rows: {} train, {} calibration, {} holdout; fit {:.2}s)",
        m.name,
        m.version,
        m.algorithm,
        m.lineage.rows,
        m.lineage.train_rows,
        m.lineage.calibration_rows,
        m.lineage.holdout_rows,
        m.fit_seconds
    );
    if let Some(c) = &m.calibration {
        println!("  calibration: {c}");
    }
    for (k, v) in &m.metrics {
        println!("  {k:<15} {v:.4}");
    }
    if m.gate.is_empty() {
        println!("  gate: none configured");
    } else if m.gate_passed {
        println!("  gate: passed ({})", gate_text(m));
    } else {
        println!(
            "  gate: FAILED ({}) — this version cannot be promoted",
            gate_text(m)
        );
    }
    println!("  uri: models:/{}/{}", m.name, m.version);
}

pub fn gate_text(m: &ymera_models::Manifest) -> String {
    m.gate
        .iter()
        .map(|g| {
            format!(
                "{} → {}",
                g.threshold,
                g.actual.map(|a| format!("{a:.4}")).unwrap_or("n/a".into())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ymera models list`.
pub async fn list(settings: &Settings) -> u8 {
    let run = async {
        let reg = open_registry(settings).map_err(ModelError::Storage)?;
        let models = reg.models().await?;
        if models.is_empty() {
            println!("no models in {}", reg.url());
        }
        for name in models {
            let versions = reg.versions(&name).await?;
            let aliases = reg.aliases(&name).await?;
            let alias_text: Vec<String> = aliases
                .iter()
                .map(|a| format!("{}→{}", a.alias, a.version))
                .collect();
            println!(
                "{name}: {} version(s){}",
                versions
                    .iter()
                    .filter(|e| matches!(e.manifest, Some(Ok(_))))
                    .count(),
                if alias_text.is_empty() {
                    String::new()
                } else {
                    format!(", {}", alias_text.join(", "))
                }
            );
            for e in versions {
                match e.manifest {
                    Some(Ok(m)) => {
                        let metrics: Vec<String> = m
                            .metrics
                            .iter()
                            .map(|(k, v)| format!("{k}={v:.4}"))
                            .collect();
                        println!(
                            "  {:>4}  {}  {:<20} gate {}  {}",
                            m.version,
                            m.created_at.format("%Y-%m-%d %H:%M:%S"),
                            m.algorithm,
                            if m.gate_passed { "passed" } else { "FAILED" },
                            metrics.join(" ")
                        );
                    }
                    Some(Err(problem)) => println!("  {:>4}  unreadable: {problem}", e.version),
                    None => println!(
                        "  {:>4}  incomplete (no manifest: training was interrupted or is running)",
                        e.version
                    ),
                }
            }
        }
        Ok::<_, ModelError>(())
    };
    finish(run.await)
}

/// Splits `name`, `name/version` or `name@alias`.
fn parse_ref(r: &str) -> (&str, Option<&str>) {
    if let Some((n, a)) = r.split_once('@') {
        (n, Some(a))
    } else if let Some((n, v)) = r.split_once('/') {
        (n, Some(v))
    } else {
        (r, None)
    }
}

/// `ymera models show NAME[/VERSION|@ALIAS]`: the verified manifest as JSON.
pub async fn show(settings: &Settings, reference: &str) -> u8 {
    let run = async {
        let reg = open_registry(settings).map_err(ModelError::Storage)?;
        let (name, v) = parse_ref(reference);
        let v = match v {
            Some(v) => v.to_string(),
            None => reg.default_ref(name).await?,
        };
        let loaded = reg.load_resolved(name, &v).await?;
        let mut out =
            serde_json::to_value(&loaded.manifest).map_err(|e| ModelError::Model(e.to_string()))?;
        out["manifest_sha256"] = json!(loaded.manifest_sha256);
        out["verified"] = json!(true);
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        Ok::<_, ModelError>(())
    };
    finish(run.await)
}

async fn audit(
    settings: &Settings,
    action: &str,
    target: &str,
    outcome: &str,
    detail: serde_json::Value,
) {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    match crate::keyscmd::audit_warehouse(settings).await {
        Ok(wh) => {
            let entry = AuditEntry {
                actor: format!("cli:{user}"),
                role: "admin".into(),
                action: action.into(),
                target: target.into(),
                outcome: outcome.into(),
                detail: detail.to_string(),
            };
            if let Err(e) = wh.audit_append(&entry).await {
                warn!(error = %e, "could not write the audit record");
            }
        }
        Err(e) => warn!(error = %e, "could not write the audit record: warehouse unreachable"),
    }
}

/// `ymera models promote NAME VERSION [--alias A] [--expected V]`.
pub async fn promote(
    settings: &Settings,
    name: &str,
    version: &str,
    alias: &str,
    expected: Option<&str>,
) -> u8 {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let reg = match open_registry(settings) {
        Ok(r) => r,
        Err(e) => return fail(EXIT_FAILURE, e),
    };
    let exp = expected.map(|e| if e == "none" { None } else { Some(e) });
    let result = reg
        .move_alias(name, alias, version, exp, &format!("cli:{user}"), "promote")
        .await;
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    audit(
        settings,
        "models.promote",
        &format!("{name}@{alias}"),
        if result.is_ok() { "ok" } else { "refused" },
        json!({"version": version, "expected_version": expected, "result": outcome}),
    )
    .await;
    match result {
        Ok(r) => {
            println!(
                "{name}@{alias} → {} (was {}; record {})",
                r.version,
                r.previous.as_deref().unwrap_or("unset"),
                r.seq
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit_for(&e)
        }
    }
}

/// `ymera models rollback NAME [--alias A]`.
pub async fn rollback(settings: &Settings, name: &str, alias: &str) -> u8 {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let reg = match open_registry(settings) {
        Ok(r) => r,
        Err(e) => return fail(EXIT_FAILURE, e),
    };
    let result = reg.rollback(name, alias, &format!("cli:{user}")).await;
    audit(
        settings,
        "models.rollback",
        &format!("{name}@{alias}"),
        if result.is_ok() { "ok" } else { "refused" },
        json!({"result": result.as_ref().map(|r| r.version.clone()).map_err(|e| e.to_string())}),
    )
    .await;
    match result {
        Ok(r) => {
            println!(
                "{name}@{alias} rolled back to {} (from {})",
                r.version,
                r.previous.as_deref().unwrap_or("?")
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit_for(&e)
        }
    }
}

/// `ymera models history NAME [--alias A] [--at TIME]`.
pub async fn history(settings: &Settings, name: &str, alias: &str, at: Option<&str>) -> u8 {
    let run = async {
        let reg = open_registry(settings).map_err(ModelError::Storage)?;
        if let Some(at) = at {
            let t: DateTime<Utc> = at
                .parse()
                .map_err(|e| ModelError::Input(format!("--at {at}: not an RFC 3339 time: {e}")))?;
            match reg.live_at(name, alias, t).await? {
                Some(r) => println!(
                    "{name}@{alias} at {t}: version {} (since {}, by {})",
                    r.version, r.at, r.actor
                ),
                None => println!("{name}@{alias} at {t}: not set"),
            }
            return Ok(());
        }
        let h = reg.history(name, alias).await?;
        if h.is_empty() {
            println!("{name}@{alias} was never set");
        }
        for r in h {
            println!(
                "{:>4}  {}  {:<8} {} → {}  by {}",
                r.seq,
                r.at.to_rfc3339(),
                r.action,
                r.previous.as_deref().unwrap_or("-"),
                r.version,
                r.actor
            );
        }
        Ok::<_, ModelError>(())
    };
    finish(run.await)
}

/// `ymera models evaluate SPEC [--model NAME@ALIAS]`: scores a registered version on the
/// rows the spec's query returns now (e.g. on newer or shifted data), as JSON.
pub async fn evaluate_cmd(settings: &Settings, spec_path: &Path, reference: Option<&str>) -> u8 {
    let loaded = match load_spec(spec_path) {
        Ok(l) => l,
        Err(diags) => {
            for d in diags {
                eprintln!("{d}");
            }
            return EXIT_CONFIG;
        }
    };
    let run = async {
        let reg = open_registry(settings).map_err(ModelError::Storage)?;
        let r = reference
            .map(String::from)
            .unwrap_or_else(|| format!("{}@champion", loaded.spec.name));
        let (name, v) = parse_ref(&r);
        let model = reg.load_resolved(name, v.unwrap_or("champion")).await?;
        let analyst = training_analyst(settings).await.map_err(ModelError::Data)?;
        let out = analyst
            .query(&loaded.spec.data.query)
            .await
            .map_err(|e| ModelError::Data(format!("data.query: {e}")))?;
        let artifact = model.artifact;
        let spec = loaded.clone();
        let metrics = tokio::task::spawn_blocking(move || evaluate(&artifact, &out.batches, &spec))
            .await
            .map_err(|e| ModelError::Model(e.to_string()))??;
        println!(
            "{}",
            json!({"model": name, "model_version": model.manifest.version, "metrics": metrics})
        );
        Ok::<_, ModelError>(())
    };
    finish(run.await)
}

/// `ymera serve`: the HTTP API on `serve.listen` until SIGINT/SIGTERM.
pub async fn serve(settings: &Settings) -> u8 {
    let addr: SocketAddr = match settings.serve.listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("settings: serve.listen `{}`: {e}", settings.serve.listen);
            return EXIT_CONFIG;
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return EXIT_FAILURE;
        }
    };
    let token = tokio_util::sync::CancellationToken::new();
    crate::commands::on_signals(token.clone());
    serve_on(settings, listener, token).await
}

/// The HTTP API of `ymera serve` on `listener` until `token` is cancelled (`ymera demo`
/// serves its data this way too).
pub async fn serve_on(
    settings: &Settings,
    listener: tokio::net::TcpListener,
    token: tokio_util::sync::CancellationToken,
) -> u8 {
    let health = Arc::new(Health::default());
    let metrics = crate::commands::metrics_recorder();
    let addr = listener
        .local_addr()
        .map_or_else(|_| settings.serve.listen.clone(), |a| a.to_string());
    let registry = match open_registry(settings) {
        Ok(r) => r,
        Err(e) => return fail(EXIT_FAILURE, e),
    };
    let warehouse = match crate::keyscmd::audit_warehouse(settings).await {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: the warehouse holds keys and the audit log: {e}");
            return EXIT_FAILURE;
        }
    };
    // key lookups get a connection pool of their own: a flood of bad keys cannot take
    // the connections the audit log needs
    let key_lookups = match Warehouse::connect(settings.warehouse.url.expose()).await {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: the warehouse holds keys and the audit log: {e}");
            return EXIT_FAILURE;
        }
    };
    let auth = match crate::keyscmd::build_auth(settings, warehouse.clone()).await {
        Ok(a) => Arc::new(a.with_key_lookups(key_lookups)),
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    if settings.sql.timeout >= settings.serve.request_timeout {
        eprintln!(
            "settings: sql.timeout ({:?}) must be below serve.request_timeout ({:?}), so a slow query is stopped and answered 503 before the request times out",
            settings.sql.timeout, settings.serve.request_timeout
        );
        return EXIT_CONFIG;
    }
    if let Err(e) = settings.autoscale.validate() {
        eprintln!("error: {e}");
        return EXIT_CONFIG;
    }
    // analysts and the autoscaler each get a SQL runtime, memory pool and session of their
    // own: a heavy analyst query cannot hold up KEDA's forecasts
    let sql_config = ymera_serve::sql::SqlConfig {
        lake_url: settings.lake.url.clone(),
        s3: crate::commands::s3_settings(),
        warehouse_url: Some(settings.warehouse.url.clone()),
        limits: settings.sql.limits(),
        threads: settings.serve.sql_threads,
        catalog_ttl: Duration::from_secs(30),
        max_per_caller: settings.sql.max_concurrent_per_credential,
        audit_fail_closed: settings.audit.sql_fail_closed,
    };
    let autoscale_sql = ymera_serve::sql::SqlConfig {
        warehouse_url: None,
        threads: 1,
        limits: Limits {
            memory: sql_config.limits.memory / 4,
            ..sql_config.limits
        },
        ..sql_config.clone()
    };
    let (sql, autoscale_sql) = match (
        ymera_serve::sql::SqlService::start(sql_config),
        ymera_serve::sql::SqlService::start(autoscale_sql),
    ) {
        (Ok(s), Ok(a)) => (Some(s), Some(a)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: cannot start the SQL runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    let autoscale = Arc::new(ymera_serve::autoscale::Autoscaler::new(
        settings.autoscale.clone(),
        autoscale_sql,
        registry.clone(),
    ));
    let store = Arc::new(ymera_serve::models::ModelStore::new(
        registry,
        settings.serve.models.clone(),
        health.clone(),
    ));
    // alerts: read from the lake through the analysts' SQL service, states kept in the
    // warehouse beside the audit log
    let alerts = match sql.clone().map(|sql| {
        ymera_serve::alerts::AlertService::new(
            sql,
            warehouse.clone(),
            settings.serve.alert_tables.clone(),
        )
    }) {
        Some(Ok(a)) => Some(Arc::new(a)),
        Some(Err(e)) => {
            eprintln!("settings: {e}");
            return EXIT_CONFIG;
        }
        None => None,
    };
    let state = ymera_serve::AppState {
        models: store.clone(),
        auth,
        sql,
        health: health.clone(),
        autoscale: Some(autoscale),
        alerts,
    };
    let router = ymera_serve::serve_router(state, metrics, crate::keyscmd::serve_limits(settings));
    info!(listen = %addr, registry = %store.registry().url(), "serving");
    // probes answer while the pinned models load
    let pin_store = store.clone();
    let pin_health = health.clone();
    let reload_every = settings.serve.reload_interval;
    tokio::spawn(async move {
        if let Err(e) = pin_store.pin().await {
            warn!(error = %e, "could not read the registry at start; retrying on reload");
            pin_health.set("registry", Some(e.to_string()));
        }
        pin_health.set_started();
        pin_store.spawn_reloader(reload_every);
    });
    // the client address, for the per-address throttle of key lookups
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { token.cancelled().await })
    .await;
    match served {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

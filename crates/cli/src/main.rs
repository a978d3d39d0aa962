//! The `ymera` binary: argument parsing, settings, logging, exit codes. The work itself is
//! done by the library crates; this is the only place that reads the environment and exits.

// A binary exports nothing: `pub` inside it only means "used by sibling modules".
#![allow(unreachable_pub)]

mod anomalycmd;
mod bench;
mod commands;
mod democmd;
mod dlqcmd;
mod evalcmd;
mod examples;
mod forecastcmd;
mod keyscmd;
mod lakecmd;
mod modelscmd;
mod settings;
mod simcmd;
mod sqlcmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes (sysexits, as Vector uses them).
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CONFIG: u8 = 78;

#[derive(Parser, Debug)]
#[command(
    name = "ymera",
    // The source hash names the exact tree this binary was built from (build/source_hash.rs).
    version = concat!(env!("CARGO_PKG_VERSION"), " (source ", env!("YMERA_SOURCE_HASH"), ")"),
    about = "Streaming data and ML pipelines: Kafka -> SQL -> Parquet lake"
)]
struct Cli {
    /// Settings file (default: ./ymera.yaml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check pipeline files: YAML, keys and types, SQL against the declared schema, sinks,
    /// and (unless --no-environment) that the brokers answer.
    Validate {
        /// Skip checks that need the environment (broker reachability, `${VAR}` values).
        #[arg(long)]
        no_environment: bool,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
        /// Pipeline files or directories (every *.yaml inside).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run each pipeline's `tests:` offline and print a diff on failure.
    Test {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run pipelines until SIGINT/SIGTERM (or until idle with --stop-when-idle).
    Run {
        /// Exit 0 once every assigned partition is caught up and idle this long (e.g. 10s).
        #[arg(long, value_parser = parse_duration)]
        stop_when_idle: Option<std::time::Duration>,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// The whole loop on generated data up to now: an in-process broker, the pipelines
    /// into ./lake and the warehouse, the risk/effort/segments models trained and promoted,
    /// `ymera serve` answering a prediction and listing the detector's alert, a forecast
    /// with its plot under ./demo/. Works in any directory (built-in examples).
    Demo {
        /// Days of service metrics, at least 2 (the year of projects the models learn from is
        /// fixed).
        #[arg(long, default_value_t = 3)]
        days: u32,
        /// Directory of the pipelines to run (default `pipelines/` when it exists, else
        /// the examples built into ymera).
        #[arg(long)]
        pipelines: Option<PathBuf>,
        /// Write the built-in example pipelines, training specs and migrations into this
        /// directory (which must not hold them yet) and exit.
        #[arg(long, value_name = "DIR")]
        write_examples: Option<PathBuf>,
        /// Leave `ymera serve` running on the demo's data (on `serve.listen`) until
        /// SIGINT/SIGTERM.
        #[arg(long)]
        keep_serving: bool,
    },
    /// Read-only SQL over every lake and warehouse table: one query, or an interactive
    /// session (history, multi-line statements, `\d`, `\d TABLE`, `\timing`) when no query is
    /// given on a terminal.
    Sql {
        /// The query (read from stdin when absent and stdin is not a terminal).
        query: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: sqlcmd::Format,
        /// Write the result to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Produce generated domain events to Kafka, or write them as JSON lines.
    Gen {
        /// Bootstrap servers (or `embedded`); required unless --output.
        #[arg(long)]
        brokers: Option<String>,
        /// Write `<topic>.jsonl` files into this directory instead of producing.
        #[arg(long)]
        output: Option<PathBuf>,
        #[arg(long, default_value_t = 7)]
        days: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 40)]
        projects: usize,
        /// Partitions of topics created by gen.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// First day of the generated history (YYYY-MM-DD).
        #[arg(long, default_value = "2026-11-01", conflicts_with = "live")]
        start: String,
        /// Live mode: the history ends at the present minute (it starts `--days` ago), so
        /// metric events are fresh for the autoscaler's forecasts.
        #[arg(long)]
        live: bool,
        /// Services that report metrics, comma-separated (`none`: only the project world).
        #[arg(long)]
        services: Option<String>,
        /// Shift: initial team sizes as LO-HI (default 3-12).
        #[arg(long)]
        team_sizes: Option<String>,
        /// Shift: multiplier of each member's probability of leaving (default 1).
        #[arg(long)]
        churn_scale: Option<f64>,
    },
    /// Dead-lettered records of a pipeline: `inspect` (counts by error and stage, samples
    /// with their source position) and `replay` (through the current pipeline, after a fix).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// The lake's Delta tables: `optimize` (compact small files), `vacuum` (delete files no
    /// version within the retention needs), `history` (versions, operations, Kafka
    /// positions), `migrate` (a pre-Delta lake to Delta tables).
    Lake {
        #[command(subcommand)]
        action: LakeAction,
    },
    /// The SQL warehouse: `ymera warehouse migrate` applies `warehouse.migrations`.
    Warehouse {
        #[command(subcommand)]
        action: WarehouseAction,
    },
    /// API keys of `ymera serve` (in `warehouse.url`): `create --role R` prints a new key
    /// once (only its hash is stored), `list`, `revoke ID`.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// The hash-chained audit log: `ymera audit verify` finds the first edited, deleted or
    /// reordered row (exit 1).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Train a model from a training spec (`models/*.yaml`), evaluate it on the time-based
    /// holdout, and register a new version in the registry.
    Train {
        /// The training spec.
        spec: PathBuf,
        /// Read each lake table as it was: at the Delta versions a registered version's
        /// manifest recorded (`NAME/VERSION` or `NAME@ALIAS`; its row count and content hash
        /// are then checked), or at a time (RFC 3339 or `YYYY-MM-DD HH:MM:SS`, UTC).
        #[arg(long, value_name = "MODEL|TIME")]
        as_of: Option<String>,
    },
    /// The model registry: versions, manifests, aliases and their history.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Serve predictions (V1 and Open Inference Protocol V2), the registry and analyst SQL
    /// over HTTP until SIGINT/SIGTERM.
    Serve,
    /// Forecast a service's metric from the lake (or a NAB CSV with --input): MSTL +
    /// AutoETS with intervals, a backtest against seasonal naive, optionally a plot.
    Forecast(forecastcmd::ForecastArgs),
    /// Replay a load series through a reactive HPA and through our forecast policy; report
    /// SLO-breach minutes and replica-hours of each.
    SimulateScaling(simcmd::SimulateArgs),
    /// Anomaly detectors in the registry: `ymera anomaly train NAME` fits an isolation
    /// forest on a series and registers it (scored by `POST /v1/anomaly/detect`).
    Anomaly {
        #[command(subcommand)]
        action: AnomalyAction,
    },
    /// Evaluate detectors or forecasters on a directory of series (NAB layout).
    Eval {
        #[command(subcommand)]
        action: EvalAction,
    },
    /// Serve the embedded Kafka-protocol broker (librdkafka's mock cluster) in this
    /// process until SIGINT/SIGTERM; prints its bootstrap address on the first line.
    /// For local development and tests that must kill consumers without losing the broker.
    Broker {
        /// Topics to create, as NAME:PARTITIONS (repeatable).
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
    /// Measure decode -> SQL -> Parquet, and end-to-end through a broker.
    Bench {
        /// Events to process.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Also measure end to end through this broker (`embedded` or host:port).
        #[arg(long)]
        brokers: Option<String>,
        /// Read the events from this JSON-lines file (e.g. made by
        /// shared/bench/gen_events_file.py) instead of generating them.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Instead, measure rows/s into these warehouses (`sqlite://…`, `postgres://…`;
        /// PostgreSQL with both COPY and multi-row INSERT).
        #[arg(long = "warehouse")]
        warehouses: Vec<String>,
        /// Rows per warehouse measurement.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Instead, time fit + forecast (MSTL + AutoETS) of every CSV series under this
        /// directory (NAB layout), one thread, horizon one day.
        #[arg(long, value_name = "DIR")]
        forecast: Option<PathBuf>,
        /// Instead, time what a partition assignment reads (every table position from the
        /// Delta log) for a table with this many commits (repeatable: `--delta-log 1000
        /// --delta-log 10000`); each commit adds one small file and one partition's txn.
        #[arg(long = "delta-log", value_name = "COMMITS")]
        delta_log: Vec<usize>,
    },
}

#[derive(Subcommand, Debug)]
enum AnomalyAction {
    /// Fit an isolation forest over window features and register it as a version.
    Train(anomalycmd::AnomalyTrainArgs),
}

#[derive(Subcommand, Debug)]
enum EvalAction {
    /// NAB standard-profile score of the anomaly detectors on DIR/data/**/*.csv against
    /// DIR/labels/combined_windows.json; --scores-out writes each file's scores.
    Anomaly(evalcmd::EvalAnomalyArgs),
    /// Rolling-origin backtest of every DIR/data/**/*.csv: MASE against seasonal naive.
    Forecast(forecastcmd::EvalForecastArgs),
}

#[derive(Subcommand, Debug)]
enum ModelsAction {
    /// Every model with its versions, metrics, gate results and aliases.
    List,
    /// One version's verified manifest (`NAME`, `NAME/VERSION` or `NAME@ALIAS`).
    Show { model: String },
    /// Point an alias at a version that passed its gate (compare-and-swap with --expected).
    Promote {
        name: String,
        version: String,
        #[arg(long, default_value = "champion")]
        alias: String,
        /// Move only if the alias still points at this version (`none`: is unset).
        #[arg(long)]
        expected: Option<String>,
    },
    /// Point an alias back at the version it pointed at before.
    Rollback {
        name: String,
        #[arg(long, default_value = "champion")]
        alias: String,
    },
    /// Every move of an alias, or (with --at) the version live at a time.
    History {
        name: String,
        #[arg(long, default_value = "champion")]
        alias: String,
        /// RFC 3339 time.
        #[arg(long)]
        at: Option<String>,
    },
    /// Score a registered version on the rows a spec's query returns now, as JSON.
    Evaluate {
        spec: PathBuf,
        /// `NAME@ALIAS` or `NAME/VERSION` (default: the spec's model @champion).
        #[arg(long)]
        model: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum KeysAction {
    /// Create a key and print it on stdout (shown only this once).
    Create {
        /// agent, analyst, autoscaler or admin.
        #[arg(long)]
        role: ymera_serve::auth::Role,
        /// A label for `keys list` (who or what uses the key).
        #[arg(long)]
        name: Option<String>,
    },
    /// Every key: id, role, name, created, revoked (never the key or its hash).
    List,
    /// Revoke a key by its id (servers stop accepting it within 5 s).
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
enum AuditAction {
    /// Check the hash chain of the audit log (and each row's HMAC with
    /// `audit.hmac_key_file`): exit 0 when intact, 1 naming the first bad row. The last
    /// row's `SEQ:HASH` is printed: keep it off this host and pass it to `--anchor` later
    /// to find a truncated or rewritten tail.
    Verify {
        /// A `SEQ:HASH` printed by an earlier verify: the row must still have that hash.
        #[arg(long, value_name = "SEQ:HASH")]
        anchor: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum LakeAction {
    /// Bin-pack small files into files of about --target-size, committed with
    /// dataChange=false: row counts never change (checked from the log after each table).
    Optimize {
        /// Tables (SQL names such as `tasks` or `dlq_<pipeline>`, or directories); every
        /// table of the lake when none is given.
        tables: Vec<String>,
        /// Only partitions matching COLUMN=VALUE (or !=, <, <=, >, >=), e.g.
        /// `dt=2026-12-01` (repeatable: all must match).
        #[arg(long = "where", value_name = "PRED")]
        predicates: Vec<String>,
        /// Size compacted files are packed to.
        #[arg(long, default_value = "128MiB")]
        target_size: String,
    },
    /// Delete data files no version within the retention references: files compaction
    /// removed, and orphans of commits that never happened.
    Vacuum {
        /// Tables (as for optimize); every table when none is given.
        tables: Vec<String>,
        /// Keep what versions of this age need (default: the table's
        /// `delta.deletedFileRetentionDuration`, 7 days unless set; shorter is refused
        /// unless --force).
        #[arg(long, value_parser = parse_duration)]
        retain: Option<std::time::Duration>,
        /// List what would be deleted and delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Allow a retention shorter than the table's minimum: readers of older versions,
        /// and writers about to commit files they have written, can then lose them.
        #[arg(long)]
        force: bool,
    },
    /// Turn a lake of the pre-Delta layout into Delta tables in place, from its commit
    /// records (`_ymera/commits/`), their offsets as txn versions; tables that already have a
    /// Delta log are left alone.
    Migrate {
        /// Check and report what would be converted; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// A table's versions, newest first: time, operation, files and rows added and removed,
    /// and the Kafka positions each commit brought the table to.
    History {
        /// The table (SQL name or directory).
        table: String,
        /// Only the newest N versions (default: every version still in the log).
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, value_enum, default_value = "table")]
        format: lakecmd::HistoryFormat,
    },
    /// Move a quarantined partition's position past records that are gone (retention,
    /// truncation, a re-created topic), on purpose: in every table of the pipeline and the
    /// warehouse, each move conditional on the position read, audited as
    /// `lake.accept_gap`. It takes effect when the partition is next assigned.
    AcceptGap {
        /// Pipeline name (or its YAML file).
        pipeline: String,
        /// Directory of the pipeline files.
        #[arg(long, default_value = "pipelines")]
        pipelines: PathBuf,
        /// The partition's topic.
        #[arg(long)]
        topic: String,
        /// The partition.
        #[arg(long)]
        partition: i32,
        /// The offset to resume at (default: the first offset still in the log).
        #[arg(long)]
        to: Option<i64>,
        /// Move even when no position is outside the log (no gap), or to an offset outside
        /// it, or without reading the log: records can then be dropped or read twice.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum WarehouseAction {
    /// Apply the pending versioned migrations (`warehouse.migrations`, default
    /// `sql/migrations/`) to `warehouse.url`.
    Migrate,
}

#[derive(Subcommand, Debug)]
enum DlqAction {
    /// Count dead letters by error and stage, and show the latest with their source
    /// position.
    Inspect {
        /// Pipeline name (or its YAML file).
        pipeline: String,
        /// Directory of the pipeline files.
        #[arg(long, default_value = "pipelines")]
        pipelines: PathBuf,
        /// Only records dead-lettered since this time (RFC 3339, a date, or a duration ago
        /// such as `2h`).
        #[arg(long)]
        since: Option<String>,
        /// How many recent records to show.
        #[arg(long, default_value_t = 5)]
        samples: usize,
    },
    /// Re-feed dead-lettered records through the current pipeline into its sinks. Records
    /// that fail again stay in the DLQ; a record is never replayed twice.
    Replay {
        /// Pipeline name (or its YAML file).
        pipeline: String,
        /// Directory of the pipeline files.
        #[arg(long, default_value = "pipelines")]
        pipelines: PathBuf,
        /// Only records dead-lettered since this time (RFC 3339, a date, or a duration ago).
        #[arg(long)]
        since: Option<String>,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    ymera_common::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    let settings = match settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let traces = commands::init_logging(&settings);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Validate {
                no_environment,
                deny_warnings,
                paths,
            } => commands::validate(&settings, &paths, no_environment, deny_warnings).await,
            Command::Test { paths } => commands::test(&paths).await,
            Command::Run {
                stop_when_idle,
                paths,
            } => commands::run(&settings, &paths, stop_when_idle).await,
            Command::Demo {
                days,
                pipelines,
                write_examples,
                keep_serving,
            } => match write_examples {
                Some(dir) => democmd::write_examples(&dir),
                None => {
                    let opts = democmd::DemoOptions {
                        days,
                        pipelines,
                        keep_serving,
                    };
                    democmd::demo(&settings, opts).await
                }
            },
            Command::Sql {
                query,
                format,
                output,
            } => sqlcmd::sql(&settings, query, format, output).await,
            Command::Gen {
                brokers,
                output,
                days,
                seed,
                projects,
                partitions,
                start,
                live,
                services,
                team_sizes,
                churn_scale,
            } => {
                let world = commands::GenWorld {
                    services,
                    team_sizes,
                    churn_scale,
                };
                let start = if live { "live".to_string() } else { start };
                commands::gen_events(
                    brokers, output, days, seed, projects, partitions, &start, &world,
                )
                .await
            }
            Command::Dlq {
                action:
                    DlqAction::Inspect {
                        pipeline,
                        pipelines,
                        since,
                        samples,
                    },
            } => dlqcmd::inspect(&settings, &pipeline, &pipelines, since.as_deref(), samples).await,
            Command::Dlq {
                action:
                    DlqAction::Replay {
                        pipeline,
                        pipelines,
                        since,
                    },
            } => dlqcmd::replay(&settings, &pipeline, &pipelines, since.as_deref()).await,
            Command::Lake { action } => match action {
                LakeAction::Optimize {
                    tables,
                    predicates,
                    target_size,
                } => lakecmd::optimize(&settings, &tables, &predicates, &target_size).await,
                LakeAction::Vacuum {
                    tables,
                    retain,
                    dry_run,
                    force,
                } => lakecmd::vacuum(&settings, &tables, retain, dry_run, force).await,
                LakeAction::History {
                    table,
                    limit,
                    format,
                } => lakecmd::history(&settings, &table, limit, format).await,
                LakeAction::Migrate { dry_run } => lakecmd::migrate(&settings, dry_run).await,
                LakeAction::AcceptGap {
                    pipeline,
                    pipelines,
                    topic,
                    partition,
                    to,
                    force,
                } => {
                    lakecmd::accept_gap(
                        &settings,
                        &pipeline,
                        &pipelines,
                        (&topic, partition),
                        to,
                        force,
                    )
                    .await
                }
            },
            Command::Warehouse {
                action: WarehouseAction::Migrate,
            } => commands::warehouse_migrate(&settings).await,
            Command::Keys { action } => match action {
                KeysAction::Create { role, name } => keyscmd::create(&settings, role, name).await,
                KeysAction::List => keyscmd::list(&settings).await,
                KeysAction::Revoke { id } => keyscmd::revoke(&settings, &id).await,
            },
            Command::Audit {
                action: AuditAction::Verify { anchor },
            } => keyscmd::audit_verify(&settings, anchor.as_deref()).await,
            Command::Broker { topics } => commands::broker(&topics).await,
            Command::Train { spec, as_of } => {
                modelscmd::train_cmd(&settings, &spec, as_of.as_deref()).await
            }
            Command::Serve => modelscmd::serve(&settings).await,
            Command::Forecast(args) => forecastcmd::forecast_cmd(&settings, args).await,
            Command::SimulateScaling(args) => {
                blocking_report(move || {
                    let mut f = forecastcmd::MstlForecaster::new(args.refit_steps, 15 * 288);
                    simcmd::simulate_scaling(&args, &mut f)
                })
                .await
            }
            Command::Anomaly {
                action: AnomalyAction::Train(args),
            } => anomalycmd::train(&settings, args).await,
            Command::Eval {
                action: EvalAction::Anomaly(args),
            } => blocking_report(move || evalcmd::eval_anomaly(&args)).await,
            Command::Eval {
                action: EvalAction::Forecast(args),
            } => forecastcmd::eval_forecast(args).await,
            Command::Models { action } => match action {
                ModelsAction::List => modelscmd::list(&settings).await,
                ModelsAction::Show { model } => modelscmd::show(&settings, &model).await,
                ModelsAction::Promote {
                    name,
                    version,
                    alias,
                    expected,
                } => {
                    modelscmd::promote(&settings, &name, &version, &alias, expected.as_deref())
                        .await
                }
                ModelsAction::Rollback { name, alias } => {
                    modelscmd::rollback(&settings, &name, &alias).await
                }
                ModelsAction::History { name, alias, at } => {
                    modelscmd::history(&settings, &name, &alias, at.as_deref()).await
                }
                ModelsAction::Evaluate { spec, model } => {
                    modelscmd::evaluate_cmd(&settings, &spec, model.as_deref()).await
                }
            },
            Command::Bench {
                forecast: Some(dir),
                ..
            } => blocking_report(move || forecastcmd::bench_forecast(&dir)).await,
            Command::Bench {
                warehouses, rows, ..
            } if !warehouses.is_empty() => bench::bench_warehouse(&warehouses, rows).await,
            Command::Bench { delta_log, .. } if !delta_log.is_empty() => {
                bench::bench_delta_log(&delta_log).await
            }
            Command::Bench {
                events,
                brokers,
                input,
                ..
            } => bench::bench(&settings, events, brokers, input).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    if let Some(provider) = traces
        && let Err(e) = provider.shutdown()
    {
        eprintln!("warning: the last traces were not exported: {e}");
    }
    ExitCode::from(code)
}

/// Runs a CPU-bound report off the async runtime; prints it, or the error (exit 1).
async fn blocking_report(f: impl FnOnce() -> Result<String, String> + Send + 'static) -> u8 {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(text)) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            EXIT_OK
        }
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
        Err(e) => {
            eprintln!("error: the task failed: {e}");
            EXIT_FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn each_verb_has_its_own_description_in_help() {
        let cli = Cli::command();
        let about = |verb: &str| {
            cli.find_subcommand(verb)
                .and_then(|c| c.get_about())
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        assert!(
            about("broker").starts_with("Serve the embedded Kafka-protocol broker"),
            "{}",
            about("broker")
        );
        assert!(
            about("dlq").starts_with("Dead-lettered records"),
            "{}",
            about("dlq")
        );
        cli.debug_assert();
    }
}

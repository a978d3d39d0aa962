//! `ymera lake optimize|vacuum|history|migrate|accept-gap`: maintenance of the lake's Delta tables
//! (interfaces.md "Lake layout"). The work is in `ymera_lake::maintain`; this resolves table
//! names and prints.

use std::fmt::Write as _;
use std::time::Duration;

use ymera_lake::Lake;
use ymera_lake::maintain::{self, OptimizeOptions, PartitionPredicate};

use crate::settings::Settings;
use crate::{EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};

/// The tables named (by SQL name, `tasks` or `dlq_<pipeline>`, or by directory, `_dlq/<p>`),
/// or every table of the lake when none is: `(name, dir)`.
async fn tables(lake: &Lake, names: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut all = Vec::new();
    for (name, dir) in ymera_lake::catalog::candidates(lake)
        .await
        .map_err(|e| e.to_string())?
    {
        let store = ymera_lake::delta::log_store(lake, &dir).map_err(|e| e.to_string())?;
        if store
            .is_delta_table_location()
            .await
            .map_err(|e| format!("`{dir}`: {e}"))?
        {
            all.push((name, dir));
        }
    }
    if names.is_empty() {
        return Ok(all);
    }
    names
        .iter()
        .map(|n| {
            let n = n.trim_end_matches('/');
            all.iter()
                .find(|(name, dir)| name == n || dir == n)
                .cloned()
                .ok_or_else(|| {
                    let hint =
                        ymera_warehouse::closest(n, all.iter().map(|(name, _)| name.as_str()))
                            .map(|c| format!(" (did you mean `{c}`?)"))
                            .unwrap_or_default();
                    format!(
                        "no table `{n}` in the lake at {}{hint} (tables: {})",
                        lake.url(),
                        all.iter()
                            .map(|(name, _)| name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
        })
        .collect()
}

fn open(settings: &Settings) -> Result<Lake, u8> {
    crate::commands::open_lake(settings).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_CONFIG
    })
}

/// `ymera lake optimize [TABLE…] [--where PRED…] [--target-size SIZE]`.
pub async fn optimize(
    settings: &Settings,
    names: &[String],
    predicates: &[String],
    target_size: &str,
) -> u8 {
    let lake = match open(settings) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let parsed: Result<Vec<PartitionPredicate>, String> = predicates
        .iter()
        .map(|p| PartitionPredicate::parse(p).map_err(|e| format!("--where: {e}")))
        .collect();
    let target =
        ymera_common::parse_byte_size(target_size).map_err(|e| format!("--target-size: {e}"));
    let (predicates, target) = match (parsed, target) {
        (Ok(p), Ok(t)) => (p, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return EXIT_CONFIG;
        }
    };
    let tables = match tables(&lake, names).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CONFIG;
        }
    };
    let opts = OptimizeOptions {
        target_size: target,
        concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut code = EXIT_OK;
    for (name, dir) in tables {
        // a predicate on a column a table does not partition by leaves that table alone
        // when several tables are compacted at once
        let started = std::time::Instant::now();
        match maintain::optimize(&lake, &dir, &predicates, &opts).await {
            Ok(o) if o.files_removed == 0 => {
                println!("{name}: nothing to compact ({} files)", o.files_before)
            }
            Ok(o) => println!(
                "{name}: {} files -> {} ({} compacted into {}, {} rows, {} partitions, version {}) in {:.1} s",
                o.files_before,
                o.files_after,
                o.files_removed,
                o.files_added,
                o.rows_added,
                o.partitions,
                o.versions
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                started.elapsed().as_secs_f64()
            ),
            Err(e)
                if names.is_empty() && e.to_string().contains(maintain::NOT_A_PARTITION_COLUMN) =>
            {
                println!("{name}: skipped ({e})")
            }
            Err(e) => {
                eprintln!("error: {name}: {e}");
                code = EXIT_FAILURE;
            }
        }
    }
    code
}

/// `ymera lake vacuum [TABLE…] [--retain 7d] [--dry-run] [--force]`.
pub async fn vacuum(
    settings: &Settings,
    names: &[String],
    retain: Option<Duration>,
    dry_run: bool,
    force: bool,
) -> u8 {
    let lake = match open(settings) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let tables = match tables(&lake, names).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CONFIG;
        }
    };
    let mut code = EXIT_OK;
    for (name, dir) in tables {
        match maintain::vacuum(&lake, &dir, retain, dry_run, force).await {
            Ok(v) => {
                let verb = if dry_run { "would delete" } else { "deleted" };
                println!("{name}: {verb} {} files", v.files.len());
                if dry_run {
                    for f in &v.files {
                        println!("  {f}");
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {name}: {e}");
                code = if e.class() == ymera_common::ErrorClass::User {
                    EXIT_CONFIG
                } else {
                    EXIT_FAILURE
                };
            }
        }
    }
    code
}

/// Output of `ymera lake history`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum HistoryFormat {
    Table,
    Json,
}

/// `ymera lake history TABLE [--limit N] [--format table|json]`.
pub async fn history(
    settings: &Settings,
    name: &str,
    limit: Option<usize>,
    format: HistoryFormat,
) -> u8 {
    let lake = match open(settings) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let (_, dir) = match tables(&lake, &[name.to_string()]).await {
        Ok(mut t) => t.remove(0),
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CONFIG;
        }
    };
    let commits = match maintain::history(&lake, &dir, limit).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    match format {
        HistoryFormat::Json => {
            for c in &commits {
                let line = serde_json::json!({
                    "version": c.version,
                    "timestamp": c.timestamp.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                    "operation": c.operation,
                    "files_added": c.files_added,
                    "files_removed": c.files_removed,
                    "rows_added": c.rows_added,
                    "rows_removed": c.rows_removed,
                    "metadata_changed": c.metadata,
                    "positions": c.positions.iter().map(|(id, v)| serde_json::json!({"app_id": id, "offset": v})).collect::<Vec<_>>(),
                });
                println!("{line}");
            }
        }
        HistoryFormat::Table => print!("{}", history_table(&commits)),
    }
    EXIT_OK
}

/// Positions shown as `topic:partition=offset` (the app id's pipeline is the table's).
fn positions(c: &maintain::Commit) -> String {
    c.positions
        .iter()
        .map(|(id, v)| {
            let short = id
                .strip_prefix("ymera:")
                .and_then(|rest| rest.split_once(':'))
                .map_or(id.as_str(), |(_, tp)| tp);
            format!("{short}={v}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn history_table(commits: &[maintain::Commit]) -> String {
    let header = [
        "version",
        "time (UTC)",
        "operation",
        "files +",
        "files -",
        "rows +",
        "rows -",
        "positions",
    ];
    let rows: Vec<[String; 8]> = commits
        .iter()
        .map(|c| {
            [
                c.version.to_string(),
                c.timestamp
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
                    .unwrap_or_default(),
                if c.metadata && !c.operation.is_empty() {
                    format!("{} (metadata)", c.operation)
                } else {
                    c.operation.clone()
                },
                c.files_added.to_string(),
                c.files_removed.to_string(),
                c.rows_added.to_string(),
                match (c.files_removed, c.rows_removed) {
                    (0, _) => "0".into(),
                    (_, Some(n)) => n.to_string(),
                    (_, None) => "?".into(),
                },
                positions(c),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // numbers right-aligned, text left; the last column unpadded
            let _ = match i {
                0 | 3..=6 => write!(out, "{cell:>w$}  "),
                7 => write!(out, "{cell}"),
                _ => write!(out, "{cell:<w$}  "),
            };
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(&mut out, &header);
    for r in &rows {
        line(&mut out, &r.each_ref().map(String::as_str));
    }
    out
}

/// `ymera lake migrate [--dry-run]`.
pub async fn migrate(settings: &Settings, dry_run: bool) -> u8 {
    let lake = match open(settings) {
        Ok(l) => l,
        Err(code) => return code,
    };
    match ymera_lake::migrate::migrate(&lake, dry_run).await {
        Ok(done) if done.is_empty() => {
            println!(
                "nothing to migrate: the lake at {} has no pre-Delta commit records",
                lake.url()
            );
            EXIT_OK
        }
        Ok(done) => {
            let verb = if dry_run {
                "would convert"
            } else {
                "converted"
            };
            for m in done {
                match m {
                    ymera_lake::migrate::Migrated::Converted {
                        table,
                        files,
                        rows,
                        positions,
                    } => println!(
                        "{table}: {verb} ({files} files, {rows} rows, {positions} positions)"
                    ),
                    ymera_lake::migrate::Migrated::AlreadyDelta { table } => {
                        println!("{table}: already a Delta table, left alone")
                    }
                }
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            if e.class() == ymera_common::ErrorClass::User {
                EXIT_CONFIG
            } else {
                EXIT_FAILURE
            }
        }
    }
}

/// `ymera lake accept-gap PIPELINE --topic T --partition P [--to OFFSET] [--force]`: moves
/// the partition's position in every table of the pipeline (and the warehouse's, when it
/// has warehouse sinks; and its anomaly checkpoint) to `to` (default: the partition's first
/// offset still in the log), on purpose, past records that are gone; audited. The records
/// in between are never read. Refused, unless forced, when no position is outside the log
/// (there is no gap) or `to` is.
pub async fn accept_gap(
    settings: &Settings,
    pipeline: &str,
    dir: &std::path::Path,
    target: (&str, i32),
    to: Option<i64>,
    force: bool,
) -> u8 {
    let (topic, partition) = target;
    let p = match crate::dlqcmd::find(pipeline, dir).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let lake = match open(settings) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let name = p.spec.name.clone();
    if !p.spec.source.kafka.topics.iter().any(|t| t == topic) {
        eprintln!(
            "error: pipeline {name} does not read topic `{topic}` (it reads {})",
            p.spec.source.kafka.topics.join(", ")
        );
        return EXIT_CONFIG;
    }
    let wh = match crate::keyscmd::audit_warehouse(settings).await {
        Ok(wh) => wh,
        Err(e) => {
            eprintln!("error: the warehouse (where the audit log is): {e}");
            return EXIT_FAILURE;
        }
    };
    let log = watermarks(&p, topic, partition).await;
    let plan = match plan_gap(&p, &lake, &wh, (topic, partition), to, log, force).await {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CONFIG;
        }
    };
    let at = format!("{name}/{topic}/{partition}");
    let result = move_positions(&p, &lake, &wh, (topic, partition), &plan).await;
    let (outcome, detail) = match &result {
        Ok(moved) => ("ok", serde_json::json!({ "to": plan.to, "moved": moved })),
        Err(e) => ("error", serde_json::json!({ "to": plan.to, "error": e })),
    };
    crate::keyscmd::audit(&wh, "lake.accept_gap", &at, outcome, detail).await;
    match result {
        Ok(moved) => {
            for m in &moved {
                println!("{m}");
            }
            if moved.is_empty() {
                println!(
                    "{at}: everything already resumes at {}; nothing to move",
                    plan.to
                );
            } else {
                println!(
                    "{at} resumes at offset {} when next assigned (restart the pipeline's replicas that hold it quarantined)",
                    plan.to
                );
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

/// The (low, high) watermarks of `topic`/`partition`, from the pipeline's brokers.
async fn watermarks(
    p: &ymera_pipeline::validate::Pipeline,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), String> {
    let brokers = ymera_ingest::embedded::resolve_brokers(&p.spec.source.kafka.brokers)?;
    let client = p.spec.source.kafka.client.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        ymera_ingest::consume::watermarks(
            &brokers,
            &client,
            &topic,
            partition,
            Duration::from_secs(10),
        )
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// What accept-gap will do.
struct GapPlan {
    /// The offset the sinks resume at.
    to: i64,
    /// Each lake table's position now (the txn version: the last offset it holds).
    tables: Vec<(String, Option<i64>)>,
    /// The warehouse's next offset now, when the pipeline has warehouse sinks.
    warehouse: Option<i64>,
    /// Whether the sinks move (not when only the anomaly checkpoint is outside the log).
    move_sinks: bool,
    /// Where the anomaly checkpoint moves, when the pipeline has one.
    checkpoint_to: Option<i64>,
}

/// Reads every position of the partition (lake tables, the warehouse, the anomaly
/// checkpoint) and decides what moves where. Refused, unless `force`, when no position is
/// outside the log `log` (there is no gap), or `to` is.
async fn plan_gap(
    p: &ymera_pipeline::validate::Pipeline,
    lake: &Lake,
    wh: &ymera_warehouse::Warehouse,
    (topic, partition): (&str, i32),
    to: Option<i64>,
    log: Result<(i64, i64), String>,
    force: bool,
) -> Result<GapPlan, String> {
    if let Some(to) = to.filter(|to| *to < 0) {
        return Err(format!("--to {to}: an offset is never negative"));
    }
    let id = ymera_lake::delta::app_id(&p.spec.name, topic, partition);
    let mut tables = Vec::new();
    for table in p.tables() {
        let now = ymera_lake::delta::positions(lake, &table, std::slice::from_ref(&id))
            .await
            .map_err(|e| e.to_string())?
            .get(&id)
            .copied();
        tables.push((table, now));
    }
    let warehouse = if p.warehouse_sinks.is_empty() {
        None
    } else {
        wh.read_positions(&p.spec.name)
            .await
            .map_err(|e| e.to_string())?
            .get(&(topic.to_string(), partition))
            .copied()
    };
    let tp = (topic.to_string(), partition);
    let checkpoint = if p.has_state() {
        ymera_pipeline::checkpoint::newest(lake, &p.spec.name, &tp)
            .await
            .map_err(|e| e.to_string())?
    } else {
        None
    };
    // every sink's next offset
    let nexts: Vec<i64> = tables
        .iter()
        .filter_map(|(_, last)| last.map(|l| l + 1))
        .chain(warehouse)
        .collect();
    let (low, high) = match (log, to, force) {
        (Ok(log), _, _) => log,
        (Err(e), Some(to), true) => {
            eprintln!(
                "warning: cannot read the log of {topic}/{partition} ({e}); moving to {to} as forced"
            );
            return Ok(GapPlan {
                to,
                tables,
                warehouse,
                move_sinks: true,
                checkpoint_to: checkpoint.map(|_| to),
            });
        }
        (Err(e), _, _) => {
            return Err(format!(
                "cannot read where the log of {topic}/{partition} starts and ends ({e}): \
                 give the offset to resume at with --to, and --force"
            ));
        }
    };
    let to = to.unwrap_or(low);
    if !force && !(low..=high).contains(&to) {
        return Err(format!(
            "--to {to} is outside the log of {topic}/{partition} (offsets {low}..{high}); --force moves there anyway"
        ));
    }
    let outside = |next: i64| next < low || next > high;
    let sinks_outside = nexts.iter().any(|n| outside(*n));
    let checkpoint_outside = checkpoint.is_some_and(outside);
    if !force && !sinks_outside {
        if checkpoint_outside {
            // the sinks are in the log, the detectors' checkpoint is not: only it moves, to
            // the log's start (at or before the sinks, which then skip what they hold)
            return Ok(GapPlan {
                to,
                tables,
                warehouse,
                move_sinks: false,
                checkpoint_to: Some(low),
            });
        }
        // a move cut short earlier left every sink at `to` already: nothing is missing
        if !nexts.is_empty() && nexts.iter().all(|n| *n == to) {
            return Ok(GapPlan {
                to,
                tables,
                warehouse,
                move_sinks: false,
                checkpoint_to: None,
            });
        }
        return Err(format!(
            "no position of pipeline {} is outside the log of {topic}/{partition} (offsets \
             {low}..{high}): there is no gap to accept, and moving a live partition would drop \
             or repeat records (--force moves it anyway)",
            p.spec.name
        ));
    }
    Ok(GapPlan {
        to,
        tables,
        warehouse,
        move_sinks: true,
        checkpoint_to: checkpoint.map(|_| to),
    })
}

/// Carries out `plan`; one line per move. Each table's move is conditional on the
/// position read in the plan, and so is the warehouse's, so a writer committing meanwhile
/// makes it fail rather than be overwritten.
async fn move_positions(
    p: &ymera_pipeline::validate::Pipeline,
    lake: &Lake,
    wh: &ymera_warehouse::Warehouse,
    (topic, partition): (&str, i32),
    plan: &GapPlan,
) -> Result<Vec<String>, String> {
    let name = &p.spec.name;
    let to = plan.to;
    let id = ymera_lake::delta::app_id(name, topic, partition);
    let mut moved = Vec::new();
    for (table, now) in plan.tables.iter().filter(|_| plan.move_sinks) {
        if *now == Some(to - 1) {
            continue;
        }
        let from = now.map_or("nothing".to_string(), |last| format!("offset {}", last + 1));
        let meta = std::collections::HashMap::from([(
            "ymera.accept_gap".to_string(),
            serde_json::json!({ "topic": topic, "partition": partition, "from": now.map(|l| l + 1), "to": to }),
        )]);
        // no table yet (None): nothing holds a position there
        if let Some(version) =
            ymera_lake::delta::move_position(lake, table, &id, *now, to - 1, meta)
                .await
                .map_err(|e| e.to_string())?
        {
            moved.push(format!(
                "table {table}: {topic}/{partition} moved from {from} to offset {to} (version {version})"
            ));
        }
    }
    if let Some(now) = plan.warehouse.filter(|now| plan.move_sinks && *now != to) {
        let commit = ymera_warehouse::Commit {
            pipeline: name.clone(),
            topic: topic.to_string(),
            partition,
            first: now,
            next: to,
            writes: Vec::new(),
            on_reject: ymera_warehouse::OnReject::DeadLetter,
        };
        wh.commit(&commit).await.map_err(|e| e.to_string())?;
        moved.push(format!(
            "warehouse: {topic}/{partition} moved from offset {now} to offset {to}"
        ));
    }
    if let Some(at) = plan.checkpoint_to {
        // the detectors keep their state across the gap: their newest checkpoint moves
        // (the source would otherwise start at the old one, outside the log)
        let tp = (topic.to_string(), partition);
        if let Some(old) = ymera_pipeline::checkpoint::move_to(lake, name, &tp, at)
            .await
            .map_err(|e| e.to_string())?
            .filter(|old| *old != at)
        {
            moved.push(format!(
                "anomaly state: {topic}/{partition}'s checkpoint moved from offset {old} to offset {at}"
            ));
        }
    }
    Ok(moved)
}

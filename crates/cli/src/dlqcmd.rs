//! `ymera dlq inspect|replay PIPELINE`: what was dead-lettered and why, and re-feeding it
//! through the current pipeline after a fix.
//!
//! Dead letters live in the pipeline's `dlq` target — the lake table `_dlq/<pipeline>`
//! (read through SQL) or a Kafka topic (read whole, headers decoded) — and, for rows a
//! warehouse constraint refused, in the warehouse's `_ymera_dead_letters`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ymera_pipeline::Pipeline;
use ymera_pipeline::dlq::{DeadLetter, ErrorStage};
use ymera_query::{Analyst, Limits};
use ymera_warehouse::Warehouse;

use crate::settings::Settings;
use crate::{EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};

/// Finds the pipeline by name (or file) among `dir`'s files, checked.
pub(crate) async fn find(pipeline: &str, dir: &Path) -> Result<Pipeline, u8> {
    let paths = if Path::new(pipeline).is_file() {
        vec![PathBuf::from(pipeline)]
    } else {
        vec![dir.to_path_buf()]
    };
    let pipelines = crate::commands::checked_pipelines(&paths, true).await?;
    let names: Vec<&str> = pipelines.iter().map(|p| p.spec.name.as_str()).collect();
    match pipelines
        .iter()
        .position(|p| p.spec.name == pipeline || paths[0].as_path() == Path::new(pipeline))
    {
        Some(i) => Ok(pipelines.into_iter().nth(i).expect("index from position")),
        None => {
            let hint = ymera_warehouse::closest(pipeline, names.iter().copied())
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            eprintln!(
                "error: no pipeline `{pipeline}` in {}{hint} (pipelines: {})",
                dir.display(),
                names.join(", ")
            );
            Err(EXIT_CONFIG)
        }
    }
}

/// Every dead letter of `p` failed at or after `since` (µs), with where it was found.
async fn load(
    settings: &Settings,
    p: &Pipeline,
    since: Option<i64>,
) -> Result<Vec<(&'static str, DeadLetter)>, String> {
    let lake = crate::commands::open_lake(settings)?;
    let wh = match Warehouse::connect(settings.warehouse.url.expose()).await {
        Ok(w) => Some(w),
        Err(e) if p.warehouse_sinks.is_empty() => {
            tracing::debug!(error = %e, "no warehouse");
            None
        }
        Err(e) => return Err(e.to_string()),
    };
    // a replay reads every dead letter of the pipeline: no row or result cap
    let limits = Limits {
        timeout: Duration::from_secs(600),
        max_rows: usize::MAX,
        max_result_bytes: usize::MAX,
        ..settings.sql.limits()
    };
    let (analyst, _) = Analyst::open(&lake, wh.as_ref(), limits)
        .await
        .map_err(|e| e.to_string())?;
    let since_sql = since
        .map(|us| format!(" AND ymera_failed_at >= to_timestamp_micros({us})"))
        .unwrap_or_default();
    let name = &p.spec.name;
    let mut out = Vec::new();
    // the lake table (name validated as [a-z0-9_]+, so it is safe in the statement)
    if let Some(t) = &p.dlq_table {
        let sql_name = format!("dlq_{}", t.table.trim_start_matches("_dlq/"));
        if analyst.table(&sql_name).is_ok() {
            let o = analyst
                .query(&format!(
                    "SELECT * FROM {sql_name} WHERE true{since_sql} ORDER BY ymera_failed_at"
                ))
                .await
                .map_err(|e| e.to_string())?;
            let letters = ymera_pipeline::replay::letters_from_batches(&o.batches)?;
            out.extend(letters.into_iter().map(|d| ("lake", d)));
        }
    }
    // a DLQ topic
    if let Some(topic) = p.spec.dlq.as_ref().and_then(|d| d.topic.clone()) {
        let brokers = ymera_ingest::embedded::resolve_brokers(&p.spec.source.kafka.brokers)?;
        let client = p.spec.source.kafka.client.clone();
        let records = tokio::task::spawn_blocking(move || {
            ymera_ingest::consume::read_topic(&brokers, &client, &topic, Duration::from_secs(10))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        for (_, r) in records {
            let h = |k: &str| {
                r.headers
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let failed_at = chrono::DateTime::parse_from_rfc3339(&h("ymera.failed_at"))
                .map(|t| t.timestamp_micros())
                .unwrap_or_default();
            if since.is_some_and(|s| failed_at < s) || h("ymera.pipeline") != *name {
                continue;
            }
            out.push((
                "topic",
                DeadLetter {
                    key: r.key.clone(),
                    value: r.value.clone(),
                    stage: match h("ymera.error.stage").as_str() {
                        "decode" => ErrorStage::Decode,
                        "transform" => ErrorStage::Transform,
                        _ => ErrorStage::Sink,
                    },
                    message: h("ymera.error.message"),
                    topic: h("ymera.source.topic"),
                    partition: h("ymera.source.partition").parse().unwrap_or(-1),
                    offset: h("ymera.source.offset").parse().unwrap_or(-1),
                    pipeline: name.clone(),
                    failed_at,
                },
            ));
        }
    }
    // rows warehouse constraints refused
    if wh.is_some() && analyst.table(ymera_warehouse::DEAD_LETTERS_TABLE).is_ok() {
        let o = analyst
            .query(&format!(
                "SELECT ymera_table, ymera_error_message, ymera_source_topic, ymera_source_partition, ymera_source_offset, \
                 CAST(ymera_failed_at AS BIGINT) AS failed_at, value FROM {} WHERE ymera_pipeline = '{name}'{since_sql}",
                ymera_warehouse::DEAD_LETTERS_TABLE
            ))
            .await
            .map_err(|e| e.to_string())?;
        for b in &o.batches {
            use arrow::array::{Array, AsArray};
            use arrow::datatypes::{DataType, Int64Type};
            let cast = |i: usize, ty: &DataType| {
                arrow::compute::cast(b.column(i), ty).map_err(|e| e.to_string())
            };
            let s = |i: usize| cast(i, &DataType::Utf8).map(|a| a.as_string::<i32>().clone());
            let n =
                |i: usize| cast(i, &DataType::Int64).map(|a| a.as_primitive::<Int64Type>().clone());
            let (table, msg, topic, value) = (s(0)?, s(1)?, s(2)?, s(6)?);
            let (part, off, at) = (n(3)?, n(4)?, n(5)?);
            for i in 0..b.num_rows() {
                out.push((
                    "warehouse",
                    DeadLetter {
                        key: None,
                        value: (!value.is_null(i)).then(|| value.value(i).as_bytes().to_vec()),
                        stage: ErrorStage::Sink,
                        message: format!("{} ({})", msg.value(i), table.value(i)),
                        topic: topic.value(i).to_string(),
                        partition: part.value(i) as i32,
                        offset: off.value(i),
                        pipeline: name.clone(),
                        failed_at: at.value(i),
                    },
                ));
            }
        }
    }
    Ok(out)
}

fn since_micros(since: Option<&str>) -> Result<Option<i64>, String> {
    let Some(s) = since else { return Ok(None) };
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(Some(t.timestamp_micros()));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(Some(
            d.and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp_micros(),
        ));
    }
    let ago = ymera_common::parse_duration(s).map_err(|_| {
        format!("--since `{s}`: expected an RFC 3339 time, a date, or a duration such as 2h")
    })?;
    Ok(Some(
        chrono::Utc::now().timestamp_micros() - ago.as_micros() as i64,
    ))
}

fn short(s: &str, n: usize) -> String {
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        format!("{}…", one_line.chars().take(n).collect::<String>())
    }
}

pub async fn inspect(
    settings: &Settings,
    pipeline: &str,
    dir: &Path,
    since: Option<&str>,
    samples: usize,
) -> u8 {
    let p = match find(pipeline, dir).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let letters = match since_micros(since) {
        Ok(s) => load(settings, &p, s).await,
        Err(e) => Err(e),
    };
    let letters = match letters {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    let replayed = match crate::commands::open_lake(settings) {
        Ok(lake) => ymera_pipeline::replay::replayed_positions(&lake, &p.spec.name)
            .await
            .unwrap_or_default(),
        Err(_) => Default::default(),
    };
    println!(
        "pipeline {}: {} dead-lettered record(s)",
        p.spec.name,
        letters.len()
    );
    if letters.is_empty() {
        return EXIT_OK;
    }
    let mut groups: BTreeMap<(&str, &str, String), usize> = BTreeMap::new();
    for (from, d) in &letters {
        *groups
            .entry((from, d.stage.as_str(), short(&d.message, 90)))
            .or_default() += 1;
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    println!("\n{:>7}  {:<9} {:<9} error", "count", "where", "stage");
    for ((from, stage, message), n) in groups.iter().take(30) {
        println!("{n:>7}  {from:<9} {stage:<9} {message}");
    }
    if groups.len() > 30 {
        println!("    ... {} more distinct errors", groups.len() - 30);
    }
    let already = letters
        .iter()
        .filter(|(_, d)| replayed.contains(&(d.topic.clone(), d.partition, d.offset)))
        .count();
    if already > 0 {
        println!(
            "\n{already} of them were replayed successfully already (`ymera dlq replay` skips them)"
        );
    }
    println!(
        "\nlatest {} sample(s): source topic/partition/offset, failed at, stage, error, value",
        samples.min(letters.len())
    );
    let mut latest: Vec<&(&str, DeadLetter)> = letters.iter().collect();
    latest.sort_by_key(|(_, d)| std::cmp::Reverse(d.failed_at));
    for (_, d) in latest.into_iter().take(samples) {
        let at = chrono::DateTime::from_timestamp_micros(d.failed_at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        let value = d
            .value
            .as_deref()
            .map(|v| short(&String::from_utf8_lossy(v), 120))
            .unwrap_or_else(|| "(no value)".into());
        println!(
            "  {}/{}/{}  {at}  {}  {}\n      {value}",
            d.topic,
            d.partition,
            d.offset,
            d.stage.as_str(),
            short(&d.message, 100)
        );
    }
    EXIT_OK
}

pub async fn replay(settings: &Settings, pipeline: &str, dir: &Path, since: Option<&str>) -> u8 {
    let p = match find(pipeline, dir).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let result = async {
        let since = since_micros(since)?;
        // every letter: a replay cut short is finished whatever `--since` says
        let letters = load(settings, &p, None).await?;
        let lake = crate::commands::open_lake(settings)?;
        let wh = if p.warehouse_sinks.is_empty() {
            None
        } else {
            Some(
                Warehouse::connect(settings.warehouse.url.expose())
                    .await
                    .map_err(|e| e.to_string())?,
            )
        };
        let sink_rejects = letters
            .iter()
            .filter(|(from, _)| *from == "warehouse")
            .count();
        let letters = letters.into_iter().map(|(_, d)| d).collect();
        let r = ymera_pipeline::replay::replay(&p, &lake, wh.as_ref(), letters, since).await?;
        Ok::<_, String>((r, sink_rejects))
    }
    .await;
    match result {
        Ok((r, sink_rejects)) => {
            println!(
                "pipeline {}: {} dead letter(s) considered, {} already replayed, {} replayed now, {} failed again (they stay in the DLQ)",
                p.spec.name, r.considered, r.already_replayed, r.succeeded, r.failed_again
            );
            for (table, rows) in &r.rows {
                println!("   {rows:>8} row(s) into {table}");
            }
            for ((t, part, off), m) in &r.failures {
                println!("   still failing {t}/{part}/{off}: {}", short(m, 120));
            }
            if let Some(id) = r.replay_id {
                println!(
                    "   replay {id} recorded under _ymera/replays/{}/",
                    p.spec.name
                );
            }
            if sink_rejects > 0 {
                println!(
                    "   {sink_rejects} row(s) refused by warehouse constraints are not replayed: fix the rows or the table, they are kept in {}",
                    ymera_warehouse::DEAD_LETTERS_TABLE
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

//! `ymera dlq replay`: dead-lettered records go through the pipeline's *current* decoder
//! and stages again (after a fix) and, when they pass, into its sinks.
//!
//! - Records that fail again stay where they are, in the DLQ; nothing new is written for
//!   them.
//! - Replaying twice adds nothing twice. A replay is identified by the sha256 of the
//!   source positions it writes; its lake files are named `replay-<id>.parquet`, committed
//!   per table with the txn `ymera:<pipeline>#replay:<id>:0` (a second commit of the same
//!   replay adds nothing), its warehouse rows commit with a ledger row of their own
//!   (`<pipeline>#replay`, topic `<id>`). `_ymera/replays/<pipeline>/<id>.pending.json`
//!   lists the positions before any sink is written, `<id>.json` after all are. Positions
//!   of a finished replay are never replayed again; a replay cut short is finished by the
//!   next one with its own positions and id (tables that hold its txn add nothing and the
//!   warehouse ledger refuses a second commit), before anything new, and with all of
//!   them or not at all (`--since` never narrows it).

use std::collections::{BTreeSet, HashMap};

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ymera_ingest::decode::{JsonDecoder, UnknownFields};
use ymera_lake::Lake;
use ymera_warehouse::Warehouse;

use crate::dlq::{DeadLetter, ErrorStage};
use crate::spec::UnknownFieldsSpec;
use crate::validate::Pipeline;

/// (topic, partition, offset)
pub type Position = (String, i32, i64);

/// What a replay did.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Dead letters considered (after `--since`, decode/transform stages, de-duplicated).
    pub considered: usize,
    /// Already replayed by an earlier run: skipped.
    pub already_replayed: usize,
    /// Passed this time and were written.
    pub succeeded: usize,
    /// Failed again (they stay in the DLQ), with the new reason of the first few.
    pub failed_again: usize,
    pub failures: Vec<(Position, String)>,
    /// Rows written per sink table.
    pub rows: Vec<(String, u64)>,
    pub replay_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ReplayRecord {
    pipeline: String,
    replay_id: String,
    positions: Vec<Position>,
    replayed_at: String,
}

fn ledger_dir(pipeline: &str) -> String {
    format!("_ymera/replays/{pipeline}")
}

const PENDING: &str = ".pending.json";

/// The replay records of `pipeline`: finished ones, and started ones not finished.
async fn records(
    lake: &Lake,
    pipeline: &str,
) -> Result<(Vec<ReplayRecord>, Vec<ReplayRecord>), String> {
    let mut done = Vec::new();
    let mut pending = Vec::new();
    let paths = lake
        .list(&ledger_dir(pipeline))
        .await
        .map_err(|e| e.to_string())?;
    for path in &paths {
        let body = lake.get(path).await.map_err(|e| e.to_string())?;
        let r: ReplayRecord = serde_json::from_slice(&body).map_err(|e| format!("{path}: {e}"))?;
        match path.strip_suffix(PENDING) {
            Some(base) if !paths.contains(&format!("{base}.json")) => pending.push(r),
            Some(_) => {}
            None => done.push(r),
        }
    }
    Ok((done, pending))
}

/// Every position an earlier replay of `pipeline` wrote.
pub async fn replayed_positions(lake: &Lake, pipeline: &str) -> Result<BTreeSet<Position>, String> {
    Ok(records(lake, pipeline)
        .await?
        .0
        .into_iter()
        .flat_map(|r| r.positions)
        .collect())
}

async fn publish_record(lake: &Lake, r: &ReplayRecord, suffix: &str) -> Result<(), String> {
    let body = serde_json::to_vec_pretty(r).map_err(|e| e.to_string())?;
    lake.publish(
        &format!("{}/{}{suffix}", ledger_dir(&r.pipeline), r.replay_id),
        Bytes::from(body),
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Replays `letters` (decode- and transform-stage dead letters of `p`). `since` (µs since
/// the epoch) narrows the new work to letters that failed at or after it; a replay cut
/// short is finished with all its positions whenever they failed, so pass every letter.
pub async fn replay(
    p: &Pipeline,
    lake: &Lake,
    warehouse: Option<&Warehouse>,
    letters: Vec<DeadLetter>,
    since: Option<i64>,
) -> Result<Replayed, String> {
    let name = &p.spec.name;
    let mut out = Replayed::default();
    let (finished, pending) = records(lake, name).await?;
    let done: BTreeSet<Position> = finished.into_iter().flat_map(|r| r.positions).collect();
    let started: BTreeSet<&Position> = pending.iter().flat_map(|r| &r.positions).collect();
    // one attempt per source position (a DLQ topic may hold a record twice)
    let mut seen = BTreeSet::new();
    let mut todo = Vec::new();
    for d in letters {
        if !matches!(d.stage, ErrorStage::Decode | ErrorStage::Transform) {
            continue;
        }
        let pos = (d.topic.clone(), d.partition, d.offset);
        // `since` narrows what is new, never what a replay cut short has to finish
        if since.is_some_and(|s| d.failed_at < s) && !started.contains(&pos) {
            continue;
        }
        if !seen.insert(pos.clone()) {
            continue;
        }
        out.considered += 1;
        if done.contains(&pos) {
            out.already_replayed += 1;
            continue;
        }
        todo.push((pos, d));
    }
    todo.sort_by(|a, b| a.0.cmp(&b.0));
    // A replay cut short is finished first, with its own positions and id: its files and
    // warehouse commit may exist already, and are not written again.
    for r in pending {
        let wanted: BTreeSet<&Position> = r.positions.iter().collect();
        let (theirs, rest): (Vec<_>, Vec<_>) =
            todo.into_iter().partition(|(pos, _)| wanted.contains(pos));
        todo = rest;
        let mut finishing = Replayed::default();
        write_replay(p, lake, warehouse, theirs, &mut finishing, Some(r)).await?;
        out.succeeded += finishing.succeeded;
        out.rows.extend(finishing.rows);
    }
    write_replay(p, lake, warehouse, todo, &mut out, None).await?;
    Ok(out)
}

/// Decodes, transforms and writes `todo`; `resume` is a started replay to finish.
async fn write_replay(
    p: &Pipeline,
    lake: &Lake,
    warehouse: Option<&Warehouse>,
    todo: Vec<(Position, DeadLetter)>,
    out: &mut Replayed,
    resume: Option<ReplayRecord>,
) -> Result<(), String> {
    let name = &p.spec.name;
    if todo.is_empty() {
        return match &resume {
            None => Ok(()),
            Some(r) => Err(cut_short(name, r, &BTreeSet::new())),
        };
    }

    // decode and transform with the current pipeline
    let mut decoder = JsonDecoder::new(
        &p.fields,
        match p.spec.source.unknown_fields {
            UnknownFieldsSpec::Ignore => UnknownFields::Ignore,
            UnknownFieldsSpec::Dlq => UnknownFields::Dlq,
        },
    );
    let mut decoded: Vec<usize> = Vec::new();
    let mut failed: HashMap<usize, String> = HashMap::new();
    for (i, (_, d)) in todo.iter().enumerate() {
        let r = match &d.value {
            None => Err("record has no value (tombstone)".to_string()),
            Some(v) => decoder.push(v).map_err(|e| e.to_string()),
        };
        match r {
            Ok(()) => decoded.push(i),
            Err(e) => {
                failed.insert(i, format!("decode: {e}"));
            }
        }
    }
    let batch = decoder.finish();
    // anomaly stages score replayed records with fresh detectors (see the reference)
    let (mut outputs, bad, _) = p
        .chain()
        .run(&mut crate::chain::ChainState::default(), batch, true)
        .await
        .map_err(|e| format!("pipeline `{name}`: {e}"))?;
    // alerts of fresh detectors are not the live run's alerts: none is written
    outputs
        .tables
        .retain(|(n, _)| !n.ends_with(crate::chain::ALERTS_SUFFIX));
    for f in bad {
        failed.insert(decoded[f.row], format!("transform: {}", f.error));
    }
    out.failed_again += failed.len();
    let mut failures: Vec<(Position, String)> = failed
        .iter()
        .map(|(i, m)| (todo[*i].0.clone(), m.clone()))
        .collect();
    failures.sort();
    failures.truncate(10);
    out.failures.extend(failures);
    let positions: Vec<Position> = (0..todo.len())
        .filter(|i| !failed.contains_key(i))
        .map(|i| todo[i].0.clone())
        .collect();
    // A replay cut short is finished with exactly the positions it started with, or not at
    // all: its record marks them all done, so one not written now would be lost.
    if let Some(r) = &resume {
        let written: BTreeSet<&Position> = positions.iter().collect();
        if r.positions.iter().any(|pos| !written.contains(pos)) {
            return Err(cut_short(name, r, &written));
        }
    }
    out.succeeded += positions.len();
    if positions.is_empty() {
        return Ok(());
    }
    // Rows of records that failed in a stage are already out of `outputs` (bisection);
    // what remains is exactly the output of the records that passed.
    let record = match resume {
        Some(r) => r,
        None => {
            let mut h = Sha256::new();
            h.update(name.as_bytes());
            for (t, part, off) in &positions {
                h.update(format!("\n{t}/{part}/{off}").as_bytes());
            }
            let r = ReplayRecord {
                pipeline: name.clone(),
                replay_id: hex::encode(&h.finalize()[..12]),
                positions,
                replayed_at: chrono::Utc::now()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            };
            // started: a run cut short from here on is finished by the next one
            publish_record(lake, &r, PENDING).await?;
            r
        }
    };
    let id = record.replay_id.clone();
    let file_name = format!("replay-{id}.parquet");

    // warehouse first (its own ledger row makes a second commit impossible), then lake
    if let Some(wh) = warehouse.filter(|_| !p.warehouse_sinks.is_empty()) {
        let writes = p
            .warehouse_sinks
            .iter()
            .map(|s| ymera_warehouse::TableWrite {
                table: s.table.clone(),
                mode: s.mode.clone(),
                batches: outputs.get(&s.input).cloned().into_iter().collect(),
                origins: Vec::new(),
            })
            .collect();
        let commit = ymera_warehouse::Commit {
            pipeline: format!("{name}#replay"),
            topic: id.clone(),
            partition: 0,
            first: 0,
            next: 1,
            writes,
            on_reject: ymera_warehouse::OnReject::DeadLetter,
        };
        match wh.commit(&commit).await {
            Ok(done) => {
                out.rows.push(("warehouse".into(), done.rows));
                if !done.rejected.is_empty() {
                    out.failures.push((
                        record.positions[0].clone(),
                        format!(
                            "{} row(s) refused by the warehouse, kept in _ymera_dead_letters",
                            done.rejected.len()
                        ),
                    ));
                }
            }
            // committed by an earlier run of this same replay
            Err(ymera_warehouse::WarehouseError::Fenced(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let meta = vec![
        ("ymera.pipeline".to_string(), name.clone()),
        ("ymera.replay".to_string(), id.clone()),
    ];
    for s in &p.sinks {
        let Some(batch) = outputs.get(&s.input) else {
            continue;
        };
        // one txn per replay: a replay run again adds nothing
        let txn = (
            ymera_lake::delta::app_id(&format!("{name}#replay"), &id, 0),
            0,
            0,
        );
        let (_, rows, _) = ymera_lake::delta::append(
            lake,
            &s.table,
            vec![batch.clone()],
            &file_name,
            vec![txn],
            meta.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
        out.rows.push((s.table.table.clone(), rows));
    }
    publish_record(lake, &record, ".json").await?;
    out.replay_id = Some(id);
    Ok(())
}

/// Why the replay `r`, cut short, cannot be finished now: of its positions, only `written`
/// would be written.
fn cut_short(name: &str, r: &ReplayRecord, written: &BTreeSet<&Position>) -> String {
    let lacking: Vec<String> = r
        .positions
        .iter()
        .filter(|pos| !written.contains(pos))
        .map(|(t, part, off)| format!("{t}/{part}@{off}"))
        .collect();
    format!(
        "replay {id} of pipeline `{name}` was cut short and cannot be finished: {n} of its \
         dead letters ({list}{more}) are no longer in the DLQ or fail again with the current \
         pipeline, and finishing without them would mark them replayed; nothing was written. \
         Restore them (or a pipeline that passes them) and run the replay again",
        id = r.replay_id,
        n = lacking.len(),
        list = lacking[..lacking.len().min(5)].join(", "),
        more = if lacking.len() > 5 { ", …" } else { "" },
    )
}

/// Dead letters from rows of the DLQ table schema ([`crate::dlq::schema`]).
pub fn letters_from_batches(batches: &[RecordBatch]) -> Result<Vec<DeadLetter>, String> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType};
    let mut out = Vec::new();
    for b in batches {
        // read back through SQL, strings and bytes may come as views: cast to one form
        let col = |n: &str, ty: DataType| -> Result<arrow::array::ArrayRef, String> {
            let c = b
                .column_by_name(n)
                .ok_or_else(|| format!("DLQ table has no column `{n}`"))?;
            arrow::compute::cast(c, &ty).map_err(|e| format!("DLQ column `{n}`: {e}"))
        };
        let (key, value) = (
            col("key", DataType::Binary)?,
            col("value", DataType::Binary)?,
        );
        let (key, value) = (key.as_binary::<i32>(), value.as_binary::<i32>());
        let stage = col("ymera_error_stage", DataType::Utf8)?;
        let stage = stage.as_string::<i32>();
        let message = col("ymera_error_message", DataType::Utf8)?;
        let message = message.as_string::<i32>();
        let topic = col("ymera_source_topic", DataType::Utf8)?;
        let topic = topic.as_string::<i32>();
        let partition = col("ymera_source_partition", DataType::Int32)?;
        let partition = partition.as_primitive::<Int32Type>();
        let offset = col("ymera_source_offset", DataType::Int64)?;
        let offset = offset.as_primitive::<Int64Type>();
        let pipeline = col("ymera_pipeline", DataType::Utf8)?;
        let pipeline = pipeline.as_string::<i32>();
        let failed_at = col(
            crate::dlq::FAILED_AT,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        )?;
        let failed_at = failed_at.as_primitive::<TimestampMicrosecondType>();
        for i in 0..b.num_rows() {
            out.push(DeadLetter {
                key: (!key.is_null(i)).then(|| key.value(i).to_vec()),
                value: (!value.is_null(i)).then(|| value.value(i).to_vec()),
                stage: match stage.value(i) {
                    "decode" => ErrorStage::Decode,
                    "transform" => ErrorStage::Transform,
                    _ => ErrorStage::Sink,
                },
                message: message.value(i).to_string(),
                topic: topic.value(i).to_string(),
                partition: partition.value(i),
                offset: offset.value(i),
                pipeline: pipeline.value(i).to_string(),
                failed_at: failed_at.value(i),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::tests::{PIPELINE, committed_rows, pipeline_from};

    /// A dead letter of `unit` at offset `offset` that decodes now, failed at `failed_at`.
    fn letter(offset: i64, failed_at: i64) -> DeadLetter {
        DeadLetter {
            key: None,
            value: Some(format!(r#"{{"id": {offset}, "name": "n{offset}"}}"#).into_bytes()),
            stage: ErrorStage::Decode,
            message: "was not JSON then".into(),
            topic: "events".into(),
            partition: 0,
            offset,
            pipeline: "unit".into(),
            failed_at,
        }
    }

    /// A replay of offsets 1 and 2 started and cut short before any sink was written.
    async fn cut_short_replay(lake: &Lake) {
        let r = ReplayRecord {
            pipeline: "unit".into(),
            replay_id: "0123456789abcdef01234567".into(),
            positions: vec![("events".into(), 0, 1), ("events".into(), 0, 2)],
            replayed_at: "2026-12-01T00:00:00.000000Z".into(),
        };
        publish_record(lake, &r, PENDING).await.unwrap();
    }

    #[tokio::test]
    async fn since_never_narrows_a_replay_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let p = pipeline_from(PIPELINE).await;
        cut_short_replay(&lake).await;
        // offset 1 failed long before `since`, offset 2 after it; offset 3 is new and old
        let letters = vec![letter(1, 1_000), letter(2, 9_000), letter(3, 2_000)];
        let r = replay(&p, &lake, None, letters, Some(5_000)).await.unwrap();
        assert_eq!(r.succeeded, 2, "{r:?}");
        assert_eq!(committed_rows(&lake).await.get("people"), Some(&2));
        let done = replayed_positions(&lake, "unit").await.unwrap();
        let want: BTreeSet<Position> = [1, 2].map(|o| ("events".into(), 0, o)).into();
        assert_eq!(
            done, want,
            "offset 3 is older than --since and stays in the DLQ"
        );
    }

    #[tokio::test]
    async fn a_replay_cut_short_whose_letters_are_gone_writes_and_marks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let p = pipeline_from(PIPELINE).await;
        cut_short_replay(&lake).await;
        // offset 1 is no longer in the DLQ
        let e = replay(&p, &lake, None, vec![letter(2, 9_000)], None)
            .await
            .unwrap_err();
        assert!(
            e.contains("cut short") && e.contains("events/0@1") && !e.contains("events/0@2"),
            "{e}"
        );
        assert!(replayed_positions(&lake, "unit").await.unwrap().is_empty());
        assert_eq!(committed_rows(&lake).await.get("people"), None);
    }
}

//! `ymera lake migrate`: a lake of the pre-Delta layout becomes Delta tables, in place.
//!
//! The pre-Delta release recorded each published segment of a pipeline in a commit record,
//! `_ymera/commits/<pipeline>/<topic>+<partition>+<first>-<last>.json`, listing every file
//! of the segment (in every table, dead letters included) with its rows, written after all
//! of them were durable; a finished `ymera dlq replay` wrote `replay-<id>.parquet` files and
//! then `_ymera/replays/<pipeline>/<id>.json`. Only those records say what a table holds: a
//! listing would also find the files of segments that never got their record (a crash
//! between the first file and the record), which the old release deleted on its next start.
//!
//! Each table directory named by the records gets version 0 of its Delta log in one commit:
//! its schema (from the first file's Parquet footer, with the Hive directory columns as
//! partition columns), one Add per recorded file (size from the store, row count from the
//! footer, checked against the record), and, per pipeline that wrote to it, the txn of each
//! source partition at the last offset recorded (and the txn of each finished replay), so
//! `ymera run` resumes exactly where the old release stopped. A table that already has a
//! Delta log is left alone: running the migration twice changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use deltalake::kernel::{Action, Add, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::SaveMode;
use serde::Deserialize;

use crate::delta::{self, app_id};
use crate::error::{LakeError, Result};
use crate::layout::{HIVE_NULL, SegmentId};
use crate::store::Lake;

/// A file of a committed segment, as the pre-Delta commit record lists it.
#[derive(Debug, Deserialize)]
struct RecordFile {
    /// Relative to the lake: `<table>/<col>=<value>/.../<name>.parquet`.
    path: String,
    rows: u64,
}

/// A pre-Delta commit record.
#[derive(Debug, Deserialize)]
struct CommitRecord {
    pipeline: String,
    topic: String,
    partition: i32,
    last_offset: i64,
    files: Vec<RecordFile>,
}

/// A finished pre-Delta replay record.
#[derive(Debug, Deserialize)]
struct ReplayRecord {
    replay_id: String,
}

const COMMITS: &str = "_ymera/commits";
const REPLAYS: &str = "_ymera/replays";

/// What migration did to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migrated {
    /// Version 0 written: files, rows, positions.
    Converted {
        table: String,
        files: usize,
        rows: u64,
        positions: usize,
    },
    /// The table already has a Delta log.
    AlreadyDelta { table: String },
}

/// What a table is given at migration.
#[derive(Debug, Default)]
struct Plan {
    /// Path relative to the table -> rows the record says.
    files: BTreeMap<String, u64>,
    /// App id -> last offset.
    txns: BTreeMap<String, i64>,
    /// Hive columns in directory order.
    partition_cols: Option<Vec<String>>,
}

/// A lake-relative file path taken apart: its table directory, the Hive `(column, value)`
/// pairs of its directories, and the path relative to the table.
type SplitPath = (String, Vec<(String, String)>, String);

/// Splits a lake-relative file path (see [`SplitPath`]).
fn split(path: &str) -> Option<SplitPath> {
    let parts: Vec<&str> = path.split('/').collect();
    let (_, dirs) = parts.split_last()?;
    let hive_from = dirs
        .iter()
        .rposition(|d| !d.contains('='))
        .map_or(0, |i| i + 1);
    if hive_from == 0 {
        return None;
    }
    let table = dirs[..hive_from].join("/");
    let hive = dirs[hive_from..]
        .iter()
        .map(|d| {
            let (c, v) = d.split_once('=').unwrap_or((d, ""));
            (c.to_string(), v.to_string())
        })
        .collect();
    let relative = parts[hive_from..].join("/");
    Some((table, hive, relative))
}

/// A Hive directory value, unescaped (`%2F` -> `/`); `None` for the null value.
fn unescape(value: &str) -> Option<String> {
    (value != HIVE_NULL).then(|| {
        percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned()
    })
}

/// The pipelines with pre-Delta commit records.
pub async fn pre_delta_pipelines(lake: &Lake) -> Result<Vec<String>> {
    let mut out = BTreeSet::new();
    for path in lake.list(COMMITS).await? {
        if let Some(p) = path
            .strip_prefix(&format!("{COMMITS}/"))
            .and_then(|rest| rest.split_once('/'))
        {
            out.insert(p.0.to_string());
        }
    }
    Ok(out.into_iter().collect())
}

/// Whether `table` still needs `ymera lake migrate`: `pipeline` has pre-Delta commit records
/// and the table holds Parquet files but no Delta log.
pub async fn needs_migration(lake: &Lake, pipeline: &str, table: &str) -> Result<bool> {
    if lake
        .list(&format!("{COMMITS}/{pipeline}"))
        .await?
        .is_empty()
    {
        return Ok(false);
    }
    let store = delta::log_store(lake, table)?;
    if store
        .is_delta_table_location()
        .await
        .map_err(|e| delta::classify(table, e))?
    {
        return Ok(false);
    }
    Ok(lake
        .list(table)
        .await?
        .iter()
        .any(|p| p.ends_with(".parquet")))
}

/// Turns every table the pre-Delta records of the lake name into a Delta table (see the
/// module documentation). `dry_run` plans and checks without writing.
pub async fn migrate(lake: &Lake, dry_run: bool) -> Result<Vec<Migrated>> {
    let mut plans: BTreeMap<String, Plan> = BTreeMap::new();
    let add = |plans: &mut BTreeMap<String, Plan>,
               path: &str,
               rows: u64,
               source: &str|
     -> Result<String> {
        let (table, hive, relative) = split(path).ok_or_else(|| {
            LakeError::Invalid(format!(
                "{source}: `{path}` is not a file of a table directory"
            ))
        })?;
        let plan = plans.entry(table.clone()).or_default();
        let cols: Vec<String> = hive.iter().map(|(c, _)| c.clone()).collect();
        match &plan.partition_cols {
            None => plan.partition_cols = Some(cols),
            Some(known) if *known == cols => {}
            Some(known) => {
                return Err(LakeError::Invalid(format!(
                    "{source}: `{path}` is partitioned by [{}] but other files of table `{table}` by [{}]",
                    cols.join(", "),
                    known.join(", ")
                )));
            }
        }
        plan.files.insert(relative, rows);
        Ok(table)
    };
    for pipeline in pre_delta_pipelines(lake).await? {
        let mut paths = lake.list(&format!("{COMMITS}/{pipeline}")).await?;
        paths.sort();
        let mut tables_of_pipeline = BTreeSet::new();
        let mut last: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for path in &paths {
            let name = path.rsplit('/').next().unwrap_or(path);
            if !name.ends_with(".json") || SegmentId::parse(name).is_none() {
                continue;
            }
            let body = lake.get(path).await?;
            let r: CommitRecord = serde_json::from_slice(&body).map_err(|e| {
                LakeError::Invalid(format!("commit record `{path}` is not valid: {e}"))
            })?;
            if r.pipeline != pipeline {
                return Err(LakeError::Invalid(format!(
                    "commit record `{path}` names pipeline `{}`",
                    r.pipeline
                )));
            }
            for f in &r.files {
                tables_of_pipeline.insert(add(&mut plans, &f.path, f.rows, path)?);
            }
            let at = last
                .entry((r.topic.clone(), r.partition))
                .or_insert(r.last_offset);
            *at = (*at).max(r.last_offset);
        }
        // every table of the pipeline holds every partition's position (a segment without
        // rows for a table still moved it)
        for table in &tables_of_pipeline {
            let plan = plans.entry(table.clone()).or_default();
            for ((topic, partition), offset) in &last {
                plan.txns
                    .insert(app_id(&pipeline, topic, *partition), *offset);
            }
        }
        // finished replays: their files, named after them, in the pipeline's tables
        for path in lake.list(&format!("{REPLAYS}/{pipeline}")).await? {
            if !path.ends_with(".json") || path.ends_with(".pending.json") {
                continue;
            }
            let body = lake.get(&path).await?;
            let r: ReplayRecord = serde_json::from_slice(&body).map_err(|e| {
                LakeError::Invalid(format!("replay record `{path}` is not valid: {e}"))
            })?;
            let name = format!("replay-{}.parquet", r.replay_id);
            for table in &tables_of_pipeline {
                let found: Vec<String> = lake
                    .list(table)
                    .await?
                    .into_iter()
                    .filter(|p| p.rsplit('/').next() == Some(name.as_str()))
                    .collect();
                for f in &found {
                    let rows = footer_rows(lake, f).await?;
                    add(&mut plans, f, rows, &path)?;
                }
                if !found.is_empty() {
                    plans
                        .entry(table.clone())
                        .or_default()
                        .txns
                        .insert(app_id(&format!("{pipeline}#replay"), &r.replay_id, 0), 0);
                }
            }
        }
    }
    // every table checked (its files' footers read) before any is written: a bad file stops
    // the whole migration
    let mut checked = Vec::new();
    for (table, plan) in &plans {
        checked.push(check(lake, table, plan).await?);
    }
    let mut out = Vec::new();
    for c in checked {
        out.push(match c {
            Checked::AlreadyDelta(m) => m,
            Checked::Ready(m, _) if dry_run => m,
            Checked::Ready(m, write) => {
                write.await.map_err(|e| delta::classify(m.table(), e))?;
                m
            }
        });
    }
    Ok(out)
}

/// Rows of the Parquet file at `path` (lake-relative), from its footer.
async fn footer_rows(lake: &Lake, path: &str) -> Result<u64> {
    Ok(footer(lake, path).await?.2.file_metadata().num_rows() as u64)
}

/// The size, modification time and footer of the recorded file at `path` (lake-relative).
async fn footer(
    lake: &Lake,
    path: &str,
) -> Result<(
    u64,
    i64,
    std::sync::Arc<parquet::file::metadata::ParquetMetaData>,
)> {
    lake.parquet_metadata(path).await?.ok_or_else(|| {
        LakeError::Invalid(format!(
            "`{path}` is listed in the pre-Delta commit records but is not in the lake: restore it before migrating (nothing was written)"
        ))
    })
}

/// A table checked for migration: what it becomes, and the commit that makes it so.
enum Checked {
    AlreadyDelta(Migrated),
    Ready(Migrated, CreateBuilder),
}

impl Migrated {
    fn table(&self) -> &str {
        match self {
            Migrated::Converted { table, .. } | Migrated::AlreadyDelta { table } => table,
        }
    }
}

/// Reads the footers of `plan`'s files and builds version 0 of `table`'s log (not written).
async fn check(lake: &Lake, table: &str, plan: &Plan) -> Result<Checked> {
    let store = delta::log_store(lake, table)?;
    if store
        .is_delta_table_location()
        .await
        .map_err(|e| delta::classify(table, e))?
    {
        return Ok(Checked::AlreadyDelta(Migrated::AlreadyDelta {
            table: table.to_string(),
        }));
    }
    let partition_cols = plan.partition_cols.clone().unwrap_or_default();
    let mut schema: Option<(String, arrow::datatypes::SchemaRef)> = None;
    let mut actions = Vec::new();
    let mut total = 0;
    for (relative, rows) in &plan.files {
        let path = format!("{table}/{relative}");
        let (size, modified, footer) = footer(lake, &path).await?;
        let file_rows = footer.file_metadata().num_rows() as u64;
        if file_rows != *rows {
            return Err(LakeError::Invalid(format!(
                "`{path}` holds {file_rows} rows but its commit record says {rows}: the file was changed after it was committed; nothing was written"
            )));
        }
        let arrow = parquet::arrow::parquet_to_arrow_schema(
            footer.file_metadata().schema_descr(),
            footer.file_metadata().key_value_metadata(),
        )
        .map_err(|e| LakeError::Invalid(format!("`{path}`: {e}")))?;
        let logical = delta::table_schema(&arrow, &partition_cols);
        match &schema {
            None => schema = Some((path.clone(), logical)),
            Some((first, known)) if known.fields() != logical.fields() => {
                return Err(LakeError::Invalid(format!(
                    "`{path}` and `{first}` of table `{table}` have different columns; a Delta table has one schema: move one of them away and migrate again"
                )));
            }
            Some(_) => {}
        }
        let (_, hive, _) = split(&path).unwrap_or_default();
        total += file_rows;
        actions.push(Action::Add(Add {
            path: relative.clone(),
            partition_values: hive.into_iter().map(|(c, v)| (c, unescape(&v))).collect(),
            size: size as i64,
            modification_time: modified,
            data_change: true,
            stats: Some(format!("{{\"numRecords\":{file_rows}}}")),
            tags: None,
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        }));
    }
    let Some((_, logical)) = schema else {
        return Err(LakeError::Invalid(format!(
            "table `{table}`: no file to migrate"
        )));
    };
    let now = chrono::Utc::now().timestamp_millis();
    for (id, offset) in &plan.txns {
        actions.push(Action::Txn(Transaction::new_with_last_update(
            id,
            *offset,
            Some(now),
        )));
    }
    let converted = Migrated::Converted {
        table: table.to_string(),
        files: plan.files.len(),
        rows: total,
        positions: plan.txns.len(),
    };
    let columns = delta::delta_schema(table, &logical)?;
    let write = CreateBuilder::new()
        .with_log_store(store)
        .with_table_name(table.rsplit('/').next().unwrap_or(table))
        .with_columns(columns.fields().cloned())
        .with_partition_columns(partition_cols)
        .with_save_mode(SaveMode::ErrorIfExists)
        .with_actions(actions);
    Ok(Checked::Ready(converted, write))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field};

    use super::*;
    use crate::writer::{TableSpec, TableWriter};

    /// Writes one segment of `events` the way the pre-Delta release did: its files, then its
    /// commit record (`record: false` leaves the record out, as a crash would).
    async fn old_segment(lake: &Lake, partition: i32, first: i64, svc: &[&str], record: bool) {
        let spec = TableSpec {
            partition_by: vec!["dt".into(), "svc".into()],
            ..crate::delta::tests::spec_with(
                Some(Field::new("svc", DataType::Utf8, true)),
                DataType::Int64,
            )
        };
        let n = svc.len() as i64;
        let batch = RecordBatch::try_new(
            spec.schema.clone(),
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        (first..first + n).map(|s| s * 1_000_000),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(Int64Array::from_iter_values(first..first + n)),
                Arc::new(StringArray::from(svc.to_vec())),
            ],
        )
        .unwrap();
        let mut w = TableWriter::new(spec, Vec::new()).unwrap();
        w.write(&batch).unwrap();
        let seg = SegmentId {
            topic: "t".into(),
            partition,
            first,
            last: first + n - 1,
        };
        let mut files = Vec::new();
        for f in w.finish(&seg.file_name()).unwrap() {
            let path = format!("events/{}", f.path);
            lake.publish(&path, f.bytes.clone()).await.unwrap();
            files.push(serde_json::json!({"path": path, "rows": f.rows}));
        }
        if record {
            let rec = serde_json::json!({
                "pipeline": "p", "topic": "t", "partition": partition,
                "first_offset": first, "last_offset": first + n - 1,
                "files": files, "committed_at": "2026-01-01T00:00:00Z",
            });
            lake.publish(
                &format!("{COMMITS}/p/{}.json", seg.name()),
                bytes::Bytes::from(serde_json::to_vec(&rec).unwrap()),
            )
            .await
            .unwrap();
        }
    }

    #[tokio::test]
    async fn escaped_partition_values_and_leftovers_migrate_from_the_records_only() {
        let (_tmp, lake) = crate::delta::tests::lake();
        old_segment(&lake, 0, 0, &["a/b", "c d", "plain"], true).await;
        old_segment(&lake, 0, 3, &["50%", "x:y"], true).await;
        old_segment(&lake, 1, 0, &["a/b"], true).await;
        // a crash between a segment's files and its record
        old_segment(&lake, 1, 1, &["left", "over"], false).await;
        assert!(needs_migration(&lake, "p", "events").await.unwrap());
        let done = migrate(&lake, false).await.unwrap();
        assert_eq!(
            done,
            vec![Migrated::Converted {
                table: "events".into(),
                files: 6,
                rows: 6,
                positions: 2
            }]
        );
        assert!(!needs_migration(&lake, "p", "events").await.unwrap());
        let pos =
            crate::delta::positions(&lake, "events", &[app_id("p", "t", 0), app_id("p", "t", 1)])
                .await
                .unwrap();
        assert_eq!(
            (pos[&app_id("p", "t", 0)], pos[&app_id("p", "t", 1)]),
            (4, 0)
        );
        let out = crate::delta::tests::query(
            &lake,
            "SELECT string_agg(svc, ',' ORDER BY svc) FROM events",
        )
        .await;
        let got = arrow::util::pretty::pretty_format_batches(&out)
            .unwrap()
            .to_string();
        assert!(got.contains("50%,a/b,a/b,c d,plain,x:y"), "{got}");
        // a second run changes nothing
        assert_eq!(
            migrate(&lake, false).await.unwrap(),
            vec![Migrated::AlreadyDelta {
                table: "events".into()
            }]
        );
    }
}

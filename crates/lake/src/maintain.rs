//! Table maintenance through delta-rs: compaction (`optimize`), `vacuum`, a table's history,
//! and the version a point in time names (time travel).
//!
//! Compaction commits with `dataChange=false`: it removes small files and adds their rows in
//! larger ones, and the rows in each match (checked after every run from the log itself). It
//! never conflicts with ingest: delta-rs commits it after any appends that got in first, and a
//! writer reading past it sees no txn of its partitions ([`crate::delta`]).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;

use chrono::{DateTime, TimeZone, Utc};
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::kernel::schema::partitions::{FilterValue, filter_literal};
use deltalake::kernel::transaction::{CommitData, CommitProperties};
use deltalake::logstore::CommitOrBytes;
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::DeltaOperation;
use deltalake::{DeltaTableError, ObjectStore};
use futures::TryStreamExt;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::delta::{self, classify};
use crate::error::{LakeError, Result};
use crate::store::Lake;

/// What an optimize of a table says of a predicate on a column it is not partitioned by
/// (`ymera lake optimize --where` over every table skips such tables).
pub const NOT_A_PARTITION_COLUMN: &str = "is not a partition column";

/// The size compaction bin-packs files to unless told otherwise.
pub const DEFAULT_TARGET_SIZE: u64 = 128 << 20;

/// A condition on a partition column (`dt=2026-12-01`, `dt<2026-12-07`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPredicate {
    pub column: String,
    /// `=`, `!=`, `<`, `<=`, `>`, `>=`.
    pub op: String,
    pub value: String,
}

impl PartitionPredicate {
    /// Parses `COLUMN OP VALUE` (`dt=2026-12-01`, `dt >= 2026-12-01`).
    pub fn parse(s: &str) -> Result<PartitionPredicate> {
        let at = s
            .find(['=', '!', '<', '>'])
            .ok_or_else(|| invalid_predicate(s))?;
        let rest = &s[at..];
        let op = ["!=", "<=", ">=", "=", "<", ">"]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .ok_or_else(|| invalid_predicate(s))?;
        let (column, value) = (s[..at].trim(), rest[op.len()..].trim());
        if column.is_empty() || value.is_empty() {
            return Err(invalid_predicate(s));
        }
        Ok(PartitionPredicate {
            column: column.to_string(),
            op: op.to_string(),
            value: value.trim_matches(|c| c == '\'' || c == '"').to_string(),
        })
    }
}

fn invalid_predicate(s: &str) -> LakeError {
    LakeError::Invalid(format!(
        "`{s}` is not a partition predicate: write COLUMN=VALUE (or !=, <, <=, >, >=) on a partition column, e.g. dt=2026-12-01"
    ))
}

/// What compaction of one table did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Optimized {
    pub table: String,
    /// Active files of the whole table before and after.
    pub files_before: u64,
    pub files_after: u64,
    pub files_removed: u64,
    pub files_added: u64,
    /// Rows of the files removed and of the files added: equal, or the run is an error.
    pub rows_removed: u64,
    pub rows_added: u64,
    pub partitions: u64,
    /// The versions it committed (empty when there was nothing to compact).
    pub versions: Vec<u64>,
}

/// Options of a compaction.
#[derive(Debug, Clone)]
pub struct OptimizeOptions {
    /// Files are bin-packed up to this size.
    pub target_size: u64,
    /// Bins compacted at once (each holds one output file's rows in memory at most).
    pub concurrency: usize,
}

impl Default for OptimizeOptions {
    fn default() -> Self {
        OptimizeOptions {
            target_size: DEFAULT_TARGET_SIZE,
            concurrency: 1,
        }
    }
}

/// Loads `dir` with its file list; an error naming it when it is not a Delta table.
async fn load(lake: &Lake, dir: &str) -> Result<DeltaTable> {
    delta::open(lake, dir)
        .await?
        .ok_or_else(|| not_a_table(lake, dir))
}

/// Rows of each active file of `t`, by path (decoded).
fn rows_by_path(t: &DeltaTable, dir: &str) -> Result<HashMap<String, Option<u64>>> {
    let snapshot = t.snapshot().map_err(|e| delta::delta_err(dir, e))?;
    Ok(snapshot
        .log_data()
        .into_iter()
        .map(|f| (f.path().into_owned(), f.num_records().map(|n| n as u64)))
        .collect())
}

/// Compacts the small files of table `dir` in the partitions `predicates` select (all when
/// empty), and checks from the log that the rows of the files removed are the rows of the
/// files added.
pub async fn optimize(
    lake: &Lake,
    dir: &str,
    predicates: &[PartitionPredicate],
    opts: &OptimizeOptions,
) -> Result<Optimized> {
    optimize_table(lake, load(lake, dir).await?, dir, predicates, opts).await
}

/// [`optimize`] of the loaded table `t`.
async fn optimize_table(
    lake: &Lake,
    t: DeltaTable,
    dir: &str,
    predicates: &[PartitionPredicate],
    opts: &OptimizeOptions,
) -> Result<Optimized> {
    let before = rows_by_path(&t, dir)?;
    let partition_cols = t
        .snapshot()
        .map_err(|e| delta::delta_err(dir, e))?
        .metadata()
        .partition_columns()
        .to_vec();
    for p in predicates {
        if !partition_cols.contains(&p.column) {
            return Err(LakeError::Invalid(format!(
                "table `{dir}`: `{}` {NOT_A_PARTITION_COLUMN} (partition columns: {})",
                p.column,
                if partition_cols.is_empty() {
                    "none".to_string()
                } else {
                    partition_cols.join(", ")
                }
            )));
        }
    }
    let filters = predicates
        .iter()
        .map(|p| filter_literal(&p.column, &p.op, FilterValue::Scalar(&p.value)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| LakeError::Invalid(format!("table `{dir}`: {e}")))?;
    let first_version = t.version().unwrap_or(0);
    // marks this run's commits, to find them among others' afterwards
    let run = uuid::Uuid::new_v4().to_string();
    let target = NonZeroU64::new(opts.target_size.max(1 << 20)).unwrap_or(NonZeroU64::MIN);
    let (after, metrics) = t
        .optimize()
        .with_type(OptimizeType::Compact)
        .with_filters(&filters)
        .with_target_size(target)
        .with_max_concurrent_tasks(opts.concurrency.max(1))
        // row groups of 128k rows (DuckDB's size): what a bin's writer holds in memory
        .with_writer_properties(
            WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .set_max_row_group_row_count(Some(128 * 1024))
                .build(),
        )
        // a long run commits as it goes, so a deadline that cuts it keeps what it did
        .with_min_commit_interval(std::time::Duration::from_secs(60))
        .with_commit_properties(
            CommitProperties::default().with_metadata([(RUN_KEY.to_string(), run.clone().into())]),
        )
        .await
        .map_err(|e| classify(dir, e))?;
    let mut report = Optimized {
        table: dir.to_string(),
        files_before: before.len() as u64,
        files_removed: metrics.num_files_removed,
        files_added: metrics.num_files_added,
        partitions: metrics.partitions_optimized,
        ..Optimized::default()
    };
    report.files_after = report.files_before + report.files_added - report.files_removed;
    if metrics.num_files_removed == 0 {
        return Ok(report);
    }
    // the commits this run made (its mark is in their commitInfo), and the others'
    let last = after.version().unwrap_or(0);
    let store = delta::log_store(lake, dir)?;
    let mut theirs_removed: HashSet<String> = HashSet::new();
    for v in first_version + 1..=last {
        let Some(c) = read_commit(&store, dir, v).await? else {
            continue;
        };
        if c.run.as_deref() != Some(run.as_str()) {
            theirs_removed.extend(c.removed.iter().cloned());
            continue;
        }
        // delta-rs 1.1 lets a compaction commit after another one that removed the same
        // files (its conflict checks look only at removes with dataChange=true), and the
        // rows of those files would then be in the table twice: undo ours first
        if c.removed.iter().any(|p| theirs_removed.contains(p)) {
            repair(&store, dir, first_version, v, &c, &theirs_removed).await?;
            report.files_removed -= c.files_removed.min(report.files_removed);
            report.files_added -= c.files_added.min(report.files_added);
            report.files_after = report.files_before + report.files_added - report.files_removed;
            continue;
        }
        report.versions.push(v);
        report.rows_added += c.rows_added;
        for path in &c.removed {
            match before.get(path) {
                Some(Some(rows)) => report.rows_removed += rows,
                _ => {
                    return Err(LakeError::Internal(format!(
                        "table `{dir}`: compaction at version {v} removed `{path}`, whose row count the log does not give"
                    )));
                }
            }
        }
    }
    if report.rows_added != report.rows_removed {
        return Err(LakeError::Internal(format!(
            "table `{dir}`: compaction (versions {:?}) removed files holding {} rows and added files holding {}: the table's row count changed; report this with the table's `_delta_log`",
            report.versions, report.rows_removed, report.rows_added
        )));
    }
    Ok(report)
}

/// Undoes our compaction commit `c` (at `version`), which removed files another compaction
/// had already removed (`theirs_removed`) and so added their rows a second time: one commit
/// removes the files `c` added and adds back the files `c` removed that the other did not
/// (still on disk: vacuum keeps removed files for the retention). The table then holds
/// every row once, as the other compaction left it.
async fn repair(
    store: &deltalake::logstore::LogStoreRef,
    dir: &str,
    read_version: u64,
    version: u64,
    c: &Commit,
    theirs_removed: &HashSet<String>,
) -> Result<()> {
    // the Add actions of the files to put back, from the version the compaction read (a
    // rare path: only here is the table's file list turned into actions)
    let mut read = DeltaTable::new(store.clone());
    read.load_version(read_version)
        .await
        .map_err(|e| classify(dir, e))?;
    #[allow(deprecated)] // delta-rs wants Arrow arrays here; an Add is what a commit carries
    let adds: HashMap<String, deltalake::kernel::Add> = read
        .snapshot()
        .map_err(|e| delta::delta_err(dir, e))?
        .log_data()
        .into_iter()
        .map(|f| (f.path().into_owned(), f.add_action()))
        .collect();
    let now = Utc::now().timestamp_millis();
    let mut actions = Vec::new();
    for (path, _) in &c.added {
        actions.push(Action::Remove(deltalake::kernel::Remove {
            path: path.clone(),
            deletion_timestamp: Some(now),
            data_change: false,
            extended_file_metadata: None,
            partition_values: None,
            size: None,
            deletion_vector: None,
            tags: None,
            base_row_id: None,
            default_row_commit_version: None,
        }));
    }
    for path in c.removed.iter().filter(|p| !theirs_removed.contains(*p)) {
        let add = adds.get(path).ok_or_else(|| {
            LakeError::Internal(format!(
                "table `{dir}`: compaction at version {version} removed `{path}`, which was not in the table it read"
            ))
        })?;
        actions.push(Action::Add(deltalake::kernel::Add {
            data_change: false,
            ..add.clone()
        }));
    }
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: 0,
    };
    let bytes = CommitData::new(actions, operation, HashMap::new(), Vec::new())
        .get_bytes()
        .map_err(|e| delta::delta_err(dir, e))?;
    tracing::warn!(
        table = dir,
        version,
        "another compaction had already compacted some of the same files: undoing ours"
    );
    for _ in 0..64 {
        let next = store
            .get_latest_version(version)
            .await
            .map_err(|e| classify(dir, e))?
            + 1;
        match store
            .write_commit_entry(
                next,
                CommitOrBytes::LogBytes(bytes.clone()),
                uuid::Uuid::new_v4(),
            )
            .await
        {
            Ok(()) => return Ok(()),
            Err(deltalake::kernel::transaction::TransactionError::VersionAlreadyExists(_)) => {}
            Err(e) => return Err(classify(dir, DeltaTableError::Transaction { source: e })),
        }
    }
    Err(LakeError::Delta {
        table: dir.to_string(),
        message: format!(
            "compaction at version {version} duplicated rows another compaction had compacted and could not be undone (too many concurrent commits): remove the files it added"
        ),
        external: true,
    })
}

/// The newest version of `dir`, listing its log from version `from` on (a cheap check
/// before a load); `None` when there is no table.
pub async fn latest_version(lake: &Lake, dir: &str, from: u64) -> Result<Option<u64>> {
    let store = delta::log_store(lake, dir)?;
    if !store
        .is_delta_table_location()
        .await
        .map_err(|e| classify(dir, e))?
    {
        return Ok(None);
    }
    store
        .get_latest_version(from)
        .await
        .map(Some)
        .map_err(|e| classify(dir, e))
}

/// When the background compaction of `ymera run` compacts a table (`lake.optimize.*`).
#[derive(Debug, Clone)]
pub struct CompactPolicy {
    /// Files are packed up to this size; smaller ones are candidates.
    pub target_size: u64,
    /// A table is compacted once its closed partitions hold at least this many files
    /// compaction can merge (smaller than the target, two or more in a partition).
    pub min_files: usize,
    /// A `dt` partition is closed (compacted) once its day ended this long ago; a table
    /// without `dt` is one partition, always closed.
    pub closed_after: std::time::Duration,
}

impl Default for CompactPolicy {
    fn default() -> Self {
        CompactPolicy {
            target_size: DEFAULT_TARGET_SIZE,
            min_files: 10,
            closed_after: std::time::Duration::from_secs(3600),
        }
    }
}

/// Compacts the closed partitions of `dir` when they hold `policy.min_files` files or more
/// that compaction can merge (all closed partitions then, in one run: `dt < <first open
/// day>`); `None` when nothing qualified or there is no table. One bin at a time. Once a
/// closed partition is down to one file it no longer counts, so a compacted table is not
/// compacted again until new files arrive.
pub async fn compact_closed(
    lake: &Lake,
    dir: &str,
    policy: &CompactPolicy,
) -> Result<Option<Optimized>> {
    let Some(t) = delta::open(lake, dir).await? else {
        return Ok(None);
    };
    let snapshot = t.snapshot().map_err(|e| delta::delta_err(dir, e))?;
    let has_dt = snapshot
        .metadata()
        .partition_columns()
        .iter()
        .any(|c| c == "dt");
    let first_open = (Utc::now()
        - chrono::Duration::from_std(policy.closed_after).unwrap_or_default())
    .date_naive()
    .format("%Y-%m-%d")
    .to_string();
    // small files per partition, of the closed partitions
    let mut small: HashMap<Vec<(String, Option<String>)>, usize> = HashMap::new();
    for f in snapshot.log_data() {
        if f.size() as u64 >= policy.target_size {
            continue;
        }
        let mut key: Vec<(String, Option<String>)> = f.partition_values_map().into_iter().collect();
        key.sort();
        let closed = !has_dt
            || key
                .iter()
                .any(|(c, v)| c == "dt" && v.as_deref().is_some_and(|d| d < first_open.as_str()));
        if closed {
            *small.entry(key).or_default() += 1;
        }
    }
    // files compaction can merge: two or more small ones in a closed partition
    let mergeable: usize = small.values().filter(|n| **n >= 2).sum();
    if mergeable < policy.min_files.max(2) {
        return Ok(None);
    }
    let predicates = if has_dt {
        vec![PartitionPredicate {
            column: "dt".into(),
            op: "<".into(),
            value: first_open,
        }]
    } else {
        Vec::new()
    };
    let opts = OptimizeOptions {
        target_size: policy.target_size,
        concurrency: 1,
    };
    optimize_table(lake, t, dir, &predicates, &opts)
        .await
        .map(Some)
}

/// What vacuum found (and deleted, unless a dry run).
#[derive(Debug, Clone, Default)]
pub struct Vacuumed {
    pub table: String,
    /// Files no version within the retention references, relative to the table.
    pub files: Vec<String>,
}

/// Deletes the files of `dir` that no version within `retain` references: files compaction
/// removed, and orphans of commits that never happened (files older than `retain` that no
/// version references). A `retain` shorter than the table's
/// `delta.deletedFileRetentionDuration` (7 days unless set) is refused unless `force`.
pub async fn vacuum(
    lake: &Lake,
    dir: &str,
    retain: Option<std::time::Duration>,
    dry_run: bool,
    force: bool,
) -> Result<Vacuumed> {
    let t = load(lake, dir).await?;
    let mut builder = t
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_dry_run(dry_run)
        .with_enforce_retention_duration(!force);
    if let Some(r) = retain {
        let r = chrono::Duration::from_std(r)
            .map_err(|_| LakeError::Invalid(format!("retention {r:?} is too long")))?;
        builder = builder.with_retention_period(r);
    }
    let (_, metrics) = builder.await.map_err(|e| match e {
        // delta-rs's vacuum error type is private: its message says which
        DeltaTableError::GenericError { source }
            if source.to_string().starts_with("Invalid retention period") =>
        {
            let e = source;
            LakeError::Invalid(format!(
                "table `{dir}`: {e}; the minimum is the table's `delta.deletedFileRetentionDuration`: \
                 a shorter one can delete files that a reader at an older version, or a writer \
                 about to commit them, still needs. Pass --force to vacuum anyway"
            ))
        }
        e => classify(dir, e),
    })?;
    Ok(Vacuumed {
        table: dir.to_string(),
        files: metrics.files_deleted,
    })
}

/// One commit of a table's log, as `ymera lake history` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commit {
    pub version: u64,
    /// The writer's commit time (`commitInfo.timestamp`), else the log file's.
    pub timestamp: Option<DateTime<Utc>>,
    /// `WRITE`, `OPTIMIZE`, `CREATE TABLE`, … (`commitInfo.operation`).
    pub operation: String,
    pub files_added: u64,
    pub files_removed: u64,
    /// Rows of the files added (their statistics).
    pub rows_added: u64,
    /// Rows of the files removed, when the log still tells (from the commit that added each,
    /// or the file list before the oldest commit read).
    pub rows_removed: Option<u64>,
    /// Paths of the files added with their rows, and of the files removed (decoded: the log
    /// writes them percent-encoded).
    pub added: Vec<(String, Option<u64>)>,
    pub removed: Vec<String>,
    /// Kafka positions committed: `(appId, last offset)`.
    pub positions: Vec<(String, i64)>,
    /// A metaData or protocol action (a schema or property change).
    pub metadata: bool,
    /// The mark of the `ymera lake optimize` run that made it, if one did.
    pub run: Option<String>,
}

/// The commitInfo key that marks the commits of one compaction run.
const RUN_KEY: &str = "ymeraRun";

/// Reads and summarises commit `version`; `None` when its file is gone (log cleanup).
async fn read_commit(
    store: &deltalake::logstore::LogStoreRef,
    dir: &str,
    version: u64,
) -> Result<Option<Commit>> {
    let Some(bytes) = store
        .read_commit_entry(version)
        .await
        .map_err(|e| classify(dir, e))?
    else {
        return Ok(None);
    };
    let mut c = Commit {
        version,
        ..Commit::default()
    };
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let action: Value = serde_json::from_slice(line).map_err(|e| {
            LakeError::Invalid(format!(
                "table `{dir}`: commit {version} is not JSON lines ({e})"
            ))
        })?;
        if let Some(info) = action.get("commitInfo") {
            let ts = info
                .get("inCommitTimestamp")
                .or_else(|| info.get("timestamp"))
                .and_then(Value::as_i64);
            c.timestamp = ts.and_then(|ms| Utc.timestamp_millis_opt(ms).single());
            c.run = info
                .get(RUN_KEY)
                .and_then(Value::as_str)
                .map(str::to_string);
            c.operation = info
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
        } else if let Some(add) = action.get("add") {
            let rows = add
                .get("stats")
                .and_then(Value::as_str)
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .and_then(|s| s.get("numRecords").and_then(Value::as_u64));
            c.files_added += 1;
            c.rows_added += rows.unwrap_or(0);
            if let Some(p) = add.get("path").and_then(Value::as_str) {
                c.added.push((decoded(p), rows));
            }
        } else if let Some(remove) = action.get("remove") {
            c.files_removed += 1;
            if let Some(p) = remove.get("path").and_then(Value::as_str) {
                c.removed.push(decoded(p));
            }
        } else if let Some(txn) = action.get("txn") {
            if let (Some(id), Some(v)) = (
                txn.get("appId").and_then(Value::as_str),
                txn.get("version").and_then(Value::as_i64),
            ) {
                c.positions.push((id.to_string(), v));
            }
        } else if action.get("metaData").is_some() || action.get("protocol").is_some() {
            c.metadata = true;
        }
    }
    Ok(Some(c))
}

/// A path as the log writes it (a URI reference), decoded.
fn decoded(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

/// The commit versions still in the log of `dir`, oldest first, with their files' times.
async fn log_versions(lake: &Lake, dir: &str) -> Result<Vec<(u64, DateTime<Utc>)>> {
    let store = delta::log_store(lake, dir)?;
    let prefix = store.log_path().clone();
    let objects: Vec<_> = store
        .object_store(None)
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| LakeError::store(format!("{dir}/_delta_log"), e))?;
    let mut versions: Vec<(u64, DateTime<Utc>)> = objects
        .into_iter()
        .filter_map(|m| {
            let name = m.location.filename()?;
            let digits = name.strip_suffix(".json")?;
            (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| Some((digits.parse().ok()?, m.last_modified)))
                .flatten()
        })
        .collect();
    versions.sort();
    Ok(versions)
}

/// The newest `limit` commits of `dir` still in its log (all when `None`), newest first.
pub async fn history(lake: &Lake, dir: &str, limit: Option<usize>) -> Result<Vec<Commit>> {
    let store = delta::log_store(lake, dir)?;
    if !store
        .is_delta_table_location()
        .await
        .map_err(|e| classify(dir, e))?
    {
        return Err(not_a_table(lake, dir));
    }
    let versions = log_versions(lake, dir).await?;
    let skip = limit.map_or(0, |n| versions.len().saturating_sub(n));
    let mut commits = Vec::new();
    for (v, modified) in &versions[skip..] {
        if let Some(mut c) = read_commit(&store, dir, *v).await? {
            c.timestamp.get_or_insert(*modified);
            commits.push(c);
        }
    }
    // rows of the files removed: from the commit that added each when it was read, else from
    // the table's file list before the oldest commit read
    let mut rows: HashMap<String, Option<u64>> = HashMap::new();
    if commits.iter().any(|c| c.files_removed > 0)
        && let Some(first) = commits.first().map(|c| c.version).filter(|v| *v > 0)
    {
        let mut t = DeltaTable::new(store.clone());
        if t.load_version(first - 1).await.is_ok() {
            rows = rows_by_path(&t, dir)?;
        }
    }
    for c in &mut commits {
        c.rows_removed = c.removed.iter().try_fold(0u64, |sum, p| {
            rows.get(p).copied().flatten().map(|r| sum + r)
        });
        rows.extend(c.added.iter().cloned());
    }
    commits.reverse();
    Ok(commits)
}

fn not_a_table(lake: &Lake, dir: &str) -> LakeError {
    LakeError::Invalid(format!(
        "`{dir}` is not a Delta table of the lake at {} (no `_delta_log/`)",
        lake.url()
    ))
}

/// The version of `dir` that was current at `at`: the newest commit made at or before it;
/// `None` when the table was created after `at`. An error when `at` is before the oldest
/// version still in the log (the older ones were cleaned up).
pub async fn version_at(lake: &Lake, dir: &str, at: DateTime<Utc>) -> Result<Option<u64>> {
    let versions = log_versions(lake, dir).await?;
    let store = delta::log_store(lake, dir)?;
    let time_of = async |v: u64, modified: DateTime<Utc>| -> Result<DateTime<Utc>> {
        Ok(read_commit(&store, dir, v)
            .await?
            .and_then(|c| c.timestamp)
            .unwrap_or(modified))
    };
    let Some(&(oldest, oldest_modified)) = versions.first() else {
        return Err(LakeError::Invalid(format!("`{dir}` has no commits")));
    };
    let oldest_time = time_of(oldest, oldest_modified).await?;
    if at < oldest_time && oldest == 0 {
        return Ok(None);
    }
    if at < oldest_time {
        return Err(LakeError::Invalid(format!(
            "table `{dir}` has no version as of {at}: its oldest version still in the log, {oldest}, was committed at {oldest_time}"
        )));
    }
    // the last version committed at or before `at` (commit times rise with versions)
    let (mut lo, mut hi) = (0usize, versions.len() - 1);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let (v, m) = versions[mid];
        if time_of(v, m).await? <= at {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(Some(versions[lo].0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::tests::{commit_at, commit_on, create_with, lake, rows};
    use crate::delta::{Committed, Tables, app_id, positions};

    /// `n` commits of 10 rows each, alternating partitions 0 and 1: 2 ids, `n` files.
    async fn ingest(tables: &mut Tables, from: i64, n: i64) {
        for i in from..from + n {
            let (partition, k) = ((i % 2) as i32, i / 2);
            tables
                .commit(&commit_on(partition, k * 10, k * 10 + 9))
                .await
                .unwrap();
            // the checkpoint of a commit, if due, before the next commit (which would skip
            // its own while one is being written)
            tables.settle().await;
        }
    }

    fn data_files(lake: &Lake) -> usize {
        walk(lake.local_root().unwrap())
            .into_iter()
            .filter(|p| p.ends_with(".parquet") && !p.contains("_delta_log"))
            .count()
    }

    fn walk(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
        out
    }

    #[tokio::test]
    async fn compaction_keeps_every_row_and_position_and_ingest_goes_on() {
        let (_tmp, lake) = lake();
        let mut tables = Tables::new(lake.clone());
        ingest(&mut tables, 0, 20).await;
        assert_eq!(rows(&lake).await, 200);
        let done = optimize(&lake, "events", &[], &OptimizeOptions::default())
            .await
            .unwrap();
        assert_eq!(
            (done.files_before, done.files_removed),
            (20, 20),
            "{done:?}"
        );
        assert_eq!((done.files_added, done.files_after), (1, 1), "{done:?}");
        assert_eq!((done.rows_removed, done.rows_added), (200, 200));
        assert_eq!(done.versions, vec![21]);
        assert_eq!(rows(&lake).await, 200);
        // the writer's view is from before the compaction: it commits after it, and the
        // positions are where they were
        assert_eq!(
            tables.commit(&commit_on(0, 100, 109)).await.unwrap(),
            Committed::Version(22)
        );
        let ids = [app_id("p", "t", 0), app_id("p", "t", 1)];
        let pos = positions(&lake, "events", &ids).await.unwrap();
        assert_eq!((pos[&ids[0]], pos[&ids[1]]), (109, 99));
        assert_eq!(
            tables.commit(&commit_on(1, 90, 99)).await.unwrap(),
            Committed::AlreadyHeld
        );
        assert_eq!(rows(&lake).await, 210);
        // nothing left to compact in a selected partition that has one file... and a
        // predicate on a column that is not a partition column is named
        let err = optimize(
            &lake,
            "events",
            &[PartitionPredicate::parse("seq=3").unwrap()],
            &OptimizeOptions::default(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("`seq` is not a partition column"), "{err}");
        let other_day = optimize(
            &lake,
            "events",
            &[PartitionPredicate::parse("dt=2026-12-01").unwrap()],
            &OptimizeOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(other_day.files_removed, 0, "{other_day:?}");
        // history: newest first, with operations, files, rows and positions
        let h = history(&lake, "events", None).await.unwrap();
        assert_eq!(h.len(), 23);
        assert_eq!(h[0].version, 22);
        assert_eq!(h[0].positions, vec![(ids[0].clone(), 109)]);
        assert_eq!((h[0].files_added, h[0].rows_added), (1, 10));
        assert_eq!(h[1].operation, "OPTIMIZE");
        assert_eq!((h[1].files_removed, h[1].rows_removed), (20, Some(200)));
        assert_eq!(h[22].operation, "CREATE TABLE");
        // the newest 2 only: the rows removed come from the file list before them
        let h = history(&lake, "events", Some(2)).await.unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].rows_removed, Some(200));
    }

    #[test]
    fn partition_predicates_parse_or_say_how_to_write_them() {
        let p = PartitionPredicate::parse("dt >= '2026-12-01'").unwrap();
        assert_eq!(
            (p.column.as_str(), p.op.as_str(), p.value.as_str()),
            ("dt", ">=", "2026-12-01")
        );
        let p = PartitionPredicate::parse("region!=eu").unwrap();
        assert_eq!((p.op.as_str(), p.value.as_str()), ("!=", "eu"));
        for bad in ["dt", "=x", "dt=", "dt~x"] {
            let e = PartitionPredicate::parse(bad).unwrap_err().to_string();
            assert!(e.contains("COLUMN=VALUE"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn vacuum_deletes_only_what_no_current_version_needs() {
        let (_tmp, lake) = lake();
        let mut tables = Tables::new(lake.clone());
        ingest(&mut tables, 0, 6).await;
        optimize(&lake, "events", &[], &OptimizeOptions::default())
            .await
            .unwrap();
        // an orphan: a file published for a commit that never happened
        let live = crate::delta::live_files(&lake, "events").await.unwrap();
        let dir = live[0].rsplit_once('/').unwrap().0.to_string();
        lake.publish(
            &format!("events/{dir}/t+0+00000000000000000900-00000000000000000909.parquet"),
            bytes::Bytes::from_static(b"PAR1"),
        )
        .await
        .unwrap();
        assert_eq!(data_files(&lake), 8);
        // the table's minimum (7 days) holds unless forced
        let err = vacuum(
            &lake,
            "events",
            Some(std::time::Duration::ZERO),
            false,
            false,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--force") && err.contains("deletedFileRetentionDuration"),
            "{err}"
        );
        // within the default retention nothing is old enough
        let kept = vacuum(&lake, "events", None, false, false).await.unwrap();
        assert!(kept.files.is_empty(), "{kept:?}");
        let dry = vacuum(&lake, "events", Some(std::time::Duration::ZERO), true, true)
            .await
            .unwrap();
        assert_eq!(dry.files.len(), 7, "{dry:?}");
        assert_eq!(data_files(&lake), 8);
        let done = vacuum(
            &lake,
            "events",
            Some(std::time::Duration::ZERO),
            false,
            true,
        )
        .await
        .unwrap();
        assert_eq!(done.files.len(), 7);
        assert_eq!(data_files(&lake), 1);
        assert_eq!(rows(&lake).await, 60);
    }

    #[tokio::test]
    async fn the_log_is_cleaned_up_after_checkpoints_and_old_versions_say_so() {
        let (_tmp, lake) = lake();
        let lake = lake.with_checkpoint_interval(5);
        create_with(
            &lake,
            deltalake::TableProperty::LogRetentionDuration,
            "interval 0 seconds",
        )
        .await;
        let mut tables = Tables::new(lake.clone());
        ingest(&mut tables, 0, 3).await;
        let before_four = Utc::now();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        ingest(&mut tables, 3, 9).await;
        // checkpoints at 5 and 10; the commits before 10 are gone
        let versions: Vec<u64> = log_versions(&lake, "events")
            .await
            .unwrap()
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        assert_eq!(versions, vec![10, 11, 12]);
        assert_eq!(rows(&lake).await, 120);
        let ids = [app_id("p", "t", 0), app_id("p", "t", 1)];
        let pos = positions(&lake, "events", &ids).await.unwrap();
        assert_eq!((pos[&ids[0]], pos[&ids[1]]), (59, 59));
        let err = version_at(&lake, "events", before_four)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("oldest version still in the log, 10"), "{err}");
        assert_eq!(
            version_at(&lake, "events", Utc::now()).await.unwrap(),
            Some(12)
        );
        assert_eq!(history(&lake, "events", None).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_time_names_the_version_committed_at_or_before_it() {
        let (_tmp, lake) = lake();
        let mut tables = Tables::new(lake.clone());
        let mut times = Vec::new();
        for i in 0..4 {
            ingest(&mut tables, i, 1).await;
            tokio::time::sleep(std::time::Duration::from_millis(15)).await;
            times.push(Utc::now());
        }
        // version 0 creates the table; the commit of round i is version i + 1
        for (i, t) in times.iter().enumerate() {
            assert_eq!(
                version_at(&lake, "events", *t).await.unwrap(),
                Some(i as u64 + 1)
            );
        }
        let long_ago = Utc::now() - chrono::Duration::days(1);
        // before the table existed
        assert_eq!(version_at(&lake, "events", long_ago).await.unwrap(), None);
    }

    #[tokio::test]
    async fn background_compaction_takes_closed_partitions_with_enough_small_files() {
        let (_tmp, lake) = lake();
        let mut tables = Tables::new(lake.clone());
        let policy = CompactPolicy {
            min_files: 4,
            ..CompactPolicy::default()
        };
        // no table yet: nothing to do
        assert!(
            compact_closed(&lake, "events", &policy)
                .await
                .unwrap()
                .is_none()
        );
        // 3 small files of a closed day (1970-01-01) and 5 of today (open)
        ingest(&mut tables, 0, 3).await;
        let now_us = Utc::now().timestamp_micros();
        for k in 0..5 {
            tables
                .commit(&commit_at(2, k * 10, k * 10 + 9, now_us - 200_000_000))
                .await
                .unwrap();
        }
        assert!(
            compact_closed(&lake, "events", &policy)
                .await
                .unwrap()
                .is_none()
        );
        // a fourth closed file: the closed day is compacted, today is left alone
        ingest(&mut tables, 3, 1).await;
        let done = compact_closed(&lake, "events", &policy)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((done.files_removed, done.files_added), (4, 1), "{done:?}");
        assert_eq!(done.files_after, 6);
        assert_eq!(rows(&lake).await, 90);
        assert!(
            compact_closed(&lake, "events", &policy)
                .await
                .unwrap()
                .is_none()
        );
    }

    /// delta-rs 1.1 commits a second compaction of files another one already compacted
    /// (it checks only removes with dataChange=true): without the repair, every row of
    /// those files would be in the table twice.
    #[tokio::test]
    async fn two_compactions_of_the_same_files_leave_every_row_once() {
        let (_tmp, lake) = lake();
        let mut tables = Tables::new(lake.clone());
        ingest(&mut tables, 0, 8).await;
        // two compactors read the table at the same version
        let a = crate::delta::open(&lake, "events").await.unwrap().unwrap();
        let b = crate::delta::open(&lake, "events").await.unwrap().unwrap();
        let opts = OptimizeOptions::default();
        let first = optimize_table(&lake, a, "events", &[], &opts)
            .await
            .unwrap();
        assert_eq!(
            (first.files_removed, first.files_added),
            (8, 1),
            "{first:?}"
        );
        let second = optimize_table(&lake, b, "events", &[], &opts)
            .await
            .unwrap();
        assert!(second.versions.is_empty(), "{second:?}");
        assert_eq!(
            (second.files_removed, second.files_added),
            (0, 0),
            "{second:?}"
        );
        // `rows` fails on a duplicate
        assert_eq!(rows(&lake).await, 80);
        assert_eq!(
            crate::delta::live_files(&lake, "events")
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            tables.commit(&commit_on(0, 40, 49)).await.unwrap(),
            Committed::Version(12)
        );
        assert_eq!(rows(&lake).await, 90);
    }
}

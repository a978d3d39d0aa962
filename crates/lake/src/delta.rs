//! Lake tables are Delta Lake tables (interfaces.md "Lake layout"), written through delta-rs.
//!
//! A publication commits, per table, its data files (Add actions with statistics computed by
//! [`crate::writer`]) and one application transaction (`txn`) per source partition it covers,
//! `appId = "ymera:<pipeline>:<topic>:<partition>"`, `version = <last offset written>`, in one
//! atomic Delta commit. Positions are read back from the table's snapshot (its checkpoint and
//! the log after it), never from a listing of data files.
//!
//! Exactly-once rules kept here:
//! - the txn version of a partition is checked in the snapshot the commit is built on, and
//!   delta-rs's conflict checker refuses the commit (`ConcurrentTransaction`) when a newer
//!   commit carries the same appId; the table is then re-read: positions that cover ours mean
//!   the segment is already in ([`Committed::AlreadyHeld`]), a position inside ours is an
//!   overlap and one before our first offset a gap: errors, never a second copy or a hole;
//!   other conflicts (a metadata change, a stale view of our own) commit again from a
//!   fresh load;
//! - a data file is published without replacing anything: when its name is taken (an orphan
//!   of an earlier attempt, or a file another writer committed) it gets a unique suffix, so no
//!   file is ever referenced twice, and on a drop only files this call created that no commit
//!   references are deleted;
//! - tables stay at reader 1 / writer 2 with no table features, and a table whose
//!   `delta.setTransactionRetentionDuration` is set is refused (it would expire positions).

use std::collections::HashMap;
use std::sync::{Arc, Once};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::logstore::{
    LogStore, LogStoreFactory, LogStoreRef, StorageConfig, default_logstore, logstore_factories,
    logstore_with,
};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError, ObjectStore};
use tracing::{info, warn};
use url::Url;

use crate::error::{LakeError, Result};
use crate::store::{Lake, Published};
use crate::writer::TableSpec;

/// The table property that would silently expire positions.
const TXN_RETENTION: &str = "delta.setTransactionRetentionDuration";

/// The application-transaction id of a source partition.
pub fn app_id(pipeline: &str, topic: &str, partition: i32) -> String {
    format!("ymera:{pipeline}:{topic}:{partition}")
}

/// One data file ready to be added to a table.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// Path relative to the table directory (`dt=2026-01-01/<name>.parquet`).
    pub path: String,
    /// Raw (unescaped) partition values; `None` is a null partition value.
    pub partition_values: Vec<(String, Option<String>)>,
    pub bytes: Bytes,
    pub rows: u64,
    /// Delta `stats` JSON.
    pub stats: String,
}

/// What a table commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The files are in, as this table version.
    Version(u64),
    /// The table already holds these offsets (an earlier attempt, or another writer, committed
    /// them); nothing was added.
    AlreadyHeld,
}

/// The logical (Delta) schema of a table written from `input` partitioned by `partition_by`:
/// the data columns (every input column that is not a partition column) then the partition
/// columns (`dt` a date, the others strings), all nullable.
pub fn table_schema(input: &Schema, partition_by: &[String]) -> SchemaRef {
    let mut fields: Vec<Field> = input
        .fields()
        .iter()
        .filter(|f| !partition_by.contains(f.name()))
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    for p in partition_by {
        let t = if p == "dt" {
            DataType::Date32
        } else {
            DataType::Utf8
        };
        fields.push(Field::new(p, t, true));
    }
    Arc::new(Schema::new(fields))
}

/// A timestamp type other than µs UTC somewhere in `t` (Delta's `timestamp` is µs UTC;
/// anything else would need `timestamp_ntz`, a newer protocol, or change its unit).
fn odd_timestamp(t: &DataType) -> Option<&DataType> {
    match t {
        DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some(tz))
            if tz.eq_ignore_ascii_case("utc") =>
        {
            None
        }
        DataType::Timestamp(..) => Some(t),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            odd_timestamp(f.data_type())
        }
        DataType::Struct(fields) => fields.iter().find_map(|f| odd_timestamp(f.data_type())),
        DataType::Map(f, _) => odd_timestamp(f.data_type()),
        _ => None,
    }
}

/// The Delta form of a table schema; an error names the column Delta cannot hold.
pub fn delta_schema(table: &str, schema: &Schema) -> Result<StructType> {
    for f in schema.fields() {
        if let Some(t) = odd_timestamp(f.data_type()) {
            return Err(LakeError::Invalid(format!(
                "table `{table}`: column `{}` holds {t}; lake tables hold timestamps as µs UTC (Delta `timestamp`): cast it, e.g. `arrow_cast({}, 'Timestamp(Microsecond, Some(\"UTC\"))')`",
                f.name(),
                f.name()
            )));
        }
        let one = Schema::new(vec![f.as_ref().clone()]);
        let converted: std::result::Result<StructType, _> = (&one).try_into_kernel();
        if let Err(e) = converted {
            return Err(LakeError::Invalid(format!(
                "table `{table}`: column `{}` of type {} cannot be stored in a Delta table ({e}); cast it in SQL (timestamps as µs UTC)",
                f.name(),
                f.data_type()
            )));
        }
    }
    schema.try_into_kernel().map_err(|e| {
        LakeError::Invalid(format!("table `{table}`: schema not valid for Delta: {e}"))
    })
}

/// Writes `batches` for `spec` as one set of files named `file_name` (one per partition
/// directory; `metadata` in each file's key-value metadata) and commits them, with `txns`
/// (`(app id, first, last)`), in one commit: the whole publication for callers that hold
/// every row at once (replays, the input-rate table, tests). Encoding runs off the async
/// threads. Returns the outcome and the rows and files it added.
pub async fn append(
    lake: &Lake,
    spec: &TableSpec,
    batches: Vec<arrow::array::RecordBatch>,
    file_name: &str,
    txns: Vec<(String, i64, i64)>,
    metadata: Vec<(String, String)>,
) -> Result<(Committed, u64, usize)> {
    let (writer_spec, name) = (spec.clone(), file_name.to_string());
    let files = tokio::task::spawn_blocking(move || {
        let mut w = crate::writer::TableWriter::new(writer_spec, metadata)?;
        for b in &batches {
            w.write(b)?;
        }
        w.finish(&name)
    })
    .await
    .map_err(|e| LakeError::Internal(format!("encoding task failed: {e}")))??;
    let commit = TableCommit::new(spec, files, txns);
    match Tables::new(lake.clone()).commit(&commit).await? {
        Committed::AlreadyHeld => Ok((Committed::AlreadyHeld, 0, 0)),
        done => Ok((done, commit.rows(), commit.files.len())),
    }
}

/// S3 log stores: the default log store over our own client, whose `PutMode::Create` is a
/// conditional PUT (`If-None-Match: *`): no DynamoDB, no AWS SDK.
struct ConditionalPutLogStores;

impl LogStoreFactory for ConditionalPutLogStores {
    fn with_options(
        &self,
        prefixed_store: Arc<dyn ObjectStore>,
        root_store: Arc<dyn ObjectStore>,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_s3() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            if let Ok(url) = Url::parse(scheme) {
                logstore_factories().insert(url, Arc::new(ConditionalPutLogStores));
            }
        }
    });
}

fn delta_err(table: &str, e: impl std::fmt::Display) -> LakeError {
    LakeError::Delta {
        table: table.to_string(),
        message: e.to_string(),
        external: false,
    }
}

/// The log store of a table directory of the lake.
pub fn log_store(lake: &Lake, table: &str) -> Result<LogStoreRef> {
    register_s3();
    let url = Url::parse(&lake.dir_url(table)).map_err(|e| LakeError::Url {
        url: lake.dir_url(table),
        message: e.to_string(),
    })?;
    logstore_with(lake.root_store(), &url, StorageConfig::default())
        .map_err(|e| delta_err(table, e))
}

/// Opens the table at `table` (relative to the lake), `None` when there is no Delta table.
pub async fn open(lake: &Lake, table: &str) -> Result<Option<DeltaTable>> {
    let store = log_store(lake, table)?;
    if !store
        .is_delta_table_location()
        .await
        .map_err(|e| classify(table, e))?
    {
        return Ok(None);
    }
    let mut t = DeltaTable::new(store);
    t.load().await.map_err(|e| classify(table, e))?;
    check_table(table, &t)?;
    Ok(Some(t))
}

/// Refuses tables whose settings would break positions.
fn check_table(table: &str, t: &DeltaTable) -> Result<()> {
    let snapshot = t.snapshot().map_err(|e| delta_err(table, e))?;
    if let Some(v) = snapshot.metadata().configuration().get(TXN_RETENTION) {
        return Err(LakeError::Invalid(format!(
            "table `{table}` sets `{TXN_RETENTION}={v}`, which expires the Kafka positions ymera keeps in it: unset it (ALTER TABLE ... UNSET TBLPROPERTIES)"
        )));
    }
    Ok(())
}

/// delta-rs errors: object-store trouble is external (retried), the rest says what is wrong.
fn classify(table: &str, e: DeltaTableError) -> LakeError {
    match e {
        DeltaTableError::ObjectStore { source } => LakeError::store(table, source),
        DeltaTableError::Transaction {
            source: TransactionError::ObjectStore { source },
        } => LakeError::store(table, source),
        DeltaTableError::Io { source } => LakeError::io(table, source),
        DeltaTableError::KernelError(
            e @ (delta_kernel::Error::ObjectStore(_) | delta_kernel::Error::IOError(_)),
        ) => LakeError::Delta {
            table: table.to_string(),
            message: format!("reading the log: {e}"),
            external: true,
        },
        DeltaTableError::VersionAlreadyExists(_)
        | DeltaTableError::Transaction {
            source:
                TransactionError::MaxCommitAttempts(_) | TransactionError::VersionAlreadyExists(_),
        } => LakeError::Delta {
            table: table.to_string(),
            message: format!("{e}: too many concurrent commits"),
            external: true,
        },
        other => delta_err(table, other),
    }
}

/// Reads each app id's position (the txn version) from the table's latest snapshot, in one
/// load of the log. Ids the table has no txn for are absent.
pub async fn positions(
    lake: &Lake,
    table: &str,
    app_ids: &[String],
) -> Result<HashMap<String, i64>> {
    let Some(t) = open(lake, table).await? else {
        return Ok(HashMap::new());
    };
    txn_versions(table, &t, app_ids).await
}

/// The data files of the table's latest snapshot (paths relative to the table), sorted;
/// empty when there is no table. Only these are the table: a listing of the directory also
/// finds files of commits that never happened.
pub async fn live_files(lake: &Lake, table: &str) -> Result<Vec<String>> {
    let Some(t) = open(lake, table).await? else {
        return Ok(Vec::new());
    };
    let snapshot = t.snapshot().map_err(|e| delta_err(table, e))?;
    let mut files: Vec<String> = snapshot
        .log_data()
        .into_iter()
        .map(|add| add.object_store_path().to_string())
        .collect();
    files.sort();
    Ok(files)
}

/// The data files of `table` at `version`, with their sizes (paths relative to the lake).
pub async fn files_at(lake: &Lake, table: &str, version: u64) -> Result<Vec<(String, u64)>> {
    let mut t = DeltaTable::new(log_store(lake, table)?);
    t.load_version(version)
        .await
        .map_err(|e| classify(table, e))?;
    let snapshot = t.snapshot().map_err(|e| delta_err(table, e))?;
    let mut files: Vec<(String, u64)> = snapshot
        .log_data()
        .into_iter()
        .map(|add| {
            (
                format!("{table}/{}", add.object_store_path()),
                u64::try_from(add.size()).unwrap_or_default(),
            )
        })
        .collect();
    files.sort();
    Ok(files)
}

async fn txn_versions(
    table: &str,
    t: &DeltaTable,
    app_ids: &[String],
) -> Result<HashMap<String, i64>> {
    let snapshot = t.snapshot().map_err(|e| delta_err(table, e))?;
    let store = t.log_store();
    let mut out = HashMap::new();
    for id in app_ids {
        if let Some(v) = snapshot
            .transaction_version(store.as_ref(), id)
            .await
            .map_err(|e| classify(table, e))?
        {
            out.insert(id.clone(), v);
        }
    }
    Ok(out)
}

/// The tables a writer has open: each loaded once, then kept at the version of its last
/// commit (a commit is checked against every newer version by delta-rs itself).
pub struct Tables {
    lake: Lake,
    open: HashMap<String, DeltaTable>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables")
            .field("open", &self.open.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A commit to make: the files of one table and the positions they bring it to.
#[derive(Debug, Clone)]
pub struct TableCommit {
    /// The table directory relative to the lake.
    pub table: String,
    /// Its logical schema ([`table_schema`]): used to create it, and checked against it.
    pub schema: SchemaRef,
    pub partition_by: Vec<String>,
    pub files: Vec<DataFile>,
    /// `(app id, first offset, last offset)` per source partition covered.
    pub txns: Vec<(String, i64, i64)>,
}

impl TableCommit {
    /// The commit of `files` written for `spec`, bringing each of `txns` (`(app id, first,
    /// last)`) to its last offset.
    pub fn new(spec: &TableSpec, files: Vec<DataFile>, txns: Vec<(String, i64, i64)>) -> Self {
        TableCommit {
            table: spec.table.clone(),
            schema: spec.table_schema(),
            partition_by: spec.partition_by.clone(),
            files,
            txns,
        }
    }

    /// Rows in its files.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
}

impl Tables {
    pub fn new(lake: Lake) -> Tables {
        Tables {
            lake,
            open: HashMap::new(),
        }
    }

    /// The lake.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Forgets every cached table: their next commit starts from a fresh load (after an
    /// assignment, whose positions the resolver read from the log).
    pub fn forget_all(&mut self) {
        self.open.clear();
    }

    /// Opens `table`, creating it with `schema` when it does not exist, and checks that its
    /// columns are what we write.
    async fn table(
        &mut self,
        table: &str,
        schema: &Schema,
        partition_by: &[String],
    ) -> Result<&mut DeltaTable> {
        if !self.open.contains_key(table) {
            let ours = delta_schema(table, schema)?;
            let t = match open(&self.lake, table).await? {
                Some(t) => t,
                None => {
                    let created = CreateBuilder::new()
                        .with_log_store(log_store(&self.lake, table)?)
                        .with_table_name(table.rsplit('/').next().unwrap_or(table))
                        .with_columns(ours.fields().cloned())
                        .with_partition_columns(partition_by.iter().cloned())
                        .with_save_mode(SaveMode::Ignore)
                        .with_commit_properties(
                            CommitProperties::default().with_create_checkpoint(false),
                        )
                        .await;
                    match created {
                        Ok(t) => {
                            info!(table, "created the Delta table");
                            t
                        }
                        // another writer created it first
                        Err(e) => match open(&self.lake, table).await? {
                            Some(t) => t,
                            None => return Err(classify(table, e)),
                        },
                    }
                }
            };
            check_columns(table, &t, &ours, partition_by)?;
            self.open.insert(table.to_string(), t);
        }
        self.open
            .get_mut(table)
            .ok_or_else(|| LakeError::Internal(format!("table `{table}` vanished from the cache")))
    }

    /// Commits `c`: its files (published first) and its txns, atomically. See the module
    /// documentation for the rules.
    pub async fn commit(&mut self, c: &TableCommit) -> Result<Committed> {
        let lake = self.lake.clone();
        let ids: Vec<String> = c.txns.iter().map(|t| t.0.clone()).collect();
        // files this call published (paths relative to the lake) and their Add actions
        let mut created: Vec<String> = Vec::new();
        let mut adds: Vec<Action> = Vec::new();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut conflicts = 0;
        loop {
            let fresh = !self.open.contains_key(&c.table);
            let t = self.table(&c.table, &c.schema, &c.partition_by).await?;
            let versions = txn_versions(&c.table, t, &ids).await?;
            // a cached view is older than the log: what looks like a gap may be commits it
            // has not seen (the partition was elsewhere meanwhile); a fresh load decides
            if !fresh && gap(&versions, &c.txns) {
                self.open.remove(&c.table);
                continue;
            }
            if held(&c.table, &versions, &c.txns)? {
                if !created.is_empty() {
                    // ours only if no commit references them (a lost acknowledgement can
                    // make our own commit the one that holds these offsets)
                    let live: std::collections::HashSet<String> = t
                        .snapshot()
                        .map_err(|e| delta_err(&c.table, e))?
                        .log_data()
                        .into_iter()
                        .map(|add| format!("{}/{}", c.table, add.object_store_path()))
                        .collect();
                    for path in created.iter().filter(|p| !live.contains(*p)) {
                        lake.delete(path).await?;
                    }
                }
                return Ok(Committed::AlreadyHeld);
            }
            if adds.is_empty() && !c.files.is_empty() {
                // publish the files, each under a name nobody else uses
                for f in &c.files {
                    let path = publish_unique(&lake, &c.table, &f.path, &f.bytes).await?;
                    created.push(format!("{}/{path}", c.table));
                    adds.push(Action::Add(Add {
                        path,
                        partition_values: f.partition_values.iter().cloned().collect(),
                        size: f.bytes.len() as i64,
                        modification_time: now_ms,
                        data_change: true,
                        stats: Some(f.stats.clone()),
                        tags: None,
                        deletion_vector: None,
                        base_row_id: None,
                        default_row_commit_version: None,
                        clustering_provider: None,
                    }));
                }
            }
            let txns = c
                .txns
                .iter()
                .map(|(id, _, last)| Transaction::new_with_last_update(id, *last, Some(now_ms)))
                .collect();
            // checkpoints every 100 commits (delta-rs's default interval) keep a reader's
            // replay short; expired-log cleanup lists the whole log: not on every commit
            let props = CommitProperties::default()
                .with_application_transactions(txns)
                .with_max_retries(15)
                .with_cleanup_expired_logs(Some(false));
            let operation = DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: (!c.partition_by.is_empty()).then(|| c.partition_by.clone()),
                predicate: None,
            };
            let snapshot = t.snapshot().map_err(|e| delta_err(&c.table, e))?;
            let outcome = CommitBuilder::from(props)
                .with_actions(adds.clone())
                .build(Some(snapshot), t.log_store(), operation)
                .await;
            match outcome {
                Ok(done) => {
                    let version = done.version();
                    t.state = Some(done.snapshot());
                    return Ok(Committed::Version(version));
                }
                Err(DeltaTableError::Transaction {
                    source: TransactionError::CommitConflict(conflict),
                }) if conflicts < 3 => {
                    // another commit got in first: the same partitions (another writer, or
                    // our own commit whose acknowledgement was lost), or a metadata change.
                    // Decide again on a fresh load, not an incremental one.
                    warn!(table = c.table, %conflict, "a concurrent commit got in first; re-reading the table");
                    conflicts += 1;
                    self.open.remove(&c.table);
                }
                Err(e) => {
                    // the outcome is unknown (the commit may have landed): re-read next time
                    self.open.remove(&c.table);
                    return Err(classify(&c.table, e));
                }
            }
        }
    }
}

/// True when a partition of `txns` starts past the offset after what `versions` hold.
fn gap(versions: &HashMap<String, i64>, txns: &[(String, i64, i64)]) -> bool {
    txns.iter()
        .any(|(id, first, _)| versions.get(id).is_some_and(|v| *v < *first - 1))
}

/// True when `versions` (txn versions read from the table) hold every partition of `txns`
/// up to its last offset; false when none of them holds any of it. A position inside a range
/// is an overlap: refused.
fn held(table: &str, versions: &HashMap<String, i64>, txns: &[(String, i64, i64)]) -> Result<bool> {
    let mut all = !txns.is_empty();
    for (id, first, last) in txns {
        match versions.get(id) {
            Some(v) if v >= last => {}
            Some(v) if *v >= *first => {
                return Err(LakeError::Invalid(format!(
                    "table `{table}` holds `{id}` up to offset {v}, inside the range {first}..={last} being committed: another writer wrote part of it; the partition is resolved again on restart"
                )));
            }
            Some(v) if *v < *first - 1 => {
                return Err(LakeError::Invalid(format!(
                    "table `{table}` holds `{id}` up to offset {v}, but the range being committed starts at {first}: offsets {} to {} would be missing; the partition is resolved again on restart",
                    v + 1,
                    first - 1
                )));
            }
            _ => all = false,
        }
    }
    Ok(all)
}

/// Checks that an existing table has the columns we write (names and Delta types) and the
/// same partition columns.
fn check_columns(
    table: &str,
    t: &DeltaTable,
    ours: &StructType,
    partition_by: &[String],
) -> Result<()> {
    let snapshot = t.snapshot().map_err(|e| delta_err(table, e))?;
    let theirs = snapshot.schema();
    for f in ours.fields() {
        match theirs.field(f.name()) {
            None => {
                return Err(LakeError::Invalid(format!(
                    "table `{table}` in the lake has no column `{}`, which the pipeline writes (schema evolution is not supported yet)",
                    f.name()
                )));
            }
            Some(g) if g.data_type() != f.data_type() => {
                return Err(LakeError::Invalid(format!(
                    "table `{table}` in the lake has column `{}` as {}, the pipeline writes {}",
                    f.name(),
                    g.data_type(),
                    f.data_type()
                )));
            }
            Some(_) => {}
        }
    }
    let parts = snapshot.metadata().partition_columns();
    if parts[..] != *partition_by {
        return Err(LakeError::Invalid(format!(
            "table `{table}` in the lake is partitioned by {parts:?}, the pipeline partitions it by {partition_by:?}"
        )));
    }
    Ok(())
}

/// Publishes a data file under `rel` in `table`, or under `rel` with a unique suffix when that
/// name is taken. Returns the path used, relative to the table.
async fn publish_unique(lake: &Lake, table: &str, rel: &str, bytes: &Bytes) -> Result<String> {
    let full = format!("{table}/{rel}");
    if lake.publish(&full, bytes.clone()).await? == Published::Created {
        return Ok(rel.to_string());
    }
    let stem = rel.strip_suffix(".parquet").unwrap_or(rel);
    for _ in 0..8 {
        let alt = format!("{stem}.{:016x}.parquet", rand_u64());
        if lake
            .publish(&format!("{table}/{alt}"), bytes.clone())
            .await?
            == Published::Created
        {
            warn!(
                table,
                taken = rel,
                used = alt,
                "a data file of that name exists (left by an earlier attempt); writing under a unique name"
            );
            return Ok(alt);
        }
    }
    Err(LakeError::Internal(format!(
        "cannot find a free file name for `{full}`"
    )))
}

fn rand_u64() -> u64 {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::{TableSpec, TableWriter};
    use arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
    use arrow::datatypes::TimeUnit;

    fn spec() -> TableSpec {
        TableSpec {
            table: "events".into(),
            partition_by: vec!["dt".into()],
            event_time: Some("ts".into()),
            zstd_level: 3,
            schema: Arc::new(Schema::new(vec![
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    false,
                ),
                Field::new("seq", DataType::Int64, false),
            ])),
        }
    }

    /// The files of offsets `first..=last` of partition 0 (one row per offset).
    fn commit(first: i64, last: i64) -> TableCommit {
        let spec = spec();
        let seq: Vec<i64> = (first..=last).collect();
        let ts: Vec<i64> = seq.iter().map(|s| s * 1_000_000).collect();
        let batch = RecordBatch::try_new(
            spec.schema.clone(),
            vec![
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
                Arc::new(Int64Array::from(seq)),
            ],
        )
        .unwrap();
        let mut w = TableWriter::new(spec.clone(), Vec::new()).unwrap();
        w.write(&batch).unwrap();
        let seg = crate::SegmentId {
            topic: "t".into(),
            partition: 0,
            first,
            last,
        };
        TableCommit {
            table: spec.table.clone(),
            schema: spec.table_schema(),
            partition_by: spec.partition_by.clone(),
            files: w.finish(&seg.file_name()).unwrap(),
            txns: vec![(app_id("p", "t", 0), first, last)],
        }
    }

    fn lake() -> (tempfile::TempDir, Lake) {
        let tmp = tempfile::tempdir().unwrap();
        let lake = Lake::open(tmp.path().to_str().unwrap()).unwrap();
        (tmp, lake)
    }

    async fn rows(lake: &Lake) -> usize {
        let ctx = datafusion::prelude::SessionContext::new();
        crate::catalog::register_lake_tables(&ctx, lake)
            .await
            .unwrap();
        let batches = ctx
            .sql("SELECT count(*) AS n, count(DISTINCT seq) AS d FROM events")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let n = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        let d = batches[0]
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(n, d, "duplicate rows");
        n as usize
    }

    #[tokio::test]
    async fn commits_carry_positions_and_a_replay_adds_nothing() {
        let (_tmp, lake) = lake();
        let mut tables = Tables::new(lake.clone());
        assert_eq!(
            tables.commit(&commit(0, 9)).await.unwrap(),
            Committed::Version(1)
        );
        assert_eq!(
            tables.commit(&commit(10, 19)).await.unwrap(),
            Committed::Version(2)
        );
        let id = app_id("p", "t", 0);
        let pos = positions(&lake, "events", std::slice::from_ref(&id))
            .await
            .unwrap();
        assert_eq!(pos.get(&id), Some(&19));
        // a replay of what the table holds is dropped, by a writer with a fresh view too
        assert_eq!(
            Tables::new(lake.clone())
                .commit(&commit(10, 19))
                .await
                .unwrap(),
            Committed::AlreadyHeld
        );
        // a range that starts inside what the table holds is an overlap: refused
        let err = tables.commit(&commit(15, 25)).await.unwrap_err();
        assert!(err.to_string().contains("inside the range"), "{err}");
        assert_eq!(rows(&lake).await, 20);
        // the lowest protocol, no table features
        let t = open(&lake, "events").await.unwrap().unwrap();
        let p = t.snapshot().unwrap().protocol().clone();
        assert_eq!((p.min_reader_version(), p.min_writer_version()), (1, 2));
    }

    #[tokio::test]
    async fn a_zombie_that_loses_the_race_drops_its_segment_and_its_files() {
        let (_tmp, lake) = lake();
        let mut zombie = Tables::new(lake.clone());
        zombie.commit(&commit(0, 9)).await.unwrap();
        // the new owner commits the next range from its own view
        let mut owner = Tables::new(lake.clone());
        assert_eq!(
            owner.commit(&commit(10, 19)).await.unwrap(),
            Committed::Version(2)
        );
        // the zombie, still at version 1, commits the same range: delta-rs's conflict
        // check sees the same appId, the zombie re-reads and finds it held
        assert_eq!(
            zombie.commit(&commit(10, 19)).await.unwrap(),
            Committed::AlreadyHeld
        );
        assert_eq!(rows(&lake).await, 20);
        // the zombie's own file (a unique name, since the owner's took the plain one) is gone
        let files = lake.list("events").await.unwrap();
        let data: Vec<_> = files.iter().filter(|p| p.ends_with(".parquet")).collect();
        assert_eq!(data.len(), 2, "{data:?}");
    }

    #[tokio::test]
    async fn a_partition_that_comes_back_commits_from_a_fresh_view() {
        let (_tmp, lake) = lake();
        // A writes, the partition moves to B, B writes, the partition comes back to A
        let mut a = Tables::new(lake.clone());
        a.commit(&commit(0, 9)).await.unwrap();
        Tables::new(lake.clone())
            .commit(&commit(10, 19))
            .await
            .unwrap();
        // A's view still says 9: its next range, 20..=29, follows what the log says
        assert!(matches!(
            a.commit(&commit(20, 29)).await.unwrap(),
            Committed::Version(3)
        ));
        // a range that would leave a hole is refused
        let err = a.commit(&commit(40, 49)).await.unwrap_err();
        assert!(err.to_string().contains("would be missing"), "{err}");
        assert_eq!(rows(&lake).await, 30);
    }

    #[tokio::test]
    async fn an_orphan_file_is_never_referenced_nor_replaced() {
        let (_tmp, lake) = lake();
        let c = commit(0, 9);
        // a crash left a file of the same name, never committed
        lake.publish(
            &format!("events/{}", c.files[0].path),
            Bytes::from_static(b"garbage"),
        )
        .await
        .unwrap();
        let mut tables = Tables::new(lake.clone());
        tables.commit(&c).await.unwrap();
        assert_eq!(rows(&lake).await, 10);
    }

    #[tokio::test]
    async fn a_table_that_expires_positions_is_refused() {
        let (_tmp, lake) = lake();
        let ours = delta_schema("events", &spec().table_schema()).unwrap();
        CreateBuilder::new()
            .with_log_store(log_store(&lake, "events").unwrap())
            .with_columns(ours.fields().cloned())
            .with_partition_columns(["dt"])
            .with_configuration_property(
                deltalake::TableProperty::SetTransactionRetentionDuration,
                Some("interval 1 day"),
            )
            .await
            .unwrap();
        let err = Tables::new(lake.clone())
            .commit(&commit(0, 9))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(TXN_RETENTION), "{err}");
    }

    #[test]
    fn columns_delta_cannot_hold_are_named() {
        let schema = Schema::new(vec![Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into())),
            true,
        )]);
        let err = delta_schema("t", &schema).unwrap_err().to_string();
        assert!(err.contains("column `at` holds Timestamp(ns"), "{err}");
        // no time zone would need `timestamp_ntz` (reader 3 / writer 7): refused too
        let schema = Schema::new(vec![Field::new(
            "local",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        )]);
        assert!(delta_schema("t", &schema).is_err());
    }
}

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
use deltalake::kernel::transaction::{CommitData, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, MetadataExt, StructType, Transaction};
use deltalake::logstore::{
    CommitOrBytes, LogStore, LogStoreFactory, LogStoreRef, StorageConfig, default_logstore,
    logstore_factories, logstore_with,
};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError, ObjectStore};
use tracing::{info, warn};
use url::Url;

use delta_kernel::snapshot::SnapshotRef as KernelSnapshotRef;

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
    let mut tables = Tables::new(lake.clone());
    let committed = tables.commit(&commit).await;
    tables.settle().await;
    match committed? {
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

pub(crate) fn delta_err(table: &str, e: impl std::fmt::Display) -> LakeError {
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

/// Refuses tables ymera cannot write correctly ([`check_writable`]).
fn check_table(table: &str, t: &DeltaTable) -> Result<()> {
    let snapshot = t.snapshot().map_err(|e| delta_err(table, e))?;
    check_writable(
        table,
        snapshot.protocol(),
        snapshot.metadata().configuration(),
        &snapshot.schema(),
    )
}

/// delta-rs errors: object-store trouble is external (retried), the rest says what is wrong.
pub(crate) fn classify(table: &str, e: DeltaTableError) -> LakeError {
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

/// Reads each app id's position (the txn version) from the table's latest snapshot: its
/// metadata and the txns of its checkpoint and the log after it, never its file list. Ids the
/// table has no txn for are absent.
pub async fn positions(
    lake: &Lake,
    table: &str,
    app_ids: &[String],
) -> Result<HashMap<String, i64>> {
    let Some(mut t) = Followed::load(lake, table).await? else {
        return Ok(HashMap::new());
    };
    t.positions(table, app_ids).await
}

/// Moves the position of `app_id` in `table` from `from` (the txn version it must hold now;
/// `None`: no txn yet) to `to`, forwards or backwards, in a commit of its own with no data:
/// only the txn, and `metadata` in its commitInfo (`ymera lake accept-gap`). Refuses when
/// the position is no longer `from` (a writer moved it meanwhile). `Ok(None)` when there is
/// no table.
pub async fn move_position(
    lake: &Lake,
    table: &str,
    app_id: &str,
    from: Option<i64>,
    to: i64,
    metadata: HashMap<String, serde_json::Value>,
) -> Result<Option<u64>> {
    let ids = [app_id.to_string()];
    for _ in 0..10 {
        let Some(mut t) = Followed::load(lake, table).await? else {
            return Ok(None);
        };
        let now = t.positions(table, &ids).await?.get(app_id).copied();
        if now != from {
            return Err(LakeError::Invalid(format!(
                "table `{table}`: the position of `{app_id}` is {}, not {} any more (a writer \
                 moved it); nothing was changed",
                now.map_or("none".into(), |v| v.to_string()),
                from.map_or("none".into(), |v| v.to_string()),
            )));
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let txns = vec![Transaction::new_with_last_update(app_id, to, Some(now_ms))];
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        let bytes = CommitData::new(Vec::new(), operation, metadata.clone(), txns)
            .get_bytes()
            .map_err(|e| delta_err(table, e))?;
        let next = t.version + 1;
        match t
            .log_store
            .write_commit_entry(next, CommitOrBytes::LogBytes(bytes), uuid::Uuid::new_v4())
            .await
        {
            Ok(()) => return Ok(Some(next)),
            // another commit got in first: read again, and check the position again
            Err(TransactionError::VersionAlreadyExists(_)) => continue,
            Err(e) => return Err(classify(table, DeltaTableError::Transaction { source: e })),
        }
    }
    Err(LakeError::Delta {
        table: table.to_string(),
        message: "too many concurrent commits while moving a position".into(),
        external: true,
    })
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

/// The URL the kernel reads a table at: the table root, with the trailing slash its path
/// joins need.
fn kernel_root(store: &LogStoreRef) -> Url {
    let mut root = store.config().location().clone();
    if !root.path().ends_with('/') {
        let path = format!("{}/", root.path());
        root.set_path(&path);
    }
    root
}

/// A table a writer follows: its metadata loaded once, without its file list, then each
/// commit it makes or reads past. A commit costs the same however many files the table holds
/// (delta-rs's own commit path re-materialises every file's statistics after each commit).
struct Followed {
    log_store: LogStoreRef,
    /// The snapshot loaded: metadata, protocol, and positions as of its version.
    loaded: KernelSnapshotRef,
    /// The newest version whose content this writer knows.
    version: u64,
    /// Positions by app id: read from `loaded` when first asked for, then moved by every
    /// commit made or read past.
    positions: HashMap<String, Option<i64>>,
    /// Write a checkpoint at every version divisible by this (`delta.checkpointInterval`,
    /// else `lake.checkpoint_interval`).
    checkpoint_interval: u64,
    /// When the log last confirmed this view (load, a commit made or read past).
    touched: std::time::Instant,
    /// The table's metadata with the columns our writes add, to commit with the next commit
    /// (schema evolution); `None` when the table already has them.
    evolve: Option<deltalake::kernel::Metadata>,
}

/// A view the log has not confirmed for this long is loaded afresh before a commit: another
/// tool's log cleanup could have deleted the versions after it (they expire after
/// `delta.logRetentionDuration`, 30 days by default), and a commit written into that hole
/// would sit under a checkpoint where no reader sees it.
const MAX_VIEW_AGE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// What a commit another writer made means for ours.
enum Passed {
    /// It touches nothing we write: our commit goes after it.
    Clear,
    /// It moves one of our partitions or changes the table's metadata: decide again on a
    /// fresh load.
    Conflict(String),
}

impl Followed {
    /// Loads the latest snapshot of `table` (metadata and protocol only); `None` when there is
    /// no Delta table. Refuses a table ymera cannot write correctly.
    async fn load(lake: &Lake, table: &str) -> Result<Option<Followed>> {
        let log_store = log_store(lake, table)?;
        if !log_store
            .is_delta_table_location()
            .await
            .map_err(|e| classify(table, e))?
        {
            return Ok(None);
        }
        let (engine, root) = (log_store.engine(None), kernel_root(&log_store));
        let loaded = tokio::task::spawn_blocking(move || {
            delta_kernel::Snapshot::builder_for(root).build(engine.as_ref())
        })
        .await
        .map_err(|e| LakeError::Internal(format!("loading a snapshot failed: {e}")))?
        .map_err(|e| classify(table, DeltaTableError::from(e)))?;
        let config = loaded.table_configuration();
        check_writable(
            table,
            config.protocol(),
            config.metadata().configuration(),
            &loaded.schema(),
        )?;
        let checkpoint_interval = loaded
            .table_properties()
            .checkpoint_interval
            .map_or(lake.checkpoint_interval(), |n| n.get());
        Ok(Some(Followed {
            log_store,
            version: loaded.version(),
            loaded,
            positions: HashMap::new(),
            checkpoint_interval,
            touched: std::time::Instant::now(),
            evolve: None,
        }))
    }

    /// The positions of `ids` this writer knows of (ids without a txn are absent).
    async fn positions(&mut self, table: &str, ids: &[String]) -> Result<HashMap<String, i64>> {
        let unknown: Vec<String> = ids
            .iter()
            .filter(|id| !self.positions.contains_key(*id))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            let (snapshot, engine) = (self.loaded.clone(), self.log_store.engine(None));
            let read = tokio::task::spawn_blocking(move || {
                unknown
                    .into_iter()
                    .map(|id| {
                        let v = snapshot.get_app_id_version(&id, engine.as_ref())?;
                        Ok((id, v))
                    })
                    .collect::<std::result::Result<Vec<_>, delta_kernel::Error>>()
            })
            .await
            .map_err(|e| LakeError::Internal(format!("reading positions failed: {e}")))?
            .map_err(|e| classify(table, DeltaTableError::from(e)))?;
            self.positions.extend(read);
        }
        Ok(ids
            .iter()
            .filter_map(|id| Some((id.clone(), (*self.positions.get(id)?)?)))
            .collect())
    }

    /// Reads commit `version`, made by another writer after the last one this writer knows,
    /// and says whether ours can go after it.
    async fn read_past(&mut self, table: &str, version: u64, ids: &[String]) -> Result<Passed> {
        let Some(bytes) = self
            .log_store
            .read_commit_entry(version)
            .await
            .map_err(|e| classify(table, e))?
        else {
            return Ok(Passed::Conflict(format!(
                "commit {version} exists but cannot be read yet"
            )));
        };
        let mut moved = Vec::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(action) = serde_json::from_slice::<Action>(line) else {
                return Ok(Passed::Conflict(format!(
                    "commit {version} holds an action ymera does not know"
                )));
            };
            match action {
                Action::Txn(txn) if ids.contains(&txn.app_id) => {
                    return Ok(Passed::Conflict(format!(
                        "commit {version} moves `{}` to offset {}",
                        txn.app_id, txn.version
                    )));
                }
                Action::Txn(txn) => moved.push((txn.app_id, txn.version)),
                Action::Metadata(_) | Action::Protocol(_) => {
                    return Ok(Passed::Conflict(format!(
                        "commit {version} changes the table's metadata or protocol"
                    )));
                }
                _ => {}
            }
        }
        for (id, v) in moved {
            self.positions.insert(id, Some(v));
        }
        self.version = version;
        self.touched = std::time::Instant::now();
        Ok(Passed::Clear)
    }
}

/// Table features a writer that only appends new files can leave alone as long as the table
/// does not use them; the ones a table may use are checked in [`check_writable`].
const HARMLESS_TO_APPENDS: &[&str] = &[
    "appendOnly",
    "deletionVectors",
    "timestampNtz",
    "domainMetadata",
    "vacuumProtocolCheck",
    "checkpointProtection",
    "typeWidening",
    "variantType",
];

/// The features a legacy protocol version implies (Delta's PROTOCOL.md, "Table Features").
fn legacy_features(reader: i32, writer: i32) -> Vec<&'static str> {
    let mut implied = Vec::new();
    if reader == 2 {
        implied.push("columnMapping");
    }
    let by_writer = [
        (2, "appendOnly"),
        (2, "invariants"),
        (3, "checkConstraints"),
        (4, "changeDataFeed"),
        (4, "generatedColumns"),
        (5, "columnMapping"),
        (6, "identityColumns"),
    ];
    if writer < 7 {
        implied.extend(
            by_writer
                .iter()
                .filter(|(v, _)| writer >= *v)
                .map(|(_, f)| *f),
        );
    }
    implied
}

/// Every field of `fields`, nested structs included, with its dotted path.
fn all_fields<'a>(
    fields: impl Iterator<Item = &'a deltalake::kernel::StructField>,
    prefix: &str,
    out: &mut Vec<(String, &'a deltalake::kernel::StructField)>,
) {
    for f in fields {
        let path = format!("{prefix}{}", f.name());
        if let deltalake::kernel::DataType::Struct(inner) = f.data_type() {
            all_fields(inner.fields(), &format!("{path}."), out);
        }
        out.push((path, f));
    }
}

/// Refuses a table whose settings would break positions, or that asks writers for something
/// ymera does not do: it appends plain Parquet files, every column nullable, with the columns
/// by name, and checks no constraint. Table features it can leave alone (deletion vectors,
/// `timestampNtz`, ...) are fine; features that constrain writers are fine while the table
/// does not use them (no CHECK constraint, generated or identity column, change data feed,
/// column mapping, row tracking or in-commit timestamps).
fn check_writable(
    table: &str,
    protocol: &deltalake::kernel::Protocol,
    configuration: &HashMap<String, String>,
    schema: &StructType,
) -> Result<()> {
    if let Some(v) = configuration.get(TXN_RETENTION) {
        return Err(LakeError::Invalid(format!(
            "table `{table}` sets `{TXN_RETENTION}={v}`, which expires the Kafka positions ymera keeps in it: unset it (ALTER TABLE ... UNSET TBLPROPERTIES)"
        )));
    }
    let (reader, writer) = (protocol.min_reader_version(), protocol.min_writer_version());
    let mut features: Vec<String> = legacy_features(reader, writer)
        .into_iter()
        .map(str::to_string)
        .collect();
    for f in protocol
        .reader_features()
        .unwrap_or_default()
        .iter()
        .chain(protocol.writer_features().unwrap_or_default())
    {
        features.push(f.as_ref().to_string());
    }
    features.sort();
    features.dedup();
    let on = |key: &str| {
        configuration
            .get(key)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    };
    let mut fields = Vec::new();
    all_fields(schema.fields(), "", &mut fields);
    let columns_with = |key: &str| {
        fields
            .iter()
            .filter(|(_, f)| f.metadata.keys().any(|k| k.starts_with(key)))
            .map(|(p, _)| format!("`{p}`"))
            .collect::<Vec<_>>()
    };
    let mut asks = Vec::new();
    if !(1..=3).contains(&reader) || !(1..=7).contains(&writer) {
        asks.push(format!("protocol {reader}/{writer}"));
    }
    for feature in &features {
        let used = match feature.as_str() {
            f if HARMLESS_TO_APPENDS.contains(&f) => None,
            "invariants" => {
                let cols = columns_with("delta.invariants");
                (!cols.is_empty()).then(|| format!("invariants on {}", cols.join(", ")))
            }
            "checkConstraints" => {
                let names: Vec<_> = configuration
                    .keys()
                    .filter_map(|k| k.strip_prefix("delta.constraints."))
                    .collect();
                (!names.is_empty()).then(|| format!("CHECK constraints {}", names.join(", ")))
            }
            "generatedColumns" => {
                let cols = columns_with("delta.generationExpression");
                (!cols.is_empty()).then(|| format!("generated columns {}", cols.join(", ")))
            }
            "identityColumns" => {
                let cols = columns_with("delta.identity.");
                (!cols.is_empty()).then(|| format!("identity columns {}", cols.join(", ")))
            }
            "changeDataFeed" => on("delta.enableChangeDataFeed")
                .then(|| "change data feed (`delta.enableChangeDataFeed`)".to_string()),
            "inCommitTimestamp" => on("delta.enableInCommitTimestamps")
                .then(|| "in-commit timestamps (`delta.enableInCommitTimestamps`)".to_string()),
            "columnMapping" => configuration
                .get("delta.columnMapping.mode")
                .filter(|m| !m.eq_ignore_ascii_case("none"))
                .map(|m| format!("column mapping (`delta.columnMapping.mode={m}`)")),
            // row tracking binds writers once supported; v2 checkpoints, Iceberg
            // compatibility and anything newer: not written by ymera
            other => Some(format!("the table feature `{other}`")),
        };
        asks.extend(used);
    }
    let not_null: Vec<_> = fields
        .iter()
        .filter(|(_, f)| !f.is_nullable())
        .map(|(p, _)| format!("`{p}`"))
        .collect();
    if !not_null.is_empty() {
        asks.push(format!("NOT NULL columns {}", not_null.join(", ")));
    }
    if !asks.is_empty() {
        return Err(LakeError::Invalid(format!(
            "table `{table}` asks writers for what ymera does not do ({}): ymera appends files with every column nullable and checks no constraint; point the sink at another table",
            asks.join("; ")
        )));
    }
    Ok(())
}

/// The tables a writer has open: each loaded once (metadata only), then followed commit by
/// commit. Checkpoints are written in the background.
pub struct Tables {
    lake: Lake,
    open: HashMap<String, Followed>,
    /// The checkpoint being written per table, if any: at most one at a time each.
    checkpoints: HashMap<String, tokio::task::JoinHandle<()>>,
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

/// Whether and how far back the log is cleaned up after a checkpoint: the table's
/// `delta.enableExpiredLogCleanup` (default true) and `delta.logRetentionDuration` (default
/// 30 days), as every Delta writer reads them.
#[derive(Debug, Clone, Copy)]
struct LogCleanup {
    /// Commits older than this go; `None` when the table turns cleanup off.
    retention: Option<std::time::Duration>,
}

impl LogCleanup {
    fn of(snapshot: &KernelSnapshotRef) -> LogCleanup {
        let props = snapshot.table_properties();
        LogCleanup {
            retention: props.enable_expired_log_cleanup.unwrap_or(true).then(|| {
                props
                    .log_retention_duration
                    .unwrap_or(std::time::Duration::from_secs(30 * 24 * 3600))
            }),
        }
    }
}

/// Commits by other writers a commit may go after before the table is loaded afresh instead.
const MAX_PASSED: usize = 64;

impl Tables {
    pub fn new(lake: Lake) -> Tables {
        Tables {
            lake,
            open: HashMap::new(),
            checkpoints: HashMap::new(),
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

    /// Waits for the checkpoints being written (a one-shot writer before it returns, tests).
    pub async fn settle(&mut self) {
        for (_, h) in self.checkpoints.drain() {
            let _ = h.await;
        }
    }

    /// Opens `table`, creating it with `schema` when it does not exist, and checks that its
    /// columns are what we write.
    async fn table(
        &mut self,
        table: &str,
        schema: &Schema,
        partition_by: &[String],
    ) -> Result<&mut Followed> {
        if !self.open.contains_key(table) {
            let ours = delta_schema(table, schema)?;
            let t = match Followed::load(&self.lake, table).await? {
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
                        Ok(_) => info!(table, "created the Delta table"),
                        // another writer may have created it first: the load below decides
                        Err(e) => warn!(table, error = %e, "creating the Delta table failed"),
                    }
                    Followed::load(&self.lake, table).await?.ok_or_else(|| {
                        delta_err(table, "the table could not be created (see the log)")
                    })?
                }
            };
            let mut t = t;
            let config = t.loaded.table_configuration();
            let added = check_columns(
                table,
                &t.loaded.schema(),
                config.metadata().partition_columns(),
                &ours,
                partition_by,
            )?;
            if !added.is_empty() {
                // schema evolution: the next commit carries the table's metadata with the
                // new (nullable) columns after its own
                let schema = StructType::try_new(
                    t.loaded
                        .schema()
                        .fields()
                        .cloned()
                        .chain(added.iter().cloned()),
                )
                .map_err(|e| delta_err(table, e))?;
                let metadata = config
                    .metadata()
                    .clone()
                    .with_schema(&schema)
                    .map_err(|e| delta_err(table, e))?;
                info!(
                    table,
                    columns = ?added.iter().map(|f| f.name().to_string()).collect::<Vec<_>>(),
                    "the table gains columns with the next commit"
                );
                t.evolve = Some(metadata);
            }
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
        'decide: loop {
            if self
                .open
                .get(&c.table)
                .is_some_and(|t| t.touched.elapsed() > MAX_VIEW_AGE)
            {
                self.open.remove(&c.table);
            }
            let fresh = !self.open.contains_key(&c.table);
            let t = self.table(&c.table, &c.schema, &c.partition_by).await?;
            let versions = t.positions(&c.table, &ids).await?;
            let decision = held(&c.table, &versions, &c.txns);
            // a view older than the log may show a gap or an overlap where there are only
            // commits it has not seen (the partition was elsewhere meanwhile): a fresh load
            // decides
            if !fresh && (gap(&versions, &c.txns) || decision.is_err()) {
                self.open.remove(&c.table);
                continue;
            }
            if decision? {
                if !created.is_empty() {
                    // ours only if no commit references them (a lost acknowledgement can
                    // make our own commit the one that holds these offsets)
                    let live: std::collections::HashSet<String> = live_files(&lake, &c.table)
                        .await?
                        .into_iter()
                        .map(|p| format!("{}/{p}", c.table))
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
            let operation = DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: (!c.partition_by.is_empty()).then(|| c.partition_by.clone()),
                predicate: None,
            };
            // delta-rs's serialisation of the commit (its commitInfo first, the txns last)
            let mut actions = adds.clone();
            if let Some(m) = &t.evolve {
                actions.insert(0, Action::Metadata(m.clone()));
            }
            let bytes = CommitData::new(actions, operation, HashMap::new(), txns)
                .get_bytes()
                .map_err(|e| delta_err(&c.table, e))?;
            let mut passed = 0;
            loop {
                let next = t.version + 1;
                let written = t
                    .log_store
                    .write_commit_entry(
                        next,
                        CommitOrBytes::LogBytes(bytes.clone()),
                        uuid::Uuid::new_v4(),
                    )
                    .await;
                match written {
                    Ok(()) => {
                        t.version = next;
                        t.touched = std::time::Instant::now();
                        t.evolve = None;
                        for (id, _, last) in &c.txns {
                            t.positions.insert(id.clone(), Some(*last));
                        }
                        if next % t.checkpoint_interval == 0 {
                            let store = t.log_store.clone();
                            let cleanup = LogCleanup::of(&t.loaded);
                            self.checkpoint(&c.table, store, next, cleanup);
                        }
                        return Ok(Committed::Version(next));
                    }
                    Err(TransactionError::VersionAlreadyExists(_)) => {
                        match t.read_past(&c.table, next, &ids).await? {
                            Passed::Clear if passed < MAX_PASSED => passed += 1,
                            Passed::Clear => {
                                // far behind: a fresh load is cheaper than reading on
                                self.open.remove(&c.table);
                                continue 'decide;
                            }
                            Passed::Conflict(why) if conflicts < 3 => {
                                // the same partitions (another writer, or our own commit whose
                                // acknowledgement was lost), or a metadata change
                                warn!(
                                    table = c.table,
                                    why, "a concurrent commit got in first; re-reading the table"
                                );
                                conflicts += 1;
                                self.open.remove(&c.table);
                                continue 'decide;
                            }
                            Passed::Conflict(why) => {
                                self.open.remove(&c.table);
                                return Err(LakeError::Delta {
                                    table: c.table.clone(),
                                    message: format!("{why}: too many concurrent commits"),
                                    external: true,
                                });
                            }
                        }
                    }
                    Err(e) => {
                        // the outcome is unknown (the commit may have landed): re-read next time
                        self.open.remove(&c.table);
                        return Err(classify(
                            &c.table,
                            DeltaTableError::Transaction { source: e },
                        ));
                    }
                }
            }
        }
    }

    /// Writes a checkpoint of `table` at `version` in the background, unless one is being
    /// written: readers (and the next load) then replay the log from there. Then, unless the
    /// table says otherwise, deletes the log's commits and checkpoints that are both older
    /// than its log retention and before a checkpoint (delta-rs's log cleanup), so a load
    /// lists and reads a bounded log. A failed checkpoint or cleanup costs readers time, not
    /// data.
    fn checkpoint(&mut self, table: &str, store: LogStoreRef, version: u64, cleanup: LogCleanup) {
        if self
            .checkpoints
            .get(table)
            .is_some_and(|h| !h.is_finished())
        {
            return;
        }
        let name = table.to_string();
        let task = tokio::spawn(async move {
            let (engine, root) = (store.engine(None), kernel_root(&store));
            let started = std::time::Instant::now();
            let written = tokio::task::spawn_blocking(move || {
                let snapshot = delta_kernel::Snapshot::builder_for(root)
                    .at_version(version)
                    .build(engine.as_ref())?;
                snapshot.checkpoint(engine.as_ref(), None).map(|_| ())
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    info!(
                        table = name,
                        version,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "wrote a checkpoint"
                    );
                    if let Some(retention) = cleanup.retention {
                        let cutoff = chrono::Utc::now().timestamp_millis()
                            - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
                        match deltalake::protocol::checkpoints::cleanup_expired_logs_for(
                            version,
                            store.as_ref(),
                            cutoff,
                            None,
                        )
                        .await
                        {
                            Ok(0) => {}
                            Ok(n) => {
                                info!(table = name, version, deleted = n, "cleaned up the log")
                            }
                            Err(e) => {
                                warn!(table = name, version, error = %e, "could not clean up the log; it keeps its expired commits until the next checkpoint")
                            }
                        }
                    }
                }
                Ok(Err(e)) => {
                    warn!(table = name, version, error = %e, "could not write a checkpoint; readers replay more of the log until the next one")
                }
                Err(e) => warn!(table = name, version, error = %e, "the checkpoint task failed"),
            }
        });
        self.checkpoints.insert(table.to_string(), task);
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
    theirs: &StructType,
    parts: &[String],
    ours: &StructType,
    partition_by: &[String],
) -> Result<Vec<deltalake::kernel::StructField>> {
    if parts != partition_by {
        return Err(LakeError::Invalid(format!(
            "table `{table}` in the lake is partitioned by {parts:?}, the pipeline partitions it by {partition_by:?}; a Delta table keeps its partition columns: write to a new table"
        )));
    }
    let mut added = Vec::new();
    for f in ours.fields() {
        match theirs.field(f.name()) {
            // a new column: nullable (every column we write is), so the table evolves and
            // its older files read it as null
            None => added.push(f.clone()),
            Some(g) if g.data_type() != f.data_type() => {
                return Err(LakeError::Invalid(format!(
                    "table `{table}` in the lake has column `{}` as {}, the pipeline writes {}: a column cannot change its type; write it under a new name, or to a new table",
                    f.name(),
                    g.data_type(),
                    f.data_type()
                )));
            }
            Some(_) => {}
        }
    }
    Ok(added)
}

/// Checks the columns `spec`'s sink writes against its table in the lake, when the table
/// exists: the columns the table would gain (schema evolution), or an error naming the
/// column that cannot be written (another type, other partition columns). Reads metadata
/// only.
pub async fn check_table_schema(lake: &Lake, spec: &TableSpec) -> Result<Vec<String>> {
    let Some(t) = Followed::load(lake, &spec.table).await? else {
        return Ok(Vec::new());
    };
    let ours = delta_schema(&spec.table, &spec.table_schema())?;
    let config = t.loaded.table_configuration();
    let added = check_columns(
        &spec.table,
        &t.loaded.schema(),
        config.metadata().partition_columns(),
        &ours,
        &spec.partition_by,
    )?;
    Ok(added.iter().map(|f| f.name().to_string()).collect())
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
pub(crate) mod tests {
    use super::*;
    use crate::writer::{TableSpec, TableWriter};
    use arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
    use arrow::datatypes::TimeUnit;

    pub(crate) fn spec() -> TableSpec {
        spec_with(None, DataType::Int64)
    }

    /// `events` (`ts`, `seq` as `seq_type`, then `extra` if any), partitioned by `dt`.
    pub(crate) fn spec_with(extra: Option<Field>, seq_type: DataType) -> TableSpec {
        let mut fields = vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("seq", seq_type, false),
        ];
        fields.extend(extra);
        TableSpec {
            table: "events".into(),
            partition_by: vec!["dt".into()],
            event_time: Some("ts".into()),
            zstd_level: 3,
            schema: Arc::new(Schema::new(fields)),
        }
    }

    /// The files of offsets `first..=last` of partition 0 (one row per offset).
    pub(crate) fn commit(first: i64, last: i64) -> TableCommit {
        commit_on(0, first, last)
    }

    /// The files of offsets `first..=last` of `partition` (one row per offset, `seq` unique
    /// across partitions below 1000 offsets each).
    pub(crate) fn commit_on(partition: i32, first: i64, last: i64) -> TableCommit {
        commit_at(partition, first, last, 0)
    }

    /// [`commit_on`] with every `ts` moved `shift_us` later (0: all on 1970-01-01).
    pub(crate) fn commit_at(partition: i32, first: i64, last: i64, shift_us: i64) -> TableCommit {
        let spec = spec();
        let seq: Vec<i64> = (first..=last)
            .map(|o| o + 1000 * partition as i64)
            .collect();
        let ts: Vec<i64> = seq.iter().map(|s| s * 1_000_000 + shift_us).collect();
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
            partition,
            first,
            last,
        };
        TableCommit {
            table: spec.table.clone(),
            schema: spec.table_schema(),
            partition_by: spec.partition_by.clone(),
            files: w.finish(&seg.file_name()).unwrap(),
            txns: vec![(app_id("p", "t", partition), first, last)],
        }
    }

    /// Writes version 0 of `events` by hand, as another tool would: `protocol`, and a
    /// `seq` column with `seq` as its remaining JSON (`"nullable":…,"metadata":…`).
    async fn hand_made_table(lake: &Lake, protocol: &str, seq: &str) {
        let schema = format!(
            r#"{{"type":"struct","fields":[{{"name":"ts","type":"timestamp","nullable":true,"metadata":{{}}}},{{"name":"seq","type":"long",{seq}}},{{"name":"dt","type":"date","nullable":true,"metadata":{{}}}}]}}"#
        );
        let metadata = serde_json::json!({"metaData": {
            "id": "00000000-0000-0000-0000-000000000001",
            "format": {"provider": "parquet", "options": {}},
            "schemaString": schema,
            "partitionColumns": ["dt"],
            "configuration": {},
            "createdTime": 0,
        }});
        let log = format!("{{\"protocol\":{protocol}}}\n{metadata}\n");
        lake.publish(
            "events/_delta_log/00000000000000000000.json",
            Bytes::from(log),
        )
        .await
        .unwrap();
    }

    /// Creates `events` (delta-rs's create) with the table property `key` set to `value`.
    pub(crate) async fn create_with(lake: &Lake, key: deltalake::TableProperty, value: &str) {
        let ours = delta_schema("events", &spec().table_schema()).unwrap();
        CreateBuilder::new()
            .with_log_store(log_store(lake, "events").unwrap())
            .with_columns(ours.fields().cloned())
            .with_partition_columns(["dt"])
            .with_configuration_property(key, Some(value))
            .await
            .unwrap();
    }

    pub(crate) fn lake() -> (tempfile::TempDir, Lake) {
        let tmp = tempfile::tempdir().unwrap();
        let lake = Lake::open(tmp.path().to_str().unwrap()).unwrap();
        (tmp, lake)
    }

    /// `sql` over the lake's tables, as `ymera sql` registers them.
    pub(crate) async fn query(lake: &Lake, sql: &str) -> Vec<RecordBatch> {
        let ctx = datafusion::prelude::SessionContext::new();
        crate::catalog::register_lake_tables(&ctx, lake)
            .await
            .unwrap();
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    }

    /// Column `col` of the first row, an integer.
    pub(crate) fn int(batches: &[RecordBatch], col: usize) -> i64 {
        batches[0]
            .column(col)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    }

    /// Rows of `events`; fails on a duplicate `seq`.
    pub(crate) async fn rows(lake: &Lake) -> usize {
        let b = query(
            lake,
            "SELECT count(*) AS n, count(DISTINCT seq) AS d FROM events",
        )
        .await;
        assert_eq!(int(&b, 0), int(&b, 1), "duplicate rows");
        int(&b, 0) as usize
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
    async fn a_position_moves_on_purpose_only_from_where_it_is() {
        let (_tmp, lake) = lake();
        let mut tables = Tables::new(lake.clone());
        tables.commit(&commit(0, 9)).await.unwrap();
        let id = app_id("p", "t", 0);
        let at = || async {
            positions(&lake, "events", std::slice::from_ref(&id))
                .await
                .unwrap()
                .get(&id)
                .copied()
        };
        // not from a position it does not hold
        let err = move_position(&lake, "events", &id, Some(4), -1, HashMap::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not 4 any more"), "{err}");
        assert_eq!(at().await, Some(9));
        // backwards (a re-created topic starts at 0 again), data untouched
        let meta = HashMap::from([("ymera.accept_gap".to_string(), serde_json::json!({"to": 0}))]);
        assert_eq!(
            move_position(&lake, "events", &id, Some(9), -1, meta)
                .await
                .unwrap(),
            Some(2)
        );
        assert_eq!(at().await, Some(-1));
        assert_eq!(rows(&lake).await, 10);
        // and the next commit of the partition starts there
        assert_eq!(
            Tables::new(lake.clone())
                .commit(&commit(0, 4))
                .await
                .unwrap(),
            Committed::Version(3)
        );
        assert_eq!(at().await, Some(4));
        assert_eq!(
            move_position(&lake, "nothing", &id, None, 0, HashMap::new())
                .await
                .unwrap(),
            None
        );
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
        // the zombie, still at version 1, commits the same range: version 2 is taken and
        // carries the same appId, so the zombie re-reads and finds the range held
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
        create_with(
            &lake,
            deltalake::TableProperty::SetTransactionRetentionDuration,
            "interval 1 day",
        )
        .await;
        let err = Tables::new(lake.clone())
            .commit(&commit(0, 9))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(TXN_RETENTION), "{err}");
    }

    #[tokio::test]
    async fn writers_of_other_partitions_commit_after_each_other_without_reloading() {
        let (_tmp, lake) = lake();
        let (mut a, mut b) = (Tables::new(lake.clone()), Tables::new(lake.clone()));
        a.commit(&commit_on(0, 0, 9)).await.unwrap();
        b.commit(&commit_on(1, 0, 9)).await.unwrap();
        b.commit(&commit_on(1, 10, 19)).await.unwrap();
        // A knows version 1 only: it reads versions 2 and 3 past (partition 1) and goes after
        assert_eq!(
            a.commit(&commit_on(0, 10, 19)).await.unwrap(),
            Committed::Version(4)
        );
        assert_eq!(a.open["events"].positions[&app_id("p", "t", 1)], Some(19));
        let ids = [app_id("p", "t", 0), app_id("p", "t", 1)];
        let pos = positions(&lake, "events", &ids).await.unwrap();
        assert_eq!((pos[&ids[0]], pos[&ids[1]]), (19, 19));
        assert_eq!(rows(&lake).await, 40);
    }

    /// The table holds partition 0 up to `last`, read from the log afresh, and a writer with
    /// a fresh view drops a replay of the last ten offsets.
    async fn assert_holds(lake: &Lake, last: i64) {
        let id = app_id("p", "t", 0);
        let pos = positions(lake, "events", std::slice::from_ref(&id))
            .await
            .unwrap();
        assert_eq!(pos[&id], last);
        assert_eq!(
            Tables::new(lake.clone())
                .commit(&commit(last - 9, last))
                .await
                .unwrap(),
            Committed::AlreadyHeld
        );
    }

    #[tokio::test]
    async fn a_table_another_tool_writes_and_compacts_keeps_our_commits_and_positions() {
        use arrow::array::Date32Array;
        let (_tmp, lake) = lake();
        let mut ours = Tables::new(lake.clone());
        ours.commit(&commit(0, 9)).await.unwrap();
        ours.commit(&commit(10, 19)).await.unwrap();
        // another tool appends rows of its own (delta-rs's writer), then compacts the table
        // (delta-rs's optimize: removes and adds with dataChange=false)
        let schema = spec().table_schema();
        let theirs = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(vec![5_000_000_000i64; 5]).with_timezone("UTC"),
                ),
                Arc::new(Int64Array::from_iter_values(5000..5005)),
                Arc::new(Date32Array::from(vec![0; 5])),
            ],
        )
        .unwrap();
        let t = open(&lake, "events").await.unwrap().unwrap();
        let t = t
            .write([theirs])
            .with_save_mode(SaveMode::Append)
            .await
            .unwrap();
        let (_, metrics) = t.optimize().await.unwrap();
        assert!(metrics.num_files_removed >= 2, "{metrics:?}");
        // ours goes after both from its old view, without a conflict and without a reload
        assert_eq!(
            ours.commit(&commit(20, 29)).await.unwrap(),
            Committed::Version(5)
        );
        assert_holds(&lake, 29).await;
        assert_eq!(rows(&lake).await, 35);
    }

    #[tokio::test]
    async fn checkpoints_follow_the_table_interval_and_readers_use_them() {
        let (_tmp, lake) = lake();
        create_with(&lake, deltalake::TableProperty::CheckpointInterval, "5").await;
        let mut tables = Tables::new(lake.clone());
        for i in 0..12 {
            tables.commit(&commit(i * 10, i * 10 + 9)).await.unwrap();
            tables.settle().await;
        }
        let log = lake.list("events/_delta_log").await.unwrap();
        let mut checkpoints: Vec<_> = log.iter().filter(|p| p.contains(".checkpoint.")).collect();
        checkpoints.sort();
        assert_eq!(checkpoints.len(), 2, "{log:?}");
        assert!(checkpoints[1].ends_with("00000000000000000010.checkpoint.parquet"));
        // a fresh reader starts from the checkpoint and still sees every position and row
        assert_holds(&lake, 119).await;
        assert_eq!(rows(&lake).await, 120);
    }

    #[tokio::test]
    async fn tables_that_ask_writers_for_more_are_refused_by_name() {
        const PLAIN: &str = r#""nullable":true,"metadata":{}"#;
        let refused = [
            // a generated column (writer 4): ymera would write rows without computing it
            (
                r#"{"minReaderVersion":1,"minWriterVersion":4}"#,
                r#""nullable":true,"metadata":{"delta.generationExpression":"id * 2"}"#,
                "generated columns `seq`",
            ),
            // an invariant: ymera does not check it
            (
                r#"{"minReaderVersion":1,"minWriterVersion":2}"#,
                r#""nullable":true,"metadata":{"delta.invariants":"{\"expression\":{\"expression\":\"seq > 0\"}}"}"#,
                "invariants on `seq`",
            ),
            // NOT NULL: ymera writes every column nullable
            (
                r#"{"minReaderVersion":1,"minWriterVersion":2}"#,
                r#""nullable":false,"metadata":{}"#,
                "NOT NULL columns `seq`",
            ),
            // row tracking binds every writer once the table supports it
            (
                r#"{"minReaderVersion":1,"minWriterVersion":7,"writerFeatures":["domainMetadata","rowTracking"]}"#,
                PLAIN,
                "the table feature `rowTracking`",
            ),
        ];
        for (protocol, seq, named) in refused {
            let (_tmp, lake) = self::lake();
            hand_made_table(&lake, protocol, seq).await;
            let err = Tables::new(lake.clone())
                .commit(&commit(0, 9))
                .await
                .unwrap_err();
            assert!(err.to_string().contains(named), "{protocol}: {err}");
        }
        // features a writer that appends can leave alone, and constraint features the
        // table does not use, are fine: a legacy writer 4 table, deletion vectors
        for protocol in [
            r#"{"minReaderVersion":1,"minWriterVersion":4}"#,
            r#"{"minReaderVersion":3,"minWriterVersion":7,"readerFeatures":["deletionVectors"],"writerFeatures":["appendOnly","deletionVectors","checkConstraints"]}"#,
        ] {
            let (_tmp, lake) = self::lake();
            hand_made_table(&lake, protocol, PLAIN).await;
            assert_eq!(
                Tables::new(lake.clone())
                    .commit(&commit(0, 9))
                    .await
                    .unwrap(),
                Committed::Version(1),
                "{protocol}"
            );
            assert_eq!(rows(&lake).await, 10);
        }
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

    fn note() -> Option<Field> {
        Some(Field::new("note", DataType::Utf8, true))
    }

    #[tokio::test]
    async fn a_new_nullable_column_evolves_the_table_and_a_new_type_is_refused() {
        use arrow::array::StringArray;
        let (_tmp, lake) = lake();
        let mut tables = Tables::new(lake.clone());
        tables.commit(&commit(0, 9)).await.unwrap();
        // the pipeline now writes `note` too
        let spec = spec_with(note(), DataType::Int64);
        assert_eq!(
            check_table_schema(&lake, &spec).await.unwrap(),
            vec!["note".to_string()]
        );
        let batch = RecordBatch::try_new(
            spec.schema.clone(),
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(vec![10_000_000i64, 11_000_000])
                        .with_timezone("UTC"),
                ),
                Arc::new(Int64Array::from(vec![10, 11])),
                Arc::new(StringArray::from(vec![Some("new"), None])),
            ],
        )
        .unwrap();
        let mut w = TableWriter::new(spec.clone(), Vec::new()).unwrap();
        w.write(&batch).unwrap();
        let seg = crate::SegmentId {
            topic: "t".into(),
            partition: 0,
            first: 10,
            last: 11,
        };
        let c = TableCommit::new(
            &spec,
            w.finish(&seg.file_name()).unwrap(),
            vec![(app_id("p", "t", 0), 10, 11)],
        );
        // a writer that had the table open before goes on too
        assert_eq!(
            Tables::new(lake.clone()).commit(&c).await.unwrap(),
            Committed::Version(2)
        );
        assert!(check_table_schema(&lake, &spec).await.unwrap().is_empty());
        assert_eq!(
            tables.commit(&commit(12, 15)).await.unwrap(),
            Committed::Version(3)
        );
        assert_eq!(rows(&lake).await, 16);
        let notes = query(&lake, "SELECT count(note) AS n FROM events").await;
        let n = int(&notes, 0);
        assert_eq!(n, 1, "old files read `note` as null");
        // a column that changes its type is named
        let err = check_table_schema(&lake, &spec_with(note(), DataType::Utf8))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("column `seq` as long, the pipeline writes string"),
            "{err}"
        );
    }
}

//! A DataFusion `TableProvider` over a warehouse table: projection and limit are pushed
//! into the `SELECT`, rows are streamed in batches (never the whole table in memory), so
//! one query can join lake and warehouse tables.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use sqlx::Row;

use crate::schema::{SqlKind, TableInfo};
use crate::{Pool, Warehouse, quote};

const BATCH_ROWS: usize = 8192;

/// A warehouse table as seen by DataFusion (read-only).
#[derive(Debug)]
pub struct WarehouseTable {
    wh: Warehouse,
    info: TableInfo,
    schema: SchemaRef,
}

impl WarehouseTable {
    pub fn new(wh: Warehouse, info: TableInfo) -> WarehouseTable {
        let schema = info.arrow_schema();
        WarehouseTable { wh, info, schema }
    }
}

/// Registers every warehouse table in `ctx` under its own name, skipping names already
/// taken (lake tables win; the skipped names are returned).
pub async fn register_tables(
    ctx: &SessionContext,
    wh: &Warehouse,
) -> crate::Result<(Vec<TableInfo>, Vec<String>)> {
    let mut registered = Vec::new();
    let mut shadowed = Vec::new();
    for name in wh.tables().await? {
        let Some(info) = wh.describe(&name).await? else {
            continue;
        };
        if ctx.table_exist(name.as_str()).unwrap_or(false) {
            shadowed.push(name);
            continue;
        }
        ctx.register_table(
            name.as_str(),
            Arc::new(WarehouseTable::new(wh.clone(), info.clone())),
        )
        .map_err(|e| {
            crate::WarehouseError::User(format!("cannot register warehouse table `{name}`: {e}"))
        })?;
        registered.push(info);
    }
    Ok((registered, shadowed))
}

#[async_trait]
impl TableProvider for WarehouseTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let columns: Vec<(String, SqlKind)> = schema
            .fields()
            .iter()
            .map(|f| {
                let c = self
                    .info
                    .column(f.name())
                    .expect("projected from the table's own schema");
                (c.name.clone(), c.kind)
            })
            .collect();
        let part = Arc::new(ScanPartition {
            wh: self.wh.clone(),
            table: self.info.name.clone(),
            columns,
            schema: schema.clone(),
            limit,
        });
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            vec![part],
            None,
            [],
            false,
            limit,
        )?))
    }
}

#[derive(Debug)]
struct ScanPartition {
    wh: Warehouse,
    table: String,
    columns: Vec<(String, SqlKind)>,
    schema: SchemaRef,
    limit: Option<usize>,
}

impl ScanPartition {
    fn sql(&self) -> String {
        let cols = if self.columns.is_empty() {
            // count(*)-style scans need rows, not columns
            "1".to_string()
        } else {
            self.columns
                .iter()
                .map(|(name, kind)| match self.wh.dialect() {
                    // PostgreSQL decodes strictly by type: read every column in the one
                    // form its family binds to (int4 as int8, numeric as float8, json as text)
                    crate::Dialect::Postgres => {
                        let cast = match kind {
                            SqlKind::Text | SqlKind::Other => "text",
                            SqlKind::Int => "bigint",
                            SqlKind::Float => "double precision",
                            SqlKind::Bool => "boolean",
                            SqlKind::Timestamp { tz: true } => "timestamptz",
                            SqlKind::Timestamp { tz: false } => "timestamp",
                            SqlKind::Date => "date",
                        };
                        format!("{}::{cast}", quote(name))
                    }
                    crate::Dialect::Sqlite => quote(name),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut sql = format!("SELECT {cols} FROM {}", quote(&self.table));
        if let Some(n) = self.limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        sql
    }
}

pub(crate) enum Builder {
    Text(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMicrosecondBuilder),
    Date(Date32Builder),
}

impl Builder {
    fn new(kind: SqlKind) -> Builder {
        match kind {
            SqlKind::Text | SqlKind::Other => Builder::Text(StringBuilder::new()),
            SqlKind::Int => Builder::Int(Int64Builder::new()),
            SqlKind::Float => Builder::Float(Float64Builder::new()),
            SqlKind::Bool => Builder::Bool(BooleanBuilder::new()),
            SqlKind::Timestamp { .. } => {
                Builder::Ts(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            SqlKind::Date => Builder::Date(Date32Builder::new()),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Ts(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
        }
    }
}

pub(crate) fn days(d: NaiveDate) -> i32 {
    d.num_days_from_ce() - 719_163
}

use chrono::Datelike;

/// The builders of one scan and the batch being filled: a batch goes out every
/// [`BATCH_ROWS`] rows (a scan that reads no column, as `count(*)` does, counts rows).
pub(crate) struct Batches {
    pub(crate) builders: Vec<Builder>,
    schema: SchemaRef,
    rows: usize,
}

impl Batches {
    pub(crate) fn new(kinds: &[SqlKind], schema: SchemaRef) -> Batches {
        Batches {
            builders: kinds.iter().map(|k| Builder::new(*k)).collect(),
            schema,
            rows: 0,
        }
    }

    /// Counts a row whose columns were appended; a full batch, if this row filled one.
    pub(crate) fn row_done(&mut self) -> DfResult<Option<RecordBatch>> {
        self.rows += 1;
        if self.rows >= BATCH_ROWS {
            self.rest()
        } else {
            Ok(None)
        }
    }

    /// The rows not sent yet, as a batch, if there are any.
    pub(crate) fn rest(&mut self) -> DfResult<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        let cols: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        let opts = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        Ok(Some(RecordBatch::try_new_with_options(
            self.schema.clone(),
            cols,
            &opts,
        )?))
    }
}

/// Appends column `i` of a row; the error names the column.
macro_rules! append_row {
    ($row:expr, $i:expr, $b:expr, $kind:expr) => {{
        let row = $row;
        let i = $i;
        match $b {
            Builder::Text(b) => b.append_option(row.try_get::<Option<String>, _>(i)?),
            Builder::Int(b) => b.append_option(row.try_get::<Option<i64>, _>(i)?),
            Builder::Float(b) => b.append_option(row.try_get::<Option<f64>, _>(i)?),
            Builder::Bool(b) => b.append_option(row.try_get::<Option<bool>, _>(i)?),
            Builder::Ts(b) => {
                let v = match $kind {
                    SqlKind::Timestamp { tz: false } => row
                        .try_get::<Option<NaiveDateTime>, _>(i)?
                        .map(|t| t.and_utc().timestamp_micros()),
                    _ => row
                        .try_get::<Option<DateTime<Utc>>, _>(i)?
                        .map(|t| t.timestamp_micros()),
                };
                b.append_option(v)
            }
            Builder::Date(b) => b.append_option(row.try_get::<Option<NaiveDate>, _>(i)?.map(days)),
        }
    }};
}

impl PartitionStream for ScanPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (tx, rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2);
        let sql = self.sql();
        let pool = self.wh.pool.clone();
        let kinds: Vec<SqlKind> = self.columns.iter().map(|c| c.1).collect();
        let schema = self.schema.clone();
        let table = self.table.clone();
        if let (Pool::Sqlite(_), Some(path)) = (&pool, self.wh.sqlite_file.clone()) {
            let table_name = table.clone();
            tokio::task::spawn_blocking(move || {
                let report = tx.clone();
                let scan = std::panic::AssertUnwindSafe(|| {
                    crate::sqlite_scan::scan(&path, &sql, &table, &kinds, schema, tx)
                });
                // a panic would otherwise end the stream early: a short result, no error
                if let Err(panic) = std::panic::catch_unwind(scan) {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    let _ = report.blocking_send(Err(DataFusionError::Internal(format!(
                        "the scan of warehouse table `{table_name}` failed (a bug in ymera): {what}"
                    ))));
                }
            });
        } else {
            tokio::spawn(async move {
                let result = async {
                    let mut out = Batches::new(&kinds, schema.clone());
                    macro_rules! drain {
                        ($stream:expr) => {{
                            let mut stream = $stream;
                            while let Some(row) = stream.next().await {
                                let row =
                                    row.map_err(|e| DataFusionError::External(Box::new(e)))?;
                                for (i, (b, k)) in out.builders.iter_mut().zip(&kinds).enumerate() {
                                    let r: Result<(), sqlx::Error> = (|| {
                                        append_row!(&row, i, b, *k);
                                        Ok(())
                                    })();
                                    r.map_err(|e| {
                                        DataFusionError::Execution(format!(
                                            "warehouse table `{table}` column `{}`: {e}",
                                            schema.field(i).name()
                                        ))
                                    })?;
                                }
                                if let Some(batch) = out.row_done()? {
                                    if tx.send(Ok(batch)).await.is_err() {
                                        return Ok(()); // the query stopped reading
                                    }
                                }
                            }
                        }};
                    }
                    match &pool {
                        Pool::Sqlite(p) => drain!(sqlx::query(&sql).fetch(p)),
                        Pool::Postgres(p) => drain!(sqlx::query(&sql).fetch(p)),
                    }
                    if let Some(batch) = out.rest()? {
                        let _ = tx.send(Ok(batch)).await;
                    }
                    Ok::<(), DataFusionError>(())
                }
                .await;
                if let Err(e) = result {
                    let _ = tx.send(Err(e)).await;
                }
            });
        }
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

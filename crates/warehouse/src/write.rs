//! Exactly-once writes: the rows of one segment and the partition's next offset in one
//! transaction, conditional on the offset the writer expects to continue from.
//!
//! PostgreSQL: COPY (text format) into a temporary staging table, then one
//! `INSERT … SELECT` (with `ON CONFLICT … DO UPDATE` for upserts). SQLite: one prepared
//! `INSERT` per row inside the transaction. A row that violates a constraint does not fail
//! the segment: it is returned as [`Rejected`], with the constraint named, and the other
//! rows commit.

use std::collections::HashMap;
use std::fmt::Write as _;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::PgConnection;
use sqlx::{Acquire, Postgres, Sqlite, Transaction};

use crate::schema::SqlKind;
use crate::{
    DEAD_LETTERS_TABLE, Dialect, OFFSETS_TABLE, Pool, Result, Warehouse, WarehouseError, ident,
    quote,
};

/// How rows meet existing rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Insert every row; a duplicate key is a constraint violation (→ DLQ).
    Append,
    /// Insert or update on the key (the table's primary key or a unique constraint); the
    /// last row of a key within a segment wins.
    Upsert(Vec<String>),
}

/// PostgreSQL bulk path (SQLite always uses prepared statements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMethod {
    /// COPY into a staging table, then one INSERT … SELECT.
    #[default]
    Copy,
    /// Multi-row `INSERT … VALUES (…), (…)` with bound parameters (for comparison).
    Insert,
}

/// Rows for one table.
#[derive(Debug, Clone)]
pub struct TableWrite {
    pub table: String,
    pub mode: Mode,
    pub batches: Vec<RecordBatch>,
    /// Where each batch came from (same length as `batches`, or empty when unknown).
    pub origins: Vec<Origin>,
}

/// The source records a batch was computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// First and last source offset of the micro-batch.
    pub first: i64,
    pub last: i64,
    /// The source offset of each row, when rows map one to one to records (the sink reads
    /// the decoded `input`).
    pub rows: Option<Vec<i64>>,
}

/// What to do with a row a constraint refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReject {
    /// Store it in `_ymera_dead_letters`, in the same transaction (exactly once).
    #[default]
    DeadLetter,
    /// Leave it out (it is returned in `Committed::rejected`, for the log).
    Skip,
    /// Roll back the whole segment and fail.
    Abort,
}

/// One segment of one partition.
#[derive(Debug, Clone)]
pub struct Commit {
    pub pipeline: String,
    pub topic: String,
    pub partition: i32,
    /// The offset this segment starts at: must equal the stored next offset (if any).
    pub first: i64,
    /// The next offset after this segment.
    pub next: i64,
    pub writes: Vec<TableWrite>,
    pub on_reject: OnReject,
}

/// A row refused by a constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Index into `Commit::writes`, then the batch and row within it.
    pub write: usize,
    pub batch: usize,
    pub row: usize,
    pub message: String,
}

/// What a commit did.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    pub rows: u64,
    pub rejected: Vec<Rejected>,
}

/// A column cast to the form the warehouse binds.
enum Canon {
    Text(StringArray),
    Int(Int64Array),
    Float(Float64Array),
    Bool(BooleanArray),
    Ts(TimestampMicrosecondArray),
    Date(Date32Array),
}

#[derive(Debug, Clone, PartialEq)]
enum Cell<'a> {
    Null(SqlKind),
    Text(&'a str),
    Owned(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Ts(DateTime<Utc>),
    Date(NaiveDate),
}

fn canon(a: &ArrayRef, column: &str) -> Result<Canon> {
    let kind = SqlKind::of_arrow(a.data_type()).ok_or_else(|| {
        WarehouseError::User(format!(
            "column `{column}` is {}, which the warehouse cannot store",
            a.data_type()
        ))
    })?;
    let to = match kind {
        SqlKind::Timestamp { .. } => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        k => k.arrow_type(),
    };
    let c = cast(a, &to).map_err(|e| {
        WarehouseError::User(format!(
            "column `{column}`: cannot convert {}: {e}",
            a.data_type()
        ))
    })?;
    Ok(match kind {
        SqlKind::Text | SqlKind::Other => Canon::Text(c.as_string::<i32>().clone()),
        SqlKind::Int => Canon::Int(c.as_primitive::<Int64Type>().clone()),
        SqlKind::Float => Canon::Float(c.as_primitive::<Float64Type>().clone()),
        SqlKind::Bool => Canon::Bool(c.as_boolean().clone()),
        SqlKind::Timestamp { .. } => {
            Canon::Ts(c.as_primitive::<TimestampMicrosecondType>().clone())
        }
        SqlKind::Date => Canon::Date(c.as_primitive::<Date32Type>().clone()),
    })
}

impl Canon {
    fn kind(&self) -> SqlKind {
        match self {
            Canon::Text(_) => SqlKind::Text,
            Canon::Int(_) => SqlKind::Int,
            Canon::Float(_) => SqlKind::Float,
            Canon::Bool(_) => SqlKind::Bool,
            Canon::Ts(_) => SqlKind::Timestamp { tz: true },
            Canon::Date(_) => SqlKind::Date,
        }
    }

    fn cell(&self, i: usize) -> Cell<'_> {
        let null = match self {
            Canon::Text(a) => a.is_null(i),
            Canon::Int(a) => a.is_null(i),
            Canon::Float(a) => a.is_null(i),
            Canon::Bool(a) => a.is_null(i),
            Canon::Ts(a) => a.is_null(i),
            Canon::Date(a) => a.is_null(i),
        };
        if null {
            return Cell::Null(self.kind());
        }
        match self {
            Canon::Text(a) => Cell::Text(a.value(i)),
            Canon::Int(a) => Cell::Int(a.value(i)),
            Canon::Float(a) => Cell::Float(a.value(i)),
            Canon::Bool(a) => Cell::Bool(a.value(i)),
            Canon::Ts(a) => {
                Cell::Ts(DateTime::from_timestamp_micros(a.value(i)).unwrap_or_default())
            }
            Canon::Date(a) => Cell::Date(
                NaiveDate::from_num_days_from_ce_opt(a.value(i) + 719_163).unwrap_or_default(),
            ),
        }
    }
}

/// One write, prepared: columns, statements, canonical columns and the rows to write.
struct Prepared {
    table: String,
    columns: Vec<String>,
    /// Per batch, its canonical columns.
    batches: Vec<Vec<Canon>>,
    /// (batch, row) in write order; for upserts only the last row of each key.
    rows: Vec<(usize, usize)>,
    mode: Mode,
}

impl Prepared {
    fn new(w: &TableWrite) -> Result<Prepared> {
        ident(&w.table)?;
        let columns: Vec<String> = match w.batches.first() {
            Some(b) => b
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            None => Vec::new(),
        };
        for c in &columns {
            ident(c)?;
        }
        let mut batches = Vec::with_capacity(w.batches.len());
        for b in &w.batches {
            batches.push(
                b.columns()
                    .iter()
                    .zip(&columns)
                    .map(|(a, name)| canon(a, name))
                    .collect::<Result<Vec<_>>>()?,
            );
        }
        let mut rows: Vec<(usize, usize)> = w
            .batches
            .iter()
            .enumerate()
            .flat_map(|(bi, b)| (0..b.num_rows()).map(move |r| (bi, r)))
            .collect();
        // a segment whose records all went elsewhere (DLQ, filtered) has nothing to write
        if let (Mode::Upsert(key), false) = (&w.mode, rows.is_empty()) {
            let idx: Vec<usize> = key
                .iter()
                .map(|k| {
                    columns.iter().position(|c| c == k).ok_or_else(|| {
                        WarehouseError::User(format!(
                            "upsert key `{k}` is not a column of the rows for `{}`",
                            w.table
                        ))
                    })
                })
                .collect::<Result<_>>()?;
            // the last row of each key; rows with a NULL in the key never match (as in
            // the database), and -0.0 is 0.0
            let mut last: HashMap<String, usize> = HashMap::new();
            'rows: for (n, &(bi, r)) in rows.iter().enumerate() {
                let mut k = String::new();
                for &c in &idx {
                    match batches[bi][c].cell(r) {
                        Cell::Null(_) => {
                            k = format!("\u{0}null {n}");
                            last.insert(k, n);
                            continue 'rows;
                        }
                        Cell::Float(0.0) => k.push_str("Float(0.0)\u{1}"),
                        cell => {
                            let _ = write!(k, "{cell:?}\u{1}");
                        }
                    }
                }
                last.insert(k, n);
            }
            let mut keep: Vec<usize> = last.into_values().collect();
            keep.sort_unstable();
            rows = keep.into_iter().map(|n| rows[n]).collect();
        }
        Ok(Prepared {
            table: w.table.clone(),
            columns,
            batches,
            rows,
            mode: w.mode.clone(),
        })
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn conflict_clause(&self) -> String {
        match &self.mode {
            Mode::Append => String::new(),
            Mode::Upsert(key) => {
                let keys = key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
                let set: Vec<String> = self
                    .columns
                    .iter()
                    .filter(|c| !key.contains(c))
                    .map(|c| format!("{} = excluded.{}", quote(c), quote(c)))
                    .collect();
                if set.is_empty() {
                    format!(" ON CONFLICT ({keys}) DO NOTHING")
                } else {
                    format!(" ON CONFLICT ({keys}) DO UPDATE SET {}", set.join(", "))
                }
            }
        }
    }

    /// `INSERT INTO t (cols) VALUES (…)` for `n` rows, numbering placeholders from 1.
    fn insert_sql(&self, dialect: Dialect, n: usize) -> String {
        let w = self.columns.len();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ",
            quote(&self.table),
            self.column_list()
        );
        for r in 0..n {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..w {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&dialect.ph(r * w + c + 1));
            }
            sql.push(')');
        }
        sql.push_str(&self.conflict_clause());
        sql
    }

    fn cells(&self, (bi, r): (usize, usize)) -> impl Iterator<Item = Cell<'_>> {
        self.batches[bi].iter().map(move |c| c.cell(r))
    }
}

/// Binds a cell, nulls typed by their column's family (PostgreSQL infers a parameter's
/// type from what is bound, so an untyped null would be text).
fn bind<'q, DB>(
    q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    c: Cell<'q>,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    f64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<f64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<bool>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<DateTime<Utc>>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    NaiveDate: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<NaiveDate>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    match c {
        Cell::Null(k) => match k {
            SqlKind::Int => q.bind(None::<i64>),
            SqlKind::Float => q.bind(None::<f64>),
            SqlKind::Bool => q.bind(None::<bool>),
            SqlKind::Timestamp { .. } => q.bind(None::<DateTime<Utc>>),
            SqlKind::Date => q.bind(None::<NaiveDate>),
            SqlKind::Text | SqlKind::Other => q.bind(None::<String>),
        },
        Cell::Text(s) => q.bind(s),
        Cell::Owned(s) => q.bind(s),
        Cell::Int(v) => q.bind(v),
        Cell::Float(v) => q.bind(v),
        Cell::Bool(v) => q.bind(v),
        Cell::Ts(v) => q.bind(v),
        Cell::Date(v) => q.bind(v),
    }
}

/// Appends one value in PostgreSQL COPY text format.
fn copy_text(out: &mut Vec<u8>, c: &Cell<'_>) {
    match c {
        Cell::Null(_) => out.extend_from_slice(b"\\N"),
        Cell::Owned(s) => copy_text(out, &Cell::Text(s)),
        Cell::Text(s) => {
            for &b in s.as_bytes() {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(b),
                }
            }
        }
        Cell::Int(v) => out.extend_from_slice(v.to_string().as_bytes()),
        Cell::Float(v) if v.is_nan() => out.extend_from_slice(b"NaN"),
        Cell::Float(v) if v.is_infinite() => {
            out.extend_from_slice(if *v > 0.0 { b"Infinity" } else { b"-Infinity" })
        }
        Cell::Float(v) => out.extend_from_slice(format!("{v:?}").as_bytes()),
        Cell::Bool(v) => out.push(if *v { b't' } else { b'f' }),
        Cell::Ts(v) => {
            out.extend_from_slice(v.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string().as_bytes())
        }
        Cell::Date(v) => out.extend_from_slice(v.format("%Y-%m-%d").to_string().as_bytes()),
    }
}

/// Whether a database error is a constraint violation (the row is bad, not the database).
fn constraint_violation(e: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    let code = db.code().map(|c| c.to_string()).unwrap_or_default();
    // PostgreSQL class 23 (integrity) and 22 (data exception: out of range, bad text);
    // SQLite SQLITE_CONSTRAINT (19) and its extended codes (x mod 256 = 19)
    let pg = code.len() == 5 && (code.starts_with("23") || code.starts_with("22"));
    let sqlite = code.parse::<i64>().is_ok_and(|c| c & 0xff == 19);
    if !(pg || sqlite) {
        return None;
    }
    Some(match db.constraint() {
        Some(name) => format!("violates constraint `{name}`: {}", db.message()),
        None => db.message().to_string(),
    })
}

const OFFSET_SQL_TAIL: &str = " ON CONFLICT (pipeline, topic, kafka_partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at = excluded.updated_at";

fn offset_sql(d: Dialect) -> String {
    format!(
        "INSERT INTO {OFFSETS_TABLE} (pipeline, topic, kafka_partition, next_offset, updated_at) VALUES ({}, {}, {}, {}, {}){OFFSET_SQL_TAIL} WHERE {OFFSETS_TABLE}.next_offset = {}",
        d.ph(1),
        d.ph(2),
        d.ph(3),
        d.ph(4),
        d.ph(5),
        d.ph(6)
    )
}

fn fenced(c: &Commit) -> WarehouseError {
    WarehouseError::Fenced(format!(
        "pipeline `{}` {}/{}: the warehouse's next offset is no longer {} (another process wrote this partition); segment dropped",
        c.pipeline, c.topic, c.partition, c.first
    ))
}

/// PostgreSQL binds at most 65535 parameters per statement.
const PG_MAX_BINDS: usize = 65_535;
/// SQLite (3.32 and later) binds at most 32766.
const SQLITE_MAX_BINDS: usize = 32_766;

impl Warehouse {
    /// Writes a segment's rows and advances the partition's offset, in one transaction.
    pub async fn commit(&self, c: &Commit) -> Result<Committed> {
        self.commit_with(c, WriteMethod::Copy).await
    }

    /// [`Warehouse::commit`] with a chosen PostgreSQL bulk method. (Boxed: a named `Send`
    /// future keeps callers' futures provably `Send` across sqlx's higher-ranked executors.)
    pub fn commit_with<'a>(
        &'a self,
        c: &'a Commit,
        method: WriteMethod,
    ) -> futures::future::BoxFuture<'a, Result<Committed>> {
        Box::pin(self.commit_inner(c, method))
    }

    async fn commit_inner(&self, c: &Commit, method: WriteMethod) -> Result<Committed> {
        let prepared = c
            .writes
            .iter()
            .map(Prepared::new)
            .collect::<Result<Vec<_>>>()?;
        let err = |e| WarehouseError::from_sqlx(e, &self.shown);
        match &self.pool {
            Pool::Sqlite(p) => {
                // one connection for both attempts: the retry never waits on the first one
                let mut conn = p.acquire().await.map_err(err)?;
                let mut tx = conn.begin().await.map_err(err)?;
                let done = match rows_sqlite(&mut tx, &prepared, false).await {
                    Ok(done) => done,
                    Err(e) if constraint_violation(&e).is_some() => {
                        // start over with a savepoint per row to set the bad rows aside
                        let _ = tx.rollback().await;
                        tx = conn.begin().await.map_err(err)?;
                        rows_sqlite(&mut tx, &prepared, true).await.map_err(err)?
                    }
                    Err(e) => return Err(err(e)),
                };
                self.reject(c, &done)?;
                for (sql, args) in dead_letter_rows(Dialect::Sqlite, c, &done) {
                    let mut q = sqlx::query(&sql);
                    for a in args {
                        q = bind(q, a);
                    }
                    q.execute(&mut *tx).await.map_err(err)?;
                }
                self.advance_sqlite(&mut tx, c).await?;
                tx.commit().await.map_err(err)?;
                Ok(done)
            }
            Pool::Postgres(p) => {
                // one connection for both attempts: the retry never waits on the first one
                let mut conn = p.acquire().await.map_err(err)?;
                let mut tx = conn.begin().await.map_err(err)?;
                let done = match send(write_all_pg(&mut tx, &prepared, method)).await {
                    Ok(rows) => Committed {
                        rows,
                        rejected: Vec::new(),
                    },
                    Err(e) if constraint_violation(&e).is_some() => {
                        // find the bad rows one by one, each under a savepoint
                        let _ = tx.rollback().await;
                        tx = conn.begin().await.map_err(err)?;
                        send(rows_one_by_one_pg(&mut tx, &prepared))
                            .await
                            .map_err(err)?
                    }
                    Err(e) => return Err(err(e)),
                };
                self.reject(c, &done)?;
                for (sql, args) in dead_letter_rows(Dialect::Postgres, c, &done) {
                    let mut q = sqlx::query(&sql);
                    for a in args {
                        q = bind(q, a);
                    }
                    send(q.execute(&mut *tx)).await.map_err(err)?;
                }
                let n = send(
                    bind_offset(sqlx::query(&offset_sql(Dialect::Postgres)), c).execute(&mut *tx),
                )
                .await
                .map_err(err)?
                .rows_affected();
                if n != 1 {
                    return Err(fenced(c));
                }
                tx.commit().await.map_err(err)?;
                Ok(done)
            }
        }
    }

    /// With `OnReject::Abort`, any rejected row fails the segment (the transaction is
    /// dropped, so rolled back).
    fn reject(&self, c: &Commit, done: &Committed) -> Result<()> {
        match (c.on_reject, done.rejected.first()) {
            (OnReject::Abort, Some(r)) => {
                let (_, offset) = origin_of(c, r);
                Err(WarehouseError::Database(format!(
                    "row from {}/{}/{offset} refused: {} (on_bad_record: fail)",
                    c.topic, c.partition, r.message
                )))
            }
            _ => Ok(()),
        }
    }

    async fn advance_sqlite(&self, tx: &mut Transaction<'_, Sqlite>, c: &Commit) -> Result<()> {
        let sql = offset_sql(Dialect::Sqlite);
        let q = sqlx::query(&sql)
            .bind(&c.pipeline)
            .bind(&c.topic)
            .bind(c.partition)
            .bind(c.next)
            .bind(Utc::now())
            .bind(c.first);
        let n = q
            .execute(&mut **tx)
            .await
            .map_err(|e| WarehouseError::from_sqlx(e, &self.shown))?
            .rows_affected();
        if n != 1 {
            return Err(fenced(c));
        }
        Ok(())
    }
}

/// The source offset of a rejected row, and a note when it is only the batch's range.
fn origin_of(c: &Commit, r: &Rejected) -> (String, i64) {
    match c.writes[r.write].origins.get(r.batch) {
        Some(Origin {
            rows: Some(rows), ..
        }) => (String::new(), rows[r.row]),
        Some(o) => (
            format!(
                " (row computed from source offsets {}..={})",
                o.first, o.last
            ),
            o.last,
        ),
        None => (String::new(), c.next - 1),
    }
}

/// The row as one JSON object (its value in the dead-letter table).
fn row_json(batch: &RecordBatch, row: usize) -> String {
    let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
    let _ = w.write(&batch.slice(row, 1));
    let _ = w.finish();
    String::from_utf8_lossy(&w.into_inner())
        .trim_end()
        .to_string()
}

/// INSERTs into the dead-letter table for every rejected row (with `OnReject::DeadLetter`).
fn dead_letter_rows<'c>(
    d: Dialect,
    c: &'c Commit,
    done: &Committed,
) -> Vec<(String, Vec<Cell<'c>>)> {
    if c.on_reject != OnReject::DeadLetter {
        return Vec::new();
    }
    let sql = format!(
        "INSERT INTO {DEAD_LETTERS_TABLE} (ymera_pipeline, ymera_table, ymera_error_stage, ymera_error_message, ymera_source_topic, ymera_source_partition, ymera_source_offset, ymera_failed_at, value) VALUES ({})",
        (1..=9).map(|i| d.ph(i)).collect::<Vec<_>>().join(", ")
    );
    let now = Utc::now();
    done.rejected
        .iter()
        .map(|r| {
            let (note, offset) = origin_of(c, r);
            let w = &c.writes[r.write];
            let cells = vec![
                Cell::Text(&c.pipeline),
                Cell::Text(&w.table),
                Cell::Text("sink"),
                Cell::Owned(format!("{}{note}", r.message)),
                Cell::Text(&c.topic),
                Cell::Int(c.partition as i64),
                Cell::Int(offset),
                Cell::Ts(now),
                Cell::Owned(row_json(&w.batches[r.batch], r.row)),
            ];
            (sql.clone(), cells)
        })
        .collect()
}

fn bind_offset<'q>(
    q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    c: &'q Commit,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    q.bind(&c.pipeline)
        .bind(&c.topic)
        .bind(c.partition)
        .bind(c.next)
        .bind(Utc::now())
        .bind(c.first)
}

fn rejected(write: usize, (batch, row): (usize, usize), table: &str, m: String) -> Rejected {
    Rejected {
        write,
        batch,
        row,
        message: format!("warehouse table `{table}`: {m}"),
    }
}

fn send<T: Send>(t: T) -> T {
    t
}

async fn write_all_pg(
    conn: &mut PgConnection,
    prepared: &[Prepared],
    method: WriteMethod,
) -> std::result::Result<u64, sqlx::Error> {
    let mut rows = 0;
    for (wi, w) in prepared.iter().enumerate() {
        rows += match method {
            WriteMethod::Copy => send(copy_pg(conn, w, wi)).await?,
            WriteMethod::Insert => send(insert_pg(conn, w)).await?,
        };
    }
    Ok(rows)
}

/// COPYs a write's rows into a temporary staging table (plus `_ymera_n`, the row's index in
/// `w.rows`) and returns its name. COPY parses text into any column type.
async fn stage_pg(
    tx: &mut PgConnection,
    w: &Prepared,
    wi: usize,
) -> std::result::Result<String, sqlx::Error> {
    let stage = format!("_ymera_stage_{wi}");
    let cols = w.column_list();
    sqlx::query(&format!(
        "CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols}, 0::bigint AS _ymera_n FROM {} WITH NO DATA",
        quote(&w.table)
    ))
    .execute(&mut *tx)
    .await?;
    let mut copy = tx
        .copy_in_raw(&format!("COPY {stage} ({cols}, _ymera_n) FROM STDIN"))
        .await?;
    let mut buf = Vec::with_capacity(1 << 20);
    for (n, &at) in w.rows.iter().enumerate() {
        for cell in w.cells(at) {
            copy_text(&mut buf, &cell);
            buf.push(b'\t');
        }
        buf.extend_from_slice(n.to_string().as_bytes());
        buf.push(b'\n');
        if buf.len() >= 1 << 20 {
            copy.send(std::mem::take(&mut buf)).await?;
        }
    }
    if !buf.is_empty() {
        copy.send(buf).await?;
    }
    copy.finish().await?;
    Ok(stage)
}

async fn copy_pg(
    tx: &mut PgConnection,
    w: &Prepared,
    wi: usize,
) -> std::result::Result<u64, sqlx::Error> {
    if w.rows.is_empty() {
        return Ok(0);
    }
    let stage = stage_pg(tx, w, wi).await?;
    let cols = w.column_list();
    let r = sqlx::query(&format!(
        "INSERT INTO {} ({cols}) SELECT {cols} FROM {stage}{}",
        quote(&w.table),
        w.conflict_clause()
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!("DROP TABLE {stage}"))
        .execute(&mut *tx)
        .await?;
    Ok(r.rows_affected())
}

async fn insert_pg(tx: &mut PgConnection, w: &Prepared) -> std::result::Result<u64, sqlx::Error> {
    let per = (PG_MAX_BINDS / w.columns.len().max(1)).clamp(1, 1000);
    let mut n = 0;
    for chunk in w.rows.chunks(per) {
        let sql = w.insert_sql(Dialect::Postgres, chunk.len());
        let mut q = sqlx::query(&sql);
        for &at in chunk {
            for cell in w.cells(at) {
                q = bind(q, cell);
            }
        }
        n += q.execute(&mut *tx).await?.rows_affected();
    }
    Ok(n)
}

/// The fallback after a constraint violation: the rows go through the staging table one
/// by one, each under a savepoint, so the bad ones are found and the rest commit (staging
/// keeps COPY's parsing, so any column type works).
async fn rows_one_by_one_pg(
    tx: &mut PgConnection,
    prepared: &[Prepared],
) -> std::result::Result<Committed, sqlx::Error> {
    let mut done = Committed::default();
    for (wi, w) in prepared.iter().enumerate() {
        if w.rows.is_empty() {
            continue;
        }
        let stage = stage_pg(tx, w, wi).await?;
        let cols = w.column_list();
        let sql = format!(
            "INSERT INTO {} ({cols}) SELECT {cols} FROM {stage} WHERE _ymera_n = $1{}",
            quote(&w.table),
            w.conflict_clause()
        );
        for (n, &at) in w.rows.iter().enumerate() {
            sqlx::query("SAVEPOINT ymera_row").execute(&mut *tx).await?;
            match sqlx::query(&sql).bind(n as i64).execute(&mut *tx).await {
                Ok(r) => {
                    done.rows += r.rows_affected();
                    sqlx::query("RELEASE SAVEPOINT ymera_row")
                        .execute(&mut *tx)
                        .await?;
                }
                Err(e) => match constraint_violation(&e) {
                    Some(m) => {
                        sqlx::query("ROLLBACK TO SAVEPOINT ymera_row")
                            .execute(&mut *tx)
                            .await?;
                        done.rejected.push(rejected(wi, at, &w.table, m));
                    }
                    None => return Err(e),
                },
            }
        }
        sqlx::query(&format!("DROP TABLE {stage}"))
            .execute(&mut *tx)
            .await?;
    }
    Ok(done)
}

/// SQLite: prepared multi-row INSERTs (up to 256 rows each). With `isolate`, one row per
/// statement, each under a savepoint, and
/// a row a constraint refuses is rolled back alone and returned; a failed `ROLLBACK TO`
/// (a table whose conflict clause rolled the whole transaction back) is an error, so the
/// transaction never goes on half done. Without it, the first violation is returned as the
/// error (the caller then starts over with `isolate`).
async fn rows_sqlite(
    conn: &mut sqlx::sqlite::SqliteConnection,
    prepared: &[Prepared],
    isolate: bool,
) -> std::result::Result<Committed, sqlx::Error> {
    let mut done = Committed::default();
    if !isolate {
        // many rows per prepared statement: sqlx-sqlite runs each statement as one round
        // trip to its worker thread, which dominates row-at-a-time inserts
        for w in prepared {
            let per = (SQLITE_MAX_BINDS / w.columns.len().max(1)).clamp(1, 256);
            for chunk in w.rows.chunks(per) {
                let sql = w.insert_sql(Dialect::Sqlite, chunk.len());
                let mut q = sqlx::query(&sql);
                for &at in chunk {
                    for cell in w.cells(at) {
                        q = bind(q, cell);
                    }
                }
                done.rows += q.execute(&mut *conn).await?.rows_affected();
            }
        }
        return Ok(done);
    }
    for (wi, w) in prepared.iter().enumerate() {
        let sql = w.insert_sql(Dialect::Sqlite, 1);
        for &at in &w.rows {
            if isolate {
                sqlx::query("SAVEPOINT ymera_row")
                    .execute(&mut *conn)
                    .await?;
            }
            let mut q = sqlx::query(&sql);
            for cell in w.cells(at) {
                q = bind(q, cell);
            }
            match q.execute(&mut *conn).await {
                Ok(r) => {
                    done.rows += r.rows_affected();
                    if isolate {
                        sqlx::query("RELEASE SAVEPOINT ymera_row")
                            .execute(&mut *conn)
                            .await?;
                    }
                }
                Err(e) => match (isolate, constraint_violation(&e)) {
                    (true, Some(m)) => {
                        sqlx::query("ROLLBACK TO SAVEPOINT ymera_row")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("RELEASE SAVEPOINT ymera_row")
                            .execute(&mut *conn)
                            .await?;
                        done.rejected.push(rejected(wi, at, &w.table, m));
                    }
                    _ => return Err(e),
                },
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn copy_text_escapes() {
        let mut out = Vec::new();
        copy_text(&mut out, &Cell::Text("a\tb\\c\nd\re"));
        assert_eq!(out, b"a\\tb\\\\c\\nd\\re");
        out.clear();
        copy_text(&mut out, &Cell::Null(SqlKind::Text));
        assert_eq!(out, b"\\N");
        out.clear();
        copy_text(&mut out, &Cell::Float(0.1));
        assert_eq!(out, b"0.1");
        out.clear();
        copy_text(
            &mut out,
            &Cell::Ts(DateTime::from_timestamp_micros(1_000_001).unwrap()),
        );
        assert_eq!(out, b"1970-01-01 00:00:01.000001+00");
    }
}
